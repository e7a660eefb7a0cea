"""``keyforge capture start``, ``show`` (receiving host) and ``capture local`` (sending server):
learn the command rsync sends."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from keyforge.cli import options
from keyforge.cli.output import printable, report, say, warn

if TYPE_CHECKING:
    from keyforge.receiver import capture as capture_types
    from keyforge.receiver.capture import Record

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


def _show_record(record: Record, *, verbose: bool) -> None:
    text = "(a login without a command)" if record.command is None else printable(record.command)
    if verbose:
        say(text)
        say(f"  client {record.client}, key {record.key}, at {record.time}, line {record.lineno}")
        if record.command is not None and text != record.command:
            warn("the command holds control characters, shown escaped; --json has it exactly")
    else:
        say(f"{record.lineno}\t{record.time}\t{record.client}\t{record.key}\t{text}")


def capture_start_command(
    key: options.KeyOption,
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
    authorized_keys: options.AuthorizedKeysOption = None,
    dry_run: options.DiffDryRunOption = False,
) -> None:
    """Lock the key to a recorder that logs the command the client asks for, and runs nothing.

    Writes ~/.ssh/keyforge/capture-recorder (mode 0700, directory 0700) and makes it the key's
    forced command, with restrict and every no-* option on, through the same safe edit as
    'keyforge install'. Then push once from the sending server: the push fails, and the
    recorder has appended the command, the client address and the time to
    ~/.ssh/keyforge/capture.log (mode 0600). Read it with 'keyforge capture show'.
    """
    from keyforge.receiver import capture

    path = options.authorized_keys_path(authorized_keys)
    patterns = options.split_patterns(from_)
    started = capture.start(path, options.read_key(key), from_patterns=patterns, dry_run=dry_run)
    report(started.result, started.entry, dry_run=dry_run)
    verb = "would write" if dry_run else "wrote"
    say(f"{verb} the recorder {started.recorder.script}; records go to {started.recorder.log}")
    for message in (*started.recorder.warnings, *started.warnings):
        warn(message)
    if not dry_run:
        say(
            "Now push once from the sending server (it fails: nothing runs), then run "
            "'keyforge capture show' here."
        )


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
        options.key("Only the records for this public key."),
    ] = None,
    show_all: Annotated[
        bool, typer.Option("--all", help="Every record, oldest first, one per line.")
    ] = False,
    as_json: Annotated[
        bool,
        options.as_json("JSON, with the command exactly as captured."),
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
    wanted = capture.key_id(options.read_key(key).blob) if key is not None else None
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


def capture_local_command(
    rsync_argv: Annotated[
        list[str],
        typer.Argument(
            metavar="-- rsync [ARGS...]",
            show_default=False,
            help="Your rsync command line, after '--', exactly as cron would run it.",
        ),
    ],
    as_json: Annotated[bool, options.as_json("Print the result as JSON.")] = False,
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


def register(app: typer.Typer) -> None:
    capture_app.command("start")(capture_start_command)
    capture_app.command("show")(capture_show_command)
    capture_app.command("local")(capture_local_command)
    app.add_typer(capture_app, name="capture")
