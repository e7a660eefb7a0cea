"""`keyforge gate` in the Typer app is the gate's own command line: it declares no option of its
own, hands every argument to keyforge.receiver.gate untouched and shows gate.USAGE as its help,
so the app and the console script (which sshd runs) cannot read the gate's options apart."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from keyforge.cli import app
from keyforge.receiver import gate

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def test_the_typer_gate_command_declares_no_option_of_its_own() -> None:
    command = get_command(app).commands["gate"]  # type: ignore[attr-defined]
    assert [param.name for param in command.params] == []
    # what it reads, it reads from the gate: the app adds nothing but -h/--help
    assert command.context_settings["ignore_unknown_options"] is True


def test_gate_help_is_the_gates_usage() -> None:
    result = runner.invoke(app, ["gate", "--help"])
    assert result.exit_code == 0
    assert gate.USAGE in result.output


def console_script_gate(args: list[str], tmp_path: Path) -> tuple[int, str]:
    """``keyforge gate ARGS`` as sshd starts it: the console script, not the Typer app."""
    done = subprocess.run(
        [sys.executable, "-c", "from keyforge.entry import main; main()", "gate", *args],
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        check=False,
    )
    return done.returncode, done.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--bogus"],
        ["--dir"],
        ["--exact", "--dir", "srv"],
        ["--dir", "srv", "--rsync", "rsync"],
        ["--dir=srv", "--rsync=rsync"],
        ["--dir", "srv", "extra"],
        [],
    ],
    ids=repr,
)
def test_the_app_and_the_console_script_read_gate_arguments_alike(
    args: list[str], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # the gate writes its one line to file descriptor 2 itself, past CliRunner's streams
    result = runner.invoke(app, ["gate", *args], env={"HOME": str(tmp_path)})
    through_app = (result.exit_code, capfd.readouterr().err + result.stderr)

    code, stderr = console_script_gate(args, tmp_path)

    assert code != 0
    assert stderr.startswith("keyforge gate: error: ")
    assert through_app == (code, stderr)


def test_the_app_passes_every_argument_to_the_gate(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def fake_main(args: list[str] | None = None) -> int:
        seen.append(list(args or []))
        return 7

    monkeypatch.setattr(gate, "main", fake_main)
    args = ["--dir=srv", "--expect", "rsync --server -e.iLsfxC . srv/", "--exact", "-x", "a b"]

    result = runner.invoke(app, ["gate", *args])

    assert result.exit_code == 7
    assert seen == [args]
