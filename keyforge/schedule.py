"""keyforge schedule: the daily backup and the nightly sync as a cron.d file or systemd timers.

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
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from keyforge import fsutil
from keyforge.config import Config, ScheduleConfig
from keyforge.errors import UsageError
from keyforge.templating import render

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
CRON_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
FILE_MODE = 0o644  # cron skips a cron.d file others can write; units are world-readable
NICE = 10

_SYSTEMD_SAFE = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")


@dataclasses.dataclass(frozen=True)
class Jobs:
    """The two commands to schedule, as argv lists, and the directories they need mounted."""

    backup: tuple[str, ...]
    sync: tuple[str, ...]
    mounts: tuple[str, ...]


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
    found = shutil.which("keyforge")
    if found is not None:
        return [str(Path(found).resolve())]
    return [str(Path(sys.executable).resolve()), "-m", "keyforge"]


def jobs_for(config: Config, config_path: Path, keyforge: Sequence[str]) -> Jobs:
    if not config_path.is_absolute():
        raise UsageError(f"the config path must be absolute for cron and systemd: {config_path}")
    for arg in (*keyforge, str(config_path)):
        if "\n" in arg or "\0" in arg:
            raise UsageError(f"a scheduled command cannot hold a newline: {arg!r}")
    conf = ["--config", str(config_path)]
    source = config.sync.source or config.backup.directory
    mounts = tuple(dict.fromkeys((config.backup.directory, source)))
    # --wait: a backup still running at sync time delays the sync instead of cancelling it
    return Jobs(
        backup=(*keyforge, "backup", *conf),
        sync=(*keyforge, "sync", *conf, "--wait"),
        mounts=mounts,
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


def check_times(schedule: ScheduleConfig) -> None:
    if schedule.backup_at == schedule.sync_at:
        raise UsageError(
            f"[schedule] sync_at ({schedule.sync_at}) equals backup_at; give the backup time "
            "to finish before the nightly sync"
        )


def render_cron(schedule: ScheduleConfig, jobs: Jobs) -> str:
    check_times(schedule)
    return render(
        "cron.j2",
        path=CRON_PATH,
        mailto=schedule.mailto or '""',
        backup_when=cron_fields(schedule.backup_at),
        sync_when=cron_fields(schedule.sync_at),
        user=schedule.user,
        backup_command=cron_command(jobs.backup),
        sync_command=cron_command(jobs.sync),
    )


def render_systemd(schedule: ScheduleConfig, jobs: Jobs) -> dict[str, str]:
    """The four unit files by name."""
    check_times(schedule)
    mounts = " ".join(systemd_quote(m) for m in jobs.mounts)
    common = {"nice": NICE, "mounts": mounts, "delay": schedule.randomized_delay}
    return {
        "keyforge-backup.service": render(
            "keyforge-backup.service.j2", command=systemd_command(jobs.backup), **common
        ),
        "keyforge-backup.timer": render(
            "keyforge-backup.timer.j2", at=f"*-*-* {schedule.backup_at}:00", **common
        ),
        "keyforge-sync.service": render(
            "keyforge-sync.service.j2", command=systemd_command(jobs.sync), **common
        ),
        "keyforge-sync.timer": render(
            "keyforge-sync.timer.j2", at=f"*-*-* {schedule.sync_at}:00", **common
        ),
    }


def rendered_files(
    kind: str, schedule: ScheduleConfig, jobs: Jobs, dest: Path | None = None
) -> dict[Path, str]:
    """Every file of ``kind`` by the path it is installed at."""
    if kind == CRON:
        return {(dest or CRON_DIR) / CRON_FILE_NAME: render_cron(schedule, jobs)}
    units = render_systemd(schedule, jobs)
    return {(dest or SYSTEMD_DIR) / name: text for name, text in units.items()}


def default_kind(systemd_runtime: Path = Path("/run/systemd/system")) -> str:
    """systemd when it runs this machine (its own test, sd_booted), cron otherwise."""
    return SYSTEMD if systemd_runtime.is_dir() else CRON


def other_kind_files(kind: str) -> list[Path]:
    """Files of the other scheduler already installed: both would run every job twice."""
    if kind == CRON:
        candidates = [SYSTEMD_DIR / name for name in UNIT_NAMES]
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
