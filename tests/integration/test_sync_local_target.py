"""The second tier: keyforge sync to a local drive, with require_mountpoint (real rsync, mount)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keyforge.cli import app

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a drive needs root")


def _files(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


@pytest.fixture
def drive(tmp_path: Path) -> Iterator[Path]:
    """A mounted filesystem standing in for the external drive."""
    mount = tmp_path / "external"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _config(tmp_path: Path, drive: Path) -> Path:
    copy = tmp_path / "srvbackups"  # what the sending server pushed to this receiving host
    copy.mkdir()
    (copy / "server1.20261128.manifest.json").write_text('{"format": 1, "archives": []}\n')
    (copy / "server1-etc.20261128.master.tar.zst").write_bytes(os.urandom(4096))
    path = tmp_path / "keyforge.toml"
    path.write_text(
        f'[backup]\ndirectory = "{tmp_path}/unused"\n'
        f'[sync]\nsource = "{copy}"\nlog = "{tmp_path}/sync.log"\n'
        f'[[targets]]\nname = "external"\npath = "{drive}"\nrequire_mountpoint = true\n'
    )
    return path


def test_a_mounted_drive_gets_an_exact_copy_of_the_copy(tmp_path: Path, drive: Path) -> None:
    config = _config(tmp_path, drive)
    stale = drive / "server1-etc.20261101.master.tar.zst"
    stale.write_bytes(b"pruned on the sending server since")
    result = CliRunner().invoke(app, ["sync", "--config", str(config), "--verbose"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("sync external: ok in ")
    sent = _files(tmp_path / "srvbackups")
    assert sent.pop(".keyforge.lock") == b""  # the sync held the source's lock; never copied
    assert _files(drive) == sent
    assert not stale.exists()  # a mirror: --delete applies to the drive too
    [line] = (tmp_path / "sync.log").read_text().splitlines()
    assert json.loads(line)["ok"] is True


def test_an_unmounted_drive_is_refused_and_its_directory_left_alone(
    tmp_path: Path, drive: Path
) -> None:
    config = _config(tmp_path, drive)
    subprocess.run(["umount", str(drive)], check=True)
    (drive / "on-the-root-disk").write_text("must stay")
    result = CliRunner().invoke(app, ["sync", "--config", str(config)])
    assert result.exit_code != 0
    [message] = result.stderr.splitlines()
    assert message.startswith("keyforge: error: ")
    assert "is not a mounted filesystem" in message
    assert [p.name for p in drive.iterdir()] == ["on-the-root-disk"]
    [line] = (tmp_path / "sync.log").read_text().splitlines()
    assert json.loads(line)["ok"] is False
