"""[monitor] against a real HTTP server on 127.0.0.1: the pings a backup sends, the webhook,
the Prometheus file, the run log that status judges, and a monitor that never answers."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from keyforge.cli import app
from tests.conftest import Recorder


def _config(tmp_path: Path, sources: list[Path], monitor: str) -> str:
    path = tmp_path / "keyforge.toml"
    listed = ", ".join(f'"{s}"' for s in sources)
    path.write_text(
        f'[general]\nhost = "server1"\nstate_dir = "{tmp_path}/state"\n'
        f'[backup]\nsources = [{listed}]\ndirectory = "{tmp_path}/backups"\n'
        'full_every = 7\nnice = 0\nionice = "none"\n'
        f"[monitor]\n{monitor}"
    )
    return str(path)


def _source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d/f").write_text("hello\n")
    return src


def _backup(config: str, *more: str) -> Any:
    return CliRunner().invoke(app, ["backup", "--config", config, *more])


def test_a_good_backup_pings_start_then_success_with_the_log_tail(
    tmp_path: Path, recorder: Recorder
) -> None:
    base = f"{recorder.url}/ping/abc"
    config = _config(tmp_path, [_source(tmp_path)], f'backup_ping = "{base}"\n')
    result = CliRunner().invoke(app, ["backup", "--config", config])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""  # quiet on success: cron has nothing to mail
    paths = recorder.paths()
    assert len(paths) == 2
    start, success = paths
    assert start.startswith("/ping/abc/start?rid=")
    assert success.startswith("/ping/abc?rid=")
    assert start.split("rid=")[1] == success.split("rid=")[1]  # one run, one id
    body = recorder.seen[1][2].decode()
    assert "backup server1 " in body and "1 archives (1 master" in body
    assert base not in body  # the ping URL is a secret of its own


def test_verbose_prints_the_summary_that_is_quiet_by_default(tmp_path: Path) -> None:
    config = _config(tmp_path, [_source(tmp_path)], "")
    result = CliRunner().invoke(app, ["backup", "--config", config, "--verbose"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("backup server1 ")


def test_a_failing_backup_pings_start_then_its_exit_code(
    tmp_path: Path, recorder: Recorder
) -> None:
    missing = tmp_path / "gone"
    monitor = f'backup_ping = "{recorder.url}/p"\nwebhook = "{recorder.url}/hook"\n'
    config = _config(tmp_path, [missing], monitor)
    result = CliRunner().invoke(app, ["backup", "--config", config])
    assert result.exit_code != 0
    paths = recorder.paths()
    assert paths[0].startswith("/p/start?")
    assert paths[1].startswith(f"/p/{result.exit_code}?")
    hook = json.loads(recorder.seen[2][2])
    assert recorder.seen[2][1] == "/hook"
    assert hook["schema"] == "keyforge-run/1"
    assert hook["job"] == "backup"
    assert hook["exit_code"] == result.exit_code
    assert hook["ok"] is False
    assert str(missing) in hook["log_tail"]
    assert recorder.seen[2][3]["Title"] == "keyforge backup on server1: failed"


def test_a_monitor_that_never_answers_delays_the_backup_by_at_most_the_timeout(
    tmp_path: Path, silent_monitor: str
) -> None:
    src = _source(tmp_path)
    quick = _config(tmp_path, [src], "")
    began = time.monotonic()
    assert CliRunner().invoke(app, ["backup", "--config", quick, "--full"]).exit_code == 0
    baseline = time.monotonic() - began

    monitor = f'backup_ping = "{silent_monitor}/p"\ntimeout = 2\nretries = 3\n'
    config = _config(tmp_path, [src], monitor)
    began = time.monotonic()
    result = CliRunner().invoke(app, ["backup", "--config", config, "--full"])
    took = time.monotonic() - began
    assert result.exit_code == 0, result.output  # the monitor never fails the job
    assert took < baseline + 2 + 1.0, (took, baseline)
    assert took >= 1.5  # it did wait for the monitor, up to its timeout
    assert "warning: monitor: backup_ping" in result.stderr
    first, last = (tmp_path / "state/runs.log").read_text().splitlines()
    assert json.loads(first)["monitor_problems"] == []
    assert json.loads(last)["monitor_problems"]  # and the log says so


def _metrics(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_the_prometheus_file_parses_and_its_timestamps_move(tmp_path: Path) -> None:
    prom = tmp_path / "textfile/keyforge.prom"
    prom.parent.mkdir()
    src = _source(tmp_path)
    config = _config(tmp_path, [src], f'prometheus_textfile = "{prom}"\n')
    assert _backup(config).exit_code == 0
    first = _metrics(prom)
    labels = (("job", "backup"), ("target", "local"))
    assert first[("keyforge_archives", labels)] == 1
    assert first[("keyforge_last_written_bytes", labels)] > 0
    assert first[("keyforge_last_exit_code", labels)] == 0
    assert (
        first[
            ("keyforge_runs_total", (("job", "backup"), ("result", "success"), ("target", "local")))
        ]
        == 1
    )
    assert oct(prom.stat().st_mode & 0o777) == "0o644"  # node_exporter reads it

    time.sleep(1.1)
    assert _backup(config).exit_code == 0
    second = _metrics(prom)
    for name in (
        "keyforge_last_start_timestamp_seconds",
        "keyforge_last_success_timestamp_seconds",
    ):
        assert second[(name, labels)] > first[(name, labels)]
    assert second[("keyforge_archives", labels)] == 2
    assert (
        second[
            ("keyforge_runs_total", (("job", "backup"), ("result", "success"), ("target", "local")))
        ]
        == 2
    )

    config_bad = _config(tmp_path, [tmp_path / "gone"], f'prometheus_textfile = "{prom}"\n')
    assert _backup(config_bad).exit_code != 0
    third = _metrics(prom)
    assert ("keyforge_last_failure_timestamp_seconds", labels) in third
    assert third[("keyforge_last_exit_code", labels)] != 0
    assert not list(prom.parent.glob(".*.tmp"))  # written by rename, nothing left beside it


def test_status_fails_when_the_last_backup_run_failed_and_json_says_why(tmp_path: Path) -> None:
    src = _source(tmp_path)
    good = _config(tmp_path, [src], "")
    assert _backup(good).exit_code == 0
    fine = CliRunner().invoke(app, ["status", "--config", good, "--json"])
    assert json.loads(fine.stdout)["reasons"] == []
    assert fine.exit_code == 0, fine.output

    # the next night the source is gone: the manifest of the good run is still young
    src.rename(tmp_path / "moved")
    assert _backup(good).exit_code != 0
    (tmp_path / "moved").rename(src)
    result = CliRunner().invoke(app, ["status", "--config", good, "--json"])
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    assert document["ok"] is False
    [reason] = document["reasons"]
    assert reason.startswith("last backup run: the last backup run failed (exit ")

    # a good run clears it
    assert _backup(good).exit_code == 0
    assert CliRunner().invoke(app, ["status", "--config", good]).exit_code == 0
