"""GNU tar's own verbose listing of an archive, read back (pure).

``tar --list --verbose`` with the options in :data:`LIST_OPTIONS` prints one line per member::

    -rw-r--r-- 0/0               6 2026-11-24 01:15:03.941331725 "./etc/hosts"
    lrwxrwxrwx 0/0               0 2026-11-24 01:15:03 "./etc/localtime" -> "../zone/UTC"
    hrw-r--r-- 0/0               0 2026-11-24 01:15:03 "./etc/b" link to "./etc/a"

Numeric owners, UTC times to the second (with tar's fraction when the archive holds one) and
C-style quoted names (``--quoting-style=c``) make every line unambiguous: a name may hold any
byte, and only inside the quotes, escaped. ``list``, ``find``, ``restore --path`` and ``drill``
read members through :func:`parse_listing` alone, so they agree on what an archive holds.
"""

from __future__ import annotations

import calendar
import dataclasses
import datetime as dt
import functools
import re

from keyforge.errors import CommandError

# a line of tar's listing that is not what LIST_OPTIONS make tar print: tar misbehaved
ListingError = CommandError

# LC_ALL=C: bytes outside ASCII come out as octal escapes, whatever the locale says is printable
LIST_OPTIONS = (
    "--list",
    "--verbose",
    "--file=-",
    "--listed-incremental=/dev/null",
    "--utc",
    "--full-time",
    "--numeric-owner",
    "--quoting-style=c",
)
LIST_ENV = {"LC_ALL": "C", "TZ": "UTC"}

KINDS = {
    "-": "file",
    "d": "dir",
    "l": "symlink",
    "h": "hardlink",
    "c": "char",
    "b": "block",
    "p": "fifo",
    "s": "socket",
}

_MODE_BITS = "rwxrwxrwx"
_SPECIAL = {2: ("s", "S", 0o4000), 5: ("s", "S", 0o2000), 8: ("t", "T", 0o1000)}

_LINE_RE = re.compile(
    rb"^(?P<mode>[-dlhcbps][-rwxsStT]{9})[*+.]? +(?P<uid>\d+)/(?P<gid>\d+) +"
    rb"(?P<size>\d+|\d+, *\d+) +"
    rb"(?:(?P<date>\d{4,}-\d\d-\d\d \d\d:\d\d:\d\d)|(?P<epoch>-?\d+))(?:\.(?P<frac>\d+))? +"
    rb'(?P<rest>".*)\Z'
)

_ESCAPES = {
    ord("a"): 7,
    ord("b"): 8,
    ord("f"): 12,
    ord("n"): 10,
    ord("r"): 13,
    ord("t"): 9,
    ord("v"): 11,
    ord("\\"): 92,
    ord('"'): 34,
    ord("?"): 63,
    ord("'"): 39,
}


@dataclasses.dataclass(frozen=True)
class Member:
    """One member as tar lists it; ``path`` is relative to the source (b"" for its top)."""

    path: bytes
    kind: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int  # exact: a float cannot hold seconds and nanoseconds of today's times
    target: bytes = b""  # a symlink's target, or the path a hard link links to

    @property
    def mtime(self) -> int:
        """Whole seconds, as the restored file's st_mtime shows them."""
        return self.mtime_ns // 1_000_000_000


def member_path(raw: bytes) -> bytes:
    """tar's ``./etc/x`` (or ``./`` for the top) as ``etc/x`` (or b"")."""
    while raw.startswith(b"./"):
        raw = raw[2:]
    return b"" if raw in (b".", b"") else raw.rstrip(b"/")


@functools.lru_cache(maxsize=1024)
def mode_bits(text: str) -> int:
    """``rwsr-x--T`` as 0o5750: the permission letters ls and tar print, with their specials."""
    value = 0
    for index, char in enumerate(text):
        bit = 1 << (8 - index)
        special = _SPECIAL.get(index)
        if special is not None and char in special[:2]:
            value |= special[2]
            if char == special[0]:
                value |= bit
        elif char == _MODE_BITS[index]:
            value |= bit
        elif char != "-":
            raise ListingError(f"not a permission string: {text!r}")
    return value


def unquote(text: bytes, start: int = 0) -> tuple[bytes, int]:
    """The bytes of the C-quoted string at ``text[start]`` and the index just past it."""
    if text[start : start + 1] != b'"':
        raise ListingError(f"expected a quoted name in {text!r}")
    end = text.find(b'"', start + 1)
    if end != -1 and text.find(b"\\", start + 1, end) == -1:
        return text[start + 1 : end], end + 1  # the usual name: nothing escaped
    out = bytearray()
    i = start + 1
    while i < len(text):
        char = text[i]
        if char == ord('"'):
            return bytes(out), i + 1
        if char != ord("\\"):
            out.append(char)
            i += 1
            continue
        if i + 1 >= len(text):
            break
        nxt = text[i + 1]
        if nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
            continue
        digits = re.match(rb"[0-7]{1,3}", text[i + 1 : i + 4])
        if digits is None:
            raise ListingError(f"unknown escape \\{chr(nxt)} in {text!r}")
        out.append(int(digits.group(), 8) & 0xFF)
        i += 1 + len(digits.group())
    raise ListingError(f"unterminated quoted name in {text!r}")


def _mtime_ns(match: re.Match[bytes]) -> int:
    frac = match["frac"] or b""
    nanos = int((frac + b"000000000")[:9])
    if match["epoch"] is not None:  # tar prints a time it cannot show as a date as seconds
        whole = int(match["epoch"])
        return whole * 1_000_000_000 + (-nanos if match["epoch"].startswith(b"-") else nanos)
    return _seconds(match["date"]) * 1_000_000_000 + nanos


@functools.lru_cache(maxsize=4096)
def _day_seconds(day: bytes) -> int:
    return calendar.timegm(dt.datetime.strptime(day.decode(), "%Y-%m-%d").timetuple())


def _seconds(stamp: bytes) -> int:
    """``2026-11-24 01:15:03`` (UTC) as seconds since the epoch; days are few, so cached."""
    day, _, clock = stamp.partition(b" ")
    hours, minutes, seconds = int(clock[0:2]), int(clock[3:5]), int(clock[6:8])
    if hours > 23 or minutes > 59 or seconds > 60:
        raise ListingError(f"not a time of day: {stamp!r}")
    try:
        base = _day_seconds(day)
    except ValueError:
        raise ListingError(f"not a date: {stamp!r}") from None
    return base + hours * 3600 + minutes * 60 + seconds


def parse_line(line: bytes) -> Member:
    match = _LINE_RE.match(line)
    if match is None:
        raise ListingError(f"cannot read tar's listing line {line[:200]!r}")
    mode_text = match["mode"].decode()
    kind = KINDS[mode_text[0]]
    name, end = unquote(match["rest"])
    rest = match["rest"][end:]
    target = b""
    if kind in ("symlink", "hardlink"):
        separator = b" -> " if kind == "symlink" else b" link to "
        if not rest.startswith(separator):
            raise ListingError(f"a {kind} without its target in {line[:200]!r}")
        raw_target, end = unquote(rest, len(separator))
        rest = rest[end:]
        target = raw_target if kind == "symlink" else member_path(raw_target)
    if rest:
        raise ListingError(f"unexpected text after the name in {line[:200]!r}")
    size_text = match["size"]
    return Member(
        path=member_path(name),
        kind=kind,
        mode=mode_bits(mode_text[1:]),
        uid=int(match["uid"]),
        gid=int(match["gid"]),
        size=0 if b"," in size_text else int(size_text),  # a device prints major,minor
        mtime_ns=_mtime_ns(match),
        target=target,
    )


def parse_listing(output: bytes) -> list[Member]:
    """Every member of tar's listing, in archive order."""
    return [parse_line(line) for line in output.split(b"\n") if line]
