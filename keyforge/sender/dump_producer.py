"""The producer stage of every dump: ``python -m keyforge.sender.dump_producer ARGV…``.

It runs ARGV (pg_dump, mariadb-dump, the user's command…) with its standard output on a pipe,
moves those bytes on to its own standard output with splice(2), inside the kernel, counting
them, and ends its standard error with one line saying how many bytes ARGV wrote and how it
ended. So the archive pipeline, which only sees its first stage's exit status and stderr, can
tell a dump that wrote nothing (a header-only compressed file looks like any other) from one
that did, whatever the stages after it (compressor, encryption) are. ARGV's own stderr passes
straight through, for the one line a failure is reported with.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Sequence

from keyforge.errors import CommandError
from keyforge.infra import runner

SPLICE_CHUNK = 1 << 20
# the last line of this stage's stderr: "keyforge-dump: 1234 bytes, exit 0" (or "signal 9")
_TRAILER_RE = re.compile(r"^keyforge-dump: (?P<bytes>\d+) bytes, (?P<how>exit|signal) (?P<n>\d+)$")


def argv(producer: Sequence[str], python: str = sys.executable) -> list[str]:
    """``producer`` run through this counting stage."""
    return [python, "-m", "keyforge.sender.dump_producer", *producer]


def trailer(count: int, returncode: int) -> str:
    how = f"signal {-returncode}" if returncode < 0 else f"exit {returncode}"
    return f"keyforge-dump: {count} bytes, {how}"


def read_trailer(stderr: str) -> tuple[int, int, str] | None:
    """(bytes written, ARGV's return code as Popen gives it, the stderr before the trailer),
    or None when the stage ended without one (it was killed itself)."""
    lines = stderr.rstrip("\n").split("\n")
    match = _TRAILER_RE.match(lines[-1]) if lines else None
    if match is None:
        return None
    code = int(match["n"])
    returncode = -code if match["how"] == "signal" else code
    return int(match["bytes"]), returncode, "\n".join(lines[:-1])


def _move(source: int, sink: int) -> int:
    count = 0
    while True:
        try:
            moved = os.splice(source, sink, SPLICE_CHUNK)
        except BrokenPipeError:
            return count  # the compressor stopped: its own status says why
        if moved == 0:
            return count
        count += moved


def main(args: list[str]) -> int:
    if not args:
        sys.stderr.write("usage: python -m keyforge.sender.dump_producer PROGRAM [ARG…]\n")
        return 2
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        proc = runner.spawn(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    except CommandError as err:
        sys.stderr.write(f"{err}\n{trailer(0, 127)}\n")
        return 127
    assert proc.stdout is not None
    count = _move(proc.stdout.fileno(), sys.stdout.fileno())
    proc.stdout.close()  # a producer still writing gets SIGPIPE instead of hanging
    returncode = proc.wait()
    sys.stderr.write(trailer(count, returncode) + "\n")
    sys.stderr.flush()
    return returncode if returncode >= 0 else 128 - returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
