"""The daily local backup: GNU tar --listed-incremental archives, one per source per run.

Chain semantics (backup-manager's): a run makes a "master" (level 0) on the configured day, on
``--full`` or when a source has no usable chain, and otherwise an incremental relative to the
*previous run* of that source. A chain is a master and the incrementals after it, up to the next
master; restoring a date applies the chain's archives in order, up to that date.

The top half of this module is pure (names, chains, retention, argv lists) so it is tested with
faked dates; the bottom half runs those plans through ``runner`` and ``fsutil``:
work happens under ``.NAME.partial`` names renamed only when complete, tar's snapshot file is
copied and committed only after its archive is, and one lock in the backup directory (shared with
the sync runner) keeps two runs from overlapping.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fnmatch
import hashlib
import json
import os
import re
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from keyforge import age, signing
from keyforge.config import WEEKDAYS, BackupConfig, Config
from keyforge.errors import CommandError, ConfigError, FileError, KeyforgeError
from keyforge.infra import fsutil, runner
from keyforge.layout import (
    INCREMENTAL,
    MANIFEST_NAME,
    MASTER,
    PARTIAL_SUFFIX,
    SNAPSHOT_DIR,
    ArchiveEntry,
    ArchiveRecord,
    ManifestLink,
    archive_name,
    backup_lock,
    index_json,
    is_encrypted_name,
    manifest_json,
    manifest_name,
    new_stamp,
    parse_archive_name,
    parse_dump_name,
    read_manifests,
    run_manifests,
    signature_path,
    source_slug,
    stamp_key,
    work_snapshot_of,
)
from keyforge.sender import dumps, pipeline

# the argv planners live with the pipeline that runs them; these names stay importable here
compress_argv = pipeline.compress_argv
decompress_argv = pipeline.decompress_argv
test_stdin_argv = pipeline.test_stdin_argv

# GNU tar exits 1 when a file changed while it was read: the archive is usable, so a warning
TAR_WARNING_EXIT = 1

# What keyforge keeps that backup-manager's defaults lose; --no-check-device because a device
# number that changes across reboots (LVM, NFS) would otherwise turn every run into a full.
TAR_METADATA_OPTIONS = (
    "--xattrs",
    "--xattrs-include=*",
    "--acls",
    "--sparse",
    "--numeric-owner",
    "--no-check-device",
)


# --- names -----------------------------------------------------------------------------------


def check_sources(backup: BackupConfig) -> None:
    """Sources must name distinct archives and never contain nor be the backup directory."""
    seen: dict[str, str] = {}
    backup_dir = Path(backup.directory)
    for source in backup.sources:
        slug = source_slug(source)
        if slug in seen:
            raise ConfigError(
                f"[backup] sources {seen[slug]!r} and {source!r} would share archive name {slug!r}"
            )
        seen[slug] = source
        if backup_dir == Path(source) or Path(source).is_relative_to(backup_dir):
            raise ConfigError(
                f"[backup] source {source!r} is inside the backup directory {backup_dir}"
            )
    if backup.compression != "zstd" and backup.compression_level > 9:
        raise ConfigError(
            f"[backup] compression_level must be between 1 and 9 for {backup.compression}, "
            f"got {backup.compression_level}"
        )


# --- chains and retention (pure) -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Chain:
    """A master and the incrementals after it; ``master`` is None for orphaned incrementals."""

    slug: str
    archives: tuple[ArchiveRecord, ...]

    @property
    def master(self) -> ArchiveRecord | None:
        first = self.archives[0]
        return first if first.kind == MASTER else None

    @property
    def newest(self) -> ArchiveRecord:
        return self.archives[-1]

    @property
    def name(self) -> str:
        return self.archives[0].name


def chains_of(records: Iterable[ArchiveRecord]) -> dict[str, list[Chain]]:
    """Group archives into chains per source slug, oldest chain first."""
    by_slug: dict[str, list[ArchiveRecord]] = {}
    for record in sorted(records):
        by_slug.setdefault(record.slug, []).append(record)
    result: dict[str, list[Chain]] = {}
    for slug, ordered in by_slug.items():
        groups: list[list[ArchiveRecord]] = []
        for record in ordered:
            if record.kind == MASTER or not groups:
                groups.append([record])
            else:
                groups[-1].append(record)
        result[slug] = [Chain(slug, tuple(group)) for group in groups]
    return result


def chains_to_remove(
    records: Iterable[ArchiveRecord], today: dt.date, retention_days: int
) -> list[Chain]:
    """The whole chains retention removes.

    A chain goes only when its newest archive is older than ``retention_days`` before ``today``
    (so every day inside the window stays restorable), and never the newest chain that has a
    master: a server whose backups stopped must not prune itself down to nothing.
    """
    cutoff = today - dt.timedelta(days=retention_days)
    doomed: list[Chain] = []
    for chains in chains_of(records).values():
        with_master = [c for c in chains if c.master is not None]
        keep = with_master[-1] if with_master else None
        for chain in chains:
            if chain is keep:
                continue
            if chain.newest.when.date() < cutoff:
                doomed.append(chain)
    return doomed


def full_is_due(
    latest: Chain | None,
    now: dt.datetime,
    full_every: str | int,
    *,
    has_snapshot: bool,
    same_encryption: bool = True,
) -> bool:
    """Whether this run of a source starts a new chain with a master.

    A chain is never half encrypted nor encrypted to two sets of keys: turning encryption on
    or off, or changing its recipients (``same_encryption`` False) starts a new one.
    """
    if latest is None or latest.master is None or not has_snapshot or not same_encryption:
        return True
    master_day = latest.master.when.date()
    if isinstance(full_every, int):
        return (now.date() - master_day).days >= full_every
    return WEEKDAYS[now.weekday()] == full_every and master_day != now.date()


def select_for_restore(
    records: Iterable[ArchiveRecord], slug: str, at: dt.date | None
) -> list[ArchiveRecord]:
    """The archives to apply, in order, to rebuild ``slug`` as of the end of day ``at``."""
    chains = chains_of(records).get(slug, [])
    usable = [c for c in chains if c.master is not None]
    for chain in reversed(usable):
        wanted = [a for a in chain.archives if at is None or a.when.date() <= at]
        if wanted and wanted[0].kind == MASTER:
            return wanted
    return []


# --- argv planners (pure) --------------------------------------------------------------------


def exclude_options(source: str, backup_dir: str, patterns: Sequence[str]) -> list[str]:
    """tar --exclude options for one source, the backup directory first.

    Absolute patterns become anchored literal member names (./sub/dir) when they lie under the
    source and are dropped otherwise; other patterns are globs matched against any name.
    """
    anchored: list[str] = []
    for path in (backup_dir, *[p for p in patterns if p.startswith("/")]):
        inside = Path(path)
        if inside != Path(source) and inside.is_relative_to(source):
            anchored.append("./" + inside.relative_to(source).as_posix())
    globs = [p for p in patterns if not p.startswith("/")]
    options: list[str] = []
    if anchored:
        options += ["--anchored", "--no-wildcards"] + [f"--exclude={a}" for a in anchored]
    if globs:
        # --no-wildcards again after them: GNU tar 1.34 also matches the "." operand in
        # wildcard mode, and with --listed-incremental it then leaves out every directory
        # entry (their modes, owners and mtimes), though it still archives the files
        options += ["--no-anchored", "--wildcards"] + [f"--exclude={g}" for g in globs]
        options.append("--no-wildcards")
    return options


def tar_create_argv(
    source: str, snapshot: Path, backup: BackupConfig, *, exclude: Sequence[str] = ()
) -> list[str]:
    argv = [
        "tar",
        "--create",
        "--file=-",
        f"--listed-incremental={snapshot}",
        *TAR_METADATA_OPTIONS,
    ]
    if backup.one_file_system:
        argv.append("--one-file-system")
    argv += exclude_options(source, backup.directory, [*backup.exclude, *exclude])
    argv += [f"--directory={source}", "."]
    return argv


def tar_extract_argv(destination: Path, *, same_owner: bool = True) -> list[str]:
    """``same_owner=False`` for a user who cannot chown: the files become that user's (tar's
    --no-same-owner) instead of tar stopping at the first owner it cannot give back."""
    # /dev/null as snapshot: incremental extraction, which deletes what the dumps say is gone
    return [
        "tar",
        "--extract",
        "--file=-",
        "--listed-incremental=/dev/null",
        "--xattrs",
        "--xattrs-include=*",
        "--acls",
        "--numeric-owner",
        "--same-owner" if same_owner else "--no-same-owner",
        "--same-permissions",
        f"--directory={destination}",
    ]


def priority_of(backup: BackupConfig) -> runner.Priority:
    return runner.Priority(nice=backup.nice, ionice=backup.ionice)


# --- manifest --------------------------------------------------------------------------------


# --- the edge: scanning, locking, running ------------------------------------------------------


class Reporter(Protocol):
    """How a run tells its progress: a terminal display or one log line under cron."""

    def progress(self, source: str, written: int, elapsed: float) -> None: ...

    def archive_done(self, entry: ArchiveEntry, elapsed: float) -> None: ...

    def warn(self, message: str) -> None: ...


class SilentReporter:
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def progress(self, source: str, written: int, elapsed: float) -> None:
        pass

    def archive_done(self, entry: ArchiveEntry, elapsed: float) -> None:
        pass

    def warn(self, message: str) -> None:
        self.warnings.append(message)


@dataclasses.dataclass(frozen=True)
class PlannedArchive:
    source: str
    slug: str
    kind: str
    name: str
    chain: str
    snapshot: Path
    tar_argv: tuple[str, ...]
    compress_argv: tuple[str, ...]
    # age --encrypt with the recipients (public keys), or () for a plaintext archive
    encrypt_argv: tuple[str, ...] = ()

    @property
    def work_snapshot(self) -> Path:
        return work_snapshot_of(self.snapshot)


@dataclasses.dataclass(frozen=True)
class BackupPlan:
    stamp: str
    started: dt.datetime
    archives: tuple[PlannedArchive, ...]
    prune: tuple[Chain, ...]


@dataclasses.dataclass(frozen=True)
class BackupReport:
    plan: BackupPlan
    entries: tuple[ArchiveEntry, ...]
    pruned: tuple[Chain, ...]
    warnings: tuple[str, ...]
    seconds: float
    # one line per source that failed ("/var: No space left on device")
    failures: tuple[str, ...] = ()
    # the [[dumps]] streams tried (each database of an entry is one)
    dumps_tried: int = 0


class SourcesFailedError(KeyforgeError):
    """Some sources could not be backed up; the others were. ``report`` says what was made."""

    def __init__(self, report: BackupReport, first: KeyforgeError) -> None:
        total = len(report.plan.archives) + report.dumps_tried
        what = "source(s) and dump(s)" if report.dumps_tried else "source(s)"
        super().__init__(
            f"backup failed for {len(report.failures)} of {total} {what}: "
            + "; ".join(report.failures)
        )
        self.report = report
        self.exit_code = first.exit_code


def scan_archives(config: Config) -> list[ArchiveRecord]:
    """The committed archives of the configured host and sources in the backup directory."""
    slugs = [source_slug(s) for s in config.backup.sources]
    try:
        names = [p.name for p in config.backup_dir.iterdir()]
    except FileNotFoundError:
        return []
    except OSError as err:
        raise FileError.from_os_error("read", config.backup_dir, err) from err
    records = [parse_archive_name(n, config.host, slugs) for n in names]
    # dumps by their own names: an entry removed from the config still ages out
    records += [parse_dump_name(n, config.host) for n in names]
    return sorted(r for r in records if r is not None)


def snapshot_path(config: Config, slug: str) -> Path:
    return config.backup_dir / SNAPSHOT_DIR / f"{config.host}-{slug}.snar"


def _taken_stamps(config: Config, records: Iterable[ArchiveRecord]) -> set[str]:
    return {r.stamp for r in records} | set(run_manifests(config.backup_dir, config.host))


def recipients_of(backup: BackupConfig) -> tuple[age.Recipient, ...]:
    """``[backup] encrypt_to`` as recipients (the config's check already parsed each one)."""
    return age.parse_recipients(backup.encrypt_to)


def chain_encrypted_to(
    chain: Chain, recorded: Mapping[str, Mapping[str, Any]]
) -> tuple[str, ...] | None:
    """The recipients' fingerprints the chain's newest archive is encrypted to: () for a
    plaintext one, None when an encrypted archive's manifest entry is missing (unknown keys)."""
    newest = chain.newest.name
    if not is_encrypted_name(newest):
        return ()
    value = recorded.get(newest, {}).get("encrypted_to")
    return tuple(sorted(value)) if isinstance(value, list | tuple) and value else None


def plan_backup(
    config: Config,
    records: Sequence[ArchiveRecord],
    now: dt.datetime,
    *,
    force_full: bool,
    taken_stamps: Iterable[str] = (),
    recorded: Mapping[str, Mapping[str, Any]] | None = None,
) -> BackupPlan:
    """What a run will make, given the archives already there (pure but for snapshot presence).

    ``recorded`` holds the manifests' entries by archive name: a chain whose encryption
    differs from ``[backup] encrypt_to`` ends, and a new master starts.
    """
    backup = config.backup
    stamp = new_stamp(now, [*taken_stamps, *(r.stamp for r in records)])
    chains = chains_of(records)
    recipients = recipients_of(backup)
    encrypt_to = age.fingerprints(recipients)
    planned: list[PlannedArchive] = []
    for source in backup.sources:
        slug = source_slug(source)
        latest = chains.get(slug, [None])[-1]
        snapshot = snapshot_path(config, slug)
        same = latest is None or chain_encrypted_to(latest, recorded or {}) == encrypt_to
        full = force_full or full_is_due(
            latest, now, backup.full_every, has_snapshot=snapshot.exists(), same_encryption=same
        )
        kind = MASTER if full else INCREMENTAL
        name = archive_name(
            config.host, slug, stamp, kind, backup.compression, encrypted=bool(encrypt_to)
        )
        chain = name if full or latest is None else latest.name
        planned.append(
            PlannedArchive(
                source=source,
                slug=slug,
                kind=kind,
                name=name,
                chain=chain,
                snapshot=snapshot,
                tar_argv=tuple(
                    tar_create_argv(
                        source, work_snapshot_of(snapshot), backup, exclude=secret_excludes(backup)
                    )
                ),
                compress_argv=tuple(compress_argv(backup.compression, backup.compression_level)),
                encrypt_argv=tuple(age.age_encrypt_argv(recipients)) if recipients else (),
            )
        )
    future = [
        *records,
        *(ArchiveRecord(stamp_key(stamp), p.slug, p.kind, p.name, stamp) for p in planned),
    ]
    prune = chains_to_remove(future, now.date(), backup.retention_days)
    return BackupPlan(stamp, now, tuple(planned), tuple(prune))


def secret_excludes(backup: BackupConfig) -> list[str]:
    """What no archive may hold: the manifest-signing key (both halves' names), which would
    let whoever reads an archive sign manifests as this server."""
    if not backup.signing_key:
        return []
    return [backup.signing_key]


def check_sources_exist(sources: Iterable[str]) -> None:
    for source in sources:
        try:
            st = Path(source).stat()
        except FileNotFoundError:
            raise FileError(f"source {source} does not exist") from None
        except OSError as err:
            raise FileError.from_os_error("read source", source, err) from err
        if not stat.S_ISDIR(st.st_mode):
            raise FileError(f"source {source} is not a directory")


def check_backup_disk(backup: BackupConfig) -> None:
    """With require_mountpoint, refuse a backup directory that is not on a mounted disk.

    Without this guard an unmounted disk is a plain directory on the root filesystem: the run
    would make fresh masters there, a new history the next sync would push over the old one.
    """
    required = backup.require_mountpoint
    if required is False:
        return
    directory = Path(backup.directory)
    found = fsutil.mount_point_of(directory)
    state = "does not exist" if not directory.exists() else "is not on a mounted filesystem"
    if required is True:
        if found != Path("/"):
            return
        raise KeyforgeError(
            f"refusing to back up: {directory} {state}, it would lie on the root filesystem "
            "(require_mountpoint = true); mount the backup disk"
        )
    if fsutil.lies_on_mount(directory, Path(required)):
        return
    raise KeyforgeError(
        f"refusing to back up: {directory} {state}: nothing is mounted on {required}, it would "
        f"lie on the filesystem of {found} (require_mountpoint = {required!r}); mount the "
        "backup disk"
    )


@dataclasses.dataclass(frozen=True)
class SourceSize:
    """What a source holds, as its archive would: entries below it and their bytes."""

    files: int
    bytes: int


def measure_source(source: str, backup: BackupConfig) -> SourceSize:
    """Count the entries and bytes tar would read from ``source``: the backup directory, the
    absolute excludes and the glob excludes left out, other filesystems too with
    one_file_system. Unreadable directories are skipped: tar reports them itself."""
    skipped = {str(Path(p)) for p in (backup.directory, *backup.exclude) if p.startswith("/")}
    globs = [fnmatch.translate(p) for p in backup.exclude if not p.startswith("/")]
    # one pattern for all the globs: the walk visits every entry of the source
    excluded = re.compile("|".join(globs)).match if globs else lambda _name: None
    files = size = 0
    device = os.lstat(source).st_dev
    pending = [source]
    while pending:
        directory = pending.pop()
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    if excluded(entry.name) is not None or entry.path in skipped:
                        continue
                    st = entry.stat(follow_symlinks=False)
                    files += 1
                    if stat.S_ISDIR(st.st_mode):
                        if not backup.one_file_system or st.st_dev == device:
                            pending.append(entry.path)
                    elif stat.S_ISREG(st.st_mode):
                        size += st.st_size
        except OSError:
            continue
    return SourceSize(files, size)


def content_alerts(
    source: str, now: SourceSize, last_master: dict[str, Any] | None, backup: BackupConfig
) -> tuple[str, ...]:
    """Warnings for a source that is empty, or holds shrink_warn_percent fewer bytes than at
    its last master: an unmounted /home or a wiped /var would otherwise be archived as if all
    were well, and retention would later age out the last good chain."""
    if source in backup.allow_empty:
        return ()
    if now.files == 0:
        return (f"{source} is empty; if it is meant to be, add it to [backup] allow_empty",)
    before = last_master.get("source_bytes") if last_master else None
    percent = backup.shrink_warn_percent
    if percent and isinstance(before, int) and before > 0:
        lost = 100 * (before - now.bytes) / before
        if lost > percent:
            name = last_master.get("name", "?") if last_master else "?"
            return (
                f"{source} holds {human_size(now.bytes)}, {lost:.0f}% less than "
                f"{human_size(before)} at its last master {name} "
                f"(shrink_warn_percent = {percent}); is it mounted, was it wiped?",
            )
    return ()


def same_filesystem_warnings(backup_dir: Path, sources: Iterable[str]) -> list[str]:
    try:
        device = backup_dir.stat().st_dev
    except OSError:
        return []
    shared = [s for s in sources if Path(s).stat().st_dev == device]
    if not shared:
        return []
    return [
        f"backup directory {backup_dir} is on the same filesystem as {', '.join(shared)}; "
        "a separate disk or partition survives that filesystem's loss"
    ]


def prepare_backup_dir(backup_dir: Path) -> list[str]:
    """Create the backup directory 0700 when missing; warn when an existing one is open."""
    fsutil.ensure_private_dir(backup_dir)
    fsutil.ensure_private_dir(backup_dir / SNAPSHOT_DIR)
    mode = stat.S_IMODE(backup_dir.stat().st_mode)
    if mode & 0o077:
        return [f"backup directory {backup_dir} has mode {mode:04o}; 0700 keeps it root-only"]
    return []


def remove_leftovers(backup_dir: Path) -> list[Path]:
    """Delete what a killed run left behind (.NAME.partial); only ever called under the lock."""
    removed: list[Path] = []
    for directory in (backup_dir, backup_dir / SNAPSHOT_DIR):
        for path in directory.glob(f".*{PARTIAL_SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


def write_index(config: Config, now: dt.datetime, key: signing.SigningKey | None) -> None:
    """Rewrite MANIFEST_NAME: every archive present, with its size, hash and chain, signed
    with ``key`` (the run's, loaded once: ``signing_key_of``)."""
    backup_dir = config.backup_dir
    recorded = read_manifests(backup_dir, config.host)
    present = scan_archives(config)
    data = index_json(config.host, now, [recorded[r.name] for r in present if r.name in recorded])
    signing.write_signed(backup_dir / MANIFEST_NAME, data, key)


def signing_key_of(config: Config) -> signing.SigningKey | None:
    """[backup] signing_key, loaded, or None when manifests go unsigned."""
    if not config.backup.signing_key:
        return None
    path = Path(config.backup.signing_key)
    signing.check_key_placement(path, config.backup_dir)
    return signing.load_key(path)


@dataclasses.dataclass(frozen=True)
class RunLink:
    """What a run takes from the run before it: the link its manifest carries, and whether
    every source must start a new master because the signing key changed."""

    previous: ManifestLink | None
    new_key: str | None  # the announcement, when the signer changed


def link_to_last_run(config: Config, key: signing.SigningKey | None) -> RunLink:
    """The newest run manifest's name and hash; a new master is due when it was signed by
    another key (or by none), or its signature no longer matches it (a run killed between
    writing the manifest and its signature): a chain is signed by one key from its master on."""
    runs = run_manifests(config.backup_dir, config.host)
    if not runs:
        return RunLink(None, None)
    last = runs[max(runs, key=stamp_key)]
    try:
        data = last.read_bytes()
    except OSError as err:
        raise FileError.from_os_error("read manifest", last, err) from err
    link = ManifestLink(last.name, hashlib.sha256(data).hexdigest())
    mine = key.fingerprint if key is not None else None
    try:
        before = signer_of(last, data)
    except ValueError:
        if mine is None:
            return RunLink(link, None)
        return RunLink(
            link,
            f"{last.name} has a signature that does not match it (a run killed while "
            "signing?): every source starts a new master",
        )
    if before == mine:
        return RunLink(link, None)
    if mine is None:
        return RunLink(
            link, f"manifests are no longer signed (the last run was signed by {before})"
        )
    return RunLink(
        link,
        f"new manifest-signing key {mine} (the last run, {last.name}, was signed by "
        f"{before or 'no key'}): every source starts a new master",
    )


def signer_of(manifest: Path, data: bytes) -> str | None:
    """The fingerprint of the key whose signature beside ``manifest`` matches ``data``, None
    when it has none; ValueError when the signature does not match."""
    from keyforge.ssh import sshsig  # noqa: PLC0415

    try:
        armored = signature_path(manifest).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise FileError.from_os_error("read signature", signature_path(manifest), err) from err
    return sshsig.check(armored, data, signing.NAMESPACE).fingerprint


def _tar_messages(stderr: str) -> list[str]:
    """tar's non-empty lines, without its closing "Exiting with failure status"."""
    return [
        ln for ln in stderr.splitlines() if ln.strip() and "Exiting with failure status" not in ln
    ]


def _tar_failure(result: runner.Result, source: str) -> str:
    lines = _tar_messages(result.stderr)
    detail = lines[-1].strip() if lines else f"exit status {result.returncode}"
    return f"tar failed on {source}: {detail}"


def _discard(*paths: Path) -> None:
    """Remove what a failed step left; a failure here must not hide the one being raised."""
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink()


def make_archive(config: Config, item: PlannedArchive, reporter: Reporter) -> ArchiveEntry:
    """Write one archive and its new snapshot under temporary names; commit the archive.

    ``pipeline.write_archive`` runs tar into the compressor (and age, with ``encrypt_to``),
    hashes the file as it grows, checks it (``test_archives``) and renames it to its final name
    only after tar (0 or its warning 1), every other program, the check and the fsync all
    succeeded.

    Returns the entry; the snapshot stays at its temporary name until ``commit_snapshot``,
    which the caller runs only after the manifest lists the archive.
    """
    backup = config.backup
    work_snapshot = item.work_snapshot
    started = time.monotonic()
    try:
        if item.kind == INCREMENTAL:
            shutil.copyfile(item.snapshot, work_snapshot)
        else:
            with contextlib.suppress(FileNotFoundError):
                work_snapshot.unlink()
    except OSError as err:
        _discard(work_snapshot)
        raise FileError.from_os_error("write in", config.backup_dir, err) from err

    def judge_tar(result: runner.Result) -> None:
        if result.returncode > TAR_WARNING_EXIT or result.returncode < 0:
            raise CommandError(_tar_failure(result, item.source))

    try:
        written = pipeline.write_archive(
            config.backup_dir / item.name,
            item.tar_argv,
            compression=backup.compression,
            level=backup.compression_level,
            recipients=recipients_of(backup),
            test=backup.test_archives,
            priority=priority_of(backup),
            judge_producer=judge_tar,
            on_progress=lambda size: reporter.progress(
                item.source, size, time.monotonic() - started
            ),
        )
    except BaseException:
        _discard(work_snapshot)
        raise
    warnings = tuple(
        f"{item.source}: {ln.removeprefix('tar: ').strip()}"
        for ln in _tar_messages(written.producer.stderr)
    )
    entry = ArchiveEntry(
        name=item.name,
        source=item.source,
        kind=item.kind,
        chain=item.chain,
        size=written.size,
        digest=written.digest,
        warnings=warnings,
        encrypted_to=written.encrypted_to,
    )
    for warning in warnings:
        reporter.warn(warning)
    reporter.archive_done(entry, time.monotonic() - started)
    return entry


def commit_snapshot(item: PlannedArchive) -> None:
    item.work_snapshot.chmod(fsutil.PRIVATE_FILE)
    item.work_snapshot.replace(item.snapshot)
    fsutil.fsync_dir(item.snapshot.parent)


def remove_chains(config: Config, chains: Iterable[Chain]) -> None:
    """Delete whole chains, newest archive first so a crash never leaves a chain without its
    master but with incrementals; then the manifests that no longer list any archive."""
    backup_dir = config.backup_dir
    for chain in chains:
        for record in reversed(chain.archives):
            try:
                (backup_dir / record.name).unlink()
            except FileNotFoundError:
                pass
            except OSError as err:
                raise FileError.from_os_error("remove", backup_dir / record.name, err) from err
    present = {p.name for p in backup_dir.iterdir()}
    runs = run_manifests(backup_dir, config.host)
    # oldest first, and only until the first one still listing an archive: each run manifest
    # names the one before it, so one in the middle stays to keep the later chains linked
    for stamp in sorted(runs, key=stamp_key):
        path = runs[stamp]
        try:
            document = json.loads(path.read_text())
            names = {a["name"] for a in document["archives"]}
        except (OSError, ValueError, KeyError, TypeError):
            break
        if not names or names & present:
            break
        path.unlink()
        with contextlib.suppress(FileNotFoundError):
            signature_path(path).unlink()
    fsutil.fsync_dir(backup_dir)


def _plan_from_disk(config: Config, now: dt.datetime, *, force_full: bool) -> BackupPlan:
    records = scan_archives(config)
    taken = _taken_stamps(config, records)
    recorded = read_manifests(config.backup_dir, config.host)
    return plan_backup(
        config, records, now, force_full=force_full, taken_stamps=taken, recorded=recorded
    )


def expired_chains(config: Config, now: dt.datetime) -> list[Chain]:
    """The chains on disk that retention removes at ``now``."""
    return chains_to_remove(scan_archives(config), now.date(), config.backup.retention_days)


def run_backup(
    config: Config,
    *,
    force_full: bool = False,
    dry_run: bool = False,
    allow_empty: bool = False,
    now: dt.datetime | None = None,
    reporter: Reporter | None = None,
) -> BackupReport:
    """One backup run: every source archived, the manifest written, retention applied.

    A source that fails (it vanished, tar failed, the disk filled up) leaves nothing behind
    and does not stop the others; once every source was tried, SourcesFailedError names each
    failure and nothing is pruned. ``allow_empty`` silences the empty and shrink warnings.
    """
    reporter = reporter or SilentReporter()
    now = now or dt.datetime.now()
    check_sources(config.backup)
    dumps.check_dumps(config)
    check_backup_disk(config.backup)
    backup_dir = config.backup_dir
    started = time.monotonic()
    if dry_run:
        check_sources_exist(config.backup.sources)
        return BackupReport(_plan_from_disk(config, now, force_full=force_full), (), (), (), 0.0)

    warnings = prepare_backup_dir(backup_dir)
    present = [s for s in config.backup.sources if Path(s).is_dir()]
    warnings += same_filesystem_warnings(backup_dir, present)
    for warning in warnings:
        reporter.warn(warning)
    key = signing_key_of(config)
    with backup_lock(backup_dir):
        remove_leftovers(backup_dir)
        link = link_to_last_run(config, key)
        if link.new_key is not None:
            reporter.warn(link.new_key)
        new_master = force_full or (link.new_key is not None and key is not None)
        plan = _plan_from_disk(config, now, force_full=new_master)
        run = _SourceRun(config, plan, now, reporter, allow_empty=allow_empty, key=key, link=link)
        for item in plan.archives:
            run.archive(item)
        run.dump_all()
        warnings += run.warnings
        pruned: list[Chain] = []
        if run.first_error is None:
            # retention from what is on disk now, and only after a run where every source
            # succeeded: a failed source must never cost a chain
            pruned = expired_chains(config, now)
            remove_chains(config, pruned)
            if pruned:
                write_index(config, now, key)
    report = BackupReport(
        plan,
        tuple(run.entries),
        tuple(pruned),
        tuple(warnings),
        time.monotonic() - started,
        tuple(run.failures),
        run.tried - len(plan.archives),
    )
    if run.first_error is not None and run.tried == 1 and not run.entries:
        raise run.first_error  # the one source (or dump): its own error says it all
    if run.first_error is not None:
        raise SourcesFailedError(report, run.first_error)
    return report


class _SourceRun:
    """The sources of one run, each archived and committed on its own: a failing source
    leaves nothing behind and is remembered, and the next one is tried."""

    def __init__(
        self,
        config: Config,
        plan: BackupPlan,
        now: dt.datetime,
        reporter: Reporter,
        *,
        allow_empty: bool,
        key: signing.SigningKey | None = None,
        link: RunLink | None = None,
    ) -> None:
        self.key = key
        self.previous = link.previous if link is not None else None
        self.config = config
        self.plan = plan
        self.now = now
        self.reporter = reporter
        self.allow_empty = allow_empty
        self.masters = _last_masters(config)
        self.manifest = config.backup_dir / manifest_name(config.host, plan.stamp)
        self.entries: list[ArchiveEntry] = []
        self.warnings: list[str] = []
        self.failures: list[str] = []
        self.first_error: KeyforgeError | None = None
        self.tried = len(plan.archives)

    def _failed(self, what: str, err: KeyforgeError) -> None:
        self.first_error = self.first_error or err
        self.failures.append(str(err) if what in str(err) else f"{what}: {err}")

    def archive(self, item: PlannedArchive) -> None:
        config = self.config
        try:
            entry = _archive_source(
                config, item, self.masters, self.reporter, allow_empty=self.allow_empty
            )
            self.write_manifest([*self.entries, entry])
        except KeyforgeError as err:
            # an archive no manifest lists would look complete yet be unverifiable
            _discard(config.backup_dir / item.name, item.work_snapshot)
            self._failed(item.source, err)
            self.reporter.warn(f"{item.source} not backed up: {err}")
            return
        except BaseException:
            _discard(config.backup_dir / item.name, item.work_snapshot)
            raise
        self.entries.append(entry)
        commit_snapshot(item)
        self.warnings += [*entry.warnings, *entry.alerts]
        try:
            write_index(config, self.now, self.key)
        except KeyforgeError as err:
            # the archive is complete and its run manifest lists it; only the index lags
            self._failed(MANIFEST_NAME, err)

    def write_manifest(self, entries: Sequence[ArchiveEntry]) -> None:
        """The run manifest listing ``entries``, linked to the last run and signed (with
        [backup] signing_key): one writer for a source's archive and a dump's alike."""
        document = manifest_json(
            self.config.host,
            self.plan.stamp,
            self.now,
            entries,
            previous=self.previous,
            signed_by=self.key.fingerprint if self.key is not None else None,
        )
        signing.write_signed(self.manifest, document, self.key)

    def commit(self, entry: ArchiveEntry) -> None:
        """List a finished dump's archive in the run manifest and the index."""
        self.write_manifest([*self.entries, entry])
        self.entries.append(entry)
        self.warnings += entry.warnings
        try:
            write_index(self.config, self.now, self.key)
        except KeyforgeError as err:
            self._failed(MANIFEST_NAME, err)

    def dump_all(self) -> None:
        """Every [[dumps]] entry, after the sources, into the same run and manifest."""
        if not self.config.dumps:
            return

        backup = self.config.backup

        def write(
            argv: Sequence[str],
            final: Path,
            judge: Callable[[runner.Result], None],
            tick: Callable[[int], None],
        ) -> pipeline.Written:
            return pipeline.write_archive(
                final,
                argv,
                compression=backup.compression,
                level=backup.compression_level,
                recipients=recipients_of(backup),
                test=backup.test_archives,
                priority=priority_of(backup),
                judge_producer=judge,
                on_progress=tick,
            )

        def committed(entry: ArchiveEntry) -> None:
            self.commit(entry)
            for warning in entry.warnings:
                self.reporter.warn(warning)
            self.reporter.archive_done(entry, 0.0)

        outcome = dumps.run_dumps(
            self.config,
            self.plan.stamp,
            write,
            committed,
            on_progress=self.reporter.progress,
        )
        self.tried += outcome.tried
        for err in outcome.failures:
            self.first_error = self.first_error or err
            self.failures.append(str(err))
            self.reporter.warn(f"not backed up: {err}")


def _last_masters(config: Config) -> dict[str, dict[str, Any]]:
    """The manifest entry of each source's newest master, by slug (read before the run)."""
    recorded = read_manifests(config.backup_dir, config.host)
    found: dict[str, dict[str, Any]] = {}
    for slug, chains in chains_of(scan_archives(config)).items():
        masters = [c.master for c in chains if c.master is not None]
        if masters and masters[-1].name in recorded:
            found[slug] = recorded[masters[-1].name]
    return found


def _archive_source(
    config: Config,
    item: PlannedArchive,
    masters: dict[str, dict[str, Any]],
    reporter: Reporter,
    *,
    allow_empty: bool,
) -> ArchiveEntry:
    """Measure one source, archive it, and judge what it held against its last master.

    The measuring walk (stat calls) runs beside tar instead of before it: it reads what tar
    reads at the same time, and the run does not wait for it first.
    """
    check_sources_exist([item.source])
    measured: list[SourceSize | Exception] = []

    def measure() -> None:
        try:
            measured.append(measure_source(item.source, config.backup))
        except Exception as err:  # re-raised below, in the run's own thread
            measured.append(err)

    # a plain thread: concurrent.futures would cost every run its import (and logging's)
    walker = threading.Thread(target=measure, name="keyforge-measure", daemon=True)
    walker.start()
    try:
        entry = make_archive(config, item, reporter)
    finally:
        walker.join()
    size = measured[0]
    if isinstance(size, Exception):
        raise size
    last_master = masters.get(item.slug)
    alerts = () if allow_empty else content_alerts(item.source, size, last_master, config.backup)
    for alert in alerts:
        reporter.warn(alert)
    return dataclasses.replace(
        entry, source_files=size.files, source_bytes=size.bytes, alerts=alerts
    )


def run_prune(
    config: Config, *, dry_run: bool = False, now: dt.datetime | None = None
) -> list[Chain]:
    """Apply retention alone: remove whole chains past the window, never the newest master."""
    now = now or dt.datetime.now()
    backup_dir = config.backup_dir
    if not backup_dir.is_dir():
        raise FileError(f"backup directory {backup_dir} does not exist")
    if dry_run:
        return expired_chains(config, now)
    with backup_lock(backup_dir):
        doomed = expired_chains(config, now)
        remove_chains(config, doomed)
        if doomed:
            write_index(config, now, signing_key_of(config))
    return doomed


def human_size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def describe_plan(plan: BackupPlan) -> list[str]:
    """Human lines for --dry-run: each archive, the commands, what retention would remove."""
    lines = [f"run {plan.stamp}:"]
    for item in plan.archives:
        lines.append(f"  {item.source}: {item.kind} -> {item.name}")
        encrypt = f" | {' '.join(item.encrypt_argv)}" if item.encrypt_argv else ""
        lines.append(f"    {' '.join(item.tar_argv)} | {' '.join(item.compress_argv)}{encrypt}")
    for chain in plan.prune:
        lines.append(f"  prune chain {chain.name} ({len(chain.archives)} archives)")
    return lines


def describe_dumps(config: Config) -> list[str]:
    """--dry-run's lines for the [[dumps]] entries (checked first, as a run checks them)."""
    dumps.check_dumps(config)
    return dumps.describe(config)
