"""The ``keyforge`` console script: ``keyforge gate`` straight to the gate, the rest to the CLI.

The gate is the forced command of every backup connection; reaching it through the Typer app
would load typer, jinja2 and the CLI's modules on each one. Everything else goes to the CLI.
"""

from __future__ import annotations

import gc
import sys


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "gate":
        from keyforge.receiver import gate  # noqa: PLC0415

        sys.exit(gate.main(sys.argv[2:]))
    from keyforge import cli  # noqa: PLC0415

    try:
        cli.main()
    finally:
        # the interpreter's last collections walk every object the imports made, only to free
        # what the process's exit frees anyway: 20-30 ms of every command; frozen objects are
        # left to the exit (atexit handlers, thread joins and flushes still run)
        gc.freeze()
