"""The built wheel works on its own: templates ship inside it and the installed CLI runs.

The wheel is built from this checkout without network access (build isolation off, no index),
installed into a fresh virtual environment, and exercised from a directory outside the source
tree, so nothing can be picked up from the checkout by accident.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Run inside the venv: where templates are found, and what loading and rendering each one gives.
# Every variable a template names gets a plain string; a template wanting richer values still
# proves it was found and compiled.
PROBE = """
import json, sys
import jinja2, jinja2.meta
from keyforge import templating

env = templating.environment()
report = {"templates_dir": str(templating.templates_dir()), "templates": {}}
for name in sys.argv[1:]:
    template = env.get_template(name)
    source = env.loader.get_source(env, name)[0]
    needed = jinja2.meta.find_undeclared_variables(env.parse(source))
    try:
        text = templating.render(name, **{var: "probe-" + var for var in needed})
        outcome = "rendered" if text.strip() else "empty"
    except (jinja2.UndefinedError, TypeError, ValueError) as err:
        outcome = "needs structured values: " + type(err).__name__
    report["templates"][name] = {"file": template.filename, "source": source, "outcome": outcome}
print(json.dumps(report))
"""


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    done = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 0, f"{argv} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.mark.slow
def test_installed_wheel_ships_templates_and_runs_outside_the_checkout(tmp_path: Path) -> None:
    pytest.importorskip("hatchling", reason="building the wheel offline needs hatchling")
    repo_templates = sorted(p.name for p in (REPO / "templates").glob("*.j2"))
    assert repo_templates, "templates/ holds no .j2 file to ship"

    wheelhouse = tmp_path / "wheelhouse"
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--quiet",
            "--wheel-dir",
            str(wheelhouse),
            str(REPO),
        ],
        cwd=tmp_path,
    )
    (wheel,) = wheelhouse.glob("keyforge-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(
        n.removeprefix("keyforge/templates/")
        for n in names
        if n.startswith("keyforge/templates/") and n.endswith(".j2")
    )
    assert shipped == repo_templates
    assert "keyforge/cli.py" in names
    assert not [n for n in names if "__pycache__" in n or n.startswith("tests/")]

    # the system site-packages provide the dependencies and pip, so no network is needed
    venv = tmp_path / "venv"
    run(
        [sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)],
        cwd=tmp_path,
    )
    python = venv / "bin" / "python"
    run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
        cwd=tmp_path,
    )

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    probe = run([str(python), "-I", "-c", PROBE, *repo_templates], cwd=outside)
    report = json.loads(probe.stdout)

    site_packages = Path(
        run(
            [str(python), "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            cwd=outside,
        ).stdout.strip()
    )
    templates_dir = Path(report["templates_dir"])
    assert templates_dir == site_packages / "keyforge" / "templates"
    assert REPO not in templates_dir.parents
    for name in repo_templates:
        loaded = report["templates"][name]
        assert Path(loaded["file"]).parent == templates_dir
        assert loaded["source"] == (REPO / "templates" / name).read_text()
    assert "rendered" in [t["outcome"] for t in report["templates"].values()], report

    keyforge = venv / "bin" / "keyforge"
    version = run([str(keyforge), "--version"], cwd=outside)
    assert version.stdout.startswith("keyforge ")
    paired = run([str(keyforge), "pair", str(outside / "k"), "-C", "foo@server1"], cwd=outside)
    assert "256 SHA256:" in paired.stdout
    assert (outside / "k.pub").read_text().startswith("ssh-ed25519 ")
