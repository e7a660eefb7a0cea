"""One structured line per run for the system log: journald's native protocol when systemd
runs the job, syslog otherwise.

journald's native socket (``/run/systemd/journal/socket``) takes one datagram of ``FIELD=value``
lines, so a run's job, exit code and duration arrive as fields ``journalctl -o verbose`` shows
and ``journalctl KEYFORGE_JOB=backup`` selects; no program is started for it. Anything that does
not reach the journal falls back to syslog, and nothing here ever fails a job.
"""

from __future__ import annotations

import contextlib
import os
import socket
import syslog
from collections.abc import Mapping
from pathlib import Path

JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
IDENTIFIER = "keyforge"
# syslog(3) priorities, which journald's PRIORITY= uses too
INFO = syslog.LOG_INFO
ERR = syslog.LOG_ERR
WARNING = syslog.LOG_WARNING


def under_systemd(environ: Mapping[str, str] | None = None) -> bool:
    """A process systemd started as a service: it sets INVOCATION_ID, and JOURNAL_STREAM when
    stdout goes to the journal."""
    env = os.environ if environ is None else environ
    return bool(env.get("INVOCATION_ID") or env.get("JOURNAL_STREAM"))


def _field_name(name: str) -> str:
    """journald field names: upper-case letters, digits and '_', not starting with '_'."""
    cleaned = "".join(c if c.isalnum() else "_" for c in name.upper()).lstrip("_")
    return cleaned or "FIELD"


def native_datagram(message: str, priority: int, fields: Mapping[str, str]) -> bytes:
    """journald's native format (pure): ``NAME=value\\n``, or for a value holding a newline
    ``NAME\\n`` + its length as 64-bit little-endian + the value + ``\\n``."""
    items = {"MESSAGE": message, "PRIORITY": str(priority), "SYSLOG_IDENTIFIER": IDENTIFIER}
    items.update({_field_name(k): v for k, v in fields.items()})
    out = bytearray()
    for name, value in items.items():
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += name.encode() + b"\n" + len(data).to_bytes(8, "little") + data + b"\n"
        else:
            out += name.encode() + b"=" + data + b"\n"
    return bytes(out)


def send_journal(
    message: str, priority: int, fields: Mapping[str, str], path: Path = JOURNAL_SOCKET
) -> bool:
    """One datagram to journald's socket; False when there is no journal to take it."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(native_datagram(message, priority, fields), str(path))
    except OSError:
        return False
    return True


def send_syslog(message: str, priority: int) -> None:
    with contextlib.suppress(OSError):
        syslog.openlog(IDENTIFIER, syslog.LOG_PID, syslog.LOG_DAEMON)
        syslog.syslog(priority, message)
        syslog.closelog()


def log_run(
    message: str,
    priority: int,
    fields: Mapping[str, str],
    *,
    environ: Mapping[str, str] | None = None,
    path: Path = JOURNAL_SOCKET,
) -> str:
    """The run's line to journald (under systemd) or syslog; returns which took it."""
    if under_systemd(environ) and send_journal(message, priority, fields, path):
        return "journald"
    send_syslog(message, priority)
    return "syslog"
