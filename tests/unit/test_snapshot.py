"""keyforge snapshot's pure half: stamps, retention, the wipe guard and the refusal checks."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest

from keyforge.config import parse
from keyforge.errors import ConfigError, KeyforgeError
from keyforge.receiver import snapshot
from keyforge.receiver.snapshot import DirInfo, Owner, TreeCount

UTC = dt.UTC
FOO = Owner(uid=1000, name="foo", groups=frozenset({1000, 100}))


def _at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


# --- stamps --------------------------------------------------------------------------------------


def test_a_stamp_is_the_utc_time_and_sorts_as_text() -> None:
    paris = dt.timezone(dt.timedelta(hours=1))
    now = dt.datetime(2026, 11, 28, 4, 30, 5, tzinfo=paris)
    assert snapshot.new_stamp(now, []) == "20261128T033005Z"
    assert snapshot.stamp_time("20261128T033005Z") == _at("2026-11-28 03:30:05")


def test_a_second_snapshot_in_the_same_second_gets_a_sequence_number() -> None:
    now = _at("2026-11-28 03:30:05")
    assert snapshot.new_stamp(now, ["20261128T033005Z"]) == "20261128T033005Z-2"
    assert snapshot.new_stamp(now, ["20261128T033005Z", "20261128T033005Z-2"]) == (
        "20261128T033005Z-3"
    )
    ordered = ["20261128T033005Z-2", "20261128T033006Z", "20261128T033005Z"]
    assert sorted(ordered, key=snapshot.stamp_key) == [
        "20261128T033005Z",
        "20261128T033005Z-2",
        "20261128T033006Z",
    ]


def test_a_clock_behind_the_newest_snapshot_is_refused() -> None:
    with pytest.raises(KeyforgeError, match="later than the clock"):
        snapshot.new_stamp(_at("2026-11-28 03:00:00"), ["20261129T000000Z"])


@pytest.mark.parametrize(
    "name", ["20261128", "20261128T033005", ".20261128T033005Z.partial", "20261128T033005Z-0"]
)
def test_other_names_in_the_store_are_not_snapshots(name: str) -> None:
    assert not snapshot.is_stamp(name)


# --- retention -----------------------------------------------------------------------------------


def _daily(first: str, days: int) -> list[str]:
    start = _at(first)
    return [(start + dt.timedelta(days=i)).strftime("%Y%m%dT%H%M%SZ") for i in range(days)]


def test_retention_removes_snapshots_older_than_the_window_oldest_first() -> None:
    stamps = _daily("2026-10-01 05:30:00", 40)  # Oct 1 .. Nov 9
    doomed = snapshot.choose_prune(stamps, _at("2026-11-09 06:00:00"), 30, 7)
    assert doomed == stamps[:10]  # Oct 1 .. Oct 10 are older than Oct 10 06:00


def test_retention_always_keeps_the_newest_min_keep_however_old() -> None:
    stamps = _daily("2026-01-01 05:30:00", 10)
    doomed = snapshot.choose_prune(stamps, _at("2026-11-28 06:00:00"), 30, 7)
    assert doomed == stamps[:3]


def test_retention_counts_only_good_snapshots_and_keeps_the_newest_good_one() -> None:
    stamps = _daily("2026-11-01 05:30:00", 10)  # Nov 1 .. Nov 10
    now = _at("2026-11-30 06:00:00")
    # a week of junk pushes after Nov 3: min_keep 7 counted them, and Nov 1 .. 3 went
    assert snapshot.choose_prune(stamps, now, 5, 7) == stamps[:3]
    bad = set(stamps[3:])
    doomed = snapshot.choose_prune(stamps, now, 5, 7, bad=bad)
    assert doomed == stamps[3:]  # the good Nov 1 .. 3 stay; old junk follows retention
    assert snapshot.choose_prune(stamps, now, 5, 0, bad=bad)[-1] == stamps[-1]
    assert stamps[2] not in snapshot.choose_prune(stamps, now, 5, 0, bad=bad)


def test_the_wipe_guard_sees_an_empty_copy() -> None:
    assert snapshot.wipe_reason(TreeCount(0, 0), TreeCount(40, 3), 50) == (
        "it holds no file at all"
    )
    assert snapshot.wipe_reason(TreeCount(0, 0), None, 50) == "it holds no file at all"


def test_the_wipe_guard_sees_the_manifests_gone() -> None:
    reason = snapshot.wipe_reason(TreeCount(40, 0), TreeCount(40, 3), 50)
    assert reason is not None and "no keyforge manifest" in reason


def test_the_wipe_guard_sees_most_files_gone_but_not_a_normal_prune() -> None:
    lost = snapshot.wipe_reason(TreeCount(19, 1), TreeCount(40, 3), 50)
    assert lost is not None and "19 files where the last good snapshot holds 40" in lost
    assert snapshot.wipe_reason(TreeCount(20, 1), TreeCount(40, 3), 50) is None
    assert snapshot.wipe_reason(TreeCount(30, 2), TreeCount(40, 3), 10) is not None


def test_a_first_snapshot_of_a_copy_without_manifests_is_no_wipe() -> None:
    assert snapshot.wipe_reason(TreeCount(5, 0), None, 50) is None
    assert snapshot.wipe_reason(TreeCount(5, 0), TreeCount(5, 0), 50) is None


# --- refusals on stat values ---------------------------------------------------------------------


def _dir(path: str, uid: int = 0, gid: int = 0, mode: int = 0o755) -> DirInfo:
    return DirInfo(Path(path), uid, gid, stat.S_IFDIR | mode)


def test_a_store_under_root_owned_directories_is_fine() -> None:
    chain = [_dir("/var/backups/keyforge-snapshots", mode=0o700), _dir("/var/backups"), _dir("/")]
    assert snapshot.store_problems(chain, FOO, running_uid=0) == []


def test_a_store_owned_by_a_dedicated_user_is_fine_for_that_user() -> None:
    chain = [_dir("/srv/snaps", uid=998, mode=0o700), _dir("/srv"), _dir("/")]
    assert snapshot.store_problems(chain, FOO, running_uid=998) == []
    [problem] = snapshot.store_problems(chain, FOO, running_uid=0)
    assert "belongs to another user (uid 998)" in problem


def test_a_directory_of_the_copys_owner_on_the_way_is_refused() -> None:
    chain = [_dir("/home/foo/snaps", mode=0o700), _dir("/home/foo", uid=1000), _dir("/home")]
    [problem] = snapshot.store_problems(chain, FOO, running_uid=0)
    assert problem.startswith("/home/foo (on the way to the snapshot directory) belongs to foo")


def test_group_or_world_writable_without_sticky_is_refused_and_with_sticky_allowed() -> None:
    group = snapshot.store_problems([_dir("/srv", gid=100, mode=0o775)], FOO, 0)
    assert group == [
        "/srv (on the way to the snapshot directory) is writable by group 100 (which includes "
        "the copy's owner) (mode 0775)"
    ]
    world = snapshot.store_problems([_dir("/srv", mode=0o777)], FOO, 0)
    assert world == [
        "/srv (on the way to the snapshot directory) is writable by everyone (mode 0777)"
    ]
    assert snapshot.store_problems([_dir("/tmp", mode=0o1777)], FOO, 0) == []


def test_running_as_the_copys_owner_is_refused() -> None:
    problem = snapshot.runner_problem(1000, FOO)
    assert problem is not None and "runs as foo, the owner of the synced copy" in problem
    assert snapshot.runner_problem(0, FOO) is None


def test_a_store_inside_the_copy_or_around_it_is_refused() -> None:
    copy = Path("/home/foo/srvbackups")
    inside = snapshot.overlap_problem(copy, copy / "snaps")
    assert inside is not None and "lies inside the synced copy" in inside
    around = snapshot.overlap_problem(copy, Path("/home"))
    assert around is not None and "lies inside the snapshot directory" in around
    assert snapshot.overlap_problem(copy, Path("/home/foo/srvbackups-snaps")) is None


# --- the command and the config ------------------------------------------------------------------


def test_the_rsync_command_links_to_earlier_snapshots_and_copies_contents() -> None:
    argv = snapshot.rsync_argv(
        "/usr/bin/rsync",
        "/home/foo/srvbackups",
        Path("/s/.20261128T053000Z.partial"),
        [Path("/s/20261127T053000Z"), Path("/s/20261120T053000Z")],
    )
    assert argv == [
        "/usr/bin/rsync",
        "-a",
        "--numeric-ids",
        "--link-dest=/s/20261127T053000Z",
        "--link-dest=/s/20261120T053000Z",
        "/home/foo/srvbackups/",
        "/s/.20261128T053000Z.partial/",
    ]


def test_a_config_with_only_a_snapshot_section_loads() -> None:
    config = parse({"snapshot": {"source": "/home/foo/srvbackups"}})
    assert config.sections == frozenset({"snapshot"})
    assert snapshot.source_of(config) == Path("/home/foo/srvbackups")
    assert config.snapshot.directory == "/var/backups/keyforge-snapshots"


def test_the_source_falls_back_to_the_sync_source_and_is_required() -> None:
    config = parse({"snapshot": {}, "sync": {"source": "/home/foo/srvbackups"}})
    assert snapshot.source_of(config) == Path("/home/foo/srvbackups")
    with pytest.raises(ConfigError, match=r"\[snapshot\] source is not set"):
        snapshot.source_of(parse({"snapshot": {}}))


def test_snapshot_settings_are_checked_like_every_section() -> None:
    with pytest.raises(ConfigError, match="min_keep must be >= 1"):
        parse({"snapshot": {"min_keep": 0}})
    with pytest.raises(ConfigError, match="directory must hold absolute paths"):
        parse({"snapshot": {"directory": "snaps"}})
