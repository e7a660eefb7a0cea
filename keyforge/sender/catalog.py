"""What the backups hold: runs, archives and sizes (``keyforge list``), which runs hold a path
(``keyforge find``), the tree as of any run (``restore --path``, ``drill``).

The tree of a run is rebuilt from tar's own listings, chain by chain, as tar's incremental
extraction would rebuild it: each archive's members replace what was there, the renames and
the dump directories of the archive say which names are still present (the rest were deleted).
That rebuilding is pure (:func:`apply_archive`), so it is tested without archives.

``--at`` picks a run: a day (its last run), a run's stamp as ``keyforge list`` prints it, or a
time (the newest run made at or before it).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fnmatch
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from keyforge import layout
from keyforge.config import Config, parse
from keyforge.errors import FileError, UsageError
from keyforge.layout import MASTER, ArchiveRecord
from keyforge.sender import backup, reading
from keyforge.sender.listing import Member, member_path
from keyforge.sender.pipeline import Identity

# the highest sort key a run of a day can have: every stamp of that day sorts below it
_END_OF_DAY = ("235959", 1 << 30)


# --- --at -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class At:
    """An upper bound on run stamps (``layout.stamp_key``), and how the user wrote it."""

    bound: tuple[str, str, int]
    text: str

    def admits(self, record: ArchiveRecord) -> bool:
        return record.sort_key <= self.bound


def parse_at(text: str) -> At:
    """A day (2026-11-28: its last run), a run stamp as ``keyforge list`` prints it (20261128
    for a day's first run, 20261128-093000[-2] for a later one) or a time (2026-11-28T09:30[:SS]:
    the newest run made by then). Each means the newest run at or before it."""
    value = text.strip()
    try:
        day = dt.datetime.strptime(value, "%Y-%m-%d").date()
    except ValueError:
        pass
    else:
        return At((day.strftime("%Y%m%d"), *_END_OF_DAY), text)
    if re.fullmatch(r"\d{8}(?:-\d{6}(?:-\d+)?)?", value):
        try:
            layout.stamp_datetime(value)
        except ValueError:
            pass
        else:
            return At(layout.stamp_key(value), text)
    for fmt in ("%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S"):
        try:
            when = dt.datetime.strptime(value, fmt)
        except ValueError:
            continue
        return At((when.strftime("%Y%m%d"), when.strftime("%H%M%S"), 1 << 30), text)
    raise UsageError(
        f"--at must be a day (2026-11-28), a run as 'keyforge list' shows it "
        f"(20261128-093000) or a time (2026-11-28T09:30), got {text!r}"
    )


def select_chain(records: Iterable[ArchiveRecord], slug: str, at: At | None) -> list[ArchiveRecord]:
    """The archives to apply, in order, to rebuild ``slug`` as of the run ``at`` picks."""
    chains = backup.chains_of(records).get(slug, [])
    for chain in reversed([c for c in chains if c.master is not None]):
        wanted = [a for a in chain.archives if at is None or at.admits(a)]
        if wanted and wanted[0].kind == MASTER:
            return wanted
    return []


# --- rebuilding a run's tree (pure) ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Held:
    """One entry of a run's tree: the member as listed, the archive holding that version and
    the name it has there (a directory renamed since keeps its old name in older archives)."""

    member: Member
    archive: str
    name: bytes


State = dict[bytes, Held]


def within(path: bytes, top: bytes) -> bool:
    return not top or path == top or path.startswith(top + b"/")


def _renames(dumpdir: Sequence[bytes]) -> list[tuple[bytes, bytes]]:
    """The directory renames a dump directory records (R old, T new), in tar's order."""
    pairs: list[tuple[bytes, bytes]] = []
    old: bytes | None = None
    for item in dumpdir:
        if item[:1] == b"R":
            old = _relative(item[1:])
        elif item[:1] == b"T" and old is not None:
            pairs.append((old, _relative(item[1:])))
            old = None
    return pairs


def _relative(raw: bytes) -> bytes:
    return member_path(raw)


def _present(dumpdir: Sequence[bytes]) -> set[bytes]:
    """The names a dump directory lists as there: new (Y), unchanged (N), directories (D)."""
    return {item[1:] for item in dumpdir if item[:1] in (b"Y", b"N", b"D")}


def apply_archive(
    state: Mapping[bytes, Held],
    members: Iterable[Member],
    dumps: Mapping[bytes, Sequence[bytes]],
    archive: str,
) -> State:
    """The tree after applying one archive onto ``state``, as tar's incremental extraction
    does it: renames first, then each member, then every name a dump directory no longer
    lists is deleted (with what lies below it)."""
    new: State = dict(state)
    for dumpdir in dumps.values():
        for old, renamed in _renames(dumpdir):
            moved = {p: h for p, h in new.items() if within(p, old) and old}
            for path in moved:
                del new[path]
            for path, held in moved.items():
                new[renamed + path[len(old) :]] = held
    for member in members:
        new[member.path] = Held(member, archive, member.path)
    children: dict[bytes, list[bytes]] = {}
    for path in new:
        if path:
            children.setdefault(path.rpartition(b"/")[0], []).append(path)
    doomed: set[bytes] = set()
    for directory, dumpdir in dumps.items():
        present = _present(dumpdir)
        doomed.update(
            p for p in children.get(directory, ()) if p.rpartition(b"/")[2] not in present
        )
    if doomed:
        for path in [p for p in new if _has_ancestor_in(p, doomed)]:
            del new[path]
    return new


def _has_ancestor_in(path: bytes, roots: set[bytes]) -> bool:
    """Whether ``path`` or a directory above it is one of ``roots``."""
    while path:
        if path in roots:
            return True
        path = path.rpartition(b"/")[0]
    return False


# --- reading the backup directory ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunTree:
    """A source's tree as of one run."""

    record: ArchiveRecord
    state: State


def source_of_slug(config: Config, slug: str) -> str:
    for source in config.backup.sources:
        if layout.source_slug(source) == slug:
            return source
    return slug


def history(
    config: Config, slug: str, at: At | None = None, identity: Identity | None = None
) -> list[RunTree]:
    """The tree of ``slug`` after every run of every chain that has a master (up to ``at``)."""
    runs: list[RunTree] = []
    for chain in backup.chains_of(backup.scan_archives(config)).get(slug, []):
        if chain.master is None:
            continue
        state: State = {}
        for record in chain.archives:
            if at is not None and not at.admits(record):
                break
            state = read_archive_into(config, record, state, identity)
            runs.append(RunTree(record, state))
    return runs


def recipients_of(config: Config, name: str) -> tuple[str, ...]:
    """The recipients' fingerprints a manifest records for archive ``name`` (none: plain)."""
    entry = layout.read_manifests(config.backup_dir, config.host).get(name) or {}
    return tuple(entry.get("encrypted_to") or ())


def read_archive_into(
    config: Config, record: ArchiveRecord, state: State, identity: Identity | None = None
) -> State:
    """``state`` after the archive ``record`` (an encrypted one needs ``identity``)."""
    path = config.backup_dir / record.name
    keys = recipients_of(config, record.name)
    members = reading.list_members(path, identity=identity, encrypted_to=keys)
    directories = [m.path for m in members if m.kind == "dir"]
    dumps = reading.dumpdirs(path, directories, identity=identity, encrypted_to=keys)
    return apply_archive(state, members, dumps, record.name)


def tree_at(
    config: Config, slug: str, at: At | None, identity: Identity | None = None
) -> tuple[list[ArchiveRecord], State]:
    """The chain ``at`` picks and the tree it rebuilds."""
    chain = select_chain(backup.scan_archives(config), slug, at)
    state: State = {}
    for record in chain:
        state = read_archive_into(config, record, state, identity)
    return chain, state


# --- list ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ArchiveLine:
    name: str
    source: str
    kind: str
    size: int


@dataclasses.dataclass(frozen=True)
class Run:
    stamp: str
    archives: tuple[ArchiveLine, ...]

    @property
    def size(self) -> int:
        return sum(a.size for a in self.archives)


def list_runs(config: Config) -> list[Run]:
    """Every run whose archives are present, oldest first, with each archive's size."""
    by_stamp: dict[str, list[ArchiveLine]] = {}
    for record in backup.scan_archives(config):
        try:
            size = (config.backup_dir / record.name).stat().st_size
        except OSError as err:
            raise FileError.from_os_error("read", config.backup_dir / record.name, err) from err
        line = ArchiveLine(record.name, source_of_slug(config, record.slug), record.kind, size)
        by_stamp.setdefault(record.stamp, []).append(line)
    return [
        Run(stamp, tuple(lines))
        for stamp, lines in sorted(by_stamp.items(), key=lambda item: layout.stamp_key(item[0]))
    ]


# --- find ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sighting:
    """A path as one run holds it."""

    stamp: str
    held: Held


@dataclasses.dataclass(frozen=True)
class Found:
    """Every run holding one path, and the first run after them that no longer does."""

    path: str
    sightings: tuple[Sighting, ...]
    gone_in: str | None


def shown_path(source: str, relative: bytes) -> str:
    top = source.rstrip("/")
    name = os.fsdecode(relative)
    return f"{top}/{name}" if name else (source or "/")


def matches(pattern: str, path: str) -> bool:
    """A pattern without '/' matches a name; one with '/' the whole path (a leading '/'
    optional), each as a shell glob."""
    if "/" not in pattern:
        return fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], pattern)
    return fnmatch.fnmatchcase(path.lstrip("/"), pattern.lstrip("/"))


def find_in_history(source: str, runs: Sequence[RunTree], pattern: str) -> list[Found]:
    """Which runs hold each path matching ``pattern`` (pure over a source's history)."""
    sightings: dict[str, list[Sighting]] = {}
    last_seen: dict[str, int] = {}
    for index, run in enumerate(runs):
        for relative, held in run.state.items():
            path = shown_path(source, relative)
            if matches(pattern, path):
                sightings.setdefault(path, []).append(Sighting(run.record.stamp, held))
                last_seen[path] = index
    found = []
    for path in sorted(sightings):
        later = runs[last_seen[path] + 1 :]
        found.append(Found(path, tuple(sightings[path]), later[0].record.stamp if later else None))
    return found


def find(
    config: Config,
    pattern: str,
    sources: Sequence[str] | None = None,
    identity: Identity | None = None,
) -> list[Found]:
    """Every path matching ``pattern`` in every run of the given (default: all) sources."""
    wanted = sources or config.backup.sources
    found: list[Found] = []
    for source in wanted:
        runs = history(config, layout.source_slug(source), identity=identity)
        found += find_in_history(source, runs, pattern)
    return found


def resolve_path(config: Config, path: str, source: str | None) -> tuple[str, bytes]:
    """``--path``: the configured source holding it and the path inside that source.

    An absolute path (or one relative to /, as in ``etc/nginx``) names its source by the
    longest configured source it lies in; with ``--source`` a relative path may also start at
    that source.
    """
    cleaned = "/" + path.strip("/")
    if "/../" in cleaned + "/" or "/./" in cleaned + "/" or "\0" in cleaned:
        raise UsageError(f"--path must be a plain path without '.' or '..', got {path!r}")
    candidates = [source] if source is not None else list(config.backup.sources)
    best: tuple[str, bytes] | None = None
    for configured in candidates:
        top = Path(configured)
        if Path(cleaned) == top or Path(cleaned).is_relative_to(top):
            inner = Path(cleaned).relative_to(top).as_posix()
            if best is None or len(configured) > len(best[0]):
                best = (configured, b"" if inner == "." else os.fsencode(inner))
    if best is None and source is not None and not path.startswith("/"):
        best = (source, os.fsencode(path.strip("/")))
    if best is None:
        known = ", ".join(config.backup.sources)
        raise UsageError(f"--path {path} lies in no configured source (sources: {known})")
    return best


# --- reading a pushed copy with no config -----------------------------------------------------


def copy_config(directory: Path, host: str | None = None) -> Config:
    """A config to read the backups in ``directory`` (a synced copy or a snapshot of it) as
    they are: ``host`` (default: the only host whose manifests are there) and every source
    its manifests name. Nothing of it is written anywhere."""
    if not directory.is_dir():
        raise FileError(f"--from {directory}: not a directory")
    hosts = layout.manifest_hosts(directory)
    if host is None:
        if len(hosts) != 1:
            found = ", ".join(hosts) if hosts else "none"
            raise UsageError(
                f"--from {directory}: give --host, the host whose backups to read "
                f"(hosts with manifests there: {found})"
            )
        host = hosts[0]
    elif host not in hosts:
        found = ", ".join(hosts) if hosts else "none"
        raise FileError(f"--from {directory}: no manifests of {host} there (hosts: {found})")
    runs = layout.run_manifests(directory, host)
    sources: dict[str, None] = {}
    for stamp in sorted(runs, key=layout.stamp_key):
        for entry in layout.load_manifest(runs[stamp]).archives:
            sources.setdefault(entry.source, None)
    return parse(
        {
            "general": {"host": host},
            "backup": {"sources": list(sources), "directory": str(directory.absolute())},
        },
        source=f"--from {directory}",
    )
