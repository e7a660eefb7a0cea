"""The README's opening commands, read one way for every test that checks them."""

from __future__ import annotations

from pathlib import Path

README_PATH = Path(__file__).resolve().parents[1] / "README.md"


def readme_text() -> str:
    return README_PATH.read_text(encoding="utf-8")


def opening_commands() -> list[str]:
    """The command lines (comments and blank lines left out) of the README's first code block."""
    first_block = readme_text().split("```", 2)[1].split("\n", 1)[1]  # past the language tag
    return [line for line in first_block.splitlines() if line and not line.startswith("#")]
