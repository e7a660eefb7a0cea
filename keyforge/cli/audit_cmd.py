"""``keyforge audit`` and ``keyforge explain``: what the keys on a host may do."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from keyforge.cli import options
from keyforge.cli.output import key_label, say
from keyforge.errors import KeyforgeError, UsageError


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
        options.as_json("Print the report as JSON (schema keyforge-audit/1)."),
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
        options.key("Explain the line(s) holding this public key instead of LINE."),
    ] = None,
    authorized_keys: Annotated[
        Path | None,
        options.authorized_keys(
            "With --key: the authorized_keys file to search. Default: "
            "~/.ssh/authorized_keys of the user running keyforge. Only read."
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
    path = options.authorized_keys_path(authorized_keys)
    wanted = options.read_key(key)
    found = explain.explain_key_in_file(path, wanted)
    if not found:
        raise KeyforgeError(f"key {key_label(wanted)} is not in {path}")
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


def register(app: typer.Typer) -> None:
    app.command("audit")(audit_command)
    app.command("explain")(explain_command)
