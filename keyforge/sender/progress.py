"""How a backup or a sync talks: a live display in a terminal, one quiet line under cron.

In a terminal the backup's line shows the bytes written against the total to expect (the same
source's previous archive of the same kind, else what ``du`` would count), the percentage and
an ETA; the sync's shows rsync's own ``--info=progress2`` figures (bytes, percent, rate, ETA),
parsed from its output. Under cron nothing but warnings is written.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import sys
from collections.abc import Callable, Mapping
from typing import TextIO

from keyforge.config import Config
from keyforge.errors import KeyforgeError
from keyforge.layout import DUMP, ArchiveEntry
from keyforge.monitor.runs import TargetResult
from keyforge.sender import backup
from keyforge.sender.backup import BackupReport, human_size

Listener = Callable[[str], None] | None
# the percentage shown while an estimate says the work is done but it is not (yet)
ESTIMATE_CAP = 99


def eta_text(seconds: float | None) -> str:
    """``H:MM:SS`` as rsync prints it, or ``?`` when there is nothing to go by."""
    if seconds is None or not 0 <= seconds < float("inf"):  # NaN fails the comparison too
        return "?"
    total = int(seconds + 0.5)
    return f"{total // 3600}:{total % 3600 // 60:02d}:{total % 60:02d}"


def backup_progress_line(source: str, written: int, elapsed: float, total: int | None) -> str:
    """The live line (pure): bytes written, of the estimated total, percent, rate and ETA."""
    rate = written / elapsed if elapsed > 0 else 0.0
    if not total:
        return f"  {source}: {human_size(written)} written, {elapsed:.0f} s"
    percent = min(ESTIMATE_CAP, int(100 * written / total))
    left = (total - written) / rate if rate > 0 and written < total else None
    return (
        f"  {source}: {human_size(written)} of ~{human_size(total)} ({percent}%), "
        f"{human_size(rate)}/s, ETA {eta_text(left)}"
    )


def estimate_totals(
    config: Config, *, force_full: bool, now: dt.datetime | None = None
) -> dict[str, int]:
    """Bytes each source's coming archive should take: its previous archive of the same kind
    (a master's size for a master, an incremental's for an incremental), else the bytes the
    source holds (``du``; compression makes the archive smaller, so the line runs early)."""
    try:
        records = backup.scan_archives(config)
        plan = backup.plan_backup(config, records, now or dt.datetime.now(), force_full=force_full)
    except (KeyforgeError, OSError):
        return {}  # the run itself reports what is wrong; the display only goes without totals
    totals: dict[str, int] = {}
    for item in plan.archives:
        previous = [r for r in records if r.slug == item.slug and r.kind == item.kind]
        size = None
        if previous:
            try:
                size = (config.backup_dir / previous[-1].name).stat().st_size
            except OSError:
                size = None
        if size is None:
            try:
                size = backup.measure_source(item.source, config.backup).bytes
            except OSError:
                continue
        totals[item.source] = size
    return totals


class TerminalReporter:
    """Rewrites one status line while tar runs, then prints one line per finished archive."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        totals: Mapping[str, int] | None = None,
        listener: Listener = None,
    ) -> None:
        self.stream = stream or sys.stderr
        self.totals = dict(totals or {})
        self.listener = listener
        self._dirty = False

    def progress(self, source: str, written: int, elapsed: float) -> None:
        line = backup_progress_line(source, written, elapsed, self.totals.get(source))
        self.stream.write(f"\r\x1b[K{line}")
        self.stream.flush()
        self._dirty = True

    def _clear(self) -> None:
        if self._dirty:
            self.stream.write("\r\x1b[K")
            self._dirty = False

    def archive_done(self, entry: ArchiveEntry, elapsed: float) -> None:
        self._clear()
        self.stream.write(
            f"  {entry.source}: {entry.kind} {entry.name} {human_size(entry.size)} "
            f"in {elapsed:.1f} s\n"
        )
        self.stream.flush()

    def warn(self, message: str) -> None:
        self._clear()
        self.stream.write(f"warning: {message}\n")
        self.stream.flush()
        if self.listener is not None:
            self.listener(f"warning: {message}")


class LogReporter:
    """Under cron: no progress, each warning on its own line, the summary printed by the caller."""

    def __init__(self, stream: TextIO | None = None, *, listener: Listener = None) -> None:
        self.stream = stream or sys.stderr
        self.listener = listener

    def progress(self, source: str, written: int, elapsed: float) -> None:
        pass

    def archive_done(self, entry: ArchiveEntry, elapsed: float) -> None:
        pass

    def warn(self, message: str) -> None:
        self.stream.write(f"warning: {message}\n")
        if self.listener is not None:
            self.listener(f"warning: {message}")


def summary_line(host: str, report: BackupReport) -> str:
    """The one line a run logs: what it made, how big, what retention removed, how long."""
    masters = sum(1 for e in report.entries if e.kind == "master")
    dumps = sum(1 for e in report.entries if e.kind == DUMP)
    size = sum(e.size for e in report.entries)
    counts = f"{masters} master, {len(report.entries) - masters - dumps} incremental"
    if dumps:
        counts += f", {dumps} dump"
    parts = [
        f"backup {host} {report.plan.stamp}: {len(report.entries)} archives ({counts})",
        human_size(size),
    ]
    if report.pruned:
        parts.append(f"pruned {len(report.pruned)} old chain(s)")
    if report.warnings:
        parts.append(f"{len(report.warnings)} warning(s)")
    parts.append(f"{report.seconds:.1f} s")
    return ", ".join(parts)


def target_result(config: Config, report: BackupReport, *, ok: bool) -> TargetResult:
    """What the run did, for its monitors: bytes written and the archives now in the directory."""
    try:
        count: int | None = len(backup.scan_archives(config))
    except OSError:
        count = None
    return TargetResult(
        target="local",
        ok=ok,
        bytes=sum(e.size for e in report.entries),
        archives=count,
        message="; ".join(report.failures),
    )


# --- the sync's display: rsync --info=progress2, parsed -------------------------------------

_PROGRESS2_RE = re.compile(
    r"^\s*(?P<bytes>[0-9][0-9,.']*)\s+(?P<percent>[0-9]+)%\s+"
    r"(?P<rate>[0-9.,]+)(?P<unit>[kMGTP]?B)/s\s+(?P<eta>[0-9]+:[0-9]{2}:[0-9]{2})"
)
_UNITS = {"B": 1, "kB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4, "PB": 1024**5}


@dataclasses.dataclass(frozen=True)
class SyncProgress:
    """One ``--info=progress2`` line: the whole transfer so far."""

    bytes: int
    percent: int
    rate: float  # bytes per second
    eta: str  # H:MM:SS as rsync gives it (the elapsed time on the last line)


def parse_progress2(line: str) -> SyncProgress | None:
    """``   1,234,567  45%   12.34MB/s    0:01:23 (xfr#3, to-chk=10/20)`` (pure); None for
    any other line (the file list, --stats)."""
    match = _PROGRESS2_RE.match(line)
    if match is None:
        return None
    digits = re.sub(r"[^0-9]", "", match["bytes"])
    rate = float(match["rate"].replace(",", "")) * _UNITS[match["unit"]]
    return SyncProgress(int(digits), int(match["percent"]), rate, match["eta"])


class SyncDisplay:
    """Feeds on rsync's stdout as it comes; rewrites one line with the latest figures."""

    def __init__(self, target: str, stream: TextIO | None = None) -> None:
        self.target = target
        self.stream = stream or sys.stderr
        self._pending = b""
        self.last: SyncProgress | None = None

    def feed(self, chunk: bytes) -> None:
        # rsync ends progress lines with '\r' and everything else with '\n'
        parts = re.split(rb"[\r\n]", self._pending + chunk)
        self._pending = parts.pop()
        for part in parts:
            found = parse_progress2(part.decode("utf-8", "replace"))
            if found is not None:
                self.last = found
                self.stream.write(
                    f"\r\x1b[K  sync {self.target}: {human_size(found.bytes)} "
                    f"({found.percent}%), {human_size(found.rate)}/s, ETA {found.eta}"
                )
                self.stream.flush()

    def close(self) -> None:
        if self.last is not None:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
