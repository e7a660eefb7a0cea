"""``keyforge pair``: the backup key pair, on the sending server; ``keyforge keygen-age``: an
age identity for encrypted archives, made anywhere but there."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from keyforge.cli import options
from keyforge.cli.output import say, warn
from keyforge.errors import UsageError

_KEY_TYPES = "ed25519|rsa|ecdsa"


def pair_command(
    ctx: typer.Context,
    path: Annotated[
        Path | None,
        typer.Argument(
            help="Where to write the private key; the public key goes to PATH.pub. "
            "Default: ~/.ssh/backups (~/.ssh is created with mode 0700 when missing).",
            show_default=False,
            metavar="PATH",
        ),
    ] = None,
    key_type: Annotated[
        str,
        typer.Option(
            "--type",
            metavar=_KEY_TYPES,
            help="Key type. ed25519 is short, fast and the right choice unless the receiving "
            "host's OpenSSH is older than 6.5. DSA is refused.",
        ),
    ] = "ed25519",
    old_type: Annotated[
        str | None,
        # -t means --target on every other command; this spelling goes in the next release
        typer.Option("-t", metavar=_KEY_TYPES, hidden=True, show_default=False),
    ] = None,
    bits: Annotated[
        int | None,
        typer.Option(
            "--bits",
            "-b",
            show_default=False,
            metavar="N",
            help="Key size: rsa 3072-16384 (default 4096); ecdsa 256, 384 or 521 (default 256). "
            "Ed25519 has a fixed size.",
        ),
    ] = None,
    comment: Annotated[
        str | None,
        typer.Option(
            "--comment",
            "-C",
            show_default=False,
            metavar="TEXT",
            help="Comment stored in both keys, shown by ssh-keygen -l. Default: user@hostname.",
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Replace an existing key pair at PATH. The old key then stops "
            "working wherever it was installed.",
        ),
    ] = False,
    dry_run: Annotated[
        bool, options.dry_run("Check everything and say what would be written.")
    ] = False,
) -> None:
    """Make the passphraseless backup key pair on the sending server.

    Writes the private key PATH with mode 0600 (never readable by others, not even while it is
    written) and the public key PATH.pub with mode 0644, in OpenSSH format, and prints the
    fingerprint exactly as 'ssh-keygen -lf PATH.pub' does. An existing key is never replaced
    without --force.
    """
    from keyforge.ssh import keys

    key_type = options.deprecated_spelling(
        ctx, old="-t", new="--type", param="key_type", old_value=old_type, value=key_type
    )
    size = keys.resolve_bits(key_type, bits)
    text = keys.check_comment(keys.default_comment() if comment is None else comment)
    private, public = keys.check_destination(path, force=force)
    if dry_run:
        verb = "replace" if force and (private.exists() or public.exists()) else "write"
        say(f"would make a {size}-bit {key_type.lower()} key with comment {text!r}")
        say(f"would {verb} {private} (mode 0600) and {public} (mode 0644)")
        return

    pair = keys.generate(key_type, size, comment=text)
    written = keys.write_pair(path, pair, force=force)
    if written.created_dir is not None:
        say(f"Created {written.created_dir} (mode 0700)")
    action = "Replaced" if written.replaced else "Wrote"
    say(
        f"{action} the private key {written.private_path} (mode 0600, no passphrase: it must "
        "never leave this server)"
    )
    say(f"{action} the public key  {written.public_path} (mode 0644)")
    say(pair.fingerprint)
    for message in written.warnings:
        warn(message)
    say("")
    say(f"Next: copy {written.public_path} to the receiving host, then run there:")
    say(
        f"  keyforge install --key {written.public_path.name} "
        "--from <this server's address> --command '<forced command>'"
    )
    say("Not sure which command rsync sends? Run 'keyforge capture start' there to learn it.")


def keygen_age_command(
    path: Annotated[
        Path,
        typer.Argument(
            help="Where to write the identity (mode 0600). An existing file is never replaced.",
            metavar="PATH",
        ),
    ],
    show: Annotated[
        bool,
        typer.Option(
            "--show", help="Also print the secret identity line (to copy it on paper, say)."
        ),
    ] = False,
    dry_run: Annotated[
        bool, options.dry_run("Check PATH and say what would be written; write nothing.")
    ] = False,
) -> None:
    """Make an age identity for encrypted archives and print its recipient (public key).

    Put the printed age1... recipient in [backup] encrypt_to on the sending server; the
    identity (the secret) decrypts every archive made for it and must never be on that server,
    nor on the receiving host. Keep it offline: printed on paper (--show), on a USB key in a
    drawer, or in a password manager. Add a second recipient for the team (another keyforge
    keygen-age, or a colleague's ssh-ed25519 public key), so losing one key loses no backups.
    The file is age-keygen's format: 'age -d -i PATH' decrypts with it, keyforge or not.
    """
    from keyforge import age

    if dry_run:
        if path.exists():
            raise UsageError(f"{path} already exists; keyforge never replaces an identity")
        say(f"would write a new X25519 age identity to {path} (mode 0600)")
        return
    identity = age.new_identity()
    age.write_identity(path, identity)
    say(f"wrote the identity {path} (mode 0600): keep it offline, off every server")
    say(f"recipient: {identity.recipient.text}")
    say(f"fingerprint: {identity.recipient.fingerprint}")
    if show:
        secret = identity.file_text.strip().splitlines()[-1]
        say(f"identity (secret): {secret}")
    say("")
    say("Next: on the sending server, in [backup] of keyforge.toml:")
    say(f'  encrypt_to = ["{identity.recipient.text}", "<a second recipient for the team>"]')


def register(app: typer.Typer) -> None:
    app.command("pair")(pair_command)
    app.command("keygen-age")(keygen_age_command)
