"""keyforge drill: the monthly proof that the backups restore, on either host.

A drill checks, in this order, and names the archive behind every problem:

1. every archive the manifests expect is there: those the index lists, and every archive of a
   chain that still has one (so a lost incremental in the middle of a chain is noticed, though
   the chain's other archives still restore);
2. every archive's hash against its manifest (on an encrypted archive, that of the
   ciphertext: no key needed);
3. the newest chain of every source is listed by tar (a truncated or damaged archive fails
   here), restored into a scratch directory outside every copy and source, and the restored
   tree compared, entry by entry, with what tar's listings say the chain holds;
4. with ``spot_check`` N, N random files of the restored trees against the live sources (on
   the sending server only): a file whose size and mtime are unchanged must have the same
   content; one that changed or went since the backup is counted, not blamed, unless most of
   the sample did.

The result and its duration are recorded in the state directory, where ``keyforge status``
reads them; a failed drill raises, so the scheduled job exits non-zero.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import random
import stat
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from keyforge import layout, signing
from keyforge.config import Config, reads_copy, snapshot_source, state_dir
from keyforge.errors import FileError, KeyforgeError, UsageError
from keyforge.infra import fsutil
from keyforge.sender import backup, catalog, pipeline, restore

RECORD_PREFIX = "drill-"
RECORD_SUFFIX = ".json"
RECORDS_KEPT = 24  # two years of monthly drills
SPOT_CHANGED_LIMIT_PERCENT = 50
PROBLEMS_RECORDED = 50


@dataclasses.dataclass(frozen=True)
class SourceDrill:
    source: str
    archives: tuple[str, ...]
    entries: int
    problems: tuple[str, ...]
    note: str = ""  # what was not checked, and why


@dataclasses.dataclass(frozen=True)
class SpotCheck:
    sampled: int
    same: int
    changed: int
    gone: int
    problems: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class DrillReport:
    host: str
    started: dt.datetime
    seconds: float
    archives: int
    sources: tuple[SourceDrill, ...]
    problems: tuple[str, ...]
    spot: SpotCheck | None = None

    @property
    def all_problems(self) -> list[str]:
        found = list(self.problems)
        for verdict in self.sources:
            found += [f"{verdict.source}: {p}" for p in verdict.problems]
        if self.spot is not None:
            found += [f"spot check: {p}" for p in self.spot.problems]
        return found

    @property
    def ok(self) -> bool:
        return not self.all_problems


# --- what the manifests expect (pure) --------------------------------------------------------


def expected_archives(
    index: Iterable[str] | None,
    runs: Mapping[str, Sequence[layout.ArchiveEntry]],
    present: Iterable[str],
) -> dict[str, str]:
    """Every archive that should be in the directory, by name, with the manifest naming it:
    those the index lists, and every archive of a chain one of whose archives is present."""
    here = set(present)
    chains_here = {
        entry.chain for entries in runs.values() for entry in entries if entry.name in here
    }
    expected: dict[str, str] = {}
    for manifest, entries in runs.items():
        for entry in entries:
            if entry.chain in chains_here or entry.name in chains_here:
                expected.setdefault(entry.name, manifest)
    for name in index or ():
        expected.setdefault(name, layout.MANIFEST_NAME)
    return expected


def missing_archives(config: Config, present: Iterable[str]) -> list[str]:
    backup_dir = config.backup_dir
    runs = {
        path.name: layout.load_manifest(path).archives
        for path in layout.run_manifests(backup_dir, config.host).values()
    }
    index_path = backup_dir / layout.MANIFEST_NAME
    index = None
    if index_path.exists():
        manifest = layout.load_manifest(index_path)
        if manifest.host == config.host:
            index = [a.name for a in manifest.archives]
    here = set(present)
    return [
        f"{name}: missing (listed in {manifest})"
        for name, manifest in sorted(expected_archives(index, runs, here).items())
        if name not in here
    ]


# --- the restored tree against tar's listings --------------------------------------------------


def compare_with_listing(state: catalog.State, root: Path, *, owners: bool) -> list[str]:
    """Every difference between the tree restored at ``root`` and what the listings say."""
    base = os.fsencode(root)
    actual: dict[bytes, os.stat_result] = {b"": os.lstat(base)}
    for dirpath, dirnames, filenames in os.walk(base):
        for name in [*dirnames, *filenames]:
            full = dirpath + b"/" + name
            actual[os.path.relpath(full, base)] = os.lstat(full)
    problems = [f"{_shown(p)}: missing after restore" for p in sorted(set(state) - set(actual))]
    problems += [
        f"{_shown(p)}: restored but not in the listings" for p in sorted(set(actual) - set(state))
    ]
    for path in sorted(set(state) & set(actual)):
        member, st = state[path].member, actual[path]
        problems += [
            f"{_shown(path)}: {p}"
            for p in _differences(member, st, base, path, actual, owners=owners)
        ]
    return problems


_KIND_TEST = {
    "file": stat.S_ISREG,
    "dir": stat.S_ISDIR,
    "symlink": stat.S_ISLNK,
    "fifo": stat.S_ISFIFO,
    "char": stat.S_ISCHR,
    "block": stat.S_ISBLK,
}


def _differences(
    member: Any,
    st: os.stat_result,
    base: bytes,
    path: bytes,
    actual: Mapping[bytes, os.stat_result],
    *,
    owners: bool,
) -> list[str]:
    if member.kind == "hardlink":
        other = actual.get(member.target)
        if other is None or (other.st_ino, other.st_dev) != (st.st_ino, st.st_dev):
            return [f"not a hard link to {os.fsdecode(member.target)}"]
        return []
    check = _KIND_TEST.get(member.kind)
    if check is not None and not check(st.st_mode):
        return [f"is not a {member.kind}"]
    problems = []
    if owners and (st.st_uid, st.st_gid) != (member.uid, member.gid):
        problems.append(f"owner {st.st_uid}:{st.st_gid}, listed {member.uid}:{member.gid}")
    if member.kind == "symlink":
        target = os.readlink(base + b"/" + path)  # noqa: PTH115 - bytes in, bytes out
        if target != member.target:
            problems.append(
                f"links to {os.fsdecode(target)!r}, listed {os.fsdecode(member.target)!r}"
            )
        return problems
    if stat.S_IMODE(st.st_mode) != member.mode:
        problems.append(f"mode {stat.S_IMODE(st.st_mode):04o}, listed {member.mode:04o}")
    if int(st.st_mtime) != member.mtime:
        problems.append(f"mtime {int(st.st_mtime)}, listed {member.mtime}")
    if member.kind == "file" and st.st_size != member.size:
        problems.append(f"size {st.st_size}, listed {member.size}")
    return problems


def _shown(path: bytes) -> str:
    return os.fsdecode(path) or "."


# --- spot check against the live source ------------------------------------------------------


def sample(
    trees: Mapping[str, catalog.State], count: int, rng: random.Random
) -> dict[str, list[bytes]]:
    """``count`` random regular files across the sources' trees, by source (pure)."""
    files = [
        (source, path)
        for source, state in sorted(trees.items())
        for path, held in sorted(state.items())
        if held.member.kind == "file"
    ]
    chosen = rng.sample(files, min(count, len(files)))
    picked: dict[str, list[bytes]] = {}
    for source, path in sorted(chosen):
        picked.setdefault(source, []).append(path)
    return picked


@dataclasses.dataclass(frozen=True)
class SpotResult:
    state: str  # "same", "changed", "gone" or "differs"
    path: str


def spot_one(source: str, relative: bytes, restored: Path, member: Any) -> SpotResult:
    """One sampled file: the live one against the restored one and its listed size and mtime."""
    live = os.fsencode(source.rstrip("/") or "/") + b"/" + relative
    shown = catalog.shown_path(source, relative)
    try:
        st = os.lstat(live)
    except FileNotFoundError:
        return SpotResult("gone", shown)
    except OSError as err:
        raise FileError.from_os_error("read", os.fsdecode(live), err) from err
    if (
        not stat.S_ISREG(st.st_mode)
        or st.st_size != member.size
        or int(st.st_mtime) != member.mtime
    ):
        return SpotResult("changed", shown)
    copy = os.fsencode(restored) + b"/" + relative
    if layout.hash_of_file(live) != layout.hash_of_file(copy):
        return SpotResult("differs", shown)
    return SpotResult("same", shown)


def judge_spot(results: Sequence[SpotResult]) -> SpotCheck:
    """Changed or vanished files are what a live system does; too many of them, or any file
    whose size and mtime match but not its content, is a problem (pure)."""
    counts = {key: sum(1 for r in results if r.state == key) for key in ("same", "changed", "gone")}
    problems = [
        f"{r.path}: content differs from the live file, though its size and mtime match"
        for r in results
        if r.state == "differs"
    ]
    moved = counts["changed"] + counts["gone"]
    if results and moved * 100 > SPOT_CHANGED_LIMIT_PERCENT * len(results):
        problems.append(
            f"{moved} of {len(results)} sampled files changed or went since the backup "
            f"(more than {SPOT_CHANGED_LIMIT_PERCENT}%): is the newest backup current?"
        )
    return SpotCheck(
        len(results), counts["same"], counts["changed"], counts["gone"], tuple(problems)
    )


# --- where the drill restores ---------------------------------------------------------------


def forbidden_places(config: Config) -> list[Path]:
    """Directories a drill's scratch must stay out of: every copy of the backups and every
    source (a restore there would be pushed, snapshotted or mixed with live files)."""
    places = [config.backup_dir, *map(Path, config.backup.sources)]
    for value in (config.sync.source, config.snapshot.source, config.snapshot.directory):
        if value:
            places.append(Path(value))
    places += [Path(t.path) for t in config.targets if t.path]
    return places


def check_scratch(parent: Path, *configs: Config) -> None:
    resolved = parent.resolve()
    for place in [p for config in configs for p in forbidden_places(config)]:
        top = place.resolve()
        if top == Path("/"):
            continue  # a source of / holds everything; the scratch is removed after the drill
        if resolved == top or resolved.is_relative_to(top):
            raise UsageError(
                f"the drill's scratch directory {parent} lies in {place}: choose one outside "
                "every backup directory, copy and source ([drill] scratch or --scratch)"
            )


@contextmanager
def scratch_dir(parent: Path | None, *configs: Config) -> Iterator[Path]:
    where = parent or Path(tempfile.gettempdir())
    check_scratch(where, *configs)
    if parent is not None:
        fsutil.ensure_private_dir(parent)
    try:
        work = Path(tempfile.mkdtemp(prefix="keyforge-drill-", dir=where))
    except OSError as err:
        raise FileError.from_os_error("create a directory in", where, err) from err
    try:
        yield work
    finally:
        fsutil.remove_tree(work)


# --- the drill ------------------------------------------------------------------------------


def drill_config(config: Config) -> Config:
    """The backups a config's drill reads: on a receiving host, the synced copy as it is."""
    if reads_copy(config):
        return catalog.copy_config(snapshot_source(config))
    return config


def run_drill(
    config: Config,
    *,
    scratch: Path | None = None,
    spot_check: int = 0,
    live_sources: bool = True,
    rng: random.Random | None = None,
    now: dt.datetime | None = None,
    guard: Config | None = None,
    identity: pipeline.Identity | None = None,
    trust: signing.Trust | None = None,
) -> DrillReport:
    """One drill over the backups ``config`` reads (see the module's docstring); the scratch
    stays out of ``guard``'s directories too (the receiving host's own config). Each chain is
    checked against ``trust`` (default: the config's allowed signers) before it is read: a
    chain that is unsigned, badly signed, cut or not what its manifests say fails the drill."""
    trust = trust if trust is not None else signing.trust_for(config)
    started = now or dt.datetime.now(dt.UTC)
    clock = time.monotonic()
    backup_dir = config.backup_dir
    if not backup_dir.is_dir():
        raise FileError(f"backup directory {backup_dir} does not exist")
    if spot_check and not live_sources:
        raise UsageError(
            "--spot-check compares with the live sources: run it on the sending server"
        )
    with restore.reading_lock(backup_dir):
        records = backup.scan_archives(config)
        if not records:
            raise FileError(f"no archives of {config.host} in {backup_dir}")
        problems: list[str] = []
        count = 0
        try:  # a manifest that cannot be read is the drill's finding, not its end
            problems += missing_archives(config, [r.name for r in records])
            count, bad_sums = restore.check_checksums(config, records)
            problems += bad_sums
        except KeyforgeError as err:
            problems.append(str(err))
        verdicts: list[SourceDrill] = []
        spot: list[SpotResult] = []
        with scratch_dir(scratch, config, *([guard] if guard else [])) as work:
            trees, chains, unread = _read_chains(config, records, trust, identity)
            verdicts += unread
            chooser = rng or random.Random()  # noqa: S311 - a sample, not a secret
            picked = sample(trees, spot_check, chooser) if spot_check else {}
            for index, source in enumerate(config.backup.sources):
                if source not in trees:
                    continue
                verdict, results = _drill_source(
                    config,
                    source,
                    chains[source],
                    trees[source],
                    work / str(index),
                    picked.get(source, []),
                    identity,
                )
                verdicts.append(verdict)
                spot += results
    order = {s: i for i, s in enumerate(config.backup.sources)}
    verdicts.sort(key=lambda v: order.get(v.source, 0))
    return DrillReport(
        host=config.host,
        started=started,
        seconds=time.monotonic() - clock,
        archives=count,
        sources=tuple(verdicts),
        problems=tuple(problems),
        spot=judge_spot(spot) if spot_check else None,
    )


def _read_chains(
    config: Config,
    records: Sequence[layout.ArchiveRecord],
    trust: signing.Trust,
    identity: pipeline.Identity | None,
) -> tuple[dict[str, catalog.State], dict[str, list[layout.ArchiveRecord]], list[SourceDrill]]:
    """Each source's newest chain, its signatures proved, read into the tree its listings
    describe; the verdicts of the sources that cannot be restored (unsigned, unreadable, or
    encrypted with no identity) come back on their own."""
    trees: dict[str, catalog.State] = {}
    chains: dict[str, list[layout.ArchiveRecord]] = {}
    verdicts: list[SourceDrill] = []
    for source in config.backup.sources:
        chain = catalog.select_chain(records, layout.source_slug(source), None)
        chains[source] = chain
        state: catalog.State = {}
        if chain:
            try:
                restore.check_chain(config, chain, trust)
            except KeyforgeError as err:
                verdicts.append(SourceDrill(source, _names(chain), 0, (str(err),)))
                continue
        if identity is None and any(layout.is_encrypted_name(r.name) for r in chain):
            note = "encrypted: ciphertext checked, not restored (no --identity)"
            verdicts.append(SourceDrill(source, _names(chain), 0, (), note))
            continue
        try:
            for record in chain:
                state = catalog.read_archive_into(config, record, state, identity)
        except KeyforgeError as err:
            verdicts.append(SourceDrill(source, _names(chain), 0, (str(err),)))
            continue
        trees[source] = state
    return trees, chains, verdicts


def _names(chain: Sequence[layout.ArchiveRecord]) -> tuple[str, ...]:
    return tuple(r.name for r in chain)


def _drill_source(  # noqa: PLR0917 - one source's parts, each named at the one call
    config: Config,
    source: str,
    chain: list[layout.ArchiveRecord],
    state: catalog.State,
    work: Path,
    picked: Sequence[bytes],
    identity: pipeline.Identity | None = None,
) -> tuple[SourceDrill, list[SpotResult]]:
    names = _names(chain)
    if not chain:
        return SourceDrill(source, names, 0, ("no full backup to restore",)), []
    work.mkdir(mode=0o700)
    try:
        try:
            restore.apply_chain(config, chain, work, identity)
        except KeyforgeError as err:
            return SourceDrill(source, names, 0, (str(err),)), []
        problems = compare_with_listing(state, work, owners=restore.restores_owners())
        results = [spot_one(source, path, work, state[path].member) for path in picked]
        return SourceDrill(source, names, len(state), tuple(problems)), results
    finally:
        fsutil.remove_tree(work)


# --- the record status reads ----------------------------------------------------------------


def record_path(config: Config, host: str) -> Path:
    return state_dir(config) / f"{RECORD_PREFIX}{host}{RECORD_SUFFIX}"


def report_json(report: DrillReport) -> dict[str, Any]:
    finished = report.started + dt.timedelta(seconds=report.seconds)
    data: dict[str, Any] = {
        "started": report.started.isoformat(timespec="seconds"),
        "finished": finished.isoformat(timespec="seconds"),
        "seconds": round(report.seconds, 3),
        "ok": report.ok,
        "archives": report.archives,
        "sources": [
            {
                "note": v.note,
                "source": v.source,
                "archives": list(v.archives),
                "entries": v.entries,
                "ok": not v.problems,
            }
            for v in report.sources
        ],
        "problems": report.all_problems[:PROBLEMS_RECORDED],
    }
    if report.spot is not None:
        data["spot_check"] = dataclasses.asdict(report.spot) | {
            "problems": list(report.spot.problems)
        }
    return data


def record(config: Config, report: DrillReport) -> Path:
    """Append the drill's result to its host's record (the newest RECORDS_KEPT kept)."""
    path = record_path(config, report.host)
    runs = read_record(path)
    runs.append(report_json(report))
    document = {"format": 1, "host": report.host, "runs": runs[-RECORDS_KEPT:]}
    fsutil.ensure_private_dir(path.parent)
    fsutil.atomic_write(
        path, (json.dumps(document, indent=2) + "\n").encode(), mode=fsutil.PRIVATE_FILE
    )
    return path


def read_record(path: Path) -> list[dict[str, Any]]:
    """The drills recorded in ``path``, oldest first; a missing or unreadable record is none."""
    try:
        document = json.loads(path.read_bytes())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as err:
        raise FileError(f"cannot read the drill record {path}: {err}") from err
    runs = document.get("runs") if isinstance(document, dict) else None
    if not isinstance(runs, list):
        raise FileError(f"cannot read the drill record {path}: no list of runs")
    return [r for r in runs if isinstance(r, dict)]


def records(config: Config) -> dict[str, list[dict[str, Any]]]:
    """Every host's drill record in the state directory, by host."""
    directory = state_dir(config)
    found: dict[str, list[dict[str, Any]]] = {}
    if not directory.is_dir():
        return found
    for path in sorted(directory.glob(f"{RECORD_PREFIX}*{RECORD_SUFFIX}")):
        host = path.name[len(RECORD_PREFIX) : -len(RECORD_SUFFIX)]
        found[host] = read_record(path)
    return found


def summary(report: DrillReport) -> str:
    state = "ok" if report.ok else f"FAILED ({len(report.all_problems)} problem(s))"
    spot = ""
    if report.spot is not None:
        s = report.spot
        spot = f", spot check {s.same}/{s.sampled} same ({s.changed} changed, {s.gone} gone)"
    entries = sum(v.entries for v in report.sources)
    return (
        f"drill of {report.host}: {state}: {report.archives} archive(s), "
        f"{len(report.sources)} source(s), {entries} entries restored "
        f"in {report.seconds:.1f} s{spot}"
    )


def status_successes(
    runs: Sequence[Mapping[str, Any]],
) -> tuple[dt.datetime | None, str, str | None]:
    """From a host's drills, oldest first: when the newest good one finished, what it checked,
    and the failure of a later one (pure)."""
    success: dt.datetime | None = None
    detail = ""
    failure: str | None = None
    for run in runs:
        try:
            finished = dt.datetime.fromisoformat(str(run.get("finished")))
        except ValueError:
            continue
        if finished.tzinfo is None:
            finished = finished.replace(tzinfo=dt.UTC)
        if run.get("ok") is True:
            success, failure = finished, None
            detail = f"{run.get('archives')} archive(s) in {run.get('seconds')} s"
        else:
            problems = run.get("problems") or ["failed"]
            failure = f"{finished.isoformat(timespec='seconds')}: {problems[0]}"
    return success, detail, failure
