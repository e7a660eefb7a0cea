"""Every command explains itself and is documented in the README."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from readme import opening_commands, readme_text
from typer.main import get_command
from typer.testing import CliRunner

from keyforge import __version__
from keyforge.cli import app

README = readme_text()


def command_paths() -> list[tuple[str, ...]]:
    root = get_command(app)
    paths: list[tuple[str, ...]] = []

    def walk(group: object, prefix: tuple[str, ...]) -> None:
        for name, command in sorted(getattr(group, "commands", {}).items()):
            path = (*prefix, name)
            paths.append(path)
            walk(command, path)

    walk(root, ())
    return paths


COMMANDS = command_paths()


def test_the_app_has_the_commands_the_design_names() -> None:
    names = {path[0] for path in COMMANDS}
    assert {"pair", "install", "revoke", "capture", "backup", "sync", "schedule", "demo"} <= names


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_every_command_has_help_that_explains_it(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    summary = result.output.split("Usage:", 1)[1].split("\n\n", 1)[1].strip()
    assert len(summary.split()) >= 5, f"{' '.join(path)} --help has no real description"


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_every_command_is_in_the_readme(path: tuple[str, ...]) -> None:
    assert f"keyforge {' '.join(path)}" in README or re.search(
        rf"`keyforge [^`]*\b{re.escape(path[-1])}\b", README
    ), f"README never mentions keyforge {' '.join(path)}"


def test_readme_starts_with_the_demo_and_the_test_command() -> None:
    commands = opening_commands()
    assert len(commands) == 2
    assert commands[0].startswith("apt-get ")
    assert commands[0].endswith("keyforge demo")
    assert commands[1] == "bash tests/run.sh"


def test_ci_runs_the_readme_test_command() -> None:
    ci = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text(encoding="utf-8")
    assert "bash tests/run.sh" in README
    assert "bash tests/run.sh" in ci


def test_version_option_prints_the_package_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"keyforge {__version__}"


def test_an_unknown_command_is_a_usage_error() -> None:
    result = CliRunner().invoke(app, ["no-such-command"])
    assert result.exit_code == 2
    assert "No such command" in result.output
