"""The pure parts of list, find, restore --path and drill: --at, rebuilding a run's tree from
listings and dump directories, find over a history, the path plan, what manifests expect."""

from __future__ import annotations

import random

import pytest

from keyforge import layout
from keyforge.errors import UsageError
from keyforge.layout import ArchiveEntry, ArchiveRecord
from keyforge.sender import catalog, drill, restore
from keyforge.sender.listing import Member


def member(path: bytes, kind: str = "file", size: int = 1, mtime: int = 100) -> Member:
    return Member(path, kind, 0o644, 0, 0, size, mtime * 1_000_000_000)


def record(stamp: str, kind: str = "incremental", slug: str = "etc") -> ArchiveRecord:
    name = f"server1-{slug}.{stamp}.{kind}.tar.zst"
    return ArchiveRecord(layout.stamp_key(stamp), slug, kind, name, stamp)


RUNS = [
    record("20261123", "master"),
    record("20261123-093000"),
    record("20261124"),
    record("20261124-120000-2"),
]


@pytest.mark.parametrize(
    ("text", "newest"),
    [
        ("2026-11-23", "20261123-093000"),  # a day: its last run
        ("20261123", "20261123"),  # a stamp as list prints it: the day's first run
        ("20261123-093000", "20261123-093000"),
        ("2026-11-23T09:29", "20261123"),  # a time: the newest run made by then
        ("2026-11-23T09:30", "20261123-093000"),
        ("2026-11-24 23:00", "20261124-120000-2"),
        ("20261130", "20261124-120000-2"),
    ],
)
def test_at_picks_the_newest_run_at_or_before_it(text: str, newest: str) -> None:
    chain = catalog.select_chain(RUNS, "etc", catalog.parse_at(text))
    assert chain[0].kind == "master"
    assert chain[-1].stamp == newest


@pytest.mark.parametrize("text", ["yesterday", "2026-13-01", "20261123-250000", "2026-11-23T25:00"])
def test_a_malformed_at_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError, match="--at must be a day"):
        catalog.parse_at(text)


def test_before_the_first_master_there_is_nothing_to_restore() -> None:
    assert catalog.select_chain(RUNS, "etc", catalog.parse_at("2026-11-22")) == []


def test_a_library_caller_s_day_still_means_its_last_run() -> None:
    bound = restore.as_at(__import__("datetime").date(2026, 11, 23))
    assert bound is not None
    assert catalog.select_chain(RUNS, "etc", bound)[-1].stamp == "20261123-093000"


# --- rebuilding the tree -----------------------------------------------------------------------


def test_a_deleted_file_leaves_the_tree_and_an_unchanged_one_stays() -> None:
    master = catalog.apply_archive(
        {},
        [member(b"", "dir"), member(b"a"), member(b"b")],
        {b"": [b"Ya", b"Yb"]},
        "m",
    )
    after = catalog.apply_archive(master, [member(b"", "dir")], {b"": [b"Na"]}, "i1")
    assert sorted(after) == [b"", b"a"]
    assert after[b"a"].archive == "m"  # the version still comes from the master


def test_a_renamed_directory_keeps_its_files_and_their_old_names_in_older_archives() -> None:
    master = catalog.apply_archive(
        {},
        [member(b"", "dir"), member(b"d", "dir"), member(b"d/x")],
        {b"": [b"Dd"], b"d": [b"Yx"]},
        "m",
    )
    dumps = {b"": [b"De", b"R./d", b"T./e"], b"e": [b"Nx"]}
    after = catalog.apply_archive(master, [member(b"", "dir"), member(b"e", "dir")], dumps, "i1")
    assert sorted(after) == [b"", b"e", b"e/x"]
    assert after[b"e/x"].archive == "m"
    assert after[b"e/x"].name == b"d/x"


def test_a_deleted_directory_takes_what_lies_below_it() -> None:
    master = catalog.apply_archive(
        {},
        [member(b"", "dir"), member(b"d", "dir"), member(b"d/x"), member(b"dx")],
        {b"": [b"Dd", b"Ydx"], b"d": [b"Yx"]},
        "m",
    )
    after = catalog.apply_archive(master, [member(b"", "dir")], {b"": [b"Ndx"]}, "i1")
    assert sorted(after) == [b"", b"dx"]


def _history() -> list[catalog.RunTree]:
    states: list[catalog.RunTree] = []
    state: catalog.State = {}
    steps = [
        (
            "20261123",
            [member(b"", "dir"), member(b"d", "dir"), member(b"d/x", size=3)],
            {b"": [b"Dd"], b"d": [b"Yx"]},
        ),
        (
            "20261124",
            [member(b"", "dir"), member(b"e", "dir")],
            {b"": [b"De", b"R./d", b"T./e"], b"e": [b"Nx"]},
        ),
        ("20261125", [member(b"", "dir")], {b"": []}),
    ]
    for stamp, members, dumps in steps:
        state = catalog.apply_archive(state, members, dumps, stamp)
        states.append(catalog.RunTree(record(stamp), state))
    return states


def test_find_follows_a_path_across_a_rename_and_a_deletion() -> None:
    found = catalog.find_in_history("/etc", _history(), "x")
    assert [(f.path, [s.stamp for s in f.sightings], f.gone_in) for f in found] == [
        ("/etc/d/x", ["20261123"], "20261124"),
        ("/etc/e/x", ["20261124"], "20261125"),
    ]
    assert found[1].sightings[0].held.member.size == 3


@pytest.mark.parametrize(
    ("pattern", "path", "hit"),
    [
        ("x", "/etc/d/x", True),
        ("*.pem", "/etc/ssl/a.pem", True),
        ("etc/ssl/*", "/etc/ssl/a.pem", True),
        ("/etc/ssl/*", "/etc/ssl/a.pem", True),
        ("ssl", "/etc/ssl/a.pem", False),
    ],
)
def test_a_pattern_matches_names_or_whole_paths(pattern: str, path: str, hit: bool) -> None:
    assert catalog.matches(pattern, path) is hit


def test_a_path_plan_takes_each_version_from_its_archive_and_moves_renamed_ones() -> None:
    state = _history()[1].state
    plan = restore.plan_path(state, b"e", ["20261123", "20261124"])
    assert plan is not None
    assert plan.members == {"20261123": [b"d/x"], "20261124": [b"", b"e"]}
    assert plan.moves == ((b"d/x", b"e/x"),)
    assert restore.plan_path(state, b"d", ["20261123", "20261124"]) is None


# --- what the manifests expect -------------------------------------------------------------------


def _entry(name: str, chain: str) -> ArchiveEntry:
    return ArchiveEntry(name, "/etc", "incremental", chain, 1, "0" * 64)


def test_a_lost_incremental_is_expected_while_its_chain_is_there() -> None:
    runs = {
        "server1.1.manifest.json": [_entry("m1", "m1")],
        "server1.2.manifest.json": [_entry("i2", "m1")],
        "server1.3.manifest.json": [_entry("i3", "m1")],
        "server1.0.manifest.json": [_entry("old", "old")],  # a pruned chain
    }
    expected = drill.expected_archives(None, runs, ["m1", "i3"])
    assert expected == {
        "m1": "server1.1.manifest.json",
        "i2": "server1.2.manifest.json",
        "i3": "server1.3.manifest.json",
    }
    assert "old" in drill.expected_archives(["old"], runs, ["m1"])


def test_the_spot_check_blames_only_same_size_and_mtime_with_other_content() -> None:
    same = [drill.SpotResult("same", f"/etc/{i}") for i in range(3)]
    verdict = drill.judge_spot([*same, drill.SpotResult("changed", "/etc/c")])
    assert (verdict.sampled, verdict.same, verdict.changed, verdict.problems) == (4, 3, 1, ())
    bad = drill.judge_spot([*same, drill.SpotResult("differs", "/etc/d")])
    assert bad.problems == (
        "/etc/d: content differs from the live file, though its size and mtime match",
    )
    moved = drill.judge_spot([drill.SpotResult("gone", "/a"), drill.SpotResult("changed", "/b")])
    assert "2 of 2 sampled files changed or went" in moved.problems[0]


def test_the_sample_takes_regular_files_only_and_no_more_than_there_are() -> None:
    state = _history()[0].state
    picked = drill.sample({"/etc": state}, 5, random.Random(1))
    assert picked == {"/etc": [b"d/x"]}
