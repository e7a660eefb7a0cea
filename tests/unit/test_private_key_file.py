"""keyforge.ssh.keys.read_private_key_file, the one reader of OpenSSH private key files, and the
signing key loaded through it: keys ssh-keygen and keyforge make are read as ssh-keygen reads
them; a passphrase, a cut, a flipped byte or halves that disagree are refused in one line."""

from __future__ import annotations

import base64
import contextlib
import shutil
import stat
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyforge import signing
from keyforge.errors import KeyMaterialError
from keyforge.ssh import keys, sshsig

SSH_KEYGEN = shutil.which("ssh-keygen")
needs_ssh_keygen = pytest.mark.skipif(SSH_KEYGEN is None, reason="ssh-keygen is not installed")
MAGIC = b"openssh-key-v1\0"


def keygen_key(tmp_path: Path, kind: str, *extra: str, passphrase: str = "") -> Path:
    assert SSH_KEYGEN is not None
    path = tmp_path / f"id_{kind}"
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", kind, *extra, "-N", passphrase, "-C", "root@server1", "-f", path],
        check=True,
        capture_output=True,
    )
    return path


def blob_of(pem: bytes) -> bytes:
    return base64.b64decode(b"".join(pem.strip().splitlines()[1:-1]))


def pem_of(blob: bytes) -> bytes:
    encoded = base64.b64encode(blob)
    body = b"".join(encoded[i : i + 70] + b"\n" for i in range(0, len(encoded), 70))
    return b"-----BEGIN OPENSSH PRIVATE KEY-----\n" + body + b"-----END OPENSSH PRIVATE KEY-----\n"


def wire(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def file_with(
    key: keys.PrivateKeyFile, *, fields: tuple[bytes, ...] | None = None, checks: tuple[int, int]
) -> bytes:
    """``key`` written back as an OpenSSH private key file, with the fields and check numbers
    given: how a damaged or forged key is made here."""
    private = struct.pack(">II", *checks) + wire(key.algorithm.encode())
    private += b"".join(wire(f) for f in (fields if fields is not None else key.fields))
    private += wire(key.comment)
    private += bytes(range(1, (-len(private)) % 8 + 1))
    blob = MAGIC + b"".join(wire(h) for h in key.header) + struct.pack(">I", 1)
    return pem_of(blob + wire(key.public_blob) + wire(private))


@pytest.fixture(scope="module")
def keyforge_pem() -> bytes:
    return signing.make_key("root@server1").private_pem


@needs_ssh_keygen
@pytest.mark.parametrize(
    ("kind", "extra", "algorithm"),
    [
        ("ed25519", (), "ssh-ed25519"),
        ("rsa", ("-b", "3072"), "ssh-rsa"),
        ("ecdsa", ("-b", "256"), "ecdsa-sha2-nistp256"),
    ],
)
def test_a_key_ssh_keygen_made_reads_as_its_pub_file_says(
    tmp_path: Path, kind: str, extra: tuple[str, ...], algorithm: str
) -> None:
    path = keygen_key(tmp_path, kind, *extra)
    key = keys.read_private_key_file(path.read_bytes())
    public = keys.parse_public_line(path.with_suffix(".pub").read_text())
    assert key.algorithm == public.algorithm == algorithm
    assert key.public_blob == public.blob
    assert key.comment == b"root@server1"
    assert "fields" not in repr(key)


def test_a_key_keyforge_made_reads_back_with_its_comment(keyforge_pem: bytes) -> None:
    key = keys.read_private_key_file(keyforge_pem)
    assert (key.algorithm, key.comment) == ("ssh-ed25519", b"root@server1")
    assert len(key.fields) == 2 and key.fields[1][32:] == key.fields[0]


@needs_ssh_keygen
def test_a_passphrase_protected_key_is_refused_for_what_it_is(tmp_path: Path) -> None:
    path = keygen_key(tmp_path, "ed25519", passphrase="correct horse")
    with pytest.raises(KeyMaterialError, match="protected by a passphrase"):
        keys.read_private_key_file(path.read_bytes())
    with pytest.raises(KeyMaterialError, match=f"signing key {path} cannot be used: .*passphrase"):
        signing.load_key(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"", "no BEGIN/END"),
        (b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA root@server1\n", "no BEGIN/END"),
        (pem_of(b"openssh-key-v2\0rest"), "no openssh-key-v1 magic"),
        (pem_of(MAGIC)[:-40] + b"!!!!\n-----END OPENSSH PRIVATE KEY-----\n", "base64"),
    ],
)
def test_what_is_no_private_key_file_is_named(text: bytes, message: str) -> None:
    with pytest.raises(KeyMaterialError, match=message):
        keys.read_private_key_file(text)


def test_check_numbers_that_differ_mean_a_damaged_key(keyforge_pem: bytes) -> None:
    key = keys.read_private_key_file(keyforge_pem)
    damaged = file_with(key, checks=(key.checkint, key.checkint ^ 1))
    with pytest.raises(KeyMaterialError, match="check numbers differ"):
        keys.read_private_key_file(damaged)


@settings(max_examples=200, deadline=None)
@given(cut=st.integers(min_value=len(MAGIC), max_value=10_000))
def test_a_key_cut_short_anywhere_is_refused(keyforge_pem: bytes, cut: int) -> None:
    blob = blob_of(keyforge_pem)
    with pytest.raises(KeyMaterialError):
        keys.read_private_key_file(pem_of(blob[: cut % len(blob)]))


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_a_flipped_byte_is_refused_or_read_never_a_crash(
    keyforge_pem: bytes, data: st.DataObject
) -> None:
    blob = bytearray(blob_of(keyforge_pem))
    at = data.draw(st.integers(min_value=0, max_value=len(blob) - 1))
    blob[at] ^= data.draw(st.integers(min_value=1, max_value=255))
    # the one error it may raise; any other exception fails the test
    with contextlib.suppress(KeyMaterialError):
        keys.read_private_key_file(pem_of(bytes(blob)))


def write_key(tmp_path: Path, pem: bytes) -> Path:
    path = tmp_path / "manifest-signing-key"
    path.write_bytes(pem)
    path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    return path


def test_a_signing_key_with_another_keys_seed_is_refused(
    tmp_path: Path, keyforge_pem: bytes
) -> None:
    key = keys.read_private_key_file(keyforge_pem)
    other = keys.read_private_key_file(signing.make_key("intruder").private_pem)
    # the other key's seed beside this key's public point: it would sign as another key
    forged = (key.fields[0], other.fields[1][:32] + key.fields[0])
    path = write_key(tmp_path, file_with(key, fields=forged, checks=(7, 7)))
    with pytest.raises(KeyMaterialError, match="halves differ"):
        signing.load_key(path)


@needs_ssh_keygen
def test_a_signing_key_that_is_not_ed25519_is_refused(tmp_path: Path) -> None:
    path = keygen_key(tmp_path, "ecdsa", "-b", "256")
    with pytest.raises(KeyMaterialError, match="is not an Ed25519 key"):
        signing.load_key(path)


@needs_ssh_keygen
def test_an_ssh_keygen_ed25519_key_signs_what_ssh_keygen_verifies(tmp_path: Path) -> None:
    assert SSH_KEYGEN is not None
    path = keygen_key(tmp_path, "ed25519")
    key = signing.load_key(path)
    assert key.public_blob == keys.parse_public_line(path.with_suffix(".pub").read_text()).blob
    message = b'{"format": 1}\n'
    (tmp_path / "m.sig").write_bytes(key.sign(message))
    signers = tmp_path / "allowed_signers"
    signers.write_text(
        f'server1 namespaces="{signing.NAMESPACE}" ' + path.with_suffix(".pub").read_text()
    )
    verified = subprocess.run(
        [
            SSH_KEYGEN,
            "-Y",
            "verify",
            "-f",
            signers,
            "-I",
            "server1",
            "-n",
            signing.NAMESPACE,
            "-s",
            tmp_path / "m.sig",
        ],
        input=message,
        capture_output=True,
        check=False,
    )
    assert verified.returncode == 0, verified.stderr
    assert (
        sshsig.check(key.sign(message), message, signing.NAMESPACE).fingerprint == key.fingerprint
    )
