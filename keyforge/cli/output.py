"""What the commands print: plain lines on stdout, warnings on stderr, and the reports several
commands share (an authorized_keys change, a key's label, a command made safe for a terminal)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from keyforge.receiver.install import Result
    from keyforge.ssh.authorized_keys import Entry


# who else hears each line (a monitored job's log tail), besides the terminal
_listeners: list[Callable[[str], None]] = []


def _tell(line: str) -> None:
    for listener in _listeners:
        listener(line)


@contextlib.contextmanager
def listening(listener: Callable[[str], None]) -> Iterator[None]:
    """Every line said or warned inside the block also goes to ``listener``."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)


def say(message: str) -> None:
    typer.echo(message)
    _tell(message)


def warn(message: str) -> None:
    typer.echo(f"warning: {message}", err=True)
    _tell(f"warning: {message}")


def job_line(message: str, *, verbose: bool) -> None:
    """A scheduled job's line about work that went well: in its log either way, on stdout only
    with --verbose or in a terminal, so cron has nothing to mail on a good night."""
    if verbose or sys.stdout.isatty():
        say(message)
    else:
        _tell(message)


def printable(command: str) -> str:
    """The command for a terminal: control characters escaped so they cannot act on it."""
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in command
    )


def key_label(key: Entry) -> str:
    try:
        fingerprint = key.fingerprint()
    except ValueError:
        fingerprint = f"{key.keytype} ...{key.blob[-12:]}"
    return f"{fingerprint} ({key.comment})" if key.comment else fingerprint


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


def report(result: Result, key: Entry, *, dry_run: bool) -> None:
    """One authorized_keys change (install, revoke, capture start): the diff of a dry run,
    what was done and where, the line, the backup kept, and the warnings."""
    plan = result.plan
    if dry_run and plan.changed:
        typer.echo(plan.diff(str(result.path)), nl=False)
    template = _WOULD.get(plan.action, _DONE[plan.action]) if dry_run else _DONE[plan.action]
    where = ""
    if plan.linenos:
        label = "line" if len(plan.linenos) == 1 else "lines"
        where = f" ({label} {', '.join(map(str, plan.linenos))})"
    suffix = " (dry run: nothing written)" if dry_run and plan.changed else ""
    say(template.format(key=key_label(key), path=result.path) + where + suffix)
    if plan.line is not None:
        say(plan.line)
    if result.backup is not None:
        say(f"previous file kept as {result.backup}")
    for message in result.warnings:
        warn(message)
