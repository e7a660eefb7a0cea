"""The hash a manifest records of each archive is BLAKE3, and Debian's b3sum checks it: the
archives on a disk or a receiving host stay checkable without keyforge. Manifests written with
sha256 before are still checked, with sha256."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyforge import config, layout
from keyforge.sender import backup, restore

# tests/run.sh installs Debian's b3sum; without it these tests fail, they are never skipped
B3SUM = shutil.which("b3sum") or "b3sum"


def _config(tmp_path: Path) -> config.Config:
    source = tmp_path / "etc"
    (source / "sub").mkdir(parents=True)
    (source / "hosts").write_text("127.0.0.1 localhost\n")
    (source / "sub" / "big").write_bytes(os.urandom(3 << 20))  # more than one read's worth
    directory = tmp_path / "backups"
    path = tmp_path / "keyforge.toml"
    path.write_text(
        f'[general]\nhost = "server1"\n[backup]\nsources = ["{source}"]\n'
        f'directory = "{directory}"\nfull_every = 7\nnice = 0\nionice = "none"\n'
    )
    return config.load(path)


def _b3sum_check(directory: Path, lines: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [B3SUM, "--check", "-"],
        input="".join(lines),
        cwd=directory,
        capture_output=True,
        text=True,
        check=False,
    )


def test_b3sum_checks_every_archive_against_its_manifest(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    report = backup.run_backup(cfg, now=dt.datetime(2026, 12, 1, 3, 0))
    (entry,) = report.entries
    manifest = json.loads(next(cfg.backup_dir.glob("server1.*.manifest.json")).read_text())
    lines = [f"{a['blake3']}  {a['name']}\n" for a in manifest["archives"]]
    assert [a["name"] for a in manifest["archives"]] == [entry.name]

    assert _b3sum_check(cfg.backup_dir, lines).returncode == 0

    archive = cfg.backup_dir / entry.name
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0x01
    archive.write_bytes(bytes(data))
    failed = _b3sum_check(cfg.backup_dir, lines)
    assert failed.returncode != 0
    assert f"{entry.name}: FAILED" in failed.stdout


def test_an_archive_recorded_with_sha256_is_checked_with_sha256(tmp_path: Path) -> None:
    """A manifest from before BLAKE3: verify's check of the archive still passes, and still
    names a flipped byte."""
    cfg = _config(tmp_path)
    report = backup.run_backup(cfg, now=dt.datetime(2026, 12, 1, 3, 0))
    (entry,) = report.entries
    archive = cfg.backup_dir / entry.name
    legacy = {k: v for k, v in entry.to_json().items() if k != "blake3"}
    legacy["sha256"] = hashlib.sha256(archive.read_bytes()).hexdigest()

    assert restore.archive_problems(archive, legacy) == []
    assert restore.archive_problems(archive, entry.to_json()) == []

    data = bytearray(archive.read_bytes())
    data[-1] ^= 0x80
    archive.write_bytes(bytes(data))
    assert restore.archive_problems(archive, legacy) == [
        f"{entry.name}: sha256 differs from the manifest"
    ]
    assert restore.archive_problems(archive, entry.to_json()) == [
        f"{entry.name}: blake3 differs from the manifest"
    ]


def _hashes_agree_with_the_stock_tools(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    b3sum = subprocess.run([B3SUM, str(path)], capture_output=True, text=True, check=True)
    assert layout.hash_of_file(path) == b3sum.stdout.split()[0]
    assert layout.hash_of_file(path, "sha256") == hashlib.sha256(data).hexdigest()


# around the 1 MiB a read takes, where a loop over reads goes wrong
@pytest.mark.parametrize("size", [0, 1, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, (3 << 20) + 7])
def test_the_file_hash_of_any_size_is_what_b3sum_prints(tmp_path: Path, size: int) -> None:
    _hashes_agree_with_the_stock_tools(tmp_path / "archive", os.urandom(size))


@settings(max_examples=40, deadline=None)
@given(data=st.binary(max_size=4096))
def test_the_file_hash_of_any_bytes_is_what_b3sum_prints(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    _hashes_agree_with_the_stock_tools(tmp_path_factory.mktemp("hash") / "archive", data)
