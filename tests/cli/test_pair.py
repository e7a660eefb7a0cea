"""`keyforge pair`: what a sysadmin types on the sending server, and what they see."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keyforge import signing
from keyforge.cli import app
from keyforge.errors import KeyMaterialError
from keyforge.ssh import allowed_signers, keys

runner = CliRunner()

needs_ssh_keygen = pytest.mark.skipif(
    shutil.which("ssh-keygen") is None, reason="ssh-keygen (openssh-client) is not installed"
)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def ssh_keygen_fingerprint(path: Path) -> str:
    done = subprocess.run(
        ["ssh-keygen", "-lf", str(path)], capture_output=True, text=True, check=True, timeout=30
    )
    return done.stdout.strip()


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@needs_ssh_keygen
def test_pair_writes_the_default_key_and_prints_ssh_keygens_fingerprint(home: Path) -> None:
    result = runner.invoke(app, ["pair", "--comment", "foo@server1"])

    assert result.exit_code == 0, result.output
    private = home / ".ssh" / "backups"
    public = home / ".ssh" / "backups.pub"
    lines = result.stdout.splitlines()
    assert f"Created {home / '.ssh'} (mode 0700)" in lines
    assert any(line.startswith(f"Wrote the private key {private} (mode 0600") for line in lines)
    assert f"Wrote the public key  {public} (mode 0644)" in lines
    assert ssh_keygen_fingerprint(public) in lines
    assert mode_of(home / ".ssh") == 0o700
    assert mode_of(private) == 0o600
    assert mode_of(public) == 0o644


def test_pair_tells_the_next_step_on_the_receiving_host(home: Path) -> None:
    result = runner.invoke(app, ["pair"])

    assert result.exit_code == 0, result.output
    assert f"copy {home / '.ssh' / 'backups.pub'} to the receiving host" in result.stdout
    assert "keyforge install --key backups.pub --from <this server's address>" in result.stdout
    assert "keyforge capture start" in result.stdout


def test_pair_under_umask_0_still_writes_0600_and_0700(home: Path) -> None:
    old = os.umask(0)
    try:
        result = runner.invoke(app, ["pair", "--type", "ecdsa"])
    finally:
        os.umask(old)

    assert result.exit_code == 0, result.output
    assert mode_of(home / ".ssh") == 0o700
    assert mode_of(home / ".ssh" / "backups") == 0o600
    assert mode_of(home / ".ssh" / "backups.pub") == 0o644


def test_pair_default_comment_is_user_at_host(home: Path) -> None:
    result = runner.invoke(app, ["pair"])

    assert result.exit_code == 0, result.output
    comment = (home / ".ssh" / "backups.pub").read_text().split()[2]
    assert comment.endswith(f"@{socket.gethostname()}")


@needs_ssh_keygen
@pytest.mark.parametrize(
    ("args", "label"),
    [(["--type", "rsa", "--bits", "3072"], "(RSA)"), (["-t", "ecdsa", "-b", "384"], "(ECDSA)")],
)
def test_pair_at_an_explicit_path_with_type_and_bits(
    tmp_path: Path, args: list[str], label: str
) -> None:
    key = tmp_path / "k"

    result = runner.invoke(app, ["pair", str(key), *args, "-C", "foo@server1"])

    assert result.exit_code == 0, result.output
    fingerprint = ssh_keygen_fingerprint(key.with_name("k.pub"))
    assert fingerprint.endswith(f"foo@server1 {label}")
    assert fingerprint in result.stdout.splitlines()


def test_pair_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    key = tmp_path / "backups"
    key.write_text("old private\n")

    result = runner.invoke(app, ["pair", str(key)])

    assert result.exit_code == 4
    assert result.stdout == ""
    assert result.stderr == (
        f"keyforge: error: {key} already exists; keyforge never replaces a key without --force "
        "(the old key stops working wherever it is installed)\n"
    )
    assert key.read_text() == "old private\n"
    assert not key.with_name("backups.pub").exists()


def test_pair_with_force_replaces_the_pair(tmp_path: Path) -> None:
    key = tmp_path / "backups"
    key.write_text("old private\n")
    key.with_name("backups.pub").write_text("old public\n")

    result = runner.invoke(app, ["pair", str(key), "--force"])

    assert result.exit_code == 0, result.output
    assert "Replaced the private key" in result.stdout
    assert key.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert key.with_name("backups.pub").read_text().startswith("ssh-ed25519 ")
    assert mode_of(key) == 0o600


def test_pair_dry_run_writes_nothing(home: Path) -> None:
    result = runner.invoke(app, ["pair", "--dry-run", "-C", "foo@server1"])

    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "would make a 256-bit ed25519 key with comment 'foo@server1'\n"
        f"would write {home / '.ssh' / 'backups'} (mode 0600) and "
        f"{home / '.ssh' / 'backups.pub'} (mode 0644)\n"
    )
    assert list(home.iterdir()) == []


def test_pair_dry_run_still_refuses_what_the_real_run_would(tmp_path: Path) -> None:
    (tmp_path / "backups.pub").write_text("old public\n")

    result = runner.invoke(app, ["pair", str(tmp_path / "backups"), "--dry-run"])

    assert result.exit_code == 4
    assert "without --force" in result.stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ["--type", "foo"],
            KeyMaterialError.exit_code,
            "unknown key type 'foo'; choose ed25519 (the default), rsa or ecdsa",
        ),
        (
            ["--type", "dsa"],
            KeyMaterialError.exit_code,
            "DSA keys are refused: OpenSSH disabled them by default",
        ),
        (
            ["--type", "rsa", "--bits", "2048"],
            KeyMaterialError.exit_code,
            "RSA keys of 2048 bits are too weak",
        ),
        (
            ["--type", "ecdsa", "--bits", "512"],
            KeyMaterialError.exit_code,
            "ECDSA keys have 256, 384 or 521 bits",
        ),
        (["--comment", "a\nb"], 2, "the key comment must be one line"),
    ],
)
def test_pair_bad_request_is_one_line_error_and_writes_nothing(
    home: Path, args: list[str], code: int, message: str
) -> None:
    result = runner.invoke(app, ["pair", *args])

    assert result.exit_code == code
    assert result.stderr.startswith(f"keyforge: error: {message}")
    assert result.stderr.count("\n") == 1
    assert list(home.iterdir()) == []


def test_pair_refuses_a_directory_as_path(tmp_path: Path) -> None:
    result = runner.invoke(app, ["pair", str(tmp_path)])

    assert result.exit_code == 2
    assert result.stderr == (
        f"keyforge: error: {tmp_path} is a directory; give the key file's path, "
        f"e.g. {tmp_path / 'backups'}\n"
    )


def test_pair_refuses_a_path_whose_directory_is_missing(tmp_path: Path) -> None:
    result = runner.invoke(app, ["pair", str(tmp_path / "nope" / "backups")])

    assert result.exit_code == 4
    assert result.stderr == (
        f"keyforge: error: directory {tmp_path / 'nope'} does not exist; "
        "create it (mode 0700) first\n"
    )


def test_pair_help_explains_the_options() -> None:
    result = runner.invoke(app, ["pair", "--help"])

    assert result.exit_code == 0
    for text in (
        "PATH.pub",
        "~/.ssh/backups",
        "--type",
        "--bits",
        "--comment",
        "--force",
        "--dry-run",
        "0600",
        "DSA is refused",
    ):
        assert text in result.stdout


def test_pair_signing_makes_the_manifest_key_beside_the_config_and_prints_the_line_to_pin(
    tmp_path: Path,
) -> None:
    config = tmp_path / "etc/keyforge/keyforge.toml"
    config.parent.mkdir(parents=True)
    config.write_text('[general]\nhost = "server1"\n')
    env = {"KEYFORGE_CONFIG": str(config)}
    dry = CliRunner().invoke(app, ["pair", "--signing", "--dry-run"], env=env)
    assert dry.exit_code == 0, dry.output
    key = config.parent / "manifest-signing-key"
    assert not key.exists()
    made = CliRunner().invoke(app, ["pair", "--signing"], env=env)
    assert made.exit_code == 0, made.output
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert f'signing_key = "{key}"' in made.stdout
    [line] = [ln.strip() for ln in made.stdout.splitlines() if ln.startswith("  server1 ")]
    pinned = allowed_signers.parse(line)
    loaded = signing.load_key(key)
    assert pinned.find("server1", signing.NAMESPACE, loaded.public_blob) is not None
    assert pinned.find("server1", "file", loaded.public_blob) is None  # namespaces= pinned
    again = CliRunner().invoke(app, ["pair", "--signing"], env=env)
    assert again.exit_code != 0  # never replaced without --force
    refused = CliRunner().invoke(app, ["pair", "--signing", "--type", "rsa", "x"], env=env)
    assert refused.exit_code == 7


def test_a_signing_key_others_can_read_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "k"
    keys.write_pair(key, signing.make_key("c"), force=False)
    key.chmod(0o640)
    with pytest.raises(KeyMaterialError, match="mode 0640"):
        signing.load_key(key)
