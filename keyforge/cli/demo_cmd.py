"""``keyforge demo``: the whole system on this machine, checked step by step."""

from __future__ import annotations

from typing import Annotated

import typer

from keyforge.cli.output import say


def demo_command(
    keep: Annotated[
        bool,
        typer.Option(
            "--keep",
            help="Keep the temporary directory (keys, config, archives, the offsite copy, "
            "sshd's config and log) to look at afterwards; sshd is stopped all the same.",
        ),
    ] = False,
) -> None:
    """Run the whole system on this machine in under a minute, and check every step.

    In a new temporary directory (mode 0700) a private sshd on 127.0.0.1, with its own host
    key and config, plays the receiving host. Then: pair, backup of a small sample tree,
    capture start, one push (recorded, refused), capture show, install --from-capture, sync
    with the locked key, restore from the offsite copy and compare, and finally the
    authorized_keys line and what the key can no longer do (a command of its own, a shell, a
    terminal, a port forward, a login from another address).

    Needs openssh-server (sshd), openssh-client, rsync and zstd; not Docker, not a running
    system sshd. Touches nothing outside the temporary directory (except that root's sshd
    needs /run/sshd: when the system lacks it, an empty one is made), removes the directory
    unless --keep, and leaves no process behind. Exits non-zero naming the step that failed.
    """
    from keyforge.lab import demo

    demo.run_demo(keep=keep, say=say)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
