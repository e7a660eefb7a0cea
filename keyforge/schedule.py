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

One host may hold several configs (a receiving host that also copies to a drive, two
servers' copies), so every config's jobs are a set of their own, named for the config:
``/etc/keyforge/keyforge.toml`` keeps the plain names (``/etc/cron.d/keyforge``,
``keyforge-backup.timer``), ``/etc/keyforge/drive.toml`` gets ``keyforge-drive`` and
``keyforge-drive-sync.timer`` (``[schedule] name`` sets it). Each file carries a marker line
naming its set and its config, so an install never overwrites another config's set and
``keyforge schedule --list`` finds them all.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path

from keyforge.config import DEFAULT_STATE_DIR, Config, DrillConfig, ScheduleConfig, reads_copy
from keyforge.errors import UsageError
from keyforge.infra import fsutil, tools
from keyforge.infra.templating import render

CRON = "cron"
SYSTEMD = "systemd"
CRON_DIR = Path("/etc/cron.d")
CRON_FILE_NAME = "keyforge"  # cron ignores cron.d names with a dot
DEFAULT_SET = CRON_FILE_NAME  # the default config's set keeps the names it always had
SYSTEMD_DIR = Path("/etc/systemd/system")
UNIT_NAMES = (
    "keyforge-backup.service",
    "keyforge-backup.timer",
    "keyforge-sync.service",
    "keyforge-sync.timer",
)
SNAPSHOT_UNIT_NAMES = ("keyforge-snapshot.service", "keyforge-snapshot.timer")
# every job unit's OnFailure= starts this one, with the failed unit's name as its instance
NOTIFY_UNIT_NAME = "keyforge-notify@.service"
FRESHNESS_UNIT_NAMES = ("keyforge-freshness.service", "keyforge-freshness.timer")
DRILL_UNIT_NAMES = ("keyforge-drill.service", "keyforge-drill.timer")
FRESHNESS_MINUTE = 17  # the receiving host's hourly check, off the full hour
# the capabilities each job keeps as root (CapabilityBoundingSet=): tar reads every file and
# keeps owners' files as they were; rsync reads root's backup directory; the snapshot copies
# owners and modes; status only reads
CAPABILITIES = {
    "backup": "CAP_DAC_READ_SEARCH CAP_DAC_OVERRIDE CAP_FOWNER CAP_CHOWN",
    "sync": "CAP_DAC_READ_SEARCH CAP_DAC_OVERRIDE",
    "snapshot": "CAP_DAC_READ_SEARCH CAP_DAC_OVERRIDE CAP_FOWNER CAP_CHOWN",
    "freshness": "CAP_DAC_READ_SEARCH",
    "notify": "CAP_DAC_READ_SEARCH",
    # the drill restores owners and modes into its scratch directory, as restore does
    "drill": "CAP_DAC_READ_SEARCH CAP_DAC_OVERRIDE CAP_FOWNER CAP_CHOWN",
}
SNAPSHOT_DELAY_MINUTES = 120  # snapshot_at's default: this long after sync_at
CRON_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
FILE_MODE = 0o644  # cron skips a cron.d file others can write; units are world-readable
NICE = 10

_SYSTEMD_SAFE = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+\Z")
# the first line of every file a set installs: which set, for which config
MARKER_PREFIX = "# keyforge-schedule: "
_SET_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*\Z")


@dataclasses.dataclass(frozen=True)
class Jobs:
    """The commands to schedule, as argv lists (None: not on this host), and the directories
    they need mounted."""

    backup: tuple[str, ...] | None
    sync: tuple[str, ...] | None
    mounts: tuple[str, ...]
    snapshot: tuple[str, ...] | None = None
    snapshot_mounts: tuple[str, ...] = ()
    # the set these jobs belong to: the cron file's name and the units' prefix
    name: str = DEFAULT_SET
    config_path: str = ""
    # the receiving host's hourly 'keyforge status --ping'
    freshness: tuple[str, ...] | None = None
    # what systemd's OnFailure= runs, the failed unit's name appended
    notify: tuple[str, ...] | None = None
    # the directories each job writes (ReadWritePaths= of its hardened unit), by job
    writable: tuple[tuple[str, tuple[str, ...]], ...] = ()
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
            "freshness": self.freshness,
            "drill": self.drill,
        }
        return [
            unit_name(self.name, job, "timer") for job, argv in present.items() if argv is not None
        ]

    @property
    def marker(self) -> str:
        return f"{MARKER_PREFIX}{self.name} {self.config_path}\n"


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


# --- the set's name (pure) -------------------------------------------------------------------


def set_name(config_path: Path, explicit: str = "") -> str:
    """The name of a config's set: keyforge for keyforge.toml, keyforge-NAME otherwise."""
    base = explicit or config_path.stem
    base = base.removeprefix(f"{DEFAULT_SET}-")
    if base == DEFAULT_SET:
        return DEFAULT_SET
    if not _SET_NAME_RE.match(base):
        raise UsageError(
            f"cron and systemd cannot name jobs after {config_path.name!r}: set [schedule] "
            'name (letters, digits, _ and -), e.g. name = "drive"'
        )
    return f"{DEFAULT_SET}-{base}"


def unit_name(name: str, job: str, suffix: str) -> str:
    """keyforge-backup.timer for the default set, keyforge-drive-backup.timer for another."""
    return f"{name}-{job}.{suffix}"


def notify_unit_name(name: str) -> str:
    """The template unit a set's jobs name in OnFailure=: each set reports to its own config's
    monitors."""
    return f"{name}-notify@.service"


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
    # a target with a source of its own needs that one mounted too
    target_sources = (t.source for t in config.targets if t.source)
    mounts = tuple(dict.fromkeys((config.backup.directory, source, *target_sources)))
    wanted = jobs_wanted(config.sections)
    snapshot_source = config.snapshot.source or config.sync.source
    snapshot_mounts = tuple(
        dict.fromkeys(m for m in (snapshot_source, config.snapshot.directory) if m)
    )
    # the receiving host checks, with a ping of its own, that the pushes keep arriving
    max_age = str(config.monitor.max_age_hours)
    freshness = (*keyforge, "status", *conf, "--max-age", max_age, "--ping")
    # --wait: a backup still running at sync time delays the sync instead of cancelling it
    return Jobs(
        backup=(*keyforge, "backup", *conf) if "backup" in wanted else None,
        sync=(*keyforge, "sync", *conf, "--wait") if "sync" in wanted else None,
        mounts=mounts,
        snapshot=(*keyforge, "snapshot", *conf) if "snapshot" in wanted else None,
        snapshot_mounts=snapshot_mounts,
        name=set_name(config_path, config.schedule.name),
        config_path=str(config_path),
        freshness=freshness if "snapshot" in wanted else None,
        notify=(*keyforge, "notify", *conf),
        writable=tuple((job, writable_paths(config, job)) for job in CAPABILITIES),
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


def writable_paths(config: Config, job: str) -> tuple[str, ...]:
    """The directories ``job`` writes: its own, the state directory, the logs' and the
    Prometheus file's (pure). Everything else stays read-only under ProtectSystem=strict."""
    state = config.general.state_dir or str(DEFAULT_STATE_DIR)
    shared = [state]
    if config.monitor.log:
        shared.append(str(Path(config.monitor.log).parent))
    if config.monitor.prometheus_textfile:
        shared.append(str(Path(config.monitor.prometheus_textfile).parent))
    own: list[str] = []
    if job == "backup":
        # the parent too: the first run creates the backup directory on the disk
        own = [config.backup.directory, str(Path(config.backup.directory).parent)]
    elif job == "sync":
        # the lock lives in the source; the sync log beside its siblings
        own = [config.sync.source or config.backup.directory, str(Path(config.sync.log).parent)]
    elif job == "snapshot":
        own = [config.snapshot.directory, str(Path(config.snapshot.directory).parent)]
    elif job == "drill":
        # its scratch directory ("" is the unit's private /tmp); on the sending server the
        # backup directory too, where restore takes the backup's lock
        own = [config.drill.scratch] if config.drill.scratch else []
        if not reads_copy(config):
            own.append(config.backup.directory)
    return tuple(dict.fromkeys([*own, *shared]))


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
    return jobs.marker + render(
        "cron.j2",
        name=jobs.name,
        path=CRON_PATH,
        mailto=schedule.mailto or '""',
        backup_when=cron_fields(schedule.backup_at),
        sync_when=cron_fields(schedule.sync_at),
        snapshot_when=cron_fields(snapshot_time(schedule)),
        user=schedule.user,
        backup_command=cron_command(jobs.backup) if jobs.backup else "",
        sync_command=cron_command(jobs.sync) if jobs.sync else "",
        snapshot_command=cron_command(jobs.snapshot) if jobs.snapshot else "",
        freshness_when=f"{FRESHNESS_MINUTE} * * * *",
        freshness_command=cron_command(jobs.freshness) if jobs.freshness else "",
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
    drill_values = {
        **common,
        "mounts": " ".join(systemd_quote(m) for m in jobs.drill_mounts),
        "user": schedule.user,
    }
    # each job's OnCalendar=: daily at its time, the drill monthly (the freshness timer is
    # hourly and says so itself)
    per_job = (
        ("backup", jobs.backup, daily(schedule.backup_at), common),
        ("sync", jobs.sync, daily(schedule.sync_at), common),
        ("snapshot", jobs.snapshot, daily(snapshot_time(schedule)), snapshot),
        ("freshness", jobs.freshness, "", common),
        ("drill", jobs.drill, drill_calendar(drill or DrillConfig())[1], drill_values),
    )
    units: dict[str, str] = {}
    for name, argv, calendar, values in per_job:
        if argv is None:
            continue
        hardening = hardening_values(jobs, name)
        units[unit_name(jobs.name, name, "service")] = jobs.marker + render(
            f"keyforge-{name}.service.j2",
            command=systemd_command(argv),
            name=jobs.name,
            **values,
            **hardening,
        )
        units[unit_name(jobs.name, name, "timer")] = jobs.marker + render(
            f"keyforge-{name}.timer.j2", at=calendar, name=jobs.name, **values
        )
    if jobs.notify is not None:
        units[notify_unit_name(jobs.name)] = jobs.marker + render(
            f"{NOTIFY_UNIT_NAME}.j2",
            command=systemd_command(jobs.notify),
            **hardening_values(jobs, "notify"),
        )
    return units


def daily(at: str) -> str:
    """OnCalendar= for every day at HH:MM."""
    return f"*-*-* {at}:00"


def hardening_values(jobs: Jobs, job: str) -> dict[str, str]:
    """What keyforge-hardening.j2 needs for ``job``: its capabilities and the directories it
    writes ('-': a directory not there yet is no error)."""
    paths = dict(jobs.writable).get(job, ())
    return {
        "capabilities": CAPABILITIES[job],
        "read_write_paths": " ".join(systemd_quote(f"-{p}") for p in paths),
    }


def mail_warning(
    schedule: ScheduleConfig, kind: str, sendmail: Callable[[], str | None]
) -> str | None:
    """cron mails a job's output to MAILTO through sendmail; without one the mail, and the
    failure it reports, is dropped silently."""
    if kind != CRON or not schedule.mailto or sendmail() is not None:
        return None
    return (
        f"[schedule] mailto = {schedule.mailto!r}, but this host has no sendmail: cron drops "
        "the mail of a failed job silently. Install a mail transfer agent, or set mailto = "
        '"" and use [monitor] (pings, a webhook, a Prometheus file)'
    )


def find_sendmail() -> str | None:
    return tools.find_program("sendmail")


def rendered_files(
    kind: str,
    schedule: ScheduleConfig,
    jobs: Jobs,
    dest: Path | None = None,
    drill: DrillConfig | None = None,
) -> dict[Path, str]:
    """Every file of ``kind`` by the path it is installed at."""
    if kind == CRON:
        return {(dest or CRON_DIR) / jobs.name: render_cron(schedule, jobs, drill)}
    units = render_systemd(schedule, jobs, drill)
    return {(dest or SYSTEMD_DIR) / name: text for name, text in units.items()}


def default_kind(systemd_runtime: Path = Path("/run/systemd/system")) -> str:
    """systemd when it runs this machine (its own test, sd_booted), cron otherwise."""
    return SYSTEMD if systemd_runtime.is_dir() else CRON


def other_kind_files(kind: str, name: str = DEFAULT_SET) -> list[Path]:
    """Files of the other scheduler already installed for the same set: both would run every
    job twice."""
    if kind == CRON:
        return [s.path for s in installed_sets(SYSTEMD_DIR) if s.kind == SYSTEMD and s.name == name]
    return [s.path for s in installed_sets(CRON_DIR) if s.kind == CRON and s.name == name]


# --- what is installed (--list) ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Installed:
    """One installed file of a set: a cron file, or a systemd timer (with its job's time)."""

    name: str
    kind: str
    path: Path
    config: str  # "" when the file predates the marker
    jobs: tuple[tuple[str, str], ...]  # (job, HH:MM) in the file's order


def read_marker(text: str) -> tuple[str, str] | None:
    """(set name, config path) from a file's marker line, or None without one."""
    first = text.split("\n", 1)[0]
    if not first.startswith(MARKER_PREFIX):
        return None
    name, _, config = first.removeprefix(MARKER_PREFIX).partition(" ")
    return name, config


def cron_jobs(text: str) -> tuple[tuple[str, str], ...]:
    """(job, HH:MM) for each daily line of a cron file keyforge wrote."""
    jobs = []
    for line in text.splitlines():
        fields = line.split(None, 6)
        if len(fields) < 7 or line.startswith("#") or not fields[0].isdigit():
            continue
        try:
            words = shlex.split(fields[6].replace("\\%", "%"))
            job = words[words.index("--config") - 1]
        except ValueError:
            continue
        # the receiving host's freshness check runs hourly, not daily
        hour = "**" if fields[1] == "*" else f"{int(fields[1]):02d}"
        jobs.append((job, f"{hour}:{int(fields[0]):02d}"))
    return tuple(jobs)


def timer_time(text: str) -> str:
    for line in text.splitlines():
        if line == "OnCalendar=hourly":
            return "hourly"
        if line.startswith("OnCalendar=*-*-* "):
            return line.removeprefix("OnCalendar=*-*-* ")[:5]
    return "?"


def _is_keyforge_name(file_name: str) -> bool:
    return file_name == DEFAULT_SET or file_name.startswith(f"{DEFAULT_SET}-")


def installed_sets(*directories: Path) -> list[Installed]:
    """Every keyforge cron file and timer in ``directories``, whichever config wrote it."""
    found: list[Installed] = []
    for directory in dict.fromkeys(directories):
        if not directory.is_dir():
            continue
        for path in sorted(directory.iterdir()):
            if not _is_keyforge_name(path.name) or not path.is_file():
                continue
            text = fsutil.read_text_if_exists(path) or ""
            marker = read_marker(text)
            if path.suffix == ".timer":
                name, config = marker or (DEFAULT_SET, "")
                job = path.name.removeprefix(f"{name}-").removesuffix(".timer")
                found.append(Installed(name, SYSTEMD, path, config, ((job, timer_time(text)),)))
            elif "." not in path.name:
                name, config = marker or (path.name, "")
                found.append(Installed(name, CRON, path, config, cron_jobs(text)))
    return found


def list_lines(found: Sequence[Installed]) -> list[str]:
    """One line per set and scheduler: name, kind, config, then each job and its time."""
    grouped: dict[tuple[str, str], list[Installed]] = {}
    for item in found:
        grouped.setdefault((item.name, item.kind), []).append(item)
    lines = []
    for (name, kind), items in sorted(grouped.items()):
        config = next((i.config for i in items if i.config), "(config unknown)")
        jobs = ", ".join(f"{job} {at}" for i in items for job, at in i.jobs) or "no jobs"
        where = str(items[0].path) if kind == CRON else str(items[0].path.parent)
        lines.append(f"{name}\t{kind}\t{config}\t{jobs}\t{where}")
    return lines


def check_owner(changes: Sequence[Change], jobs: Jobs) -> None:
    """Refuse to overwrite a file another config's set installed under the same name."""
    for change in changes:
        marker = read_marker(change.old or "")
        if marker is not None and marker[1] != jobs.config_path:
            raise UsageError(
                f"{change.path} holds the jobs of {marker[1]}, not of {jobs.config_path}: set "
                f"[schedule] name in {jobs.config_path} to give its jobs their own files"
            )


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
