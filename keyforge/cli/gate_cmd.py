"""``keyforge gate`` inside the Typer app: the gate's own command line, untouched.

The console script sends ``keyforge gate`` straight to ``keyforge.receiver.gate`` without
loading this package (keyforge.entry); this command is what ``keyforge --help`` lists and what
the app runs when it is driven directly. It declares no options: the gate's one table of them
(its parser, and ``gate.USAGE``, shown here as the help) is the only definition.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from typer.core import TyperCommand

if TYPE_CHECKING:
    # typer vendors click from 0.20 on; only the type checker needs its classes
    from typer._click.core import Context
    from typer._click.formatting import HelpFormatter


class _GateCommand(TyperCommand):
    """Every argument goes to the gate as given; the help is the gate's own usage text."""

    def format_help_text(self, ctx: Context, formatter: HelpFormatter) -> None:
        # imported when asked for: every other command starts without the gate's module
        from keyforge.receiver import gate

        formatter.write_paragraph()
        formatter.write(gate.USAGE)


def gate_command(ctx: typer.Context) -> None:
    """The forced command for a backup key: allow only an rsync push into one directory."""
    from keyforge.receiver import gate

    raise typer.Exit(gate.main(ctx.args))


def register(app: typer.Typer) -> None:
    app.command(
        "gate",
        cls=_GateCommand,
        # the gate reads its own options; only -h/--help stays the app's, to show gate.USAGE
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )(gate_command)
