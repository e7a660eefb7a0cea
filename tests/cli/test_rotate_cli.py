"""`keyforge install --like` and `keyforge rotate` through the command line (no network)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keyforge.cli import app
from keyforge.ssh import keys

runner = CliRunner()
OPTIONS = 'restrict,from="203.0.113.7",command="rsync --server -logDtprze.iLsfxCIvu . srv/"'


def pair(tmp_path: Path, name: str) -> keys.KeyPair:
    made = keys.generate("ed25519", comment=f"foo@{name}")
    keys.write_pair(tmp_path / name, made, force=False)
    return made


@pytest.fixture
def authorized(tmp_path: Path) -> tuple[Path, keys.KeyPair, keys.KeyPair]:
    ssh = tmp_path / ".ssh"
    ssh.mkdir(mode=0o700)
    old, new = pair(tmp_path, "old"), pair(tmp_path, "new")
    path = ssh / "authorized_keys"
    path.write_text(f"# admin keys above\n{OPTIONS} {old.public_line}\n# end\n")
    path.chmod(0o600)
    return path, old, new


def test_install_like_puts_the_new_key_after_the_old_with_its_options(
    tmp_path: Path, authorized: tuple[Path, keys.KeyPair, keys.KeyPair]
) -> None:
    path, old, new = authorized
    args = ["install", "--key", str(tmp_path / "new.pub"), "--like", str(tmp_path / "old.pub")]

    result = runner.invoke(app, [*args, "--authorized-keys", str(path)])

    assert result.exit_code == 0, result.output
    assert f"to {path} (line 3)" in result.stdout.splitlines()[0]
    assert path.read_text().splitlines() == [
        "# admin keys above",
        f"{OPTIONS} {old.public_line}",
        f"{OPTIONS} {new.public_line}",
        "# end",
    ]


def test_install_like_a_fingerprint_reads_the_new_key_from_stdin_and_is_idempotent(
    authorized: tuple[Path, keys.KeyPair, keys.KeyPair],
) -> None:
    path, old, new = authorized
    fingerprint = keys.parse_public_line(old.public_line).sha256
    args = ["install", "--key", "-", "--like", fingerprint, "--authorized-keys", str(path)]

    first = runner.invoke(app, args, input=new.public_line + "\n")
    after_first = path.read_text()
    second = runner.invoke(app, args, input=new.public_line + "\n")

    assert first.exit_code == 0, first.output
    assert second.exit_code == 0, second.output
    assert second.stdout.startswith("unchanged:")
    assert path.read_text() == after_first


def test_install_like_dry_run_prints_the_diff_and_writes_nothing(
    tmp_path: Path, authorized: tuple[Path, keys.KeyPair, keys.KeyPair]
) -> None:
    path, _, new = authorized
    before = path.read_text()
    args = ["install", "--key", str(tmp_path / "new.pub"), "--like", str(tmp_path / "old.pub")]

    result = runner.invoke(app, [*args, "--authorized-keys", str(path), "--dry-run"])

    assert result.exit_code == 0, result.output
    assert f"+{OPTIONS} {new.public_line}" in result.stdout.splitlines()
    assert "nothing written" in result.stdout
    assert path.read_text() == before


@pytest.mark.parametrize(
    "extra",
    [["--from", "192.0.2.1"], ["--command", "true"], ["--any-source"], ["--no-restrict"]],
)
def test_install_like_refuses_options_that_would_shape_the_line(
    tmp_path: Path, authorized: tuple[Path, keys.KeyPair, keys.KeyPair], extra: list[str]
) -> None:
    path, _, _ = authorized
    before = path.read_text()
    args = ["install", "--key", str(tmp_path / "new.pub"), "--like", str(tmp_path / "old.pub")]

    result = runner.invoke(app, [*args, *extra, "--authorized-keys", str(path)])

    assert result.exit_code == 2
    assert f"{extra[0]} cannot be given with it" in result.stderr
    assert path.read_text() == before


def test_install_like_an_absent_old_key_is_a_one_line_error(
    tmp_path: Path, authorized: tuple[Path, keys.KeyPair, keys.KeyPair]
) -> None:
    path, _, _ = authorized
    stranger = pair(tmp_path, "stranger")
    args = ["install", "--key", str(tmp_path / "new.pub"), "--like", str(tmp_path / "stranger.pub")]

    result = runner.invoke(app, [*args, "--authorized-keys", str(path)])

    assert result.exit_code == 1
    fingerprint = keys.parse_public_line(stranger.public_line).sha256
    assert result.stderr.splitlines() == [
        f"keyforge: error: the old key {fingerprint} is not in {path}, so there is no line to "
        "copy the options from; install the new key with its own options instead"
    ]


# --- rotate ------------------------------------------------------------------------------------


def _config(tmp_path: Path) -> Path:
    backups = tmp_path / "backups"
    backups.mkdir()
    (backups / "server1.20260101.manifest.json").write_text(
        json.dumps({"format": 1, "host": "server1", "archives": []})
    )
    (tmp_path / "known_hosts").write_text("192.0.2.10 ssh-ed25519 AAAA\n")
    pair(tmp_path, "backupkey")
    path = tmp_path / "keyforge.toml"
    path.write_text(
        f"""
[backup]
directory = "{backups}"
[sync]
log = "{tmp_path}/sync.log"
[[targets]]
name = "pi"
host = "192.0.2.10"
user = "foo"
key = "{tmp_path}/backupkey"
remote_path = "srvbackups/"
known_hosts = "{tmp_path}/known_hosts"
"""
    )
    return path


def test_rotate_dry_run_prints_the_six_steps_and_changes_nothing(tmp_path: Path) -> None:
    config = _config(tmp_path)
    (tmp_path / "admin").write_text("not read in a dry run\n")
    before = sorted(p.name for p in tmp_path.iterdir())

    result = runner.invoke(
        app,
        ["rotate", "--config", str(config), "--admin", "root", "--admin-key",
         str(tmp_path / "admin"), "--dry-run"],
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert (
        lines[0]
        == f"target pi: rotating {tmp_path}/backupkey; the receiving host via root@192.0.2.10"
    )
    assert [line[:2] for line in lines[1:7]] == ["1.", "2.", "3.", "4.", "5.", "6."]
    assert lines[-1] == "dry run: nothing changed; connected nowhere"
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_rotate_dry_run_after_a_stopped_run_says_where_it_continues(tmp_path: Path) -> None:
    config = _config(tmp_path)
    pair(tmp_path, "backupkey.next")

    result = runner.invoke(
        app, ["rotate", "--config", str(config), "--authorized-keys", "/x", "--dry-run"]
    )

    assert result.exit_code == 0, result.output
    assert "continuing an earlier run from step 2" in result.stdout


def test_rotate_needs_to_know_how_to_reach_the_receiving_host(tmp_path: Path) -> None:
    result = runner.invoke(app, ["rotate", "--config", str(_config(tmp_path))])

    assert result.exit_code == 2
    assert "--admin USER@HOST" in result.stderr
    assert not (tmp_path / "backupkey.next").exists()


def test_rotate_refuses_an_unknown_target(tmp_path: Path) -> None:
    config = _config(tmp_path)
    result = runner.invoke(
        app, ["rotate", "--config", str(config), "--target", "nas", "--authorized-keys", "/x"]
    )
    assert result.exit_code == 2
    assert "no target called 'nas'" in result.stderr


def test_a_gated_key_rotates_alike(tmp_path: Path) -> None:
    ssh = tmp_path / ".ssh"
    ssh.mkdir(mode=0o700)
    (tmp_path / "srv").mkdir()
    path = ssh / "authorized_keys"
    pair(tmp_path, "old")
    pair(tmp_path, "new")
    gated = runner.invoke(
        app,
        ["install", "--key", str(tmp_path / "old.pub"), "--from", "192.0.2.1",
         "--gate", str(tmp_path / "srv"), "--authorized-keys", str(path)],
    )  # fmt: skip
    assert gated.exit_code == 0, gated.output

    result = runner.invoke(
        app,
        ["install", "--key", str(tmp_path / "new.pub"), "--like", str(tmp_path / "old.pub"),
         "--authorized-keys", str(path)],
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    old_line, new_line = path.read_text().splitlines()
    assert " gate --dir " in old_line
    assert new_line.split(" ssh-ed25519 ")[0] == old_line.split(" ssh-ed25519 ")[0]
