"""[[dumps]] of kind command and sqlite, [hooks], and excludes, run for real (no server)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keyforge import layout
from keyforge.cli import app
from keyforge.errors import SignatureError
from keyforge.layout import hash_of_file
from tests.integration.dump_config import write_config


def _src(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_text("hello\n")
    return src


def _backup(cfg: Path, *more: str) -> object:
    return CliRunner().invoke(app, ["backup", "--config", str(cfg), *more])


def _dumps(tmp_path: Path, unit: str) -> list[Path]:
    return sorted((tmp_path / "backups").glob(f"server1-{unit}.*.dump.zst"))


def test_a_command_dump_is_archived_listed_and_restored_as_it_was(tmp_path: Path) -> None:
    payload = "line one\n\x00binary\xff\n" * 1000
    script = tmp_path / "payload"
    script.write_bytes(payload.encode("latin-1"))
    cfg = write_config(
        tmp_path,
        [_src(tmp_path)],
        dumps=[{"name": "pipe", "kind": "command", "command": ["cat", str(script)]}],
    )
    made = _backup(cfg)
    assert made.exit_code == 0, made.output  # type: ignore[attr-defined]
    [archive] = _dumps(tmp_path, "pipe")
    assert archive.stat().st_mode & 0o777 == 0o600
    out = tmp_path / "restored"
    done = CliRunner().invoke(
        app, ["restore", "--config", str(cfg), "--dump", "pipe", "--to", str(out)]
    )
    assert done.exit_code == 0, done.output
    assert out.read_bytes() == script.read_bytes()
    # an existing file is replaced only with --force
    again = CliRunner().invoke(
        app, ["restore", "--config", str(cfg), "--dump", "pipe", "--to", str(out)]
    )
    assert again.exit_code == 2
    assert "exists; pass --force" in again.stderr
    # and verify checks the dump's hash with the archives'
    checked = CliRunner().invoke(app, ["verify", "--config", str(cfg)])
    assert checked.exit_code == 0, checked.output


@pytest.mark.parametrize("signed", [True, False])
def test_restore_dump_refuses_a_dump_whose_hash_differs(tmp_path: Path, signed: bool) -> None:
    cfg = write_config(
        tmp_path,
        [_src(tmp_path)],
        dumps=[{"name": "pipe", "kind": "command", "command": ["echo", "x"]}],
        signed=signed,
    )
    assert _backup(cfg).exit_code == 0  # type: ignore[attr-defined]
    [archive] = _dumps(tmp_path, "pipe")
    data = bytearray(archive.read_bytes())
    data[-1] ^= 0xFF  # the same size, other bytes: only the checksum can tell
    archive.write_bytes(bytes(data))
    out = tmp_path / "restored"
    insecure = [] if signed else ["--insecure-unsigned"]
    done = CliRunner().invoke(
        app, ["restore", "--config", str(cfg), "--dump", "pipe", "--to", str(out), *insecure]
    )
    if signed:  # a dump is a chain of one: its signed manifest's hash refuses it
        assert done.exit_code == SignatureError.exit_code, done.output
        assert "is not what its signed manifest records (blake3)" in done.stderr
    else:
        assert done.exit_code == 1, done.output
        assert "blake3 differs" in done.stderr
    assert not out.exists()


def test_restore_dump_picks_the_newest_on_or_before_at_and_names_the_dumps(
    tmp_path: Path,
) -> None:
    counter = tmp_path / "n"
    counter.write_text("0")
    bump = f'n=$(cat {counter}); n=$((n+1)); echo $n > {counter}; echo "run $n"'
    cfg = write_config(
        tmp_path,
        [_src(tmp_path)],
        dumps=[{"name": "pipe", "kind": "command", "command": ["sh", "-c", bump]}],
    )
    assert _backup(cfg).exit_code == 0  # type: ignore[attr-defined]
    assert _backup(cfg).exit_code == 0  # type: ignore[attr-defined]
    newest = tmp_path / "newest"
    CliRunner().invoke(app, ["restore", "-c", str(cfg), "--dump", "pipe", "--to", str(newest)])
    assert newest.read_text() == "run 2\n"
    old = CliRunner().invoke(
        app, ["restore", "-c", str(cfg), "--dump", "pipe", "--at", "2001-01-01", "--to", "x"]
    )
    assert old.exit_code == 4
    assert "no dump pipe at or before 2001-01-01" in old.stderr
    unknown = CliRunner().invoke(app, ["restore", "-c", str(cfg), "--dump", "nope"])
    assert unknown.exit_code == 4
    assert "(dumps there: pipe)" in unknown.stderr
    both = CliRunner().invoke(
        app, ["restore", "-c", str(cfg), "--dump", "pipe", "--source", "/etc", "--to", "x"]
    )
    assert both.exit_code == 2


@pytest.mark.parametrize(
    ("command", "why"),
    [
        (["sh", "-c", "echo partial; echo 'disk on fire' >&2; exit 3"], "sh failed: disk on fire"),
        (["sh", "-c", "echo partial; kill -9 $$"], "sh was killed (signal 9)"),
        (["true"], "true wrote nothing"),
        (["/nonexistent/dumper"], "dumper: command not found"),
    ],
)
def test_a_dump_that_fails_is_killed_or_writes_nothing_fails_alone(
    tmp_path: Path, command: list[str], why: str
) -> None:
    cfg = write_config(
        tmp_path,
        [_src(tmp_path)],
        dumps=[
            {"name": "bad", "kind": "command", "command": command},
            {"name": "good", "kind": "command", "command": ["echo", "fine"]},
        ],
    )
    made = _backup(cfg)
    assert made.exit_code != 0  # type: ignore[attr-defined]
    last = made.stderr.strip().splitlines()[-1]  # type: ignore[attr-defined]
    assert last.startswith("keyforge: error: backup failed for 1 of 3 source(s) and dump(s)")
    assert f"dump bad: {why}" in last
    names = os.listdir(tmp_path / "backups")
    assert not [n for n in names if "bad" in n]
    assert len(_dumps(tmp_path, "good")) == 1
    assert len(list((tmp_path / "backups").glob("server1-*.master.tar.zst"))) == 1


WRITER = """
import os, sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
db.execute("PRAGMA journal_mode=DELETE")
n = 0
end = time.monotonic() + 120
while time.monotonic() < end and not os.path.exists(sys.argv[2]):
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO ledger (amount) VALUES (?)", (n,))
    db.execute("UPDATE totals SET total = total + ?", (n,))
    db.execute("INSERT INTO blobs (data) VALUES (randomblob(3000))")
    db.execute("COMMIT")
    n += 1
"""


def test_a_sqlite_dump_taken_while_another_process_writes_is_consistent(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE ledger (id INTEGER PRIMARY KEY, amount INTEGER);"
        "CREATE TABLE totals (total INTEGER); INSERT INTO totals VALUES (0);"
        "CREATE TABLE blobs (data BLOB);"
        "INSERT INTO blobs SELECT randomblob(3000) FROM (WITH RECURSIVE c(x) AS "
        "(SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 3000) SELECT x FROM c);"
    )
    db.commit()
    db.close()
    cfg = write_config(
        tmp_path,
        [_src(tmp_path)],
        dumps=[{"name": "app", "kind": "sqlite", "path": str(path)}],
    )
    stop = tmp_path / "stop"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(stop)])
    try:
        time.sleep(0.5)  # the writer is in full swing
        made = _backup(cfg)
        assert writer.poll() is None, "the writer stopped before the dump was taken"
        time.sleep(0.2)  # and goes on after it
    finally:
        stop.touch()
        writer.wait(timeout=60)
    assert made.exit_code == 0, made.output  # type: ignore[attr-defined]
    out = tmp_path / "restored.db"
    done = CliRunner().invoke(
        app, ["restore", "--config", str(cfg), "--dump", "app", "--to", str(out)]
    )
    assert done.exit_code == 0, done.output
    copy = sqlite3.connect(out)
    assert copy.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    [(rows, total)] = copy.execute("SELECT COUNT(*), SUM(amount) FROM ledger").fetchall()
    assert rows > 0  # taken while writing, not before
    assert copy.execute("SELECT total FROM totals").fetchall() == [(total,)]
    assert copy.execute("SELECT COUNT(*) FROM blobs").fetchone() == (3000 + rows,)
    live = sqlite3.connect(path).execute("SELECT COUNT(*) FROM ledger").fetchone()[0]
    assert live > rows  # the writer went on after the dump


def test_a_sqlite_dump_of_a_missing_file_fails_and_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "nope.db"
    cfg = write_config(
        tmp_path, [_src(tmp_path)], dumps=[{"name": "app", "kind": "sqlite", "path": str(missing)}]
    )
    made = _backup(cfg)
    assert made.exit_code == 5  # type: ignore[attr-defined]
    assert "dump app: python" in made.stderr  # type: ignore[attr-defined]
    assert not missing.exists()


# --- hooks -----------------------------------------------------------------------------------

RECORD = (
    'echo "$KEYFORGE_HOOK $KEYFORGE_RESULT $KEYFORGE_HOST|$KEYFORGE_ERROR|$KEYFORGE_RUN" >> {out};'
    ' cat "$KEYFORGE_LOG" > {out}.$KEYFORGE_HOOK'
)


def _hooks(out: Path, **more: object) -> dict[str, object]:
    record = ["sh", "-c", RECORD.format(out=out)]
    return {"before": record, "after": record, "on_error": record, **more}


def test_hooks_run_before_and_after_with_the_run_named_in_their_environment(
    tmp_path: Path,
) -> None:
    out = tmp_path / "hooks.txt"
    cfg = write_config(tmp_path, [_src(tmp_path)], hooks=_hooks(out))
    made = _backup(cfg)
    assert made.exit_code == 0, made.output  # type: ignore[attr-defined]
    first, second = out.read_text().splitlines()
    assert first.startswith("before running server1||")
    assert second.startswith("after ok server1||")
    assert first.split("|")[-1] == second.split("|")[-1] != ""  # one run, one name
    log = Path(f"{out}.after").read_text().splitlines()
    assert log[0].startswith("backup server1 started ") and log[-1] == "ok"
    assert (tmp_path / "state" / "last-backup.log").stat().st_mode & 0o777 == 0o600


def test_a_failing_before_hook_stops_the_backup_with_one_line(tmp_path: Path) -> None:
    out = tmp_path / "hooks.txt"
    hooks = _hooks(out, before=["sh", "-c", "echo 'disk not mounted' >&2; exit 1"])
    cfg = write_config(tmp_path, [_src(tmp_path)], hooks=hooks)
    made = _backup(cfg)
    assert made.exit_code == 5  # type: ignore[attr-defined]
    assert made.stderr == (  # type: ignore[attr-defined]
        "keyforge: error: backup not run: hook before (sh) failed: disk not mounted\n"
    )
    assert not (tmp_path / "backups").exists()
    [line] = out.read_text().splitlines()
    assert line.startswith("on_error failed server1|backup not run: hook before (sh) failed")


def test_on_error_runs_after_a_failed_run_and_sees_its_failure(tmp_path: Path) -> None:
    out = tmp_path / "hooks.txt"
    cfg = write_config(tmp_path, [_src(tmp_path), tmp_path / "gone"], hooks=_hooks(out))
    made = _backup(cfg)
    assert made.exit_code == 4  # type: ignore[attr-defined]
    before, on_error = out.read_text().splitlines()
    assert before.startswith("before running")
    assert on_error.startswith("on_error failed server1|backup failed for 1 of 2 source(s)")
    log = Path(f"{out}.on_error").read_text()
    assert "warning: " in log and "gone" in log and "failed: backup failed" in log


def test_a_hook_that_runs_too_long_is_killed(tmp_path: Path) -> None:
    hooks = {"before": ["sleep", "30"], "timeout": 1}
    cfg = write_config(tmp_path, [_src(tmp_path)], hooks=hooks)
    started = time.monotonic()
    made = _backup(cfg)
    assert time.monotonic() - started < 15
    assert made.exit_code == 5  # type: ignore[attr-defined]
    assert "hook before (sleep): sleep did not finish within 1 s" in made.stderr  # type: ignore[attr-defined]


def test_hooks_are_argv_lists_never_a_shell(tmp_path: Path) -> None:
    marker = tmp_path / "touched"
    cfg = write_config(tmp_path, [_src(tmp_path)], hooks={"before": ["echo", f"; touch {marker}"]})
    assert _backup(cfg).exit_code == 0  # type: ignore[attr-defined]
    assert not marker.exists()


# --- excludes ----------------------------------------------------------------------------------


def test_a_glob_exclude_keeps_every_directory_entry_and_verify_passes(tmp_path: Path) -> None:
    src = _src(tmp_path)
    (src / "d" / "junk.tmp").write_text("x")
    (src / "lost+found").mkdir()
    (src / "d").chmod(0o750)
    cfg = write_config(tmp_path, [src], backup={"exclude": ["*.tmp", "lost+found"]})
    assert _backup(cfg).exit_code == 0  # type: ignore[attr-defined]
    [archive] = (tmp_path / "backups").glob("server1-*.master.tar.zst")
    listing = subprocess.run(
        ["tar", "--zstd", "-tvf", str(archive)], capture_output=True, text=True, check=True
    ).stdout
    entries = [line.split()[-1] for line in listing.splitlines()]
    assert {"./", "./d/", "./d/f"} <= set(entries)  # the directories too, with their modes
    assert "junk.tmp" not in listing and "lost+found" not in listing
    out = tmp_path / "out"
    restored = CliRunner().invoke(
        app, ["restore", "-c", str(cfg), "--source", str(src), "--to", str(out)]
    )
    assert restored.exit_code == 0, restored.output
    assert (out / "d").stat().st_mode & 0o777 == 0o750
    checked = CliRunner().invoke(app, ["verify", "--config", str(cfg)])
    assert checked.exit_code == 0, checked.output


def test_the_manifest_of_a_run_with_dumps_lists_sources_and_dumps(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path,
        [_src(tmp_path)],
        dumps=[{"name": "pipe", "kind": "command", "command": ["echo", "x"]}],
    )
    assert _backup(cfg).exit_code == 0  # type: ignore[attr-defined]
    index = json.loads((tmp_path / "backups" / "keyforge-manifest.json").read_text())
    sources = sorted(a["source"] for a in index["archives"])
    assert sources == sorted([str(tmp_path / "src"), "dump:pipe"])
    [dump] = _dumps(tmp_path, "pipe")
    assert {a["name"]: a["blake3"] for a in index["archives"]}[dump.name] == hash_of_file(dump)


def test_backup_dry_run_lists_each_dump_and_runs_none(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    cfg = write_config(
        tmp_path,
        [_src(tmp_path)],
        dumps=[
            {"name": "pipe", "kind": "command", "command": ["touch", str(marker)]},
            {"name": "app", "kind": "sqlite", "path": str(tmp_path / "app.db")},
        ],
    )
    dry = _backup(cfg, "--dry-run")
    assert dry.exit_code == 0, dry.output  # type: ignore[attr-defined]
    lines = dry.stdout.splitlines()  # type: ignore[attr-defined]
    assert f"  dump pipe: touch {marker}" in lines
    assert any(ln.startswith("  dump app: ") and "sqlite_online" in ln for ln in lines)
    assert not marker.exists()
    assert not (tmp_path / "backups").exists()


def test_a_dump_entry_missing_what_its_kind_needs_stops_the_run_before_anything(
    tmp_path: Path,
) -> None:
    cfg = write_config(tmp_path, [_src(tmp_path)], dumps=[{"name": "app", "kind": "sqlite"}])
    made = _backup(cfg)
    assert made.exit_code == 6  # type: ignore[attr-defined]
    assert made.stderr == (  # type: ignore[attr-defined]
        'keyforge: error: [[dumps]] #1 (app): kind = "sqlite" needs path\n'
    )
    assert not (tmp_path / "backups").exists()


def test_verify_reads_each_dump_back_whole_and_names_one_that_does_not_decompress(
    tmp_path: Path,
) -> None:
    """A dump whose bytes match its manifest but whose stream is cut short (recorded so by a
    damaged disk before the manifest was written, say) is caught by reading it back."""
    payload = tmp_path / "payload"
    payload.write_bytes(os.urandom(1 << 16))
    cfg = write_config(
        tmp_path,
        [_src(tmp_path)],
        dumps=[{"name": "pipe", "kind": "command", "command": ["cat", str(payload)]}],
        signed=False,  # the manifests are rewritten below, as only an unsigned one can be
    )
    assert _backup(cfg).exit_code == 0  # type: ignore[attr-defined]
    good = CliRunner().invoke(app, ["verify", "--config", str(cfg), "--insecure-unsigned"])
    assert good.exit_code == 0, good.output
    assert "dump:pipe: 64.0 KB read back whole, ok" in good.output
    [archive] = _dumps(tmp_path, "pipe")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    for manifest in (tmp_path / "backups").glob("*.json"):
        document = json.loads(manifest.read_text())
        for entry in document["archives"]:
            if entry["name"] == archive.name:
                entry.update(size=archive.stat().st_size, blake3=hash_of_file(archive))
        manifest.write_text(json.dumps(document))
    cut = CliRunner().invoke(app, ["verify", "--config", str(cfg), "--insecure-unsigned"])
    assert cut.exit_code != 0
    assert f"cannot read {archive.name}" in cut.output


def test_status_names_a_dump_that_failed_in_the_last_backup_even_without_the_run_log(
    tmp_path: Path,
) -> None:
    cfg = write_config(
        tmp_path,
        [_src(tmp_path)],
        dumps=[
            {"name": "fine", "kind": "command", "command": ["echo", "x"]},
            {"name": "broken", "kind": "command", "command": ["sh", "-c", "echo oops >&2; exit 3"]},
        ],
    )
    assert _backup(cfg).exit_code != 0  # type: ignore[attr-defined]
    shown = CliRunner().invoke(app, ["status", "--config", str(cfg), "--json"])
    assert shown.exit_code == 1
    reasons = json.loads(shown.stdout)["reasons"]
    assert any("made no dump of broken" in r for r in reasons), reasons
    assert any(r.startswith("last backup run") for r in reasons), reasons  # the run log
    # the manifest alone tells: a run log in another state directory, or gone
    for log in (tmp_path / "state").glob("runs.log*"):
        log.unlink()
    alone = CliRunner().invoke(app, ["status", "--config", str(cfg)])
    assert alone.exit_code == 1
    assert "FAIL backup" in alone.stdout
    assert "made no dump of broken: it failed" in alone.stdout
    assert "fine" not in alone.stdout.split("made no dump of", 1)[1]


def test_a_dump_manifest_is_signed_like_the_others_and_an_unsigned_one_is_refused(
    tmp_path: Path,
) -> None:
    cfg = write_config(
        tmp_path,
        [_src(tmp_path)],
        dumps=[{"name": "pipe", "kind": "command", "command": ["echo", "signed rows"]}],
    )
    assert _backup(cfg).exit_code == 0  # type: ignore[attr-defined]
    [archive] = _dumps(tmp_path, "pipe")
    backups = tmp_path / "backups"
    [manifest] = backups.glob("server1.*.manifest.json")
    signature = layout.signature_path(manifest)
    assert signature.is_file()
    listed = [a.name for a in layout.load_manifest(manifest).archives]
    assert archive.name in listed  # the dump's entry is in what was signed
    out = tmp_path / "out"
    restore = ["restore", "--config", str(cfg), "--dump", "pipe", "--to", str(out)]
    done = CliRunner().invoke(app, restore)
    assert done.exit_code == 0, done.output
    assert out.read_bytes() == b"signed rows\n"
    out.unlink()
    verified = CliRunner().invoke(app, ["verify", "--config", str(cfg)])
    assert verified.exit_code == 0, verified.output
    signature.unlink()
    refused = CliRunner().invoke(app, restore)
    assert refused.exit_code == SignatureError.exit_code
    assert f"refusing {archive.name}: {manifest.name} is not signed" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert not out.exists()
