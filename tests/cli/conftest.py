"""Shared by the CLI tests: keyforge run as a process that file modes really apply to."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Root reads and writes any file whatever its mode; without these two capabilities it obeys
# the modes like everyone else, yet keeps its uid, so the files need no new owner.
_MODE_BYPASS = "-dac_override,-dac_read_search"

RunKeyforge = Callable[..., "subprocess.CompletedProcess[str]"]


def _bound_by_file_modes() -> list[str]:
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    assert setpriv is not None, "setpriv (util-linux) is needed to drop root's file access"
    return [setpriv, f"--bounding-set={_MODE_BYPASS}", f"--inh-caps={_MODE_BYPASS}"]


@pytest.fixture
def keyforge_bound_by_modes() -> RunKeyforge:
    """Run ``keyforge ARGS`` in a process that cannot read or write past file modes."""

    def run(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "PYTHONPATH": str(ROOT),
            "LC_ALL": "C.UTF-8",
        }
        argv = [*_bound_by_file_modes(), sys.executable, "-m", "keyforge", *args]
        return subprocess.run(argv, env=env, capture_output=True, text=True, check=False)

    return run
