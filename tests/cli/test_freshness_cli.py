"""The receiving host's own alarm: 'keyforge status' per sending host whose pushes land there,
the scheduled check with its own ping (a real HTTP server on 127.0.0.1 records it), 'keyforge
notify' for a unit systemd saw fail, and the MAILTO warning at schedule time."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keyforge import layout
from keyforge.cli import app
from keyforge.infra import tools
from tests.conftest import Recorder

HOUR = 3600


def _push(copy: Path, host: str, stamp: str, age_hours: float, *, whole: bool = True) -> None:
    """What a push from ``host`` leaves in the copy: an archive and its manifest, both with
    the mtime the sender gave them (rsync -a keeps it)."""
    name = layout.archive_name(host, "etc", stamp, "master", "zstd")
    when = time.time() - age_hours * HOUR
    archive = copy / name
    archive.write_bytes(b"x" * (1000 if whole else 10))
    entry = layout.ArchiveEntry(name, "/etc", "master", name, 1000, "0" * 64)
    manifest = copy / f"{host}.{stamp}{layout.MANIFEST_SUFFIX}"
    manifest.write_bytes(
        layout.manifest_json(host, stamp, datetime.fromtimestamp(when, UTC), [entry])
    )
    for path in (archive, manifest):
        os.utime(path, (when, when))


def _receiver(tmp_path: Path, monitor: str = "", schedule: str = 'user = "daemon"\n') -> str:
    copy = tmp_path / "copy"
    copy.mkdir(exist_ok=True)
    path = tmp_path / "keyforge.toml"
    path.write_text(
        f'[general]\nhost = "raspberrypi"\nstate_dir = "{tmp_path}/state"\n'
        f'[snapshot]\nsource = "{copy}"\ndirectory = "{tmp_path}/snaps"\n'
        f"[schedule]\n{schedule}[monitor]\n{monitor}"
    )
    return str(path)


def test_each_sending_host_gets_its_own_line_aged_by_its_newest_complete_manifest(
    tmp_path: Path,
) -> None:
    config = _receiver(tmp_path)
    copy = tmp_path / "copy"
    _push(copy, "server1", "20261127", 20)
    _push(copy, "server1", "20261128", 2, whole=False)  # cut short: its archive is truncated
    _push(copy, "server2", "20261128", 3)
    result = CliRunner().invoke(app, ["status", "--config", config, "--json"])
    assert result.exit_code == 0, result.output
    items = {item["name"]: item for item in json.loads(result.stdout)["items"]}
    assert sorted(items) == ["pushed copy of server1", "pushed copy of server2"]
    assert 19.9 < items["pushed copy of server1"]["age_hours"] < 20.1  # not the cut one
    assert 2.9 < items["pushed copy of server2"]["age_hours"] < 3.1


def test_the_scheduled_check_pings_its_own_url_and_fires_when_pushes_stop(
    tmp_path: Path,
    recorder: Recorder,
) -> None:
    config = _receiver(tmp_path, f'freshness_ping = "{recorder.url}/fresh"\n')
    copy = tmp_path / "copy"
    _push(copy, "server1", "20261128", 1)
    ping = ["status", "--config", config, "--max-age", "26", "--ping"]
    fine = CliRunner().invoke(app, ping)
    assert fine.exit_code == 0, fine.output
    assert fine.stdout == ""  # quiet when all is well
    assert [p.split("?")[0] for p in recorder.paths()] == ["/fresh/start", "/fresh"]

    # server1 stops pushing: a day and a half later its newest manifest is too old
    for path in copy.iterdir():
        old = time.time() - 36 * HOUR
        os.utime(path, (old, old))
    stale = CliRunner().invoke(app, ping)
    assert stale.exit_code == 1
    assert "FAIL pushed copy of server1: 36.0 h ago" in stale.stdout
    assert [p.split("?")[0] for p in recorder.paths()[2:]] == ["/fresh/start", "/fresh/1"]
    body = recorder.seen[-1][2].decode()
    assert "over the 26 h limit" in body


def test_schedule_on_the_receiving_host_installs_the_check_with_its_ping(tmp_path: Path) -> None:
    config = _receiver(
        tmp_path, 'freshness_ping = "https://hc.example/ping/pi"\nmax_age_hours = 30\n'
    )
    result = CliRunner().invoke(app, ["schedule", "--cron", "--config", config])
    assert result.exit_code == 0, result.output
    [line] = [ln for ln in result.stdout.splitlines() if " status " in ln]
    assert line.startswith("17 * * * * daemon ")
    assert line.endswith(f"status --config {config} --max-age 30 --ping")


def test_schedule_warns_when_mailto_has_no_sendmail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _receiver(tmp_path)
    empty = tmp_path / "bin-empty"
    empty.mkdir()
    # this machine's programs out of sight: only the directory on PATH counts
    monkeypatch.setattr(tools, "SBIN_DIRS", ())
    env = {"PATH": str(empty)}
    no_mta = CliRunner().invoke(app, ["schedule", "--cron", "--config", config], env=env)
    assert no_mta.exit_code == 0, no_mta.output
    assert "no sendmail: cron drops the mail of a failed job silently" in no_mta.stderr
    with_mta = tmp_path / "bin"
    with_mta.mkdir()
    sendmail = with_mta / "sendmail"
    sendmail.write_text("#!/bin/sh\nexit 0\n")
    sendmail.chmod(0o755)
    mta = CliRunner().invoke(
        app, ["schedule", "--cron", "--config", config], env={"PATH": str(with_mta)}
    )
    assert "sendmail" not in mta.stderr
    config = _receiver(tmp_path, schedule='user = "daemon"\nmailto = ""\n')
    silent = CliRunner().invoke(app, ["schedule", "--cron", "--config", config], env=env)
    assert "sendmail" not in silent.stderr


def test_notify_reports_a_unit_systemd_saw_fail(
    tmp_path: Path,
    recorder: Recorder,
) -> None:
    config = _receiver(tmp_path, f'snapshot_ping = "{recorder.url}/snap"\n')
    env = {
        "MONITOR_SERVICE_RESULT": "signal",
        "MONITOR_EXIT_CODE": "killed",
        "MONITOR_EXIT_STATUS": "9",
    }
    argv = ["notify", "--config", config, "--unit", "keyforge-snapshot.service"]
    result = CliRunner().invoke(app, argv, env=env)
    assert result.exit_code == 0, result.output
    [path] = recorder.paths()
    assert path.startswith("/snap/9?rid=")
    assert "systemd: keyforge-snapshot.service failed (signal, killed, 9)" in (
        recorder.seen[0][2].decode()
    )
    # the run log has it, so status fails too
    status = CliRunner().invoke(app, ["status", "--config", config, "--json"])
    assert (
        "last snapshot run: the last snapshot run failed (exit 9)"
        in json.loads(status.stdout)["reasons"]
    )
    # a second report of the same failure moments later sends nothing again
    again = CliRunner().invoke(app, argv, env=env)
    assert again.exit_code == 0
    assert "reported this failure itself" in again.stdout
    assert len(recorder.paths()) == 1


def test_notify_refuses_a_unit_that_is_no_keyforge_job(tmp_path: Path) -> None:
    config = _receiver(tmp_path)
    result = CliRunner().invoke(app, ["notify", "--config", config, "--unit", "sshd.service"])
    assert result.exit_code == 2
    assert "is not a keyforge job's unit" in result.stderr
