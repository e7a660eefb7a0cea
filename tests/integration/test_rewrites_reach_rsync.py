"""A file keyforge rewrites reaches the offsite copy even when rewritten, at the same size,
within the second the copy's version was written: rsync's quick check (size and mtime to the
second) would skip it, leaving the copy a manifest that no longer matches its archives."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from keyforge.infra import fsutil

pytestmark = pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed")


def push(source: Path, copy: Path) -> None:
    subprocess.run(["rsync", "-a", "--delete", f"{source}/", f"{copy}/"], check=True)


def test_a_manifest_rewritten_within_the_same_second_reaches_the_copy(tmp_path: Path) -> None:
    source, copy = tmp_path / "backups", tmp_path / "copy"
    source.mkdir()
    manifest = source / "server1.20261202.manifest.json"
    versions = [
        b'{"created": "10:00:00.1"}\n',
        b'{"created": "10:00:00.2"}\n',
        b'{"created": "10:00:00.3"}\n',
    ]
    for version in versions:  # all of them well within one second, all the same size
        fsutil.atomic_write(manifest, version)
        push(source, copy)
        assert (copy / manifest.name).read_bytes() == version


def test_every_rewrite_is_a_later_second_than_the_version_it_replaces(tmp_path: Path) -> None:
    path = tmp_path / "keyforge-manifest.json"
    fsutil.atomic_write(path, b"one")
    seconds = [path.stat().st_mtime_ns // 10**9]
    for data in (b"two", b"three", b"four"):
        fsutil.atomic_write(path, data)
        seconds.append(path.stat().st_mtime_ns // 10**9)
    assert seconds == sorted(set(seconds))  # strictly later each time
