"""Every option a command's --help shows is in the README, and every one has help of its own."""

from __future__ import annotations

import re

import pytest
from readme import readme_text
from typer.main import get_command

from keyforge.cli import app

README = readme_text()


def visible_options() -> list[tuple[str, str, str]]:
    """(command path, long option, its help) for every option --help shows."""
    found: list[tuple[str, str, str]] = []

    def walk(command: object, path: str) -> None:
        for param in getattr(command, "params", []):
            if getattr(param, "hidden", False):
                continue
            for name in (*param.opts, *getattr(param, "secondary_opts", [])):
                if name.startswith("--"):
                    found.append((path, name, getattr(param, "help", None) or ""))
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{path} {name}".strip())

    walk(get_command(app), "")
    return found


OPTIONS = visible_options()
IDS = [f"{path} {option}".strip() for path, option, _ in OPTIONS]


def test_there_are_options_to_check() -> None:
    assert len({name for _, name, _ in OPTIONS}) > 40


@pytest.mark.parametrize(("path", "option", "text"), OPTIONS, ids=IDS)
def test_every_option_in_help_is_in_the_readme(path: str, option: str, text: str) -> None:
    # the whole option, not the start of a longer one (--from in --from-capture)
    assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", README), (
        f"README never mentions {option} of keyforge {path}"
    )


@pytest.mark.parametrize(("path", "option", "text"), OPTIONS, ids=IDS)
def test_every_option_has_help(path: str, option: str, text: str) -> None:
    assert len(text.split()) >= 3, f"keyforge {path} {option} has no real help"
