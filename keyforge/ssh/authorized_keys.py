"""The authorized_keys model: parse and render the lines sshd reads, refusing what sshd refuses.

The grammar follows sshd(8) "AUTHORIZED_KEYS FILE FORMAT" as OpenSSH 9.x implements it:

* leading spaces and tabs are skipped; an empty line or one starting with ``#`` is ignored;
* when the first word is a key type the line has no options, otherwise the options run up to the
  first space or tab outside double quotes, and the key type follows;
* options are separated by commas and matched case-insensitively; ``name="value"`` options take
  a double-quoted value in which the only escape is ``\\"``: every other backslash is literal;
* the key type is followed by the base64 key and an optional free-text comment.

Every refusal is a :class:`~keyforge.errors.ParseError` naming the line and the reason, where sshd
would silently skip the line. The module is pure: the only file it reads is its template.

Performance matters (a ``parse`` of a 100,000-line file should take well under a second), so the
per-line work is a few string scans and two cached look-ups: one for the option text, one for
the key blob. Files repeat both heavily.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import datetime as dt
import functools
import gc
import ipaddress
import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from keyforge.errors import ParseError, RenderError
from keyforge.ssh import wire
from keyforge.ssh.wire import WireError, WireReader

LINE_LIMIT = 8192  # bytes; sshd(8) documents lines "up to a limit of 8 kilobytes"

# --- options ----------------------------------------------------------------------------------

FLAG_OPTIONS = frozenset(
    {
        "agent-forwarding",
        "cert-authority",
        "no-agent-forwarding",
        "no-port-forwarding",
        "no-pty",
        "no-touch-required",
        "no-user-rc",
        "no-verify-required",
        "no-x11-forwarding",
        "port-forwarding",
        "pty",
        "restrict",
        "touch-required",
        "user-rc",
        "verify-required",
        "x11-forwarding",
    }
)
VALUE_OPTIONS = frozenset(
    {
        "command",
        "environment",
        "expiry-time",
        "from",
        "permitlisten",
        "permitopen",
        "principals",
        "tunnel",
    }
)
OPTION_NAMES: frozenset[str] = FLAG_OPTIONS | VALUE_OPTIONS
# sshd refuses a second one of these; the others may repeat
SINGLE_OPTIONS = frozenset({"command", "from", "principals"})
_MAX_ENVIRONMENT = 1024  # sshd's limits, checked the way auth-options.c checks them
_MAX_PERMITS = 4096

# --- key types --------------------------------------------------------------------------------

_CERT_SUFFIX = "-cert-v01@openssh.com"
PLAIN_KEY_TYPES = frozenset(
    {
        "ssh-ed25519",
        "ssh-rsa",
        "ssh-dss",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
    }
)
SK_KEY_TYPES = frozenset({"sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com"})


def _cert_type(plain: str) -> str:
    base, at, domain = plain.partition("@")
    return f"{base}{_CERT_SUFFIX}" if not at else f"{base}-cert-v01@{domain}"


# certificate type -> the key type it certifies
CERT_KEY_TYPES: dict[str, str] = {_cert_type(t): t for t in PLAIN_KEY_TYPES | SK_KEY_TYPES}
KEY_TYPES: frozenset[str] = PLAIN_KEY_TYPES | SK_KEY_TYPES | frozenset(CERT_KEY_TYPES)

_MIN_RSA_BITS = 1024  # sshd refuses smaller moduli when it reads the key
_CURVES = {
    "ecdsa-sha2-nistp256": "nistp256",
    "ecdsa-sha2-nistp384": "nistp384",
    "ecdsa-sha2-nistp521": "nistp521",
    "sk-ecdsa-sha2-nistp256@openssh.com": "nistp256",
}


@dataclass(frozen=True)
class Option:
    name: str  # canonical lowercase name (sshd matches names case-insensitively)
    value: str | None = None  # unescaped value for name="value" options; None for flags


@dataclass(frozen=True)
class Entry:
    keytype: str
    blob: str  # base64 text as written
    comment: str = ""
    options: tuple[Option, ...] = ()

    def key_id(self) -> tuple[str, bytes]:
        """The identity of the key: its declared type and decoded blob, whatever the options."""
        return (self.keytype, _decode_blob(self.blob))

    def same_key(self, other: Entry) -> bool:
        # the parser admits only canonical base64, which spells each blob one way, so the text
        # compares as the bytes would, without decoding two blobs per line of a big file
        return self.keytype == other.keytype and self.blob == other.blob

    def plain_key(self) -> tuple[str, bytes]:
        """The key type and wire form of the key itself: a certificate's is the key it certifies.

        Raises ValueError when the blob is not a whole key of its type (a hand-built Entry).
        """
        try:
            return _plain_key(self.keytype, _decode_blob(self.blob))
        except (_Invalid, WireError, KeyError) as err:
            raise ValueError(f"the {self.keytype} key data is not a whole key") from err

    def fingerprint(self) -> str:
        """``SHA256:...`` as ``ssh-keygen -lf`` prints it (for a certificate: its key's)."""
        return wire.fingerprint(self.plain_key()[1])

    def values(self, name: str) -> list[str]:
        """Every value of option ``name`` (any case), in file order."""
        wanted = name.lower()
        return [o.value for o in self.options if o.name == wanted and o.value is not None]

    def has(self, name: str) -> bool:
        wanted = name.lower()
        return any(o.name == wanted for o in self.options)


# --- what sshd makes of the flags -------------------------------------------------------------

# The switches sshd keeps per key: on by default, all off after ``restrict``, each turned on by
# its own name and off by its ``no-`` form; the options are read left to right, the last wins.
PERMISSION_FLAGS = ("port-forwarding", "agent-forwarding", "x11-forwarding", "pty", "user-rc")


@dataclass(frozen=True)
class Permissions:
    """The per-key switches after every option is read, left to right."""

    allowed: frozenset[str]  # members of PERMISSION_FLAGS
    restricted: bool = False
    touch_required: bool = True
    verify_required: bool = False

    def allows(self, flag: str) -> bool:
        return flag in self.allowed


def flag_change(name: str) -> tuple[str, bool] | None:
    """The permission flag an option sets, and to what; None for any other option."""
    if name in PERMISSION_FLAGS:
        return name, True
    bare = name.removeprefix("no-")
    if bare != name and bare in PERMISSION_FLAGS:
        return bare, False
    return None


def effective_permissions(entry: Entry) -> Permissions:
    """The flags sshd ends up with: defaults all on; ``restrict`` all off; last option wins."""
    allowed = set(PERMISSION_FLAGS)
    restricted = False
    touch, verify = True, False
    for option in entry.options:
        name = option.name
        change = flag_change(name)
        if name == "restrict":
            restricted = True
            allowed.clear()
        elif change is not None:
            flag, on = change
            if on:
                allowed.add(flag)
            else:
                allowed.discard(flag)
        elif name in ("touch-required", "no-touch-required"):
            touch = name == "touch-required"
        elif name in ("verify-required", "no-verify-required"):
            verify = name == "verify-required"
    return Permissions(frozenset(allowed), restricted, touch, verify)


@dataclass(frozen=True)
class Line:
    raw: str  # exactly as in the file, without the "\n" or "\r\n" terminator
    lineno: int
    entry: Entry | None  # None for blank, comment, or (lenient mode) invalid lines
    error: ParseError | None = None
    warnings: tuple[str, ...] = ()


class _Invalid(Exception):  # noqa: N818 - internal: a reason without a line number yet
    """Raised inside the parser; the public functions turn it into a ParseError with a line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- one small handler per option value --------------------------------------------------------

_ENV_NAME = re.compile(r"[A-Za-z0-9_]+")
_STRTONUM = re.compile(r"[ \t\n\v\f\r]*[+-]?[0-9]+")  # what C strtonum(3) accepts as a number
_EXPIRY = re.compile(r"([0-9]{8}|[0-9]{12}|[0-9]{14})(z|utc)?", re.IGNORECASE)
_SSH_TUNID_MAX = 0x7FFFFFFF - 2
_NI_MAXHOST = 1025
_ADDRBUF = 64  # sshd copies a from= entry into 64 bytes; longer ones are only name patterns


def _check_command(value: str) -> None:
    """Any text: sshd hands it to the user's shell."""


def _check_principals(value: str) -> None:
    """Any text: a comma-separated list of principal patterns."""


def _check_environment(value: str) -> None:
    name, eq, _ = value.partition("=")
    if not eq:
        raise _Invalid(f'environment="{value}" is not NAME=value')
    if not _ENV_NAME.fullmatch(name):
        raise _Invalid(
            f'environment="{value}": the name may hold only letters, digits and underscores'
        )


def _strtonum(text: str, low: int, high: int) -> int | None:
    if not _STRTONUM.fullmatch(text):
        return None
    number = int(text.strip(" \t\n\v\f\r"))
    return number if low <= number <= high else None


def _check_tunnel(value: str) -> None:
    if value.lower() == "any":
        return
    if _strtonum(value, 0, _SSH_TUNID_MAX) is None:
        raise _Invalid(f'tunnel="{value}" is not a tun device number or "any"')


def _check_expiry_time(value: str) -> None:
    match = _EXPIRY.fullmatch(value)
    if not match:
        raise _Invalid(
            f'expiry-time="{value}" is not YYYYMMDD, YYYYMMDDHHMM or YYYYMMDDHHMMSS'
            " (optionally followed by Z for UTC)"
        )
    digits, utc = match.group(1), match.group(2) is not None
    fields = [int(digits[i : i + 2]) for i in range(4, len(digits), 2)]
    year, month, day = int(digits[:4]), fields[0], fields[1]
    hour, minute, second = [*fields[2:], 0, 0, 0][:3]
    # the ranges glibc's strptime accepts; sshd then lets mktime/timegm normalise the date
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour <= 23 and minute <= 59 and second <= 61):
        raise _Invalid(f'expiry-time="{value}" is not a valid date and time')
    moment = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    # sshd refuses a time at or before the epoch; local times may lie up to a day either side
    if moment <= (0 if utc else 86400):
        raise _Invalid(f'expiry-time="{value}" is before 1970')


def expiry_datetime(value: str) -> dt.datetime | None:
    """The moment an ``expiry-time`` value names; None when it is not one."""
    match = _EXPIRY.fullmatch(value)
    if match is None:
        return None
    digits = match.group(1)
    layout = {8: "%Y%m%d", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}[len(digits)]
    try:
        moment = dt.datetime.strptime(digits, layout)
    except ValueError:
        return None  # sshd normalises dates like Feb 31; no warning rather than a wrong one
    if match.group(2):
        return moment.replace(tzinfo=dt.UTC)
    return moment.astimezone()


def _hpdelim(text: str) -> tuple[str, str | None] | None:
    """Split host[:/]port the way OpenSSH's hpdelim2 does (a [bracketed] host may hold colons)."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        cut = end + 1
    else:
        cut = next((i for i, c in enumerate(text) if c in ":/"), len(text))
    if cut == len(text):
        return text, None
    if text[cut] not in ":/":
        return None
    return text[:cut], text[cut + 1 :]


def _check_permit(name: str, value: str, *, bare_port: bool) -> None:
    spec = f"*:{value}" if bare_port and ":" not in value else value
    parts = _hpdelim(spec)
    if parts is None or len(parts[0].encode()) >= _NI_MAXHOST:
        raise _Invalid(f'{name}="{value}" has an invalid host')
    port = parts[1]
    if port is None or (port != "*" and _strtonum(port, 1, 65535) is None):
        raise _Invalid(f'{name}="{value}" needs host:port with a port number 1-65535 or *')


def _check_permitopen(value: str) -> None:
    _check_permit("permitopen", value, bare_port=False)


def _check_permitlisten(value: str) -> None:
    _check_permit("permitlisten", value, bare_port=True)


def _inet_aton(text: str) -> int | None:
    """IPv4 in any form C's inet_aton accepts ("10.1", "0x7f.1"), which sshd's getaddrinfo does."""
    parts = text.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    numbers = []
    for part in parts:
        try:
            if part[:2] in ("0x", "0X"):
                numbers.append(int(part[2:], 16))
            elif part.startswith("0") and len(part) > 1:
                numbers.append(int(part[1:], 8))
            else:
                numbers.append(int(part, 10))
        except ValueError:
            return None
        if not part.isascii() or "_" in part or part.strip() != part:
            return None
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 1 << (8 * (5 - len(numbers))):
        return None
    value = last
    for i, n in enumerate(head):
        value |= n << (8 * (3 - i))
    return value


def _numeric_address(text: str) -> tuple[int, int] | None:
    """(address as an int, its bit width) when ``text`` is a numeric IPv4/IPv6 address."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        v4 = _inet_aton(text) if text else None
        return None if v4 is None else (v4, 32)
    return int(address), address.max_prefixlen


def _check_from_entry(value: str, pattern: str) -> None:
    if len(pattern) >= _ADDRBUF:
        return
    address, slash, mask = pattern.partition("/")
    parsed = _numeric_address(address)
    if parsed is None:
        return  # a host name or wildcard pattern: sshd only matches it, never refuses it
    number, width = parsed
    if not slash:
        return
    if not (mask.isascii() and mask.isdigit()) or int(mask) > width:
        raise _Invalid(f'from="{value}": "{pattern}" has a bad mask length')
    masklen = int(mask)
    if number & ((1 << (width - masklen)) - 1):
        raise _Invalid(f'from="{value}": "{pattern}" has host bits set beyond the /{masklen} mask')


def _check_from(value: str) -> None:
    for item in value.split(","):
        pattern = item[1:] if item.startswith("!") else item
        if not pattern:
            raise _Invalid(f'from="{value}" has an empty entry')
        _check_from_entry(value, pattern)


# --- what from= admits ---------------------------------------------------------------------
# sshd matches each from= pattern against the client's address as text, twice: as an address
# list (a CIDR block, else a */? wildcard) and, since 'UseDNS no' names the client by its
# address, as a host name pattern. A negated match refuses; otherwise one positive match admits.

# One IPv4 address for each shape (octet lengths 1 to 3): a wildcard without digits matches an
# address exactly when it matches the address's shape, so these decide it for every address.
_IPV4_SHAPES = tuple(".".join(octets) for octets in itertools.product(("1", "12", "123"), repeat=4))
# IPv6 text as sshd prints it (compressed, lowercase hex), from the shortest to the longest
# forms; a wildcard made only of * ? and : is judged on these shapes
_IPV6_SHAPES = (
    "1::", "::1", "1::2", "1:2::3", "a::b:c", "2001:db8::7", "fe80::1:2:3:4",
    "1:2:3:4:5:6:7:8", "1:2:3:4:5:6::", "::2:3:4:5:6:7:8", "1:2:3::6:7:8",
    "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "2001:db8:aaaa:bbbb:cccc:dddd:eeee:1",
)  # fmt: skip
_FAMILIES = {4: "every IPv4 address", 6: "every IPv6 address"}


def _wildcard(pattern: str) -> re.Pattern[str]:
    """sshd's match_pattern: * any run of characters, ? one character, the rest literal."""
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL)


def _wildcard_families(pattern: str) -> set[int]:
    """The address families (4, 6) all of whose addresses the wildcard ``pattern`` matches."""
    matcher = _wildcard(pattern)
    families = set()
    # a literal digit is missing from 0.0.0.0 or from 1.1.1.1, so only digit-free ones can
    if not any(c.isdigit() for c in pattern) and all(map(matcher.fullmatch, _IPV4_SHAPES)):
        families.add(4)
    if set(pattern) <= set("*?:") and all(map(matcher.fullmatch, _IPV6_SHAPES)):
        families.add(6)
    return families


def _network(pattern: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """The CIDR block a from= pattern is, as sshd reads it (inet_aton forms such as 0/0 too)."""
    address, slash, mask = pattern.partition("/")
    parsed = _numeric_address(address)
    if not slash or parsed is None or not (mask.isascii() and mask.isdigit()):
        return None
    number, width = parsed
    try:
        if width == 32:
            return ipaddress.IPv4Network((number, int(mask)))
        return ipaddress.IPv6Network((number, int(mask)))
    except ValueError:
        return None  # host bits or a bad mask: sshd refuses the line, which admits nobody


def admits_every_address(patterns: Sequence[str]) -> str | None:
    """What of the address space the positive ``patterns`` of a from= admit in full: "every
    IPv4 address" (``*``, ``0.0.0.0/0``, ``*.*.*.*``, blocks that add up to it...), "every IPv6
    address", both, or None when they leave some address out.

    Negated patterns are not counted: a from= that admits every address but a few still lets a
    stolen key in from almost anywhere, which is what this judges.
    """
    covered: set[int] = set()
    blocks: dict[int, list[ipaddress.IPv4Network | ipaddress.IPv6Network]] = {4: [], 6: []}
    for pattern in patterns:
        if not pattern or pattern.startswith("!"):
            continue
        network = _network(pattern)
        if network is not None:
            blocks[network.version].append(network)
        elif "/" not in pattern:
            covered |= _wildcard_families(pattern)
    for version, networks in blocks.items():
        merged = list(ipaddress.collapse_addresses(networks))  # type: ignore[type-var]
        if len(merged) == 1 and merged[0].prefixlen == 0:
            covered.add(version)
    if not covered:
        return None
    return " and ".join(_FAMILIES[version] for version in sorted(covered))


def admits(patterns: Sequence[str], address: str) -> bool:
    """Whether a from= of ``patterns`` admits a client at ``address``, as sshd decides it."""
    admitted = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        bare = pattern.removeprefix("!")
        network = _network(bare)
        try:
            hit = network is not None and ipaddress.ip_address(address) in network
        except ValueError:
            hit = False
        if network is None and "/" not in bare:
            hit = _wildcard(bare).fullmatch(address) is not None
        if hit and negated:
            return False
        admitted = admitted or hit
    return admitted


def from_patterns(entry: Entry) -> list[str]:
    """Every pattern of the line's from= options, in file order."""
    return [p for value in entry.values("from") for p in value.split(",")]


_HANDLERS: dict[str, Callable[[str], None]] = {
    "command": _check_command,
    "environment": _check_environment,
    "expiry-time": _check_expiry_time,
    "from": _check_from,
    "permitlisten": _check_permitlisten,
    "permitopen": _check_permitopen,
    "principals": _check_principals,
    "tunnel": _check_tunnel,
}

# --- the option string: a small quote/backslash state machine --------------------------------

# A quoted value: `\"` is an escaped quote, any other backslash is literal. Possessive, so a
# backslash before the closing quote can never be re-read as an ordinary character.
_QUOTED = re.compile(r'"((?:\\"|[^"])*+)"')
_NAME_END = re.compile(r"[,= \t]")
_BLANKS = " \t"


class _OptionState:
    """What the options seen so far on one line hold, for the checks that span options."""

    __slots__ = ("env_names", "permits", "seen", "warnings")

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.env_names: list[str] = []
        self.permits: dict[str, int] = {"permitopen": 0, "permitlisten": 0}
        self.warnings: list[str] = []

    def admit(self, name: str, value: str | None) -> None:
        if name in SINGLE_OPTIONS and name in self.seen:
            raise _Invalid(f'more than one "{name}" option')
        self.seen.add(name)
        if value is None:
            return
        if name == "environment":
            self._admit_environment(value)
        elif name in self.permits:
            if self.permits[name] > _MAX_PERMITS:
                raise _Invalid(f"too many {name} options")
            self.permits[name] += 1

    def _admit_environment(self, value: str) -> None:
        if len(self.env_names) > _MAX_ENVIRONMENT:
            raise _Invalid("too many environment options")
        env_name = value.partition("=")[0]
        if env_name in self.env_names:
            self.warnings.append(
                f"environment variable {env_name} is set twice: sshd keeps the first value"
            )
        else:
            self.env_names.append(env_name)

    def finish(self) -> None:
        if "principals" in self.seen and "cert-authority" not in self.seen:
            raise _Invalid('"principals" is only allowed together with "cert-authority"')


def _read_value(text: str, pos: int, name: str) -> tuple[str, int]:
    """The unescaped value starting at ``text[pos]`` (the opening quote) and where it ends."""
    if pos >= len(text) or text[pos] in ", \t":
        raise _Invalid(f'option "{name}" needs a value: {name}="..."')
    if text[pos] != '"':
        raise _Invalid(f'the value of "{name}" must be in double quotes: {name}="..."')
    match = _QUOTED.match(text, pos)
    if match is None:
        raise _Invalid(f'the value of "{name}" has no closing double quote')
    return match.group(1).replace('\\"', '"'), match.end()


def _scan_options(
    text: str, *, authorise: bool = True
) -> tuple[tuple[Option, ...], tuple[str, ...], int]:
    """Parse options from the start of ``text``; return them, warnings, and where they end.

    ``authorise`` adds the checks sshd makes when it authorises a key with the options
    (auth_authorise_keyopts), beyond parsing them (sshauthopt_parse).
    """
    options: list[Option] = []
    state = _OptionState()
    pos, end = 0, len(text)
    while pos < end and text[pos] not in _BLANKS:
        stop = _NAME_END.search(text, pos)
        name_end = stop.start() if stop else end
        raw_name = text[pos:name_end]
        name = raw_name.lower()
        pos = name_end
        if pos < end and text[pos] == "=":
            if name not in VALUE_OPTIONS:
                raise _Invalid(_unknown(raw_name, takes_value=True))
            value, pos = _read_value(text, pos + 1, name)
            _HANDLERS[name](value)
            state.admit(name, value)
            options.append(Option(name, value))
        elif raw_name:
            if name not in FLAG_OPTIONS:
                raise _Invalid(_unknown(raw_name, takes_value=False))
            state.admit(name, None)
            options.append(Option(name))
        # an empty option between commas is skipped, as sshd does
        if pos >= end or text[pos] in _BLANKS:
            break
        if text[pos] != ",":
            raise _Invalid(f"unexpected {text[pos]!r} after option {raw_name!r}")
        pos += 1
        if pos >= end:
            raise _Invalid("the options end with a comma")
    if authorise:
        state.finish()
    return tuple(options), tuple(state.warnings), pos


def _unknown(raw_name: str, *, takes_value: bool) -> str:
    name = raw_name.lower()
    if takes_value and name in FLAG_OPTIONS:
        return f'option "{name}" takes no value'
    if not takes_value and name in VALUE_OPTIONS:
        return f'option "{name}" needs a value: {name}="..."'
    if '"' in raw_name:
        return f"unknown option {raw_name!r} (a double quote may only open an option's value)"
    return f"unknown option {raw_name!r}"


@functools.lru_cache(maxsize=4096)
def _options_cached(text: str) -> tuple[tuple[Option, ...], tuple[str, ...]]:
    # the blank that follows the options on a line matters: "restrict, key" is accepted
    options, warnings, pos = _scan_options(text + " ")
    if pos != len(text):
        raise _Invalid(f"unexpected text after the options: {text[pos:]!r}")
    return options, warnings


def parse_options(text: str) -> tuple[Option, ...]:
    """Parse a bare option string (no key), as sshd's sshauthopt_parse does; raises ParseError."""
    try:
        options, _warnings, _pos = _scan_options(text, authorise=False)
    except _Invalid as err:
        raise ParseError(err.reason) from None
    return options


# --- the key blob ----------------------------------------------------------------------------


def _read_public_fields(reader: WireReader, plain: str) -> None:
    """Walk the fields that follow the type string of a ``plain`` key (or its certificate)."""
    if plain == "ssh-ed25519":
        if len(reader.string()) != 32:
            raise _Invalid("the ed25519 key is not 32 bytes long")
    elif plain == "sk-ssh-ed25519@openssh.com":
        if len(reader.string()) != 32:
            raise _Invalid("the ed25519 key is not 32 bytes long")
        reader.skip(1)  # application
    elif plain == "ssh-rsa":
        reader.skip(2)  # e, n
    elif plain == "ssh-dss":
        reader.skip(4)  # p, q, g, y
    else:  # the ecdsa family
        curve = reader.string()
        if curve != _CURVES[plain].encode():
            raise _Invalid(f"the key's curve {curve!r} does not match its type {plain}")
        reader.skip(1)  # public point
        if plain.startswith("sk-"):
            reader.skip(1)  # application


def _plain_key(keytype: str, data: bytes) -> tuple[str, bytes]:
    reader = WireReader(data)
    reader.string()
    plain = CERT_KEY_TYPES.get(keytype, keytype)
    if plain != keytype:
        reader.string()  # the certificate's nonce
    start = reader.pos
    _read_public_fields(reader, plain)
    name = plain.encode()
    return plain, len(name).to_bytes(4, "big") + name + data[start : reader.pos]


def _check_certificate(reader: WireReader, keytype: str) -> None:
    reader.skip(1)  # nonce
    _read_public_fields(reader, CERT_KEY_TYPES[keytype])
    reader.take(8 + 4)  # serial, certificate type
    reader.skip(2)  # key id, valid principals
    reader.take(16)  # valid after, valid before
    reader.skip(5)  # critical options, extensions, reserved, signature key, signature


def _load_with_cryptography(keytype: str, blob: str) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: PLC0415 - cold path
    from cryptography.hazmat.primitives.serialization import (  # noqa: PLC0415
        load_ssh_public_key,
    )

    try:
        key = load_ssh_public_key(f"{keytype} {blob}".encode())
    except (ValueError, TypeError) as err:
        raise _Invalid(f"the {keytype} key cannot be loaded: {err}") from None
    except Exception as err:  # cryptography's backend may raise its own types
        raise _Invalid(f"the {keytype} key cannot be loaded: {err}") from None
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < _MIN_RSA_BITS:
        raise _Invalid(f"the RSA key has {key.key_size} bits; sshd refuses fewer than 1024")


@functools.lru_cache(maxsize=8192)
def _decode_blob(blob: str) -> bytes:
    try:
        data = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        raise _Invalid("the key data is not valid base64") from None
    if base64.b64encode(data).decode() != blob:
        raise _Invalid("the key data is not canonical base64 (padding or trailing bits)")
    return data


# The whole wire form of an ed25519 key: its type string, then a 32-byte string.
_ED25519_PREFIX = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20"
_ED25519_BLOB_CHARS = 68  # 51 bytes: a multiple of 3, so base64 without padding


def _is_plain_ed25519(keytype: str, blob: str) -> bool:
    """The common case checked in one step: most keys in a large file are distinct ed25519."""
    if keytype != "ssh-ed25519" or len(blob) != _ED25519_BLOB_CHARS or "=" in blob:
        return False
    try:
        data = binascii.a2b_base64(blob, strict_mode=True)
    except binascii.Error:
        return False
    return len(data) == len(_ED25519_PREFIX) + 32 and data.startswith(_ED25519_PREFIX)


def _check_fields(reader: WireReader, keytype: str) -> None:
    """The blob is the declared type's fields (or its certificate's), each whole, and no more."""
    inner = reader.string()
    if inner != keytype.encode():
        shown = inner[:60].decode("ascii", "replace")
        raise _Invalid(f"the key data holds a {shown!r} key, not the declared {keytype}")
    if keytype in CERT_KEY_TYPES:
        _check_certificate(reader, keytype)
    else:
        _read_public_fields(reader, keytype)
    if not reader.at_end():
        raise _Invalid("the key data has trailing bytes")


@functools.lru_cache(maxsize=8192)
def _check_key(keytype: str, blob: str) -> None:
    if _is_plain_ed25519(keytype, blob):
        return
    reader = WireReader(_decode_blob(blob))
    try:
        _check_fields(reader, keytype)
    except WireError:
        raise _Invalid("the key data is truncated") from None
    if keytype in CERT_KEY_TYPES:
        return
    if keytype in SK_KEY_TYPES or keytype == "ssh-dss":
        return  # cryptography loads neither; the structure check above is what we can do
    if keytype == "ssh-ed25519":
        # cryptography accepts every 32-byte ed25519 key, so the length check above is the
        # whole test; skipping the load keeps a file of many distinct keys fast to parse
        return
    _load_with_cryptography(keytype, blob)


# --- lines -----------------------------------------------------------------------------------

_WORD_END = re.compile(r"[ \t]")


def _split_word(text: str, pos: int) -> tuple[str, int]:
    """The word starting at ``pos`` and the position of the blank after it (or the end)."""
    stop = _WORD_END.search(text, pos)
    end = stop.start() if stop else len(text)
    return text[pos:end], end


def _skip_blanks(text: str, pos: int) -> int:
    end = len(text)
    while pos < end and text[pos] in _BLANKS:
        pos += 1
    return pos


# Where the options end: the first blank outside double quotes, reading \" as a pair, the way
# sshd's sshkey_advance_past_options finds the key.
_OPTIONS_END = re.compile(r'(?:[^ \t"\\]++|\\"?|"(?:[^"\\]++|\\"?)*+")*+')


def _parse_options_prefix(text: str) -> tuple[tuple[Option, ...], tuple[str, ...], int]:
    match = _OPTIONS_END.match(text)
    end = match.end() if match else 0
    if end < len(text) and text[end] == '"':
        return _scan_options(text)  # an unclosed quote: let the state machine say where
    options_text = text[:end]
    try:
        options, warnings = _options_cached(options_text)
    except _Invalid as err:
        raise _Invalid(_explain_first_word(options_text, err.reason)) from None
    return options, warnings, end


def _explain_first_word(first: str, reason: str) -> str:
    if not any(c in first for c in ',="') and first.lower() not in OPTION_NAMES:
        return f"unknown key type or option {first!r}"
    return reason


# A line's common shape, blanks stripped: "[options] type blob [comment]", with a known key type.
# Quoted option values are read in runs; a backslash always takes a following quote with it, as
# in sshd. Possessive, so the options never give back a character. Anything else takes the slow
# path, which names the problem.
_OPTIONS_PATTERN = r'(?:[^ \t"\\]++|\\"?|"(?:[^"\\]++|\\"?)*+")++'
_KEY_TYPE_PATTERN = "|".join(sorted(map(re.escape, KEY_TYPES), key=len, reverse=True))
_FAST_LINE = re.compile(
    rf"(?:({_OPTIONS_PATTERN})[ \t]+)??({_KEY_TYPE_PATTERN})[ \t]+([A-Za-z0-9+/]+={{0,2}})"
    r"(?:[ \t]+(.*))?",
    re.DOTALL,
)

# Frozen dataclasses set each field through object.__setattr__, which dominates parse time on
# big files; these build the same objects with one call. Equality, hashing and immutability
# are the dataclasses' own.
_new = object.__new__


def _fast_entry(keytype: str, blob: str, comment: str, options: tuple[Option, ...]) -> Entry:
    entry = _new(Entry)
    fields = entry.__dict__
    fields["keytype"] = keytype
    fields["blob"] = blob
    fields["comment"] = comment
    fields["options"] = options
    return entry


def _fast_line(
    raw: str, lineno: int, entry: Entry | None, error: ParseError | None, warnings: tuple[str, ...]
) -> Line:
    line = _new(Line)
    fields = line.__dict__
    fields["raw"] = raw
    fields["lineno"] = lineno
    fields["entry"] = entry
    fields["error"] = error
    fields["warnings"] = warnings
    return line


_NO_OPTIONS: tuple[tuple[Option, ...], tuple[str, ...]] = ((), ())


def _parse_entry(text: str) -> tuple[Entry | None, tuple[str, ...]]:
    body = text.lstrip(" \t").rstrip(" \t\r")
    if not body or body[0] == "#":
        return None, ()
    if "\x00" in body:
        raise _Invalid("the line contains a NUL character")
    match = _FAST_LINE.fullmatch(body)
    if match is None:
        return _parse_entry_slowly(body)
    options_text, keytype, blob, comment = match.groups("")
    if options_text:
        try:
            options, warnings = _options_cached(options_text)
        except _Invalid:
            return _parse_entry_slowly(body)
    else:
        options, warnings = (), ()
    _check_key(keytype, blob)
    return _fast_entry(keytype, blob, comment, options), warnings


def _parse_entry_slowly(body: str) -> tuple[Entry | None, tuple[str, ...]]:
    """Walk the line step by step, to name exactly what is wrong with it."""
    first, end = _split_word(body, 0)
    if first in KEY_TYPES:
        options: tuple[Option, ...] = ()
        warnings: tuple[str, ...] = ()
        keytype, pos = first, end
    else:
        options, warnings, pos = _parse_options_prefix(body)
        pos = _skip_blanks(body, pos)
        if pos == len(body):
            raise _Invalid("no key after the options")
        keytype, pos = _split_word(body, pos)
        if keytype not in KEY_TYPES:
            raise _Invalid(f"unknown key type {keytype!r}")
    pos = _skip_blanks(body, pos)
    if pos == len(body):
        raise _Invalid(f"no key data after the key type {keytype}")
    blob, pos = _split_word(body, pos)
    comment = body[_skip_blanks(body, pos) :]
    _check_key(keytype, blob)
    return Entry(keytype, blob, comment, options), warnings


def _length_warnings(raw: str) -> tuple[str, ...]:
    # a character is at most 4 bytes in UTF-8: only long lines need the exact count
    if len(raw) * 4 <= LINE_LIMIT:
        return ()
    size = len(raw.encode("utf-8", "surrogatepass"))
    if size <= LINE_LIMIT:
        return ()
    return (f"the line is {size} bytes long; sshd(8) documents a limit of {LINE_LIMIT}",)


def parse_line(text: str, *, lineno: int = 1, source: str | None = None) -> Entry | None:
    """One line (without its terminator) as an Entry, or None for a blank or # comment line."""
    try:
        return _parse_entry(text)[0]
    except _Invalid as err:
        raise ParseError(err.reason, lineno=lineno, source=source) from None


def split_lines(text: str) -> list[str]:
    """The lines of ``text``, each with its own terminator, so ``"".join`` gives ``text`` back.

    Only "\\n" ends a line, as for sshd (which reads with getline): a lone "\\r" or any other
    character that str.splitlines would break on stays inside its line.
    """
    pieces = text.split("\n")
    lines = [piece + "\n" for piece in pieces[:-1]]
    if pieces[-1]:
        lines.append(pieces[-1])
    return lines


def parse(text: str, *, source: str | None = None, strict: bool = True) -> list[Line]:
    """Every line of an authorized_keys text.

    ``Line.raw`` is the line without its "\\n" or "\\r\\n" terminator. ``strict`` raises a
    ParseError at the first line sshd would refuse; otherwise such lines come back with
    ``entry=None`` and ``error`` set, so a caller can keep them untouched.
    """
    # The objects built here hold no reference cycles, yet allocating hundreds of thousands of
    # them sets off the cyclic collector over and over: pausing it doubles parse speed.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _parse_lines(text, source, strict)
    finally:
        if collecting:
            gc.enable()


def _parse_lines(text: str, source: str | None, strict: bool) -> list[Line]:
    pieces = text.split("\n")
    if pieces[-1] == "":
        pieces.pop()
    # "\r\n" is one terminator; a "\r" ending an unterminated last line stays in raw
    terminated = len(pieces) if text.endswith("\n") else len(pieces) - 1
    lines: list[Line] = []
    append = lines.append
    for lineno, piece in enumerate(pieces, 1):
        raw = piece[:-1] if lineno <= terminated and piece.endswith("\r") else piece
        warnings = _length_warnings(raw) if len(raw) * 4 > LINE_LIMIT else ()
        # the common line inline (see _parse_entry): this loop is the hot path of keyforge
        body = raw.lstrip(" \t").rstrip(" \t\r")
        if not body or body[0] == "#":
            append(_fast_line(raw, lineno, None, None, warnings))
            continue
        match = _FAST_LINE.fullmatch(body) if "\x00" not in body else None
        if match is not None:
            options_text, keytype, blob, comment = match.groups("")
            try:
                options, option_warnings = (
                    _options_cached(options_text) if options_text else _NO_OPTIONS
                )
                _check_key(keytype, blob)
            except _Invalid:
                pass  # the slow path below names the problem
            else:
                fast = _fast_entry(keytype, blob, comment, options)
                append(_fast_line(raw, lineno, fast, None, warnings + option_warnings))
                continue
        try:
            entry, option_warnings = _parse_entry(raw)
        except _Invalid as err:
            error = ParseError(err.reason, lineno=lineno, source=source)
            if strict:
                raise error from None
            append(_fast_line(raw, lineno, None, error, warnings))
            continue
        append(_fast_line(raw, lineno, entry, None, warnings + option_warnings))
    return lines


def parse_public_key(text: str, *, source: str | None = None) -> Entry:
    """A public key as in a .pub file: "type base64 [comment]", no options, one line."""
    lines = [line for line in text.strip().split("\n") if line.strip()]
    if len(lines) != 1:
        raise ParseError("expected exactly one public key line", source=source)
    line = lines[0].strip(" \t\r")
    first, _ = _split_word(line, 0)
    if first not in KEY_TYPES:
        raise ParseError(
            f"not an OpenSSH public key: {first[:60]!r} is not a key type"
            " (options are not allowed here)",
            source=source,
        )
    try:
        entry = _parse_entry(line)[0]
    except _Invalid as err:
        raise ParseError(err.reason, source=source) from None
    assert entry is not None  # the line starts with a key type
    return entry


# --- rendering -------------------------------------------------------------------------------

_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")


def format_option(option: Option) -> str:
    """One option as sshd reads it: ``name`` or ``name="value"`` with ``"`` escaped."""
    name = option.name.lower()
    if name in FLAG_OPTIONS:
        if option.value is not None:
            raise RenderError(f'option "{name}" takes no value')
        return name
    if name not in VALUE_OPTIONS:
        raise RenderError(f"unknown option {option.name!r}")
    value = option.value
    if value is None:
        raise RenderError(f'option "{name}" needs a value')
    for bad, label in (("\n", "a newline"), ("\r", "a carriage return"), ("\x00", "a NUL")):
        if bad in value:
            raise RenderError(f'the value of "{name}" holds {label}, which cannot be written')
    if value.endswith("\\"):
        # written as ...\" the closing quote would read as an escaped quote
        raise RenderError(f'the value of "{name}" ends with a backslash, which cannot be written')
    escaped = value.replace('"', '\\"')
    return f'{name}="{escaped}"'


def _check_renderable(entry: Entry) -> None:
    if entry.keytype not in KEY_TYPES:
        raise RenderError(f"unknown key type {entry.keytype!r}")
    if not _BASE64.fullmatch(entry.blob):
        raise RenderError("the key data is not base64 text")
    comment = entry.comment
    if any(c in comment for c in "\n\r\x00"):
        raise RenderError("the comment holds a newline, carriage return or NUL")
    if comment != comment.strip(" \t"):
        raise RenderError("the comment cannot start or end with a space or tab")


def render(entry: Entry) -> str:
    """One authorized_keys line without a newline; raises RenderError for anything unwritable.

    The line is read back before it is returned, so whatever keyforge writes, sshd accepts.
    """
    _check_renderable(entry)
    options = ",".join(format_option(option) for option in entry.options)
    from keyforge.infra import templating  # noqa: PLC0415 - jinja2 only when a line is written

    line = templating.render(
        "authorized_keys.j2",
        options=options,
        keytype=entry.keytype,
        blob=entry.blob,
        comment=entry.comment,
    ).removesuffix("\n")
    try:
        parse_line(line)
    except ParseError as err:
        raise RenderError(f"the entry cannot be written: {err.reason}") from None
    return line
