"""The built wheel works on its own: templates ship inside it and the installed CLI runs.

The wheel is built from this checkout without network access (build isolation off, no index),
installed with no index into a fresh virtual environment that sees no other site-packages, from a
wheelhouse holding only keyforge's declared dependencies, and exercised from a directory outside
the source tree, so nothing can be picked up from the checkout, or from packages some earlier
install left in the base interpreter, by accident.
"""

from __future__ import annotations

import json
import os
import re
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
from keyforge.infra import templating

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


# What a wheel may hold: the package's modules, its templates and the wheel's metadata.
SHIPPED = re.compile(
    r"keyforge/(?:[A-Za-z_][A-Za-z0-9_]*/)*[A-Za-z_][A-Za-z0-9_]*\.py"
    r"|keyforge/templates/[A-Za-z0-9_.@-]+\.j2"  # "@": a systemd template unit's name
    r"|keyforge-[^/]+\.dist-info/(?:METADATA|WHEEL|RECORD|entry_points\.txt|licenses/.+)"
)


def dependency_wheelhouse(tmp_path: Path) -> Path:
    """Wheels of keyforge's declared dependencies: tests/run.sh's, or made here from the index."""
    given = os.environ.get("KEYFORGE_WHEELHOUSE")
    if given:
        wheelhouse = Path(given)
        assert any(wheelhouse.glob("*.whl")), f"KEYFORGE_WHEELHOUSE={given} holds no wheel"
        return wheelhouse
    wheelhouse = tmp_path / "dependencies"
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--wheel-dir",
            str(wheelhouse),
            str(REPO),
        ],
        cwd=tmp_path,
    )
    for own in wheelhouse.glob("keyforge-*.whl"):
        own.unlink()
    return wheelhouse


def unexpected_entries(names: list[str]) -> list[str]:
    return [n for n in names if not SHIPPED.fullmatch(n)]


def test_wheel_contents_rule_rejects_leftovers() -> None:
    good = [
        "keyforge/cli.py",
        "keyforge/ssh/wire.py",
        "keyforge/templates/cron.j2",
        "keyforge-0.1.0.dist-info/METADATA",
        "keyforge-0.1.0.dist-info/RECORD",
    ]
    junk = [
        "keyforge/cli.py.orig",
        "keyforge/cli.py.rej",
        "keyforge/cli.py~",
        "keyforge/__pycache__/cli.cpython-311.pyc",
        "keyforge/templates/cron.j2~",
        "tests/test_x.py",
    ]
    assert unexpected_entries(good) == []
    assert unexpected_entries(junk) == junk


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
    assert "keyforge/entry.py" in names
    assert unexpected_entries(names) == []

    # A venv that sees no other site-packages: keyforge and exactly its declared dependencies
    # come from the wheelhouse, with no index, so a dependency missing from pyproject.toml fails
    # here whatever the base interpreter happens to have installed.
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-index",
            "--find-links",
            str(dependency_wheelhouse(tmp_path)),
            str(wheel),
        ],
        cwd=tmp_path,
    )
    no_system = run(
        [str(python), "-I", "-c", "import sys; print(sys.prefix != sys.base_prefix)"], cwd=tmp_path
    )
    assert no_system.stdout.strip() == "True"
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()

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
