"""The monitoring layer's pure parts: the ping planner, the scrubbing of log tails, the run
log's records, journald's datagram, and the HTTP edge's deadline."""

from __future__ import annotations

import json
import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keyforge.config import MonitorConfig, parse
from keyforge.errors import ConfigError
from keyforge.infra import http, journal
from keyforge.monitor import pings, runs
from keyforge.monitor.job import job_of_unit

START = datetime(2026, 11, 28, 1, 15, tzinfo=UTC)


def _record(code: int = 0, job: str = "backup", tail: str = "done") -> runs.RunRecord:
    return runs.RunRecord(
        job=job,
        host="server1",
        run_id="r-1",
        start=START,
        end=START + timedelta(seconds=90),
        exit_code=code,
        message="" if code == 0 else "tar failed",
        targets=(runs.TargetResult("local", code == 0, 123, 4),),
        log_tail=tail,
    )


def test_the_start_ping_is_the_start_path_with_the_run_id() -> None:
    monitor = MonitorConfig(backup_ping="https://hc.example/ping/uuid")
    [request] = pings.start_requests(monitor, "backup", "r-1")
    assert request.url == "https://hc.example/ping/uuid/start?rid=r-1"
    assert pings.start_requests(monitor, "sync", "r-1") == []


def test_success_is_the_bare_url_and_a_failure_its_exit_code() -> None:
    monitor = MonitorConfig(sync_ping="https://hc.example/p/", webhook="https://ntfy.example/t")
    ok, ok_hook = pings.finish_requests(monitor, _record(job="sync"))  # webhook_on = "always"
    assert json.loads(ok_hook.body)["ok"] is True
    assert ok.url == "https://hc.example/p?rid=r-1"
    assert ok.body == b"done"
    failed, hook = pings.finish_requests(monitor, _record(5, job="sync"))
    assert failed.url == "https://hc.example/p/5?rid=r-1"
    document = json.loads(hook.body)
    assert document["exit_code"] == 5 and document["job"] == "sync"
    assert dict(hook.headers)["Priority"] == "high"


def test_the_webhook_on_failure_only_stays_silent_on_success() -> None:
    monitor = MonitorConfig(webhook="https://ntfy.example/t", webhook_on="failure")
    assert pings.finish_requests(monitor, _record()) == []
    assert [r.label for r in pings.finish_requests(monitor, _record(1))] == ["webhook"]


def test_a_query_in_the_ping_url_is_kept() -> None:
    monitor = MonitorConfig(backup_ping="https://hc.example/p?create=1")
    [request] = pings.start_requests(monitor, "backup", "r-1")
    assert request.url == "https://hc.example/p/start?create=1&rid=r-1"


@pytest.mark.parametrize(
    ("text", "gone"),
    [
        (
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk\n"
            "-----END OPENSSH PRIVATE KEY-----",
            "b3BlbnNzaC1rZXk",
        ),
        ("identity AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQ here", "AGE-SECRET-KEY-1QQQQ"),
        ("fetching https://bob:hunter2@example.org/x", "hunter2"),
        ("PGPASSWORD=s3cret psql", "s3cret"),
        ('token: "abc def"', "abc def"),
    ],
)
def test_secrets_never_reach_a_log_tail(text: str, gone: str) -> None:
    scrubbed = pings.tail(["before", text, "after"])
    assert gone not in scrubbed
    assert pings.REDACTED in scrubbed
    assert scrubbed.startswith("before")


def test_the_monitor_urls_themselves_are_scrubbed() -> None:
    monitor = MonitorConfig(backup_ping="https://hc.example/ping/0f1e")
    tail = pings.tail(
        ["pinging https://hc.example/ping/0f1e failed"], pings.monitor_secrets(monitor)
    )
    assert "0f1e" not in tail


def test_the_tail_keeps_the_last_lines_within_its_size() -> None:
    lines = [f"line {i} " + "x" * 2000 for i in range(100)]
    tail = pings.tail(lines)
    assert len(tail.encode()) <= pings.TAIL_BYTES
    assert tail.endswith(lines[-1])


def test_a_ping_url_must_be_http(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[monitor\] backup_ping must be an http"):
        parse({"monitor": {"backup_ping": "file:///etc/shadow"}})
    with pytest.raises(ConfigError, match="webhook_on must be one of"):
        parse({"monitor": {"webhook_on": "never"}})


def test_the_run_log_round_trips_and_skips_torn_lines(tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    runs.append(log, _record())
    runs.append(log, _record(5))
    with log.open("a") as handle:
        handle.write('{"schema": "keyforge-run/1", "job"')  # a crash mid-line
    first, second = runs.read(log)
    assert first.ok and not second.ok
    assert second.targets == (runs.TargetResult("local", False, 123, 4),)
    assert second.log_tail == ""  # the log is the record; the tail went to the monitors
    assert runs.last_by_job([first, second])["backup"] is second
    assert oct(log.stat().st_mode & 0o777) == "0o600"


def test_journald_gets_one_datagram_with_the_runs_fields(tmp_path: Path) -> None:
    path = tmp_path / "journal.socket"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        used = journal.log_run(
            "backup server1: ok",
            journal.INFO,
            {"KEYFORGE_JOB": "backup", "KEYFORGE_NOTE": "two\nlines"},
            environ={"INVOCATION_ID": "abc"},
            path=path,
        )
        data = sock.recv(65536)
    assert used == "journald"
    assert b"MESSAGE=backup server1: ok\n" in data
    assert b"SYSLOG_IDENTIFIER=keyforge\n" in data
    assert b"PRIORITY=6\n" in data
    assert b"KEYFORGE_JOB=backup\n" in data
    # a value with a newline goes as name, length, bytes (journald's binary form)
    assert b"KEYFORGE_NOTE\n" + (9).to_bytes(8, "little") + b"two\nlines\n" in data


def test_outside_systemd_the_line_goes_to_syslog(tmp_path: Path) -> None:
    assert journal.log_run("x", journal.INFO, {}, environ={}, path=tmp_path / "none") == "syslog"
    # under systemd but without a journal socket: syslog still takes it
    env = {"JOURNAL_STREAM": "8:1"}
    assert journal.log_run("x", journal.INFO, {}, environ=env, path=tmp_path / "none") == "syslog"


def test_the_http_edge_gives_up_at_the_deadline_and_never_raises() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)  # accepted by the kernel, never answered
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/p"
        requests = [http.Request("POST", url, label="a"), http.Request("POST", url, label="b")]
        began = time.monotonic()
        outcomes = http.send_all(requests, deadline=began + 1.0, retries=5)
        took = time.monotonic() - began
    assert took < 1.5
    assert [o.ok for o in outcomes] == [False, False]
    assert outcomes[1].attempts == 0  # no time was left for it


def test_a_refused_connection_is_retried_then_reported() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        [outcome] = http.send_all(
            [http.Request("POST", f"http://127.0.0.1:{port}/", label="p")],
            deadline=time.monotonic() + 5,
            retries=2,
            sleep=lambda s: None,
        )
    assert outcome.attempts == 3
    assert outcome.error is not None and "refused" in outcome.error.lower()


@pytest.mark.parametrize(
    ("unit", "job"),
    [
        ("keyforge-backup.service", "backup"),
        ("keyforge-drive-sync.service", "sync"),
        ("keyforge-two-words-snapshot.service", "snapshot"),
        ("keyforge-freshness.service", "freshness"),
        ("keyforge-drive-notify.service", None),
        ("other-backup.service", None),
        ("keyforge-backup.timer", None),
    ],
)
def test_a_failed_unit_of_any_schedule_set_names_its_job(unit: str, job: str | None) -> None:
    assert job_of_unit(unit) == job
