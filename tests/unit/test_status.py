"""keyforge status: ages, sizes and the verdict a monitoring system reads."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from keyforge import layout
from keyforge.config import Config, parse
from keyforge.sender import status

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _manifest(
    directory: Path,
    name: str,
    host: str,
    sources: list[str],
    when: datetime,
    *,
    archives: bool = True,
) -> None:
    """A run manifest as keyforge backup writes it, dated ``when``, with its archives (of the
    recorded size) unless ``archives`` is false."""
    entries = []
    for source in sources:
        archive = layout.archive_name(
            host, layout.source_slug(source), "20260301", "master", "zstd"
        )
        entries.append(layout.ArchiveEntry(archive, source, "master", archive, 1000, "0" * 64))
        if archives:
            (directory / archive).write_bytes(b"x" * 1000)
    path = directory / name
    path.write_bytes(layout.manifest_json(host, "20260301", when, entries))
    os.utime(path, (when.timestamp(), when.timestamp()))


def _config(tmp_path: Path) -> Config:
    backups = tmp_path / "backups"
    backups.mkdir(exist_ok=True)
    return parse(
        {
            "general": {"host": "server1"},
            "backup": {"directory": str(backups), "sources": ["/etc", "/home"]},
            "sync": {"log": str(tmp_path / "sync.log")},
            "targets": [{"name": "external", "path": "/mnt/external"}],
        }
    )


def _log(tmp_path: Path, *records: dict[str, object]) -> None:
    with (tmp_path / "sync.log").open("a") as handle:
        for record in records:
            handle.write(json.dumps({"command": "sync", "target": "external", **record}) + "\n")


def test_fresh_backup_and_sync_are_ok_with_age_and_size(tmp_path: Path) -> None:
    config = _config(tmp_path)
    _manifest(
        config.backup_dir,
        "server1.20260301.manifest.json",
        "server1",
        ["/etc", "/home"],
        NOW - timedelta(hours=3),
    )
    _log(tmp_path, {"end": (NOW - timedelta(hours=1)).isoformat(), "ok": True, "bytes_sent": 42})
    result = status.assess(config, NOW, 26)
    assert result.ok
    backup, sync = result.items
    assert backup.age_hours == 3
    assert backup.last_success is not None
    assert backup.last_success.size == 2000
    assert sync.age_hours == 1
    assert sync.last_success is not None
    assert sync.last_success.size == 42


def test_a_stale_sync_fails_and_says_by_how_much(tmp_path: Path) -> None:
    config = _config(tmp_path)
    _manifest(
        config.backup_dir, "server1.20260301.manifest.json", "server1", ["/etc", "/home"], NOW
    )
    _log(tmp_path, {"end": (NOW - timedelta(hours=30)).isoformat(), "ok": True, "bytes_sent": 1})
    result = status.assess(config, NOW, 26)
    assert not result.ok
    assert result.items[1].problem == "last success 30.0 h ago, over the 26 h limit"


def test_a_failed_run_after_the_success_is_shown_but_the_age_is_the_successs(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path)
    _log(
        tmp_path,
        {"end": (NOW - timedelta(hours=2)).isoformat(), "ok": True, "bytes_sent": 1},
        {"end": (NOW - timedelta(hours=1)).isoformat(), "ok": False, "message": "rsync exit 12"},
    )
    [_, sync] = status.assess(config, NOW, 26).items
    assert sync.age_hours == 2
    assert sync.last_failure is not None
    assert "rsync exit 12" in sync.last_failure


def test_a_sync_that_failed_after_its_last_success_fails_however_recent(tmp_path: Path) -> None:
    config = _config(tmp_path)
    _manifest(
        config.backup_dir, "server1.20260301.manifest.json", "server1", ["/etc", "/home"], NOW
    )
    _log(
        tmp_path,
        {"end": (NOW - timedelta(hours=2)).isoformat(), "ok": True, "bytes_sent": 1},
        {"end": (NOW - timedelta(hours=1)).isoformat(), "ok": False, "message": "rsync exit 23"},
    )
    result = status.assess(config, NOW, 26)
    assert not result.ok
    backup_item, sync = result.items
    assert backup_item.ok
    assert not sync.ok
    assert sync.problem == "the last run failed"
    assert "     the last run failed" in status.lines(result)
    # the next success clears it
    _log(tmp_path, {"end": NOW.isoformat(), "ok": True, "bytes_sent": 1})
    assert status.assess(config, NOW, 26).ok


def test_on_a_receiving_host_the_line_names_the_pushed_copy_it_reads(tmp_path: Path) -> None:
    copy = tmp_path / "srvbackups"
    copy.mkdir()
    _manifest(copy, "server1.20260301.manifest.json", "server1", ["/etc"], NOW - timedelta(hours=5))
    config = parse({"general": {"host": "raspberrypi"}, "snapshot": {"source": str(copy)}})
    result = status.assess(config, NOW, 26)
    [item] = result.items
    assert item.name == "pushed copy of server1"
    assert item.ok and item.age_hours == 5
    assert status.lines(result)[0].startswith("ok   pushed copy of server1: 5.0 h ago")
    old = status.assess(config, NOW + timedelta(hours=30), 26)
    assert not old.ok
    assert old.items[0].problem == "last success 35.0 h ago, over the 26 h limit"


def test_a_copy_that_holds_no_manifest_is_a_push_that_never_arrived(tmp_path: Path) -> None:
    copy = tmp_path / "srvbackups"
    copy.mkdir()
    (copy / "server1.20260301.manifest.json").write_text("{}")
    config = parse({"general": {"host": "raspberrypi"}, "snapshot": {"source": str(copy)}})
    [item] = status.assess(config, NOW, 26).items
    assert (item.name, item.problem) == ("pushed copy", "never succeeded")


def test_a_partial_backup_run_does_not_count_and_never_is_a_failure(tmp_path: Path) -> None:
    config = _config(tmp_path)
    _manifest(config.backup_dir, "server1.20260301.manifest.json", "server1", ["/etc"], NOW)
    result = status.assess(config, NOW, 26)
    assert not result.ok
    assert result.items[0].problem == "never succeeded"
    assert result.items[1].problem == "never succeeded"


def test_a_torn_log_line_is_skipped(tmp_path: Path) -> None:
    _log(tmp_path, {"end": NOW.isoformat(), "ok": True, "bytes_sent": 5})
    with (tmp_path / "sync.log").open("a") as handle:
        handle.write('{"command": "sync", "tar')
    assert len(status.read_sync_log(tmp_path / "sync.log")) == 1


def test_json_output_carries_the_verdict_and_each_item(tmp_path: Path) -> None:
    config = _config(tmp_path)
    document = json.loads(status.as_json(status.assess(config, NOW, 12)))
    assert document["ok"] is False
    assert document["max_age_hours"] == 12
    assert [i["name"] for i in document["items"]] == ["backup", "sync external"]


def test_a_push_cut_short_does_not_make_the_copy_look_fresh(tmp_path: Path) -> None:
    copy = tmp_path / "srvbackups"
    copy.mkdir()
    _manifest(
        copy, "server1.20260301.manifest.json", "server1", ["/etc"], NOW - timedelta(hours=30)
    )
    # the newest manifest arrived, its archive did not (only part of it)
    _manifest(copy, "server1.20260302.manifest.json", "server1", ["/var"], NOW - timedelta(hours=1))
    var = layout.archive_name("server1", layout.source_slug("/var"), "20260301", "master", "zstd")
    (copy / var).write_bytes(b"x" * 10)
    config = parse({"general": {"host": "raspberrypi"}, "snapshot": {"source": str(copy)}})
    [item] = status.assess(config, NOW, 26).items
    assert item.name == "pushed copy of server1"
    assert not item.ok
    assert item.age_hours is not None and 29.9 < item.age_hours < 30.1


def _dump_entry(unit: str) -> layout.ArchiveEntry:
    name = layout.dump_name("server1", unit, "20260301", "zstd")
    return layout.ArchiveEntry(name, layout.dump_source(unit), layout.DUMP, name, 10, "0" * 64)


def test_a_dump_entry_the_last_manifest_lacks_is_missing_however_its_units_are_named() -> None:
    manifest = layout.Manifest(
        "server1", (_dump_entry("app"), _dump_entry("pg-shop"), _dump_entry("pg-globals"))
    )
    assert status.dumps_missing(manifest, ["app", "pg", "shop", "pg-shop"]) == ["shop"]
    assert status.dumps_missing(manifest, []) == []
    # "pg-" is not a prefix of "pgx": a dump named pgx made nothing
    assert status.dumps_missing(manifest, ["pgx"]) == ["pgx"]


def test_a_failed_dump_fails_the_backup_item_naming_it_and_the_manifest() -> None:
    fresh = status.Item("backup", None, None, 1.0, ok=True, problem=None)
    judged = status.judge_dumps(fresh, "server1.20260301.manifest.json", ["shop"])
    assert not judged.ok
    assert judged.problem == (
        "the last run (server1.20260301.manifest.json) made no dump of shop: it failed"
    )
    assert status.judge_dumps(fresh, "server1.20260301.manifest.json", []) == fresh


def test_status_fails_when_the_newest_run_made_no_dump_of_a_configured_entry(
    tmp_path: Path,
) -> None:
    backups = tmp_path / "backups"
    backups.mkdir()
    document = {
        "general": {"host": "server1", "state_dir": str(tmp_path / "state")},
        "backup": {"sources": ["/etc"], "directory": str(backups)},
        "sync": {"log": str(tmp_path / "sync.log")},
        "dumps": [{"name": "app", "kind": "command", "command": ["true"]}],
    }
    cfg = parse(document)
    etc = layout.archive_name("server1", "etc", "20260301", "master", "zstd")
    entries = [layout.ArchiveEntry(etc, "/etc", "master", etc, 1000, "0" * 64)]
    path = backups / layout.manifest_name("server1", "20260301")
    path.write_bytes(layout.manifest_json("server1", "20260301", NOW, entries))
    result = status.assess(cfg, NOW, 26)
    [backup] = [item for item in result.items if item.name == "backup"]
    assert not backup.ok
    assert backup.problem is not None and "made no dump of app" in backup.problem
    path.write_bytes(
        layout.manifest_json("server1", "20260301", NOW, [*entries, _dump_entry("app")])
    )
    [backup] = [i for i in status.assess(cfg, NOW, 26).items if i.name == "backup"]
    assert backup.ok, backup.problem
