"""Restore a source as of a date, and prove that the backups restore.

Restore applies a chain in order (master, then each incremental) with GNU tar's incremental
extraction, so files deleted between runs are deleted again. Verify checks every archive against
the hash its manifest records (BLAKE3, or sha256 in older manifests), then restores the latest
chain of each source into a scratch directory and compares it, entry by entry, with what the
archives themselves record: content (sha256), type, mode, owner, mtime, symlink target, hard
links and xattrs. The expected state is read from the archives with Python's own tar reader, so
GNU tar's extraction is checked by a second reader.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import os
import shutil
import stat
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from keyforge import age, layout, signing
from keyforge.config import Config
from keyforge.errors import CommandError, FileError, KeyforgeError, UsageError
from keyforge.infra import fsutil, runner
from keyforge.layout import ArchiveRecord
from keyforge.sender import backup, catalog, pipeline, reading

SCRATCH_NAME = ".verify-scratch"
MAX_PROBLEMS_SHOWN = 5


# --- where restore and verify may write ------------------------------------------------------


def restores_owners() -> bool:
    """Only root can give files back their recorded owners; anyone else gets them as their own
    (tar --no-same-owner) instead of tar stopping at the first chown."""
    return os.geteuid() == 0


def owner_notice(*, verify: bool = False) -> str | None:
    """What a run that cannot restore owners tells the user, or None for root."""
    if restores_owners():
        return None
    what = "owners are not compared" if verify else "the files are yours"
    return (
        f"not running as root: owners are not restored ({what}; tar --no-same-owner); "
        "run as root to get the recorded owners back"
    )


def is_backup_own(backup_dir: Path) -> bool:
    """Whether keyforge backup writes in ``backup_dir``, as on the sending server: its lock is
    there, made by the directory's owner. A synced copy never holds that lock (sync does not
    send it) and belongs to the pushes, so restore and verify write nothing into it; a lock of
    another user in it is what an older keyforge run as root left, not a backup's."""
    try:
        lock, directory = layout.lock_path(backup_dir).lstat(), backup_dir.stat()
    except FileNotFoundError:
        return False
    except OSError as err:
        raise FileError.from_os_error("read", backup_dir, err) from err
    return stat.S_ISREG(lock.st_mode) and lock.st_uid == directory.st_uid


def reading_lock(backup_dir: Path) -> contextlib.AbstractContextManager[None]:
    """The backup's lock, so no backup or prune runs meanwhile, where keyforge backup takes
    it; elsewhere no lock at all: creating one would write into the synced copy, and no
    keyforge run writes there."""
    if is_backup_own(backup_dir):
        return layout.backup_lock(backup_dir)
    return contextlib.nullcontext()


@contextlib.contextmanager
def scratch_dir(backup_dir: Path, given: Path | None) -> Iterator[Path]:
    """A private directory for verify's trial restores, removed afterwards.

    A fresh one inside ``given`` (created 0700 when missing; nothing else in it is touched);
    without it, ``.verify-scratch`` in the backup directory where keyforge backup writes (its
    lock keeps sync from sending it), or a fresh one in the system's temporary directory for
    a synced copy, which must not change under the pushes.
    """
    if given is None and is_backup_own(backup_dir):
        work = backup_dir / SCRATCH_NAME
        _remove_tree(work)  # what a killed verify left
        _make_private(work)
    else:
        if given is not None:
            fsutil.ensure_private_dir(given)
        try:
            work = Path(tempfile.mkdtemp(prefix="keyforge-verify-", dir=given))
        except OSError as err:
            where = given or tempfile.gettempdir()
            raise FileError.from_os_error("create a directory in", where, err) from err
    try:
        yield work
    finally:
        _remove_tree(work)


def _make_private(path: Path) -> None:
    try:
        path.mkdir(mode=0o700)
    except OSError as err:
        raise FileError.from_os_error("create", path, err) from err


def slug_for(config: Config, source: str) -> str:
    normalized = "/" + source.strip("/") if source.strip("/") else "/"
    for configured in config.backup.sources:
        if configured.rstrip("/") == normalized.rstrip("/") or configured == normalized:
            return layout.source_slug(configured)
    known = ", ".join(config.backup.sources)
    raise UsageError(f"--source {source} is not a configured source (sources: {known})")


def as_at(at: dt.date | catalog.At | None) -> catalog.At | None:
    """A day (the library's older form of --at) as the bound of its last run."""
    if at is None or isinstance(at, catalog.At):
        return at
    return catalog.parse_at(at.isoformat())


def plan_restore(
    config: Config, source: str, at: dt.date | catalog.At | None
) -> list[ArchiveRecord]:
    slug = slug_for(config, source)
    bound = as_at(at)
    archives = catalog.select_chain(backup.scan_archives(config), slug, bound)
    if not archives:
        when = f" at or before {bound.text}" if bound else ""
        raise FileError(f"no full backup of {source}{when} in {config.backup_dir}")
    return archives


def _target_is_fresh(target: Path, *, force: bool) -> bool:
    """True when ``target`` is missing or empty; a non-empty one needs ``force``."""
    try:
        entries = list(target.iterdir())
    except FileNotFoundError:
        return True
    except OSError as err:
        raise FileError.from_os_error("read", target, err) from err
    if entries and not force:
        raise UsageError(
            f"{target} is not empty; an incremental restore deletes what the backup says was "
            "deleted, so restore into an empty directory (or pass --force)"
        )
    return not entries


def staging_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.keyforge-partial")


@contextlib.contextmanager
def _hashing(backup_dir: Path, entries: list[layout.ArchiveEntry]) -> Iterator[Callable[[], None]]:
    """Hash ``entries`` in a thread (hashlib releases the GIL, so it runs beside tar); the
    function yielded waits for it and raises SignatureError for an archive that does not match."""
    found: list[list[str]] = []
    worker = threading.Thread(
        target=lambda: found.append(signing.content_problems(backup_dir, entries)), daemon=True
    )
    worker.start()

    def check() -> None:
        worker.join()
        signing.refuse(found[0] if found else ["the archives could not be hashed"])

    try:
        yield check
    except KeyforgeError as err:
        # tar choking on an archive that is not what was signed: say that, not tar's words
        worker.join()
        if found and found[0]:
            try:
                signing.refuse(found[0])
            except KeyforgeError as refusal:
                raise refusal from err
        raise
    finally:
        worker.join()


def _restore_whole(
    config: Config,
    archives: Iterable[ArchiveRecord],
    target: Path,
    identity: pipeline.Identity | None = None,
    *,
    before_rename: Callable[[], None] | None = None,
) -> None:
    """Apply the chain beside ``target``, then rename it into place (``before_rename`` may
    still refuse it).

    A restore that fails half-way (a damaged archive, a full disk) then leaves ``target`` as it
    was, missing or empty, never half-filled: rename() replaces an empty directory whole.
    """
    staging = staging_path(target)
    try:
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)  # what a killed restore left
        staging.mkdir(mode=0o700)
    except OSError as err:
        raise FileError.from_os_error("create", staging, err) from err
    try:
        apply_chain(config, archives, staging, identity)
        if before_rename is not None:
            before_rename()
        staging.rename(target)
        fsutil.fsync_dir(target.parent)
    except OSError as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise FileError.from_os_error("restore into", target, err) from err
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def extract_argv(target: Path, select: int | None = None) -> list[str]:
    """tar's extraction of a chain's archive onto ``target``; with ``select`` (a descriptor
    holding NUL-separated member names) only those members, each on its own (no recursion)
    and as they are (no incremental deletions: the caller rebuilt the tree from the listings).
    """
    argv = backup.tar_extract_argv(target, same_owner=restores_owners())
    if select is None:
        return argv
    return [
        *(a for a in argv if not a.startswith("--listed-incremental")),
        "--no-recursion",
        "--no-wildcards",
        "--null",
        "--verbatim-files-from",
        f"--files-from=/proc/self/fd/{select}",
    ]


def extract_archive(
    archive: Path,
    target: Path,
    *,
    identity: pipeline.Identity | None = None,
    encrypted_to: Sequence[str] = (),
    select: Iterable[bytes] | None = None,
) -> None:
    """Apply one archive of a chain onto ``target`` (GNU tar incremental extraction); with
    ``select``, only the members of those paths (relative to the source, b"" its top)."""
    if select is None:
        extract = backup.tar_extract_argv(target, same_owner=restores_owners())
        tar = pipeline.read_archive(archive, extract, identity=identity, encrypted_to=encrypted_to)
    else:
        tar = reading.extract_selected(
            archive,
            extract_argv,
            target,
            select,
            identity=identity,
            encrypted_to=encrypted_to,
        )
    if tar.returncode != 0:
        raise CommandError(
            f"tar failed restoring {archive.name}: "
            + runner.first_error_line(tar.stderr, fallback=f"exit {tar.returncode}")
        )


def check_chain(config: Config, archives: Iterable[ArchiveRecord], trust: signing.Trust) -> None:
    """The chain's signatures, links, sizes and hashes, before any of it is applied."""
    signing.verify_chain(config.backup_dir, config.host, [a.name for a in archives], trust)


def encrypted_to_of(config: Config) -> dict[str, tuple[str, ...]]:
    """Each archive's recipients' fingerprints, from this host's manifests, by name."""
    recorded = layout.read_manifests(config.backup_dir, config.host)
    return {name: tuple(entry.get("encrypted_to") or ()) for name, entry in recorded.items()}


def check_chain_identity(
    config: Config, archives: Iterable[ArchiveRecord], identity: pipeline.Identity | None
) -> None:
    """Refuse before anything is applied a chain holding an encrypted archive that
    ``identity`` cannot open (none given, or not among its recipients)."""
    recipients = encrypted_to_of(config)
    for record in archives:
        if layout.is_encrypted_name(record.name):
            pipeline.check_identity(record.name, recipients.get(record.name, ()), identity)


def apply_chain(
    config: Config,
    archives: Iterable[ArchiveRecord],
    target: Path,
    identity: pipeline.Identity | None = None,
) -> None:
    recipients = encrypted_to_of(config)
    for record in archives:
        extract_archive(
            config.backup_dir / record.name,
            target,
            identity=identity,
            encrypted_to=recipients.get(record.name, ()),
        )


def run_restore(
    config: Config,
    source: str,
    target: Path,
    *,
    at: dt.date | catalog.At | None = None,
    force: bool = False,
    dry_run: bool = False,
    path: bytes | None = None,
    identity: pipeline.Identity | None = None,
    trust: signing.Trust | None = None,
) -> list[ArchiveRecord]:
    """Rebuild ``source`` as of the run ``at`` picks (default: the latest) in ``target``; with
    ``path`` (relative to the source) only that file or directory, at ``target/path``. Returns
    the archives applied (for ``path``, those holding some of it).

    The chain is checked against ``trust`` first (default: the config's allowed signers, see
    ``signing.trust_for``): a chain that is unsigned, badly signed, cut, or not what its
    signed manifests record is refused before anything is written. Encrypted archives need
    ``identity`` (``pipeline.load_identity``), checked against every archive's recipients
    before anything is written.
    """
    archives = plan_restore(config, source, at)
    trust = trust if trust is not None else signing.trust_for(config)
    check_chain_identity(config, archives, identity)
    if path:  # b"": the whole source
        return _run_restore_path(
            config,
            source,
            archives,
            path,
            target,
            force=force,
            dry_run=dry_run,
            identity=identity,
        )
    if dry_run:
        check_chain(config, archives, trust)
        return archives
    target = target.absolute()
    fresh = _target_is_fresh(target, force=force)
    with reading_lock(config.backup_dir):
        if fresh:
            # signatures and links first; the archives' hashes beside the extraction, into a
            # staging directory that becomes ``target`` only once both passed
            names = [a.name for a in archives]
            entries = signing.verify_chain(
                config.backup_dir, config.host, names, trust, hash_archives=False
            )
            with _hashing(config.backup_dir, [entries[n] for n in names if n in entries]) as check:
                _restore_whole(config, archives, target, identity, before_rename=check)
        else:
            check_chain(config, archives, trust)
            # --force: onto what is there, in place
            apply_chain(config, archives, target, identity)
    return archives


@dataclasses.dataclass(frozen=True)
class PathPlan:
    """What restoring one path takes: the members of each archive (by their name there), and
    the final path of every entry that a directory rename since moved."""

    members: dict[str, list[bytes]]
    moves: tuple[tuple[bytes, bytes], ...]
    dirs: tuple[tuple[bytes, int], ...]
    keep: tuple[bytes, ...]


def plan_path(state: catalog.State, inner: bytes, order: Sequence[str]) -> PathPlan | None:
    """The extraction plan for ``inner`` (and its parents) from a rebuilt tree (pure); None
    when the tree does not hold it."""
    wanted = {p: h for p, h in state.items() if catalog.within(p, inner)}
    if not wanted:
        return None
    parents = [inner[:i] for i in range(len(inner)) if inner[i : i + 1] == b"/"]
    for parent in [b"", *parents]:
        if parent in state:
            wanted.setdefault(parent, state[parent])
    members: dict[str, list[bytes]] = {name: [] for name in order}
    moves = []
    for final, held in sorted(wanted.items()):
        members[held.archive].append(held.name)
        if held.member.kind == "hardlink":
            members[held.archive].append(held.member.target)  # tar links to a member it made
        if held.name != final:
            moves.append((held.name, final))
    dirs = tuple(
        (p, h.member.mtime)
        for p, h in sorted(wanted.items(), reverse=True)
        if h.member.kind == "dir"
    )
    used = {name: list(dict.fromkeys(names)) for name, names in members.items() if names}
    return PathPlan(used, tuple(moves), dirs, (b"", *parents, inner))


def _run_restore_path(
    config: Config,
    source: str,
    archives: list[ArchiveRecord],
    inner: bytes,
    target: Path,
    *,
    force: bool,
    dry_run: bool,
    identity: pipeline.Identity | None = None,
) -> list[ArchiveRecord]:
    state: catalog.State = {}
    recipients = encrypted_to_of(config)
    with reading_lock(config.backup_dir):
        for record in archives:
            state = catalog.read_archive_into(config, record, state, identity)
        plan = plan_path(state, inner, [r.name for r in archives])
        if plan is None:
            shown = catalog.shown_path(source, inner)
            raise FileError(f"{shown} is not in the backup of {source} as of {archives[-1].stamp}")
        used = [r for r in archives if r.name in plan.members]
        if dry_run:
            return used
        target = target.absolute()
        fresh = _target_is_fresh(target, force=force)
        staging = staging_path(target)
        try:
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            shutil.rmtree(staging, ignore_errors=True)  # what a killed restore left
            staging.mkdir(mode=0o700)
        except OSError as err:
            raise FileError.from_os_error("create", staging, err) from err
        try:
            for record in used:
                extract_archive(
                    config.backup_dir / record.name,
                    staging,
                    identity=identity,
                    encrypted_to=recipients.get(record.name, ()),
                    select=plan.members[record.name],
                )
            _finish_path(staging, plan)
            _place_path(staging, target, inner, fresh=fresh)
        except OSError as err:
            raise FileError.from_os_error("restore into", target, err) from err
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return used


def _fs(path: bytes) -> Path:
    """A path of the restored tree as a Path; surrogateescape keeps any byte exact."""
    return Path(os.fsdecode(path))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _finish_path(staging: Path, plan: PathPlan) -> None:
    """Moves what a rename left under an older name, drops what lies outside the path (a hard
    link's other name, siblings of the parents) and gives directories their recorded mtimes
    back (both changed them)."""
    for old, new in plan.moves:
        (staging / _fs(new)).parent.mkdir(parents=True, exist_ok=True)
        (staging / _fs(old)).rename(staging / _fs(new))
    inner = plan.keep[-1]
    base = os.fsencode(staging)
    for dirpath, dirnames, filenames in os.walk(base, topdown=True):
        relative = os.path.relpath(dirpath, base)
        here = b"" if relative == b"." else relative
        if catalog.within(here, inner):
            dirnames[:] = []
            continue
        for name in [*dirnames, *filenames]:
            path = here + b"/" + name if here else name
            if path not in plan.keep and not catalog.within(path, inner):
                _remove(staging / _fs(path))
        dirnames[:] = [d for d in dirnames if (staging / _fs(here) / _fs(d)).exists()]
    for path, ns in plan.dirs:
        full = staging / _fs(path) if path else staging
        if full.is_symlink() or full.exists():
            os.utime(full, ns=(ns, ns), follow_symlinks=False)


def _place_path(staging: Path, target: Path, inner: bytes, *, fresh: bool) -> None:
    """The restored path into ``target``: the whole staging tree for a new or empty one, else
    (--force) the path alone, replacing what is there."""
    if fresh:
        staging.rename(target)
        fsutil.fsync_dir(target.parent)
        return
    destination = target / _fs(inner)
    if destination.is_symlink() or destination.exists():
        _remove(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    (staging / _fs(inner)).rename(destination)


# --- verify ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Expected:
    """One entry of a source as the archives record it."""

    kind: str  # "file", "dir", "symlink", "hardlink", "other"
    mode: int
    uid: int
    gid: int
    mtime: int
    size: int = 0
    sha256: str = ""
    target: bytes = b""
    xattrs: tuple[tuple[str, bytes], ...] = ()


def _member_path(name: str) -> bytes:
    raw = os.fsencode(name)
    while raw.startswith(b"./"):
        raw = raw[2:]
    return b"" if raw == b"." else raw.rstrip(b"/")


def _dumpdir_of(member: tarfile.TarInfo, data: bytes | None) -> list[bytes] | None:
    """The raw entries of a GNU dump directory (each a flag byte and a name), or None."""
    header = member.pax_headers.get("GNU.dumpdir")
    if header is not None:
        raw = header.encode("utf-8", "surrogateescape")
    elif member.type == b"D" and data is not None:
        raw = data
    else:
        return None
    return [item for item in raw.split(b"\0") if item]


def _present_names(dumpdir: list[bytes]) -> set[bytes]:
    """Names a dump directory lists as present: in this archive (Y), before (N), or dirs (D)."""
    return {item[1:] for item in dumpdir if item[:1] in (b"Y", b"N", b"D")}


def _renames(dumpdir: list[bytes]) -> list[tuple[bytes, bytes]]:
    """The directory renames tar recorded (R old, T new), in the order tar applies them."""
    pairs: list[tuple[bytes, bytes]] = []
    old: bytes | None = None
    for item in dumpdir:
        if item[:1] == b"R":
            old = _member_path(os.fsdecode(item[1:]))
        elif item[:1] == b"T" and old is not None:
            pairs.append((old, _member_path(os.fsdecode(item[1:]))))
            old = None
    return pairs


def _apply_rename(state: dict[bytes, Expected], old: bytes, new: bytes) -> None:
    moved = {p: e for p, e in state.items() if p == old or p.startswith(old + b"/")}
    for path in moved:
        del state[path]
    for path, entry in moved.items():
        state[new + path[len(old) :]] = entry


def _xattrs_of(member: tarfile.TarInfo) -> tuple[tuple[str, bytes], ...]:
    prefix = "SCHILY.xattr."
    return tuple(
        sorted(
            (key[len(prefix) :], value.encode("utf-8", "surrogateescape"))
            for key, value in member.pax_headers.items()
            if key.startswith(prefix) and not key[len(prefix) :].startswith("system.")
        )
    )


def _expected_of(member: tarfile.TarInfo, content: IO[bytes] | None) -> Expected:
    common: dict[str, Any] = {
        "mode": member.mode,
        "uid": member.uid,
        "gid": member.gid,
        "mtime": int(member.mtime),
        "xattrs": _xattrs_of(member),
    }
    if member.isdir():
        return Expected("dir", **common)
    if member.issym():
        return Expected("symlink", target=os.fsencode(member.linkname), **common)
    if member.islnk():
        return Expected("hardlink", target=_member_path(member.linkname), **common)
    if member.isreg() and content is not None:
        digest = hashlib.sha256()
        while chunk := content.read(1 << 20):
            digest.update(chunk)
        return Expected("file", size=member.size, sha256=digest.hexdigest(), **common)
    return Expected("other", **common)


def expected_state(
    archives: Iterable[Path],
    *,
    identity: pipeline.Identity | None = None,
    encrypted_to: Mapping[str, Sequence[str]] | None = None,
) -> dict[bytes, Expected]:
    """The tree a chain rebuilds, computed by reading the archives (not by extracting them)."""
    state: dict[bytes, Expected] = {}
    for archive in archives:

        def read(stream: IO[bytes], archive: Path = archive) -> dict[bytes, set[bytes]]:
            return _read_members(archive, stream, state)

        dumps = pipeline.read_archive(
            archive,
            read,
            identity=identity,
            encrypted_to=(encrypted_to or {}).get(archive.name, ()),
        )
        _drop_deleted(state, dumps)
    return state


def _read_members(
    archive: Path, stream: IO[bytes], state: dict[bytes, Expected]
) -> dict[bytes, set[bytes]]:
    """Apply one archive's members to ``state``; the names each dump directory lists."""
    dumps: dict[bytes, set[bytes]] = {}
    try:
        with tarfile.open(
            fileobj=stream, mode="r|", encoding="utf-8", errors="surrogateescape"
        ) as tf:
            for member in tf:
                path = _member_path(member.name)
                content = tf.extractfile(member) if member.isreg() or member.type == b"D" else None
                data = content.read() if member.type == b"D" and content is not None else None
                dumpdir = _dumpdir_of(member, data)
                if dumpdir is not None:
                    dumps[path] = _present_names(dumpdir)
                    for old, new in _renames(dumpdir):
                        _apply_rename(state, old, new)
                if member.type == b"D":
                    member.type = tarfile.DIRTYPE
                state[path] = _expected_of(member, content)
    except tarfile.TarError as err:
        raise CommandError(f"cannot read {archive.name}: {err}") from err
    return dumps


def _drop_deleted(state: dict[bytes, Expected], dumps: dict[bytes, set[bytes]]) -> None:
    doomed = [
        path
        for path in state
        if path and _parent(path) in dumps and _basename(path) not in dumps[_parent(path)]
    ]
    for path in doomed:
        for other in [p for p in state if p == path or p.startswith(path + b"/")]:
            del state[other]


def _parent(path: bytes) -> bytes:
    return path.rpartition(b"/")[0]


def _basename(path: bytes) -> bytes:
    return path.rpartition(b"/")[2]


def _actual_entries(root: Path) -> dict[bytes, os.stat_result]:
    base = os.fsencode(root)
    found: dict[bytes, os.stat_result] = {b"": os.lstat(base)}
    for dirpath, dirnames, filenames in os.walk(base):
        for name in [*dirnames, *filenames]:
            full = dirpath + b"/" + name
            found[os.path.relpath(full, base)] = os.lstat(full)
    return found


def _actual_xattrs(path: bytes) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    return tuple(
        sorted(
            (n, os.getxattr(path, n, follow_symlinks=False))
            for n in names
            if not n.startswith("system.")
        )
    )


def _shown(path: bytes) -> str:
    return os.fsdecode(path) or "."


def compare_tree(expected: dict[bytes, Expected], root: Path, *, owners: bool = True) -> list[str]:
    """Every difference between the restored tree at ``root`` and what the archives record;
    without ``owners`` (a restore that could not give them back), owners are not compared."""
    actual = _actual_entries(root)
    problems: list[str] = []
    for path in sorted(set(expected) - set(actual)):
        problems.append(f"{_shown(path)}: missing after restore")
    for path in sorted(set(actual) - set(expected)):
        problems.append(f"{_shown(path)}: restored but not in the backup")
    base = os.fsencode(root)
    for path in sorted(set(expected) & set(actual)):
        want, st = expected[path], actual[path]
        full = base + b"/" + path if path else base
        found = _differences(want, st, full, base, actual, owners=owners)
        problems += [f"{_shown(path)}: {p}" for p in found]
    return problems


def _differences(
    want: Expected,
    st: os.stat_result,
    full: bytes,
    base: bytes,
    actual: dict[bytes, os.stat_result],
    *,
    owners: bool,
) -> list[str]:
    if want.kind == "hardlink":
        other = actual.get(want.target)
        if other is None or (other.st_ino, other.st_dev) != (st.st_ino, st.st_dev):
            return [f"not a hard link to {os.fsdecode(want.target)}"]
        return []
    kinds = {"file": stat.S_ISREG, "dir": stat.S_ISDIR, "symlink": stat.S_ISLNK}
    check = kinds.get(want.kind)
    if check is not None and not check(st.st_mode):
        return [f"is not a {want.kind}"]
    problems: list[str] = []
    if owners and (st.st_uid, st.st_gid) != (want.uid, want.gid):
        problems.append(f"owner {st.st_uid}:{st.st_gid}, recorded {want.uid}:{want.gid}")
    if want.kind == "symlink":
        target = os.readlink(full)  # noqa: PTH115 - bytes in, bytes out
        if target != want.target:
            problems.append(
                f"links to {os.fsdecode(target)!r}, recorded {os.fsdecode(want.target)!r}"
            )
        return problems
    if stat.S_IMODE(st.st_mode) != want.mode:
        problems.append(f"mode {stat.S_IMODE(st.st_mode):04o}, recorded {want.mode:04o}")
    if int(st.st_mtime) != want.mtime:
        problems.append(f"mtime {int(st.st_mtime)}, recorded {want.mtime}")
    if want.kind == "file" and (st.st_size != want.size or layout.sha256_of(full) != want.sha256):
        problems.append("content differs")
    if _actual_xattrs(full) != want.xattrs:
        problems.append("extended attributes differ")
    return problems


@dataclasses.dataclass(frozen=True)
class SourceVerdict:
    source: str
    archives: tuple[str, ...]
    entries: int
    problems: tuple[str, ...]
    # False for an encrypted chain verified without an identity: its ciphertext, size and
    # age header were checked, its content was not
    content_checked: bool = True
    # a dump's verdict (its source is "dump:UNIT"): the bytes its stream decompressed to
    dump_bytes: int = 0


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    checked_archives: int
    sources: tuple[SourceVerdict, ...]
    problems: tuple[str, ...]
    # the newest archive of each dump, read back whole through the read pipeline
    dumps: tuple[SourceVerdict, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems and all(not s.problems for s in (*self.sources, *self.dumps))

    @property
    def unchecked_sources(self) -> tuple[str, ...]:
        """Sources and dumps whose content was not checked (encrypted, and no identity)."""
        return tuple(s.source for s in (*self.sources, *self.dumps) if not s.content_checked)


def archive_problems(path: Path, entry: Mapping[str, Any]) -> list[str]:
    """What ``path`` does not match of its manifest entry: size and hash (of the ciphertext,
    for an encrypted archive), and for an encrypted one its age header (addressed to the
    recorded recipients, framed as age frames it): all that can be checked without a key."""
    name = path.name
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(age.MAX_HEADER_BYTES)
    except OSError as err:
        return [f"{name}: cannot read it: {err.strerror or err}"]
    problems: list[str] = []
    if size != entry.get("size"):
        problems.append(f"{name}: {size} bytes, the manifest records {entry.get('size')}")
    algorithm, digest = layout.recorded_hash(entry) or (layout.ARCHIVE_HASH, "")
    if layout.hash_of_file(path, algorithm) != digest:
        problems.append(f"{name}: {algorithm} differs from the manifest")
    if layout.is_encrypted_name(name):
        try:
            header = age.parse_header(head)
        except ValueError as err:
            return [*problems, f"{name}: {err}"]
        found = age.header_problems(header, size - header.size, entry.get("encrypted_to") or ())
        problems += [f"{name}: {p}" for p in found]
    return problems


def check_checksums(config: Config, records: Iterable[ArchiveRecord]) -> tuple[int, list[str]]:
    """Every archive against its manifest (``archive_problems``); archives no manifest lists
    are problems."""
    recorded = layout.read_manifests(config.backup_dir, config.host)
    problems: list[str] = []
    count = 0
    for record in records:
        entry = recorded.get(record.name)
        if entry is None:
            problems.append(f"{record.name}: listed in no manifest")
            continue
        count += 1
        problems += archive_problems(config.backup_dir / record.name, entry)
    return count, problems


def run_verify(
    config: Config,
    *,
    scratch: Path | None = None,
    identity: pipeline.Identity | None = None,
    trust: signing.Trust | None = None,
) -> VerifyReport:
    """Signatures of every chain (refused as restore refuses them), checksums of every
    archive, then a trial restore of each source's latest chain.

    An encrypted chain is restored only with ``identity``; without one its archives are
    checked against their manifests and age headers alone, and its verdict says its content
    was not checked (as on a receiving host, which holds no key).
    """
    trust = trust if trust is not None else signing.trust_for(config)
    backup_dir = config.backup_dir
    if not backup_dir.is_dir():
        raise FileError(f"backup directory {backup_dir} does not exist")
    with reading_lock(backup_dir):
        records = backup.scan_archives(config)
        if not records:
            raise FileError(f"no archives of {config.host} in {backup_dir}")
        for chains in backup.chains_of(records).values():
            for chain in chains:
                # the hashes are compared just below, against the manifests proved here
                signing.verify_chain(
                    backup_dir,
                    config.host,
                    [a.name for a in chain.archives],
                    trust,
                    hash_archives=False,
                )
        count, problems = check_checksums(config, records)
        with scratch_dir(backup_dir, scratch) as work:
            verdicts = [
                _verify_source(config, source, records, work / str(index), identity)
                for index, source in enumerate(config.backup.sources)
            ]
        dumps = [_verify_dump(config, record, identity) for record in newest_dumps(records)]
    return VerifyReport(count, tuple(verdicts), tuple(problems), tuple(dumps))


def newest_dumps(records: Iterable[ArchiveRecord]) -> list[ArchiveRecord]:
    """The newest archive of each dump among ``records`` (sorted by run), in unit order."""
    newest: dict[str, ArchiveRecord] = {}
    for record in records:
        if layout.is_dump_source(record.slug):
            newest[record.slug] = record
    return [newest[slug] for slug in sorted(newest)]


def _verify_dump(
    config: Config, record: ArchiveRecord, identity: pipeline.Identity | None
) -> SourceVerdict:
    """Read the dump back whole, decrypted and decompressed, as restore --dump would, into
    nothing: a stream that does not decompress (or decrypt) to its end is a problem. An
    encrypted one without ``identity`` was checked by its ciphertext and header alone."""
    names = (record.name,)
    if identity is None and layout.is_encrypted_name(record.name):
        return SourceVerdict(record.slug, names, 0, (), content_checked=False)
    try:
        size = pipeline.read_archive(
            config.backup_dir / record.name,
            _count_stream,
            identity=identity,
            encrypted_to=encrypted_to_of(config).get(record.name, ()),
        )
    except KeyforgeError as err:
        return SourceVerdict(record.slug, names, 0, (str(err),))
    return SourceVerdict(record.slug, names, 0, (), dump_bytes=size)


def _count_stream(stream: IO[bytes], chunk: int = 1 << 20) -> int:
    count = 0
    while data := stream.read(chunk):
        count += len(data)
    return count


def _verify_source(
    config: Config,
    source: str,
    records: list[ArchiveRecord],
    work: Path,
    identity: pipeline.Identity | None,
) -> SourceVerdict:
    slug = layout.source_slug(source)
    archives = backup.select_for_restore(records, slug, None)
    names = tuple(a.name for a in archives)
    if not archives:
        return SourceVerdict(source, names, 0, ("no full backup to restore",))
    if identity is None and any(layout.is_encrypted_name(n) for n in names):
        return SourceVerdict(source, names, 0, (), content_checked=False)
    recipients = encrypted_to_of(config)
    _make_private(work)
    try:
        paths = [config.backup_dir / n for n in names]
        try:
            check_chain_identity(config, archives, identity)
            apply_chain(config, archives, work, identity)
            expected = expected_state(paths, identity=identity, encrypted_to=recipients)
        except KeyforgeError as err:
            return SourceVerdict(source, names, 0, (str(err),))
        problems = compare_tree(expected, work, owners=restores_owners())
        return SourceVerdict(source, names, len(expected), tuple(problems))
    finally:
        _remove_tree(work)


def _remove_tree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    else:
        fsutil.remove_tree(path)


def summarize_problems(problems: Iterable[str]) -> str:
    items = list(problems)
    head = "; ".join(items[:MAX_PROBLEMS_SHOWN])
    more = len(items) - MAX_PROBLEMS_SHOWN
    return head + (f"; and {more} more" if more > 0 else "")


# --- restore --dump --------------------------------------------------------------------------


def plan_dump_restore(config: Config, unit: str, at: dt.date | catalog.At | None) -> ArchiveRecord:
    """The newest archive of dump ``unit`` at or before ``at`` (as --at reads it)."""
    wanted = layout.dump_source(unit)
    bound = as_at(at)
    records = backup.scan_archives(config)
    found = [r for r in records if r.slug == wanted and (bound is None or bound.admits(r))]
    if found:
        return found[-1]
    prefix = layout.dump_source("")
    units = sorted({r.slug[len(prefix) :] for r in records if layout.is_dump_source(r.slug)})
    when = f" at or before {bound.text}" if bound else ""
    known = f" (dumps there: {', '.join(units)})" if units else ""
    raise FileError(f"no dump {unit}{when} in {config.backup_dir}{known}")


def run_dump_restore(
    config: Config,
    unit: str,
    target: Path | None,
    *,
    at: dt.date | catalog.At | None = None,
    force: bool = False,
    dry_run: bool = False,
    stdout: Callable[[], int] | None = None,
    identity: pipeline.Identity | None = None,
    trust: signing.Trust | None = None,
) -> ArchiveRecord:
    """Write dump ``unit`` as the database's tool made it, to ``target`` or to ``stdout``.

    Its manifest's signature is checked against ``trust`` (default: the config's allowed
    signers), as a source's chain is: a dump is a chain of one. Its size and hash are
    checked against that manifest first: a damaged dump fed to pg_restore or mariadb would
    fail half-way through a reload. An encrypted dump needs ``identity``, checked
    against the recipients its manifest records before anything is written; it is decrypted
    and decompressed in one stream (``pipeline.read_archive``) straight into the output. A
    file appears whole or not at all (written beside it 0600, renamed when complete); an
    existing one is replaced only with ``force``. Without ``target`` the dump goes to the
    descriptor ``stdout`` returns (default 1), asked for only once there is a dump to write.
    """
    record = plan_dump_restore(config, unit, at)
    trust = trust if trust is not None else signing.trust_for(config)
    encrypted_to = encrypted_to_of(config).get(record.name, ())
    if layout.is_encrypted_name(record.name):
        pipeline.check_identity(record.name, encrypted_to, identity)
    if dry_run:
        check_chain(config, [record], trust)
        return record
    if target is not None:
        target = target.absolute()
        if target.exists() and not force:
            raise UsageError(f"{target} exists; pass --force to replace it")
    archive = config.backup_dir / record.name

    def write_to(fd: int) -> None:
        pipeline.read_archive(
            archive,
            lambda stream: _copy_stream(stream, fd),
            identity=identity,
            encrypted_to=encrypted_to,
        )

    with reading_lock(config.backup_dir):
        if trust.insecure:
            _, problems = check_checksums(config, [record])
            if problems:
                raise KeyforgeError(f"cannot restore dump {unit}: {problems[0]}")
        else:
            check_chain(config, [record], trust)  # signed, and the size and hash signed
        if target is None:
            write_to(stdout() if stdout is not None else 1)
            return record
        partial = staging_path(target)
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, fsutil.PRIVATE_FILE)
        except OSError as err:
            raise FileError.from_os_error("write", partial, err) from err
        try:
            with os.fdopen(fd, "wb") as out:
                write_to(out.fileno())
                os.fsync(out.fileno())
            partial.replace(target)
            fsutil.fsync_dir(target.parent)
        except OSError as err:
            with contextlib.suppress(OSError):
                partial.unlink()
            raise FileError.from_os_error("write", target, err) from err
        except BaseException:
            with contextlib.suppress(OSError):
                partial.unlink()
            raise
    return record


def _copy_stream(stream: IO[bytes], fd: int, chunk: int = 1 << 20) -> None:
    """Everything ``stream`` (the read pipeline's output) holds, written to ``fd``."""
    source = stream.fileno()
    while data := os.read(source, chunk):
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
