"""Several configs on one host: each config's jobs are a set of their own, named for it."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_schedule import cron_d_problems
from typer.testing import CliRunner

from keyforge import schedule
from keyforge.cli import app
from keyforge.config import Config, parse
from keyforge.errors import UsageError

KEYFORGE = ["/usr/local/bin/keyforge"]
MAIN = Path("/etc/keyforge/keyforge.toml")
DRIVE = Path("/etc/keyforge/drive.toml")


def _sender() -> Config:
    return parse({"backup": {"directory": "/mnt/backups/server1"}})


def _receiver() -> Config:
    """A receiving host's second config: copy the synced copy to a drive, snapshot it."""
    return parse(
        {
            "sync": {"source": "/home/foo/srvbackups"},
            "targets": [{"name": "external", "path": "/mnt/external"}],
            "snapshot": {"source": "/home/foo/srvbackups"},
            "schedule": {"sync_at": "04:00"},
        }
    )


def _install(kind: str, config: Config, path: Path, dest: Path) -> list[schedule.Change]:
    jobs = schedule.jobs_for(config, path, KEYFORGE)
    changes = schedule.plan_install(schedule.rendered_files(kind, config.schedule, jobs, dest))
    schedule.check_owner(changes, jobs)
    schedule.apply(changes)
    return changes


@pytest.mark.parametrize(
    ("path", "explicit", "name"),
    [
        (MAIN, "", "keyforge"),
        (DRIVE, "", "keyforge-drive"),
        (Path("/etc/keyforge/keyforge-drive.toml"), "", "keyforge-drive"),
        (Path("/root/server1.toml"), "", "keyforge-server1"),
        (Path("/etc/a.b.toml"), "pi", "keyforge-pi"),
        (MAIN, "keyforge", "keyforge"),
    ],
)
def test_each_config_names_its_own_set(path: Path, explicit: str, name: str) -> None:
    assert schedule.set_name(path, explicit) == name
    assert cron_d_problems(name, "") == ["the last line lacks its newline"]


def test_a_config_name_cron_would_skip_asks_for_a_schedule_name() -> None:
    with pytest.raises(UsageError, match=r"set \[schedule\] name"):
        schedule.set_name(Path("/etc/keyforge/my.drive.toml"))


def test_a_second_config_installs_beside_the_first_and_leaves_it_as_it_was(
    tmp_path: Path,
) -> None:
    _install(schedule.CRON, _sender(), MAIN, tmp_path)
    first = (tmp_path / "keyforge").read_text()
    [change] = _install(schedule.CRON, _receiver(), DRIVE, tmp_path)
    assert change.path == tmp_path / "keyforge-drive"
    assert change.action == "created"
    assert (tmp_path / "keyforge").read_text() == first
    drive = change.new
    assert cron_d_problems("keyforge-drive", drive) == []
    assert "--config /etc/keyforge/drive.toml" in drive
    assert "--config /etc/keyforge/keyforge.toml" not in drive
    # and the first config's install again changes nothing of either
    assert [c.action for c in _install(schedule.CRON, _sender(), MAIN, tmp_path)] == ["unchanged"]
    assert (tmp_path / "keyforge-drive").read_text() == drive


def test_systemd_units_of_a_second_config_carry_its_name_throughout(tmp_path: Path) -> None:
    config = parse({"backup": {"directory": "/mnt/b"}})
    jobs = schedule.jobs_for(config, DRIVE, KEYFORGE)
    units = schedule.render_systemd(config.schedule, jobs)
    assert sorted(units) == [
        "keyforge-drive-backup.service",
        "keyforge-drive-backup.timer",
        "keyforge-drive-notify@.service",
        "keyforge-drive-sync.service",
        "keyforge-drive-sync.timer",
    ]
    # a failure reaches the monitors of this set's own config
    assert "OnFailure=keyforge-drive-notify@%n.service\n" in units["keyforge-drive-sync.service"]
    assert "--config /etc/keyforge/drive.toml" in units["keyforge-drive-notify@.service"]
    assert (
        "After=network-online.target keyforge-drive-backup.service\n"
        in (units["keyforge-drive-sync.service"])
    )
    assert jobs.timers == ["keyforge-drive-backup.timer", "keyforge-drive-sync.timer"]
    _install(schedule.SYSTEMD, _sender(), MAIN, tmp_path)
    _install(schedule.SYSTEMD, config, DRIVE, tmp_path)
    # four job units and a notify template per set, side by side
    assert len(list(tmp_path.iterdir())) == 10


def test_a_file_of_the_same_name_from_another_config_is_never_overwritten(
    tmp_path: Path,
) -> None:
    _install(schedule.CRON, _sender(), Path("/etc/keyforge/a/keyforge.toml"), tmp_path)
    before = (tmp_path / "keyforge").read_text()
    with pytest.raises(UsageError, match=r"holds the jobs of /etc/keyforge/a/keyforge.toml"):
        _install(schedule.CRON, _sender(), MAIN, tmp_path)
    assert (tmp_path / "keyforge").read_text() == before


def test_list_shows_every_set_with_its_config_and_job_times(tmp_path: Path) -> None:
    _install(schedule.CRON, _sender(), MAIN, tmp_path)
    _install(schedule.SYSTEMD, _receiver(), DRIVE, tmp_path)
    (tmp_path / "other-package").write_text("0 0 * * * root /bin/true\n")
    lines = schedule.list_lines(schedule.installed_sets(tmp_path))
    assert lines == [
        f"keyforge\tcron\t{MAIN}\tbackup 01:15, sync 03:30\t{tmp_path / 'keyforge'}",
        f"keyforge-drive\tsystemd\t{DRIVE}\tfreshness hourly, snapshot 06:00, sync 04:00"
        f"\t{tmp_path}",
    ]


def test_a_target_with_its_own_source_needs_that_source_mounted() -> None:
    config = parse(
        {
            "backup": {"directory": "/mnt/backups/pi"},
            "targets": [{"name": "drive", "path": "/mnt/external", "source": "/srv/copies"}],
        }
    )
    assert schedule.jobs_for(config, MAIN, KEYFORGE).mounts == ("/mnt/backups/pi", "/srv/copies")


runner = CliRunner()


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_schedule_list_on_the_command_line_shows_both_configs(tmp_path: Path) -> None:
    dest = tmp_path / "cron.d"
    dest.mkdir()
    main = _write(tmp_path / "keyforge.toml", '[backup]\ndirectory = "/mnt/b"\n')
    drive = _write(tmp_path / "drive.toml", '[snapshot]\nsource = "/home/foo/copy"\n')
    for config in (main, drive):
        argv = ["schedule", "--cron", "--install", "--dest", str(dest), "-c", str(config)]
        assert runner.invoke(app, argv).exit_code == 0
    result = runner.invoke(app, ["schedule", "--list", "--dest", str(dest)])
    assert result.exit_code == 0, result.output
    assert [line.split("\t")[:3] for line in result.output.splitlines()] == [
        ["keyforge", "cron", str(main)],
        ["keyforge-drive", "cron", str(drive)],
    ]
    refused = runner.invoke(app, ["schedule", "--list", "--install"])
    assert refused.exit_code == 2
