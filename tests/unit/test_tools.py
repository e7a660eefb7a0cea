"""One rule finds programs: cron, systemd and sshd's command= get the same keyforge."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from keyforge import schedule
from keyforge.infra import tools
from keyforge.receiver import gate, snapshot
from keyforge.sender import sync


def script(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def venv_and_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A venv whose bin/ holds keyforge, run from a PATH that holds another keyforge."""
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.symlink_to(sys.executable)  # a venv's python links to the system's
    beside = script(tmp_path / "venv" / "bin" / "keyforge")
    other = script(tmp_path / "elsewhere" / "keyforge")
    monkeypatch.setattr(sys, "executable", str(python))
    monkeypatch.setenv("PATH", str(other.parent))  # nothing else: no system keyforge either
    return beside, other


def test_cron_and_the_gate_line_name_the_same_keyforge(venv_and_path: tuple[Path, Path]) -> None:
    beside, _ = venv_and_path
    # before, cron took PATH's keyforge and install --gate the venv's: two different programs
    assert schedule.keyforge_argv() == [gate.gate_program()] == [str(beside)]


def test_without_a_script_cron_runs_the_venvs_python_not_the_systems(
    venv_and_path: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    beside, other = venv_and_path
    beside.unlink()
    other.unlink()
    # the venv's python as named: resolving its link gives a Python that lacks keyforge
    assert schedule.keyforge_argv() == [sys.executable, "-m", "keyforge"]
    assert Path(sys.executable).is_symlink()


def test_a_program_is_found_on_path_else_in_sbin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = script(tmp_path / "bin" / "frobnicate")
    link = tmp_path / "bin" / "frob"
    link.symlink_to(found)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert tools.find_program("frobnicate") == str(found)
    assert tools.find_program("frob") == str(link)  # the link's stable name, not its target
    assert tools.find_program("no-such-program-here") is None
    sbin = tmp_path / "sbin"
    script(sbin / "daemon")
    monkeypatch.setattr(tools, "SBIN_DIRS", (str(sbin),))
    assert tools.find_program("daemon") == str(sbin / "daemon")


def test_the_gates_rsync_and_syncs_rsync_are_the_same() -> None:
    rsync = tools.find_program("rsync")
    if rsync is None:
        pytest.fail("rsync is needed for this test")
    assert gate.rsync_program() == snapshot.find_rsync() == sync.find_tools().rsync == rsync
