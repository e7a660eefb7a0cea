"""Key pairs for the backup key: made with ``cryptography``, encoded the way OpenSSH writes them.

Everything here is pure except ``write_pair``, which goes through ``fsutil`` so the private key
is created 0600 from its first byte and an existing key is never replaced without ``force``.
Fingerprints are printed exactly as ``ssh-keygen -lf`` prints them, so a user can compare the
two by eye.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import getpass
import os
import pwd
import socket
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path

from keyforge.errors import FileError, KeyMaterialError, UsageError
from keyforge.infra import fsutil
from keyforge.ssh import wire
from keyforge.ssh.wire import WireError, WireReader

KEY_TYPES = ("ed25519", "rsa", "ecdsa")
DEFAULT_KEY_TYPE = "ed25519"
DEFAULT_RSA_BITS = 4096
MIN_RSA_BITS = 3072
MAX_RSA_BITS = 16384  # OpenSSH refuses RSA moduli above this size
ECDSA_BITS = (256, 384, 521)
DEFAULT_ECDSA_BITS = 256
DEFAULT_KEY_NAME = "backups"
PUBLIC_FILE_MODE = 0o644

# ssh-keygen's label, in the "(ED25519)" position of its -l output, for each public key type
_LABELS = {
    "ssh-ed25519": "ED25519",
    "ssh-rsa": "RSA",
    "ssh-dss": "DSA",
    "ecdsa-sha2-nistp256": "ECDSA",
    "ecdsa-sha2-nistp384": "ECDSA",
    "ecdsa-sha2-nistp521": "ECDSA",
    "sk-ssh-ed25519@openssh.com": "ED25519-SK",
    "sk-ecdsa-sha2-nistp256@openssh.com": "ECDSA-SK",
}
_ECDSA_CURVE_BITS = {"nistp256": 256, "nistp384": 384, "nistp521": 521}
# how many length-prefixed fields follow the key type in an OpenSSH private key, per type
_PRIVATE_FIELDS = {
    "ssh-ed25519": 2,  # public point, private scalar + public point
    "ssh-rsa": 6,  # n, e, d, iqmp, p, q
    "ecdsa-sha2-nistp256": 3,  # curve name, public point, private scalar
    "ecdsa-sha2-nistp384": 3,
    "ecdsa-sha2-nistp521": 3,
}
_OPENSSH_MAGIC = b"openssh-key-v1\0"
_PEM_BEGIN = b"-----BEGIN OPENSSH PRIVATE KEY-----\n"
_PEM_END = b"-----END OPENSSH PRIVATE KEY-----\n"


@dataclass(frozen=True)
class KeyPair:
    """A freshly made key pair, ready to be written.

    ``private_pem`` is the OpenSSH private key file's content; it stays out of ``repr`` so a
    stray log line or traceback cannot leak it.
    """

    keytype: str
    bits: int
    comment: str
    public_line: str
    fingerprint: str
    private_pem: bytes = field(repr=False)


@dataclass(frozen=True)
class PublicKey:
    """One OpenSSH public key line, decoded."""

    algorithm: str
    blob: bytes
    comment: str
    bits: int
    label: str

    @property
    def sha256(self) -> str:
        """``SHA256:<base64 without padding>``, as OpenSSH shows it."""
        return wire.fingerprint(self.blob)

    @property
    def fingerprint_line(self) -> str:
        """The line ``ssh-keygen -lf`` prints for this key."""
        return f"{self.bits} {self.sha256} {self.comment or 'no comment'} ({self.label})"


@dataclass(frozen=True)
class PrivateKeyFile:
    """An unencrypted, single-key OpenSSH private key file (``openssh-key-v1``), decoded.

    ``fields`` are the key type's private fields in file order (for ssh-ed25519: the public
    point, then the 64-byte seed and point); they stay out of ``repr``.
    """

    header: tuple[bytes, bytes, bytes]  # cipher, kdf, kdf options
    public_blob: bytes
    checkint: int
    algorithm: str
    fields: tuple[bytes, ...] = field(repr=False)
    comment: bytes


@dataclass(frozen=True)
class WrittenPair:
    private_path: Path
    public_path: Path
    replaced: bool
    created_dir: Path | None
    warnings: tuple[str, ...] = ()


# --- making keys --------------------------------------------------------------------------------


def default_comment() -> str:
    """``user@hostname``, the comment ssh-keygen would give the key."""
    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        user = getpass.getuser()
    return f"{user}@{socket.gethostname()}"


def check_comment(comment: str) -> str:
    """Refuse a comment that would break the one-line .pub file or hide in a terminal."""
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in comment):
        raise UsageError(
            "the key comment must be one line of printable text (no control characters)"
        )
    return comment.strip()


def resolve_bits(keytype: str, bits: int | None) -> int:
    """The key size to make, or a KeyMaterialError explaining why the request is refused."""
    kind = keytype.lower()
    if kind in ("dsa", "ssh-dss"):
        raise KeyMaterialError(
            "DSA keys are refused: OpenSSH disabled them by default in 7.0 and has since dropped "
            "them; use --type ed25519 (the default) instead"
        )
    if kind == "ed25519":
        if bits not in (None, 256):
            raise KeyMaterialError("Ed25519 keys always have 256 bits; leave out --bits")
        return 256
    if kind == "rsa":
        if bits is None:
            return DEFAULT_RSA_BITS
        if bits < MIN_RSA_BITS:
            raise KeyMaterialError(
                f"RSA keys of {bits} bits are too weak; use at least {MIN_RSA_BITS} "
                f"(default {DEFAULT_RSA_BITS}) or --type ed25519"
            )
        if bits > MAX_RSA_BITS:
            raise KeyMaterialError(f"RSA keys above {MAX_RSA_BITS} bits are refused by OpenSSH")
        return bits
    if kind == "ecdsa":
        if bits is None:
            return DEFAULT_ECDSA_BITS
        if bits not in ECDSA_BITS:
            raise KeyMaterialError(f"ECDSA keys have 256, 384 or 521 bits, not {bits}")
        return bits
    raise KeyMaterialError(
        f"unknown key type {keytype!r}; choose ed25519 (the default), rsa or ecdsa"
    )


def generate(keytype: str = DEFAULT_KEY_TYPE, bits: int | None = None, *, comment: str) -> KeyPair:
    """Make a passphraseless key pair; the comment goes into both the public and private key."""
    kind = keytype.lower()
    size = resolve_bits(kind, bits)
    comment = check_comment(comment)

    # imported here so that only the commands that make keys pay for loading cryptography
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa  # noqa: PLC0415

    private: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if kind == "ed25519":
        private = ed25519.Ed25519PrivateKey.generate()
    elif kind == "rsa":
        private = rsa.generate_private_key(public_exponent=65537, key_size=size)
    else:
        curves: dict[int, ec.EllipticCurve] = {
            256: ec.SECP256R1(),
            384: ec.SECP384R1(),
            521: ec.SECP521R1(),
        }
        private = ec.generate_private_key(curves[size])

    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    public_line = public.decode("ascii") + (f" {comment}" if comment else "")
    return KeyPair(
        keytype=kind,
        bits=size,
        comment=comment,
        public_line=public_line,
        fingerprint=fingerprint(public_line),
        private_pem=with_private_comment(pem, comment),
    )


# --- OpenSSH encodings --------------------------------------------------------------------------


def _wire_string(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def read_private_key_file(pem: bytes) -> PrivateKeyFile:
    """Decode an unencrypted OpenSSH private key file, as ssh-keygen and cryptography write it.

    The one reader of private key files: without loading cryptography, so a run that only
    signs pays for the signature, not for every key format. KeyMaterialError says what is
    wrong: not such a file, protected by a passphrase, more than one key, or damaged (check
    numbers or padding that do not match, a field cut short, a public half that disagrees).
    """
    lines = pem.strip().splitlines()
    if len(lines) < 3 or lines[0] + b"\n" != _PEM_BEGIN or lines[-1] + b"\n" != _PEM_END:
        raise KeyMaterialError("not an OpenSSH private key (no BEGIN/END OPENSSH lines)")
    try:
        blob = base64.b64decode(b"".join(line.strip() for line in lines[1:-1]), validate=True)
    except binascii.Error:
        raise KeyMaterialError("the private key's base64 is damaged") from None
    if not blob.startswith(_OPENSSH_MAGIC):
        raise KeyMaterialError("not an OpenSSH private key (no openssh-key-v1 magic)")
    reader = WireReader(blob)
    reader.pos = len(_OPENSSH_MAGIC)
    try:
        cipher, kdf, kdf_options = reader.string(), reader.string(), reader.string()
        if cipher != b"none" or kdf != b"none":
            raise KeyMaterialError("the private key is protected by a passphrase")
        if (count := reader.uint32()) != 1:
            raise KeyMaterialError(f"the file holds {count} keys, not one")
        public_blob = reader.string()
        section = WireReader(reader.string())
        if not reader.at_end():
            raise KeyMaterialError("the private key has data after its end")
        check1, check2 = section.uint32(), section.uint32()
        if check1 != check2:
            raise KeyMaterialError("the private key is damaged (its check numbers differ)")
        algorithm = section.string().decode("ascii")
        if algorithm not in _PRIVATE_FIELDS:
            raise KeyMaterialError(f"unsupported private key type {algorithm!r}")
        fields = tuple(section.string() for _ in range(_PRIVATE_FIELDS[algorithm]))
        comment = section.string()
        padding = section.data[section.pos :]
        embedded = WireReader(public_blob).string().decode("ascii")
    except (WireError, UnicodeDecodeError):
        raise KeyMaterialError("the private key is damaged (a field is cut short)") from None
    # padded to the "none" cipher's 8-byte blocks with 1, 2, 3, ... (a whole block at times)
    if len(section.data) % 8 or len(padding) > 8 or padding != bytes(range(1, len(padding) + 1)):
        raise KeyMaterialError("the private key is damaged (bad padding)")
    if embedded != algorithm:
        raise KeyMaterialError(f"the private key is {algorithm} but its public half {embedded}")
    return PrivateKeyFile(
        (cipher, kdf, kdf_options), public_blob, check1, algorithm, fields, comment
    )


def with_private_comment(pem: bytes, comment: str) -> bytes:
    """Put ``comment`` into an unencrypted OpenSSH private key, as ssh-keygen does.

    cryptography writes an empty comment; with the real one, ``ssh-keygen -y`` and ``-l`` on the
    private key show the same comment as the .pub file.
    """
    if not comment:
        return pem
    key = read_private_key_file(pem)
    if key.comment:
        raise KeyMaterialError("the private key already carries a comment")

    private = struct.pack(">II", key.checkint, key.checkint) + _wire_string(key.algorithm.encode())
    private += b"".join(_wire_string(f) for f in key.fields)
    private += _wire_string(comment.encode("utf-8"))
    pad = (-len(private)) % 8  # the "none" cipher's block size
    private += bytes(range(1, pad + 1))
    blob = _OPENSSH_MAGIC + b"".join(_wire_string(h) for h in key.header)
    blob += struct.pack(">I", 1) + _wire_string(key.public_blob) + _wire_string(private)

    encoded = base64.b64encode(blob)
    lines = [encoded[i : i + 70] + b"\n" for i in range(0, len(encoded), 70)]
    return _PEM_BEGIN + b"".join(lines) + _PEM_END


def parse_public_line(line: str) -> PublicKey:
    """Decode ``<type> <base64> [comment]``; a KeyMaterialError names what is wrong."""
    parts = line.strip().split(None, 2)
    if len(parts) < 2:
        raise KeyMaterialError(
            "not an OpenSSH public key line (expected '<type> <base64> [comment]')"
        )
    algorithm, encoded = parts[0], parts[1]
    comment = parts[2] if len(parts) == 3 else ""
    if algorithm not in _LABELS:
        raise KeyMaterialError(f"unsupported public key type {algorithm!r}")
    try:
        blob = base64.b64decode(encoded, validate=True)
        reader = WireReader(blob)
        embedded = reader.string().decode("ascii")
        if embedded != algorithm:
            raise KeyMaterialError(f"the key says {algorithm} but its data is {embedded}")
        bits = key_bits(algorithm, reader)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise KeyMaterialError(f"the {algorithm} public key is not valid base64 key data") from None
    return PublicKey(algorithm, blob, comment, bits, _LABELS[algorithm])


def key_bits(algorithm: str, reader: WireReader) -> int:
    """The size ssh-keygen reports: the modulus (RSA), the prime p (DSA) or the curve's bits.

    ``reader`` stands just after the key type string; ValueError for a curve OpenSSH lacks.
    """
    if algorithm in ("ssh-rsa", "ssh-dss"):
        if algorithm == "ssh-rsa":
            reader.string()  # the public exponent comes before the modulus
        return int.from_bytes(reader.string(), "big").bit_length()
    if algorithm.startswith(("ecdsa-", "sk-ecdsa-")):
        curve = reader.string().decode("ascii")
        if curve not in _ECDSA_CURVE_BITS:
            raise ValueError(curve)
        return _ECDSA_CURVE_BITS[curve]
    return 256


def fingerprint(public_line: str) -> str:
    """The line ``ssh-keygen -lf`` prints: ``256 SHA256:... foo@server1 (ED25519)``."""
    return parse_public_line(public_line).fingerprint_line


# --- writing ------------------------------------------------------------------------------------


def default_key_path() -> Path:
    return Path.home() / ".ssh" / DEFAULT_KEY_NAME


def public_path_for(private_path: Path) -> Path:
    return private_path.with_name(private_path.name + ".pub")


def check_destination(path: Path | None, *, force: bool) -> tuple[Path, Path]:
    """The private and public paths to write, or an error saying why they cannot be written.

    Checked before the key is made so a refusal costs nothing and changes nothing.
    """
    private = default_key_path() if path is None else path.expanduser()
    public = public_path_for(private)
    if private.is_dir():
        raise UsageError(
            f"{private} is a directory; give the key file's path, e.g. {private / DEFAULT_KEY_NAME}"
        )
    parent = private.parent
    if not parent.is_dir() and parent != default_key_path().parent:
        raise FileError(f"directory {parent} does not exist; create it (mode 0700) first")
    if public.is_dir():
        raise UsageError(f"{public} is a directory")
    if not force:
        existing = [p for p in (private, public) if os.path.lexists(p)]
        if existing:
            names = " and ".join(str(p) for p in existing)
            raise FileError(
                f"{names} already exist{'s' if len(existing) == 1 else ''}; keyforge never "
                "replaces a key without --force (the old key stops working wherever it is "
                "installed)"
            )
    return private, public


def write_pair(path: Path | None, pair: KeyPair, *, force: bool) -> WrittenPair:
    """Write ``PATH`` (0600) and ``PATH.pub`` (0644); ``None`` means ``~/.ssh/backups``.

    Without ``force`` an existing file, even one appearing while we write, is an error and
    nothing is changed. With ``force`` each file is replaced atomically; should the public key
    fail to land, the old private key is put back so the pair never mismatches.
    """
    private, public = check_destination(path, force=force)
    created_dir: Path | None = None
    if not private.parent.is_dir() and fsutil.ensure_private_dir(private.parent):
        created_dir = private.parent

    old_private = _read_old_private(private) if force else None
    replaced = old_private is not None or public.exists()
    fsutil.atomic_write(private, pair.private_pem, mode=fsutil.PRIVATE_FILE, exclusive=not force)
    try:
        fsutil.atomic_write(
            public,
            (pair.public_line + "\n").encode("utf-8"),
            mode=PUBLIC_FILE_MODE,
            exclusive=not force,
        )
    except BaseException:
        _undo_private(private, old_private)
        raise

    warnings = tuple(fsutil.loose_mode_warnings(private.parent))
    return WrittenPair(private, public, replaced, created_dir, warnings)


def _read_old_private(private: Path) -> tuple[bytes, int] | None:
    try:
        return private.read_bytes(), stat.S_IMODE(private.stat().st_mode)
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise UsageError(f"{private} is a directory") from None
    except OSError as err:
        raise FileError.from_os_error("read", private, err) from err


def _undo_private(private: Path, old: tuple[bytes, int] | None) -> None:
    with contextlib.suppress(OSError, FileError):
        if old is None:
            private.unlink()
        else:
            fsutil.atomic_write(private, old[0], mode=old[1])
