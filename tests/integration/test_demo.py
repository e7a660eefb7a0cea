"""keyforge demo: the whole system on one machine, run as a user would run it, twice."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from processes import live_processes_mentioning
from typer.testing import CliRunner

from keyforge.cli import app
from keyforge.errors import KeyforgeError
from keyforge.lab import demo, sshd

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def run_demo_command(tmpdir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "keyforge", "demo"],
        env=env,
        cwd=tmpdir,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_demo_passes_and_a_second_run_right_after_passes_too(tmp_path: Path) -> None:
    for attempt in (1, 2):
        result = run_demo_command(tmp_path)
        assert result.returncode == 0, f"run {attempt}:\n{result.stdout}\n{result.stderr}"
        assert "demo passed in" in result.stdout
        for number in range(1, demo.STEPS + 1):
            assert f"[{number}/{demo.STEPS}]" in result.stdout
        pid = int(re.search(r"sshd pid (\d+)", result.stdout).group(1))  # type: ignore[union-attr]
        assert not sshd.is_running(pid)
        # the temporary directory is gone, and nothing runs from it
        assert list(tmp_path.iterdir()) == []
        assert live_processes_mentioning(str(tmp_path)) == []


def test_demo_shows_the_locked_line_and_the_refusals_and_keep_leaves_no_process(
    tmp_path: Path,
) -> None:
    lines: list[str] = []
    result = demo.run_demo(keep=True, say=lines.append, parent=tmp_path)
    text = "\n".join(lines)
    assert result.authorized_keys_line.startswith("restrict,")
    assert 'from="127.0.0.1"' in result.authorized_keys_line
    assert f'command="{result.forced_command}"' in result.authorized_keys_line
    assert result.forced_command.startswith("rsync --server ")
    assert result.authorized_keys_line in text
    assert "'cat /etc/shadow': not run; sshd ran the forced rsync instead" in text
    assert "terminal: refused: PTY allocation request failed" in text
    assert "not from a permitted host" in text

    layout = demo.Layout(result.directory)
    assert layout.authorized_keys.read_text() == result.authorized_keys_line + "\n"
    assert sorted(p.name for p in layout.offsite.glob("*.tar.*")) == sorted(
        p.name for p in layout.backups.glob("*.tar.*")
    )
    assert not sshd.is_running(result.sshd_pid)
    assert live_processes_mentioning(str(tmp_path)) == []


def test_a_failing_step_is_named_and_everything_is_still_cleaned_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_verify(run: object) -> None:
        raise KeyforgeError("the offsite copy is unreadable")

    monkeypatch.setattr(demo, "step_verify", broken_verify)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    result = CliRunner().invoke(app, ["demo"])
    assert result.exit_code == 1
    assert (
        "keyforge: error: step 9/10 (verify) failed: the offsite copy is unreadable"
        in result.output
    )
    pid = int(re.search(r"sshd pid (\d+)", result.output).group(1))  # type: ignore[union-attr]
    assert not sshd.is_running(pid)
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_in_the_middle_stops_sshd_and_removes_the_directory(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(REPO)}
    # its own process group, which receives the SIGINT as a terminal's Ctrl-C would send it
    proc = subprocess.Popen(
        [sys.executable, "-m", "keyforge", "demo"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(f"[4/{demo.STEPS}]"):
            os.killpg(proc.pid, signal.SIGINT)
            break
    out, err = proc.communicate(timeout=60)
    text = "".join(seen) + out
    assert proc.returncode == 130, text + err
    pid = int(re.search(r"sshd pid (\d+)", text).group(1))  # type: ignore[union-attr]
    assert not sshd.is_running(pid)
    assert list(tmp_path.iterdir()) == []
    assert live_processes_mentioning(str(tmp_path)) == []
