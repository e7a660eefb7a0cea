"""The console script reaches the gate without the CLI: every backup connection pays only for
the gate's own imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("typer", "jinja2", "cryptography", "keyforge.cli", "click", "rich")

PROBE = """
import sys
sys.argv = ["keyforge", "gate", "--dir", sys.argv[1], "--log", sys.argv[2]]
from keyforge import entry
try:
    entry.main()
except SystemExit as done:
    print("exit", done.code)
print(" ".join(sorted(sys.modules)))
"""


def run_probe(tmp_path: Path, command: str) -> tuple[str, set[str]]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path / "dir"), str(tmp_path / "gate.log")],
        env={"PYTHONPATH": str(ROOT), "SSH_ORIGINAL_COMMAND": command, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    exit_line, modules = result.stdout.splitlines()
    return exit_line, set(modules.split())


def test_the_gate_path_imports_none_of_the_clis_heavy_modules(tmp_path: Path) -> None:
    exit_line, modules = run_probe(tmp_path, "rsync --server --sender -r . dir/")
    assert exit_line == "exit 1"
    assert "keyforge.receiver.gate" in modules
    assert not {name for name in modules if name.split(".")[0] in HEAVY or name in HEAVY}


# All keyforge modules the gate's start-up may load: the console script, the gate, the one
# reader of the command it judges and the exception base class (errors.py imports only os).
GATE_PATH = {
    "keyforge",
    "keyforge.entry",
    "keyforge.errors",
    "keyforge.ssh",
    "keyforge.ssh.rsync_server",
    "keyforge.receiver",
    "keyforge.receiver.gate",
}


@pytest.mark.parametrize(
    "command",
    [
        "rsync --server --sender -r . dir/",  # refused by the option table
        "rsync --server -r . dir/;id",  # refused by the word reader
        "rsync --server -logDtprze.iLsfxCIvu --timeout=30 . /etc/",  # refused: outside
    ],
)
def test_the_gate_path_imports_only_the_standard_library_and_its_reader(
    tmp_path: Path, command: str
) -> None:
    # what the interpreter loaded before keyforge (site hooks) is no cost of the gate's
    probe = PROBE.replace(
        "from keyforge import entry", "before = set(sys.modules)\nfrom keyforge import entry"
    )
    probe = probe.replace("sorted(sys.modules)", "sorted(set(sys.modules) - before)")
    result = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path / "dir"), str(tmp_path / "gate.log")],
        env={"PYTHONPATH": str(ROOT), "SSH_ORIGINAL_COMMAND": command, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    exit_line, loaded = result.stdout.splitlines()
    modules = set(loaded.split())
    assert exit_line == "exit 1"
    assert {name for name in modules if name.split(".")[0] == "keyforge"} == GATE_PATH
    others = {name.split(".")[0] for name in modules} - {"keyforge"}
    assert not {name for name in others if name not in sys.stdlib_module_names}


def test_everything_else_goes_to_the_cli(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", "from keyforge import entry; entry.main()", "--version"],
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0
    assert result.stdout.startswith("keyforge ")
