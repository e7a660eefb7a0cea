"""`keyforge install` / `keyforge revoke`: what the admin types on the receiving host."""

from __future__ import annotations

import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from typer.testing import CliRunner

from keyforge.cli import app
from keyforge.errors import KeyMaterialError

runner = CliRunner()
RunKeyforge = Callable[..., "subprocess.CompletedProcess[str]"]
RSYNC = "rsync --server -logDtprze.iLsfxCIvu --delete . srvbackups/"


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def write_public_key(path: Path, comment: str = "foo@server1") -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    raw = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    line = f"{raw.decode('ascii')} {comment}"
    path.write_text(line + "\n")
    return line


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home" / "foo"
    home.mkdir(parents=True, mode=0o755)
    monkeypatch.setenv("HOME", str(home))
    return home


@pytest.fixture
def pubkey(tmp_path: Path) -> Path:
    path = tmp_path / "backups.pub"
    write_public_key(path)
    return path


def install(*args: str) -> list[str]:
    return ["install", *args]


def locked_args(pubkey: Path) -> list[str]:
    return ["--key", str(pubkey), "--from", "203.0.113.7", "--command", RSYNC]


def test_install_creates_ssh_dir_0700_and_file_0600_and_prints_the_line(
    home: Path, pubkey: Path
) -> None:
    result = runner.invoke(app, install(*locked_args(pubkey)))

    assert result.exit_code == 0, result.output
    target = home / ".ssh" / "authorized_keys"
    first, line = result.stdout.splitlines()[:2]
    assert first.startswith("added key SHA256:")
    assert first.endswith(f"(foo@server1) to {target} (line 1)")
    assert line.startswith("restrict,no-port-forwarding,no-x11-forwarding,")
    assert 'from="203.0.113.7",command="rsync --server' in line
    assert target.read_text() == line + "\n"
    assert mode_of(home / ".ssh") == 0o700
    assert mode_of(target) == 0o600


def test_dry_run_prints_a_diff_and_writes_nothing(home: Path, pubkey: Path) -> None:
    result = runner.invoke(app, install(*locked_args(pubkey), "--dry-run"))

    assert result.exit_code == 0, result.output
    out = result.stdout.splitlines()
    assert out[0].startswith("--- ") and out[1].startswith("+++ ")
    assert any(row.startswith("+restrict,") for row in out)
    assert any(row.startswith("would add key") and "nothing written" in row for row in out)
    assert not (home / ".ssh").exists()


def test_dry_run_on_an_existing_file_leaves_it_untouched(home: Path, pubkey: Path) -> None:
    ssh = home / ".ssh"
    ssh.mkdir(mode=0o700)
    (ssh / "authorized_keys").write_text("# mine\n")

    result = runner.invoke(app, install(*locked_args(pubkey), "--dry-run"))

    assert result.exit_code == 0, result.output
    assert (ssh / "authorized_keys").read_text() == "# mine\n"
    assert sorted(p.name for p in ssh.iterdir()) == ["authorized_keys"]


def test_from_is_required_unless_any_source_is_explicit(home: Path, pubkey: Path) -> None:
    result = runner.invoke(app, install("--key", str(pubkey), "--command", RSYNC))

    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "keyforge: error: --from is required: the address(es) the sending server connects "
        "from; pass --any-source to allow the key from anywhere"
    ]
    assert not (home / ".ssh").exists()


def test_any_source_installs_without_from_and_says_so(home: Path, pubkey: Path) -> None:
    result = runner.invoke(app, install("--key", str(pubkey), "--any-source", "--command", RSYNC))

    assert result.exit_code == 0, result.output
    assert "from=" not in (home / ".ssh" / "authorized_keys").read_text()
    assert "warning: no from= restriction" in result.stderr


def test_from_and_any_source_together_are_refused(pubkey: Path) -> None:
    result = runner.invoke(app, install(*locked_args(pubkey), "--any-source"))

    assert result.exit_code == 2
    assert "contradict" in result.stderr


def test_command_is_required(home: Path, pubkey: Path) -> None:
    result = runner.invoke(app, install("--key", str(pubkey), "--from", "203.0.113.7"))

    assert result.exit_code == 2
    assert "--command is required" in result.stderr


def test_a_missing_key_file_is_one_line_error(home: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pub"

    result = runner.invoke(app, install(*locked_args(missing)))

    assert result.exit_code == 4
    assert result.stderr.splitlines() == [
        f"keyforge: error: cannot read {missing}: No such file or directory"
    ]


def test_a_garbage_key_file_is_one_line_error(home: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pub"
    bad.write_text("ssh-ed25519 not-base64!!\n")

    result = runner.invoke(app, install(*locked_args(bad)))

    assert result.exit_code == 3
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("keyforge: error: ")
    assert not (home / ".ssh").exists()


def test_a_private_key_is_refused_without_echoing_it(home: Path, tmp_path: Path) -> None:
    private = tmp_path / "backups"
    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    private.write_bytes(pem)

    result = runner.invoke(app, install(*locked_args(private)))

    assert result.exit_code == KeyMaterialError.exit_code
    assert "is a private key; give the public key" in result.stderr
    secret_line = pem.decode().splitlines()[1]
    assert secret_line not in result.output


def test_key_dash_reads_the_public_key_from_stdin(home: Path, tmp_path: Path) -> None:
    line = write_public_key(tmp_path / "k.pub", "piped@server1")

    result = runner.invoke(
        app, install("--key", "-", "--from", "203.0.113.7", "--command", RSYNC), input=line + "\n"
    )

    assert result.exit_code == 0, result.output
    assert "piped@server1" in (home / ".ssh" / "authorized_keys").read_text()


def test_second_install_is_unchanged_and_writes_no_backup(home: Path, pubkey: Path) -> None:
    runner.invoke(app, install(*locked_args(pubkey)))

    result = runner.invoke(app, install(*locked_args(pubkey)))

    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("unchanged: key SHA256:")
    assert not (home / ".ssh" / "authorized_keys.keyforge-bak").exists()


def test_replacing_keeps_a_0600_backup_and_warns_on_widening(home: Path, pubkey: Path) -> None:
    runner.invoke(app, install(*locked_args(pubkey)))
    target = home / ".ssh" / "authorized_keys"
    before = target.read_bytes()

    result = runner.invoke(app, install("--key", str(pubkey), "--any-source", "--command", RSYNC))

    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("replaced key SHA256:")
    backup = home / ".ssh" / "authorized_keys.keyforge-bak"
    assert backup.read_bytes() == before
    assert mode_of(backup) == 0o600
    assert f"previous file kept as {backup}" in result.stdout
    assert any(
        row.startswith("warning: ") and "allows any source address" in row
        for row in result.stderr.splitlines()
    )


def test_an_existing_files_mode_is_kept(home: Path, pubkey: Path) -> None:
    ssh = home / ".ssh"
    ssh.mkdir(mode=0o700)
    target = ssh / "authorized_keys"
    target.write_text("# mine\n")
    target.chmod(0o644)

    result = runner.invoke(app, install(*locked_args(pubkey)))

    assert result.exit_code == 0, result.output
    assert mode_of(target) == 0o644
    assert target.read_text().startswith("# mine\n")


def test_group_writable_ssh_dir_is_warned_about(home: Path, pubkey: Path) -> None:
    ssh = home / ".ssh"
    ssh.mkdir()
    ssh.chmod(0o775)

    result = runner.invoke(app, install(*locked_args(pubkey)))

    assert result.exit_code == 0, result.output
    assert f"warning: {ssh} is writable by group or others" in result.stderr


def test_host_name_in_from_is_warned_about(home: Path, pubkey: Path) -> None:
    result = runner.invoke(
        app, install("--key", str(pubkey), "--from", "server1.example.com", "--command", RSYNC)
    )

    assert result.exit_code == 0, result.output
    assert "UseDNS no" in result.stderr


def test_a_bad_from_pattern_is_one_line_error(home: Path, pubkey: Path) -> None:
    result = runner.invoke(
        app, install("--key", str(pubkey), "--from", "10.0.0.1/24", "--command", RSYNC)
    )

    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        'keyforge: error: from="10.0.0.1/24": "10.0.0.1/24" has host bits set beyond the /24 '
        "mask; did you mean 10.0.0.0/24?"
    ]


def test_a_missing_home_is_refused_and_no_directory_is_made(tmp_path: Path, pubkey: Path) -> None:
    typo = tmp_path / "home" / "fooo"
    target = typo / ".ssh" / "authorized_keys"

    result = runner.invoke(app, install(*locked_args(pubkey), "-f", str(target)))

    assert result.exit_code == 4
    assert result.stderr.splitlines() == [
        f"keyforge: error: directory {typo} does not exist; check the path (keyforge creates "
        "only .ssh/ itself, with mode 0700)"
    ]
    assert not typo.exists()


def test_a_directory_as_authorized_keys_is_one_line_error(home: Path, pubkey: Path) -> None:
    ssh = home / ".ssh"
    ssh.mkdir(mode=0o700)

    result = runner.invoke(app, install(*locked_args(pubkey), "-f", str(ssh)))

    assert result.exit_code == 4
    assert result.stderr.splitlines() == [f"keyforge: error: cannot read {ssh}: Is a directory"]


@pytest.mark.parametrize("command", ["install", "revoke"])
def test_an_unreadable_authorized_keys_is_one_line_error_and_stays_as_it_was(
    home: Path, pubkey: Path, command: str, keyforge_bound_by_modes: RunKeyforge
) -> None:
    ssh = home / ".ssh"
    ssh.mkdir(mode=0o700)
    target = ssh / "authorized_keys"
    target.write_text("# mine\n")
    target.chmod(0o000)
    args = locked_args(pubkey) if command == "install" else ["--key", str(pubkey)]

    done = keyforge_bound_by_modes(command, *args, home=home)

    assert done.returncode == 4, done.stderr
    assert done.stderr.splitlines() == [f"keyforge: error: cannot read {target}: Permission denied"]
    target.chmod(0o600)
    assert target.read_text() == "# mine\n"
    assert sorted(p.name for p in ssh.iterdir()) == [".authorized_keys.lock", "authorized_keys"]


def test_a_symlinked_authorized_keys_is_refused(home: Path, pubkey: Path, tmp_path: Path) -> None:
    real = tmp_path / "elsewhere"
    real.write_text("# real\n")
    ssh = home / ".ssh"
    ssh.mkdir(mode=0o700)
    (ssh / "authorized_keys").symlink_to(real)

    result = runner.invoke(app, install(*locked_args(pubkey)))

    assert result.exit_code == 4
    assert "is a symbolic link" in result.stderr
    assert real.read_text() == "# real\n"


def test_revoke_removes_the_key_and_keeps_the_rest(home: Path, pubkey: Path) -> None:
    ssh = home / ".ssh"
    ssh.mkdir(mode=0o700)
    (ssh / "authorized_keys").write_text("# mine\n")
    runner.invoke(app, install(*locked_args(pubkey)))

    result = runner.invoke(app, ["revoke", "--key", str(pubkey)])

    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("removed key SHA256:")
    assert "(line 2)" in result.stdout
    assert (ssh / "authorized_keys").read_text() == "# mine\n"


def test_revoke_dry_run_shows_the_removal_and_writes_nothing(home: Path, pubkey: Path) -> None:
    runner.invoke(app, install(*locked_args(pubkey)))
    target = home / ".ssh" / "authorized_keys"
    before = target.read_bytes()

    result = runner.invoke(app, ["revoke", "--key", str(pubkey), "--dry-run"])

    assert result.exit_code == 0, result.output
    assert any(row.startswith("-restrict,") for row in result.stdout.splitlines())
    assert target.read_bytes() == before


def test_revoke_of_an_absent_key_succeeds_quietly(home: Path, pubkey: Path) -> None:
    result = runner.invoke(app, ["revoke", "--key", str(pubkey)])

    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("absent: key SHA256:")
    assert not (home / ".ssh").exists()


@pytest.mark.parametrize("command", ["install", "revoke"])
def test_help_explains_the_command(command: str) -> None:
    result = runner.invoke(app, [command, "--help"])

    assert result.exit_code == 0
    assert "--key" in result.stdout
    assert "--dry-run" in result.stdout
