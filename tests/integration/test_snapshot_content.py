"""keyforge snapshot judges the synced copy by content: real backups, real pushes, real rsync.

The sending server's backups are made by keyforge backup (tar, zstd) and pushed into the copy
with the sync's own rsync command; the copy then belongs to another user (nobody), as on a
receiving host where the backup key logs in as foo, and the tests run as root, the snapshot
user. The bad days: a push cut short with --partial, which leaves a truncated archive under its
final name dated 1970; a junk push (as many empty files as the copy holds and a manifest of
``{}``, or a forged one) with --delete; and retention running through days of such pushes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keyforge import age, layout
from keyforge import config as config_module
from keyforge.cli import app
from keyforge.config import Config, SyncConfig, parse
from keyforge.receiver import snapshot
from keyforge.sender import backup, sync

NOBODY = 65534

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("rsync") is None or shutil.which("zstd") is None,
    reason="needs root (to give the copy another owner), rsync and zstd",
)


def _at(day: int, hour: int = 5) -> dt.datetime:
    return dt.datetime(2026, 11, day, hour, 30, tzinfo=dt.UTC)


def _chown_tree(top: Path, uid: int = NOBODY) -> None:
    os.chown(top, uid, uid)
    for root, dirs, files in os.walk(top):
        for name in dirs + files:
            os.chown(Path(root) / name, uid, uid, follow_symlinks=False)


class Sender:
    """server1: a source tree, keyforge backup into its backup directory, pushes to the copy."""

    def __init__(self, tmp_path: Path) -> None:
        self.data = tmp_path / "data"
        (self.data / "etc").mkdir(parents=True)
        (self.data / "etc" / "passwd").write_text("root:x:0:0\n")
        self.big = self.data / "big.bin"
        self.big.write_bytes(os.urandom(3_000_000))  # incompressible: the archive stays big
        self.copy = tmp_path / "srvbackups"
        self.copy.mkdir()
        self.config = parse(
            {
                "general": {"host": "server1"},
                "backup": {
                    "sources": [str(self.data)],
                    "directory": str(tmp_path / "backups"),
                    "full_every": 30,
                    "nice": 0,
                    "ionice": "none",
                },
            }
        )

    def backup(self, day: int) -> backup.BackupReport:
        return backup.run_backup(self.config, now=dt.datetime(2026, 11, day, 1, 15))

    def push_argv(self, source: Path, *extra: str) -> list[str]:
        """The sync's own rsync command into the copy (a local target)."""
        tools = sync.Tools(rsync=shutil.which("rsync") or "rsync", ssh="ssh")
        target = sync.LocalTarget("pi", self.copy, require_mountpoint=False)
        argv = sync.rsync_argv(tools, source, target, SyncConfig())
        return [argv[0], *extra, *argv[1:]]

    def push(self, source: Path | None = None) -> None:
        subprocess.run(self.push_argv(source or self.config.backup_dir), check=True)
        _chown_tree(self.copy)


@pytest.fixture
def sender(tmp_path: Path) -> Sender:
    return Sender(tmp_path)


def _config(tmp_path: Path, copy: Path, **values: object) -> Config:
    settings = {"source": str(copy), "directory": str(tmp_path / "store"), **values}
    return parse({"snapshot": settings})


def _marker(tmp_path: Path, stamp: str) -> Path:
    return snapshot.wiped_marker(tmp_path / "store", stamp)


def _archive(sender: Sender) -> Path:
    [name] = [p.name for p in sender.copy.iterdir() if layout.is_archive_name(p.name)]
    return sender.copy / name


def test_a_good_push_is_a_good_snapshot_and_only_new_archives_are_hashed(
    tmp_path: Path, sender: Sender, monkeypatch: pytest.MonkeyPatch
) -> None:
    hashed: list[str] = []
    real = layout.hash_of_file

    def counting(path: Path | bytes, algorithm: str = layout.ARCHIVE_HASH) -> str:
        hashed.append(os.fsdecode(path).rsplit("/", 1)[-1])
        return real(path, algorithm)

    monkeypatch.setattr(layout, "hash_of_file", counting)
    config = _config(tmp_path, sender.copy)
    first_run = sender.backup(23)
    sender.push()
    first = snapshot.run_snapshot(config, now=_at(23))
    assert first.problem is None
    assert hashed == [first_run.entries[0].name]
    hashed.clear()
    (sender.data / "etc" / "new").write_text("day 2\n")
    second_run = sender.backup(24)
    sender.push()
    second = snapshot.run_snapshot(config, now=_at(24))
    assert second.problem is None
    # the master is the same file as in the first snapshot (a hard link): not hashed again
    assert hashed == [second_run.entries[0].name]
    assert not _marker(tmp_path, second.stamp).exists()


def test_an_archive_of_the_right_size_but_other_bytes_is_not_a_good_copy(
    tmp_path: Path, sender: Sender
) -> None:
    config = _config(tmp_path, sender.copy)
    sender.backup(23)
    sender.push()
    archive = _archive(sender)
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    report = snapshot.run_snapshot(config, now=_at(23))
    assert report.problem == f"{archive.name}: its content does not match the manifest's blake3"
    assert _marker(tmp_path, report.stamp).exists()


def _interrupted_push(sender: Sender) -> None:
    """A push with --partial killed while the big archive is on its way, as a lost link does:
    rsync keeps what arrived under the archive's final name. keyforge's own push keeps partial
    files in a partial directory; an older forced command, or a hand-written one, still says
    --partial, and the receiving host must not trust what it leaves."""
    keyforge_argv = sender.push_argv(sender.config.backup_dir, "--bwlimit=300")
    argv = [a for a in keyforge_argv if not a.startswith(("--partial-dir", "--delay-updates"))]
    argv.insert(1, "--partial")
    proc = subprocess.Popen(argv, start_new_session=True, stderr=subprocess.DEVNULL)
    archive = sender.copy / next(
        p.name for p in sender.config.backup_dir.iterdir() if layout.is_archive_name(p.name)
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        temps = [p for p in sender.copy.glob(f".{archive.name}.*") if p.stat().st_size > 200_000]
        if temps:
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("the push never started writing the archive")
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)
    assert archive.is_file(), "rsync --partial keeps the part under the final name"
    _chown_tree(sender.copy)


def test_a_push_cut_short_leaves_a_truncated_archive_that_is_not_a_good_copy(
    tmp_path: Path, sender: Sender
) -> None:
    config = _config(tmp_path, sender.copy, retention_days=1, min_keep=1)
    run = sender.backup(23)
    _interrupted_push(sender)
    archive = _archive(sender)
    recorded = run.entries[0].size
    assert 0 < archive.stat().st_size < recorded

    path = tmp_path / "snapshot.toml"
    path.write_text(f'[snapshot]\nsource = "{sender.copy}"\ndirectory = "{tmp_path}/store"\n')
    result = CliRunner().invoke(app, ["snapshot", "--config", str(path)])
    assert result.exit_code == 1, result.output
    assert (
        f"is not a good copy ({archive.name}: {archive.stat().st_size} bytes where its "
        f"manifest records {recorded} (a push cut short?))"
    ) in result.output
    assert "nothing pruned" in result.output
    [bad] = snapshot.list_stamps(tmp_path / "store")
    assert _marker(tmp_path, bad).read_text().startswith(archive.name)

    # the next push completes it: a good copy, judged afresh, and retention goes on
    sender.push()
    good = snapshot.run_snapshot(config, now=dt.datetime.now(dt.UTC) + dt.timedelta(days=3))
    assert good.problem is None
    assert good.pruned == (bad,)


def _junk_push(sender: Sender, tmp_path: Path, manifest: str) -> None:
    """With the backup key's rights: --delete, and as many empty files as the copy holds,
    plus a keyforge-manifest.json of the attacker's choosing."""
    junk = tmp_path / "junk"
    shutil.rmtree(junk, ignore_errors=True)
    junk.mkdir()
    count = sum(1 for p in sender.copy.rglob("*") if not p.is_dir())
    for index in range(count):
        (junk / f"junk{index}").write_bytes(b"")
    (junk / layout.MANIFEST_NAME).write_text(manifest)
    sender.push(junk)


def _forged(sender: Sender, tmp_path: Path) -> str:
    """A well-formed manifest naming the real archives, which the junk files do not match."""
    return (sender.config.backup_dir / layout.MANIFEST_NAME).read_text()


EMPTY = '{"format": 1, "host": "server1", "archives": []}\n'


@pytest.mark.parametrize(
    ("manifest", "reason"),
    [
        (lambda s, t: "{}", "keyforge-manifest.json is not a keyforge manifest (no format"),
        (_forged, "listed in the manifest but missing"),
        (lambda s, t: EMPTY, "no full backup of server1:"),
    ],
    ids=["empty-object", "forged", "lists-nothing"],
)
def test_a_junk_push_never_becomes_the_baseline_and_retention_keeps_the_real_snapshots(
    tmp_path: Path,
    sender: Sender,
    manifest: Callable[[Sender, Path], str],
    reason: str,
) -> None:
    config = _config(tmp_path, sender.copy, retention_days=2, min_keep=1)
    sender.backup(1)
    sender.push()
    real = [snapshot.run_snapshot(config, now=_at(1)).stamp]
    sender.backup(2)
    sender.push()
    real.append(snapshot.run_snapshot(config, now=_at(2)).stamp)
    assert snapshot.list_stamps(tmp_path / "store") == real

    _junk_push(sender, tmp_path, manifest(sender, tmp_path))
    assert not any(layout.is_archive_name(p.name) for p in sender.copy.iterdir())
    junk = []
    for day in (3, 10, 20, 30):  # the real snapshots age far past retention meanwhile
        report = snapshot.run_snapshot(config, now=_at(day))
        assert report.problem is not None and reason in report.problem, report.problem
        assert report.pruned == ()
        junk.append(report.stamp)
    assert snapshot.list_stamps(tmp_path / "store") == real + junk

    # the sender's next real push: a good copy again, judged against the real snapshots; the
    # newest real snapshot and this one are what retention keeps, the junk ages out
    sender.backup(30)
    sender.push()
    back = snapshot.run_snapshot(config, now=_at(30, 6))
    assert back.problem is None, back.problem
    # now a good copy supersedes them: what is past retention goes, junk and real alike
    assert back.pruned == (*real, *junk[:3])
    assert snapshot.list_stamps(tmp_path / "store") == [junk[3], back.stamp]


def test_accept_takes_a_removed_source_but_never_a_damaged_archive(
    tmp_path: Path, sender: Sender
) -> None:
    config = _config(tmp_path, sender.copy)
    sender.backup(23)
    sender.push()
    assert snapshot.run_snapshot(config, now=_at(23)).problem is None
    archive = _archive(sender)
    with archive.open("r+b") as handle:
        handle.truncate(archive.stat().st_size // 2)
    refused = snapshot.run_snapshot(config, now=_at(24), accept=True)
    assert refused.problem is not None and "a push cut short?" in refused.problem
    # the source removed on purpose: the sender's whole directory replaced by an empty backup
    shutil.rmtree(sender.copy)
    sender.copy.mkdir()
    (sender.copy / "server1.20261125.manifest.json").write_text(EMPTY)
    (sender.copy / layout.MANIFEST_NAME).write_text(EMPTY)
    _chown_tree(sender.copy)
    lost = snapshot.run_snapshot(config, now=_at(25))
    assert lost.problem is not None and "no full backup of server1:" in lost.problem
    accepted = snapshot.run_snapshot(config, now=_at(26), accept=True)
    assert accepted.problem is None
    assert any(
        w.startswith("accepted as meant:") and "no full backup of server1:" in w
        for w in accepted.warnings
    )


def test_an_encrypted_dump_is_judged_like_every_archive_of_the_copy(
    tmp_path: Path, sender: Sender
) -> None:
    """A [[dumps]] archive with encrypt_to (.dump.zst.age) is listed, hashed and claimed by
    its manifest on the receiving host as a source's archive is; the host holds no key."""
    made = age.new_identity()
    sender.config = dataclasses.replace(
        sender.config,
        backup=dataclasses.replace(sender.config.backup, encrypt_to=(made.recipient.text,)),
        dumps=(config_module.DumpConfig(name="app", kind="command", command=("echo", "rows")),),
    )
    run = sender.backup(23)
    [dump] = [e for e in run.entries if e.kind == layout.DUMP]
    assert dump.name.endswith(".dump.zst.age") and dump.encrypted_to
    sender.push()
    config = _config(tmp_path, sender.copy)
    good = snapshot.run_snapshot(config, now=_at(23))
    assert good.problem is None
    # a stray encrypted dump no manifest lists is named, as any stray archive is
    stray = sender.copy / layout.dump_name("server1", "ghost", "20261124", "zstd", encrypted=True)
    stray.write_bytes(b"age-encryption.org/v1\n")
    os.chown(stray, NOBODY, NOBODY)
    found = snapshot.run_snapshot(config, now=_at(24)).problem or ""
    assert f"{stray.name}: an archive no manifest lists" in found
    stray.unlink()
    # the next night's dump, damaged on its way: hashed as new, and named
    [dump] = [e for e in sender.backup(25).entries if e.kind == layout.DUMP]
    sender.push()
    copied = sender.copy / dump.name
    data = bytearray(copied.read_bytes())
    data[-1] ^= 0xFF
    copied.write_bytes(bytes(data))
    damaged = snapshot.run_snapshot(config, now=_at(25))
    assert damaged.problem == f"{dump.name}: its content does not match the manifest's blake3"
