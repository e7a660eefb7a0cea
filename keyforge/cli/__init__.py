"""The command line: a thin Typer layer over the keyforge library.

This module holds the app, its one error boundary and ``main``; each ``*_cmd`` module defines
the commands of one area and registers them here. Each command parses its options, calls the
core, prints the result, and lets the boundary turn a ``KeyforgeError`` into one line on stderr
and the error's exit code. Heavy modules (cryptography, jinja2) are imported inside the commands
that need them so ``keyforge --version`` stays quick.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated

import typer
from typer.core import TyperGroup

from keyforge import __version__
from keyforge.cli import (
    audit_cmd,
    backup_cmd,
    capture_cmd,
    catalog_cmd,
    demo_cmd,
    gate_cmd,
    install_cmd,
    keys_cmd,
    offsite_cmd,
    rotate_cmd,
    snapshot_cmd,
)
from keyforge.errors import KeyforgeError

if TYPE_CHECKING:
    # typer vendors click from 0.20 on; only the type checker needs its Context class
    from typer._click.core import Context as _ClickContext


class _KeyforgeGroup(TyperGroup):
    """The one error boundary: a KeyforgeError becomes one line on stderr and its exit code.

    Doing it here rather than around ``app()`` means tests driving the app with CliRunner see
    exactly what a user sees.
    """

    def invoke(self, ctx: _ClickContext) -> object:
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


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"keyforge {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool | None,
        typer.Option(
            "--version",
            help="Print keyforge's version and exit.",
            callback=_version_callback,
            is_eager=True,
        ),
    ] = None,
) -> None:
    """Safe, automatic offsite backups over SSH with a key that can do exactly one thing."""


# The order of registration is the order 'keyforge --help' lists the commands in (a group such
# as capture comes after every plain command).
for _area in (
    keys_cmd,
    install_cmd,
    backup_cmd,
    catalog_cmd,
    offsite_cmd,
    demo_cmd,
    snapshot_cmd,
    rotate_cmd,
    audit_cmd,
    gate_cmd,
    capture_cmd,
):
    _area.register(app)


def app_for(args: Sequence[str]) -> typer.Typer:
    """The app to run for the command line ``args``: when its first word names a command (or a
    group such as capture), the app holding only that one, else the whole app.

    Typer turns every registered command into a click command each time it starts, about
    40 ms for keyforge's two dozen, paid before a nightly backup's tar or a sync's rsync could
    start. The one command, with the root's options and the error boundary, behaves exactly as
    in the whole app; help, --version and a mistyped name get the whole app, which lists and
    suggests every command.
    """
    name = args[0] if args else ""
    commands = [c for c in app.registered_commands if c.name == name]
    groups = [g for g in app.registered_groups if g.name == name]
    if not commands and not groups:
        return app
    only = copy.copy(app)
    only.registered_commands = commands
    only.registered_groups = groups
    return only


def main() -> None:
    """Console-script entry point."""
    try:
        app_for(sys.argv[1:])(prog_name="keyforge")
    except KeyboardInterrupt:
        typer.echo("keyforge: interrupted", err=True)
        sys.exit(130)
