"""The command line: a thin Typer layer over the keyforge library.

Each command parses its options, calls the core, prints the result, and lets ``main`` turn a
``KeyforgeError`` into one line on stderr and the error's exit code. Heavy modules (cryptography,
jinja2) are imported inside the commands that need them so ``keyforge --version`` stays quick.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from keyforge import __version__
from keyforge.errors import KeyforgeError


class _KeyforgeGroup(TyperGroup):
    """The one error boundary: a KeyforgeError becomes one line on stderr and its exit code.

    Doing it here rather than around ``app()`` means tests driving the app with CliRunner see
    exactly what a user sees.
    """

    def invoke(self, ctx: typer.Context) -> object:
        try:
            return super().invoke(ctx)
        except KeyforgeError as err:
            typer.echo(f"keyforge: error: {err}", err=True)
            raise typer.Exit(err.exit_code) from None


app = typer.Typer(
    cls=_KeyforgeGroup,
    name="keyforge",
    help=(
        "Safe, automatic offsite backups over SSH with a key that can do exactly one thing.\n\n"
        "On the sending server: 'keyforge pair' makes the backup key. On the receiving host: "
        "'keyforge install' locks that key to one command and one source address."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def say(message: str) -> None:
    typer.echo(message)


def warn(message: str) -> None:
    typer.echo(f"warning: {message}", err=True)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"keyforge {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        Optional[bool],  # noqa: UP045 - typer needs Optional on Python 3.11 for callbacks
        typer.Option(
            "--version", help="Print keyforge's version and exit.", callback=_version_callback,
            is_eager=True,
        ),
    ] = None,
) -> None:
    """Safe, automatic offsite backups over SSH with a key that can do exactly one thing."""


# --- commands -------------------------------------------------------------------------------
# Each area adds its commands below; keep each command a thin wrapper over the library.


def main() -> None:
    """Console-script entry point."""
    try:
        app(prog_name="keyforge")
    except KeyboardInterrupt:
        typer.echo("keyforge: interrupted", err=True)
        sys.exit(130)
