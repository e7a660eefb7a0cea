"""sync, schedule, status and check through the command line (no network)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from keyforge.cli import app

runner = CliRunner()


def _config(tmp_path: Path, *, manifest: bool = True, extra: str = "") -> Path:
    backups = tmp_path / "backups"
    backups.mkdir()
    if manifest:
        (backups / "server1.20260101.manifest.json").write_text(
            json.dumps({"format": 1, "host": "server1", "archives": []})
        )
    (tmp_path / "known_hosts").write_text("[raspberrypi]:22 ssh-ed25519 AAAA\n")
    (tmp_path / "key").write_text("secret\n")
    path = tmp_path / "keyforge.toml"
    path.write_text(
        f"""
[general]
host = "server1"
[backup]
directory = "{backups}"
sources = ["/etc"]
[sync]
log = "{tmp_path}/sync.log"
[[targets]]
name = "offsite"
host = "raspberrypi"
user = "foo"
key = "{tmp_path}/key"
remote_path = "srvbackups/"
known_hosts = "{tmp_path}/known_hosts"
{extra}"""
    )
    return path


def test_sync_dry_run_prints_the_command_and_writes_no_log(tmp_path: Path) -> None:
    result = runner.invoke(app, ["sync", "--dry-run", "--config", str(_config(tmp_path))])
    assert result.exit_code == 0, result.output
    assert "rsync -az --delete --partial" in result.output
    assert "foo@raspberrypi:srvbackups/" in result.output
    assert not (tmp_path / "sync.log").exists()


def test_sync_dry_run_still_refuses_a_source_without_manifest(tmp_path: Path) -> None:
    path = _config(tmp_path, manifest=False)
    result = runner.invoke(app, ["sync", "--dry-run", "--config", str(path)])
    assert result.exit_code == 1
    assert "keyforge: error: refusing to sync" in result.output


def test_sync_unknown_target_is_a_usage_error(tmp_path: Path) -> None:
    path = _config(tmp_path)
    result = runner.invoke(app, ["sync", "--dry-run", "--target", "nope", "--config", str(path)])
    assert result.exit_code == 2
    assert "no target called 'nope' (configured: offsite)" in result.output


def test_print_server_command_shows_the_rsync_server_line_before_any_backup(
    tmp_path: Path,
) -> None:
    # no manifest yet and an unresolvable host: the line is learnt without sending or connecting
    path = _config(tmp_path, manifest=False)
    result = runner.invoke(app, ["sync", "--print-server-command", "--config", str(path)])
    assert result.exit_code == 0, result.output
    header, command, hint = result.stdout.splitlines()
    assert header == "# offsite (foo@raspberrypi:srvbackups/) will be asked to run:"
    assert command.startswith("rsync --server -")
    assert command.endswith(" . srvbackups/")
    # the receiving side's guards travel in the line the key is locked to
    for option in ("--delete", "--delay-updates", "--timeout=300", "--max-delete=1000"):
        assert option in command.split()
    assert " --partial-dir .rsync-partial " in command
    assert hint.startswith("# lock the key to it there: keyforge install --key key.pub --from ")
    assert not (tmp_path / "sync.log").exists()


def test_print_server_command_of_local_targets_only_is_a_usage_error(tmp_path: Path) -> None:
    backups = tmp_path / "b"
    backups.mkdir()
    path = tmp_path / "k.toml"
    path.write_text(f'[backup]\ndirectory = "{backups}"\n[[targets]]\npath = "/mnt/x"\n')
    result = runner.invoke(app, ["sync", "--print-server-command", "--config", str(path)])
    assert result.exit_code == 2
    assert "keyforge: error: no remote [[targets]]" in result.output


def test_schedule_prints_the_cron_file_without_install(tmp_path: Path) -> None:
    result = runner.invoke(app, ["schedule", "--cron", "--config", str(_config(tmp_path))])
    assert result.exit_code == 0, result.output
    assert "MAILTO=root" in result.output
    assert f"sync --config {tmp_path}/keyforge.toml --wait" in result.output


def test_schedule_install_is_idempotent_and_says_what_changed(tmp_path: Path) -> None:
    config = _config(tmp_path)
    dest = tmp_path / "units"
    dest.mkdir()
    argv = ["schedule", "--systemd", "--install", "--dest", str(dest), "--config", str(config)]
    first = runner.invoke(app, argv)
    assert first.exit_code == 0, first.output
    assert first.output.count("created: ") == 5  # two jobs, two units each, and the notifier
    assert "systemctl daemon-reload" in first.output
    second = runner.invoke(app, argv)
    assert second.output.count("unchanged: ") == 5
    assert "systemctl" not in second.output


def test_schedule_dry_run_install_shows_a_diff_and_writes_nothing(tmp_path: Path) -> None:
    config = _config(tmp_path)
    argv = ["schedule", "--cron", "--install", "--dry-run", "--dest", str(tmp_path)]
    result = runner.invoke(app, [*argv, "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "+++ " in result.output
    assert "would be created: " in result.output
    assert not (tmp_path / "keyforge").exists()


def test_schedule_dry_run_install_refuses_a_missing_directory_as_the_install_would(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path)
    argv = ["schedule", "--cron", "--install", "--dry-run", "--dest", str(tmp_path / "no-cron")]
    result = runner.invoke(app, [*argv, "--config", str(config)])
    assert result.exit_code == 2
    assert "does not exist: is this scheduler installed here?" in result.output
    assert "would be created" not in result.output


def test_schedule_rejects_both_kinds(tmp_path: Path) -> None:
    result = runner.invoke(app, ["schedule", "--cron", "--systemd", "-c", str(_config(tmp_path))])
    assert result.exit_code == 2
    assert "contradict" in result.output


def test_status_fails_for_monitoring_when_nothing_ever_synced(tmp_path: Path) -> None:
    result = runner.invoke(app, ["status", "--json", "--config", str(_config(tmp_path))])
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    assert document["ok"] is False
    assert "not ok: backup, sync offsite" in result.output


def test_check_without_remote_targets_says_so(tmp_path: Path) -> None:
    backups = tmp_path / "b"
    backups.mkdir()
    path = tmp_path / "k.toml"
    path.write_text(f'[backup]\ndirectory = "{backups}"\n[[targets]]\npath = "/mnt/x"\n')
    result = runner.invoke(app, ["check", "--config", str(path)])
    assert result.exit_code == 1
    assert "no remote [[targets]] to check" in result.output
