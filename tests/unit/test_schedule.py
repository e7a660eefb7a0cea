"""keyforge schedule: the rendered cron.d file and systemd units, and idempotent installs."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from keyforge import schedule
from keyforge.config import Config, parse
from keyforge.errors import UsageError

KEYFORGE = ["/usr/local/bin/keyforge"]
CONFIG_PATH = Path("/etc/keyforge/keyforge.toml")

# --- a strict reader of /etc/cron.d files (Debian's cron has no syntax checker) --------------

_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\s*=")


def _field_ok(field: str, low: int, high: int) -> bool:
    for part in field.split(","):
        base, _, step = part.partition("/")
        if step and not (step.isdigit() and int(step) > 0):
            return False
        if base == "*":
            continue
        first, _, last = base.partition("-")
        numbers = [first, last] if last else [first]
        if not all(n.isdigit() and low <= int(n) <= high for n in numbers):
            return False
    return True


def cron_d_problems(name: str, text: str) -> list[str]:
    """Everything cron(8) would reject or misread in a /etc/cron.d file."""
    problems = []
    if not re.match(r"^[A-Za-z0-9_-]+$", name):
        problems.append(f"cron ignores the file name {name!r}")
    if not text.endswith("\n"):
        problems.append("the last line lacks its newline")
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if _ENV_RE.match(stripped):
            continue
        fields = stripped.split(None, 6)
        if len(fields) < 7:
            problems.append(f"line {number}: needs 5 time fields, a user and a command")
            continue
        for field, (low, high) in zip(fields[:5], _RANGES, strict=True):
            if not _field_ok(field, low, high):
                problems.append(f"line {number}: bad time field {field!r}")
        if not re.match(r"^[a-z_][a-z0-9_-]*$", fields[5]):
            problems.append(f"line {number}: bad user {fields[5]!r}")
        if re.search(r"(?<!\\)%", fields[6]):
            problems.append(f"line {number}: unescaped % (cron makes it a newline)")
        if not fields[6].startswith("/"):
            problems.append(f"line {number}: the command is not an absolute path")
    return problems


def test_the_strict_cron_reader_catches_what_cron_rejects() -> None:
    assert cron_d_problems("key.forge", "x") == [
        "cron ignores the file name 'key.forge'",
        "the last line lacks its newline",
        "line 1: needs 5 time fields, a user and a command",
    ]
    bad = "61 1 * * * root /bin/true\n0 0 * * * Root /bin/true\n0 0 * * * root /bin/date +%s\n"
    assert len(cron_d_problems("k", bad)) == 3
    assert cron_d_problems("k", "0 0 * * * root keyforge backup\n") == [
        "line 1: the command is not an absolute path"
    ]


# --- rendering -------------------------------------------------------------------------------


def _config(**schedule_values: object) -> Config:
    return parse(
        {"backup": {"directory": "/mnt/backups/server1"}, "schedule": dict(schedule_values)}
    )


def _jobs(config: Config, keyforge: list[str] = KEYFORGE) -> schedule.Jobs:
    return schedule.jobs_for(config, CONFIG_PATH, keyforge)


def test_cron_file_passes_the_strict_syntax_check() -> None:
    config = _config()
    text = schedule.render_cron(config.schedule, _jobs(config))
    assert cron_d_problems(schedule.CRON_FILE_NAME, text) == []


def test_cron_file_sets_path_and_mailto_and_runs_backup_daily_then_sync_at_night() -> None:
    config = _config(backup_at="01:15", sync_at="03:30", mailto="ops@example.org")
    text = schedule.render_cron(config.schedule, _jobs(config))
    assert "\nPATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n" in text
    assert "\nMAILTO=ops@example.org\n" in text
    jobs = [line for line in text.splitlines() if line[:1].isdigit()]
    assert jobs == [
        "15 1 * * * root /usr/local/bin/keyforge backup --config /etc/keyforge/keyforge.toml",
        "30 3 * * * root /usr/local/bin/keyforge sync --config /etc/keyforge/keyforge.toml --wait",
    ]


def test_empty_mailto_is_written_as_an_empty_string() -> None:
    config = _config(mailto="")
    assert '\nMAILTO=""\n' in schedule.render_cron(config.schedule, _jobs(config))


def test_cron_command_quotes_for_the_shell_and_escapes_percent() -> None:
    config = _config(name="odd")  # cron cannot name a file after 100%
    jobs = schedule.jobs_for(config, Path("/etc/key forge/100%.toml"), KEYFORGE)
    text = schedule.render_cron(config.schedule, jobs)
    assert cron_d_problems("keyforge", text) == []
    line = next(line for line in text.splitlines() if line.startswith("15 1 "))
    command = line.split(None, 6)[6].replace("\\%", "%")
    assert shlex.split(command)[-1] == "/etc/key forge/100%.toml"


def test_systemd_units_carry_persistent_random_delay_nice_and_idle_io() -> None:
    config = _config(randomized_delay=20)
    units = schedule.render_systemd(config.schedule, _jobs(config))
    assert sorted(units) == sorted([*schedule.UNIT_NAMES, schedule.NOTIFY_UNIT_NAME])
    for name in ("keyforge-backup.timer", "keyforge-sync.timer"):
        assert "\nPersistent=true\n" in units[name]
        assert "\nRandomizedDelaySec=20min\n" in units[name]
        assert "\nWantedBy=timers.target\n" in units[name]
    assert "\nOnCalendar=*-*-* 01:15:00\n" in units["keyforge-backup.timer"]
    assert "\nOnCalendar=*-*-* 03:30:00\n" in units["keyforge-sync.timer"]
    for name in ("keyforge-backup.service", "keyforge-sync.service"):
        assert "\nNice=10\n" in units[name]
        assert "\nIOSchedulingClass=idle\n" in units[name]
        assert "\nType=oneshot\n" in units[name]
        assert "\nRequiresMountsFor=/mnt/backups/server1\n" in units[name]
    assert "After=network-online.target keyforge-backup.service" in units["keyforge-sync.service"]
    assert (
        "\nExecStart=/usr/local/bin/keyforge sync --config /etc/keyforge/keyforge.toml --wait\n"
        in units["keyforge-sync.service"]
    )


@pytest.mark.parametrize(
    ("arg", "quoted"),
    [
        ("/usr/bin/keyforge", "/usr/bin/keyforge"),
        ("/etc/a b.toml", '"/etc/a b.toml"'),
        ("/etc/100%.toml", "/etc/100%%.toml"),
        ("/etc/$HOME.toml", '"/etc/$$HOME.toml"'),
        ('/etc/say "hi".toml', '"/etc/say \\"hi\\".toml"'),
    ],
)
def test_systemd_quote_escapes_its_specifiers_and_variables(arg: str, quoted: str) -> None:
    assert schedule.systemd_quote(arg) == quoted


def test_equal_times_are_refused() -> None:
    config = _config(backup_at="02:00", sync_at="02:00")
    with pytest.raises(UsageError, match="sync_at \\(02:00\\) equals backup_at"):
        schedule.render_cron(config.schedule, _jobs(config))


def test_relative_config_path_is_refused() -> None:
    with pytest.raises(UsageError, match="must be absolute"):
        schedule.jobs_for(_config(), Path("keyforge.toml"), KEYFORGE)


def test_sync_source_on_another_disk_is_required_mounted_too() -> None:
    config = parse(
        {"backup": {"directory": "/mnt/backups/pi"}, "sync": {"source": "/home/foo/srvbackups"}}
    )
    assert _jobs(config).mounts == ("/mnt/backups/pi", "/home/foo/srvbackups")


def test_default_kind_follows_the_systemd_runtime_directory(tmp_path: Path) -> None:
    assert schedule.default_kind(tmp_path) == schedule.SYSTEMD
    assert schedule.default_kind(tmp_path / "absent") == schedule.CRON


# --- installing ------------------------------------------------------------------------------


def test_install_creates_then_leaves_unchanged_then_updates(tmp_path: Path) -> None:
    config = _config()
    files = schedule.rendered_files(schedule.CRON, config.schedule, _jobs(config), tmp_path)
    first = schedule.plan_install(files)
    assert [c.action for c in first] == ["created"]
    schedule.apply(first)
    written = tmp_path / "keyforge"
    assert written.stat().st_mode & 0o777 == 0o644
    assert [c.action for c in schedule.plan_install(files)] == ["unchanged"]

    later = _config(sync_at="04:00")
    files = schedule.rendered_files(schedule.CRON, later.schedule, _jobs(later), tmp_path)
    [change] = schedule.plan_install(files)
    assert change.action == "updated"
    assert "-30 3 * * *" in change.diff()
    assert "+0 4 * * *" in change.diff()


def test_install_into_a_missing_directory_says_the_scheduler_is_absent(tmp_path: Path) -> None:
    config = _config()
    files = schedule.rendered_files(
        schedule.SYSTEMD, config.schedule, _jobs(config), tmp_path / "nope"
    )
    with pytest.raises(UsageError, match="is this scheduler installed here"):
        schedule.apply(schedule.plan_install(files))


# --- the receiving host's snapshot job ---------------------------------------------------------


def _receiver_config(**sections: object) -> Config:
    return parse(
        {
            "snapshot": {"source": "/home/foo/srvbackups", "directory": "/var/backups/snaps"},
            **sections,
        }
    )


def test_a_config_with_only_snapshot_schedules_the_snapshot_alone_in_cron() -> None:
    config = _receiver_config()
    text = schedule.render_cron(config.schedule, _jobs(config))
    assert cron_d_problems(schedule.CRON_FILE_NAME, text) == []
    jobs = [line for line in text.splitlines() if line[:1].isdigit()]
    assert jobs == [
        "30 5 * * * root /usr/local/bin/keyforge snapshot --config /etc/keyforge/keyforge.toml",
        # the freshness check, hourly, with its own ping
        "17 * * * * root /usr/local/bin/keyforge status --config /etc/keyforge/keyforge.toml "
        "--max-age 26 --ping",
    ]


def test_snapshot_at_defaults_to_two_hours_after_sync_at_and_can_be_set() -> None:
    assert schedule.snapshot_time(_receiver_config().schedule) == "05:30"
    late = _receiver_config(schedule={"sync_at": "23:15"})
    assert schedule.snapshot_time(late.schedule) == "01:15"
    config = _receiver_config(schedule={"snapshot_at": "06:05", "user": "snapper"})
    text = schedule.render_cron(config.schedule, _jobs(config))
    assert "\n5 6 * * * snapper /usr/local/bin/keyforge snapshot --config " in text


def test_a_receiving_host_that_also_syncs_gets_sync_and_snapshot_but_no_backup() -> None:
    config = _receiver_config(
        sync={"source": "/home/foo/srvbackups"}, targets=[{"path": "/mnt/external"}]
    )
    jobs = _jobs(config)
    assert jobs.backup is None
    assert jobs.sync is not None and jobs.snapshot is not None
    assert jobs.timers == [
        "keyforge-sync.timer",
        "keyforge-snapshot.timer",
        "keyforge-freshness.timer",
    ]
    text = schedule.render_cron(config.schedule, jobs)
    assert cron_d_problems(schedule.CRON_FILE_NAME, text) == []
    assert len([line for line in text.splitlines() if line[:1].isdigit()]) == 3


def test_a_config_without_snapshot_schedules_backup_and_sync_as_before() -> None:
    jobs = _jobs(_config())
    assert jobs.snapshot is None
    assert jobs.timers == ["keyforge-backup.timer", "keyforge-sync.timer"]


def test_the_snapshot_units_run_as_the_schedule_user_with_both_directories_mounted() -> None:
    config = _receiver_config(schedule={"user": "snapper", "randomized_delay": 5})
    units = schedule.render_systemd(config.schedule, _jobs(config))
    assert sorted(units) == sorted(
        [*schedule.SNAPSHOT_UNIT_NAMES, *schedule.FRESHNESS_UNIT_NAMES, schedule.NOTIFY_UNIT_NAME]
    )
    service = units["keyforge-snapshot.service"]
    assert "\nUser=snapper\n" in service
    assert "\nRequiresMountsFor=/home/foo/srvbackups /var/backups/snaps\n" in service
    assert (
        "\nExecStart=/usr/local/bin/keyforge snapshot --config /etc/keyforge/keyforge.toml\n"
        in service
    )
    timer = units["keyforge-snapshot.timer"]
    assert "\nOnCalendar=*-*-* 05:30:00\n" in timer
    assert "\nPersistent=true\n" in timer
    assert "\nRandomizedDelaySec=5min\n" in timer


def test_scheduling_the_snapshot_as_the_copys_owner_is_refused() -> None:
    config = _receiver_config(schedule={"user": "foo"})
    jobs = _jobs(config)
    with pytest.raises(UsageError, match="user is foo, the owner of the synced copy"):
        schedule.check_snapshot_user(config, jobs, lambda path: "foo")
    schedule.check_snapshot_user(config, jobs, lambda path: "bar")
    schedule.check_snapshot_user(config, jobs, lambda path: None)  # not synced yet
