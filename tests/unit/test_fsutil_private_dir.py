"""ensure_private_dir: 0700 whatever the umask, parents made, every failure one FileError."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from keyforge.errors import FileError
from keyforge.infra import fsutil


def test_a_new_directory_is_0700_even_under_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        assert fsutil.ensure_private_dir(tmp_path / "a" / "b") is True
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o700


def test_an_existing_directory_is_left_as_it_is(tmp_path: Path) -> None:
    existing = tmp_path / "d"
    existing.mkdir(mode=0o755)
    existing.chmod(0o755)
    assert fsutil.ensure_private_dir(existing) is False
    assert stat.S_IMODE(existing.stat().st_mode) == 0o755


def test_a_file_in_the_way_is_a_file_error(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(FileError, match="exists and is not a directory"):
        fsutil.ensure_private_dir(tmp_path / "f")


def test_a_parent_that_is_a_file_is_a_file_error_not_an_oserror(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(FileError, match="cannot create directory"):
        fsutil.ensure_private_dir(tmp_path / "f" / "sub" / "dir")


def test_a_file_system_that_refuses_mkdir_ends_in_an_error_not_a_loop() -> None:
    # procfs answers mkdir with ENOENT even when the parent exists
    with pytest.raises(FileError, match="cannot create directory /proc/keyforge-nowhere"):
        fsutil.ensure_private_dir(Path("/proc/keyforge-nowhere"))
