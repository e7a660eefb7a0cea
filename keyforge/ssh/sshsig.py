"""OpenSSH's detached signatures (SSHSIG, PROTOCOL.sshsig), made and checked with ``cryptography``.

keyforge signs its manifests in-process rather than with ``ssh-keygen -Y sign``: the private key
is read once from its 0600 file into memory and never reaches argv, the environment or a
temporary file; no program runs per manifest; and the signature is written through ``fsutil``
like every other file (``ssh-keygen -Y sign`` writes ``FILE.sig`` itself, not atomically).
Checking happens in-process too, so a restore needs no ssh-keygen, and the format has one
reader. Both directions are proved against stock ``ssh-keygen -Y sign`` / ``-Y verify``.

Only Ed25519 is made or accepted: the one key type keyforge generates for signing.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import struct

from keyforge.ssh import wire

MAGIC = b"SSHSIG"
VERSION = 1
ED25519 = "ssh-ed25519"
HASHES = ("sha512", "sha256")
DEFAULT_HASH = "sha512"  # what ssh-keygen -Y sign uses
ARMOR_BEGIN = "-----BEGIN SSH SIGNATURE-----"
ARMOR_END = "-----END SSH SIGNATURE-----"
ARMOR_WIDTH = 70  # ssh-keygen's line length


@dataclasses.dataclass(frozen=True)
class Signature:
    """One decoded SSHSIG blob."""

    public_blob: bytes  # the signer's key, in SSH wire form
    namespace: str
    hash_algorithm: str
    signature: bytes  # the raw Ed25519 signature (64 bytes)

    @property
    def fingerprint(self) -> str:
        return wire.fingerprint(self.public_blob)


def _string(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def signed_data(namespace: str, hash_algorithm: str, message: bytes) -> bytes:
    """What the key signs: the preamble, namespace, reserved, hash name and H(message)."""
    digest = hashlib.new(hash_algorithm, message).digest()
    return (
        MAGIC
        + _string(namespace.encode())
        + _string(b"")
        + _string(hash_algorithm.encode())
        + _string(digest)
    )


def ed25519_public_blob(raw_public: bytes) -> bytes:
    return _string(ED25519.encode()) + _string(raw_public)


def encode(sig: Signature) -> bytes:
    return (
        MAGIC
        + struct.pack(">I", VERSION)
        + _string(sig.public_blob)
        + _string(sig.namespace.encode())
        + _string(b"")
        + _string(sig.hash_algorithm.encode())
        + _string(_string(ED25519.encode()) + _string(sig.signature))
    )


def armor(blob: bytes) -> bytes:
    text = base64.b64encode(blob).decode("ascii")
    lines = [text[i : i + ARMOR_WIDTH] for i in range(0, len(text), ARMOR_WIDTH)]
    return ("\n".join([ARMOR_BEGIN, *lines, ARMOR_END]) + "\n").encode("ascii")


def dearmor(data: bytes) -> bytes:
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError("not an armored SSH signature") from None
    lines = [line.strip() for line in text.strip().splitlines()]
    if len(lines) < 3 or lines[0] != ARMOR_BEGIN or lines[-1] != ARMOR_END:
        raise ValueError("not an armored SSH signature")
    try:
        return base64.b64decode("".join(lines[1:-1]), validate=True)
    except binascii.Error:
        raise ValueError("the signature is not valid base64") from None


def decode(blob: bytes) -> Signature:
    """The fields of an SSHSIG blob; ValueError for anything else."""
    reader = wire.WireReader(blob)
    try:
        if reader.take(len(MAGIC)) != MAGIC:
            raise ValueError("not an SSHSIG signature")
        if reader.uint32() != VERSION:
            raise ValueError("unsupported SSHSIG version")
        public_blob = reader.string()
        namespace = reader.string().decode("utf-8")
        reader.string()  # reserved
        hash_algorithm = reader.string().decode("ascii")
        inner = wire.WireReader(reader.string())
        algorithm = inner.string().decode("ascii")
        raw = inner.string()
        key = wire.WireReader(public_blob)
        key_type = key.string().decode("ascii")
        key_raw = key.string()
        complete = reader.at_end() and inner.at_end() and key.at_end()
    except (wire.WireError, UnicodeDecodeError):
        raise ValueError("a truncated or malformed SSHSIG signature") from None
    if not complete:
        raise ValueError("trailing data in the SSHSIG signature")
    if key_type != ED25519 or algorithm != ED25519 or len(key_raw) != 32 or len(raw) != 64:
        raise ValueError(
            f"a {key_type} signature; keyforge checks Ed25519 (ssh-ed25519) signatures only"
        )
    if hash_algorithm not in HASHES:
        raise ValueError(f"unsupported hash {hash_algorithm!r}")
    return Signature(public_blob, namespace, hash_algorithm, raw)


def sign(private_key: object, message: bytes, namespace: str) -> bytes:
    """The armored signature of ``message`` by an Ed25519 ``private_key`` (cryptography's)."""
    from cryptography.hazmat.primitives.asymmetric import ed25519  # noqa: PLC0415

    if not isinstance(private_key, ed25519.Ed25519PrivateKey):
        raise TypeError("an Ed25519 private key is needed")
    raw_public = private_key.public_key().public_bytes_raw()
    raw = private_key.sign(signed_data(namespace, DEFAULT_HASH, message))
    return armor(encode(Signature(ed25519_public_blob(raw_public), namespace, DEFAULT_HASH, raw)))


def check(armored: bytes, message: bytes, namespace: str) -> Signature:
    """Decode ``armored`` and prove it signs ``message`` in ``namespace`` with the key it
    carries; the caller still decides whether that key may sign (allowed_signers).

    Raises ValueError saying what is wrong.
    """
    from cryptography.exceptions import InvalidSignature  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ed25519  # noqa: PLC0415

    sig = decode(dearmor(armored))
    if sig.namespace != namespace:
        raise ValueError(f"signed for namespace {sig.namespace!r}, not {namespace!r}")
    key = ed25519.Ed25519PublicKey.from_public_bytes(sig.public_blob[-32:])
    try:
        key.verify(sig.signature, signed_data(namespace, sig.hash_algorithm, message))
    except InvalidSignature:
        raise ValueError("the signature does not match the content") from None
    return sig
