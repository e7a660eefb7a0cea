"""The one reader of keyforge's manifests: what backup writes reads back, nothing else does."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from keyforge import layout
from keyforge.errors import FileError

NAME = "server1-etc.20261123.master.tar.zst"
ENTRY = layout.ArchiveEntry(NAME, "/etc", layout.MASTER, NAME, 1234, "ab" * 32, ("w",))


# an entry as keyforge wrote them before BLAKE3: its hash under "sha256"
LEGACY = {k: v for k, v in ENTRY.to_json().items() if k != "blake3"} | {"sha256": "cd" * 32}


def _written(tmp_path: Path, document: object) -> Path:
    path = tmp_path / "server1.20261123.manifest.json"
    path.write_text(json.dumps(document))
    return path


def test_what_backup_writes_reads_back_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "server1.20261123.manifest.json"
    path.write_bytes(
        layout.manifest_json("server1", "20261123", dt.datetime(2026, 11, 23), [ENTRY])
    )
    assert layout.load_manifest(path) == layout.Manifest("server1", (ENTRY,))


def test_backup_records_each_archive_under_its_blake3_hash(tmp_path: Path) -> None:
    archive = ENTRY.to_json()
    assert archive["blake3"] == "ab" * 32
    assert "sha256" not in archive
    assert list(archive)[:6] == ["name", "source", "kind", "chain", "size", "blake3"]


def test_a_manifest_written_with_sha256_still_reads_and_writes_back_as_sha256(
    tmp_path: Path,
) -> None:
    path = _written(tmp_path, {"format": 1, "host": "server1", "archives": [LEGACY]})
    (entry,) = layout.load_manifest(path).archives
    assert (entry.algorithm, entry.digest) == ("sha256", "cd" * 32)
    assert entry.to_json() == LEGACY


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ({}, "no format number"),
        ([], "not a JSON object"),
        ({"format": True, "host": "server1", "archives": []}, "no format number"),
        ({"format": 1, "archives": []}, "no host"),
        ({"format": 1, "host": "server1"}, "no archive list"),
        ({"format": 1, "host": "s", "archives": [{**ENTRY.to_json(), "name": "../x"}]}, "plain"),
        ({"format": 1, "host": "s", "archives": [{**ENTRY.to_json(), "size": -1}]}, "no size"),
        (
            {"format": 1, "host": "s", "archives": [{**ENTRY.to_json(), "blake3": "x"}]},
            "has a malformed blake3 hash",
        ),
        (
            {"format": 1, "host": "s", "archives": [{**LEGACY, "sha256": "AB" * 32}]},
            "has a malformed sha256 hash",
        ),
        (
            {"format": 1, "host": "s", "archives": [{**ENTRY.to_json(), "sha256": "ab" * 32}]},
            r"records more than one hash \(blake3, sha256\)",
        ),
        (
            {"format": 1, "host": "s", "archives": [{"name": NAME, "size": 1}]},
            "has no blake3 or sha256 hash",
        ),
    ],
)
def test_anything_else_is_refused_with_the_reason(
    tmp_path: Path, document: object, problem: str
) -> None:
    path = _written(tmp_path, document)
    with pytest.raises(FileError, match=f"cannot read manifest {path}: .*{problem}"):
        layout.load_manifest(path)


def test_a_file_that_is_not_json_is_refused(tmp_path: Path) -> None:
    path = tmp_path / layout.MANIFEST_NAME
    path.write_bytes(b"")
    with pytest.raises(FileError, match="not JSON"):
        layout.load_manifest(path)


def test_archive_names_are_recognised_whatever_the_host() -> None:
    assert layout.is_archive_name(NAME)
    assert layout.is_archive_name("raspberrypi-var_lib.20261123-093000.incremental.tar.gz")
    assert not layout.is_archive_name("junk0")
    assert not layout.is_archive_name(f".{NAME}.partial")
