"""keyforge snapshot and the receiving host's schedule through the command line."""

from __future__ import annotations

import pwd
from pathlib import Path

from typer.testing import CliRunner

from keyforge.cli import app

runner = CliRunner()


def _receiver_config(tmp_path: Path, schedule: str = "") -> Path:
    path = tmp_path / "keyforge.toml"
    path.write_text(
        f'[snapshot]\nsource = "{tmp_path}/copy"\ndirectory = "{tmp_path}/snaps"\n{schedule}'
    )
    return path


def test_schedule_installs_only_the_snapshot_timer_on_a_receiving_host(tmp_path: Path) -> None:
    config = _receiver_config(tmp_path)
    dest = tmp_path / "units"
    dest.mkdir()
    argv = ["schedule", "--systemd", "--install", "--dest", str(dest), "--config", str(config)]
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in dest.iterdir()) == [
        "keyforge-freshness.service",
        "keyforge-freshness.timer",
        "keyforge-notify@.service",
        "keyforge-snapshot.service",
        "keyforge-snapshot.timer",
    ]
    assert result.output.endswith(
        "next: systemctl daemon-reload && systemctl enable --now keyforge-snapshot.timer "
        "keyforge-freshness.timer\n"
    )


def test_schedule_refuses_to_run_the_snapshot_as_the_copys_owner(tmp_path: Path) -> None:
    (tmp_path / "copy").mkdir()
    me = pwd.getpwuid((tmp_path / "copy").stat().st_uid).pw_name
    config = _receiver_config(tmp_path, f'[schedule]\nuser = "{me}"\n')
    result = runner.invoke(app, ["schedule", "--cron", "--config", str(config)])
    assert result.exit_code == 2
    assert f"[schedule] user is {me}, the owner of the synced copy" in result.output


def test_snapshot_list_and_dry_run_contradict(tmp_path: Path) -> None:
    config = _receiver_config(tmp_path)
    result = runner.invoke(app, ["snapshot", "--list", "--dry-run", "--config", str(config)])
    assert result.exit_code == 2
    assert "--list and --dry-run contradict each other" in result.output


def test_snapshot_list_before_any_snapshot_says_so(tmp_path: Path) -> None:
    result = runner.invoke(app, ["snapshot", "--list", "--config", str(_receiver_config(tmp_path))])
    assert result.exit_code == 4
    assert "does not exist; no snapshot taken yet" in result.output
