"""The console script reaches the gate without the CLI: every backup connection pays only for
the gate's own imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
