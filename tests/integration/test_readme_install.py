"""The README's first command, run as written, puts `keyforge` on PATH and runs the demo.

Its Debian packages are what tests/run.sh installs, so the apt-get step is left out; the venv and
the link move into a temporary directory instead of /opt and /usr/local/bin, and PATH holds that
directory and the system's own, so a bare `keyforge` can only be the link the command made.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from readme import README_PATH, opening_commands

REPO = README_PATH.parent
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def without_apt(command: str) -> str:
    steps = [step for step in command.split(" && ") if not step.startswith("apt-get ")]
    assert steps, command
    return " && ".join(steps)


def relocated(command: str, prefix: Path) -> str:
    assert "/opt/keyforge" in command and "/usr/local/bin/keyforge" in command, command
    return command.replace("/opt/keyforge", str(prefix / "opt" / "keyforge")).replace(
        "/usr/local/bin/", str(prefix / "bin") + "/"
    )


def test_relocation_moves_every_install_path_and_drops_apt() -> None:
    command = (
        "apt-get update && apt-get install -y x && python3 -m venv /opt/keyforge && "
        "/opt/keyforge/bin/pip install . && ln -sf /opt/keyforge/bin/keyforge "
        "/usr/local/bin/keyforge && keyforge demo"
    )
    moved = relocated(without_apt(command), Path("/t"))
    assert moved == (
        "python3 -m venv /t/opt/keyforge && /t/opt/keyforge/bin/pip install . && "
        "ln -sf /t/opt/keyforge/bin/keyforge /t/bin/keyforge && keyforge demo"
    )


@pytest.mark.slow
def test_readme_first_command_puts_keyforge_on_path_and_runs_the_demo(tmp_path: Path) -> None:
    if not Path("/usr/bin/python3").exists():
        pytest.fail("the README's command needs Debian's /usr/bin/python3 (apt package python3)")
    (tmp_path / "bin").mkdir()
    command = relocated(without_apt(opening_commands()[0]), tmp_path)
    assert command.endswith(" && keyforge demo"), command
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PYTHON", "VIRTUAL_ENV", "PIP_"))
    }
    env["PATH"] = f"{tmp_path / 'bin'}:{SYSTEM_PATH}"
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", command],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert "demo passed in" in done.stdout
    on_path = shutil.which("keyforge", path=env["PATH"])
    assert on_path == str(tmp_path / "bin" / "keyforge")
    assert Path(on_path).resolve() == tmp_path / "opt" / "keyforge" / "bin" / "keyforge"
