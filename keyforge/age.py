"""age encryption (age-encryption.org/v1), read in one place: recipients, identities, the header.

keyforge encrypts with Debian's ``age`` binary (one more process in the archive pipeline) and
never holds a secret on the sending server: ``[backup] encrypt_to`` lists *recipients*, public
keys only. This module is pure but for ``write_identity`` (no process; its one write goes
through ``fsutil``) and shared by both hosts:

* ``parse_recipient``: an ``age1…`` X25519 recipient (Bech32, checksum checked) or an OpenSSH
  ``ssh-ed25519`` / ``ssh-rsa`` public key, the kinds ``age -r`` takes; anything else (an age
  plugin, ECDSA, a typo) is refused with the reason.
* fingerprints, never secrets, for manifests: ``X25519 SHA256:…`` of the 32-byte key, and
  ``ssh-ed25519 SHA256:…`` exactly as ``ssh-keygen -lf`` prints it.
* ``new_identity`` makes an X25519 identity in ``age-keygen``'s file format;
  ``identity_recipients`` reads an identity file (age's, or an OpenSSH private key, whose public
  half is stored unencrypted) to the recipients it decrypts for, so a wrong identity is named
  before age runs.
* ``parse_header`` / ``header_problems``: what the receiving host can check of an encrypted
  archive without any key: the header's shape and that it is addressed to the recorded
  recipients (an SSH stanza carries a tag of its key; an X25519 stanza is only counted), and a
  payload length that age's chunking allows.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import hashlib
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from keyforge.errors import FileError, KeyMaterialError, UsageError
from keyforge.infra import fsutil

X25519 = "X25519"
SSH_ED25519 = "ssh-ed25519"
SSH_RSA = "ssh-rsa"
RECIPIENT_KINDS = (X25519, SSH_ED25519, SSH_RSA)
# age refuses smaller RSA keys as recipients (its ParseSSHRecipient)
MIN_RSA_BITS = 2048

RECIPIENT_HRP = "age"
IDENTITY_HRP = "age-secret-key-"
X25519_KEY_SIZE = 32

HEADER_MAGIC = b"age-encryption.org/v1\n"
# a header with more than this is not one keyforge wrote (a stanza of an RSA-4096 recipient is
# under 1 KiB): the reader stops there instead of reading a whole archive as "header"
MAX_HEADER_BYTES = 1 << 20
PAYLOAD_NONCE_SIZE = 16
CHUNK_SIZE = 64 * 1024
TAG_SIZE = 16  # Poly1305
SSH_TAG_SIZE = 4  # the first bytes of SHA-256 over the SSH wire key, in an ssh-* stanza


# --- Bech32 (BIP 173), as age uses it: no length limit, one case ---------------------------

_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def _polymod(values: Iterable[int]) -> int:
    check = 1
    for value in values:
        top = check >> 25
        check = (check & 0x1FFFFFF) << 5 ^ value
        for i, generator in enumerate(_GENERATOR):
            if (top >> i) & 1:
                check ^= generator
    return check


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _convert_bits(data: Iterable[int], from_bits: int, to_bits: int, *, pad: bool) -> list[int]:
    acc = bits = 0
    out: list[int] = []
    mask = (1 << to_bits) - 1
    for value in data:
        acc = (acc << from_bits) | value
        bits += from_bits
        while bits >= to_bits:
            bits -= to_bits
            out.append((acc >> bits) & mask)
    if pad:
        if bits:
            out.append((acc << (to_bits - bits)) & mask)
    elif bits >= from_bits or (acc << (to_bits - bits)) & mask:
        raise ValueError("non-zero padding")
    return out


def bech32_encode(hrp: str, data: bytes) -> str:
    """Lower-case Bech32 of ``data`` under the human-readable part ``hrp``."""
    words = _convert_bits(data, 8, 5, pad=True)
    polymod = _polymod([*_hrp_expand(hrp), *words, 0, 0, 0, 0, 0, 0]) ^ 1
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_CHARSET[w] for w in [*words, *checksum])


def bech32_decode(text: str) -> tuple[str, bytes]:
    """``(hrp, data)`` of a Bech32 string; ValueError says what is wrong (case, checksum...)."""
    if text.lower() != text and text.upper() != text:
        raise ValueError("mixes upper and lower case")
    text = text.lower()
    pos = text.rfind("1")
    if pos < 1 or pos + 7 > len(text):
        raise ValueError("is too short for its prefix, a '1', data and a 6-character checksum")
    hrp, rest = text[:pos], text[pos + 1 :]
    if any(not 33 <= ord(c) <= 126 for c in hrp):
        raise ValueError("has a character that is not printable ASCII")
    bad = next((c for c in rest if c not in _CHARSET), None)
    if bad is not None:
        raise ValueError(f"has {bad!r}, which Bech32 does not use")
    words = [_CHARSET.index(c) for c in rest]
    if _polymod([*_hrp_expand(hrp), *words]) != 1:
        raise ValueError("has a wrong checksum (a typo, or a cut-off copy)")
    return hrp, bytes(_convert_bits(words[:-6], 5, 8, pad=False))


# --- recipients ------------------------------------------------------------------------------


def _sha256_b64(data: bytes) -> str:
    return "SHA256:" + base64.b64encode(hashlib.sha256(data).digest()).decode().rstrip("=")


@dataclasses.dataclass(frozen=True)
class Recipient:
    """One public key an archive is encrypted to.

    ``text`` is what ``age -r`` is given (``age1…``, or ``ssh-ed25519 AAAA…`` without its
    comment); ``key`` the raw X25519 key or the SSH wire blob.
    """

    kind: str
    text: str
    key: bytes
    comment: str = ""

    @property
    def fingerprint(self) -> str:
        """``X25519 SHA256:…`` or ``ssh-ed25519 SHA256:…`` (the latter as ssh-keygen shows it)."""
        return f"{self.kind} {_sha256_b64(self.key)}"

    def shown(self) -> str:
        """A short name for messages: the age1 string, or the SSH fingerprint and comment."""
        if self.kind == X25519:
            return self.text
        return f"{self.fingerprint}{f' ({self.comment})' if self.comment else ''}"


def x25519_recipient(public: bytes) -> Recipient:
    return Recipient(X25519, bech32_encode(RECIPIENT_HRP, public), public)


def parse_recipient(text: str) -> Recipient:
    """An age recipient from one string; KeyMaterialError saying why it is not one."""
    value = text.strip()
    shown = value if len(value) <= 72 else value[:69] + "..."
    if not value:
        raise KeyMaterialError("an empty string is not an age recipient")
    if value.split(None, 1)[0] in (SSH_ED25519, SSH_RSA):
        return _ssh_recipient(value, shown)
    if value.startswith(("ssh-", "ecdsa-", "sk-")):
        kind = value.split(None, 1)[0]
        raise KeyMaterialError(
            f"{shown!r}: age encrypts to ssh-ed25519 and ssh-rsa keys only, not {kind}"
        )
    if value.upper().startswith("AGE-SECRET-KEY-"):
        raise KeyMaterialError(
            "that is an age identity (a secret key), not a recipient: give its public key, "
            "which 'age-keygen -y FILE' or 'keyforge keygen-age' prints, and keep the identity "
            "off this server"
        )
    if not value.lower().startswith("age1"):
        raise KeyMaterialError(
            f"{shown!r} is not an age recipient (age1…) nor an ssh-ed25519 or ssh-rsa public key"
        )
    try:
        hrp, data = bech32_decode(value)
    except ValueError as err:
        raise KeyMaterialError(f"{shown!r} is not a valid age recipient: it {err}") from None
    if hrp != RECIPIENT_HRP:
        raise KeyMaterialError(
            f"{shown!r} is a recipient of an age plugin ({hrp}), which keyforge does not run; "
            "use an X25519 (age1…) or SSH recipient"
        )
    if len(data) != X25519_KEY_SIZE:
        raise KeyMaterialError(
            f"{shown!r} is not a valid age recipient: it holds {len(data)} bytes, not 32"
        )
    return x25519_recipient(data)


def _ssh_recipient(value: str, shown: str) -> Recipient:
    from keyforge.ssh import keys  # noqa: PLC0415 - the SSH reader only for SSH recipients

    try:
        public = keys.parse_public_line(value)
    except KeyMaterialError as err:
        raise KeyMaterialError(f"{shown!r} is not a valid age recipient: {err}") from None
    if public.algorithm == SSH_RSA and public.bits < MIN_RSA_BITS:
        raise KeyMaterialError(
            f"{shown!r}: age refuses RSA keys under {MIN_RSA_BITS} bits ({public.bits} here)"
        )
    text = f"{public.algorithm} {base64.b64encode(public.blob).decode()}"
    return Recipient(public.algorithm, text, public.blob, public.comment)


def parse_recipients(values: Sequence[str]) -> tuple[Recipient, ...]:
    """Every recipient of ``[backup] encrypt_to``, in order; the same key twice is refused."""
    found: list[Recipient] = []
    for index, value in enumerate(values):
        try:
            recipient = parse_recipient(value)
        except KeyMaterialError as err:
            raise KeyMaterialError(f"entry {index + 1}: {err}") from None
        if any(r.key == recipient.key for r in found):
            raise KeyMaterialError(f"entry {index + 1}: {recipient.shown()} is listed twice")
        found.append(recipient)
    return tuple(found)


# "X25519 SHA256:…", "ssh-ed25519 SHA256:…": a kind and a key's hash, never a key
_FINGERPRINT_RE = re.compile(r"^(X25519|ssh-ed25519|ssh-rsa) SHA256:[A-Za-z0-9+/]{43}\Z")


def is_fingerprint(value: object) -> bool:
    """Whether ``value`` is a fingerprint as ``Recipient.fingerprint`` writes it."""
    return isinstance(value, str) and _FINGERPRINT_RE.match(value) is not None


def fingerprints(recipients: Iterable[Recipient]) -> tuple[str, ...]:
    """The manifest's ``encrypted_to``: sorted, so the set compares equal whatever the order."""
    return tuple(sorted(r.fingerprint for r in recipients))


def age_encrypt_argv(recipients: Sequence[Recipient]) -> list[str]:
    """``age`` encrypting stdin to stdout for ``recipients`` (public keys only in argv)."""
    argv = ["age", "--encrypt"]
    for recipient in recipients:
        argv += ["--recipient", recipient.text]
    return argv


# --- identities ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NewIdentity:
    """A fresh X25519 identity; ``file_text`` (the secret) stays out of ``repr``."""

    recipient: Recipient
    file_text: str = dataclasses.field(repr=False)


def new_identity(now: dt.datetime | None = None) -> NewIdentity:
    """An X25519 identity as ``age-keygen`` writes it: two comment lines and the secret key."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import x25519  # noqa: PLC0415

    private = x25519.X25519PrivateKey.generate()
    raw = serialization.Encoding.Raw
    secret = private.private_bytes(
        raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    recipient = x25519_recipient(
        private.public_key().public_bytes(raw, serialization.PublicFormat.Raw)
    )
    created = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    text = (
        f"# created: {created.isoformat(timespec='seconds').replace('+00:00', 'Z')}\n"
        f"# public key: {recipient.text}\n"
        f"{bech32_encode(IDENTITY_HRP, secret).upper()}\n"
    )
    return NewIdentity(recipient, text)


def write_identity(path: Path, identity: NewIdentity) -> None:
    """Write a new identity file: mode 0600 from its first byte, never over an existing file
    (an identity that is replaced can no longer open the archives made for it)."""
    if path.is_dir():
        raise UsageError(f"{path} is a directory; give the identity file's path")
    if os.path.lexists(path):
        raise FileError(
            f"{path} already exists; keyforge never replaces an identity (the archives "
            "encrypted to it could no longer be opened)"
        )
    if not path.parent.is_dir():
        raise FileError(f"directory {path.parent} does not exist")
    fsutil.atomic_write(
        path, identity.file_text.encode("ascii"), mode=fsutil.PRIVATE_FILE, exclusive=True
    )


_PEM_RE = re.compile(
    rb"-----BEGIN OPENSSH PRIVATE KEY-----\s*(?P<body>[A-Za-z0-9+/=\s]+?)\s*"
    rb"-----END OPENSSH PRIVATE KEY-----"
)
_OPENSSH_MAGIC = b"openssh-key-v1\0"


def identity_recipients(data: bytes) -> tuple[Recipient, ...]:
    """The recipients an identity file decrypts for; KeyMaterialError when it holds none.

    An age identity file (``AGE-SECRET-KEY-1…`` lines, ``#`` comments) gives each key's public
    half; an OpenSSH private key gives its public key, which the file keeps unencrypted even
    when a passphrase protects the private part. The secret is never part of the result.
    """
    if data.lstrip().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----"):
        return (_ssh_identity_recipient(data),)
    found: list[Recipient] = []
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise KeyMaterialError("not an age identity file (it is not ASCII text)") from None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            found.append(_age_identity_recipient(line, number))
    if not found:
        raise KeyMaterialError("holds no age identity (AGE-SECRET-KEY-1…)")
    return tuple(found)


def _age_identity_recipient(line: str, number: int) -> Recipient:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import x25519  # noqa: PLC0415

    if line.upper().startswith("AGE-PLUGIN-"):
        raise KeyMaterialError(
            f"line {number} is an age plugin identity, which keyforge does not run"
        )
    try:
        hrp, secret = bech32_decode(line)
    except ValueError as err:
        # the line is a secret: never shown, only where it is
        raise KeyMaterialError(f"line {number} is not an age identity: it {err}") from None
    if hrp != IDENTITY_HRP or len(secret) != X25519_KEY_SIZE:
        raise KeyMaterialError(f"line {number} is not an X25519 age identity (AGE-SECRET-KEY-1…)")
    public = x25519.X25519PrivateKey.from_private_bytes(secret).public_key()
    raw = serialization.Encoding.Raw
    return x25519_recipient(public.public_bytes(raw, serialization.PublicFormat.Raw))


def _ssh_identity_recipient(data: bytes) -> Recipient:
    from keyforge.ssh.wire import WireError, WireReader  # noqa: PLC0415

    match = _PEM_RE.search(data)
    try:
        if match is None:
            raise ValueError("no PEM body")
        reader = WireReader(base64.b64decode(b"".join(match["body"].split()), validate=True))
        if reader.take(len(_OPENSSH_MAGIC)) != _OPENSSH_MAGIC:
            raise ValueError("no magic")
        reader.skip(3)  # cipher, kdf, kdf options
        if reader.uint32() != 1:
            raise ValueError("several keys")
        blob = reader.string()
        algorithm = WireReader(blob).string().decode("ascii")
    except (ValueError, WireError, binascii.Error, UnicodeDecodeError):
        raise KeyMaterialError("not a readable OpenSSH private key") from None
    if algorithm not in (SSH_ED25519, SSH_RSA):
        raise KeyMaterialError(f"an OpenSSH {algorithm} key, which age cannot decrypt with")
    text = f"{algorithm} {base64.b64encode(blob).decode()}"
    return Recipient(algorithm, text, blob)


# --- the header, checked without a key -------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Stanza:
    kind: str
    args: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Header:
    stanzas: tuple[Stanza, ...]
    size: int  # bytes up to and including the MAC line: the payload starts there


_B64_RE = re.compile(r"^[A-Za-z0-9+/]*\Z")


def _is_b64(text: str) -> bool:
    return _B64_RE.match(text) is not None


def parse_header(data: bytes) -> Header:
    """The header at the start of ``data``; ValueError saying why it is not an age v1 header.

    ``data`` is the file's first bytes (MAX_HEADER_BYTES is enough for any keyforge wrote).
    """
    if not data.startswith(HEADER_MAGIC):
        raise ValueError("does not start with an age v1 header")
    pos = len(HEADER_MAGIC)
    stanzas: list[Stanza] = []
    while True:
        end = data.find(b"\n", pos)
        if end < 0:
            raise ValueError("its header is cut off")
        line = data[pos:end].decode("ascii", errors="replace")
        pos = end + 1
        if line.startswith("--- "):
            if not stanzas:
                raise ValueError("its header names no recipient")
            mac = line[4:]
            if len(mac) != 43 or not _is_b64(mac):
                raise ValueError("its header has a malformed MAC")
            return Header(tuple(stanzas), pos)
        if not line.startswith("-> "):
            raise ValueError("its header has a line that is neither a stanza nor the MAC")
        words = line[3:].split(" ")
        if not words[0] or any(not w for w in words):
            raise ValueError("its header has an empty stanza")
        pos = _skip_body(data, pos)
        stanzas.append(Stanza(words[0], tuple(words[1:])))


def _skip_body(data: bytes, pos: int) -> int:
    """Past a stanza's body: base64 lines of 64 columns, the last one shorter (maybe empty)."""
    while True:
        end = data.find(b"\n", pos)
        if end < 0:
            raise ValueError("its header is cut off")
        line = data[pos:end].decode("ascii", errors="replace")
        if len(line) > 64 or not _is_b64(line):
            raise ValueError("its header has a malformed stanza body")
        pos = end + 1
        if len(line) < 64:
            return pos


def ssh_tag(fingerprint: str) -> str:
    """The tag an ``ssh-*`` stanza carries for the key with this ``TYPE SHA256:…`` fingerprint."""
    encoded = fingerprint.split("SHA256:", 1)[1]
    digest = base64.b64decode(encoded + "=" * (-len(encoded) % 4))
    return base64.b64encode(digest[:SSH_TAG_SIZE]).decode().rstrip("=")


def payload_problem(payload_size: int) -> str | None:
    """Whether age's STREAM chunking allows a payload (nonce included) of this many bytes."""
    body = payload_size - PAYLOAD_NONCE_SIZE
    full = CHUNK_SIZE + TAG_SIZE
    if body < TAG_SIZE:
        return "its payload is cut off (shorter than one chunk)"
    last = body % full
    if 0 < last < TAG_SIZE or (last == TAG_SIZE and body > full):
        return "its payload ends inside a chunk (cut off or padded)"
    return None


def header_problems(header: Header, payload_size: int, encrypted_to: Sequence[str]) -> list[str]:
    """What does not match the manifest's ``encrypted_to`` (fingerprints) or age's framing.

    X25519 stanzas name no key, so they are counted; each SSH stanza must carry the tag of one
    recorded key. Stanzas of other kinds (age's "grease") are ignored.
    """
    problems: list[str] = []
    recorded = Counter(f.split(" ", 1)[0] for f in encrypted_to)
    found = Counter(s.kind for s in header.stanzas if s.kind in RECIPIENT_KINDS)
    for kind in RECIPIENT_KINDS:
        if recorded[kind] != found[kind]:
            problems.append(
                f"its header has {found[kind]} {kind} recipient(s), the manifest {recorded[kind]}"
            )
    tags = {ssh_tag(f) for f in encrypted_to if not f.startswith(X25519 + " ")}
    for stanza in header.stanzas:
        if stanza.kind in (SSH_ED25519, SSH_RSA) and (
            not stanza.args or stanza.args[0] not in tags
        ):
            problems.append(
                f"its header is addressed to an {stanza.kind} key the manifest does not list"
            )
    problem = payload_problem(payload_size)
    if problem is not None:
        problems.append(problem)
    return problems
