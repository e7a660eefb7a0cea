"""OpenSSH's allowed_signers file (ssh-keygen(1), ALLOWED SIGNERS): read, matched, written.

One line per signer: ``principals [options] keytype base64 [comment]``. ``principals`` is a
comma-separated list of patterns (``*``, ``?``, ``!`` negation, as sshd's match_pattern_list
reads them), optionally in double quotes; the options are ``cert-authority``,
``namespaces="..."``, ``valid-after="..."`` and ``valid-before="..."`` (names in any case, each
at most once, times ``YYYYMMDD[HHMM[SS]]`` with an optional ``Z`` for UTC, local time
otherwise). ``#`` starts a comment line.

ssh-keygen -Y verify stops at the first line it cannot read; keyforge refuses the whole file
instead and names the line, so a typo never silently drops a signer or lets one through.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import re
from collections.abc import Iterable
from pathlib import Path

from keyforge.errors import FileError, ParseError
from keyforge.ssh import wire

_TIME_RE = re.compile(r"^(\d{8})(\d{4}(\d{2})?)?(Z?)\Z")
_OPTION_NAMES = ("namespaces", "valid-after", "valid-before")


@dataclasses.dataclass(frozen=True)
class Signer:
    """One line of an allowed_signers file."""

    principals: str  # the pattern list, as written (without quotes)
    key_type: str
    key_blob: bytes
    cert_authority: bool = False
    namespaces: str | None = None  # a pattern list, or None for any namespace
    valid_after: str | None = None  # the time as written
    valid_before: str | None = None
    comment: str = ""

    @property
    def fingerprint(self) -> str:
        return wire.fingerprint(self.key_blob)

    def admits(self, principal: str, namespace: str, key_blob: bytes, now: dt.datetime) -> bool:
        """Whether this line lets ``key_blob`` sign as ``principal`` in ``namespace`` at
        ``now`` (aware), as ssh-keygen -Y verify decides: a plain key, never a CA line."""
        if self.cert_authority or key_blob != self.key_blob:
            return False
        if match_list(principal, self.principals) != 1:
            return False
        if self.namespaces is not None and match_list(namespace, self.namespaces) != 1:
            return False
        if self.valid_after is not None and now < parse_time(self.valid_after):
            return False
        return not (self.valid_before is not None and now > parse_time(self.valid_before))


@dataclasses.dataclass(frozen=True)
class AllowedSigners:
    signers: tuple[Signer, ...]
    path: str = ""

    def find(
        self, principal: str, namespace: str, key_blob: bytes, now: dt.datetime | None = None
    ) -> Signer | None:
        when = now or dt.datetime.now(dt.UTC)
        return next(
            (s for s in self.signers if s.admits(principal, namespace, key_blob, when)), None
        )


# --- patterns and times ------------------------------------------------------------------------


def match_pattern(text: str, pattern: str) -> bool:
    """OpenSSH's match_pattern: ``*`` any run, ``?`` one character, everything else literal."""
    regex = "".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern)
    return re.fullmatch(regex, text, flags=re.DOTALL) is not None


def match_list(text: str, patterns: str) -> int:
    """OpenSSH's match_pattern_list: 1 on a match, -1 when a negated pattern matches, else 0."""
    found = 0
    for item in patterns.split(","):
        negated = item.startswith("!")
        if match_pattern(text, item[1:] if negated else item):
            if negated:
                return -1
            found = 1
    return found


def parse_time(text: str) -> dt.datetime:
    """A valid-after/valid-before time, aware: ``Z`` is UTC, anything else local time."""
    match = _TIME_RE.match(text)
    if match is None:
        raise ValueError(text)
    digits = match[1] + (match[2] or "")
    fmt = {8: "%Y%m%d", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}[len(digits)]
    when = dt.datetime.strptime(digits, fmt)
    if match[4]:
        return when.replace(tzinfo=dt.UTC)
    return when.astimezone()


# --- reading -----------------------------------------------------------------------------------


def _word(text: str, pos: int) -> tuple[str, int]:
    """The next whitespace-delimited word (a leading double quote runs to the next one)."""
    if text.startswith('"', pos):
        end = text.find('"', pos + 1)
        if end < 0:
            raise ValueError("unterminated quoted principals")
        word, pos = text[pos + 1 : end], end + 1
    else:
        match = re.compile(r"[^ \t]*").match(text, pos)
        assert match is not None
        word, pos = match.group(), match.end()
    return word, _skip_space(text, pos)


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t":
        pos += 1
    return pos


def _quoted(text: str, pos: int) -> tuple[str, int]:
    """An option's double-quoted value, ``\\"`` standing for a quote (OpenSSH's opt_dequote)."""
    if not text.startswith('"', pos):
        raise ValueError("missing start quote")
    pos += 1
    value: list[str] = []
    while pos < len(text) and text[pos] != '"':
        if text.startswith('\\"', pos):
            pos += 1
        value.append(text[pos])
        pos += 1
    if pos >= len(text):
        raise ValueError("missing end quote")
    return "".join(value), pos + 1


def _options(text: str, pos: int) -> tuple[dict[str, str | bool], int]:
    found: dict[str, str | bool] = {}
    while True:
        lowered = text[pos:].lower()
        if lowered.startswith("cert-authority") and (
            len(lowered) == len("cert-authority") or lowered[len("cert-authority")] in ", \t"
        ):
            if "cert-authority" in found:
                raise ValueError('multiple "cert-authority" options')
            found["cert-authority"] = True
            pos += len("cert-authority")
        else:
            name = next((n for n in _OPTION_NAMES if lowered.startswith(n + "=")), None)
            if name is None:
                raise ValueError("unsupported option")
            if name in found:
                raise ValueError(f'multiple "{name}" clauses')
            value, pos = _quoted(text, pos + len(name) + 1)
            if name != "namespaces":
                try:
                    parse_time(value)
                except ValueError:
                    raise ValueError(f'invalid "{name}" time {value!r}') from None
            found[name] = value
        if pos >= len(text) or text[pos] in " \t":
            return found, _skip_space(text, pos)
        if text[pos] != ",":
            raise ValueError("unknown key option")
        pos += 1
        if pos >= len(text) or text[pos] in " \t":
            raise ValueError("unexpected end of options")


def _key(text: str, pos: int) -> tuple[str, bytes, str] | None:
    """``keytype base64 [comment]`` at ``pos``, or None when no key starts there."""
    parts = text[pos:].split(None, 2)
    if len(parts) < 2 or not re.fullmatch(r"[a-z0-9@.-]+", parts[0]):
        return None
    try:
        blob = base64.b64decode(parts[1], validate=True)
        embedded = wire.WireReader(blob).string().decode("ascii")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    if embedded != parts[0]:
        return None
    return parts[0], blob, parts[2].strip() if len(parts) == 3 else ""


def parse_line(line: str) -> Signer | None:
    """One line; None for a blank or comment line, ValueError saying why for a bad one."""
    text = line.rstrip("\r\n")
    pos = _skip_space(text, 0)
    if pos >= len(text) or text[pos] == "#":
        return None
    principals, pos = _word(text, pos)
    if not principals:
        raise ValueError("no principals")
    options: dict[str, str | bool] = {}
    key = _key(text, pos)
    if key is None:
        if pos >= len(text):
            raise ValueError("missing key")
        options, pos = _options(text, pos)
        key = _key(text, pos)
        if key is None:
            raise ValueError("missing or invalid key")
    after, before = options.get("valid-after"), options.get("valid-before")
    if (
        isinstance(after, str)
        and isinstance(before, str)
        and parse_time(before) <= parse_time(after)
    ):
        raise ValueError('"valid-before" time is before "valid-after"')
    namespaces = options.get("namespaces")
    return Signer(
        principals=principals,
        key_type=key[0],
        key_blob=key[1],
        cert_authority=options.get("cert-authority") is True,
        namespaces=namespaces if isinstance(namespaces, str) else None,
        valid_after=after if isinstance(after, str) else None,
        valid_before=before if isinstance(before, str) else None,
        comment=key[2],
    )


def parse(text: str, *, path: str = "allowed_signers") -> AllowedSigners:
    """Every signer of a file's text; ParseError naming the file and line of a bad one."""
    signers: list[Signer] = []
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            signer = parse_line(line)
        except ValueError as err:
            raise ParseError(f"{path}:{number}: not an allowed_signers line: {err}") from None
        if signer is not None:
            signers.append(signer)
    return AllowedSigners(tuple(signers), path)


def load(path: Path) -> AllowedSigners:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ParseError(f"{path}: not UTF-8 text") from None
    except OSError as err:
        raise FileError.from_os_error("read", path, err) from err
    return parse(text, path=str(path))


# --- writing -----------------------------------------------------------------------------------


def render(signer: Signer) -> str:
    """The line for ``signer``; parse_line reads it back equal."""
    options: list[str] = []
    if signer.cert_authority:
        options.append("cert-authority")
    for name, value in (
        ("namespaces", signer.namespaces),
        ("valid-after", signer.valid_after),
        ("valid-before", signer.valid_before),
    ):
        if value is not None:
            options.append(f'{name}="{value.replace(chr(34), chr(92) + chr(34))}"')
    principals = signer.principals
    if any(ch in principals for ch in ' \t"') or principals.startswith("#"):
        principals = f'"{principals}"'
    key = f"{signer.key_type} {base64.b64encode(signer.key_blob).decode('ascii')}"
    words = [principals, ",".join(options), key, signer.comment]
    return " ".join(w for w in words if w)


def render_file(signers: Iterable[Signer]) -> str:
    return "".join(render(s) + "\n" for s in signers)
