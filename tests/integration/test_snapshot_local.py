"""keyforge snapshot on this host with the real rsync: links, leftovers, the lock, the guard.

The synced copy belongs to another user (nobody), as on a receiving host where the backup key
logs in as foo; the tests run as root, the snapshot user. Skipped where that cannot be set up.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keyforge import layout
from keyforge.cli import app
from keyforge.config import Config, parse
from keyforge.errors import FileError, LockedError, UsageError
from keyforge.infra import fsutil
from keyforge.receiver import snapshot

NOBODY = 65534

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("rsync") is None,
    reason="needs root (to give the copy another owner) and rsync",
)


def _at(day: int, hour: int = 5) -> dt.datetime:
    return dt.datetime(2026, 11, day, hour, 30, tzinfo=dt.UTC)


def _chown_tree(top: Path, uid: int = NOBODY) -> None:
    os.chown(top, uid, uid)
    for root, dirs, files in os.walk(top):
        for name in dirs + files:
            os.chown(Path(root) / name, uid, uid, follow_symlinks=False)


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """A synced copy as the sending server leaves it: archives and a manifest, owned by nobody."""
    top = tmp_path / "srvbackups"
    (top / "server1").mkdir(parents=True)
    name = "server1-etc.20261101.master.tar.zst"
    data = os.urandom(5000)
    (top / "server1" / name).write_bytes(data)
    # recorded with sha256, as keyforge before BLAKE3 wrote it: the receiving host checks both
    entry = layout.ArchiveEntry(
        name,
        "/etc",
        layout.MASTER,
        name,
        len(data),
        hashlib.sha256(data).hexdigest(),
        algorithm="sha256",
    )
    manifest = layout.manifest_json("server1", "20261101", _at(1), [entry])
    (top / "server1" / "server1.20261101.manifest.json").write_bytes(manifest)
    (top / "server1" / "notes").write_text("day 1\n")
    _chown_tree(top)
    return top


def _config(tmp_path: Path, copy: Path, **values: object) -> Config:
    settings = {"source": str(copy), "directory": str(tmp_path / "store"), **values}
    return parse({"snapshot": settings})


def _inodes(top: Path) -> dict[str, int]:
    return {
        str(path.relative_to(top)): path.lstat().st_ino
        for path in top.rglob("*")
        if not path.is_dir()
    }


def test_unchanged_files_are_links_between_snapshots_and_never_to_the_copy(
    tmp_path: Path, copy: Path
) -> None:
    config = _config(tmp_path, copy)
    first = snapshot.run_snapshot(config, now=_at(1))
    # another size: rsync's quick check (size and mtime) finds it changed within the second
    (copy / "server1" / "notes").write_text("day two\n")
    second = snapshot.run_snapshot(config, now=_at(2))
    assert second.link_dest == first.stamp
    one, two = _inodes(first.path), _inodes(second.path)
    archive = "server1/server1-etc.20261101.master.tar.zst"
    assert one[archive] == two[archive]
    assert one["server1/notes"] != two["server1/notes"]
    assert (second.path / "server1" / "notes").read_text() == "day two\n"
    assert (first.path / "server1" / "notes").read_text() == "day 1\n"
    assert not set(_inodes(copy).values()) & (set(one.values()) | set(two.values()))
    assert (first.path / archive).stat().st_uid == NOBODY  # owners kept
    assert (tmp_path / "store").stat().st_mode & 0o777 == 0o700


def test_leftovers_of_a_killed_run_are_removed_and_never_taken_for_snapshots(
    tmp_path: Path, copy: Path
) -> None:
    config = _config(tmp_path, copy)
    store = tmp_path / "store"
    fsutil.ensure_private_dir(store)
    for name in (".20261101T053000Z.partial", ".20261020T053000Z.deleting"):
        (store / name / "sub").mkdir(parents=True)
        (store / name / "sub" / "half").write_text("half")
        (store / name / "sub").chmod(0o500)  # read-only, as a copied directory may be
    report = snapshot.run_snapshot(config, now=_at(1))
    assert sorted(p.name for p in store.iterdir()) == [
        snapshot.LOCK_NAME,
        report.stamp,
    ]
    assert report.link_dest is None


def test_a_failed_copy_leaves_no_snapshot_behind(tmp_path: Path, copy: Path) -> None:
    config = _config(tmp_path, copy)
    fake = tmp_path / "rsync"
    fake.write_text(
        "#!/bin/sh\nmkdir -p \"$(eval echo \\${$#})\" && echo 'disk full' >&2\nexit 11\n"
    )
    fake.chmod(0o755)
    with pytest.raises(Exception, match="rsync failed: disk full"):
        snapshot.run_snapshot(config, now=_at(1), rsync=str(fake))
    assert [p.name for p in (tmp_path / "store").iterdir()] == [snapshot.LOCK_NAME]


def test_a_second_run_while_one_holds_the_lock_exits_75(tmp_path: Path, copy: Path) -> None:
    config = _config(tmp_path, copy)
    store = tmp_path / "store"
    fsutil.ensure_private_dir(store)
    with fsutil.locked(store / snapshot.LOCK_NAME), pytest.raises(LockedError) as caught:
        snapshot.run_snapshot(config, now=_at(1))
    assert caught.value.exit_code == 75
    assert snapshot.list_stamps(store) == []


def test_retention_removes_old_snapshots_but_keeps_min_keep(tmp_path: Path, copy: Path) -> None:
    config = _config(tmp_path, copy, retention_days=3, min_keep=2)
    stamps = [snapshot.run_snapshot(config, now=_at(day)).stamp for day in (1, 2, 3, 4, 5)]
    last = snapshot.run_snapshot(config, now=_at(6))
    assert last.pruned == (stamps[1],)  # Nov 2 is older than Nov 3 05:30; Nov 1 went on Nov 5
    assert snapshot.list_stamps(tmp_path / "store") == [*stamps[2:], last.stamp]
    # pushes that stopped for weeks: the newest min_keep stay whatever their age
    late = snapshot.run_snapshot(config, now=_at(30))
    assert snapshot.list_stamps(tmp_path / "store") == [last.stamp, late.stamp]


def test_a_wiped_copy_is_snapshotted_but_nothing_is_pruned_until_it_is_accepted(
    tmp_path: Path, copy: Path
) -> None:
    config = _config(tmp_path, copy, retention_days=1, min_keep=1)
    old = [snapshot.run_snapshot(config, now=_at(day)).stamp for day in (1, 3)]
    assert snapshot.list_stamps(tmp_path / "store") == old[1:]  # retention works at all
    shutil.rmtree(copy / "server1")
    wiped = snapshot.run_snapshot(config, now=_at(10))
    assert wiped.problem == "it holds no file at all"
    assert wiped.wiped
    assert wiped.pruned == ()
    # a few files pushed after the wipe are still judged against the last good snapshot
    (copy / "junk").write_text("x")
    again = snapshot.run_snapshot(config, now=_at(11))
    assert again.problem is not None and "no keyforge manifest" in again.problem
    store = tmp_path / "store"
    assert snapshot.list_stamps(store) == [old[1], wiped.stamp, again.stamp]
    assert [i.problem for i in snapshot.describe_store(store)] == [
        None,
        "it holds no file at all",
        again.problem,
    ]

    accepted = snapshot.run_snapshot(config, now=_at(12), accept=True)
    assert accepted.problem is None
    assert any("accepted" in w for w in accepted.warnings)
    assert snapshot.list_stamps(store) == [again.stamp, accepted.stamp]


def test_dry_run_writes_nothing_and_says_what_it_would_prune(tmp_path: Path, copy: Path) -> None:
    config = _config(tmp_path, copy, retention_days=1, min_keep=1)
    first = snapshot.run_snapshot(config, now=_at(1))
    before = sorted((tmp_path / "store").iterdir())
    plan = snapshot.run_snapshot(config, now=_at(5), dry_run=True)
    assert plan.pruned == (first.stamp,)
    assert plan.argv[-2:] == (f"{copy}/", f"{tmp_path}/store/.{plan.stamp}.partial/")
    assert f"--link-dest={tmp_path}/store/{first.stamp}" in plan.argv
    assert sorted((tmp_path / "store").iterdir()) == before


def test_a_store_inside_the_copy_is_refused(tmp_path: Path, copy: Path) -> None:
    config = _config(tmp_path, copy, directory=str(copy / "snaps"))
    with pytest.raises(UsageError, match="lies inside the synced copy"):
        snapshot.run_snapshot(config)


def test_a_store_below_a_directory_of_the_copys_owner_is_refused(
    tmp_path: Path, copy: Path
) -> None:
    parent = tmp_path / "nobodys"
    parent.mkdir()
    os.chown(parent, NOBODY, NOBODY)
    config = _config(tmp_path, copy, directory=str(parent / "store"))
    with pytest.raises(UsageError, match="belongs to nobody, the owner of the synced copy"):
        snapshot.run_snapshot(config)
    assert not (parent / "store").exists()


def test_a_missing_copy_and_a_copy_behind_a_symlink_are_refused(tmp_path: Path, copy: Path) -> None:
    with pytest.raises(FileError, match="is missing or not a directory"):
        snapshot.run_snapshot(_config(tmp_path, tmp_path / "absent"))
    link = tmp_path / "link"
    link.symlink_to(copy)
    with pytest.raises(UsageError, match="reached through a symbolic link"):
        snapshot.run_snapshot(_config(tmp_path, link))


def test_the_command_lists_snapshots_and_fails_on_a_wiped_copy(tmp_path: Path, copy: Path) -> None:
    path = tmp_path / "keyforge.toml"
    path.write_text(f'[snapshot]\nsource = "{copy}"\ndirectory = "{tmp_path}/store"\n')
    runner = CliRunner()
    taken = runner.invoke(app, ["snapshot", "--config", str(path), "--verbose"])
    assert taken.exit_code == 0, taken.output
    assert taken.output.startswith(f"took snapshot {tmp_path}/store/")
    listed = runner.invoke(app, ["snapshot", "--list", "--config", str(path)])
    assert listed.exit_code == 0
    assert "3 files" in listed.output
    shutil.rmtree(copy / "server1")
    wiped = runner.invoke(app, ["snapshot", "--config", str(path)])
    assert wiped.exit_code == 1
    assert "looks wiped (it holds no file at all)" in wiped.output
    assert "every earlier snapshot is kept (nothing pruned)" in wiped.output
