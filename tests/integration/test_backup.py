"""Real tar and zstd runs: the round trip, the failures, and restore fidelity.

Every test builds its own small tree under tmp_path and fakes the run dates through ``now``, so
chains and restore dates are deterministic. Owners, xattrs and ACLs need root, as the backup
itself does; the suite runs as root locally and in CI.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest
from typer.testing import CliRunner

from keyforge import config, layout, signing
from keyforge.cli import app
from keyforge.errors import CommandError, FileError, KeyforgeError, LockedError
from keyforge.infra import fsutil
from keyforge.sender import backup, pipeline, restore
from keyforge.ssh import keys

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="backups of owners need root")

DAY1 = dt.datetime(2026, 11, 23, 1, 15)  # a Monday; full_every = 7 keeps weekdays out of it
DAY2 = DAY1 + dt.timedelta(days=1)
DAY3 = DAY1 + dt.timedelta(days=2)


# --- helpers -------------------------------------------------------------------------------


def make_config(tmp_path: Path, *sources: Path, **backup_values: object) -> config.Config:
    """Backups signed with a manifest-signing key, which restore and verify check."""
    key = tmp_path / "manifest-signing-key"
    if not key.exists():
        keys.write_pair(key, signing.make_key("server1"), force=False)
    values: dict[str, object] = {
        "sources": [str(s) for s in sources],
        "directory": str(tmp_path / "backups"),
        "full_every": 7,
        "nice": 0,
        "ionice": "none",
        "signing_key": str(key),
    }
    values.update(backup_values)
    return config.parse({"general": {"host": "server1"}, "backup": values})


def small_source(tmp_path: Path, **backup_values: object) -> tuple[Path, config.Config]:
    """A source holding one small file, and a config that backs it up."""
    src = tmp_path / "src"
    write(src / "a", b"1")
    return src, make_config(tmp_path, src, **backup_values)


def tree_source(tmp_path: Path) -> tuple[Path, config.Config]:
    """A source holding build_tree's tree, and a config that backs it up."""
    src = tmp_path / "src"
    build_tree(src)
    return src, make_config(tmp_path, src)


def write(path: Path, data: bytes, mode: int = 0o644, owner: tuple[int, int] = (0, 0)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chown(path, *owner)
    path.chmod(mode)


def build_tree(root: Path) -> None:
    """Regular files, symlinks, hard links, empty dirs, awkward names, modes and owners."""
    write(root / "etc/passwd", b"root:x:0:0\n")
    write(root / "etc/shadow", b"secret\n", 0o600)
    write(root / "home/alice/notes.txt", b"alice's notes\n", 0o640, (1001, 1002))
    write(root / "home/alice/run.sh", b"#!/bin/sh\n", 0o755, (1001, 1002))
    write(root / "with space/file name.txt", b"spaces\n")
    write(root / "odd/new\nline", b"newline in name\n")
    odd = os.fsencode(root / "odd") + b"/latin1-\xe9\xff"
    with open(odd, "wb") as handle:
        handle.write(b"not utf-8 name\n")
    (root / "empty/dir").mkdir(parents=True)
    (root / "sticky").mkdir(mode=0o1777)
    (root / "sticky").chmod(0o1777)
    (root / "etc/link-to-passwd").symlink_to("passwd")
    (root / "dangling").symlink_to("/nowhere/at/all")
    os.link(root / "etc/passwd", root / "home/hardlink-to-passwd")
    write(root / "setuid", b"suid\n", 0o4755)
    os.chown(root / "home/alice", 1001, 1002)


def change_tree(root: Path) -> None:
    """Day 2: modify, add, delete and rename (a file and a directory)."""
    with (root / "etc/passwd").open("ab") as handle:
        handle.write(b"alice:x:1001:1002\n")
    write(root / "etc/new.conf", b"added on day 2\n", 0o600, (7, 8))
    (root / "etc/shadow").unlink()
    (root / "with space/file name.txt").rename(root / "with space/renamed.txt")
    (root / "home/alice").rename(root / "home/alice2")
    (root / "empty/dir").rmdir()
    (root / "etc/link-to-passwd").unlink()
    (root / "etc/link-to-passwd").symlink_to("new.conf")
    (root / "home/alice2/run.sh").chmod(0o700)


@dataclasses.dataclass(frozen=True)
class Node:
    kind: str
    mode: int
    uid: int
    gid: int
    mtime_ns: int | None
    payload: str  # sha256 of content, or a symlink's target
    xattrs: tuple[tuple[str, bytes], ...]


def tree_state(root: Path) -> tuple[dict[bytes, Node], set[frozenset[bytes]]]:
    """Everything the restore must reproduce, and the hard-link groups."""
    base = os.fsencode(root)
    nodes: dict[bytes, Node] = {}
    inodes: dict[int, set[bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        for name in [*dirnames, *filenames]:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, base)
            st = os.lstat(full)
            xattrs = tuple(
                sorted(
                    (n, os.getxattr(full, n, follow_symlinks=False))
                    for n in os.listxattr(full, follow_symlinks=False)
                )
            )
            if stat.S_ISLNK(st.st_mode):
                nodes[rel] = Node(
                    "link", 0, st.st_uid, st.st_gid, None, os.fsdecode(os.readlink(full)), xattrs
                )
                continue
            payload = ""
            if stat.S_ISREG(st.st_mode):
                payload = hashlib.sha256(Path(os.fsdecode(full)).read_bytes()).hexdigest()
                if st.st_nlink > 1:
                    inodes.setdefault(st.st_ino, set()).add(rel)
            kind = "dir" if stat.S_ISDIR(st.st_mode) else "file"
            nodes[rel] = Node(
                kind,
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                st.st_mtime_ns,
                payload,
                xattrs,
            )
    return nodes, {frozenset(g) for g in inodes.values()}


def assert_same_tree(expected: Path, actual: Path) -> None:
    want_nodes, want_links = tree_state(expected)
    got_nodes, got_links = tree_state(actual)
    assert sorted(got_nodes) == sorted(want_nodes)
    for path, node in want_nodes.items():
        assert got_nodes[path] == node, path
    assert got_links == want_links


def copy_state(src: Path, dst: Path) -> None:
    """A faithful copy of the tree as it stands (cp -a keeps owners, links, xattrs)."""
    subprocess.run(["cp", "-a", "--", str(src), str(dst)], check=True)


def listing(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir())
        if p.is_file()
    }


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs: a disk that fills up, or that can be made read-only."""
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount)], check=True
    )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


# --- the round trip ------------------------------------------------------------------------


def test_restore_at_run_2_equals_the_tree_as_it_stood_deleted_files_absent(tmp_path: Path) -> None:
    src, cfg = tree_source(tmp_path)
    first = backup.run_backup(cfg, now=DAY1)
    assert [e.kind for e in first.entries] == ["master"]
    copy_state(src, tmp_path / "state1")

    change_tree(src)
    second = backup.run_backup(cfg, now=DAY2)
    assert [e.kind for e in second.entries] == ["incremental"]
    assert second.entries[0].chain == first.entries[0].name
    copy_state(src, tmp_path / "state2")

    restore.run_restore(cfg, str(src), tmp_path / "r2")
    assert_same_tree(tmp_path / "state2", tmp_path / "r2")
    assert not (tmp_path / "r2/etc/shadow").exists()
    assert not (tmp_path / "r2/home/alice").exists()
    assert not (tmp_path / "r2/empty/dir").exists()

    restore.run_restore(cfg, str(src), tmp_path / "r1", at=DAY1.date())
    assert_same_tree(tmp_path / "state1", tmp_path / "r1")


def test_a_chain_of_incrementals_restores_each_day(tmp_path: Path) -> None:
    src, cfg = small_source(tmp_path)
    backup.run_backup(cfg, now=DAY1)
    write(src / "b", b"2")
    backup.run_backup(cfg, now=DAY2)
    (src / "a").unlink()
    backup.run_backup(cfg, now=DAY3)
    day2 = restore.run_restore(cfg, str(src), tmp_path / "r2", at=DAY2.date())
    assert [r.kind for r in day2] == ["master", "incremental"]
    assert sorted(p.name for p in (tmp_path / "r2").iterdir()) == ["a", "b"]
    restore.run_restore(cfg, str(src), tmp_path / "r3")
    assert sorted(p.name for p in (tmp_path / "r3").iterdir()) == ["b"]


def test_archives_are_private_and_the_manifest_records_size_blake3_and_chain(
    tmp_path: Path,
) -> None:
    src, cfg = tree_source(tmp_path)
    report = backup.run_backup(cfg, now=DAY1)
    entry = report.entries[0]
    archive = cfg.backup_dir / entry.name
    assert entry.name == "server1-" + layout.source_slug(str(src)) + ".20261123.master.tar.zst"
    assert stat.S_IMODE(cfg.backup_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    recorded = layout.read_manifests(cfg.backup_dir, "server1")[entry.name]
    assert recorded["blake3"] == blake3.blake3(archive.read_bytes()).hexdigest()
    assert "sha256" not in recorded
    assert recorded["size"] == archive.stat().st_size
    assert recorded["chain"] == entry.name
    assert (cfg.backup_dir / layout.MANIFEST_NAME).is_file()


def test_the_backup_directory_inside_a_source_never_archives_itself(tmp_path: Path) -> None:
    src = tmp_path / "var"
    write(src / "log/syslog", b"log\n")
    cfg = make_config(tmp_path, src, directory=str(src / "backups/server1"))
    backup.run_backup(cfg, now=DAY1)
    backup.run_backup(cfg, now=DAY2)
    restore.run_restore(cfg, str(src), tmp_path / "r")
    assert (tmp_path / "r/log/syslog").read_bytes() == b"log\n"
    assert not (tmp_path / "r/backups/server1").exists()


def test_a_run_warns_when_the_backup_directory_shares_a_sources_filesystem(tmp_path: Path) -> None:
    _, cfg = small_source(tmp_path)
    reporter = backup.SilentReporter()
    backup.run_backup(cfg, now=DAY1, reporter=reporter)
    assert any("same filesystem" in w for w in reporter.warnings)


def test_verify_passes_on_good_backups_and_catches_a_corrupted_archive(tmp_path: Path) -> None:
    src, cfg = tree_source(tmp_path)
    backup.run_backup(cfg, now=DAY1)
    change_tree(src)
    report = backup.run_backup(cfg, now=DAY2)
    verdict = restore.run_verify(cfg)
    assert verdict.ok, verdict
    assert verdict.sources[0].entries > 10

    archive = cfg.backup_dir / report.entries[0].name
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    broken = restore.run_verify(cfg)
    assert not broken.ok
    assert any("blake3 differs" in p for p in broken.problems)


def test_verify_compares_the_restore_with_what_the_archives_record(tmp_path: Path) -> None:
    _, cfg = tree_source(tmp_path)
    backup.run_backup(cfg, now=DAY1)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    restore.apply_chain(cfg, backup.scan_archives(cfg), scratch)
    paths = [cfg.backup_dir / r.name for r in backup.scan_archives(cfg)]
    expected = restore.expected_state(paths)
    assert restore.compare_tree(expected, scratch) == []
    os.chown(scratch / "etc/passwd", 5, 5)
    (scratch / "etc/shadow").write_bytes(b"tampered")
    (scratch / "extra").write_bytes(b"x")
    problems = restore.compare_tree(expected, scratch)
    assert "etc/passwd: owner 5:5, recorded 0:0" in problems
    assert any(p.startswith("etc/shadow: ") and "content differs" in p for p in problems)
    assert "extra: restored but not in the backup" in problems


# --- prune ---------------------------------------------------------------------------------


def test_prune_with_faked_dates_keeps_the_window_and_the_newest_master(tmp_path: Path) -> None:
    src, cfg = small_source(tmp_path, full_every=3, retention_days=4)
    start = dt.datetime(2026, 11, 1, 2, 0)
    for day in range(9):  # chains start on days 0, 3, 6
        write(src / "a", str(day).encode())
        backup.run_backup(cfg, now=start + dt.timedelta(days=day))
    names = [r.name for r in backup.scan_archives(cfg)]
    # run on day 8 pruned with cutoff day 4: chain 0 (days 0-2) went; chain 1 (3-5) reaches it
    assert len(names) == 6
    assert names[0].endswith("20261104.master.tar.zst")
    assert backup.run_prune(cfg, dry_run=True, now=start + dt.timedelta(days=8)) == []
    later = start + dt.timedelta(days=60)
    doomed = backup.run_prune(cfg, dry_run=True, now=later)
    assert [c.name for c in doomed] == [names[0]]
    assert len(backup.scan_archives(cfg)) == 6  # dry run removed nothing
    backup.run_prune(cfg, now=later)
    left = backup.scan_archives(cfg)
    assert [r.kind for r in left] == ["master", "incremental", "incremental"]
    manifests = sorted(p.name for p in cfg.backup_dir.glob("server1.*.manifest.json"))
    assert len(manifests) == 3  # runs whose archives all went lost their manifests too
    assert restore.run_verify(cfg).ok


# --- errors --------------------------------------------------------------------------------


def test_a_missing_source_fails_alone_in_one_line_and_the_others_are_backed_up(
    tmp_path: Path,
) -> None:
    src = tmp_path / "src"
    write(src / "a", b"1")
    cfg_path = tmp_path / "keyforge.toml"
    cfg_path.write_text(
        f'[general]\nhost = "server1"\n[backup]\nsources = ["{tmp_path}/gone", "{src}"]\n'
        f'directory = "{tmp_path}/backups"\nnice = 0\nionice = "none"\n'
    )
    (tmp_path / "gone").mkdir()
    ok = CliRunner().invoke(app, ["backup", "--config", str(cfg_path)])
    assert ok.exit_code == 0, ok.output
    before = listing(tmp_path / "backups")
    (tmp_path / "gone").rmdir()
    result = CliRunner().invoke(app, ["backup", "--config", str(cfg_path)])
    assert result.exit_code == FileError.exit_code
    assert result.stderr.endswith(
        f"keyforge: error: backup failed for 1 of 2 source(s): source {tmp_path}/gone does "
        "not exist\n"
    )
    assert result.stdout.startswith("backup server1 ")
    after = listing(tmp_path / "backups")
    assert set(before) < set(after)
    made = [n for n in set(after) - set(before) if n.endswith(".tar.zst")]
    assert len(made) == 1
    assert made[0].startswith(f"server1-{layout.source_slug(str(src))}.")
    assert not [n for n in after if n.endswith(layout.PARTIAL_SUFFIX)]


def test_an_unwritable_backup_directory_is_a_one_line_error(tmp_path: Path, tmpfs: Path) -> None:
    _, cfg = small_source(tmp_path, directory=str(tmpfs / "backups"))
    backup.run_backup(cfg, now=DAY1)
    before = listing(cfg.backup_dir)
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    with pytest.raises(FileError) as caught:
        backup.run_backup(cfg, now=DAY2)
    assert "Read-only file system" in str(caught.value)
    assert "\n" not in str(caught.value)
    assert listing(cfg.backup_dir) == before


def test_a_full_disk_leaves_no_archive_and_the_chain_intact(tmp_path: Path, tmpfs: Path) -> None:
    src = tmp_path / "src"
    write(src / "a", b"small")
    cfg = make_config(tmp_path, src, directory=str(tmpfs / "backups"))
    backup.run_backup(cfg, now=DAY1)
    before = listing(cfg.backup_dir)
    snapshot = backup.snapshot_path(cfg, layout.source_slug(str(src)))
    snapshot_before = snapshot.read_bytes()
    write(src / "big", os.urandom(4 * 1024 * 1024))
    with pytest.raises(KeyforgeError) as caught:
        backup.run_backup(cfg, now=DAY2)
    assert "No space left on device" in str(caught.value)
    assert "\n" not in str(caught.value)
    assert listing(cfg.backup_dir) == before
    assert snapshot.read_bytes() == snapshot_before
    assert [p.name for p in snapshot.parent.iterdir()] == [snapshot.name]
    # once space is back the chain goes on from the last good run
    (src / "big").unlink()
    report = backup.run_backup(cfg, now=DAY2)
    assert [e.kind for e in report.entries] == ["incremental"]
    assert restore.run_verify(cfg, scratch=tmp_path / "scratch").ok


def test_a_second_concurrent_run_is_refused_with_exit_75(tmp_path: Path) -> None:
    _, cfg = small_source(tmp_path)
    backup.run_backup(cfg, now=DAY1)
    before = listing(cfg.backup_dir)
    with fsutil.locked(layout.lock_path(cfg.backup_dir)):
        with pytest.raises(LockedError) as caught:
            backup.run_backup(cfg, now=DAY2)
        with pytest.raises(LockedError):
            backup.run_prune(cfg)
    assert caught.value.exit_code == 75
    assert listing(cfg.backup_dir) == before


def test_leftovers_of_a_killed_run_never_look_finished_and_are_cleaned(tmp_path: Path) -> None:
    src, cfg = small_source(tmp_path)
    backup.run_backup(cfg, now=DAY1)
    name = layout.archive_name(
        "server1", layout.source_slug(str(src)), "20261124", "incremental", "zstd"
    )
    leftover = cfg.backup_dir / layout.partial_name(name)
    leftover.write_bytes(b"half an archive")
    assert [r.name for r in backup.scan_archives(cfg)] == [
        n for n in listing(cfg.backup_dir) if n.endswith(".tar.zst")
    ]
    assert name not in [r.name for r in backup.scan_archives(cfg)]
    backup.run_backup(cfg, now=DAY2)
    assert not leftover.exists()


def acl(path: Path) -> str:
    argv = ["getfacl", "-c", "-p", str(path)]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def fake_tar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exit_code: int) -> None:
    """A tar that does the real work, then exits with ``exit_code``."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    real = shutil.which("tar")
    script = bindir / "tar"
    script.write_text(
        f'#!/bin/sh\n{real} "$@" || exit $?\necho "tar: fake: {exit_code}" >&2\nexit {exit_code}\n'
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")


def test_tar_exit_2_discards_the_archive_and_the_new_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, cfg = small_source(tmp_path)
    backup.run_backup(cfg, now=DAY1)
    before = listing(cfg.backup_dir)
    snapshot = backup.snapshot_path(cfg, layout.source_slug(str(src)))
    snapshot_before = snapshot.read_bytes()
    write(src / "b", b"2")
    fake_tar(tmp_path, monkeypatch, 2)
    with pytest.raises(CommandError, match="tar failed on"):
        backup.run_backup(cfg, now=DAY2)
    assert listing(cfg.backup_dir) == before
    assert snapshot.read_bytes() == snapshot_before
    assert [p.name for p in snapshot.parent.iterdir()] == [snapshot.name]


def test_tar_exit_1_file_changed_is_a_warning_and_the_archive_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, cfg = small_source(tmp_path)
    fake_tar(tmp_path, monkeypatch, 1)
    report = backup.run_backup(cfg, now=DAY1)
    assert len(report.entries) == 1
    assert any("fake: 1" in w for w in report.warnings)
    assert (cfg.backup_dir / report.entries[0].name).is_file()


def test_restore_refuses_a_non_empty_target(tmp_path: Path) -> None:
    src, cfg = small_source(tmp_path)
    backup.run_backup(cfg, now=DAY1)
    write(tmp_path / "target/keep", b"mine")
    with pytest.raises(Exception, match="is not empty"):
        restore.run_restore(cfg, str(src), tmp_path / "target")
    assert (tmp_path / "target/keep").read_bytes() == b"mine"


# --- fidelity ------------------------------------------------------------------------------


def test_xattrs_acls_sparse_files_owners_and_mtimes_come_back(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "attrs", b"x", 0o640, (1234, 5678))
    os.setxattr(src / "attrs", "user.origin", b"server1")
    os.setxattr(src / "attrs", "trusted.keyforge", b"\x00\x01binary")
    write(src / "acl", b"acl")
    subprocess.run(["setfacl", "-m", "u:4321:rw,g:8765:r", str(src / "acl")], check=True)
    (src / "acldir").mkdir()
    subprocess.run(["setfacl", "-d", "-m", "u:4321:rwx", str(src / "acldir")], check=True)
    sparse = src / "sparse"
    with sparse.open("wb") as handle:
        handle.truncate(64 * 1024 * 1024)
        handle.seek(32 * 1024 * 1024)
        handle.write(b"middle")
    os.utime(src / "attrs", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    cfg = make_config(tmp_path, src)
    backup.run_backup(cfg, now=DAY1)
    out = tmp_path / "out"
    restore.run_restore(cfg, str(src), out)

    assert_same_tree(src, out)
    assert os.getxattr(out / "attrs", "trusted.keyforge") == b"\x00\x01binary"
    assert acl(out / "acl") == acl(src / "acl")
    assert "user:4321:rw-" in acl(out / "acl")
    assert acl(out / "acldir") == acl(src / "acldir")
    restored = (out / "sparse").stat()
    assert restored.st_size == 64 * 1024 * 1024
    assert restored.st_blocks * 512 < 1024 * 1024  # holes stayed holes
    assert (out / "attrs").stat().st_mtime_ns == 1_600_000_000_123_456_789


def test_a_change_hidden_behind_the_old_size_and_mtime_is_caught_by_ctime(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "config", b"password=old")
    cfg = make_config(tmp_path, src)
    backup.run_backup(cfg, now=DAY1)
    before = (src / "config").stat()
    (src / "config").write_bytes(b"password=new")
    os.utime(src / "config", ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (src / "config").stat().st_mtime_ns == before.st_mtime_ns
    assert (src / "config").stat().st_size == before.st_size
    backup.run_backup(cfg, now=DAY2)
    restore.run_restore(cfg, str(src), tmp_path / "out")
    assert (tmp_path / "out/config").read_bytes() == b"password=new"


def test_an_archive_that_does_not_decompress_is_never_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, cfg = small_source(tmp_path)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    real = shutil.which("zstd")
    script = bindir / "zstd"
    # compresses to garbage, but tests with the real zstd
    script.write_text(
        f'#!/bin/sh\nif [ "$1" = "-t" ]; then exec {real} "$@"; fi\n'
        "cat >/dev/null\necho 'not zstd'\n"
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    with pytest.raises(CommandError, match="does not decompress"):
        backup.run_backup(cfg, now=DAY1)
    assert backup.scan_archives(cfg) == []
    assert not list(cfg.backup_dir.glob("*.partial"))


def test_the_follower_hashes_and_feeds_every_byte_of_a_file_written_while_it_reads(
    tmp_path: Path,
) -> None:
    archive = tmp_path / "growing"
    copy = tmp_path / "checker-saw"
    # written in bursts with pauses, so the follower reaches the end of the file before the end
    slow_writer = (
        "import os, time\n"
        "for _ in range(5):\n"
        "    os.write(1, os.urandom(700_000))\n"
        "    time.sleep(0.05)\n"
    )
    fd = os.open(archive, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with pipeline._ArchiveFollower(fd, ["sh", "-c", f"cat > '{copy}'"]) as follower:
            subprocess.run([sys.executable, "-c", slow_writer], stdout=fd, check=True)
            check = follower.finish()
    finally:
        os.close(fd)
    content = archive.read_bytes()
    assert len(content) == 3_500_000
    assert check is not None and check.returncode == 0
    assert follower.size == len(content)
    assert follower.digest.hexdigest() == blake3.blake3(content).hexdigest()
    assert copy.read_bytes() == content


def test_a_restore_that_fails_half_way_leaves_the_target_as_it_was(tmp_path: Path) -> None:
    src, cfg = tree_source(tmp_path)
    backup.run_backup(cfg, now=DAY1)
    change_tree(src)
    report = backup.run_backup(cfg, now=DAY2)
    # the master restores, then the damaged incremental stops the chain
    archive = cfg.backup_dir / report.entries[0].name
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])

    missing, empty = tmp_path / "missing", tmp_path / "empty"
    empty.mkdir()
    for target in (missing, empty):
        with pytest.raises(KeyforgeError):
            restore.run_restore(cfg, str(src), target)
        assert not restore.staging_path(target).exists()
    assert not missing.exists()
    assert list(empty.iterdir()) == []


def test_a_restore_into_an_existing_empty_directory_fills_it(tmp_path: Path) -> None:
    src, cfg = tree_source(tmp_path)
    backup.run_backup(cfg, now=DAY1)
    (tmp_path / "empty").mkdir()
    restore.run_restore(cfg, str(src), tmp_path / "empty")
    assert_same_tree(src, tmp_path / "empty")
    assert not restore.staging_path(tmp_path / "empty").exists()
