"""The monthly drill in keyforge schedule: a cron line and systemd units on either host."""

from __future__ import annotations

from pathlib import Path

from keyforge import schedule
from keyforge.config import parse

KEYFORGE = ["/usr/local/bin/keyforge"]
CONFIG_PATH = Path("/etc/keyforge/keyforge.toml")
COMMAND = "/usr/local/bin/keyforge drill --config /etc/keyforge/keyforge.toml"


def _sender(**drill: object) -> object:
    return parse({"backup": {"directory": "/mnt/backups/server1"}, "drill": dict(drill)})


def _receiver(**drill: object) -> object:
    return parse(
        {
            "snapshot": {"source": "/home/foo/srvbackups", "directory": "/var/backups/snaps"},
            "drill": dict(drill),
        }
    )


def _cron_jobs(config: object) -> list[str]:
    jobs = schedule.jobs_for(config, CONFIG_PATH, KEYFORGE)  # type: ignore[arg-type]
    text = schedule.render_cron(config.schedule, jobs, config.drill)  # type: ignore[attr-defined]
    return [line for line in text.splitlines() if line[:1].isdigit()]


def test_the_sending_server_runs_the_drill_monthly_beside_backup_and_sync() -> None:
    assert _cron_jobs(_sender(day=3, at="05:10"))[-1] == f"10 5 3 * * root {COMMAND}"
    assert len(_cron_jobs(_sender())) == 3
    assert _cron_jobs(_sender())[-1] == f"45 4 1 * * root {COMMAND}"


def test_the_receiving_host_runs_the_drill_beside_the_snapshot() -> None:
    lines = _cron_jobs(_receiver())
    # the hourly freshness check ('status') runs there too
    assert [line.split()[7] for line in lines] == ["snapshot", "status", "drill"]


def test_no_drill_section_no_drill_job() -> None:
    config = parse({"backup": {"directory": "/mnt/backups/server1"}})
    jobs = schedule.jobs_for(config, CONFIG_PATH, KEYFORGE)
    assert jobs.drill is None
    assert "drill" not in schedule.render_cron(config.schedule, jobs).split("# m h dom")[1]
    units = schedule.render_systemd(config.schedule, jobs)
    assert sorted(units) == sorted((*schedule.UNIT_NAMES, schedule.NOTIFY_UNIT_NAME))


def test_the_drill_units_read_the_copy_on_the_receiving_host_once_a_month() -> None:
    config = _receiver(day=15, at="02:30")
    jobs = schedule.jobs_for(config, CONFIG_PATH, KEYFORGE)  # type: ignore[arg-type]
    assert jobs.timers == [
        "keyforge-snapshot.timer",
        "keyforge-freshness.timer",
        "keyforge-drill.timer",
    ]
    units = schedule.render_systemd(config.schedule, jobs, config.drill)  # type: ignore[attr-defined]
    assert sorted(units) == sorted(
        (
            *schedule.SNAPSHOT_UNIT_NAMES,
            *schedule.FRESHNESS_UNIT_NAMES,
            *schedule.DRILL_UNIT_NAMES,
            schedule.NOTIFY_UNIT_NAME,
        )
    )
    service = units["keyforge-drill.service"]
    assert f"\nExecStart={COMMAND}\n" in service
    assert "\nRequiresMountsFor=/home/foo/srvbackups\n" in service
    # hardened like every job, and its failure reaches the monitors
    assert "\nPrivateTmp=yes\n" in service
    assert "\nProtectSystem=strict\n" in service
    assert "\nOnFailure=keyforge-notify@%n.service\n" in service
    timer = units["keyforge-drill.timer"]
    assert "\nOnCalendar=*-*-15 02:30:00\n" in timer
    assert "\nPersistent=true\n" in timer


def test_a_sending_servers_drill_needs_the_backup_disk_mounted() -> None:
    config = _sender()
    jobs = schedule.jobs_for(config, CONFIG_PATH, KEYFORGE)  # type: ignore[arg-type]
    units = schedule.render_systemd(config.schedule, jobs, config.drill)  # type: ignore[attr-defined]
    assert "\nRequiresMountsFor=/mnt/backups/server1\n" in units["keyforge-drill.service"]
    assert "\nOnCalendar=*-*-01 04:45:00\n" in units["keyforge-drill.timer"]
