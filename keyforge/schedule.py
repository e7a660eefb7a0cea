"""keyforge schedule: the daily backup, the nightly sync and, on the receiving host, the
snapshot after it, as a cron.d file or systemd timers.

Which jobs a host gets follows from the sections its config holds: without [snapshot], the
backup and the sync (the sending server); with [snapshot], the snapshot job, plus the backup
when [backup] is there and the sync when [[targets]] are. A receiving host's config with only
[snapshot] therefore schedules nothing that pushes.

Rendering is pure: the commands are quoted here for the reader that will split them (cron hands
its line to /bin/sh and turns '%' into a newline; systemd splits ExecStart itself and expands
'%' and '$'), then the templates lay them out. Installing compares what is on disk with what
was rendered and writes only what differs, so running it twice changes nothing.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path

from keyforge.config import Config, DrillConfig, ScheduleConfig, reads_copy
from keyforge.errors import UsageError
from keyforge.infra import fsutil, tools
from keyforge.infra.templating import render

CRON = "cron"
SYSTEMD = "systemd"
CRON_DIR = Path("/etc/cron.d")
CRON_FILE_NAME = "keyforge"  # cron ignores cron.d names with a dot
SYSTEMD_DIR = Path("/etc/systemd/system")
UNIT_NAMES = (
    "keyforge-backup.service",
    "keyforge-backup.timer",
    "keyforge-sync.service",
    "keyforge-sync.timer",
)
SNAPSHOT_UNIT_NAMES = ("keyforge-snapshot.service", "keyforge-snapshot.timer")
DRILL_UNIT_NAMES = ("keyforge-drill.service", "keyforge-drill.timer")
SNAPSHOT_DELAY_MINUTES = 120  # snapshot_at's default: this long after sync_at
CRON_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
FILE_MODE = 0o644  # cron skips a cron.d file others can write; units are world-readable
NICE = 10

_SYSTEMD_SAFE = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+\Z")


@dataclasses.dataclass(frozen=True)
class Jobs:
    """The commands to schedule, as argv lists (None: not on this host), and the directories
    they need mounted."""

    backup: tuple[str, ...] | None
    sync: tuple[str, ...] | None
    mounts: tuple[str, ...]
    snapshot: tuple[str, ...] | None = None
    snapshot_mounts: tuple[str, ...] = ()
    # the monthly restore drill, on either host, with the directory it reads
    drill: tuple[str, ...] | None = None
    drill_mounts: tuple[str, ...] = ()

    @property
    def timers(self) -> list[str]:
        """The timer units of the jobs present, for 'systemctl enable'."""
        present = {
            "backup": self.backup,
            "sync": self.sync,
            "snapshot": self.snapshot,
            "drill": self.drill,
        }
        return [f"keyforge-{name}.timer" for name, argv in present.items() if argv is not None]


@dataclasses.dataclass(frozen=True)
class Change:
    path: Path
    action: str  # "created", "updated" or "unchanged"
    old: str | None
    new: str

    def diff(self) -> str:
        return "".join(
            difflib.unified_diff(
                (self.old or "").splitlines(keepends=True),
                self.new.splitlines(keepends=True),
                fromfile=str(self.path) if self.old is not None else "/dev/null",
                tofile=str(self.path),
            )
        )


# --- commands (pure) -------------------------------------------------------------------------


def keyforge_argv() -> list[str]:
    """How cron or systemd starts this keyforge: an absolute path, whatever their PATH is."""
    return tools.keyforge_argv()


def jobs_for(config: Config, config_path: Path, keyforge: Sequence[str]) -> Jobs:
    if not config_path.is_absolute():
        raise UsageError(f"the config path must be absolute for cron and systemd: {config_path}")
    for arg in (*keyforge, str(config_path)):
        if "\n" in arg or "\0" in arg:
            raise UsageError(f"a scheduled command cannot hold a newline: {arg!r}")
    conf = ["--config", str(config_path)]
    source = config.sync.source or config.backup.directory
    mounts = tuple(dict.fromkeys((config.backup.directory, source)))
    wanted = jobs_wanted(config.sections)
    snapshot_source = config.snapshot.source or config.sync.source
    snapshot_mounts = tuple(
        dict.fromkeys(m for m in (snapshot_source, config.snapshot.directory) if m)
    )
    # --wait: a backup still running at sync time delays the sync instead of cancelling it
    return Jobs(
        backup=(*keyforge, "backup", *conf) if "backup" in wanted else None,
        sync=(*keyforge, "sync", *conf, "--wait") if "sync" in wanted else None,
        mounts=mounts,
        snapshot=(*keyforge, "snapshot", *conf) if "snapshot" in wanted else None,
        snapshot_mounts=snapshot_mounts,
        drill=(*keyforge, "drill", *conf) if "drill" in config.sections else None,
        drill_mounts=drill_mounts(config),
    )


def drill_mounts(config: Config) -> tuple[str, ...]:
    """What the drill reads: the backup directory, or on a receiving host the synced copy."""
    if reads_copy(config):
        copy = config.snapshot.source or config.sync.source
        return (copy,) if copy else ()
    return (config.backup.directory,)


def drill_calendar(drill: DrillConfig) -> tuple[str, str]:
    """[drill] day and at as cron's fields and systemd's OnCalendar: once a month."""
    hour, minute = drill.at.split(":")
    return (
        f"{int(minute)} {int(hour)} {drill.day} * *",
        f"*-*-{drill.day:02d} {drill.at}:00",
    )


def jobs_wanted(sections: frozenset[str]) -> frozenset[str]:
    """The jobs a host runs, by the sections of its config (see the module's docstring)."""
    if "snapshot" not in sections:
        return frozenset({"backup", "sync"})
    wanted = {"snapshot"}
    if "backup" in sections:
        wanted.add("backup")
    if "targets" in sections:
        wanted.add("sync")
    return frozenset(wanted)


def snapshot_time(schedule: ScheduleConfig) -> str:
    """snapshot_at, or two hours after sync_at: the push is in by then."""
    if schedule.snapshot_at:
        return schedule.snapshot_at
    hour, minute = map(int, schedule.sync_at.split(":"))
    total = (hour * 60 + minute + SNAPSHOT_DELAY_MINUTES) % (24 * 60)
    return f"{total // 60:02d}:{total % 60:02d}"


def owner_name(path: Path) -> str | None:
    """The user name owning ``path``, or None when it is missing or the uid has no name."""
    import pwd  # noqa: PLC0415 - only the snapshot check reads the passwd database

    try:
        return pwd.getpwuid(path.stat().st_uid).pw_name
    except (OSError, KeyError):
        return None


def check_snapshot_user(config: Config, jobs: Jobs, owner_of: Callable[[Path], str | None]) -> None:
    """The snapshot job must not run as the synced copy's owner, the user the backup key logs in
    as (``keyforge snapshot`` refuses that too, but only at night)."""
    source = config.snapshot.source or config.sync.source
    if jobs.snapshot is None or not source:
        return
    owner = owner_of(Path(source))
    if owner is not None and owner == config.schedule.user:
        raise UsageError(
            f"[schedule] user is {owner}, the owner of the synced copy {source}: the snapshot "
            "job must run as root or a user of its own, never as the user the backup key "
            "logs in as"
        )


def cron_command(argv: Sequence[str]) -> str:
    """A command line for cron: quoted for /bin/sh, with cron's '%' escaped."""
    return shlex.join(argv).replace("%", "\\%")


def cron_fields(at: str) -> str:
    """'01:15' as cron's minute and hour fields, every day."""
    hour, minute = at.split(":")
    return f"{int(minute)} {int(hour)} * * *"


def systemd_quote(arg: str) -> str:
    """One argument as systemd's ExecStart reads it: '%' and '$' are its own expansions."""
    escaped = arg.replace("%", "%%").replace("$", "$$")
    if _SYSTEMD_SAFE.match(arg):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def systemd_command(argv: Sequence[str]) -> str:
    return " ".join(systemd_quote(arg) for arg in argv)


def check_times(schedule: ScheduleConfig, jobs: Jobs) -> None:
    if jobs.backup is not None and jobs.sync is not None and schedule.backup_at == schedule.sync_at:
        raise UsageError(
            f"[schedule] sync_at ({schedule.sync_at}) equals backup_at; give the backup time "
            "to finish before the nightly sync"
        )


def render_cron(schedule: ScheduleConfig, jobs: Jobs, drill: DrillConfig | None = None) -> str:
    check_times(schedule, jobs)
    drill = drill or DrillConfig()
    return render(
        "cron.j2",
        path=CRON_PATH,
        mailto=schedule.mailto or '""',
        backup_when=cron_fields(schedule.backup_at),
        sync_when=cron_fields(schedule.sync_at),
        snapshot_when=cron_fields(snapshot_time(schedule)),
        user=schedule.user,
        backup_command=cron_command(jobs.backup) if jobs.backup else "",
        sync_command=cron_command(jobs.sync) if jobs.sync else "",
        snapshot_command=cron_command(jobs.snapshot) if jobs.snapshot else "",
        drill_when=drill_calendar(drill)[0],
        drill_command=cron_command(jobs.drill) if jobs.drill else "",
    )


def render_systemd(
    schedule: ScheduleConfig, jobs: Jobs, drill: DrillConfig | None = None
) -> dict[str, str]:
    """The unit files of the jobs present, by name: a service and a timer each."""
    check_times(schedule, jobs)
    common = {
        "nice": NICE,
        "mounts": " ".join(systemd_quote(m) for m in jobs.mounts),
        "delay": schedule.randomized_delay,
    }
    snapshot = {
        **common,
        "mounts": " ".join(systemd_quote(m) for m in jobs.snapshot_mounts),
        "user": schedule.user,
    }
    per_job = (
        ("backup", jobs.backup, schedule.backup_at, common),
        ("sync", jobs.sync, schedule.sync_at, common),
        ("snapshot", jobs.snapshot, snapshot_time(schedule), snapshot),
    )
    units: dict[str, str] = {}
    for name, argv, at, values in per_job:
        if argv is None:
            continue
        units[f"keyforge-{name}.service"] = render(
            f"keyforge-{name}.service.j2", command=systemd_command(argv), **values
        )
        units[f"keyforge-{name}.timer"] = render(
            f"keyforge-{name}.timer.j2", at=f"*-*-* {at}:00", **values
        )
    if jobs.drill is not None:
        units.update(render_drill_units(schedule, jobs.drill, jobs.drill_mounts, drill))
    return units


def render_drill_units(
    schedule: ScheduleConfig,
    argv: Sequence[str],
    mounts: Sequence[str],
    drill: DrillConfig | None = None,
) -> dict[str, str]:
    """The drill's service and monthly timer."""
    values = {
        "nice": NICE,
        "mounts": " ".join(systemd_quote(m) for m in mounts),
        "delay": schedule.randomized_delay,
        "user": schedule.user,
    }
    calendar = drill_calendar(drill or DrillConfig())[1]
    return {
        "keyforge-drill.service": render(
            "keyforge-drill.service.j2", command=systemd_command(argv), **values
        ),
        "keyforge-drill.timer": render("keyforge-drill.timer.j2", at=calendar, **values),
    }


def rendered_files(
    kind: str,
    schedule: ScheduleConfig,
    jobs: Jobs,
    dest: Path | None = None,
    drill: DrillConfig | None = None,
) -> dict[Path, str]:
    """Every file of ``kind`` by the path it is installed at."""
    if kind == CRON:
        return {(dest or CRON_DIR) / CRON_FILE_NAME: render_cron(schedule, jobs, drill)}
    units = render_systemd(schedule, jobs, drill)
    return {(dest or SYSTEMD_DIR) / name: text for name, text in units.items()}


def default_kind(systemd_runtime: Path = Path("/run/systemd/system")) -> str:
    """systemd when it runs this machine (its own test, sd_booted), cron otherwise."""
    return SYSTEMD if systemd_runtime.is_dir() else CRON


def other_kind_files(kind: str) -> list[Path]:
    """Files of the other scheduler already installed: both would run every job twice."""
    if kind == CRON:
        candidates = [
            SYSTEMD_DIR / name for name in (*UNIT_NAMES, *SNAPSHOT_UNIT_NAMES, *DRILL_UNIT_NAMES)
        ]
    else:
        candidates = [CRON_DIR / CRON_FILE_NAME]
    return [path for path in candidates if path.exists()]


# --- installing ------------------------------------------------------------------------------


def require_directory_of(path: Path) -> None:
    if not path.parent.is_dir():
        raise UsageError(f"{path.parent} does not exist: is this scheduler installed here?")


def plan_install(files: dict[Path, str]) -> list[Change]:
    """What installing ``files`` would change; refuses, as the install would, a missing
    directory, so --dry-run never promises a write that cannot happen."""
    changes = []
    for path, text in files.items():
        old = fsutil.read_text_if_exists(path)
        if old is None:
            require_directory_of(path)
            action = "created"
        elif old == text:
            action = "unchanged"
        else:
            action = "updated"
        changes.append(Change(path, action, old, text))
    return changes


def apply(changes: Sequence[Change]) -> None:
    for change in changes:
        if change.action == "unchanged":
            continue
        require_directory_of(change.path)
        fsutil.atomic_write(change.path, change.new.encode(), mode=FILE_MODE, keep_owner=False)
