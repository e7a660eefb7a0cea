"""keyforge.toml: TOML in, frozen dataclasses out.

Every section is a frozen dataclass whose fields are the section's keys; the parser walks the
dataclass fields, so adding a section (or a key) is declaring it, nothing else. Every unknown key,
wrong type or bad value is a ConfigError naming the file, the section and the key, because a
backup tool that silently ignores a misspelt ``retention_dayz`` keeps the wrong number of days.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import tomllib
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

from keyforge.errors import ConfigError, KeyMaterialError
from keyforge.infra import fsutil
from keyforge.ssh import client

DEFAULT_CONFIG_PATH = Path("/etc/keyforge/keyforge.toml")
CONFIG_ENV = "KEYFORGE_CONFIG"
# What keyforge remembers between runs, kept outside the backup directory on purpose: a disk
# that is swapped, wiped or not mounted must not take the memory of what it held with it.
DEFAULT_STATE_DIR = Path("/var/lib/keyforge")
STATE_ENV = "KEYFORGE_STATE_DIR"

DEFAULT_SOURCES = ("/etc", "/home", "/var", "/boot", "/root")
# What a new user's first backup of /var would otherwise fill with copies of nothing worth
# keeping: caches that rebuild themselves, scratch space, Docker's image store (pulled again,
# never data: volumes belong in a source or a dump of their own) and fsck's lost+found.
DEFAULT_EXCLUDES = ("/var/cache", "/var/tmp", "/var/lib/docker", "lost+found")  # noqa: S108
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
COMPRESSIONS = ("zstd", "gzip", "pigz")
IONICE_CLASSES = ("idle", "best-effort", "none")

_BWLIMIT_RE = re.compile(r"^[0-9]+(\.[0-9]+)?[KMGkmg]?\Z")
_TIME_RE = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]\Z")
# a [[targets]] name: the sync log and --target use it as it is
_TARGET_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
# [general] host starts every archive name, and a file name has 255 bytes at most
ARCHIVE_HOST_MAX = 63


def default_host() -> str:
    """The short host name, as backup-manager names its archives."""
    return socket.gethostname().split(".")[0] or "localhost"


# --- value checks (each returns an error text, or None when the value is fine) ---------------


def is_target_name(value: str) -> bool:
    return _TARGET_NAME_RE.match(value) is not None


def _check_host(value: Any) -> str | None:
    if not client.is_host_name(value, max_length=ARCHIVE_HOST_MAX):
        return "must be a host name (letters, digits, '.', '-'), got " + repr(value)
    return None


def _check_target_name(value: Any) -> str | None:
    if not is_target_name(value):
        return "must be a short name (letters, digits, '.', '_', '-'), got " + repr(value)
    return None


def _check_absolute_paths(value: Any) -> str | None:
    for item in value:
        if not item.startswith("/"):
            return f"must hold absolute paths, got {item!r}"
        if "\n" in item or "\0" in item:
            return f"must not contain newlines or NUL bytes, got {item!r}"
    if len(set(value)) != len(value):
        return "lists a path twice"
    return None


def _check_absolute_path(value: Any) -> str | None:
    return _check_absolute_paths((value,))


def _check_mountpoint(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    problem = _check_absolute_path(value)
    return f"must be true, false or the disk's mount point: {problem}" if problem else None


def _check_excludes(value: Any) -> str | None:
    for item in value:
        if not item or "\n" in item or "\0" in item:
            return f"must hold non-empty patterns without newlines, got {item!r}"
        if not item.startswith("/") and "/" in item:
            # a name glob is matched against one name, which never holds a '/'
            return (
                f"pattern {item!r} can never match: a pattern without a leading '/' matches "
                f"one name; for a path write {'/' + item.lstrip('./')!r}"
            )
    return None


def unreachable_excludes(sources: Sequence[str], patterns: Iterable[str]) -> list[str]:
    """The absolute exclude paths that lie strictly under none of ``sources``: tar would be
    told to leave out something it never reads, so the exclude silently does nothing."""
    found = []
    for pattern in patterns:
        if not pattern.startswith("/"):
            continue
        path = Path(pattern)
        if not any(path != Path(s) and path.is_relative_to(s) for s in sources):
            found.append(pattern)
    return found


def _check_recipients(value: Any) -> str | None:
    from keyforge import age  # noqa: PLC0415 - the age reader only for a config that encrypts

    try:
        age.parse_recipients(value)
    except KeyMaterialError as err:
        return f"{err}"
    return None


def _check_full_every(value: Any) -> str | None:
    if isinstance(value, int):
        return (
            None if value >= 1 else f"must be a weekday name or a number of days >= 1, got {value}"
        )
    if value.lower() not in WEEKDAYS:
        return f"must be a weekday name (e.g. 'sunday') or a number of days, got {value!r}"
    return None


def _at_least(minimum: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value >= minimum else f"must be >= {minimum}, got {value}"

    return check


def _one_of(*allowed: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value in allowed:
            return None
        return f"must be one of {', '.join(repr(a) for a in allowed)}, got {value!r}"

    return check


def _in_range(low: int, high: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if low <= value <= high else f"must be between {low} and {high}, got {value}"

    return check


def _unless_empty(check: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
    def check_set_value(value: Any) -> str | None:
        return check(value) if value else None

    return check_set_value


def _field(default: Any, check: Callable[[Any], str | None] | None = None) -> Any:
    return dataclasses.field(default=default, metadata={"check": check})


# --- sections ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GeneralConfig:
    """[general]: what names this server in archive names and on the receiving host."""

    host: str = _field("", _check_host)  # "" means the short host name, filled in by load()
    # "" means $KEYFORGE_STATE_DIR, else /var/lib/keyforge (root) or ~/.local/state/keyforge
    state_dir: str = _field("", _unless_empty(_check_absolute_path))


@dataclasses.dataclass(frozen=True)
class BackupConfig:
    """[backup]: the daily local tarball-incremental backup."""

    sources: tuple[str, ...] = _field(DEFAULT_SOURCES, _check_absolute_paths)
    exclude: tuple[str, ...] = _field(DEFAULT_EXCLUDES, _check_excludes)
    directory: str = _field("", _check_absolute_path)  # "" means /mnt/backups/<host>
    full_every: str | int = _field("sunday", _check_full_every)
    retention_days: int = _field(14, _at_least(1))
    compression: str = _field("zstd", _one_of(*COMPRESSIONS))
    compression_level: int = _field(3, _in_range(1, 19))
    test_archives: bool = _field(True)
    one_file_system: bool = _field(False)
    nice: int = _field(10, _in_range(0, 19))
    ionice: str = _field("idle", _one_of(*IONICE_CLASSES))
    # refuse to run unless the directory lies on a mounted filesystem: an unmounted disk must
    # not become a fresh, empty history on the filesystem below it. true: any but "/"; a path:
    # exactly the filesystem mounted there (a disk under a separate /var is caught too)
    require_mountpoint: bool | str = _field(False, _check_mountpoint)
    # warn when a source holds this many percent fewer bytes than at its last master (0: never)
    shrink_warn_percent: int = _field(50, _in_range(0, 100))
    # sources meant to be empty: no warning when they are
    allow_empty: tuple[str, ...] = _field((), _check_absolute_paths)
    # the Ed25519 key that signs every manifest (keyforge pair --signing); "": unsigned
    signing_key: str = _field("", _unless_empty(_check_absolute_path))
    # who may sign the manifests restore and verify read (OpenSSH's allowed_signers format);
    # "": the public half of signing_key, where there is one
    allowed_signers: str = _field("", _unless_empty(_check_absolute_path))
    # age recipients (age1…, ssh-ed25519 …, ssh-rsa …): archives become .tar.zst.age, and
    # only the holders of the matching identities can read them; empty: no encryption
    encrypt_to: tuple[str, ...] = _field((), _check_recipients)


def _check_bwlimit(value: Any) -> str | None:
    if value == "" or _BWLIMIT_RE.match(value):
        return None
    return f"must be a rate rsync understands, like '500' (KiB/s) or '2m', got {value!r}"


@dataclasses.dataclass(frozen=True)
class SyncConfig:
    """[sync]: how the nightly push runs (read by the sync runner)."""

    source: str = _field("", _unless_empty(_check_absolute_path))  # "": the backup directory
    log: str = _field("/var/log/keyforge-sync.log", _check_absolute_path)
    timeout: int = _field(300, _at_least(1))
    bwlimit: str = _field("", _check_bwlimit)
    max_delete: int = _field(1000, _at_least(0))
    retries: int = _field(3, _at_least(0))
    retry_delay: int = _field(60, _at_least(0))


@dataclasses.dataclass(frozen=True)
class TargetConfig:
    """One [[targets]] entry: a receiving host (or a local disk) for the nightly push."""

    # "" means unset here; whether a target is complete (remote or local, not both) is checked
    # by keyforge.sender.sync, which knows the kinds
    name: str = _field("", _unless_empty(_check_target_name))
    host: str = _field("")
    port: int = _field(22, _in_range(1, 65535))
    user: str = _field("")
    key: str = _field("", _unless_empty(_check_absolute_path))
    remote_path: str = _field("")
    known_hosts: str = _field("", _unless_empty(_check_absolute_path))
    path: str = _field("", _unless_empty(_check_absolute_path))
    require_mountpoint: bool = _field(False)
    # what this target gets: "" means [sync] source (itself "": the backup directory)
    source: str = _field("", _unless_empty(_check_absolute_path))


def _check_time_of_day(value: Any) -> str | None:
    if _TIME_RE.match(value):
        return None
    return f"must be a time of day as HH:MM (24-hour clock), got {value!r}"


def _check_mailto(value: Any) -> str | None:
    if value == "" or re.match(r"^[A-Za-z0-9._%+@-]+(,[A-Za-z0-9._%+@-]+)*\Z", value):
        return None
    return f'must be a user or mail address (or "" for no mail), got {value!r}'


_SCHEDULE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,47}\Z")


def _check_schedule_name(value: Any) -> str | None:
    if _SCHEDULE_NAME_RE.match(value):
        return None
    return f"must be a short name of letters, digits, _ and - (cron skips others), got {value!r}"


def _check_user(value: Any) -> str | None:
    if client.is_login_name(value):
        return None
    return f"must be a system user name, got {value!r}"


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """[schedule]: when cron or systemd runs the backup and the nightly sync."""

    backup_at: str = _field("01:15", _check_time_of_day)
    sync_at: str = _field("03:30", _check_time_of_day)
    # "" means two hours after sync_at: the receiving host snapshots once the push is in
    snapshot_at: str = _field("", _unless_empty(_check_time_of_day))
    user: str = _field("root", _check_user)  # cron.d runs the jobs as this user
    mailto: str = _field("root", _check_mailto)  # cron mails a job's output here
    randomized_delay: int = _field(15, _in_range(0, 720))  # minutes (systemd RandomizedDelaySec)
    # names this config's cron file and units (keyforge-NAME); "": from the config file's name
    name: str = _field("", _unless_empty(_check_schedule_name))


DEFAULT_SNAPSHOT_STORE = "/var/backups/keyforge-snapshots"


@dataclasses.dataclass(frozen=True)
class SnapshotConfig:
    """[snapshot]: dated hard-link snapshots of the synced copy, on the receiving host."""

    # "" means [sync] source, the directory the sending server pushes into
    source: str = _field("", _unless_empty(_check_absolute_path))
    directory: str = _field(DEFAULT_SNAPSHOT_STORE, _check_absolute_path)
    retention_days: int = _field(30, _at_least(1))
    min_keep: int = _field(7, _at_least(1))
    # a copy that lost more than this percent of the last good snapshot's files looks wiped
    wipe_loss_percent: int = _field(50, _in_range(1, 100))
    # with it, a copy is good only if every manifest is signed by a key it allows for its host
    allowed_signers: str = _field("", _unless_empty(_check_absolute_path))


# a [[dumps]] name: it goes into archive names as it is, and '.' separates a name's parts
_DUMP_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")
DUMP_KINDS = ("postgresql", "mariadb", "sqlite", "command")


def is_dump_name(value: str) -> bool:
    return _DUMP_NAME_RE.match(value) is not None


def _check_dump_name(value: Any) -> str | None:
    if is_dump_name(value):
        return None
    return "must be a short name (letters, digits, '_', '-'), got " + repr(value)


def _check_argv(value: Any) -> str | None:
    if any(not item or "\0" in item for item in value):
        return "must be a list of non-empty arguments without NUL bytes"
    return None


@dataclasses.dataclass(frozen=True)
class DumpConfig:
    """One [[dumps]] entry: a database (or any command's output) archived beside the sources.

    Which keys a kind needs is checked by keyforge.sender.dumps, which knows the kinds.
    """

    name: str = _field("", _unless_empty(_check_dump_name))
    kind: str = _field("", _unless_empty(_one_of(*DUMP_KINDS)))
    # postgresql, mariadb: the databases; ["all"] is every one (postgresql: and its roles)
    databases: tuple[str, ...] = _field(("all",), _check_argv)
    # postgresql: the role (default postgres); mariadb: the account (default: the client's)
    user: str = _field("")
    # postgresql, mariadb: a host name, or a socket directory (postgresql); "" the local default
    host: str = _field("")
    port: int = _field(0, _in_range(0, 65535))  # 0: the client's default
    socket: str = _field("", _unless_empty(_check_absolute_path))  # mariadb: the server's socket
    path: str = _field("", _unless_empty(_check_absolute_path))  # sqlite: the database file
    command: tuple[str, ...] = _field((), _check_argv)  # command: its stdout is the dump
    # extra arguments for pg_dump / mariadb-dump, e.g. ["--exclude-table=audit_log"]
    options: tuple[str, ...] = _field((), _check_argv)


@dataclasses.dataclass(frozen=True)
class HooksConfig:
    """[hooks]: commands run around each backup (argv lists: a shell only if written)."""

    before: tuple[str, ...] = _field((), _check_argv)  # failing, it stops the backup
    after: tuple[str, ...] = _field((), _check_argv)  # after a run that succeeded
    on_error: tuple[str, ...] = _field((), _check_argv)  # after a run that failed
    timeout: int = _field(300, _at_least(1))  # seconds; a hook still running is killed


def _check_url(value: Any) -> str | None:
    """A ping or webhook URL: http(s), a host, nothing a header or a log line could split on."""
    if not re.match(r"^https?://[^\s/?#@]+(/[^\s]*)?\Z", value):
        return f"must be an http:// or https:// URL without spaces, got {value!r}"
    return None


MONITOR_JOBS = ("backup", "sync", "snapshot", "drill", "freshness")
WEBHOOK_ON = ("always", "failure")


@dataclasses.dataclass(frozen=True)
class MonitorConfig:
    """[monitor]: who hears about each run (either host). Every key may stay unset.

    Each ``*_ping`` is one check's URL in the Healthchecks.io protocol (``/start``, success,
    ``/<exit code>``); ``webhook`` receives the run's JSON; ``prometheus_textfile`` is a file
    node_exporter's textfile collector reads.
    """

    backup_ping: str = _field("", _unless_empty(_check_url))
    sync_ping: str = _field("", _unless_empty(_check_url))
    snapshot_ping: str = _field("", _unless_empty(_check_url))
    drill_ping: str = _field("", _unless_empty(_check_url))
    # the receiving host's own check that pushes keep arriving ('keyforge status --ping')
    freshness_ping: str = _field("", _unless_empty(_check_url))
    webhook: str = _field("", _unless_empty(_check_url))
    webhook_on: str = _field("always", _one_of(*WEBHOOK_ON))
    prometheus_textfile: str = _field("", _unless_empty(_check_absolute_path))
    # seconds a run may wait for its monitors in all, however many there are or retries
    timeout: int = _field(10, _in_range(1, 120))
    retries: int = _field(2, _in_range(0, 10))
    # "" means runs.log in the state directory; one JSON line per run
    log: str = _field("", _unless_empty(_check_absolute_path))
    # the freshness check 'keyforge schedule' installs on a receiving host
    max_age_hours: int = _field(26, _at_least(1))

    def ping_url(self, job: str) -> str:
        return str(getattr(self, f"{job}_ping", ""))


@dataclasses.dataclass(frozen=True)
class DrillConfig:
    """[drill]: the monthly restore drill (both hosts): when, how many live files to compare,
    where to restore, and how old its last success may get before status fails."""

    at: str = _field("04:45", _check_time_of_day)
    day: int = _field(1, _in_range(1, 28))  # of the month; 28 exists in every month
    spot_check: int = _field(0, _at_least(0))
    # "" means the system's temporary directory; never inside a backup directory or copy
    scratch: str = _field("", _unless_empty(_check_absolute_path))
    max_age_days: int = _field(35, _at_least(1))


@dataclasses.dataclass(frozen=True)
class Config:
    general: GeneralConfig
    backup: BackupConfig
    sync: SyncConfig
    targets: tuple[TargetConfig, ...]
    path: Path | None = None
    schedule: ScheduleConfig = ScheduleConfig()
    snapshot: SnapshotConfig = SnapshotConfig()
    dumps: tuple[DumpConfig, ...] = ()
    hooks: HooksConfig = HooksConfig()
    monitor: MonitorConfig = MonitorConfig()
    drill: DrillConfig = DrillConfig()
    # the sections the file holds: 'keyforge schedule' picks a host's jobs by them
    sections: frozenset[str] = dataclasses.field(default=frozenset(), compare=False)

    @property
    def host(self) -> str:
        return self.general.host

    @property
    def backup_dir(self) -> Path:
        return Path(self.backup.directory)


# The tables of the file and the dataclass each parses into; arrays of tables marked True.
SECTIONS: Mapping[str, tuple[type[Any], bool]] = {
    "general": (GeneralConfig, False),
    "backup": (BackupConfig, False),
    "sync": (SyncConfig, False),
    "targets": (TargetConfig, True),
    "schedule": (ScheduleConfig, False),
    "snapshot": (SnapshotConfig, False),
    "dumps": (DumpConfig, True),
    "hooks": (HooksConfig, False),
    "monitor": (MonitorConfig, False),
    "drill": (DrillConfig, False),
}


# --- parsing -------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    names = {str: "a string", int: "an integer", bool: "true or false", float: "a number"}
    if tp in names:
        return names[tp]
    origin = typing.get_origin(tp)
    if origin is tuple:
        return "a list of strings"
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in typing.get_args(tp))
    return str(tp)


def _matches(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(tp))
    if origin is tuple:
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    if tp is int:
        # TOML booleans are Python bools, which are ints: 'retention_days = true' is wrong
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _coerce(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _parse_section(cls: type[Any], table: Mapping[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in known:
            suggestion = ", ".join(sorted(known))
            raise ConfigError(f"{where} unknown key {key!r} (known keys: {suggestion})")
        tp = hints[key]
        if not _matches(value, tp):
            raise ConfigError(f"{where} {key} must be {_type_name(tp)}, got {value!r}")
        coerced = _coerce(value)
        check = known[key].metadata.get("check")
        problem = check(coerced) if check is not None else None
        if problem is not None:
            raise ConfigError(f"{where} {key} {problem}")
        values[key] = coerced
    return cls(**values)


def parse(data: Mapping[str, Any], *, source: str = "keyforge.toml") -> Config:
    """Turn a parsed TOML document into a Config, or raise a ConfigError naming the key."""
    sections: dict[str, Any] = {}
    for name, value in data.items():
        if name not in SECTIONS:
            known = ", ".join(f"[{s}]" for s in SECTIONS)
            raise ConfigError(f"{source}: unknown section or key {name!r} (known: {known})")
        cls, is_array = SECTIONS[name]
        if is_array:
            if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
                raise ConfigError(f"{source}: {name} must be an array of tables ([[{name}]])")
            sections[name] = tuple(
                _parse_section(cls, t, f"{source}: [[{name}]] #{i + 1}")
                for i, t in enumerate(value)
            )
        else:
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {name} must be a table ([{name}])")
            sections[name] = _parse_section(cls, value, f"{source}: [{name}]")

    general = sections.get("general", GeneralConfig())
    if not general.host:
        general = dataclasses.replace(general, host=default_host())
    backup = sections.get("backup", BackupConfig())
    if not backup.directory:
        backup = dataclasses.replace(backup, directory=f"/mnt/backups/{general.host}")
    if isinstance(backup.full_every, str):
        backup = dataclasses.replace(backup, full_every=backup.full_every.lower())
    # only the patterns the file lists: a default that lies under no source just stays unused
    given = data.get("backup", {}).get("exclude", ())
    unreachable = unreachable_excludes(backup.sources, given)
    if unreachable:
        raise ConfigError(
            f"{source}: [backup] exclude {unreachable[0]!r} lies under none of the sources "
            f"({', '.join(backup.sources)}), so it can never match"
        )
    dumps = sections.get("dumps", ())
    names = [d.name for d in dumps]
    twice = sorted({n for n in names if names.count(n) > 1 and n})
    if twice:
        raise ConfigError(f"{source}: [[dumps]] name {twice[0]!r} is used twice")
    return Config(
        general=general,
        backup=backup,
        sync=sections.get("sync", SyncConfig()),
        targets=sections.get("targets", ()),
        schedule=sections.get("schedule", ScheduleConfig()),
        snapshot=sections.get("snapshot", SnapshotConfig()),
        dumps=dumps,
        hooks=sections.get("hooks", HooksConfig()),
        monitor=sections.get("monitor", MonitorConfig()),
        drill=sections.get("drill", DrillConfig()),
        sections=frozenset(sections),
    )


def state_dir(config: Config) -> Path:
    """Where keyforge keeps what it remembers between runs (never in the backup directory)."""
    if config.general.state_dir:
        return Path(config.general.state_dir)
    from_env = os.environ.get(STATE_ENV)
    if from_env:
        return Path(from_env)
    if os.geteuid() == 0:
        return DEFAULT_STATE_DIR
    return Path.home() / ".local" / "state" / "keyforge"


def reads_copy(config: Config) -> bool:
    """A receiving host's config: [snapshot] and no [backup]. Its status and drill read the
    synced copy ([snapshot] source), not a backup directory of its own."""
    return "snapshot" in config.sections and "backup" not in config.sections


def snapshot_source(config: Config) -> Path:
    """[snapshot] source, else [sync] source: the directory the sending server pushes into.

    Read by the receiving host's snapshot and by status reading that copy, so both live here.
    """
    value = config.snapshot.source or config.sync.source
    if not value:
        raise ConfigError(
            "[snapshot] source is not set: the directory the sending server pushes into, "
            'e.g. source = "/home/foo/srvbackups"'
        )
    return Path(value)


def resolve_path(explicit: Path | None) -> Path:
    """--config wins, then $KEYFORGE_CONFIG, then /etc/keyforge/keyforge.toml."""
    if explicit is not None:
        return explicit
    from_env = os.environ.get(CONFIG_ENV)
    if from_env:
        return Path(from_env)
    return DEFAULT_CONFIG_PATH


def load(path: Path) -> Config:
    """Read and check the config file at ``path``."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist; 'keyforge init' writes one") from None
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror or err}") from err
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path.name}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path.name}: invalid TOML: {err}") from None
    config = parse(data, source=path.name)
    return dataclasses.replace(config, path=path)


def mount_point_to_require(directory: Path) -> str | None:
    """The mount point 'init' pins for ``directory``, as a TOML string: the filesystem it lies
    on now, unless that is the root filesystem (then there is no disk to insist on)."""
    mount = fsutil.mount_point_of(directory)
    return None if mount == Path("/") else toml_string(str(mount))


def render_default(host: str | None = None, directory: str | None = None) -> str:
    """The commented default config that 'keyforge init' writes; ``directory`` is the backup
    directory (default /mnt/backups/<host>), whose filesystem decides require_mountpoint."""
    from keyforge.infra.templating import render  # noqa: PLC0415 - jinja2 only when rendering

    name = host or default_host()
    if not client.is_host_name(name, max_length=ARCHIVE_HOST_MAX):
        name = "localhost"
    defaults, sync, snapshot = BackupConfig(), SyncConfig(), SnapshotConfig()
    directory = directory or f"/mnt/backups/{name}"
    return render(
        "keyforge.toml.j2",
        host=toml_string(name),
        sources=", ".join(toml_string(s) for s in defaults.sources),
        directory=toml_string(directory),
        # a disk mounted there now is what the guard later insists on
        mount_point=mount_point_to_require(Path(directory)),
        shrink_warn_percent=defaults.shrink_warn_percent,
        full_every=toml_string(str(defaults.full_every)),
        retention_days=defaults.retention_days,
        compression=toml_string(defaults.compression),
        compression_level=defaults.compression_level,
        nice=defaults.nice,
        ionice=toml_string(defaults.ionice),
        sync=sync,
        schedule=ScheduleConfig(),
        sync_log=toml_string(sync.log),
        snapshot=snapshot,
        snapshot_store=toml_string(snapshot.directory),
        excludes=", ".join(toml_string(e) for e in defaults.exclude),
        hooks=HooksConfig(),
        monitor=MonitorConfig(),
        monitor_webhook_on=toml_string(MonitorConfig().webhook_on),
        drill=DrillConfig(),
    )


def toml_string(value: str) -> str:
    """A TOML basic string; JSON's escaping is a subset TOML accepts."""
    return json.dumps(value, ensure_ascii=True)
