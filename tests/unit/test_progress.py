"""A backup run's voice: a live line in a terminal, one quiet summary line under cron."""

from __future__ import annotations

import datetime as dt
import io

from keyforge import layout
from keyforge.sender import backup, progress

ENTRY = layout.ArchiveEntry(
    name="server1-etc.20261128.master.tar.zst",
    source="/etc",
    kind="master",
    chain="server1-etc.20261128.master.tar.zst",
    size=3 * 1024 * 1024,
    sha256="0" * 64,
)


def test_the_terminal_display_rewrites_one_line_then_prints_each_finished_archive() -> None:
    out = io.StringIO()
    reporter = progress.TerminalReporter(out)
    reporter.progress("/etc", 1024 * 1024, 1.0)
    reporter.progress("/etc", 2 * 1024 * 1024, 2.0)
    reporter.archive_done(ENTRY, 2.5)
    text = out.getvalue()
    assert text.count("\r\x1b[K") == 3  # two updates in place, one clear before the result
    assert "/etc: 2.0 MB written, 2 s" in text
    assert text.endswith("  /etc: master server1-etc.20261128.master.tar.zst 3.0 MB in 2.5 s\n")
    assert text.count("\n") == 1


def test_under_cron_only_warnings_are_written() -> None:
    out = io.StringIO()
    reporter = progress.LogReporter(out)
    reporter.progress("/etc", 1024, 1.0)
    reporter.archive_done(ENTRY, 1.0)
    reporter.warn("/etc: file changed as we read it")
    assert out.getvalue() == "warning: /etc: file changed as we read it\n"


def test_the_summary_is_one_line_with_counts_size_pruning_warnings_and_time() -> None:
    plan = backup.BackupPlan("20261128", dt.datetime(2026, 11, 28), (), ())
    incremental = layout.ArchiveEntry(
        "server1-home.20261128.incremental.tar.zst", "/home", "incremental", "c", 1024, "0" * 64
    )
    old = backup.Chain("etc", ())
    report = backup.BackupReport(plan, (ENTRY, incremental), (old,), ("w",), 4.25)
    line = progress.summary_line("server1", report)
    assert "\n" not in line
    assert line == (
        "backup server1 20261128: 2 archives (1 master, 1 incremental), 3.0 MB, "
        "pruned 1 old chain(s), 1 warning(s), 4.2 s"
    )
