"""The command line: a thin Typer layer over the keyforge library.

Each command parses its options, calls the core, prints the result, and lets ``main`` turn a
``KeyforgeError`` into one line on stderr and the error's exit code. Heavy modules (cryptography,
jinja2) are imported inside the commands that need them so ``keyforge --version`` stays quick.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from typer.core import TyperGroup

from keyforge import __version__
from keyforge.errors import CommandError, KeyforgeError, UsageError

if TYPE_CHECKING:
    # typer vendors click from 0.20 on; only the type checker needs its Context class
    from typer._click.core import Context as _ClickContext

    from keyforge.config import Config
    from keyforge.receiver import capture as capture_types
    from keyforge.receiver.capture import Record
    from keyforge.receiver.install import Result
    from keyforge.ssh.authorized_keys import Entry


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


# --- commands -------------------------------------------------------------------------------
# Each area adds its commands below; keep each command a thin wrapper over the library.


@app.command("pair")
def pair_command(
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
            "-t",
            metavar="ed25519|rsa|ecdsa",
            help="Key type. ed25519 is short, fast and the right choice unless the receiving "
            "host's OpenSSH is older than 6.5. DSA is refused.",
        ),
    ] = "ed25519",
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
        bool, typer.Option("--dry-run", help="Check everything and say what would be written.")
    ] = False,
) -> None:
    """Make the passphraseless backup key pair on the sending server.

    Writes the private key PATH with mode 0600 (never readable by others, not even while it is
    written) and the public key PATH.pub with mode 0644, in OpenSSH format, and prints the
    fingerprint exactly as 'ssh-keygen -lf PATH.pub' does. An existing key is never replaced
    without --force.
    """
    from keyforge.ssh import keys

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


# --- install / revoke (receiving host) ---


_KEY_HELP = (
    "The backup key's PUBLIC half: a .pub file holding one line 'type base64 comment', or - to "
    "read it from standard input. A private key is refused."
)
_AUTHORIZED_KEYS_HELP = (
    "The authorized_keys file to edit. Default: ~/.ssh/authorized_keys of the user running "
    "keyforge (run it as the user the backups log in as)."
)

# The options install, revoke and capture start share, declared once so they cannot drift apart
KeyOption = Annotated[
    str, typer.Option("--key", "-k", metavar="PUBFILE|-", help=_KEY_HELP, show_default=False)
]
AuthorizedKeysOption = Annotated[
    Path | None,
    typer.Option(
        "--authorized-keys",
        "-f",
        metavar="PATH",
        show_default=False,
        help=_AUTHORIZED_KEYS_HELP,
        readable=False,  # keyforge's own one-line error says why
    ),
]
DiffDryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="Print the change as a unified diff; write nothing.")
]


def _authorized_keys_path(option: Path | None) -> Path:
    from keyforge.receiver import install

    return option if option is not None else install.default_authorized_keys()


def _given(flags: dict[str, bool]) -> list[str]:
    """The names of the options among ``flags`` that were given."""
    return [name for name, was_given in flags.items() if was_given]


def _read_key_option(spec: str) -> Entry:
    from keyforge.receiver import install

    if spec == "-":
        return install.public_key_from_text(sys.stdin.read(), source="<stdin>")
    return install.read_public_key(Path(spec))


def _key_label(key: Entry) -> str:
    try:
        fingerprint = key.fingerprint()
    except ValueError:
        fingerprint = f"{key.keytype} ...{key.blob[-12:]}"
    return f"{fingerprint} ({key.comment})" if key.comment else fingerprint


def _forced_command(command: str | None) -> str:
    """The command the key is locked to; another source of it (a capture) plugs in here."""
    if command is None:
        raise UsageError("--command is required: the one command this key may run")
    return command


def _source_patterns(from_: list[str] | None, any_source: bool) -> list[str] | None:
    from keyforge.receiver import install

    patterns = [pattern for value in from_ for pattern in value.split(",")] if from_ else None
    return install.source_patterns(patterns, any_source=any_source)


_DONE = {
    "added": "added key {key} to {path}",
    "replaced": "replaced key {key} in {path}",
    "unchanged": "unchanged: key {key} already stands as wanted in {path}",
    "removed": "removed key {key} from {path}",
    "absent": "absent: key {key} is not in {path}; nothing to do",
}
_WOULD = {
    "added": "would add key {key} to {path}",
    "replaced": "would replace key {key} in {path}",
    "removed": "would remove key {key} from {path}",
}


def _report(result: Result, key: Entry, *, dry_run: bool) -> None:
    plan = result.plan
    if dry_run and plan.changed:
        typer.echo(plan.diff(str(result.path)), nl=False)
    template = _WOULD.get(plan.action, _DONE[plan.action]) if dry_run else _DONE[plan.action]
    where = ""
    if plan.linenos:
        label = "line" if len(plan.linenos) == 1 else "lines"
        where = f" ({label} {', '.join(map(str, plan.linenos))})"
    suffix = " (dry run: nothing written)" if dry_run and plan.changed else ""
    say(template.format(key=_key_label(key), path=result.path) + where + suffix)
    if plan.line is not None:
        say(plan.line)
    if result.backup is not None:
        say(f"previous file kept as {result.backup}")
    for message in result.warnings:
        warn(message)


@app.command("install")
def install_command(
    key: KeyOption,
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
            "-c",
            metavar="CMD",
            show_default=False,
            help="The only command the key may run (sshd's command=), e.g. the exact "
            "'rsync --server ...' line the sender's rsync runs. Whatever the client asks for "
            "is ignored (the command sees it in SSH_ORIGINAL_COMMAND).",
        ),
    ] = None,
    authorized_keys: AuthorizedKeysOption = None,
    dry_run: DiffDryRunOption = False,
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
            help="With --from-capture: " + _CAPTURE_LOG_HELP,
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

    path = _authorized_keys_path(authorized_keys)
    if like is not None:
        _refuse_beside_like(
            {
                "--from": bool(from_),
                "--any-source": any_source,
                "--command": command is not None,
                "--no-restrict": no_restrict,
                "--dropbear": dropbear,
                "--expiry-time": expiry_time is not None,
                "--environment": bool(environment),
                "--from-capture": from_capture,
                "--from-captured-address": from_captured_address,
                "--allow-any-command": allow_any_command,
                "--keep-tilde": keep_tilde,
                "--capture-log": capture_log is not None,
                "--record": record is not None,
                "--gate": gate is not None,
                "--exact": exact,
                "--gate-log": gate_log is not None,
                "--gate-program": gate_program is not None,
                "--allow-unconfined": allow_unconfined,
            }
        )
        _install_like(key, like, path, dry_run=dry_run)
        return
    _check_capture_options(
        from_capture=from_capture,
        command=command,
        from_=from_,
        any_source=any_source,
        capture_only={
            "--from-captured-address": from_captured_address,
            "--allow-any-command": allow_any_command,
            "--keep-tilde": keep_tilde,
            "--capture-log": capture_log is not None,
            "--record": record is not None,
        },
    )
    _check_gate_options(
        gate, exact=exact, log=gate_log, program=gate_program, allow_unconfined=allow_unconfined
    )
    patterns = None if from_captured_address else _source_patterns(from_, any_source)
    forced = None if from_capture or gate is not None else _forced_command(command)
    public_key = _read_key_option(key)
    if from_capture:
        forced, patterns = _capture_for_install(
            public_key,
            path,
            patterns,
            from_captured_address=from_captured_address,
            log=capture_log,
            allow_any_command=allow_any_command,
            keep_tilde=keep_tilde,
            record_number=record,
            raw=gate is not None,
        )
    elif gate is None and forced is not None:
        _warn_forbidden_destinations(forced, path)
    if gate is not None:
        expect = forced if from_capture else command
        forced = _gate_line(
            gate,
            path,
            expect=expect,
            exact=exact,
            log=gate_log,
            program=gate_program,
            allow_unconfined=allow_unconfined,
        )
    entry = install.locked_entry(
        public_key,
        from_patterns=patterns,
        command=_forced_command(forced),
        restrict=not no_restrict,
        dropbear=dropbear,
        expiry_time=expiry_time,
        environment=environment or (),
    )
    _report(install.install_key(path, entry, dry_run=dry_run), entry, dry_run=dry_run)


def _warn_forbidden_destinations(command: str, path: Path) -> None:
    """'install --command': the same destinations --from-capture refuses, said out loud."""
    from keyforge.receiver import capture

    home = capture.home_for(path)
    for reason in capture.forbidden_destinations(command, home=home, authorized_keys=path):
        warn(
            f"the command's path {reason}: whoever holds the key could write what sshd or the "
            "login shell reads there (or read the keys kept there) and get a shell; lock it to "
            "a directory of its own"
        )


def _refuse_beside_like(given: dict[str, bool]) -> None:
    used = _given(given)
    if used:
        raise UsageError(
            f"--like copies the old line's options; {', '.join(used)} cannot be given with it"
        )


def _install_like(key: str, like: str, path: Path, *, dry_run: bool) -> None:
    from keyforge.receiver import install

    old = install.parse_old_key(like)
    new_key = _read_key_option(key)
    result = install.install_key_like(path, new_key, old, dry_run=dry_run)
    _report(result, new_key, dry_run=dry_run)


@app.command("revoke")
def revoke_command(
    key: KeyOption,
    authorized_keys: AuthorizedKeysOption = None,
    dry_run: DiffDryRunOption = False,
) -> None:
    """Remove a key from authorized_keys, so it can no longer log in here.

    Every line holding the key goes, whatever its options (one left behind would still let it
    in); every other line stays byte for byte. A key that is not there is not an error. The
    previous file is kept as authorized_keys.keyforge-bak (mode 0600).
    """
    from keyforge.receiver import install

    path = _authorized_keys_path(authorized_keys)
    public_key = _read_key_option(key)
    _report(install.revoke_key(path, public_key, dry_run=dry_run), public_key, dry_run=dry_run)


# --- local backup: init, backup, prune, restore, verify --------------------------------------

_CONFIG_HELP = "The config file. Default: $KEYFORGE_CONFIG, else /etc/keyforge/keyforge.toml."
ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", metavar="PATH", help=_CONFIG_HELP, show_default=False),
]


def _load_backup_config(path: Path | None) -> Config:
    from keyforge import config

    return config.load(config.resolve_path(path))


@app.command("init")
def init_command(
    config_path: ConfigOption = None,
    host: Annotated[
        str | None,
        typer.Option(
            "--host",
            help="Name of this server in archive names. Default: the short host name.",
            show_default=False,
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite an existing config file.")
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Print the config that would be written; write nothing."),
    ] = False,
) -> None:
    """Write a config file with every default shown and commented.

    Sources default to /etc, /home, /var, /boot and /root; archives go to /mnt/backups/<host>.
    An existing config is never overwritten unless --force is given. The file is made 0600.
    """
    from keyforge import config
    from keyforge.infra import fsutil

    path = config.resolve_path(config_path)
    text = config.render_default(host)
    if dry_run:
        typer.echo(text, nl=False)
        return
    if path.exists() and not force:
        raise UsageError(f"{path} already exists; pass --force to overwrite it")
    if not path.parent.is_dir():
        fsutil.ensure_private_dir(path.parent)
    fsutil.atomic_write(path, text.encode(), mode=0o600, exclusive=not force)
    say(f"wrote {path}")


@app.command("backup")
def backup_command(
    config_path: ConfigOption = None,
    full: Annotated[
        bool, typer.Option("--full", help="Start a new chain with a full (master) backup now.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the archives and commands; write nothing.")
    ] = False,
    allow_empty: Annotated[
        bool,
        typer.Option(
            "--allow-empty",
            help="No warning for a source that is empty or shrank since its last master.",
        ),
    ] = False,
) -> None:
    """Archive every source with GNU tar --listed-incremental, then apply retention.

    One archive per source per run: a master on the configured day (full_every) or when a source
    has none, an incremental relative to the previous run otherwise. Archives appear only once
    complete; a manifest records each one's size, sha256 and chain. A source that fails leaves
    nothing behind and the others are still backed up; the run then fails naming each one and
    prunes nothing. A source that is empty or shrank by more than shrink_warn_percent since its
    last master is warned about. Shows progress in a terminal and logs one line otherwise.
    """
    from keyforge.sender import backup, progress

    cfg = _load_backup_config(config_path)
    interactive = sys.stderr.isatty()
    reporter = progress.TerminalReporter() if interactive else progress.LogReporter()
    try:
        report = backup.run_backup(
            cfg, force_full=full, dry_run=dry_run, allow_empty=allow_empty, reporter=reporter
        )
    except backup.SourcesFailedError as err:
        if err.report.entries:
            say(progress.summary_line(cfg.host, err.report))
        raise
    if dry_run:
        for line in backup.describe_plan(report.plan):
            say(line)
        return
    say(progress.summary_line(cfg.host, report))


@app.command("prune")
def prune_command(
    config_path: ConfigOption = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="List the chains that would be removed; remove nothing."),
    ] = False,
) -> None:
    """Remove whole chains older than retention_days (every backup run does this too).

    A chain goes only when its newest archive is older than the window, and the newest full
    backup of each source is never removed.
    """
    from keyforge.sender import backup

    cfg = _load_backup_config(config_path)
    doomed = backup.run_prune(cfg, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for chain in doomed:
        say(f"{verb} chain {chain.name} ({len(chain.archives)} archives)")
    if not doomed:
        say("nothing to prune")


@app.command("restore")
def restore_command(
    source: Annotated[
        str,
        typer.Option(
            "--source", metavar="PATH", help="The configured source to restore, e.g. /etc."
        ),
    ],
    to: Annotated[
        Path, typer.Option("--to", metavar="DIR", help="Empty (or new) directory to restore into.")
    ],
    at: Annotated[
        str | None,
        typer.Option(
            "--at",
            metavar="DATE",
            show_default=False,
            help="Restore the state at the end of this day (YYYY-MM-DD). Default: latest.",
        ),
    ] = None,
    config_path: ConfigOption = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Restore into a non-empty DIR (files the backup says "
            "were deleted are deleted there).",
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="List the archives that would be applied; change nothing."),
    ] = False,
) -> None:
    """Rebuild a source as it was at a date: its master, then each incremental in order.

    GNU tar's incremental extraction also deletes files that were deleted between runs, so the
    result is the tree as it stood, not a union of every version. Run as root to give files
    their recorded owners back; anyone else gets them as their own (tar --no-same-owner), and
    is told so. Nothing is written into a synced copy: only where keyforge backup writes (its
    lock is there) does restore take that lock.
    """
    from keyforge.sender import restore

    cfg = _load_backup_config(config_path)
    day = restore.parse_at(at) if at else None
    notice = restore.owner_notice()
    if notice:
        warn(notice)
    archives = restore.run_restore(cfg, source, to, at=day, force=force, dry_run=dry_run)
    verb = "would apply" if dry_run else "applied"
    for record in archives:
        say(f"{verb} {record.name}")
    if not dry_run:
        say(f"restored {source} into {to}")


@app.command("verify")
def verify_command(
    config_path: ConfigOption = None,
    scratch: Annotated[
        Path | None,
        typer.Option(
            "--scratch",
            metavar="DIR",
            show_default=False,
            help="Restore for the check into a new directory inside DIR (removed afterwards; "
            "nothing else in DIR is touched). Default: .verify-scratch in the backup directory "
            "where keyforge backup writes, the system's temporary directory for a synced copy.",
        ),
    ] = None,
) -> None:
    """Prove the backups restore: check every archive's sha256 against the manifests, then
    restore the latest chain of each source and compare content, modes, owners, mtimes,
    symlinks, hard links and xattrs with what the archives record.

    Owners are compared only when run as root (no one else can restore them). On a synced
    copy nothing is written into it: no lock, and the trial restores go to --scratch or the
    system's temporary directory."""
    from keyforge.sender import restore

    cfg = _load_backup_config(config_path)
    notice = restore.owner_notice(verify=True)
    if notice:
        warn(notice)
    report = restore.run_verify(cfg, scratch=scratch)
    for verdict in report.sources:
        state = "ok" if not verdict.problems else f"{len(verdict.problems)} problem(s)"
        count = len(verdict.archives)
        say(f"{verdict.source}: {count} archive(s), {verdict.entries} entries, {state}")
    if not report.ok:
        problems = [*report.problems]
        for verdict in report.sources:
            problems += [f"{verdict.source}: {p}" for p in verdict.problems]
        raise KeyforgeError(f"verify failed: {restore.summarize_problems(problems)}")
    say(f"verify ok: {report.checked_archives} archive(s) match their manifests and restore")


# --- offsite: sync, schedule, status, check -------------------------------------------------


@app.command("sync")
def sync_command(
    config_path: ConfigOption = None,
    target: Annotated[
        str | None,
        typer.Option(
            "--target",
            "-t",
            metavar="NAME",
            show_default=False,
            help="Sync only the [[targets]] entry with this name. Default: every target.",
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Check the source and the targets, print each rsync command, connect nowhere.",
        ),
    ] = False,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait", help="Wait for a running backup to finish instead of refusing at once."
        ),
    ] = False,
    accept_loss: Annotated[
        bool,
        typer.Option(
            "--accept-loss",
            help="Push even when the copy would lose archives that the last successful push "
            "sent and that retention keeps (a new backup disk, archives removed by hand).",
        ),
    ] = False,
    print_server_command: Annotated[
        bool,
        typer.Option(
            "--print-server-command",
            help="Print the 'rsync --server ...' line each remote target's forced command must "
            "be (for 'keyforge install --command'); connect nowhere, send nothing.",
        ),
    ] = False,
) -> None:
    """Push the backup directory to each target with rsync over the locked-down key.

    Runs rsync -az --delete --partial-dir=.rsync-partial --delay-updates with --timeout and
    --max-delete (and --bwlimit when set) over ssh with the backup key only, the pinned
    known_hosts file only and no prompts: a file reaches its name on the copy only once the
    whole push is in. It refuses a source that holds no keyforge manifest (an empty or unmounted
    backup disk must never wipe the copy) and a push that would delete archives the last
    successful push sent and retention keeps (unless --accept-loss), takes the backup
    directory's lock, retries network failures with backoff, and appends one JSON line per
    target to the sync log and a line to syslog.

    --dry-run never connects: the receiving side runs its forced command, which ignores
    rsync's -n and would really delete. --print-server-command shows the line that forced
    command must be, learnt from this very rsync command without connecting.
    """
    from keyforge.sender import sync

    cfg = _load_backup_config(config_path)
    tools = sync.find_tools()
    if print_server_command:
        import shlex

        for remote, command in sync.server_commands(cfg, target, tools):
            say(f"# {remote.name} ({remote.destination}) will be asked to run:")
            say(command)
            say(
                f"# lock the key to it there: keyforge install --key {remote.key.name}.pub "
                f"--from ADDRESS --command {shlex.quote(command)}"
            )
        return
    if dry_run:
        for line in sync.dry_run(cfg, target, tools, accept_loss=accept_loss):
            say(line)
        say("dry run: checked the source and the targets; connected nowhere")
        return
    reports = sync.sync(
        cfg,
        target,
        wait=wait,
        accept_loss=accept_loss,
        tools=tools,
        effects=sync.Effects(notify=warn),
    )
    failed = [report for report in reports if not report.ok]
    for report in reports:
        if report.ok:
            say(sync.summary(report))
    if failed:
        raise CommandError("; ".join(sync.summary(report) for report in failed))


@app.command("schedule")
def schedule_command(
    config_path: ConfigOption = None,
    cron: Annotated[
        bool, typer.Option("--cron", help="A /etc/cron.d/keyforge file (default without systemd).")
    ] = False,
    systemd: Annotated[
        bool,
        typer.Option(
            "--systemd",
            help="systemd service and timer units in /etc/systemd/system (default when systemd "
            "runs this machine).",
        ),
    ] = False,
    install: Annotated[
        bool,
        typer.Option("--install", help="Write the files, changing only those that differ."),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="With --install: show what would change; write nothing."),
    ] = False,
    dest: Annotated[
        Path | None,
        typer.Option(
            "--dest",
            metavar="DIR",
            show_default=False,
            help="Install into DIR instead of /etc/cron.d or /etc/systemd/system (for staging "
            "an image).",
        ),
    ] = None,
) -> None:
    """Run the backup daily and the sync at night after it, from cron or systemd timers.

    Times come from the config's [schedule] section. Commands use absolute paths (cron's PATH
    is not yours); the cron file sets PATH and MAILTO; the systemd units run Persistent timers
    with a RandomizedDelaySec, at Nice=10 and IOSchedulingClass=idle, and need the backup
    directory mounted. Without --install the files are printed.

    On the receiving host, a config with a [snapshot] section schedules 'keyforge snapshot' at
    snapshot_at (default two hours after sync_at) as [schedule] user, and the backup and the
    sync only when it also has [backup] or [[targets]].
    """
    from keyforge import config, schedule

    if cron and systemd:
        raise UsageError("--cron and --systemd contradict each other; give one")
    if dry_run and not install:
        raise UsageError("--dry-run goes with --install (without --install nothing is written)")
    path = config.resolve_path(config_path).absolute()
    cfg = config.load(path)
    kind = schedule.CRON if cron else schedule.SYSTEMD if systemd else schedule.default_kind()
    jobs = schedule.jobs_for(cfg, path, schedule.keyforge_argv())
    schedule.check_snapshot_user(cfg, jobs, schedule.owner_name)
    files = schedule.rendered_files(kind, cfg.schedule, jobs, dest)
    if not install:
        for file_path, text in files.items():
            if len(files) > 1:
                say(f"# --- {file_path}")
            typer.echo(text, nl=False)
        return
    changes = schedule.plan_install(files)
    if not dry_run:
        schedule.apply(changes)
    for change in changes:
        if dry_run and change.action != "unchanged":
            typer.echo(change.diff(), nl=False)
            say(f"would be {change.action}: {change.path}")
        else:
            say(f"{change.action}: {change.path}")
    if dest is None:
        for other in schedule.other_kind_files(kind):
            warn(f"{other} is installed too: remove it, or every job runs twice")
    if kind == schedule.SYSTEMD and not dry_run and any(c.action != "unchanged" for c in changes):
        say("next: systemctl daemon-reload && systemctl enable --now " + " ".join(jobs.timers))


# --- capture: learn the command rsync sends ---------------------------------------------------

capture_app = typer.Typer(
    no_args_is_help=True,
    help=(
        "Learn the exact command the sender's rsync asks the receiving host to run, without "
        "ever leaving the key unrestricted.\n\n"
        "On the receiving host: 'capture start', push once (it fails, as it should), "
        "'capture show', then 'keyforge install --from-capture'. On the sending server, "
        "'capture local -- rsync ...' shows the same command without connecting anywhere."
    ),
)
app.add_typer(capture_app, name="capture")

_CAPTURE_LOG_HELP = (
    "The capture log. Default: ~/.ssh/keyforge/capture.log in the home of the authorized_keys "
    "file's user."
)


def _printable(command: str) -> str:
    """The command for a terminal: control characters escaped so they cannot act on it."""
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in command
    )


def _show_record(record: Record, *, verbose: bool) -> None:
    text = "(a login without a command)" if record.command is None else _printable(record.command)
    if verbose:
        say(text)
        say(f"  client {record.client}, key {record.key}, at {record.time}, line {record.lineno}")
        if record.command is not None and text != record.command:
            warn("the command holds control characters, shown escaped; --json has it exactly")
    else:
        say(f"{record.lineno}\t{record.time}\t{record.client}\t{record.key}\t{text}")


@capture_app.command("start")
def capture_start_command(
    key: KeyOption,
    from_: Annotated[
        list[str] | None,
        typer.Option(
            "--from",
            metavar="PATTERNS",
            show_default=False,
            help="Source addresses allowed to use the key while capturing (sshd's from=), as "
            "for 'keyforge install'. Optional: the key can only reach the recorder anyway.",
        ),
    ] = None,
    authorized_keys: AuthorizedKeysOption = None,
    dry_run: DiffDryRunOption = False,
) -> None:
    """Lock the key to a recorder that logs the command the client asks for, and runs nothing.

    Writes ~/.ssh/keyforge/capture-recorder (mode 0700, directory 0700) and makes it the key's
    forced command, with restrict and every no-* option on, through the same safe edit as
    'keyforge install'. Then push once from the sending server: the push fails, and the
    recorder has appended the command, the client address and the time to
    ~/.ssh/keyforge/capture.log (mode 0600). Read it with 'keyforge capture show'.
    """
    from keyforge.receiver import capture

    path = _authorized_keys_path(authorized_keys)
    patterns = [p for value in from_ for p in value.split(",")] if from_ else None
    started = capture.start(path, _read_key_option(key), from_patterns=patterns, dry_run=dry_run)
    _report(started.result, started.entry, dry_run=dry_run)
    verb = "would write" if dry_run else "wrote"
    say(f"{verb} the recorder {started.recorder.script}; records go to {started.recorder.log}")
    for message in (*started.recorder.warnings, *started.warnings):
        warn(message)
    if not dry_run:
        say(
            "Now push once from the sending server (it fails: nothing runs), then run "
            "'keyforge capture show' here."
        )


@capture_app.command("show")
def capture_show_command(
    log: Annotated[
        Path | None,
        typer.Option(
            "--log",
            metavar="PATH",
            show_default=False,
            help="The capture log. Default: ~/.ssh/keyforge/capture.log of the user running "
            "keyforge (run it as the user the backups log in as).",
            readable=False,
        ),
    ] = None,
    key: Annotated[
        str | None,
        typer.Option(
            "--key",
            "-k",
            metavar="PUBFILE|-",
            show_default=False,
            help="Only the records for this public key.",
        ),
    ] = None,
    show_all: Annotated[
        bool, typer.Option("--all", help="Every record, oldest first, one per line.")
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="JSON, with the command exactly as captured."),
    ] = False,
) -> None:
    """Print the latest captured command and the client address it came from.

    The first line is the command exactly as the client sent it (control characters shown
    escaped; --json keeps them). Records that do not decode are reported, never trusted.
    """
    import json

    from keyforge.receiver import capture

    captured = capture.read_log(log if log is not None else capture.default_log_path())
    for problem in captured.bad_lines:
        warn(f"{problem}; skipped")
    wanted = capture.key_id(_read_key_option(key).blob) if key is not None else None
    session = capture.since_start(captured, wanted)
    latest = session.records[-1] if session.records else capture.latest_record(captured, wanted)
    if show_all:
        records = [r for r in captured.records if wanted is None or r.key == wanted]
        if as_json:
            say(json.dumps([r.as_json() for r in records], indent=2))
        else:
            for record in records:
                _show_record(record, verbose=False)
        return
    if as_json:
        say(json.dumps(latest.as_json(), indent=2))
    else:
        _show_record(latest, verbose=True)
        _show_session(session)
    if session.differ:
        warn(
            f"the records since 'capture start' differ ({session.differences()}): someone "
            "else may have used the key; check each, and install the sending server's with "
            "'keyforge install --from-capture --record LINE'"
        )
    if session.start is not None and session.start.from_patterns is None:
        warn("the capture was started without --from: any address could write these records")


def _show_session(session: capture_types.Session) -> None:
    """Every record since 'capture start': line, time, client address, command."""
    start = session.start
    count = f"{len(session.records)} record{'s' if len(session.records) != 1 else ''}"
    if start is None:
        say(f"{count} in the log (it marks no 'capture start')")
    else:
        allowed = ",".join(start.from_patterns) if start.from_patterns else "any address"
        say(f"{count} since 'capture start' at {start.time} (line {start.lineno}, from {allowed})")
    if len(session.records) > 1:
        for record in session.records:
            _show_record(record, verbose=False)


@capture_app.command("local")
def capture_local_command(
    rsync_argv: Annotated[
        list[str],
        typer.Argument(
            metavar="-- rsync [ARGS...]",
            show_default=False,
            help="Your rsync command line, after '--', exactly as cron would run it.",
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Show the command your rsync would ask the receiving host to run, connecting nowhere.

    Runs the given rsync with a stand-in remote shell that records its arguments and exits, and
    prints what ssh would send: the same string the recorder logs on the receiving host. Your
    --rsh/-e options (port, key) are kept in the call and reported, but ssh is never run.
    rsync's own complaint about the closed connection is expected and hidden.
    """
    import json
    import shlex

    from keyforge.sender import capture_local

    result = capture_local.capture_local(rsync_argv)
    if as_json:
        shell = result.remote_shell
        say(
            json.dumps(
                {
                    "command": result.command,
                    "host": result.host,
                    "user": result.user,
                    "remote_shell": shell.command,
                    "port": shell.port,
                    "identities": list(shell.identities),
                },
                indent=2,
            )
        )
        return
    say(result.command)
    login = f"{result.user}@{result.host}" if result.user else result.host
    say(f"  the receiving host ({login}) would see this in SSH_ORIGINAL_COMMAND")
    for line in result.remote_shell.describe():
        say(f"  {line}")
    say("")
    say("On the receiving host, lock the key to it with:")
    say(f"  keyforge install --key PUBFILE --from ADDRESS --command {shlex.quote(result.command)}")


def _capture_for_install(
    key: Entry,
    path: Path,
    patterns: list[str] | None,
    *,
    from_captured_address: bool,
    log: Path | None,
    allow_any_command: bool,
    keep_tilde: bool,
    record_number: int | None = None,
    raw: bool = False,
) -> tuple[str, list[str] | None]:
    """For 'install --from-capture': the forced command, and the from= patterns to use.

    ``raw`` gives the command exactly as captured (the gate's --expect, compared with what the
    client sends), not rewritten for use as command=.
    """
    from keyforge.receiver import capture

    plan = capture.install_plan_from_capture(
        path,
        key,
        log=log,
        allow_any_command=allow_any_command,
        keep_tilde=keep_tilde,
        record_number=record_number,
    )
    record = plan.record
    say(f"captured at {record.time} from {record.client}: {_printable(record.command or '')}")
    for line in plan.captured.notes:
        if not (raw and line.startswith("rewrote ")):
            say(line)
    if from_captured_address:
        patterns = capture.captured_address(plan)
    if raw and record.command is not None:
        return record.command, patterns
    return plan.captured.command, patterns


def _check_gate_options(
    gate: Path | None,
    *,
    exact: bool,
    log: Path | None,
    program: str | None,
    allow_unconfined: bool,
) -> None:
    if gate is not None:
        return
    given = {
        "--exact": exact,
        "--gate-log": log is not None,
        "--gate-program": program is not None,
        "--allow-unconfined": allow_unconfined,
    }
    used = _given(given)
    if used:
        raise UsageError(f"{', '.join(used)} only make sense with --gate")


def _gate_line(
    directory: Path,
    authorized_keys: Path,
    *,
    expect: str | None,
    exact: bool,
    log: Path | None,
    program: str | None,
    allow_unconfined: bool,
) -> str:
    """The forced command running 'keyforge gate' for 'install --gate', checked first."""
    from keyforge.receiver import capture, gate

    config = gate.GateConfig(
        str(directory.absolute()),
        home=str(capture.home_for(authorized_keys)),
        expect=expect,
        exact=exact,
        log=str(log.absolute()) if log is not None else None,
        rsync=gate.rsync_program(),
    )
    config.confine = gate.rsync_can_confine(config.rsync)
    notes = gate.check_setup(config, allow_unconfined=allow_unconfined)
    if not config.confine:
        warn(f"the gate will run {gate.UNCONFINED_RISK}")
    for note in notes:
        say(note)
    return gate.gate_command(gate.gate_program(program), config)


def _check_capture_options(
    *,
    from_capture: bool,
    command: str | None,
    from_: list[str] | None,
    any_source: bool,
    capture_only: dict[str, bool],
) -> None:
    if not from_capture:
        used = _given(capture_only)
        if used:
            raise UsageError(f"{', '.join(used)} only make sense with --from-capture")
        return
    if command is not None:
        raise UsageError("--command and --from-capture contradict each other; give one")
    if capture_only["--from-captured-address"] and (from_ or any_source):
        raise UsageError("--from-captured-address replaces --from and --any-source; give one")


@app.command("status")
def status_command(
    config_path: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
    max_age: Annotated[
        float,
        typer.Option(
            "--max-age",
            metavar="HOURS",
            min=0.0,
            help="Fail when the last successful backup or sync is older than this.",
        ),
    ] = 26.0,  # a daily job, plus its random delay and a slow run
) -> None:
    """When the last backup and the last sync of each target succeeded: age and size.

    Exits 1 when any of them is older than --max-age or never succeeded, or when a target's
    last sync failed, so a monitoring system (Nagios, a cron MAILTO, a systemd OnFailure) can
    call it as is. Reads the newest complete manifest in the backup directory and the sync log;
    connects nowhere. On a receiving host the manifests are the sending server's, and the line
    says so ("pushed copy of server1"): the age of the newest backup that arrived. A config
    with [snapshot] and no [backup] reads the synced copy ([snapshot] source).
    """
    from datetime import UTC, datetime

    from keyforge.sender import status

    cfg = _load_backup_config(config_path)
    result = status.assess(cfg, datetime.now(UTC), max_age)
    if as_json:
        say(status.as_json(result))
    else:
        for line in status.lines(result):
            say(line)
    if not result.ok:
        stale = [item.name for item in result.items if not item.ok]
        raise KeyforgeError(f"not ok: {', '.join(stale)}")


@app.command("check")
def check_command(
    config_path: ConfigOption = None,
    target: Annotated[
        str | None,
        typer.Option(
            "--target",
            "-t",
            metavar="NAME",
            show_default=False,
            help="Check only the [[targets]] entry with this name. Default: every remote target.",
        ),
    ] = None,
) -> None:
    """Prove from the sending server that the backup key can do nothing but its rsync.

    Logs in with the key as the sync does and asks for a command of its own, a shell, a
    terminal and a port forward. A locked key answers each with the forced rsync server (which
    stops at the first unreadable byte, before any file or deletion). Prints what each probe
    saw and exits 1 when the key is less restricted than expected.
    """
    from keyforge.sender import check

    cfg = _load_backup_config(config_path)
    findings = check.run_checks(cfg, target)
    loose = []
    for name, results in findings.items():
        say(f"{name}:")
        for finding in results:
            say(f"  {'ok  ' if finding.ok else 'FAIL'} {finding.probe}: {finding.saw}")
            if not finding.ok:
                loose.append(f"{name}: {finding.probe}")
    for item in check.NOT_PROBED:
        say(f"  not probed: {item}")
    if loose:
        raise KeyforgeError(f"the key is less restricted than expected ({'; '.join(loose)})")


# --- demo ------------------------------------------------------------------------------------


@app.command("demo")
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


# --- snapshot (receiving host) ----------------------------------------------------------------


@app.command("snapshot")
def snapshot_command(
    config_path: ConfigOption = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Run the checks, then print the snapshot it would make, the rsync command and "
            "what retention would remove; write nothing.",
        ),
    ] = False,
    list_: Annotated[
        bool,
        typer.Option(
            "--list",
            help="List the snapshots, oldest first: date, files, size, and the bytes each one "
            "adds (a file hard-linked to an older snapshot counts once).",
        ),
    ] = False,
    accept: Annotated[
        bool,
        typer.Option(
            "--accept",
            help="The copy lost files or sources on purpose: take it as it is, apply "
            "retention, and judge later copies against this snapshot (instead of failing as a "
            "wiped copy). Archives that do not match their manifests are never accepted.",
        ),
    ] = False,
) -> None:
    """Keep dated snapshots of the synced copy where the backup key cannot reach them.

    Run on the receiving host after each push, as root or a user of its own: never as the user
    the backup key logs in as. Each run copies [snapshot] source into [snapshot] directory as
    a new snapshot named by the UTC time (rsync -a --link-dest: unchanged files are hard links
    to the previous snapshot), complete or not at all, then removes snapshots older than
    retention_days, always keeping the newest min_keep.

    Refuses to run when the store lies inside the synced copy, when it or a directory above it
    is writable by the copy's owner or by others, or when run as the copy's owner. Each snapshot
    is judged by content: every archive its manifests list must be there with its recorded size,
    and what is new since the last good snapshot must match its recorded sha256. When it is not
    a good copy (an archive cut short, missing or forged, or the copy looks wiped: empty, its
    manifests or a source's full backups gone, most of its files gone) the snapshot is still
    taken as evidence but nothing is pruned, and the run fails saying so. Retention counts only
    good snapshots and never removes the newest good one.
    """
    from keyforge.receiver import snapshot
    from keyforge.sender import backup

    cfg = _load_backup_config(config_path)
    if list_:
        if dry_run:
            raise UsageError("--list and --dry-run contradict each other; give one")
        infos = snapshot.list_snapshots(cfg)
        for info in infos:
            flag = f"  (not a good copy: {info.problem})" if info.problem else ""
            say(
                f"{info.stamp}  {snapshot.human_time(info.when)}  {info.files:>8} files  "
                f"{backup.human_size(info.size):>9}  {backup.human_size(info.new_size):>9} new"
                + flag
            )
        if not infos:
            say(f"no snapshot in {cfg.snapshot.directory} yet")
        return
    report = snapshot.run_snapshot(cfg, dry_run=dry_run, accept=accept)
    for message in report.warnings:
        warn(message)
    linked = f", unchanged files linked to {report.link_dest}" if report.link_dest else ""
    verb = "would take" if dry_run else "took"
    say(f"{verb} snapshot {report.path} ({report.count.files} files{linked})")
    if dry_run:
        say(f"  {' '.join(report.argv)}")
    for stamp in report.pruned:
        say(f"{'would prune' if dry_run else 'pruned'} snapshot {stamp}")
    if report.problem:
        raise KeyforgeError(snapshot.problem_message(report))


# --- rotate: a new backup key, with backups working throughout --------------------------------


@app.command("rotate")
def rotate_command(
    config_path: ConfigOption = None,
    target: Annotated[
        str | None,
        typer.Option(
            "--target",
            "-t",
            metavar="NAME",
            show_default=False,
            help="The [[targets]] entry whose key rotates. Default: the only one.",
        ),
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
        typer.Option("--dry-run", help="Print the steps that would run; change nothing."),
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

    cfg = _load_backup_config(config_path)
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


# --- audit / explain: what the keys on a host may do ------------------------------------------


@app.command("audit")
def audit_command(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(
            metavar="[PATH...]",
            show_default=False,
            help="authorized_keys files to audit. Default: the current user's "
            "~/.ssh/authorized_keys (and ~/.ssh/authorized_keys2 when present), the files "
            "sshd reads by default.",
        ),
    ] = None,
    all_users: Annotated[
        bool,
        typer.Option(
            "--all-users",
            help="Also audit ~/.ssh/authorized_keys and authorized_keys2 in the home of every "
            "user in the passwd database (homes that do not exist are skipped). Run as root to "
            "read them all.",
        ),
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print the report as JSON (schema keyforge-audit/1)."),
    ] = False,
) -> None:
    """Report what each key in authorized_keys files may do, and what makes sshd ignore them.

    Per key: no command= or from=, port/agent/X11 forwarding, a terminal or ~/.ssh/rc allowed
    (restrict and the options that re-enable something taken into account), a DSA or small RSA
    key, duplicates, an expired expiry-time; per line: what sshd would refuse, with the reason;
    per file: the ownership and modes that make sshd's StrictModes ignore it. Each finding has
    a severity; the exit code is the worst one: 0 nothing above info, 10 low, 11 medium,
    12 high, 13 critical. Reads only; changes nothing.
    """
    from keyforge.receiver import audit

    report = audit.run_audit(paths or [], all_users=all_users)
    if as_json:
        say(audit.as_json(report))
    else:
        for line in audit.human_lines(report):
            say(line)
    if report.exit_code:
        raise typer.Exit(report.exit_code)


@app.command("explain")
def explain_command(
    line: Annotated[
        str | None,
        typer.Argument(
            metavar="LINE",
            show_default=False,
            help="One authorized_keys line, quoted as a single argument.",
        ),
    ] = None,
    key: Annotated[
        str | None,
        typer.Option(
            "--key",
            "-k",
            metavar="PUBFILE|-",
            show_default=False,
            help="Explain the line(s) holding this public key instead of LINE.",
        ),
    ] = None,
    authorized_keys: Annotated[
        Path | None,
        typer.Option(
            "--authorized-keys",
            "-f",
            metavar="PATH",
            show_default=False,
            readable=False,  # keyforge's own one-line error says why
            help="With --key: the authorized_keys file to search. Default: "
            "~/.ssh/authorized_keys of the user running keyforge. Only read.",
        ),
    ] = None,
) -> None:
    """Say in plain words what an authorized_keys line lets its key do.

    Which command it is forced to run (or any command, including a shell), from where, until
    when, and what is still allowed or refused (forwarding, terminal, ~/.ssh/rc, environment,
    certificates). Each option is shown in the order sshd reads it, with its effect, then the
    sum of them. A line sshd would refuse is reported with the reason and exit code 3.
    """
    from keyforge.errors import ParseError
    from keyforge.receiver import explain

    if (line is None) == (key is None):
        raise UsageError("give either LINE or --key PUBFILE")
    if key is None:
        assert line is not None
        if authorized_keys is not None:
            raise UsageError("--authorized-keys goes with --key")
        for text in explain.explain_line(line).lines():
            say(text)
        return
    path = _authorized_keys_path(authorized_keys)
    wanted = _read_key_option(key)
    found = explain.explain_key_in_file(path, wanted)
    if not found:
        raise KeyforgeError(f"key {_key_label(wanted)} is not in {path}")
    if len([f for f in found if f.explanation is not None]) > 1:
        say(
            f"the key stands on {len(found)} lines of {path}: sshd uses the first one whose "
            "from= and expiry-time admit the connection"
        )
    ignored = []
    for index, item in enumerate(found):
        if index:
            say("")
        if item.explanation is None:
            say(f"line {item.lineno}: sshd ignores this line: {item.ignored_because}")
            ignored.append(str(item.lineno))
            continue
        for text in item.explanation.lines():
            say(text)
    if ignored:
        raise ParseError(
            f"sshd ignores line {', '.join(ignored)} holding this key", source=str(path)
        )


@app.command("gate")
def gate_command(
    directory: Annotated[
        str,
        typer.Option(
            "--dir",
            metavar="DIR",
            help="The only directory pushes may write to (absolute, or relative to the home).",
        ),
    ],
    expect: Annotated[
        str | None,
        typer.Option(
            "--expect",
            metavar="COMMAND",
            show_default=False,
            help="The command captured for this key. Another command that passes the checks "
            "still runs; the first push with each new text is logged once as drift, with both "
            "texts and a hint to run 'keyforge capture' again.",
        ),
    ] = None,
    exact: Annotated[
        bool,
        typer.Option("--exact", help="Run only the exact --expect text (the strict comparison)."),
    ] = False,
    log: Annotated[
        str | None,
        typer.Option(
            "--log",
            metavar="PATH",
            show_default=False,
            help="The JSON-lines log of every decision (default ~/.ssh/keyforge/gate.log, 0600).",
        ),
    ] = None,
    rsync: Annotated[
        str,
        typer.Option("--rsync", metavar="PATH", help="The rsync to run (an absolute path)."),
    ] = "/usr/bin/rsync",
    no_munge_links: Annotated[
        bool,
        typer.Option(
            "--no-munge-links",
            help="Do not add --munge-links. By default rsync stores pushed symbolic links "
            "munged (prefixed /rsyncd-munged/), so a link pushed by one run cannot lead a "
            "later run out of DIR. On restore, rsync --munge-links on the side sending them "
            "back (-M--munge-links when that is this host) turns them back.",
        ),
    ] = False,
    confine: Annotated[
        bool,
        typer.Option(
            "--confine",
            help="Pass --confine-root=DIR and --drop-D (rsync 3.5 and later): paths rsync "
            "resolves itself, such as filter merge files named inside the protocol, stay in "
            "DIR. 'keyforge install --gate' adds it when this host's rsync has them. Without "
            "it the gate passes --no-specials (--no-D as root) and logs a warning line with "
            "each push.",
        ),
    ] = False,
) -> None:
    """The forced command for a backup key: allow only an rsync push into one directory.

    Put it in authorized_keys' command= (keyforge install --gate DIR does). It reads
    SSH_ORIGINAL_COMMAND and runs rsync, with an argument list and never a shell, only for a
    receive into DIR: a pull (--sender), a destination outside DIR, a '..' component, a symbolic
    link leading out, options that name files elsewhere or follow links on this host, and any
    unquoted shell syntax are refused with one line on stderr and exit status 1. Every decision
    is logged as a JSON line with the client address. --delete is allowed: it stays in DIR.
    sshd runs 'keyforge gate' without loading this command line's modules.
    """
    import os

    from keyforge.receiver import gate

    args = ["--dir", directory, "--rsync", rsync]
    if expect is not None:
        args += ["--expect", expect]
    if exact:
        args.append("--exact")
    if log is not None:
        args += ["--log", log]
    if no_munge_links:
        args.append("--no-munge-links")
    if confine:
        args.append("--confine")
    raise typer.Exit(gate.run(args, os.environ))


def main() -> None:
    """Console-script entry point."""
    try:
        app(prog_name="keyforge")
    except KeyboardInterrupt:
        typer.echo("keyforge: interrupted", err=True)
        sys.exit(130)
