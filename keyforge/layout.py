"""The backup directory's contract: what the sending server writes and everyone else reads.

Archive and manifest names, the run stamp inside them, the manifest format and its one reader,
the lock every writer takes, and the ``.NAME.partial`` names of work in progress. ``backup``
writes by it; ``restore``, ``status``, ``sync``, ``rotate`` and the receiving host's
``snapshot`` read by it, so a name or a field means the same to all of them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, cast

import blake3

from keyforge import age
from keyforge.errors import FileError, KeyforgeError
from keyforge.infra import fsutil

MASTER = "master"


INCREMENTAL = "incremental"


LOCK_NAME = ".keyforge.lock"


# the index of every archive present, rewritten after each change; its presence marks a
# directory as a keyforge backup directory (the sync runner refuses to push one without it)
MANIFEST_NAME = "keyforge-manifest.json"


SNAPSHOT_DIR = ".snapshots"


PARTIAL_SUFFIX = ".partial"


MANIFEST_SUFFIX = ".manifest.json"


# beside every manifest keyforge writes: its detached SSHSIG signature (``ssh-keygen -Y verify
# -n SIGNATURE_NAMESPACE`` checks it), made with the sending server's manifest-signing key
SIGNATURE_SUFFIX = ".sig"


SIGNATURE_NAMESPACE = "keyforge-manifest"


EXTENSIONS = {"zstd": "zst", "gzip": "gz", "pigz": "gz"}


# an archive encrypted with age ([backup] encrypt_to) ends in .tar.zst.age (or .tar.gz.age)
ENCRYPTED_SUFFIX = ".age"


class Hasher(Protocol):
    def update(self, data: bytes | memoryview, /) -> object: ...

    def hexdigest(self) -> str: ...


# The hash a manifest records of each archive, under the algorithm's name as its key. backup
# writes BLAKE3: on one core, 6.5 GB/s against sha256's 1.7 GB/s even with SHA extensions, and
# Debian's b3sum checks it. Manifests written with sha256 stay readable and are checked with
# sha256.
ARCHIVE_HASH = "blake3"
ARCHIVE_HASHES: Mapping[str, Callable[[], Hasher]] = {
    "blake3": blake3.blake3,
    "sha256": hashlib.sha256,
}


_STAMP_RE = r"(?P<date>\d{8})(?:-(?P<time>\d{6}))?(?:-(?P<seq>\d+))?"


_ARCHIVE_RE = re.compile(
    rf"^(?P<prefix>.+)\.{_STAMP_RE}\.(?P<kind>master|incremental)"
    r"\.tar\.(?P<ext>zst|gz)(?P<age>\.age)?\Z"
)


# a [[dumps]] archive: one compressed stream, a whole dump each run (never a chain of its own)
DUMP = "dump"


_DUMP_RE = re.compile(rf"^(?P<prefix>.+)\.{_STAMP_RE}\.{DUMP}\.(?P<ext>zst|gz)(?P<age>\.age)?\Z")


_MANIFEST_RE = re.compile(rf"^(?P<host>.+)\.{_STAMP_RE}\.manifest\.json\Z")


# --- names ---------------------------------------------------------------------------------


def source_slug(source: str) -> str:
    """The part of an archive name that says which source it holds: /var/lib -> var_lib."""
    inner = source.strip("/")
    if not inner:
        return "rootfs"
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", inner.replace("/", "_"))


def stamp_key(stamp: str) -> tuple[str, str, int]:
    """Sort key of a run stamp: 20261128 < 20261128-093000 < 20261128-093000-2 < 20261129."""
    match = re.fullmatch(_STAMP_RE, stamp)
    if match is None:
        raise ValueError(f"not a run stamp: {stamp!r}")
    return (match["date"], match["time"] or "", int(match["seq"] or 0))


def stamp_datetime(stamp: str) -> dt.datetime:
    date, clock, _ = stamp_key(stamp)
    clock = clock or "000000"
    # by position, as the stamp's pattern fixes them: strptime would cost every run its import
    year, month, day = int(date[:4]), int(date[4:6]), int(date[6:])
    return dt.datetime(year, month, day, int(clock[:2]), int(clock[2:4]), int(clock[4:]))


def new_stamp(now: dt.datetime, taken: Iterable[str]) -> str:
    """The run's stamp: the bare date for the day's first run, date-time for any later one."""
    used = set(taken)
    candidates = [now.strftime("%Y%m%d"), now.strftime("%Y%m%d-%H%M%S")]
    candidates += [f"{candidates[1]}-{n}" for n in range(2, 1000)]
    for candidate in candidates:
        if candidate not in used and all(stamp_key(candidate) > stamp_key(u) for u in used):
            return candidate
    raise KeyforgeError(f"cannot name a run at {now:%Y-%m-%d %H:%M:%S}: newer archives exist")


def archive_name(
    host: str, slug: str, stamp: str, kind: str, compression: str, *, encrypted: bool = False
) -> str:
    suffix = ENCRYPTED_SUFFIX if encrypted else ""
    return f"{host}-{slug}.{stamp}.{kind}.tar.{EXTENSIONS[compression]}{suffix}"


def is_encrypted_name(name: str) -> bool:
    """Whether an archive (or its partial file) is an age-encrypted one."""
    return name.removesuffix(PARTIAL_SUFFIX).endswith(ENCRYPTED_SUFFIX)


def dump_name(
    host: str, unit: str, stamp: str, compression: str, *, encrypted: bool = False
) -> str:
    """server1-appdb.20261128.dump.zst: the dump ``unit`` of a [[dumps]] entry, one run
    (``.dump.zst.age`` when encrypted)."""
    suffix = ENCRYPTED_SUFFIX if encrypted else ""
    return f"{host}-{unit}.{stamp}.{DUMP}.{EXTENSIONS[compression]}{suffix}"


def dump_source(unit: str) -> str:
    """What a manifest entry of a dump records as its source (a source is a path, this never)."""
    return f"{DUMP}:{unit}"


def record_kind(kind: str) -> str:
    """The kind an archive's record (its name) carries for its manifest entry's ``kind``: a
    dump is whole, a chain of one, so its record is a master."""
    return MASTER if kind == DUMP else kind


def is_dump_source(source: str) -> bool:
    """Whether a record's source (or slug) is a dump's, not a path's."""
    return source.startswith(dump_source(""))


def parse_dump_name(name: str, host: str) -> ArchiveRecord | None:
    """The record of a dump of ``host``, its unit as slug, or None for any other name. A dump
    is whole on its own, so its record is a master: retention keeps each unit's newest."""
    match = _DUMP_RE.match(name)
    if match is None or not match["prefix"].startswith(f"{host}-"):
        return None
    unit = match["prefix"][len(host) + 1 :]
    if "." in unit or not unit:
        return None
    stamp = name[len(match["prefix"]) + 1 :].split(".", 1)[0]
    return ArchiveRecord(stamp_key(stamp), dump_source(unit), MASTER, name, stamp)


def manifest_name(host: str, stamp: str) -> str:
    return f"{host}.{stamp}{MANIFEST_SUFFIX}"


def signature_path(manifest: Path) -> Path:
    return manifest.with_name(manifest.name + SIGNATURE_SUFFIX)


def partial_name(name: str) -> str:
    return f".{name}{PARTIAL_SUFFIX}"


def work_snapshot_of(snapshot: Path) -> Path:
    """Where a run writes tar's new snapshot file until its archive is listed in a manifest."""
    return snapshot.with_name(partial_name(snapshot.name))


@dataclasses.dataclass(frozen=True, order=True)
class ArchiveRecord:
    """One committed archive, as its name describes it."""

    sort_key: tuple[str, str, int]
    slug: str
    kind: str
    name: str
    stamp: str

    @property
    def when(self) -> dt.datetime:
        return stamp_datetime(self.stamp)


def parse_archive_name(name: str, host: str, slugs: Iterable[str]) -> ArchiveRecord | None:
    """The record of an archive of ``host`` for one of ``slugs``, or None for any other name."""
    match = _ARCHIVE_RE.match(name)
    if match is None:
        return None
    prefix = match["prefix"]
    for slug in slugs:
        if prefix == f"{host}-{slug}":
            stamp = name[len(prefix) + 1 :].split(".", 1)[0]
            return ArchiveRecord(stamp_key(stamp), slug, match["kind"], name, stamp)
    return None


def archive_records(names: Iterable[str]) -> list[ArchiveRecord]:
    """The records of every archive name among ``names``, of any host and source, each source
    told apart by its whole ``host-slug`` prefix (a receiving host's copy holds another host's
    archives, whose sources it does not know)."""
    records = []
    for name in names:
        match = _ARCHIVE_RE.match(name) or _DUMP_RE.match(name)
        if match is not None:
            stamp = name[len(match["prefix"]) + 1 :].split(".", 1)[0]
            kind = match.groupdict().get("kind") or MASTER  # a dump is whole: a master
            records.append(ArchiveRecord(stamp_key(stamp), match["prefix"], kind, name, stamp))
    return sorted(records)


# --- manifests: the format and its one reader ------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ArchiveEntry:
    """What a manifest records about one archive it lists."""

    name: str
    source: str
    kind: str
    chain: str
    size: int
    digest: str  # hexadecimal, by ``algorithm``
    warnings: tuple[str, ...] = ()
    # what the source held when it was read: the next master is compared with it
    source_files: int | None = None
    source_bytes: int | None = None
    # a source that looked empty or shrank: 'keyforge status' shows these
    alerts: tuple[str, ...] = ()
    # age recipients' fingerprints (keyforge.age), sorted; empty for a plaintext archive.
    # size and digest are always those of the file as written: the ciphertext when encrypted
    encrypted_to: tuple[str, ...] = ()
    algorithm: str = ARCHIVE_HASH  # a key of ARCHIVE_HASHES

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "kind": self.kind,
            "chain": self.chain,
            "size": self.size,
            self.algorithm: self.digest,
            "warnings": list(self.warnings),
            "source_files": self.source_files,
            "source_bytes": self.source_bytes,
            "alerts": list(self.alerts),
            "encrypted_to": list(self.encrypted_to),
        }


@dataclasses.dataclass(frozen=True)
class ManifestLink:
    """The run manifest before this one, by name and the sha256 of its bytes: dropping a run
    from the middle of a chain (its archives and its manifest) breaks the link."""

    name: str
    sha256: str


def manifest_json(
    host: str,
    stamp: str,
    started: dt.datetime,
    entries: Sequence[ArchiveEntry],
    *,
    previous: ManifestLink | None = None,
    signed_by: str | None = None,
) -> bytes:
    document: dict[str, Any] = {
        "format": 1,
        "host": host,
        "run": stamp,
        "started": started.isoformat(timespec="seconds"),
        "archives": [e.to_json() for e in entries],
    }
    # added fields: a reader of the first format ignores them
    if previous is not None:
        document["previous"] = dataclasses.asdict(previous)
    if signed_by is not None:
        document["signed_by"] = signed_by
    return (json.dumps(document, indent=2, sort_keys=False) + "\n").encode()


def lock_path(backup_dir: Path) -> Path:
    """The lock shared by every writer and reader of the backup directory, sync included."""
    return backup_dir / LOCK_NAME


def run_manifests(backup_dir: Path, host: str) -> dict[str, Path]:
    """This host's run manifests by run stamp; another host's (``host.lan.*``) are not ours."""
    found: dict[str, Path] = {}
    for path in backup_dir.glob(f"{host}.*{MANIFEST_SUFFIX}"):
        match = _MANIFEST_RE.match(path.name)
        if match is not None and match["host"] == host:
            found[path.name[len(host) + 1 : -len(MANIFEST_SUFFIX)]] = path
    return found


def manifest_hosts(backup_dir: Path) -> list[str]:
    """The hosts whose run manifests ``backup_dir`` holds, by the host each one records."""
    hosts: set[str] = set()
    try:
        paths = [p for p in backup_dir.iterdir() if _MANIFEST_RE.match(p.name)]
    except OSError as err:
        raise FileError.from_os_error("read", backup_dir, err) from err
    for path in paths:
        hosts.add(load_manifest(path).host)
    return sorted(hosts)


def read_manifests(backup_dir: Path, host: str) -> dict[str, dict[str, Any]]:
    """Every archive entry recorded by this host's run manifests, by archive name."""
    entries: dict[str, dict[str, Any]] = {}
    runs = run_manifests(backup_dir, host)
    for stamp in sorted(runs, key=stamp_key):
        for entry in load_manifest(runs[stamp]).archives:
            entries[entry.name] = entry.to_json()
    return entries


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A run manifest or the index (MANIFEST_NAME), as read back."""

    host: str
    archives: tuple[ArchiveEntry, ...]
    previous: ManifestLink | None = None
    # the fingerprint (SHA256:...) of the key that signs this manifest, None when unsigned
    signed_by: str | None = None


def is_archive_name(name: str) -> bool:
    """Whether ``name`` is named like an archive keyforge backup writes (any host, any source)."""
    return _ARCHIVE_RE.match(name) is not None or _DUMP_RE.match(name) is not None


def load_manifest(path: Path) -> Manifest:
    """The one reader of what ``manifest_json`` and ``write_index`` write.

    Raises FileError naming ``path`` for anything else: unreadable, not JSON, no format number,
    or an archive without a plain file name, a size or a hash. Whoever reads a manifest
    (backup, verify, status, snapshot) reads it here, so they all agree on what one is.
    """
    try:
        data = path.read_bytes()
    except OSError as err:
        raise FileError.from_os_error("read manifest", path, err) from err
    return manifest_from_bytes(data, path)


def manifest_from_bytes(data: bytes, path: Path) -> Manifest:
    """``load_manifest`` on bytes already read (a signature was checked on these very bytes);
    ``path`` names them in errors."""
    try:
        document = json.loads(data)
    except ValueError as err:
        raise FileError(f"cannot read manifest {path}: not JSON ({err})") from None
    problem = _manifest_problem(document)
    if problem is not None:
        raise FileError(f"cannot read manifest {path}: {problem}")
    previous = document.get("previous")
    return Manifest(
        document["host"],
        tuple(_archive_entry(a) for a in document["archives"]),
        previous=ManifestLink(previous["name"], previous["sha256"]) if previous else None,
        signed_by=document.get("signed_by"),
    )


def _archive_entry(archive: Mapping[str, Any]) -> ArchiveEntry:
    hashed = recorded_hash(archive)
    assert hashed is not None, "_manifest_problem refuses an entry without a good hash"
    algorithm, digest = hashed
    return ArchiveEntry(
        name=archive["name"],
        source=archive["source"],
        kind=archive["kind"],
        chain=archive["chain"],
        size=archive["size"],
        digest=digest,
        warnings=tuple(archive.get("warnings", ())),
        source_files=archive.get("source_files"),
        source_bytes=archive.get("source_bytes"),
        alerts=tuple(archive.get("alerts", ())),
        encrypted_to=tuple(archive.get("encrypted_to", ())),
        algorithm=algorithm,
    )


# a 256-bit hash in hexadecimal: sha256's, and BLAKE3's default length
_DIGEST_RE = re.compile(r"^[0-9a-f]{64}\Z")


def recorded_hash(archive: Mapping[str, Any]) -> tuple[str, str] | None:
    """The (algorithm, hexadecimal digest) a manifest entry records, or None when it records
    none, a malformed one, or more than one."""
    found = _read_hash(archive)
    return found if isinstance(found, tuple) else None


def _read_hash(archive: Mapping[str, Any]) -> tuple[str, str] | str:
    """The entry's (algorithm, digest), or what is wrong with it."""
    found = [name for name in ARCHIVE_HASHES if name in archive]
    if not found:
        return f"has no {' or '.join(ARCHIVE_HASHES)} hash"
    if len(found) > 1:
        # which one would a checker believe?
        return f"records more than one hash ({', '.join(found)})"
    algorithm, digest = found[0], archive[found[0]]
    if not isinstance(digest, str) or _DIGEST_RE.match(digest) is None:
        return f"has a malformed {algorithm} hash"
    return algorithm, digest


def _manifest_problem(document: object) -> str | None:
    if not isinstance(document, dict):
        return "not a JSON object"
    archives = document.get("archives")
    header = [
        (_is_count(document.get("format")), "no format number"),
        (isinstance(document.get("host"), str), "no host"),
        (isinstance(archives, list), "no archive list"),
    ]
    header += [
        (_is_link(document.get("previous")), "a malformed previous manifest"),
        (
            document.get("signed_by") is None or _is_fingerprint(document["signed_by"]),
            "a malformed signed_by",
        ),
    ]
    problems = (problem for ok, problem in header if not ok)
    if not isinstance(archives, list):
        return next(problems)
    entries = (_archive_problem(index, archive) for index, archive in enumerate(archives))
    return next(problems, None) or next((p for p in entries if p is not None), None)


def _is_link(value: object) -> bool:
    if value is None:
        return True
    if not isinstance(value, dict) or set(value) != {"name", "sha256"}:
        return False
    name, sha256 = value["name"], value["sha256"]
    return (
        isinstance(name, str)
        and _MANIFEST_RE.match(name) is not None
        and "/" not in name
        and isinstance(sha256, str)
        and _DIGEST_RE.match(sha256) is not None
    )


def _is_fingerprint(value: object) -> bool:
    return isinstance(value, str) and re.fullmatch(r"SHA256:[A-Za-z0-9+/]{43}", value) is not None


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# what backup measured of a source when it read it (optional: older manifests lack them)
SOURCE_MEASURES = ("source_files", "source_bytes")


def _is_text_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _is_fingerprint_list(value: object) -> bool:
    return isinstance(value, list) and all(age.is_fingerprint(item) for item in value)


def _archive_problem(index: int, archive: object) -> str | None:
    if not isinstance(archive, dict):
        return f"archive {index} is not an object"
    name = archive.get("name")
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name:
        return f"archive {index} has no plain file name"
    found = _read_hash(archive)
    checks = [
        (_is_count(archive.get("size")), "has no size"),
        (isinstance(found, tuple), found if isinstance(found, str) else ""),
        (
            all(isinstance(archive.get(key), str) for key in ("source", "kind", "chain")),
            "lacks its source, kind or chain",
        ),
        (_is_text_list(archive.get("warnings", [])), "has malformed warnings"),
        (_is_text_list(archive.get("alerts", [])), "has malformed alerts"),
        (_is_fingerprint_list(archive.get("encrypted_to", [])), "has malformed encrypted_to"),
        (
            bool(archive.get("encrypted_to")) == is_encrypted_name(name),
            "is named against its encrypted_to (encrypted archives end in .age)",
        ),
        (
            all(archive.get(key) is None or _is_count(archive[key]) for key in SOURCE_MEASURES),
            "has a malformed source size",
        ),
    ]
    return next((f"{name} {problem}" for ok, problem in checks if not ok), None)


def index_json(host: str, updated: dt.datetime, archives: Sequence[dict[str, Any]]) -> bytes:
    """MANIFEST_NAME's content: every archive present, as its run manifest recorded it."""
    document = {
        "format": 1,
        "host": host,
        "updated": updated.isoformat(timespec="seconds"),
        "archives": list(archives),
    }
    return (json.dumps(document, indent=2) + "\n").encode()


# --- the lock and the hashes ------------------------------------------------------------------


def backup_lock(backup_dir: Path) -> contextlib.AbstractContextManager[None]:
    """The lock every writer of the backup directory takes (backup, prune, restore, sync)."""
    return fsutil.locked(lock_path(backup_dir), wait=False)


def sha256_of(path: Path | bytes) -> str:
    return hash_of_file(path, "sha256")


def hash_of_file(path: Path | bytes, algorithm: str = ARCHIVE_HASH) -> str:
    """The hexadecimal ``algorithm`` (a key of ARCHIVE_HASHES) digest of the file at ``path``."""
    # blake3's update returns the hasher, where hashlib's protocol says None: same use
    digest = cast("Callable[[], hashlib._Hash]", ARCHIVE_HASHES[algorithm])
    with open(path, "rb") as handle:  # noqa: PTH123 - bytes paths keep non-UTF-8 names exact
        return hashlib.file_digest(handle, digest).hexdigest()


def hash_matches(path: Path | bytes, entry: ArchiveEntry) -> bool:
    """Whether the file at ``path`` has the digest ``entry`` records, by its algorithm."""
    return hash_of_file(path, entry.algorithm) == entry.digest
