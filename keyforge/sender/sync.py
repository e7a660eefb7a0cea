"""keyforge sync: push the backup directory to each target with the post's rsync command.

The command is the post's ``rsync -az --delete --rsh='ssh ...' SRC USER@HOST:DEST`` with
absolute paths, a pinned known_hosts file and no trust on first use, plus ``--partial-dir``
with ``--delay-updates``, ``--timeout`` and ``--max-delete``. Everything that decides something
is pure and tested on its own: the argv, the reading of an exit status, the retry delays, the
``--stats`` parsing and the log line. ``sync`` runs them under the backup directory's lock.

Three guards matter more than the rest. A source without a keyforge manifest is never sent: an
empty or unmounted backup disk would otherwise ``--delete`` the offsite copy. A push that would
delete archives the last successful push to that target sent, and that retention has not yet
expired, is refused (the list lives in the state directory, outside the backup directory): a
fresh history made on an unmounted disk's mount point has manifests too. And a dry run never
connects: the receiving side runs its forced command, which ignores the client's ``-n`` and
would really delete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shlex
import syslog
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from keyforge.config import Config, SyncConfig, TargetConfig, is_target_name, state_dir
from keyforge.errors import CommandError, ConfigError, FileError, KeyforgeError, UsageError
from keyforge.infra import fsutil, runner, tools
from keyforge.layout import LOCK_NAME, MANIFEST_SUFFIX, PARTIAL_SUFFIX, archive_records, lock_path
from keyforge.sender.backup import chains_to_remove
from keyforge.ssh.client import CONNECT_TIMEOUT, is_host, is_login_name, ssh_argv

# rsync and ssh exit statuses worth another try: the network, not the request, failed
NETWORK_EXITS: dict[int, str] = {
    10: "error in socket I/O",
    12: "error in rsync protocol data stream",
    30: "timeout in data send/receive",
    35: "timeout waiting for daemon connection",
    255: "ssh could not connect",
}
MAX_DELETE_EXIT = 25
# rsync's exits for files that could not be read or written, the connection and key fine
FILE_ERROR_EXITS = (23, 24)
# Where the receiver keeps what is still arriving (--partial-dir, relative to the copy): with
# --delay-updates every file reaches its final name only once the whole push is in, and an
# interrupted file stays here, never under the name a manifest lists.
PARTIAL_DIR = ".rsync-partial"
RSYNC_EXITS: dict[int, str] = {
    1: "syntax or usage error",
    2: "protocol incompatibility",
    3: "errors selecting input/output files, dirs",
    4: "requested action not supported",
    5: "error starting client-server protocol",
    6: "daemon unable to append to log-file",
    11: "error in file I/O",
    13: "errors with program diagnostics",
    14: "error in IPC code",
    20: "received SIGUSR1 or SIGINT",
    21: "some error returned by waitpid()",
    22: "error allocating core memory buffers",
    23: "partial transfer due to error",
    24: "partial transfer due to vanished source files",
    MAX_DELETE_EXIT: "the --max-delete limit stopped deletions",
    **NETWORK_EXITS,
}

# ssh's own words for failures that another try cannot fix
_HOST_KEY_SIGNS = (
    "Host key verification failed",
    "REMOTE HOST IDENTIFICATION HAS CHANGED",
    "host key is known for",
)
# ssh's refusal names the methods it tried ("Permission denied (publickey)."); a file error
# on the receiver names an errno ("Permission denied (13)") and is no refusal
_AUTH_RE = re.compile(r"Permission denied \([a-z-]+(?:,[a-z-]+)*\)")
SSH_EXIT = 255
_PROTECTED_SIGNS = ("protocol version mismatch",)

# ssh expands '%' tokens and '~' in these, and splits UserKnownHostsFile on whitespace
_SSH_PATH_RE = re.compile(r"^/[A-Za-z0-9._/+@,=-]*\Z")
_REMOTE_PATH_RE = re.compile(r"^[A-Za-z0-9._/~+@,=-]+\Z")
_BYTES_SENT_RE = re.compile(r"^Total bytes sent:\s*([0-9][0-9,.']*)", re.MULTILINE)


@dataclasses.dataclass(frozen=True)
class Tools:
    """Absolute paths of the programs a sync runs (cron's PATH is not the shell's)."""

    rsync: str
    ssh: str


@dataclasses.dataclass(frozen=True)
class RemoteTarget:
    name: str
    host: str
    port: int
    user: str
    key: Path
    remote_path: str
    known_hosts: Path

    @property
    def destination(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}:{self.remote_path}"


@dataclasses.dataclass(frozen=True)
class LocalTarget:
    name: str
    path: Path
    require_mountpoint: bool

    @property
    def destination(self) -> str:
        return f"{self.path}/"


Target = RemoteTarget | LocalTarget


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What an exit status means: success, worth a retry, or a failure to report as is."""

    ok: bool
    retry: bool
    message: str


@dataclasses.dataclass(frozen=True)
class Report:
    """One target's run, as logged and printed."""

    target: str
    destination: str
    argv: tuple[str, ...]
    start: datetime
    end: datetime
    exit: int | None
    bytes_sent: int | None
    attempts: int
    ok: bool
    message: str


# --- configuration -> targets (pure) ---------------------------------------------------------


def _require(cfg: TargetConfig, where: str, *names: str) -> None:
    missing = [n for n in names if not getattr(cfg, n)]
    if missing:
        raise ConfigError(f"{where} needs {', '.join(missing)}")


def _check_ssh_path(value: str, key: str, where: str) -> Path:
    if not _SSH_PATH_RE.match(value) or "/../" in f"{value}/":
        raise ConfigError(
            f"{where} {key} must be an absolute path of letters, digits and ._/+@,=- "
            f"(ssh would expand or split anything else), got {value!r}"
        )
    return Path(value)


def target_from_config(cfg: TargetConfig, index: int) -> Target:
    """Check one [[targets]] table and turn it into a remote or a local target."""
    where = f"[[targets]] #{index + 1}"
    remote_keys = ("host", "user", "key", "remote_path", "known_hosts")
    if cfg.name and not is_target_name(cfg.name):
        raise ConfigError(
            f"{where} name must be a short name of letters, digits and ._-, got {cfg.name!r}"
        )
    if cfg.path:
        if not cfg.path.startswith("/") or "\n" in cfg.path:
            raise ConfigError(f"{where} path must be an absolute path, got {cfg.path!r}")
        extra = [k for k in remote_keys if getattr(cfg, k)]
        if extra:
            raise ConfigError(
                f"{where} sets path (a local target) and {', '.join(extra)} (a remote one); "
                "keep one kind per target"
            )
        return LocalTarget(cfg.name or cfg.path, Path(cfg.path), cfg.require_mountpoint)
    if cfg.require_mountpoint:
        raise ConfigError(f"{where} require_mountpoint applies to a local target (path = ...)")
    if not any(getattr(cfg, k) for k in remote_keys):
        raise ConfigError(
            f"{where} needs path (a local drive) or {', '.join(remote_keys)} (a receiving host)"
        )
    _require(cfg, where, *remote_keys)
    host = cfg.host
    if not is_host(host):
        raise ConfigError(f"{where} host must be a host name or an IP address, got {host!r}")
    if not is_login_name(cfg.user):
        raise ConfigError(f"{where} user must be a login name, got {cfg.user!r}")
    if not _REMOTE_PATH_RE.match(cfg.remote_path) or cfg.remote_path.startswith("-"):
        raise ConfigError(
            f"{where} remote_path must be a path of letters, digits and ._/~+@,=- "
            f"not starting with '-', got {cfg.remote_path!r}"
        )
    return RemoteTarget(
        name=cfg.name or host,
        host=host,
        port=cfg.port,
        user=cfg.user,
        key=_check_ssh_path(cfg.key, "key", where),
        remote_path=cfg.remote_path,
        known_hosts=_check_ssh_path(cfg.known_hosts, "known_hosts", where),
    )


def select_targets(configs: Sequence[TargetConfig], name: str | None) -> list[Target]:
    """Every configured target, or the one called ``name``."""
    targets = [target_from_config(cfg, i) for i, cfg in enumerate(configs)]
    if not targets:
        raise ConfigError("no [[targets]] configured; add one to the config file")
    names = [t.name for t in targets]
    for n in names:
        if names.count(n) > 1:
            raise ConfigError(f"two [[targets]] are called {n!r}; give each its own name")
    if name is None:
        return targets
    for target in targets:
        if target.name == name:
            return [target]
    raise UsageError(f"no target called {name!r} (configured: {', '.join(names)})")


def source_dir(config: Config) -> Path:
    return Path(config.sync.source or config.backup.directory)


# --- the command (pure) ----------------------------------------------------------------------


def rsh_value(argv: Sequence[str]) -> str:
    """``argv`` as one --rsh string; rsync splits it on spaces and honours POSIX single quotes."""
    return " ".join(shlex.quote(arg) for arg in argv)


def rsync_argv(tools: Tools, source: Path, target: Target, settings: SyncConfig) -> list[str]:
    """The whole rsync command for one target, absolute paths throughout.

    The options the receiving side acts on (--delete, --partial-dir, --delay-updates,
    --timeout, --max-delete) reach
    it inside the ``rsync --server`` line, which a forced command replaces: the locked key's
    command must be captured from exactly this argv.
    """
    remote = isinstance(target, RemoteTarget)
    argv = [tools.rsync, "-az" if remote else "-a", "--delete"]
    argv += [f"--partial-dir={PARTIAL_DIR}", "--delay-updates"]
    argv += [f"--timeout={settings.timeout}", f"--max-delete={settings.max_delete}"]
    if settings.bwlimit:
        argv.append(f"--bwlimit={settings.bwlimit}")
    argv.append("--stats")
    # filter rules travel inside the protocol, so they leave the forced command unchanged
    argv += [f"--exclude=/{LOCK_NAME}", f"--exclude=.*{PARTIAL_SUFFIX}"]
    if isinstance(target, RemoteTarget):
        ssh = ssh_argv(
            tools.ssh,
            target.port,
            target.key,
            target.known_hosts,
            connect_timeout=min(settings.timeout, CONNECT_TIMEOUT),
        )
        argv.append(f"--rsh={rsh_value(ssh)}")
    # the trailing slash sends the directory's contents: the copy mirrors the backup directory
    argv += [f"{source}/", target.destination]
    return argv


PROGRESS_OPTION = "--info=progress2"


def with_progress(argv: Sequence[str]) -> list[str]:
    """``argv`` with rsync's whole-transfer progress on its stdout, for a terminal. The option
    stays on this side: the ``rsync --server`` line (and so a locked key's command) is the
    same with it or without."""
    return [argv[0], PROGRESS_OPTION, *argv[1:]]


def display(argv: Sequence[str]) -> str:
    """``argv`` as a line a user can paste into a shell."""
    return shlex.join(argv)


# --- reading the outcome (pure) --------------------------------------------------------------


def judge(exit_code: int, stderr: str, settings: SyncConfig) -> Verdict:
    """What rsync's exit status and stderr mean, and whether another try can help."""
    if exit_code == 0:
        return Verdict(ok=True, retry=False, message="done")
    if any(sign in stderr for sign in _HOST_KEY_SIGNS):
        return Verdict(
            ok=False,
            retry=False,
            message="the receiving host's key is not the one pinned in the known_hosts file "
            "(ssh: Host key verification failed); if the host was really re-installed, verify "
            "its new key out of band and pin it again",
        )
    if exit_code == SSH_EXIT and _AUTH_RE.search(stderr):
        return Verdict(
            ok=False,
            retry=False,
            message="the receiving host refused the key (ssh: Permission denied); "
            "is it installed there, and does its from= allow this address?",
        )
    from keyforge.ssh.rsync_server import RECORDER_NOTICES  # noqa: PLC0415 - only a refused push reads it

    recorder = next(
        (ln.strip() for ln in stderr.splitlines() if ln.strip().startswith(RECORDER_NOTICES)), None
    )
    if recorder is not None:
        return Verdict(
            ok=False,
            retry=False,
            message=f"the receiving host's capture recorder answered, as expected while "
            f"capturing (not retried): {recorder}",
        )
    if exit_code == MAX_DELETE_EXIT:
        return Verdict(
            ok=False,
            retry=False,
            message=f"the run would delete more than max_delete = {settings.max_delete} files "
            "on the copy, so rsync stopped deleting (exit 25); check the backup directory, "
            "and raise [sync] max_delete (and the receiver's forced command) if this is meant",
        )
    meaning = RSYNC_EXITS.get(exit_code, "unknown exit status")
    detail = _last_error_line(stderr)
    message = f"rsync exit {exit_code} ({meaning})"
    if exit_code in FILE_ERROR_EXITS:
        # the key was accepted and rsync ran: say on which side files failed
        side = "this host" if "[sender]" in detail.lower() else "the receiving host"
        message += (
            f": some files could not be read or written on {side} "
            "(the key and the connection worked)"
        )
    message += f": {detail}" if detail else ""
    protocol_trouble = any(sign in stderr for sign in _PROTECTED_SIGNS)
    return Verdict(
        ok=False, retry=exit_code in NETWORK_EXITS and not protocol_trouble, message=message
    )


def _last_error_line(stderr: str) -> str:
    """The most telling line: the first that is not rsync's generic "rsync error:" footer."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        if not line.startswith("rsync error:"):
            return line
    return lines[-1] if lines else ""


def retry_delays(retries: int, first_delay: float, *, cap: float = 3600.0) -> list[float]:
    """Seconds to wait before each retry: first_delay, then doubled, never above ``cap``."""
    return [min(first_delay * 2**i, cap) for i in range(retries)]


def parse_bytes_sent(stats: str) -> int | None:
    """The "Total bytes sent" figure from rsync --stats output, or None when absent."""
    match = _BYTES_SENT_RE.search(stats)
    if match is None:
        return None
    digits = re.sub(r"[^0-9]", "", match.group(1))
    return int(digits) if digits else None


def log_record(report: Report) -> dict[str, Any]:
    return {
        "command": "sync",
        "target": report.target,
        "destination": report.destination,
        "start": report.start.isoformat(timespec="seconds"),
        "end": report.end.isoformat(timespec="seconds"),
        "exit": report.exit,
        "bytes_sent": report.bytes_sent,
        "attempts": report.attempts,
        "ok": report.ok,
        "message": report.message,
    }


def log_line(report: Report) -> str:
    return json.dumps(log_record(report), sort_keys=True, ensure_ascii=True) + "\n"


def summary(report: Report) -> str:
    """The one line printed and sent to syslog for a run."""
    seconds = (report.end - report.start).total_seconds()
    if report.ok:
        sent = "" if report.bytes_sent is None else f", {report.bytes_sent:,} bytes sent"
        tries = "" if report.attempts == 1 else f" after {report.attempts} attempts"
        return f"sync {report.target}: ok in {seconds:.1f} s{sent}{tries}"
    return f"sync {report.target}: FAILED after {report.attempts} attempt(s): {report.message}"


# --- guards (read the file system, change nothing) -------------------------------------------


def read_manifest(path: Path) -> dict[str, Any] | None:
    """A manifest's JSON document when it is an object with an archive list, else None."""
    try:
        document = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(document, dict) or not isinstance(document.get("archives"), list):
        return None
    return document


def is_manifest(path: Path) -> bool:
    """A file keyforge backup wrote: JSON with its format number and an archive list."""
    document = read_manifest(path)
    return document is not None and isinstance(document.get("format"), int)


def check_source(source: Path) -> None:
    """Refuse a source that is not a keyforge backup directory: it would --delete the copy."""
    if not source.is_dir():
        raise KeyforgeError(
            f"refusing to sync: the source {source} is not a directory (is the backup disk "
            "mounted?)"
        )
    # any host's manifest will do: on a receiving host the copy holds the sender's manifests
    if not any(is_manifest(p) for p in source.glob(f"*{MANIFEST_SUFFIX}") if p.is_file()):
        raise KeyforgeError(
            f"refusing to sync: {source} holds no keyforge manifest (*{MANIFEST_SUFFIX}); an "
            "empty or unmounted backup directory would delete the copy. Run 'keyforge backup' "
            "first"
        )


def check_target(source: Path, target: Target) -> None:
    """What can be checked before connecting: the pin and the key, or the mounted drive."""
    if isinstance(target, RemoteTarget):
        _check_readable_file(target.known_hosts, "the pinned known_hosts file", target)
        _check_readable_file(target.key, "the key", target)
        return
    dest = target.path
    src = source.resolve()
    resolved = dest.resolve()
    if resolved == src or src in resolved.parents or resolved in src.parents:
        raise ConfigError(f"target {target.name}: {dest} overlaps the source {source}")
    if target.require_mountpoint and not os.path.ismount(dest):
        raise KeyforgeError(
            f"refusing to sync to {target.name}: {dest} is not a mounted filesystem "
            "(require_mountpoint = true); mount the drive first"
        )


def _check_readable_file(path: Path, what: str, target: RemoteTarget) -> None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        hint = ""
        if path == target.known_hosts:
            hint = (
                "; pin the receiving host's key there (ssh-keyscan -p "
                f"{target.port} {target.host}, checked against the host's own fingerprint)"
            )
        raise FileError(f"target {target.name}: {what} {path} does not exist{hint}") from None
    except OSError as err:
        raise FileError.from_os_error("read", path, err) from err
    if size == 0:
        raise FileError(f"target {target.name}: {what} {path} is empty")


# --- the loss guard: what the last successful push to a target sent -------------------------


def sent_state_path(config: Config, target: Target) -> Path:
    """The list of archives the last successful push to ``target`` sent.

    Named for where the push lands, not only for the target's name: two configs on one host
    may both call their target "pi" while pushing into different directories, and what one
    sent says nothing about what the other's push would delete.
    """
    where = target.destination
    if isinstance(target, RemoteTarget):
        where = f"{where} port {target.port}"
    digest = hashlib.sha256(where.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return state_dir(config) / f"sync-{target.name}-{digest}.json"


# an archive as the guard knows it: its size and its mtime, both kept by every push (-a)
Stamp = tuple[int, int]


def archives_in(source: Path) -> dict[str, Stamp]:
    """The archives in ``source`` (any host's), as a push would send them, with their size
    and mtime: keyforge never rewrites an archive, so another size or mtime is another file."""
    try:
        names = [path.name for path in source.iterdir()]
        found = {}
        for record in archive_records(names):
            st = (source / record.name).stat()
            found[record.name] = (st.st_size, int(st.st_mtime))
    except OSError as err:
        raise FileError.from_os_error("read", source, err) from err
    return found


def read_sent(path: Path) -> dict[str, Stamp]:
    """The archives recorded in ``path``; none when no push succeeded yet."""
    text = fsutil.read_text_if_exists(path)
    if text is None:
        return {}
    try:
        archives = json.loads(text)["archives"]
        return {str(name): (int(size), int(mtime)) for name, (size, mtime) in archives.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise FileError(
            f"cannot read {path}: {err}; it records what the last push sent (removing it "
            "leaves the next push unguarded)"
        ) from err


def unexpired_losses(
    sent: Mapping[str, Stamp], present: Mapping[str, Stamp], today: date, retention_days: int
) -> list[str]:
    """The archives a push would delete or overwrite on the copy that retention keeps.

    ``sent`` is what the last successful push sent, ``present`` what the source holds now. An
    archive may be gone only when retention, judged over both, removes its whole chain today;
    one under the same name with another size or mtime (a fresh history made the same day)
    would overwrite it, which is a loss too.
    """
    changed = {name for name, stamp in sent.items() if present.get(name) != stamp}
    if not changed:
        return []
    records = archive_records(set(sent) | set(present))
    expired = {
        record.name
        for chain in chains_to_remove(records, today, retention_days)
        for record in chain.archives
    }
    return sorted(changed - expired)


def check_losses(config: Config, source: Path, target: Target, today: date) -> dict[str, Stamp]:
    """Refuse a push that would delete or overwrite archives the last push sent and
    retention keeps.

    Returns the archives the source holds now, which a successful push then records.
    ``max_delete`` cannot stand in for this: a whole copy is often fewer files than the limit.
    """
    present = archives_in(source)
    path = sent_state_path(config, target)
    lost = unexpired_losses(read_sent(path), present, today, config.backup.retention_days)
    if lost:
        raise KeyforgeError(
            f"refusing to sync to {target.name}: the push would delete or overwrite "
            f"{len(lost)} archive(s) that the last successful push sent ({path}) and that "
            f"retention ({config.backup.retention_days} days) keeps, e.g. {lost[0]}; is the "
            "backup disk mounted, and is it the right one? Pass --accept-loss to push anyway"
        )
    return present


def record_sent(
    config: Config, target: Target, archives: Mapping[str, Stamp], when: datetime
) -> None:
    """Remember what a successful push sent, outside the backup directory."""
    path = sent_state_path(config, target)
    if not path.parent.is_dir():
        fsutil.ensure_private_dir(path.parent)
    document = {
        "format": 1,
        "target": target.name,
        "destination": target.destination,
        "pushed": when.isoformat(timespec="seconds"),
        "archives": {name: list(archives[name]) for name in sorted(archives)},
    }
    fsutil.atomic_write(path, (json.dumps(document, indent=2) + "\n").encode())


# --- side effects ----------------------------------------------------------------------------


def find_tools() -> Tools:
    """rsync and ssh as absolute paths, found once on PATH."""
    found = {name: tools.find_program(name) for name in ("rsync", "ssh")}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        raise CommandError(f"{' and '.join(missing)} not found on PATH; install it")
    return Tools(rsync=found["rsync"] or "", ssh=found["ssh"] or "")


def append_log(path: Path, report: Report) -> None:
    """Append one JSON line; a single O_APPEND write keeps concurrent lines whole."""
    if not path.parent.is_dir():
        fsutil.ensure_private_dir(path.parent)
    data = log_line(report).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, fsutil.PRIVATE_FILE)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    except OSError as err:
        raise FileError.from_os_error("append to", path, err) from err


def send_syslog(report: Report) -> None:
    syslog.openlog("keyforge", syslog.LOG_PID, syslog.LOG_DAEMON)
    syslog.syslog(syslog.LOG_INFO if report.ok else syslog.LOG_ERR, summary(report))
    syslog.closelog()


def _now() -> datetime:
    return datetime.now(UTC)


@dataclasses.dataclass
class Effects:
    """The outside world a sync touches, replaceable in tests."""

    run: Callable[[Sequence[str]], runner.Result] = dataclasses.field(
        default=lambda argv: runner.run(argv, check=False)
    )
    sleep: Callable[[float], None] = time.sleep
    now: Callable[[], datetime] = _now
    notify: Callable[[str], None] = lambda message: None
    syslog: Callable[[Report], None] = send_syslog


def push(argv: Sequence[str], target: Target, settings: SyncConfig, effects: Effects) -> Report:
    """Run ``argv``, retrying network failures with backoff; never raises for rsync's status."""
    start = effects.now()
    delays = retry_delays(settings.retries, settings.retry_delay)
    attempt = 0
    while True:
        attempt += 1
        result = effects.run(argv)
        verdict = judge(result.returncode, result.stderr, settings)
        if verdict.ok or not verdict.retry or attempt > len(delays):
            break
        delay = delays[attempt - 1]
        effects.notify(
            f"sync {target.name}: {verdict.message}; retry {attempt} of {len(delays)} "
            f"in {delay:g} s"
        )
        effects.sleep(delay)
    stdout = result.stdout.decode("utf-8", errors="replace")
    return Report(
        target=target.name,
        destination=target.destination,
        argv=tuple(argv),
        start=start,
        end=effects.now(),
        exit=result.returncode,
        bytes_sent=parse_bytes_sent(stdout),
        attempts=attempt,
        ok=verdict.ok,
        message=verdict.message,
    )


def refused(target: Target, argv: Sequence[str], err: KeyforgeError, now: datetime) -> Report:
    return Report(
        target=target.name,
        destination=target.destination,
        argv=tuple(argv),
        start=now,
        end=now,
        exit=None,
        bytes_sent=None,
        attempts=0,
        ok=False,
        message=str(err),
    )


@dataclasses.dataclass(frozen=True)
class Plan:
    """The commands a sync would run, one per target, and the source they send."""

    source: Path
    commands: tuple[tuple[Target, tuple[str, ...]], ...]
    # targets whose [[targets]] source differs from [sync] source, by name
    own_sources: Mapping[str, Path] = dataclasses.field(default_factory=dict)

    def source_for(self, target: Target) -> Path:
        return self.own_sources.get(target.name, self.source)

    def by_source(self) -> dict[Path, list[tuple[Target, tuple[str, ...]]]]:
        """The commands grouped by what they send, in the config's order: one lock each."""
        groups: dict[Path, list[tuple[Target, tuple[str, ...]]]] = {}
        for target, argv in self.commands:
            groups.setdefault(self.source_for(target), []).append((target, argv))
        return groups


def target_sources(config: Config) -> dict[str, Path]:
    """The targets with a source of their own ([[targets]] source), by target name."""
    targets = zip(select_targets(config.targets, None), config.targets, strict=True)
    return {target.name: Path(cfg.source) for target, cfg in targets if cfg.source}


def plan(config: Config, target_name: str | None, tools: Tools) -> Plan:
    source = source_dir(config)
    targets = select_targets(config.targets, target_name)
    own = {n: p for n, p in target_sources(config).items() if any(t.name == n for t in targets)}
    commands = tuple(
        (t, tuple(rsync_argv(tools, own.get(t.name, source), t, config.sync))) for t in targets
    )
    return Plan(source, commands, own)


def dry_run(
    config: Config, target_name: str | None, tools: Tools, *, accept_loss: bool = False
) -> list[str]:
    """The commands, checked but not run; nothing connects anywhere."""
    the_plan = plan(config, target_name, tools)
    for source, commands in the_plan.by_source().items():
        check_source(source)
        for target, _ in commands:
            check_target(source, target)
            if not accept_loss:
                check_losses(config, source, target, datetime.now().date())
    return [display(argv) for _, argv in the_plan.commands]


def server_commands(
    config: Config, target_name: str | None, tools: Tools
) -> list[tuple[RemoteTarget, str]]:
    """The ``rsync --server`` line each remote target will be asked to run, connecting nowhere.

    Learnt from this sync's own rsync argv with a recording remote shell (``capture local``),
    so the line to lock the key to matches what ``keyforge sync`` sends, flags included. Works
    before the first backup: nothing is sent, so the manifest guard has nothing to guard.
    """
    from keyforge.sender import capture_local  # noqa: PLC0415 - only this path needs the recorder

    the_plan = plan(config, target_name, tools)
    remote = [(t, argv) for t, argv in the_plan.commands if isinstance(t, RemoteTarget)]
    if not remote:
        raise UsageError("no remote [[targets]]: a local target runs no rsync server")
    return [(target, capture_local.capture_local(argv).command) for target, argv in remote]


def sync(
    config: Config,
    target_name: str | None,
    *,
    wait: bool = False,
    accept_loss: bool = False,
    tools: Tools | None = None,
    effects: Effects | None = None,
) -> list[Report]:
    """Push the source to each target under the backup lock; log and syslog every run.

    A refused or failed target does not stop the next one; the caller turns the reports into
    an exit status. ``wait`` waits for a running backup instead of refusing at once;
    ``accept_loss`` pushes even when the copy would lose archives retention keeps.
    """
    effects = effects or Effects()
    the_plan = plan(config, target_name, tools or find_tools())
    log = Path(config.sync.log)
    reports: list[Report] = []

    def record(report: Report) -> None:
        append_log(log, report)
        effects.syslog(report)
        reports.append(report)

    groups = the_plan.by_source()
    first_error: KeyforgeError | None = None
    for source, commands in list(groups.items()):
        try:
            check_source(source)
        except KeyforgeError as err:
            for target, argv in commands:
                record(refused(target, argv, err, effects.now()))
            first_error = first_error or err
            del groups[source]
    if not groups and first_error is not None:
        raise first_error  # nothing to send at all: one line says why
    for source, commands in groups.items():
        # the same lock as keyforge backup: never send a directory while a backup rewrites it
        with fsutil.locked(lock_path(source), wait=wait):
            for target, argv in commands:
                _push_one(config, (source, target, argv), accept_loss, effects, record)
    return reports


def _push_one(
    config: Config,
    job: tuple[Path, Target, Sequence[str]],
    accept_loss: bool,
    effects: Effects,
    record: Callable[[Report], None],
) -> None:
    """One target's checks and push, recorded; a refusal is recorded, never raised."""
    source, target, argv = job
    try:
        # again before each target: the wait for the lock or the last push left time
        # for the backup disk to be unmounted
        check_source(source)
        check_target(source, target)
        today = effects.now().astimezone().date()
        if accept_loss:
            sending = archives_in(source)
        else:
            sending = check_losses(config, source, target, today)
    except KeyforgeError as err:
        record(refused(target, argv, err, effects.now()))
        return
    report = push(argv, target, config.sync, effects)
    record(report)
    if report.ok:
        try:
            record_sent(config, target, sending, report.end)
        except KeyforgeError as err:
            effects.notify(f"sync {target.name}: pushed, but {err}")
