"""keyforge.ssh.keys: keys OpenSSH accepts, fingerprints as ssh-keygen prints them, safe writes."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import load_ssh_private_key

from keyforge.errors import FileError, KeyMaterialError, UsageError
from keyforge.infra import fsutil
from keyforge.ssh import keys

needs_ssh_keygen = pytest.mark.skipif(
    shutil.which("ssh-keygen") is None, reason="ssh-keygen (openssh-client) is not installed"
)

# (type, bits asked, bits expected, ssh-keygen's label); RSA 3072 keeps the suite quick, the
# 4096 default is covered once below
KINDS = [
    ("ed25519", None, 256, "ED25519"),
    ("rsa", 3072, 3072, "RSA"),
    ("ecdsa", None, 256, "ECDSA"),
    ("ecdsa", 384, 384, "ECDSA"),
    ("ecdsa", 521, 521, "ECDSA"),
]


def ssh_keygen(*args: str) -> str:
    done = subprocess.run(
        ["ssh-keygen", *args], capture_output=True, text=True, check=True, timeout=30
    )
    return done.stdout.strip()


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o000, 0o077, 0o022], ids=["umask0", "umask077", "umask022"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


@pytest.fixture(scope="module")
def ed25519_pair() -> keys.KeyPair:
    return keys.generate("ed25519", comment="foo@server1")


# --- OpenSSH agrees with what keyforge writes ----------------------------------------------------


@needs_ssh_keygen
@pytest.mark.parametrize(("kind", "bits", "expected_bits", "label"), KINDS)
def test_ssh_keygen_derives_the_written_public_key_from_the_private_key(
    tmp_path: Path, kind: str, bits: int | None, expected_bits: int, label: str
) -> None:
    pair = keys.generate(kind, bits, comment="foo@server1")
    keys.write_pair(tmp_path / "backups", pair, force=False)

    derived = ssh_keygen("-y", "-f", str(tmp_path / "backups"))
    written = (tmp_path / "backups.pub").read_text()

    assert written == pair.public_line + "\n"
    assert derived.split()[:2] == written.split()[:2]
    # the comment travels in the private key too, as with ssh-keygen's own keys
    assert derived == written.strip()


@needs_ssh_keygen
@pytest.mark.parametrize(("kind", "bits", "expected_bits", "label"), KINDS)
def test_fingerprint_is_the_line_ssh_keygen_prints(
    tmp_path: Path, kind: str, bits: int | None, expected_bits: int, label: str
) -> None:
    pair = keys.generate(kind, bits, comment="foo@server1")
    keys.write_pair(tmp_path / "backups", pair, force=False)

    assert pair.fingerprint == ssh_keygen("-lf", str(tmp_path / "backups.pub"))
    assert pair.fingerprint.startswith(f"{expected_bits} SHA256:")
    assert pair.fingerprint.endswith(f" foo@server1 ({label})")
    (tmp_path / "backups.pub").unlink()  # now ssh-keygen can only read the private key
    assert pair.fingerprint == ssh_keygen("-lf", str(tmp_path / "backups"))


@needs_ssh_keygen
def test_rsa_defaults_to_4096_bits_that_ssh_keygen_agrees_with(tmp_path: Path) -> None:
    pair = keys.generate("rsa", comment="foo@server1")
    keys.write_pair(tmp_path / "backups", pair, force=False)

    assert pair.bits == 4096
    assert ssh_keygen("-lf", str(tmp_path / "backups.pub")) == pair.fingerprint
    assert pair.fingerprint.startswith("4096 SHA256:")
    assert pair.fingerprint.endswith("(RSA)")


@needs_ssh_keygen
@pytest.mark.parametrize(
    ("kind", "bits", "comment"),
    [
        ("ed25519", "256", "foo@server1"),
        ("rsa", "3072", "foo@server1"),
        ("ecdsa", "384", "foo@server1"),
        ("ed25519", "256", "two words"),
        ("ed25519", "256", ""),
    ],
)
def test_fingerprint_of_an_ssh_keygen_key_matches_ssh_keygen(
    tmp_path: Path, kind: str, bits: str, comment: str
) -> None:
    key = tmp_path / "theirs"
    ssh_keygen("-q", "-t", kind, "-b", bits, "-N", "", "-C", comment, "-f", str(key))

    line = key.with_name("theirs.pub").read_text()

    assert keys.fingerprint(line) == ssh_keygen("-lf", str(key.with_name("theirs.pub")))


def test_the_openssh_private_key_carries_no_passphrase(ed25519_pair: keys.KeyPair) -> None:
    assert ed25519_pair.private_pem.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----\n")
    load_ssh_private_key(ed25519_pair.private_pem, password=None)


def test_the_private_key_never_shows_in_repr(ed25519_pair: keys.KeyPair) -> None:
    assert "PRIVATE" not in repr(ed25519_pair)
    assert ed25519_pair.public_line in repr(ed25519_pair)


def test_default_comment_is_user_at_hostname() -> None:
    user, _, host = keys.default_comment().partition("@")
    assert user
    assert host == socket.gethostname()


# --- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [1024, 2048, 3071])
def test_rsa_below_3072_bits_is_refused(bits: int) -> None:
    with pytest.raises(
        KeyMaterialError, match=f"RSA keys of {bits} bits are too weak; use at least 3072"
    ):
        keys.generate("rsa", bits, comment="x")


@pytest.mark.parametrize("kind", ["dsa", "DSA", "ssh-dss"])
def test_dsa_is_refused_with_the_reason(kind: str) -> None:
    with pytest.raises(KeyMaterialError, match=r"^DSA keys are refused: OpenSSH disabled them"):
        keys.generate(kind, comment="x")


@pytest.mark.parametrize(
    ("kind", "bits", "message"),
    [
        ("rsa", 32768, "above 16384 bits"),
        ("ecdsa", 512, "256, 384 or 521 bits, not 512"),
        ("ed25519", 4096, "always have 256 bits"),
        ("ed448", None, "unknown key type 'ed448'; choose ed25519"),
        ("", None, "unknown key type ''"),
    ],
)
def test_impossible_type_or_size_is_refused(kind: str, bits: int | None, message: str) -> None:
    with pytest.raises(KeyMaterialError, match=message):
        keys.resolve_bits(kind, bits)


@pytest.mark.parametrize("comment", ["foo\nssh-rsa AAAA evil", "a\rb", "nul\0", "esc\x1b[2J"])
def test_a_comment_that_would_break_the_pub_file_is_refused(comment: str) -> None:
    with pytest.raises(UsageError, match="one line of printable text"):
        keys.generate("ed25519", comment=comment)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("", "not an OpenSSH public key line"),
        ("ssh-ed25519", "not an OpenSSH public key line"),
        ("ssh-foo AAAA", "unsupported public key type 'ssh-foo'"),
        ("ssh-ed25519 !!!notbase64", "not valid base64 key data"),
        ("ssh-ed25519 AAAA", "not valid base64 key data"),
    ],
)
def test_a_malformed_public_line_is_named(line: str, message: str) -> None:
    with pytest.raises(KeyMaterialError, match=message):
        keys.fingerprint(line)


def test_a_public_line_whose_data_is_another_type_is_refused(ed25519_pair: keys.KeyPair) -> None:
    blob = ed25519_pair.public_line.split()[1]

    with pytest.raises(KeyMaterialError, match="says ssh-rsa but its data is ssh-ed25519"):
        keys.fingerprint(f"ssh-rsa {blob}")


# --- writing -------------------------------------------------------------------------------------


def test_modes_are_0600_and_0644_whatever_the_umask(
    tmp_path: Path, umask: int, ed25519_pair: keys.KeyPair
) -> None:
    written = keys.write_pair(tmp_path / "backups", ed25519_pair, force=False)

    assert mode_of(written.private_path) == 0o600
    assert mode_of(written.public_path) == 0o644
    assert written.private_path.read_bytes() == ed25519_pair.private_pem


def test_default_path_creates_dot_ssh_0700_whatever_the_umask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, umask: int, ed25519_pair: keys.KeyPair
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))

    written = keys.write_pair(None, ed25519_pair, force=False)

    assert written.private_path == tmp_path / ".ssh" / "backups"
    assert written.public_path == tmp_path / ".ssh" / "backups.pub"
    assert written.created_dir == tmp_path / ".ssh"
    assert mode_of(tmp_path / ".ssh") == 0o700
    assert mode_of(written.private_path) == 0o600


def test_an_existing_dot_ssh_keeps_its_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ed25519_pair: keys.KeyPair
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh").mkdir(mode=0o750)
    (tmp_path / ".ssh").chmod(0o750)

    written = keys.write_pair(None, ed25519_pair, force=False)

    assert written.created_dir is None
    assert mode_of(tmp_path / ".ssh") == 0o750


def test_private_key_bytes_only_ever_sit_in_a_0600_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ed25519_pair: keys.KeyPair
) -> None:
    """Every temporary file is 0600 the moment it exists, even under umask 0, and none is left."""
    created: list[tuple[str, int]] = []
    real_mkstemp = tempfile.mkstemp

    def recording_mkstemp(*args: object, **kwargs: object) -> tuple[int, str]:
        fd, name = real_mkstemp(*args, **kwargs)  # type: ignore[call-overload]
        created.append((name, stat.S_IMODE(os.fstat(fd).st_mode)))
        return fd, name

    monkeypatch.setattr(fsutil.tempfile, "mkstemp", recording_mkstemp)
    old = os.umask(0)
    try:
        keys.write_pair(tmp_path / "backups", ed25519_pair, force=False)
    finally:
        os.umask(old)

    private_temp = [
        mode for name, mode in created if not Path(name).name.startswith(".backups.pub.")
    ]
    assert private_temp == [0o600]
    assert all(mode == 0o600 for _, mode in created)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backups", "backups.pub"]


@pytest.mark.parametrize("existing", ["backups", "backups.pub"])
def test_an_existing_key_file_is_never_replaced_without_force(
    tmp_path: Path, existing: str, ed25519_pair: keys.KeyPair
) -> None:
    (tmp_path / existing).write_text("old key\n")

    with pytest.raises(FileError, match="never replaces a key without --force"):
        keys.write_pair(tmp_path / "backups", ed25519_pair, force=False)

    assert [p.name for p in tmp_path.iterdir()] == [existing]
    assert (tmp_path / existing).read_text() == "old key\n"


def test_a_dangling_symlink_counts_as_an_existing_key(
    tmp_path: Path, ed25519_pair: keys.KeyPair
) -> None:
    (tmp_path / "backups").symlink_to(tmp_path / "elsewhere")

    with pytest.raises(FileError, match="already exists"):
        keys.write_pair(tmp_path / "backups", ed25519_pair, force=False)

    assert not (tmp_path / "elsewhere").exists()


def test_force_replaces_both_files(tmp_path: Path, ed25519_pair: keys.KeyPair) -> None:
    (tmp_path / "backups").write_text("old private\n")
    (tmp_path / "backups").chmod(0o644)
    (tmp_path / "backups.pub").write_text("old public\n")

    written = keys.write_pair(tmp_path / "backups", ed25519_pair, force=True)

    assert written.replaced
    assert (tmp_path / "backups").read_bytes() == ed25519_pair.private_pem
    assert (tmp_path / "backups.pub").read_text() == ed25519_pair.public_line + "\n"
    assert mode_of(tmp_path / "backups") == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backups", "backups.pub"]


def _fail_on_public_key(monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = fsutil.atomic_write

    def failing_write(path: Path, data: bytes, **kwargs: object) -> None:
        if path.name.endswith(".pub"):
            raise FileError(f"cannot write {path}: No space left on device")
        real_write(path, data, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(fsutil, "atomic_write", failing_write)


def test_a_failed_public_key_write_leaves_no_private_key_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ed25519_pair: keys.KeyPair
) -> None:
    _fail_on_public_key(monkeypatch)

    with pytest.raises(FileError, match="No space left"):
        keys.write_pair(tmp_path / "backups", ed25519_pair, force=False)

    assert list(tmp_path.iterdir()) == []


def test_a_failed_forced_write_puts_the_old_private_key_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ed25519_pair: keys.KeyPair
) -> None:
    (tmp_path / "backups").write_bytes(b"old private\n")
    (tmp_path / "backups").chmod(0o600)
    (tmp_path / "backups.pub").write_text("old public\n")
    _fail_on_public_key(monkeypatch)

    with pytest.raises(FileError, match="No space left"):
        keys.write_pair(tmp_path / "backups", ed25519_pair, force=True)

    assert (tmp_path / "backups").read_bytes() == b"old private\n"
    assert mode_of(tmp_path / "backups") == 0o600
    assert (tmp_path / "backups.pub").read_text() == "old public\n"


def test_a_directory_as_path_is_refused(tmp_path: Path, ed25519_pair: keys.KeyPair) -> None:
    with pytest.raises(UsageError, match=r"is a directory; give the key file's path"):
        keys.write_pair(tmp_path, ed25519_pair, force=True)


def test_a_missing_parent_directory_is_refused_and_not_created(
    tmp_path: Path, ed25519_pair: keys.KeyPair
) -> None:
    with pytest.raises(FileError, match=r"directory .*/nope does not exist; create it"):
        keys.write_pair(tmp_path / "nope" / "backups", ed25519_pair, force=False)

    assert not (tmp_path / "nope").exists()
