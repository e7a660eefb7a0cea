"""``keyforge rotate``: a new backup key, with backups working throughout."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from keyforge.cli import options
from keyforge.cli.output import say, warn


def rotate_command(
    config_path: options.ConfigOption = None,
    target: Annotated[
        str | None,
        options.target("The [[targets]] entry whose key rotates. Default: the only one."),
    ] = None,
    admin: Annotated[
        str | None,
        typer.Option(
            "--admin",
            metavar="USER[@HOST]",
            show_default=False,
            help="Reach the receiving host's keyforge over ssh as this admin user (the backup "
            "key cannot: it runs only rsync). HOST defaults to the target's host; the port and "
            "the pinned known_hosts file are the target's.",
        ),
    ] = None,
    admin_key: Annotated[
        Path | None,
        typer.Option(
            "--admin-key",
            metavar="PATH",
            show_default=False,
            help="The admin's private key for --admin (ssh is told to use this key only).",
            readable=False,
        ),
    ] = None,
    authorized_keys: Annotated[
        str | None,
        typer.Option(
            "--authorized-keys",
            "-f",
            metavar="PATH",
            show_default=False,
            help="With --admin: the authorized_keys file to change there (for an admin such "
            "as root editing the backup user's file; default: the admin's own). Without "
            "--admin: a file on this machine.",
        ),
    ] = None,
    remote_keyforge: Annotated[
        str,
        typer.Option(
            "--remote-keyforge",
            metavar="PATH",
            help="keyforge's command on the receiving host, for --admin.",
        ),
    ] = "keyforge",
    key_type: Annotated[
        str | None,
        typer.Option(
            "--type",
            metavar="ed25519|rsa|ecdsa",
            show_default=False,
            help="The new key's type. Default: the old key's (its size too).",
        ),
    ] = None,
    bits: Annotated[
        int | None,
        typer.Option("--bits", "-b", metavar="N", show_default=False, help="The new key's size."),
    ] = None,
    comment: Annotated[
        str | None,
        typer.Option(
            "--comment",
            "-C",
            metavar="TEXT",
            show_default=False,
            help="The new key's comment. Default: the old key's.",
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        options.dry_run("Print the steps that would run; change nothing."),
    ] = False,
) -> None:
    """Replace the target's backup key with a new pair; backups keep working at every moment.

    \b
    1. a new pair KEY.next (0600 from the first byte) beside the target's key KEY;
    2. the new key installed right after the old key's line on the receiving host, with
       exactly its options (keyforge install --like, run there by an admin): both keys work;
    3. a test push with the new key, as 'keyforge sync' runs it;
    4. under the backup directory's lock, the old pair kept as KEY.old and the new pair
       renamed into place: a concurrent sync uses one whole pair, old or new;
    5. the old key revoked on the receiving host;
    6. KEY.old deleted.

    If a step fails, keyforge says which one and what is left, and stops; the old key still
    works until step 5. Running it again continues where it stopped (a leftover KEY.next is
    checked and reused). Run it as the user whose key it is, like the sync itself.
    """
    from keyforge.sender import rotate

    cfg = options.load_config(config_path)
    remote = rotate.remote_target(cfg, target)
    receiver = rotate.receiver_for(
        remote,
        admin=admin,
        admin_key=admin_key,
        authorized_keys=authorized_keys,
        remote_keyforge=remote_keyforge,
    )
    files = rotate.KeyFiles(remote.key)
    make_pair = rotate.pair_maker(key_type, bits, comment)
    if dry_run:
        say(f"target {remote.name}: rotating {remote.key}; the receiving host via {receiver.where}")
        for line in rotate.plan_lines(files, rotate.first_step(files.present()), receiver.where):
            say(line)
        say("dry run: nothing changed; connected nowhere")
        return
    outcome = rotate.rotate(
        rotate.Rotation(
            files=files,
            receiver=receiver,
            push=rotate.sync_push(cfg, remote, warn),
            swap_lock=rotate.backup_lock(cfg),
            make_pair=make_pair,
            say=say,
        )
    )
    say(f"rotated {remote.key}: {outcome.old_fingerprint} -> {outcome.new_fingerprint}")


def register(app: typer.Typer) -> None:
    app.command("rotate")(rotate_command)
