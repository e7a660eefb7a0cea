"""[[dumps]] with [backup] encrypt_to: the dump is compressed and encrypted in one stream, its
manifest entry records the recipients, and restore --dump decrypts it with --identity.

Real SQLite, zstd and Debian's age; identities made by keyforge (keygen-age) and by age-keygen.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keyforge import age, layout
from keyforge.cli import app
from keyforge.errors import KeyMaterialError
from tests.integration.dump_config import write_config

CANARY = "keyforge-dump-canary-3c9e51b0-never-on-disk"


@pytest.fixture(autouse=True)
def _age_is_installed() -> None:
    # tests/run.sh installs Debian's age: a missing one is a failure, never a skip
    assert shutil.which("age") and shutil.which("age-keygen"), "Debian package 'age' is missing"


@dataclasses.dataclass(frozen=True)
class Setup:
    config: Path
    identity: Path  # keygen-age's, a recipient
    other: Path  # age-keygen's, not a recipient
    recipient: str
    scratch: Path  # TMPDIR of every program the run starts


@pytest.fixture
def encrypted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Setup:
    keydir = tmp_path / "keys"
    keydir.mkdir(mode=0o700)
    made = age.new_identity()
    age.write_identity(keydir / "key.txt", made)
    other = keydir / "other.txt"
    subprocess.run(["age-keygen", "-o", str(other)], check=True, capture_output=True)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    database = tmp_path / "app.db"
    db = sqlite3.connect(database)
    db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    db.executemany("INSERT INTO notes (body) VALUES (?)", [(f"{CANARY} {n}",) for n in range(2000)])
    db.commit()
    db.close()
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("plain source\n")
    cfg = write_config(
        tmp_path,
        [src],
        dumps=[{"name": "app", "kind": "sqlite", "path": str(database)}],
        backup={"encrypt_to": [made.recipient.text]},
    )
    return Setup(cfg, keydir / "key.txt", other, made.recipient.text, scratch)


def _files_holding(directory: Path, needle: bytes) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file() and needle in p.read_bytes()]


def _backup(setup: Setup) -> Path:
    made = CliRunner().invoke(app, ["backup", "--config", str(setup.config)])
    assert made.exit_code == 0, made.output
    [dump] = sorted((setup.config.parent / "backups").glob("server1-app.*.dump*"))
    return dump


def _restore(setup: Setup, *more: str) -> subprocess.CompletedProcess[bytes]:
    """A real process: the dump goes to its standard output straight from the pipeline."""
    argv = [sys.executable, "-m", "keyforge", "restore", "--config", str(setup.config)]
    return subprocess.run([*argv, "--dump", "app", *more], capture_output=True, check=False)


def test_an_encrypted_dump_holds_no_plaintext_and_its_manifest_records_the_recipients(
    encrypted: Setup,
) -> None:
    dump = _backup(encrypted)
    assert dump.name.endswith(".dump.zst.age")
    assert dump.read_bytes().startswith(age.HEADER_MAGIC)
    backups = encrypted.config.parent / "backups"
    # neither the archive, nor a manifest, nor any program's temporary file holds the data
    assert _files_holding(backups, CANARY.encode()) == []
    assert _files_holding(encrypted.scratch, CANARY.encode()) == []
    entry = layout.read_manifests(backups, "server1")[dump.name]
    assert entry["kind"] == layout.DUMP
    assert entry["encrypted_to"] == list(
        age.fingerprints(age.parse_recipients([encrypted.recipient]))
    )
    assert entry["size"] == dump.stat().st_size
    assert entry["blake3"] == layout.hash_of_file(dump)
    index = json.loads((backups / layout.MANIFEST_NAME).read_text())
    assert dump.name in json.dumps(index)


def test_restore_dump_with_the_identity_gives_the_database_back_to_a_file_and_stdout(
    encrypted: Setup, tmp_path: Path
) -> None:
    _backup(encrypted)
    out = tmp_path / "restored.db"
    done = _restore(encrypted, "--identity", str(encrypted.identity), "--to", str(out))
    assert done.returncode == 0, done.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    copy = sqlite3.connect(out)
    assert copy.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert copy.execute("SELECT COUNT(*) FROM notes WHERE body LIKE ?", (f"{CANARY}%",)).fetchone()
    assert copy.execute("SELECT COUNT(*) FROM notes").fetchone() == (2000,)
    copy.close()
    piped = _restore(encrypted, "--identity", str(encrypted.identity))
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == out.read_bytes()


def test_restore_dump_without_or_with_a_wrong_identity_is_one_line_and_writes_nothing(
    encrypted: Setup, tmp_path: Path
) -> None:
    dump = _backup(encrypted)
    out = tmp_path / "restored.db"
    missing = _restore(encrypted, "--to", str(out))
    wrong = _restore(encrypted, "--identity", str(encrypted.other), "--to", str(out))
    piped = _restore(encrypted, "--identity", str(encrypted.other))
    for result in (missing, wrong, piped):
        assert result.returncode == KeyMaterialError.exit_code, result.stderr
        lines = result.stderr.decode().strip().splitlines()
        assert len(lines) == 1, lines
        assert dump.name in lines[0]
    assert b"give --identity FILE" in missing.stderr
    assert f"identity {encrypted.other}".encode() in wrong.stderr
    assert piped.stdout == b""
    assert not out.exists()
    assert list(tmp_path.glob("*restored*")) == []


def test_verify_reads_an_encrypted_dump_back_with_the_identity_and_names_a_flipped_byte(
    encrypted: Setup,
) -> None:
    dump = _backup(encrypted)
    config = str(encrypted.config)
    plain = CliRunner().invoke(app, ["verify", "--config", config])
    assert plain.exit_code == 0, plain.output
    assert "dump:app: encrypted dump" in plain.output and "content not checked" in plain.output
    keyed = ["verify", "--config", config, "--identity", str(encrypted.identity)]
    read = CliRunner().invoke(app, keyed)
    assert read.exit_code == 0, read.output
    assert "dump:app:" in read.output and "read back whole, ok" in read.output
    assert "content" not in read.output  # every archive's content was checked
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0x01
    dump.write_bytes(bytes(data))
    damaged = CliRunner().invoke(app, ["verify", "--config", config])
    assert damaged.exit_code != 0
    assert f"{dump.name}: blake3 differs" in damaged.output
    # with the identity, age's authentication names the damaged payload too
    opened = CliRunner().invoke(app, keyed)
    assert opened.exit_code != 0
    assert f"cannot decrypt {dump.name}" in opened.output


def test_turning_encryption_on_makes_the_next_dump_encrypted_and_both_restore(
    encrypted: Setup, tmp_path: Path
) -> None:
    text = encrypted.config.read_text()
    plain_config = text.replace(f'encrypt_to = ["{encrypted.recipient}"]\n', "")
    assert plain_config != text
    encrypted.config.write_text(plain_config)
    first = CliRunner().invoke(app, ["backup", "--config", str(encrypted.config)])
    assert first.exit_code == 0, first.output
    encrypted.config.write_text(text)
    second = CliRunner().invoke(app, ["backup", "--config", str(encrypted.config)])
    assert second.exit_code == 0, second.output
    found = [p.name for p in (tmp_path / "backups").glob("server1-app.*.dump*")]
    names = [r.name for r in layout.archive_records(found)]  # in run order
    assert [n.endswith(".age") for n in names] == [False, True]
    # the newest, encrypted, is what restore takes; it needs the identity
    assert _restore(encrypted, "--to", str(tmp_path / "x")).returncode == KeyMaterialError.exit_code
    done = _restore(encrypted, "--identity", str(encrypted.identity))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(b"SQLite format 3\0")
