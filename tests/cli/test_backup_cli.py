"""init, backup, prune, restore and verify as a user types them."""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keyforge import signing
from keyforge.cli import app
from keyforge.errors import ConfigError
from keyforge.ssh import keys


def restore_args(config: str, source: str, to: Path, *more: str) -> list[str]:
    return ["restore", "--config", config, "--source", source, "--to", str(to), *more]


def write_config(tmp_path: Path, src: Path) -> Path:
    path = tmp_path / "keyforge.toml"
    key = tmp_path / "manifest-signing-key"
    keys.write_pair(key, signing.make_key("server1"), force=False)
    path.write_text(
        f'[general]\nhost = "server1"\n[backup]\nsources = ["{src}"]\n'
        f'directory = "{tmp_path}/backups"\nfull_every = 7\nnice = 0\nionice = "none"\n'
        f'signing_key = "{key}"\n'
    )
    return path


def test_init_dry_run_prints_the_commented_defaults_and_writes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "keyforge.toml"
    result = CliRunner().invoke(
        app, ["init", "--config", str(target), "--host", "server1", "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    assert "[backup]" in result.stdout
    assert 'directory = "/mnt/backups/server1"' in result.stdout
    assert "#retention_days = 14" in result.stdout
    tomllib.loads(result.stdout)
    assert not target.exists()


def test_init_writes_a_private_file_and_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    target = tmp_path / "etc/keyforge/keyforge.toml"
    first = CliRunner().invoke(app, ["init", "--config", str(target), "--host", "server1"])
    assert first.exit_code == 0, first.output
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    target.write_text("# mine\n")
    again = CliRunner().invoke(app, ["init", "--config", str(target)])
    assert again.exit_code == 2
    assert (
        again.stderr == f"keyforge: error: {target} already exists; pass --force to overwrite it\n"
    )
    assert target.read_text() == "# mine\n"
    forced = CliRunner().invoke(app, ["init", "--config", str(target), "--force", "--host", "web"])
    assert forced.exit_code == 0
    assert 'host = "web"' in target.read_text()


def test_the_config_path_can_come_from_the_environment(tmp_path: Path) -> None:
    target = tmp_path / "from-env.toml"
    result = CliRunner().invoke(app, ["init"], env={"KEYFORGE_CONFIG": str(target)})
    assert result.exit_code == 0, result.output
    assert target.is_file()


def test_a_bad_config_value_is_one_line_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "keyforge.toml"
    path.write_text('[backup]\nretention_days = "x"\n')
    result = CliRunner().invoke(app, ["backup", "--config", str(path)])
    assert result.exit_code == ConfigError.exit_code
    assert result.stderr == (
        "keyforge: error: keyforge.toml: [backup] retention_days must be an integer, got 'x'\n"
    )


def test_backup_dry_run_shows_the_archive_and_commands_and_writes_nothing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    config = write_config(tmp_path, src)
    result = CliRunner().invoke(app, ["backup", "--config", str(config), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert ": master -> server1-" in result.stdout
    assert "--listed-incremental=" in result.stdout
    assert "| zstd -T0 -3" in result.stdout
    assert not (tmp_path / "backups").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="restoring owners needs root")
def test_backup_restore_verify_prune_from_the_command_line(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d/f").write_text("hello\n")
    config = str(write_config(tmp_path, src))
    runner = CliRunner()
    made = runner.invoke(app, ["backup", "--config", config, "--verbose"])
    assert made.exit_code == 0, made.output
    assert made.stdout.startswith("backup server1 ")
    assert "1 archives (1 master, 0 incremental)" in made.stdout
    assert len(made.stdout.splitlines()) == 1  # one line when not in a terminal

    dry = runner.invoke(app, restore_args(config, str(src), tmp_path / "out", "--dry-run"))
    assert dry.exit_code == 0, dry.output
    assert dry.stdout.startswith("would apply server1-")
    assert not (tmp_path / "out").exists()

    done = runner.invoke(app, restore_args(config, str(src), tmp_path / "out"))
    assert done.exit_code == 0, done.output
    assert (tmp_path / "out/d/f").read_text() == "hello\n"

    checked = runner.invoke(app, ["verify", "--config", config])
    assert checked.exit_code == 0, checked.output
    assert "verify ok: 1 archive(s)" in checked.stdout

    pruned = runner.invoke(app, ["prune", "--config", config, "--dry-run"])
    assert pruned.exit_code == 0
    assert pruned.stdout == "nothing to prune\n"


def test_restore_of_an_unknown_source_names_the_configured_ones(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    config = str(write_config(tmp_path, src))
    result = CliRunner().invoke(app, restore_args(config, "/etc", tmp_path / "out"))
    assert result.exit_code == 2
    assert result.stderr == (
        f"keyforge: error: --source /etc is not a configured source (sources: {src})\n"
    )


def test_restore_at_a_malformed_date_is_a_usage_error(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    config = str(write_config(tmp_path, src))
    result = CliRunner().invoke(
        app, restore_args(config, str(src), tmp_path / "o", "--at", "yesterday")
    )
    assert result.exit_code == 2
    assert "--at must be a day (2026-11-28), a run as 'keyforge list' shows it" in result.stderr
    assert "got 'yesterday'" in result.stderr


@pytest.mark.parametrize("command", ["init", "backup", "prune", "restore", "verify"])
def test_every_backup_command_explains_itself(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "--config" in result.stdout
    assert len(result.stdout.splitlines()) > 5
