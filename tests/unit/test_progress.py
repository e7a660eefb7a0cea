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
    digest="0" * 64,
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


# --- estimates, percent and ETA; the sync's rsync progress ------------------------------------


def test_with_an_estimate_the_line_shows_percent_rate_and_eta() -> None:
    line = progress.backup_progress_line("/etc", 25 * 1024 * 1024, 10.0, 100 * 1024 * 1024)
    assert line == "  /etc: 25.0 MB of ~100.0 MB (25%), 2.5 MB/s, ETA 0:00:30"


def test_an_estimate_that_ran_out_stays_below_100_percent() -> None:
    line = progress.backup_progress_line("/etc", 300, 1.0, 100)
    assert "(99%)" in line and "ETA ?" in line


def test_the_terminal_display_uses_the_totals_it_was_given() -> None:
    out = io.StringIO()
    reporter = progress.TerminalReporter(out, totals={"/etc": 4 * 1024 * 1024})
    reporter.progress("/etc", 1024 * 1024, 1.0)
    assert "1.0 MB of ~4.0 MB (25%), 1.0 MB/s, ETA 0:00:03" in out.getvalue()


def test_the_sync_display_reads_progress_split_across_chunks() -> None:
    out = io.StringIO()
    display = progress.SyncDisplay("pi", out)
    text = b"sending incremental file list\n     1,048,576  50%    2.00MB/s    0:00:01\r"
    text += b"     2,097,152 100%    2.00MB/s    0:00:01 (xfr#1, to-chk=0/2)\n"
    for i in range(0, len(text), 7):
        display.feed(text[i : i + 7])
    assert display.last == progress.SyncProgress(2_097_152, 100, 2.0 * 1024**2, "0:00:01")
    assert "sync pi: 2.0 MB (100%), 2.0 MB/s, ETA 0:00:01" in out.getvalue()
    display.close()
    assert out.getvalue().endswith("\r\x1b[K")
