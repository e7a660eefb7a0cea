"""The console script builds only the command it runs, and that command behaves as in the
whole app: the same help, the same options, the same error boundary."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.main import get_command

from keyforge.cli import app, app_for

ROOT = Path(__file__).resolve().parents[2]


# the whole app run as a program, as the console script ran it before it built one command
WHOLE_APP = "import sys; from keyforge.cli import app; sys.argv[0] = 'keyforge'; app()"


def console(*args: str, whole: bool = False) -> subprocess.CompletedProcess[str]:
    """``keyforge ARGS`` as the console script runs it (cli.main), or the whole app."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "80", "TERM": "dumb"}
    program = ["-c", WHOLE_APP] if whole else ["-m", "keyforge"]
    return subprocess.run(
        [sys.executable, *program, *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )


def test_a_command_name_builds_an_app_with_that_command_alone() -> None:
    group = get_command(app_for(["backup", "--config", "x.toml"]))
    assert list(getattr(group, "commands", {})) == ["backup"]
    capture = get_command(app_for(["capture", "show"]))
    assert list(getattr(capture, "commands", {})) == ["capture"]


@pytest.mark.parametrize("args", [[], ["--help"], ["--version"], ["backupp"], ["-h", "backup"]])
def test_anything_else_gets_the_whole_app(args: list[str]) -> None:
    assert app_for(args) is app
    every = getattr(get_command(app), "commands", {})
    assert {"backup", "restore", "sync", "install", "capture"} <= set(every)


def test_the_whole_app_keeps_every_command_after_one_was_built() -> None:
    get_command(app_for(["verify"]))
    assert len(getattr(get_command(app), "commands", {})) > 20


@pytest.mark.parametrize(
    "args", [["backup", "--help"], ["restore", "--help"], ["capture", "--help"]]
)
def test_the_console_script_prints_the_help_the_whole_app_prints(args: list[str]) -> None:
    whole = console(*args, whole=True)
    ran = console(*args)
    assert ran.returncode == whole.returncode == 0
    assert ran.stdout == whole.stdout
    assert ran.stdout.startswith(f"Usage: keyforge {args[0]} ")


def test_the_one_command_keeps_the_error_boundary_and_its_exit_code(tmp_path: Path) -> None:
    missing = tmp_path / "none.toml"
    ran = console("backup", "--config", str(missing), "--dry-run")
    assert ran.returncode != 0
    assert ran.stderr.startswith("keyforge: error: ")
    assert str(missing) in ran.stderr
    assert "Traceback" not in ran.stderr


def test_a_mistyped_command_is_still_suggested() -> None:
    ran = console("backupp")
    assert ran.returncode == 2
    assert "Did you mean 'backup'?" in ran.stderr
