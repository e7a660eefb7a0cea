"""How a backup run talks: a live display in a terminal, one quiet line under cron."""

from __future__ import annotations

import sys
from typing import TextIO

from keyforge.layout import DUMP, ArchiveEntry
from keyforge.sender.backup import BackupReport, human_size


class TerminalReporter:
    """Rewrites one status line while tar runs, then prints one line per finished archive."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self._dirty = False

    def progress(self, source: str, written: int, elapsed: float) -> None:
        self.stream.write(f"\r\x1b[K  {source}: {human_size(written)} written, {elapsed:.0f} s")
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


class LogReporter:
    """Under cron: no progress, each warning on its own line, the summary printed by the caller."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr

    def progress(self, source: str, written: int, elapsed: float) -> None:
        pass

    def archive_done(self, entry: ArchiveEntry, elapsed: float) -> None:
        pass

    def warn(self, message: str) -> None:
        self.stream.write(f"warning: {message}\n")


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
