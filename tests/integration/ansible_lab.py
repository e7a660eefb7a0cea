"""Running the keyforge.offsite collection for real: ansible, ansible-doc, ansible-test.

The collection lives in ansible/; ansible finds a collection only under
``…/ansible_collections/NAMESPACE/NAME/``, so each test copies it into such a tree of its own.
Modules run with this Python, which has keyforge installed, as the managed nodes' do.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
COLLECTION_SOURCE = REPO / "ansible"
BIN = Path(sys.executable).parent
NAMESPACE, NAME = "keyforge", "offsite"
# ansible-test keeps its sanity venvs and pip bootstrap under $HOME/.ansible/test: one home of
# its own beside this venv, so the venvs are made once and nobody's real home is touched
ANSIBLE_TEST_HOME = Path(sys.prefix) / "ansible-test-home"
GET_PIP_STANDIN = Path(__file__).with_name("ansible_get_pip.py")
TIMEOUT = 900


def program(name: str) -> str:
    """An ansible program of this venv (tests/run.sh installs them with the test extras)."""
    path = BIN / name
    if not path.exists():
        raise AssertionError(f"{name} is not installed beside {sys.executable}: the test extras")
    return str(path)


def collection_tree(root: Path) -> Path:
    """A copy of ansible/ at ROOT/ansible_collections/keyforge/offsite; returns that copy."""
    dest = root / "ansible_collections" / NAMESPACE / NAME
    shutil.copytree(COLLECTION_SOURCE, dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def environment(collections_root: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "ANSIBLE_COLLECTIONS_PATH": str(collections_root),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_LOCAL_TEMP": str(collections_root / "ansible-local"),
        "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        **extra,
    }


def run(
    argv: list[str], *, env: dict[str, str], cwd: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} exited {result.returncode}\n"
            f"stdout: {result.stdout[-6000:]}\nstderr: {result.stderr[-3000:]}"
        )
    return result


def run_module(
    collections_root: Path,
    module: str,
    args: dict[str, Any],
    *,
    check: bool = False,
    diff: bool = False,
    python: str | None = None,
) -> dict[str, Any]:
    """One module on localhost through ``ansible`` itself; its result as the json callback
    reports it (``failed``/``msg`` included)."""
    argv = [program("ansible"), "localhost", "-m", f"{NAMESPACE}.{NAME}.{module}"]
    argv += ["-a", json.dumps(args)]
    if check:
        argv.append("--check")
    if diff:
        argv.append("--diff")
    # the implicit localhost runs the controller's Python unless told otherwise
    argv += ["-e", f"ansible_python_interpreter={python or sys.executable}"]
    extra = {"ANSIBLE_STDOUT_CALLBACK": "json", "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1"}
    env = environment(collections_root, **extra)
    result = run(argv, env=env, check=False)
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        printed = f"{result.stdout}\n{result.stderr}"
        raise AssertionError(f"ansible printed no JSON:\n{printed}") from None
    [play] = report["plays"]
    [task] = play["tasks"]
    outcome: dict[str, Any] = task["hosts"]["localhost"]
    return outcome


def sanity_environment(collections_root: Path) -> dict[str, str]:
    """ansible-test's home, with the pip bootstrap it would fetch from its own file server
    replaced by the stand-in (these machines reach the package index only)."""
    cache = ANSIBLE_TEST_HOME / ".ansible" / "test" / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    pip_version = ansible_test_pip_version()
    shutil.copyfile(GET_PIP_STANDIN, cache / f"get_pip_{pip_version.replace('.', '_')}.py")
    return environment(collections_root, HOME=str(ANSIBLE_TEST_HOME))


def ansible_test_pip_version() -> str:
    """The pip version ansible-test bootstraps its venvs with (its own constant)."""
    from ansible_test._internal import python_requirements  # noqa: PLC0415

    source = Path(python_requirements.__file__).read_text()
    marker = "pip='"
    start = source.index(marker) + len(marker)
    return source[start : source.index("'", start)]


def sanity(collection: Path, *tests: str) -> subprocess.CompletedProcess[str]:
    """``ansible-test sanity`` on the collection copy, with this Python, no Docker."""
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    argv = [program("ansible-test"), "sanity", "--python", python, "--color", "no"]
    for test in tests:
        argv += ["--test", test]
    env = sanity_environment(collection.parents[2])
    return run(argv, env=env, cwd=collection, check=False)
