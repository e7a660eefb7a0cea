"""``keyforge install`` and ``keyforge revoke``: the locked-down line, on the receiving host.

The rules that compose an install (plain, --from-capture, --gate, --like) live in
``keyforge.receiver.install.InstallRequest``; this module only builds the request and prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from keyforge.cli import options
from keyforge.cli.output import printable, report, say, warn

if TYPE_CHECKING:
    from keyforge.receiver.install import Note
    from keyforge.ssh.authorized_keys import Entry


def tell(note: Note) -> None:
    """An install's note or warning, as it arises (escaped: it may quote a captured command)."""
    (warn if note.warning else say)(printable(note.text))


def _key_source(spec: str) -> Entry | Path:
    """--key: standard input is read here, a file only once the options are checked."""
    return options.read_key(spec) if spec == "-" else Path(spec)


def install_command(
    ctx: typer.Context,
    key: options.KeyOption,
    from_: Annotated[
        list[str] | None,
        typer.Option(
            "--from",
            metavar="PATTERNS",
            show_default=False,
            help="Source addresses allowed to use the key (sshd's from=): IP addresses, CIDR "
            "blocks like 203.0.113.0/24 or wildcards like 192.0.2.*, comma-separated or "
            "repeated; prefix ! to exclude one. sshd refuses the key from anywhere else, so a "
            "stolen copy is useless off the sending server. Host names never match under "
            "sshd's default 'UseDNS no'.",
        ),
    ] = None,
    any_source: Annotated[
        bool,
        typer.Option(
            "--any-source",
            help="Allow the key from any source address (no from=). Needed to leave out "
            "--from, so an unrestricted key is never made by accident.",
        ),
    ] = False,
    command: Annotated[
        str | None,
        typer.Option(
            "--command",
            metavar="CMD",
            show_default=False,
            help="The only command the key may run (sshd's command=), e.g. the exact "
            "'rsync --server ...' line the sender's rsync runs. Whatever the client asks for "
            "is ignored (the command sees it in SSH_ORIGINAL_COMMAND).",
        ),
    ] = None,
    old_command: Annotated[
        str | None,
        # -c means --config on every other command; this spelling goes in the next release
        typer.Option("-c", metavar="CMD", hidden=True, show_default=False),
    ] = None,
    authorized_keys: options.AuthorizedKeysOption = None,
    dry_run: options.DiffDryRunOption = False,
    no_restrict: Annotated[
        bool,
        typer.Option(
            "--no-restrict",
            help="Leave out 'restrict', for OpenSSH older than 7.2 (which rejects it). The "
            "no-* options still apply, but 'restrict' also covers restrictions that future "
            "sshd versions add: keep it when you can.",
        ),
    ] = False,
    dropbear: Annotated[
        bool,
        typer.Option(
            "--dropbear",
            help="Write only options Dropbear accepts (it rejects a line with any other): no "
            "restrict, no-user-rc, from=, expiry-time= or environment=. Dropbear has no from=, "
            "so pair this with --any-source and a firewall rule.",
        ),
    ] = False,
    expiry_time: Annotated[
        str | None,
        typer.Option(
            "--expiry-time",
            metavar="T",
            show_default=False,
            help="sshd refuses the key after T: YYYYMMDD, YYYYMMDDHHMM or YYYYMMDDHHMMSS in the "
            "server's local time, with a trailing Z for UTC (OpenSSH 7.7+).",
        ),
    ] = None,
    environment: Annotated[
        list[str] | None,
        typer.Option(
            "--environment",
            "-e",
            metavar="NAME=VALUE",
            show_default=False,
            help="Set a variable for the forced command (repeatable). sshd ignores it unless "
            "sshd_config has PermitUserEnvironment.",
        ),
    ] = None,
    from_capture: Annotated[
        bool,
        typer.Option(
            "--from-capture",
            help="Use the command captured by 'keyforge capture start' and one push, instead "
            "of --command. It must be an 'rsync --server' command; a leading ~ in its path "
            "becomes the user's absolute home. The key must already be in authorized_keys.",
        ),
    ] = False,
    from_captured_address: Annotated[
        bool,
        typer.Option(
            "--from-captured-address",
            help="With --from-capture: allow the key only from the client address the capture "
            "came from (from=ADDRESS), instead of --from.",
        ),
    ] = False,
    allow_any_command: Annotated[
        bool,
        typer.Option(
            "--allow-any-command",
            help="With --from-capture: accept a captured command that is not a plain "
            "'rsync --server' command (or one whose destination the client chooses).",
        ),
    ] = False,
    keep_tilde: Annotated[
        bool,
        typer.Option(
            "--keep-tilde",
            help="With --from-capture: keep a leading ~ in the captured path; sshd then relies "
            "on the user's login shell to expand it.",
        ),
    ] = False,
    capture_log: Annotated[
        Path | None,
        typer.Option(
            "--capture-log",
            metavar="PATH",
            show_default=False,
            help="With --from-capture: " + options.CAPTURE_LOG_HELP,
            readable=False,
        ),
    ] = None,
    record: Annotated[
        int | None,
        typer.Option(
            "--record",
            metavar="LINE",
            show_default=False,
            help="With --from-capture: install the record on this line of the capture log (as "
            "'keyforge capture show' lists them). Needed when the records since 'capture "
            "start' hold more than one command or client address.",
        ),
    ] = None,
    like: Annotated[
        str | None,
        typer.Option(
            "--like",
            metavar="OLD",
            show_default=False,
            help="Install the key right after the line holding the key OLD (a .pub file or a "
            "SHA256:... fingerprint), with exactly that line's options, and keep the old line: "
            "the step of a key rotation ('keyforge rotate' runs it). Refused when OLD is not "
            "there or stands on several lines with different options; takes no other option "
            "that shapes the line.",
        ),
    ] = None,
    gate: Annotated[
        Path | None,
        typer.Option(
            "--gate",
            metavar="DIR",
            show_default=False,
            help="Lock the key to 'keyforge gate --dir DIR' instead of one exact command: it "
            "runs any rsync push into DIR and refuses everything else (pulls, other paths, "
            "'..' and symlink escapes, shell syntax), logging each refusal. With --command "
            "or --from-capture that command becomes the gate's --expect, and a push that "
            "differs from it is logged once as drift.",
            file_okay=False,
        ),
    ] = None,
    exact: Annotated[
        bool,
        typer.Option(
            "--exact",
            help="With --gate: run only the exact --command (or captured) text, the strict "
            "comparison of a plain command=, still checked and run without a shell.",
        ),
    ] = False,
    gate_log: Annotated[
        Path | None,
        typer.Option(
            "--gate-log",
            metavar="PATH",
            show_default=False,
            help="With --gate: where the gate logs its decisions (JSON lines, mode 0600); "
            "default ~/.ssh/keyforge/gate.log of the key's user.",
            dir_okay=False,
        ),
    ] = None,
    gate_program: Annotated[
        str | None,
        typer.Option(
            "--gate-program",
            metavar="PATH",
            show_default=False,
            help="With --gate: the absolute path of keyforge on this host, when it is not the "
            "one running this command.",
        ),
    ] = None,
    allow_unconfined: Annotated[
        bool,
        typer.Option(
            "--allow-unconfined",
            help="With --gate on a host whose rsync has no --confine-root (older than 3.5): "
            "install the gate anyway, without --confine. It is a weaker lock: filter rules "
            "travel inside rsync's protocol, where the gate cannot see them, so a client can "
            "make rsync read a file outside DIR as a merge file and learn what it holds.",
        ),
    ] = False,
) -> None:
    """Lock a backup key to one command and one source address in authorized_keys.

    Run this on the receiving host as the user the backups log in as. The key gets one line
    that lets it run the forced command, from the given addresses, and nothing else: no shell,
    no port, agent or X11 forwarding, no terminal, no ~/.ssh/rc.

    A line already holding this key is replaced where it stands; every other line stays byte
    for byte. Running it twice changes nothing. The previous file is kept as
    authorized_keys.keyforge-bak (mode 0600); a new ~/.ssh is made 0700 and a new file 0600.
    If the new line lets the key do more than the line it replaces, keyforge says so.
    """
    from keyforge.receiver import install

    command = options.deprecated_spelling(
        ctx, old="-c", new="--command", param="command", old_value=old_command, value=command
    )
    request = install.InstallRequest(
        key=_key_source(key),
        authorized_keys=authorized_keys,
        from_patterns=options.split_patterns(from_),
        any_source=any_source,
        command=command,
        restrict=not no_restrict,
        dropbear=dropbear,
        expiry_time=expiry_time,
        environment=environment or (),
        from_capture=from_capture,
        from_captured_address=from_captured_address,
        allow_any_command=allow_any_command,
        keep_tilde=keep_tilde,
        capture_log=capture_log,
        record=record,
        like=like,
        gate=gate,
        exact=exact,
        gate_log=gate_log,
        gate_program=gate_program,
        allow_unconfined=allow_unconfined,
    )
    done = install.perform_install(request, dry_run=dry_run, tell=tell)
    report(done.result, done.key, dry_run=dry_run)


def revoke_command(
    key: options.KeyOption,
    authorized_keys: options.AuthorizedKeysOption = None,
    dry_run: options.DiffDryRunOption = False,
) -> None:
    """Remove a key from authorized_keys, so it can no longer log in here.

    Every line holding the key goes, whatever its options (one left behind would still let it
    in); every other line stays byte for byte. A key that is not there is not an error. The
    previous file is kept as authorized_keys.keyforge-bak (mode 0600).
    """
    from keyforge.receiver import install

    path = options.authorized_keys_path(authorized_keys)
    public_key = options.read_key(key)
    report(install.revoke_key(path, public_key, dry_run=dry_run), public_key, dry_run=dry_run)


def register(app: typer.Typer) -> None:
    app.command("install")(install_command)
    app.command("revoke")(revoke_command)
