"""keyforge sync to a local drive under its monitors: the pings a real HTTP server on
127.0.0.1 records, the sent bytes in the Prometheus file, quiet output under cron, and
rsync's progress shown when stderr is a terminal (a real pseudo-terminal)."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from keyforge.cli import app
from tests.conftest import Recorder

ROOT = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, monitor: str) -> Path:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "data").write_bytes(os.urandom(3_000_000))  # incompressible: the push takes a moment
    drive = tmp_path / "drive"
    drive.mkdir(exist_ok=True)
    path = tmp_path / "keyforge.toml"
    path.write_text(
        f'[general]\nhost = "server1"\nstate_dir = "{tmp_path}/state"\n'
        f'[backup]\nsources = ["{src}"]\ndirectory = "{tmp_path}/backups"\n'
        'nice = 0\nionice = "none"\ncompression_level = 1\n'
        f'[sync]\nlog = "{tmp_path}/sync.log"\n'
        f'[[targets]]\nname = "ext"\npath = "{drive}"\n'
        f"[monitor]\n{monitor}"
    )
    assert CliRunner().invoke(app, ["backup", "--config", str(path)]).exit_code == 0
    return path


def test_a_sync_pings_start_and_success_and_its_bytes_reach_the_prometheus_file(
    tmp_path: Path, recorder: Recorder
) -> None:
    prom = tmp_path / "keyforge.prom"
    monitor = f'sync_ping = "{recorder.url}/s"\nprometheus_textfile = "{prom}"\n'
    config = _config(tmp_path, monitor)
    result = CliRunner().invoke(app, ["sync", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert [p.split("?")[0] for p in recorder.paths()] == ["/s/start", "/s"]
    assert "sync ext: ok in " in recorder.seen[1][2].decode()
    samples = {
        (s.name, s.labels.get("job"), s.labels.get("target")): s.value
        for family in text_string_to_metric_families(prom.read_text())
        for s in family.samples
    }
    assert samples[("keyforge_last_sent_bytes", "sync", "ext")] > 3_000_000
    assert samples[("keyforge_last_exit_code", "sync", "ext")] == 0
    assert ("keyforge_archives", "backup", "local") in samples  # both jobs in one file


def test_a_refused_sync_pings_its_exit_code(tmp_path: Path, recorder: Recorder) -> None:
    config = _config(tmp_path, f'sync_ping = "{recorder.url}/s"\n')
    for manifest in (tmp_path / "backups").glob("*.manifest.json"):
        manifest.unlink()  # an empty-looking disk: sync refuses to push it
    result = CliRunner().invoke(app, ["sync", "--config", str(config)])
    assert result.exit_code == 1
    assert [p.split("?")[0] for p in recorder.paths()] == ["/s/start", "/s/1"]


def test_in_a_terminal_the_sync_shows_rsyncs_progress(tmp_path: Path) -> None:
    config = _config(tmp_path, "")
    primary, secondary = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "keyforge", "sync", "--config", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=secondary,
        env=env,
    )
    os.close(secondary)
    seen = b""
    while True:
        ready, _, _ = select.select([primary], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # the terminal closed: the program ended
            break
        if not chunk:
            break
        seen += chunk
    os.close(primary)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, seen
    text = seen.decode("utf-8", "replace")
    assert "sync " in text and "(100%)" in text and "ETA " in text
    assert out == b""  # stdout is no terminal here: nothing to print on success
