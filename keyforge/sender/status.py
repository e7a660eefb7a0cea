"""keyforge status: when the last backup and the last sync of each target succeeded.

Made for monitoring: the age of each, its size, and a verdict that is bad when either is older
than the limit, never happened, or (a sync) failed since its last success. The backup's time is
its newest complete manifest (written as each archive is committed, so its mtime is when the
run finished); a sync's is the newest ``ok`` line of the sync log. On a receiving host the
manifests are another host's, pushed there: that line says "pushed copy of server1", and its
age is that of the newest backup that arrived (rsync keeps the manifest's mtime). Reading is
separated from judging, which is pure.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from keyforge.config import Config, snapshot_source
from keyforge.config import reads_copy as config_reads_copy
from keyforge.errors import FileError
from keyforge.layout import (
    MANIFEST_SUFFIX,
    Manifest,
    dump_source,
    load_manifest,
    run_manifests,
    source_slug,
    stamp_key,
)
from keyforge.monitor import runs
from keyforge.sender import drill, sync
from keyforge.sender.backup import human_size


@dataclasses.dataclass(frozen=True)
class Success:
    when: datetime
    size: int | None
    detail: str
    # what the run warned about its sources (empty, shrank): a backup that ran is not enough
    alerts: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Item:
    """One line of the status: the backup, or one target's sync."""

    name: str
    last_success: Success | None
    last_failure: str | None
    age_hours: float | None
    ok: bool
    problem: str | None


@dataclasses.dataclass(frozen=True)
class Status:
    items: tuple[Item, ...]
    max_age_hours: float

    @property
    def ok(self) -> bool:
        return all(item.ok for item in self.items)


# --- reading ---------------------------------------------------------------------------------


def last_backups(directory: Path, host: str, sources: Sequence[str]) -> dict[str, Success]:
    """The newest run of each host whose manifests ``directory`` holds: for ``host`` itself a
    run that archived every configured source, for another host's (a pushed copy) any run."""
    wanted = {source_slug(s) for s in sources}
    best: dict[str, Success] = {}
    for path in directory.glob(f"*{MANIFEST_SUFFIX}"):
        try:
            manifest = load_manifest(path)
            when = datetime.fromtimestamp(path.stat().st_mtime, UTC)
        except (FileError, OSError):
            continue
        if manifest.host == host:
            done = {source_slug(a.source) for a in manifest.archives}
            if not wanted <= done:
                continue  # a run that stopped part way is not a success
        elif not arrived_whole(directory, manifest):
            continue  # a push cut short: the manifest came, not (all of) its archives
        size = sum(a.size for a in manifest.archives)
        found = best.get(manifest.host)
        if found is None or when > found.when:
            count = len(manifest.archives)
            alerts = tuple(alert for a in manifest.archives for alert in a.alerts)
            best[manifest.host] = Success(when, size, f"{count} archive(s), {path.name}", alerts)
    return best


def arrived_whole(directory: Path, manifest: Manifest) -> bool:
    """Every archive a pushed manifest lists is in ``directory`` at its recorded size: the
    push that brought it was complete."""
    for archive in manifest.archives:
        try:
            if (directory / archive.name).stat().st_size != archive.size:
                return False
        except OSError:
            return False
    return True


def backup_items(
    successes: dict[str, Success], host: str, now: datetime, max_age: float, *, copy: bool
) -> list[Item]:
    """ "backup" for this host's own runs; "pushed copy of H" for each other host's, as a
    receiving host holds them. A directory holding neither never got a backup: "pushed copy"
    when it is a receiving host's synced copy (``copy``), "backup" otherwise."""
    items = []
    if host in successes or not successes:
        name = "pushed copy" if copy and not successes else "backup"
        items.append(judge_backup(name, successes.get(host), now, max_age))
    for other in sorted(set(successes) - {host}):
        items.append(judge_backup(f"pushed copy of {other}", successes[other], now, max_age))
    return items


def judge_backup(name: str, success: Success | None, now: datetime, max_age: float) -> Item:
    """A run that warned about its sources (empty, shrank) is not ok, however recent."""
    item = judge(name, success, None, now, max_age)
    if success is not None and success.alerts and item.ok:
        return dataclasses.replace(item, ok=False, problem="; ".join(success.alerts))
    return item


def dumps_missing(manifest: Manifest, dumps: Iterable[str]) -> list[str]:
    """The [[dumps]] entries (by name) of which ``manifest`` lists no archive (pure): each
    makes one archive a run, or one per database (``NAME-DATABASE``), unless it failed."""
    made = {archive.source for archive in manifest.archives}
    return [
        name
        for name in dumps
        if dump_source(name) not in made
        and not any(s.startswith(dump_source(f"{name}-")) for s in made)
    ]


def last_run_dumps_missing(
    directory: Path, host: str, dumps: Sequence[str]
) -> tuple[str, list[str]]:
    """The newest run manifest of ``host`` and the dumps it lacks; ("", []) with none."""
    found = run_manifests(directory, host)
    if not found or not dumps:
        return "", []
    path = found[max(found, key=stamp_key)]
    try:
        return path.name, dumps_missing(load_manifest(path), dumps)
    except FileError:
        return path.name, []  # an unreadable manifest is not this check's to judge


def judge_dumps(item: Item, manifest: str, missing: Sequence[str]) -> Item:
    """A backup whose last run made no archive of a configured dump is not ok, however recent
    its sources: a failed dump must not look like a good night (pure)."""
    if not missing:
        return item
    problem = f"the last run ({manifest}) made no dump of {', '.join(missing)}: it failed"
    if item.problem:
        problem = f"{item.problem}; {problem}"
    return dataclasses.replace(item, ok=False, problem=problem)


def reads_copy(config: Config) -> bool:
    """A receiving host's config: [snapshot] and no [backup]; status reads its synced copy."""
    return config_reads_copy(config)


def status_dir(config: Config) -> Path:
    """What status reads: the backup directory (or [sync] source), or on a receiving host the
    synced copy the snapshots are taken of."""
    return snapshot_source(config) if reads_copy(config) else sync.source_dir(config)


def read_sync_log(path: Path) -> list[dict[str, Any]]:
    """Every well-formed line of the sync log; a torn last line (a crash) is skipped."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    except OSError as err:
        raise FileError.from_os_error("read", path, err) from err
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("command") == "sync":
            records.append(record)
    return records


# --- judging (pure) --------------------------------------------------------------------------


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def judge(
    name: str, success: Success | None, failure: str | None, now: datetime, max_age_hours: float
) -> Item:
    """``failure``: a failed run after the last success, which fails the item however recent
    the success: the copy did not get the last backup."""
    if success is None:
        return Item(name, None, failure, None, False, "never succeeded")
    age = (now - success.when).total_seconds() / 3600
    problem = None
    if age > max_age_hours:
        problem = f"last success {age:.1f} h ago, over the {max_age_hours:g} h limit"
    elif failure is not None:
        problem = "the last run failed"
    return Item(name, success, failure, age, problem is None, problem)


def sync_items(
    records: Iterable[dict[str, Any]], targets: Sequence[str], now: datetime, max_age: float
) -> list[Item]:
    """One item per configured target from its newest success and any later failure."""
    items = []
    for target in targets:
        success: Success | None = None
        failure: str | None = None
        for record in records:
            if record.get("target") != target:
                continue
            end = _parse_time(record.get("end"))
            if end is None:
                continue
            if record.get("ok") is True:
                sent = record.get("bytes_sent")
                success = Success(end, sent if isinstance(sent, int) else None, "bytes sent")
                failure = None
            else:
                failure = f"{end.isoformat(timespec='seconds')}: {record.get('message', '')}"
        items.append(judge(f"sync {target}", success, failure, now, max_age))
    return items


# the freshness check judges the others; its own last run is not one of its reasons
NOT_JUDGED_RUNS = ("freshness",)


def run_items(records: Iterable[runs.RunRecord]) -> list[Item]:
    """One failing item per job whose last run failed, however recent its last success: a
    backup that failed last night is not ok because the one before it is young."""
    items = []
    for job, record in sorted(runs.last_by_job(records).items()):
        if record.ok or job in NOT_JUDGED_RUNS:
            continue
        when = record.end.isoformat(timespec="seconds")
        detail = f": {record.message}" if record.message else ""
        items.append(
            Item(
                name=f"last {job} run",
                last_success=None,
                last_failure=f"{when}: exit {record.exit_code}{detail}",
                age_hours=None,
                ok=False,
                problem=f"the last {job} run failed (exit {record.exit_code})",
            )
        )
    return items


def assess(config: Config, now: datetime, max_age_hours: float) -> Status:
    source = status_dir(config)
    found = last_backups(source, config.host, config.backup.sources) if source.is_dir() else {}
    items = backup_items(found, config.host, now, max_age_hours, copy=reads_copy(config))
    if not reads_copy(config) and source.is_dir():
        names = [entry.name for entry in config.dumps]
        manifest, missing = last_run_dumps_missing(source, config.host, names)
        items = [judge_dumps(i, manifest, missing) if i.name == "backup" else i for i in items]
    names = [t.name for t in sync.select_targets(config.targets, None)] if config.targets else []
    records = read_sync_log(Path(config.sync.log))
    items += sync_items(records, names, now, max_age_hours)
    items += run_items(runs.read(runs.run_log_path(config)))
    items += drill_items(config, now)
    return Status(tuple(items), max_age_hours)


def drill_items(config: Config, now: datetime) -> list[Item]:
    """One line per host a drill ran for here: its last success, judged by [drill]
    max_age_days, and failed when a later drill failed."""
    items = []
    for host, drills in drill.records(config).items():
        success, detail, failure = drill.status_successes(drills)
        found = Success(success, None, detail) if success is not None else None
        limit = config.drill.max_age_days * 24.0
        items.append(judge(f"drill of {host}", found, failure, now, limit))
    return items


# --- showing ---------------------------------------------------------------------------------


def lines(status: Status) -> list[str]:
    out = []
    for item in status.items:
        mark = "ok  " if item.ok else "FAIL"
        if item.last_success is None:
            out.append(f"{mark} {item.name}: {item.problem}")
        else:
            s = item.last_success
            size = "" if s.size is None else f", {human_size(s.size)}"
            when = s.when.astimezone().isoformat(timespec="seconds")
            out.append(f"{mark} {item.name}: {item.age_hours:.1f} h ago ({when}){size}")
            if item.problem:
                out.append(f"     {item.problem}")
        if item.last_failure:
            out.append(f"     failed since: {item.last_failure}")
    return out


def as_json(status: Status) -> str:
    def item_json(item: Item) -> dict[str, Any]:
        s = item.last_success
        return {
            "name": item.name,
            "ok": item.ok,
            "last_success": s.when.isoformat(timespec="seconds") if s else None,
            "age_hours": None if item.age_hours is None else round(item.age_hours, 3),
            "size": s.size if s else None,
            "last_failure": item.last_failure,
            "problem": item.problem,
        }

    document = {
        "ok": status.ok,
        "max_age_hours": status.max_age_hours,
        # why it is not ok, one line per item that fails
        "reasons": reasons(status),
        "items": [item_json(item) for item in status.items],
    }
    return json.dumps(document, indent=2)


def reasons(status: Status) -> list[str]:
    return [f"{item.name}: {item.problem}" for item in status.items if not item.ok]
