"""keyforge snapshot: dated snapshots of the synced copy that the backup key cannot reach.

The nightly push mirrors the sending server's backups with ``rsync --delete``, so whoever holds
the backup key can empty the copy on the receiving host with one push. This command runs there,
after each push, as a user the key does not log in as, and copies the synced directory into a
store only that user can write: ``rsync -a --link-dest=<newest snapshot>`` into
``STORE/.<stamp>.partial``, renamed to ``STORE/<stamp>`` once complete. Files unchanged since the
previous snapshot are hard links to it, so a day costs what changed; no snapshot file is ever a
hard link to the synced copy, which the key's user can write.

Each snapshot is then judged by content, on the copy just made (which nobody else can change):
the manifests read with keyforge backup's reader, every archive they list present with its
recorded size, what is new since the last good snapshot hashed, nothing lost since then. One
that fails is kept as evidence but marked as not a good copy; retention counts only good ones.

The top half is pure (stamps, retention, the wipe guard, the refusal checks on stat values);
the bottom half reads the file system and runs rsync through ``runner``. The source is opened
once, without following symlinks, and rsync reads it through that descriptor, so the key's user
cannot swap the directory for a symlink between the checks and the copy.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import errno
import grp
import os
import pwd
import re
import stat
from collections.abc import Collection, Iterable, Iterator, Sequence
from pathlib import Path

from keyforge import layout, signing
from keyforge.config import Config, SnapshotConfig
from keyforge.config import snapshot_source as source_of
from keyforge.errors import CommandError, FileError, KeyforgeError, UsageError
from keyforge.infra import fsutil, runner, tools
from keyforge.layout import MANIFEST_NAME, MANIFEST_SUFFIX, PARTIAL_SUFFIX, partial_name
from keyforge.ssh import allowed_signers

LOCK_NAME = ".keyforge-snapshot.lock"
DOOMED_SUFFIX = ".deleting"
# beside a snapshot that is not a good copy, holding why (the name is from when the only reason
# was a wiped-looking copy); such a snapshot is evidence, never the baseline
WIPED_SUFFIX = ".wiped"
MAX_PROBLEMS_SHOWN = 3
# rsync's "some files vanished before they could be transferred": the push was still running;
# the snapshot holds everything else and the next one catches up
RSYNC_VANISHED = 24

_STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
_STAMP_RE = re.compile(r"^(?P<base>[0-9]{8}T[0-9]{6}Z)(?:-(?P<seq>[1-9][0-9]{0,5}))?\Z")
_LEFTOVER_RE = re.compile(
    rf"^\.(?P<stamp>[0-9]{{8}}T[0-9]{{6}}Z(?:-[0-9]+)?)({re.escape(PARTIAL_SUFFIX)}"
    rf"|{re.escape(DOOMED_SUFFIX)})\Z"
)


# --- stamps (pure) ---------------------------------------------------------------------------


def is_stamp(name: str) -> bool:
    return _STAMP_RE.match(name) is not None


def stamp_key(stamp: str) -> tuple[str, int]:
    """Sort key: 20261128T033000Z < 20261128T033000Z-2 < 20261128T033001Z."""
    match = _STAMP_RE.match(stamp)
    if match is None:
        raise ValueError(f"not a snapshot stamp: {stamp!r}")
    return (match["base"], int(match["seq"] or 1))


def stamp_time(stamp: str) -> dt.datetime:
    base, _ = stamp_key(stamp)
    return dt.datetime.strptime(base, _STAMP_FORMAT).replace(tzinfo=dt.UTC)


def newest(stamps: Iterable[str]) -> str | None:
    return max(stamps, key=stamp_key, default=None)


def new_stamp(now: dt.datetime, taken: Iterable[str]) -> str:
    """The UTC stamp of a snapshot taken at ``now``, sorting after every stamp in ``taken``."""
    base = now.astimezone(dt.UTC).strftime(_STAMP_FORMAT)
    latest = newest(taken)
    if latest is None or stamp_key(latest)[0] < base:
        return base
    latest_base, seq = stamp_key(latest)
    if latest_base == base:
        return f"{base}-{seq + 1}"
    raise KeyforgeError(
        f"the newest snapshot {latest} is later than the clock ({base}); fix the clock, or "
        "rename that snapshot, before taking another"
    )


# --- retention and the wipe guard (pure) -----------------------------------------------------


def choose_prune(
    stamps: Iterable[str],
    now: dt.datetime,
    retention_days: int,
    min_keep: int,
    *,
    bad: Collection[str] = (),
) -> list[str]:
    """The snapshots retention removes, oldest first: older than ``retention_days`` and not
    among the newest ``min_keep`` good ones, so a receiving host whose pushes stopped keeps its
    history. Only good snapshots count (``bad``: those that are not a good copy), and the
    newest good one always stays: days of junk pushes never age out the real history."""
    ordered = sorted(stamps, key=stamp_key)
    good = [s for s in ordered if s not in bad]
    kept = set(good[-max(min_keep, 1) :])
    cutoff = now - dt.timedelta(days=retention_days)
    return [s for s in ordered if s not in kept and stamp_time(s) < cutoff]


@dataclasses.dataclass(frozen=True)
class TreeCount:
    """What the wipe guard compares: files (anything but a directory) and keyforge manifests."""

    files: int
    manifests: int


def wipe_reason(current: TreeCount, previous: TreeCount | None, loss_percent: int) -> str | None:
    """Why the synced copy looks wiped compared with the last good snapshot, or None."""
    if current.files == 0:
        return "it holds no file at all"
    if previous is None:
        return None
    if previous.manifests and not current.manifests:
        return (
            f"it holds no keyforge manifest any more (the last good snapshot holds "
            f"{previous.manifests})"
        )
    if current.files * 100 < previous.files * (100 - loss_percent):
        return (
            f"it holds {current.files} files where the last good snapshot holds {previous.files} "
            f"(more than {loss_percent}% gone)"
        )
    return None


# --- content: the archives against their manifests ------------------------------------------


@dataclasses.dataclass(frozen=True)
class Claim:
    """What the manifests of a copy say about one archive in it."""

    size: int
    algorithm: str
    digest: str


@dataclasses.dataclass(frozen=True)
class Listing:
    """Every archive a copy's manifests list, by path relative to the copy.

    ``required``: those an index (MANIFEST_NAME) lists, which must be there; a run manifest may
    name archives retention has since removed. ``masters``: (directory, host, source) of each
    full backup required. ``problems``: manifests that are not manifests, or that disagree.
    """

    claims: dict[str, Claim]
    required: frozenset[str]
    masters: frozenset[tuple[str, str, str]]
    problems: tuple[str, ...]


def is_manifest_name(name: str) -> bool:
    return name == MANIFEST_NAME or name.endswith(MANIFEST_SUFFIX)


def read_listing(top: Path) -> Listing:
    """The manifests of the copy at ``top``, each read with keyforge backup's own reader."""
    claims: dict[str, Claim] = {}
    required: set[str] = set()
    masters: set[tuple[str, str, str]] = set()
    problems: list[str] = []
    for directory, names in _files_by_directory(top):
        indexes = [n for n in names if n == MANIFEST_NAME]
        runs = [n for n in names if is_manifest_name(n) and n != MANIFEST_NAME]
        for name in indexes + runs:
            shown = _joined(directory, name)
            try:
                manifest = layout.load_manifest(top / shown)
            except FileError as err:
                reason = _reason(err, top / shown)
                problems.append(f"{shown} is not a keyforge manifest ({reason})")
                continue
            # the index lists what is present; without one, every run manifest does
            must = name == MANIFEST_NAME or not indexes
            for entry in manifest.archives:
                path = _joined(directory, entry.name)
                claim = Claim(entry.size, entry.algorithm, entry.digest)
                if claims.setdefault(path, claim) != claim:
                    problems.append(f"{path}: the manifests disagree on its size or hash")
                if must:
                    required.add(path)
                    if entry.kind == layout.MASTER:
                        masters.add((directory, manifest.host, entry.source))
        for name in names:
            path = _joined(directory, name)
            if layout.is_archive_name(name) and path not in claims:
                problems.append(f"{path}: an archive no manifest lists")
    return Listing(claims, frozenset(required), frozenset(masters), tuple(problems))


def _files_by_directory(top: Path) -> Iterator[tuple[str, list[str]]]:
    """(directory relative to ``top``, "" for itself; its non-directory names), never
    following a symlink."""
    for dirpath, _, filenames in os.walk(top):
        relative = os.path.relpath(dirpath, top)
        yield ("" if relative == "." else relative), sorted(filenames)


def _joined(directory: str, name: str) -> str:
    return f"{directory}/{name}" if directory else name


def _reason(err: FileError, path: Path) -> str:
    """The loader's reason without its path, which names the snapshot's temporary directory."""
    return str(err).removeprefix(f"cannot read manifest {path}: ")


def content_problems(top: Path, listing: Listing, *, hash_new: Collection[str] = ()) -> list[str]:
    """Why the copy at ``top`` does not hold what its manifests list: a listed archive missing,
    not a regular file or of another size; each of ``hash_new`` is also hashed."""
    problems = list(listing.problems)
    for path, claim in sorted(listing.claims.items()):
        try:
            st = (top / path).lstat()
        except FileNotFoundError:
            if path in listing.required:
                problems.append(f"{path}: listed in the manifest but missing")
            continue
        except OSError as err:
            problems.append(f"{path}: cannot be read ({err.strerror})")
            continue
        if not stat.S_ISREG(st.st_mode):
            problems.append(f"{path}: not a regular file")
        elif st.st_size != claim.size:
            problems.append(
                f"{path}: {st.st_size} bytes where its manifest records {claim.size} "
                "(a push cut short?)"
            )
        elif path in hash_new and layout.hash_of_file(top / path, claim.algorithm) != claim.digest:
            problems.append(f"{path}: its content does not match the manifest's {claim.algorithm}")
    return problems


def to_hash(
    top: Path, listing: Listing, good: Path | None, good_listing: Listing | None
) -> list[str]:
    """The archives whose content is new since the last good snapshot ``good``: all but those
    that are the very same file there (a hard link rsync made) with the same claim, which that
    snapshot's run already checked. So a day's hashing costs what the day pushed."""
    new = []
    for path, claim in listing.claims.items():
        if good is not None and good_listing is not None and good_listing.claims.get(path) == claim:
            try:
                mine, theirs = (top / path).lstat(), (good / path).lstat()
            except OSError:
                pass
            else:
                if (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino):
                    continue
        new.append(path)
    return new


def signature_problems(
    top: Path, signers: allowed_signers.AllowedSigners, now: dt.datetime
) -> list[str]:
    """With [snapshot] allowed_signers: every manifest of the copy at ``top`` (in any of its
    directories) signed by a key ``signers`` admits for its host, every chain in it whole."""
    problems: list[str] = []
    for directory, names in _files_by_directory(top):
        if any(is_manifest_name(n) for n in names):
            found = signing.directory_problems(top / directory, signers, now=now)
            problems += [f"{directory}/{p}" if directory else p for p in found]
    return problems


def loss_problems(listing: Listing, good_listing: Listing | None) -> list[str]:
    """What the copy lost since the last good snapshot, though what it holds is consistent: a
    source's full backups gone, or an archive rewritten under a name it already had (keyforge
    backup never reuses a name; a fresh history on an unmounted disk does)."""
    if good_listing is None:
        return []
    problems = []
    for directory, host, source in sorted(good_listing.masters - listing.masters):
        where = f" in {directory}" if directory else ""
        problems.append(f"no full backup of {host}:{source} any more{where}")
    for path, claim in sorted(listing.claims.items()):
        before = good_listing.claims.get(path)
        if before is not None and before != claim:
            problems.append(
                f"{path} differs from the archive of that name in the last good snapshot"
            )
    return problems


def summarize(problems: Sequence[str]) -> str:
    head = "; ".join(problems[:MAX_PROBLEMS_SHOWN])
    more = len(problems) - MAX_PROBLEMS_SHOWN
    return head + (f"; and {more} more" if more > 0 else "")


# --- refusal checks (pure, on stat values) -------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Owner:
    """The synced copy's owner: the user the backup key logs in as, and that user's groups."""

    uid: int
    name: str
    groups: frozenset[int]


@dataclasses.dataclass(frozen=True)
class DirInfo:
    """One directory on the way to the store, as stat saw it."""

    path: Path
    uid: int
    gid: int
    mode: int


def runner_problem(running_uid: int, owner: Owner) -> str | None:
    if running_uid == owner.uid:
        return (
            f"keyforge snapshot runs as {owner.name}, the owner of the synced copy: the backup "
            "key logs in as that user and could reach the snapshots; run it as root or as a "
            "user of its own"
        )
    return None


def overlap_problem(source: Path, store: Path) -> str | None:
    """The store and the source must be apart (both given resolved)."""
    if store == source or store.is_relative_to(source):
        return f"the snapshot directory {store} lies inside the synced copy {source}"
    if source.is_relative_to(store):
        return f"the synced copy {source} lies inside the snapshot directory {store}"
    return None


def directory_problem(info: DirInfo, owner: Owner, running_uid: int) -> str | None:
    """Why ``info`` lets someone other than root and the running user change the store.

    The owner of a directory can always chmod it, so ownership alone is enough; a group- or
    world-writable directory without the sticky bit lets others rename what is in it.
    """
    where = f"{info.path} (on the way to the snapshot directory)"
    if info.uid == owner.uid and info.uid != 0:
        return f"{where} belongs to {owner.name}, the owner of the synced copy"
    if info.uid not in (0, running_uid):
        return f"{where} belongs to another user (uid {info.uid}), who could replace it"
    sticky = bool(info.mode & stat.S_ISVTX)
    if info.mode & stat.S_IWOTH and not sticky:
        return f"{where} is writable by everyone (mode {stat.S_IMODE(info.mode):04o})"
    if info.mode & stat.S_IWGRP and not sticky:
        member = " (which includes the copy's owner)" if info.gid in owner.groups else ""
        return (
            f"{where} is writable by group {info.gid}{member} (mode {stat.S_IMODE(info.mode):04o})"
        )
    return None


def store_problems(chain: Iterable[DirInfo], owner: Owner, running_uid: int) -> list[str]:
    problems = (directory_problem(info, owner, running_uid) for info in chain)
    return [p for p in problems if p is not None]


def rsync_argv(rsync: str, source: str, partial: Path, link_dests: Sequence[Path]) -> list[str]:
    """The copy of one snapshot: owners kept as numbers, unchanged files linked to earlier ones."""
    argv = [rsync, "-a", "--numeric-ids"]
    argv += [f"--link-dest={path}" for path in link_dests]
    # the trailing slashes: the directory's contents, into the partial directory itself
    argv += [f"{source.rstrip('/')}/", f"{partial}/"]
    return argv


def doomed_name(stamp: str) -> str:
    return f".{stamp}{DOOMED_SUFFIX}"


# --- reading the file system -------------------------------------------------------------------


def open_source(source: Path) -> int:
    """An O_DIRECTORY descriptor of ``source``, reached without following any symlink.

    The synced copy belongs to the backup key's user, who may replace it (or a directory above
    it) with a symlink at any moment; everything after this reads through the descriptor.
    """
    if os.path.normpath(source) != os.path.realpath(source):
        raise UsageError(
            f"the synced copy {source} is reached through a symbolic link; give its real "
            f"path ({os.path.realpath(source)})"
        )
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open("/", flags)
    try:
        for part in source.parts[1:]:
            try:
                next_fd = os.open(part, flags, dir_fd=fd)
            except OSError as err:
                if err.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    raise FileError(
                        f"the synced copy {source} is missing or not a directory"
                    ) from None
                raise FileError.from_os_error("open", source, err) from err
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


def owner_of(uid: int, gid: int) -> Owner:
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        return Owner(uid, f"uid {uid}", frozenset({gid}))
    groups = set(os.getgrouplist(entry.pw_name, entry.pw_gid))
    groups |= {g.gr_gid for g in grp.getgrall() if entry.pw_name in g.gr_mem}
    return Owner(uid, entry.pw_name, frozenset(groups | {gid}))


def chain_to(store: Path) -> list[Path]:
    """Every existing directory from ``store`` up to /, lexically and as resolved."""
    paths: dict[Path, None] = {}
    for start in (store, store.resolve()):
        for path in (start, *start.parents):
            if path.exists():
                paths[path] = None
    return list(paths)


def stat_chain(paths: Iterable[Path]) -> list[DirInfo]:
    infos = []
    for path in paths:
        try:
            st = path.stat()
        except OSError as err:
            raise FileError.from_os_error("read", path, err) from err
        infos.append(DirInfo(path, st.st_uid, st.st_gid, st.st_mode))
    return infos


def check_placement(source: Path, source_stat: os.stat_result, store: Path) -> Owner:
    """Refuse a run the backup key could undo: first problem found, as one line."""
    owner = owner_of(source_stat.st_uid, source_stat.st_gid)
    running = os.geteuid()
    problems = [
        runner_problem(running, owner),
        overlap_problem(source.resolve(), store.resolve()),
        *store_problems(stat_chain(chain_to(store)), owner, running),
    ]
    found = [p for p in problems if p is not None]
    if found:
        raise UsageError(f"refusing to snapshot: {found[0]}")
    return owner


def count_tree(top: str, *, dir_fd: int | None = None) -> TreeCount:
    """Files and keyforge manifests under ``top``, never following a symlink."""
    files = manifests = 0
    for _, dirnames, filenames, dirfd in os.fwalk(top, dir_fd=dir_fd):
        # fwalk lists a symlink to a directory with the directories, and never enters it
        links = [n for n in dirnames if stat.S_ISLNK(os.lstat(n, dir_fd=dirfd).st_mode)]
        files += len(filenames) + len(links)
        manifests += sum(1 for n in filenames if is_manifest_name(n))
    return TreeCount(files, manifests)


def list_stamps(store: Path) -> list[str]:
    try:
        names = [entry.name for entry in os.scandir(store) if entry.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []
    except OSError as err:
        raise FileError.from_os_error("read", store, err) from err
    return sorted((n for n in names if is_stamp(n)), key=stamp_key)


@dataclasses.dataclass(frozen=True)
class SnapshotInfo:
    """One snapshot for --list: its bytes, and the bytes no older snapshot shares."""

    stamp: str
    when: dt.datetime
    files: int
    size: int
    new_size: int
    problem: str | None  # why it is not a good copy, from its marker; None for a good one


def describe_store(store: Path) -> list[SnapshotInfo]:
    """Every snapshot, oldest first; hard-linked files count as new only the first time."""
    seen: set[tuple[int, int]] = set()
    infos = []
    for stamp in list_stamps(store):
        files = size = new_size = 0
        for entry in _walk_files(store / stamp):
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            files += 1
            size += st.st_size
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                new_size += st.st_size
        problem = fsutil.read_text_if_exists(wiped_marker(store, stamp))
        if problem is not None:
            problem = problem.strip() or "not a good copy"
        infos.append(SnapshotInfo(stamp, stamp_time(stamp), files, size, new_size, problem))
    return infos


def _walk_files(top: Path) -> Iterator[os.DirEntry[str]]:
    try:
        entries = list(os.scandir(top))
    except FileNotFoundError:
        return
    except OSError as err:
        raise FileError.from_os_error("read", top, err) from err
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from _walk_files(Path(entry.path))
        else:
            yield entry


# --- changing the store --------------------------------------------------------------------------


def remove_leftovers(store: Path) -> list[Path]:
    """What a killed run left: a half-copied snapshot or a half-removed one (under the lock)."""
    removed = []
    for entry in os.scandir(store):
        if _LEFTOVER_RE.match(entry.name) and entry.is_dir(follow_symlinks=False):
            fsutil.remove_tree(Path(entry.path))
            removed.append(Path(entry.path))
    stamps = set(list_stamps(store))
    for marker in store.glob(f".*{WIPED_SUFFIX}"):
        if marker.name[1 : -len(WIPED_SUFFIX)] not in stamps:
            marker.unlink(missing_ok=True)
            removed.append(marker)
    return removed


def remove_snapshots(store: Path, stamps: Iterable[str]) -> None:
    """Each goes to a hidden name first, so a crash never leaves a half-deleted snapshot under
    a name that looks complete."""
    for stamp in stamps:
        doomed = store / doomed_name(stamp)
        try:
            (store / stamp).rename(doomed)
        except OSError as err:
            raise FileError.from_os_error("remove", store / stamp, err) from err
        fsutil.fsync_dir(store)
        fsutil.remove_tree(doomed)
        wiped_marker(store, stamp).unlink(missing_ok=True)


def prepare_store(store: Path) -> list[str]:
    """Create the store 0700 when missing; warn when an existing one lets others read it."""
    fsutil.ensure_private_dir(store)
    mode = stat.S_IMODE(store.stat().st_mode)
    if mode & 0o077:
        return [f"snapshot directory {store} has mode {mode:04o}; 0700 keeps others out"]
    return []


def run_rsync(argv: Sequence[str], fd: int) -> runner.Result:
    """rsync with the source's descriptor inherited, so ``/proc/self/fd/N`` is the source."""
    return runner.run(argv, capture_stdout=False, check=False, pass_fds=(fd,))


def find_rsync() -> str:
    found = tools.find_program("rsync")
    if found is None:
        raise CommandError("rsync not found on PATH; install it")
    return found


# --- one run -----------------------------------------------------------------------------------


def wiped_marker(store: Path, stamp: str) -> Path:
    """Beside a snapshot that is not a good copy, holding why: it is never the baseline."""
    return store / f".{stamp}{WIPED_SUFFIX}"


def bad_stamps(store: Path, stamps: Iterable[str]) -> set[str]:
    return {s for s in stamps if wiped_marker(store, s).exists()}


def baseline(store: Path, stamps: Sequence[str]) -> str | None:
    """The newest good snapshot: what the next copy is judged against, so a wipe followed by
    pushes of a few files (or of junk) still fails, until the copy is good again."""
    bad = bad_stamps(store, stamps)
    return newest(s for s in stamps if s not in bad)


def link_dests(store: Path, stamps: Sequence[str]) -> list[Path]:
    """The newest snapshot, and the baseline when it differs: after a wipe the files come back
    as links to the baseline instead of as new copies."""
    found = [newest(stamps), baseline(store, stamps)]
    return [store / s for s in dict.fromkeys(found) if s is not None]


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Whether a copy is a good one. ``wiped`` (the wipe guard) and ``lost`` (a source's full
    backups gone, a rewritten archive): what it lost since the last good snapshot, which
    --accept may take;
    ``damaged``: archives that do not match their manifests, which nothing makes good."""

    wiped: str | None
    lost: tuple[str, ...]
    damaged: tuple[str, ...]

    @property
    def losses(self) -> tuple[str, ...]:
        # a wiped-looking copy lost its sources' backups too: the wipe says it all
        return (self.wiped,) if self.wiped else self.lost

    def problem(self, *, accept: bool) -> str | None:
        """Why this copy is not a good one (with ``accept``, losses do not count), or None."""
        problems = [*self.damaged, *(() if accept else self.losses)]
        return summarize(problems) if problems else None


@dataclasses.dataclass(frozen=True)
class SnapshotReport:
    source: Path
    store: Path
    stamp: str
    link_dest: str | None
    argv: tuple[str, ...]
    count: TreeCount
    pruned: tuple[str, ...]
    problem: str | None  # why this snapshot is not a good copy, or None
    wiped: bool  # the problem is a wipe-looking copy (for the message)
    warnings: tuple[str, ...]
    dry_run: bool

    @property
    def path(self) -> Path:
        return self.store / self.stamp


def run_snapshot(
    config: Config,
    *,
    dry_run: bool = False,
    accept: bool = False,
    now: dt.datetime | None = None,
    rsync: str | None = None,
) -> SnapshotReport:
    """Take one snapshot of the synced copy, judge it, then apply retention if it is good.

    A good copy holds every archive its manifests list, each of its recorded size and, when
    new since the last good snapshot, its recorded hash; and it lost nothing since then (see
    ``Verdict``). Any other copy is still snapshotted (it is evidence of what happened), marked
    as not good and nothing is pruned; the report's ``problem`` says why, and the caller fails
    the run. With ``accept``, losses are taken as meant (a warning, retention as usual, and
    this snapshot becomes the baseline); damaged archives never are.
    """
    settings = config.snapshot
    now = now or dt.datetime.now(dt.UTC)
    source = source_of(config)
    store = Path(settings.directory)
    fd = open_source(source)
    try:
        check_placement(source, os.fstat(fd), store)
        signers = (
            allowed_signers.load(Path(settings.allowed_signers))
            if settings.allowed_signers
            else None
        )
        run = _Run(settings, source, store, fd, now, rsync or find_rsync(), accept, signers)
        if dry_run:
            return run.plan()
        warnings = prepare_store(store)
        check_placement(source, os.fstat(fd), store)  # the store itself exists now
        with fsutil.locked(store / LOCK_NAME, wait=False):
            return run.take(tuple(warnings))
    finally:
        os.close(fd)


@dataclasses.dataclass(frozen=True)
class _Run:
    settings: SnapshotConfig
    source: Path
    store: Path
    fd: int
    now: dt.datetime
    rsync: str
    accept: bool
    signers: allowed_signers.AllowedSigners | None = None

    def judge(
        self, tree: Path, count: TreeCount, earlier: Sequence[str], *, hashing: bool
    ) -> Verdict:
        """The copy at ``tree`` (``count``: its files) against the last good snapshot among
        ``earlier``; ``hashing``: hash what is new (a dry run, reading the live copy, checks
        sizes only)."""
        good_stamp = baseline(self.store, earlier)
        good = self.store / good_stamp if good_stamp else None
        listing = read_listing(tree)
        good_listing = read_listing(good) if good else None
        new = set(to_hash(tree, listing, good, good_listing)) if hashing else set()
        previous = count_tree(str(good)) if good else None
        wiped = wipe_reason(count, previous, self.settings.wipe_loss_percent)
        damaged = content_problems(tree, listing, hash_new=new)
        if self.signers is not None:
            damaged += signature_problems(tree, self.signers, self.now)
        return Verdict(wiped, tuple(loss_problems(listing, good_listing)), tuple(damaged))

    def prune(self, verdict: Verdict, earlier: Sequence[str], stamp: str) -> list[str]:
        """What retention removes after this snapshot: nothing unless it is a good copy."""
        if verdict.problem(accept=self.accept):
            return []
        keep = self.settings
        every = [*earlier, stamp]
        bad = bad_stamps(self.store, earlier)
        return choose_prune(every, self.now, keep.retention_days, keep.min_keep, bad=bad)

    def report(
        self,
        stamp: str,
        argv: Sequence[str],
        count: TreeCount,
        *,
        earlier: Sequence[str],
        prune: Sequence[str],
        verdict: Verdict,
        warnings: tuple[str, ...] = (),
        dry_run: bool,
    ) -> SnapshotReport:
        """What a run did (or, planned, would do); ``earlier``: the snapshots taken before."""
        shown = [f"{self.source}/" if a.startswith("/proc/self/fd/") else a for a in argv]
        problem = verdict.problem(accept=self.accept)
        return SnapshotReport(
            self.source,
            self.store,
            stamp,
            link_dest=newest(earlier),
            argv=tuple(shown),
            count=count,
            pruned=tuple(prune),
            problem=problem,
            wiped=problem is not None and verdict.wiped is not None and not verdict.damaged,
            warnings=warnings,
            dry_run=dry_run,
        )

    def plan(self) -> SnapshotReport:
        stamps = list_stamps(self.store)
        stamp = new_stamp(self.now, stamps)
        count = count_tree(".", dir_fd=self.fd)
        live = Path(f"/proc/self/fd/{self.fd}")
        verdict = self.judge(live, count, stamps, hashing=False)
        prune = self.prune(verdict, stamps, stamp)
        links = link_dests(self.store, stamps)
        argv = rsync_argv(self.rsync, str(self.source), self.store / partial_name(stamp), links)
        return self.report(
            stamp, argv, count, earlier=stamps, prune=prune, verdict=verdict, dry_run=True
        )

    def take(self, warnings: tuple[str, ...]) -> SnapshotReport:
        store = self.store
        remove_leftovers(store)
        stamps = list_stamps(store)
        stamp = new_stamp(self.now, stamps)
        partial = store / partial_name(stamp)
        source = f"/proc/self/fd/{self.fd}"
        argv = rsync_argv(self.rsync, source, partial, link_dests(store, stamps))
        try:
            result = run_rsync(argv, self.fd)
            if result.returncode not in (0, RSYNC_VANISHED):
                raise CommandError(
                    "rsync failed: "
                    + runner.first_error_line(result.stderr, fallback=f"exit {result.returncode}")
                )
            if result.returncode == RSYNC_VANISHED:
                warnings += (f"files vanished from {self.source} while it was copied",)
            # judged on the copy just made, which nobody else can change, not the live one
            count = count_tree(str(partial))
            verdict = self.judge(partial, count, stamps, hashing=True)
            problem = verdict.problem(accept=self.accept)
            if problem:
                fsutil.atomic_write(wiped_marker(store, stamp), f"{problem}\n".encode())
            partial.rename(store / stamp)
            fsutil.fsync_dir(store)
        except BaseException:
            fsutil.remove_tree(partial)
            wiped_marker(store, stamp).unlink(missing_ok=True)
            raise
        if self.accept and verdict.losses and not problem:
            warnings += (f"accepted as meant: {summarize(verdict.losses)}",)
        prune = self.prune(verdict, stamps, stamp)
        remove_snapshots(store, prune)
        return self.report(
            stamp,
            argv,
            count,
            earlier=stamps,
            prune=prune,
            verdict=verdict,
            warnings=warnings,
            dry_run=False,
        )


def list_snapshots(config: Config) -> list[SnapshotInfo]:
    store = Path(config.snapshot.directory)
    if not store.is_dir():
        raise FileError(f"snapshot directory {store} does not exist; no snapshot taken yet")
    return describe_store(store)


def problem_message(report: SnapshotReport) -> str:
    """The one line a failed run ends with: why the copy is not good, and what was kept."""
    what = (
        f"looks wiped ({report.problem})"
        if report.wiped
        else f"is not a good copy ({report.problem})"
    )
    return (
        f"the synced copy {report.source} {what}; snapshot {report.stamp} keeps it as "
        "evidence, every earlier snapshot is kept (nothing pruned). Check the sending server, "
        "its last push and its backup key"
    )


def human_time(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")
