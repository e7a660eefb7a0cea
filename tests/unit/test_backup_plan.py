"""The pure half of backup: names, chains, retention with faked dates, argv lists."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from keyforge import config, layout
from keyforge.errors import ConfigError
from keyforge.infra import runner
from keyforge.layout import INCREMENTAL, MASTER, ArchiveRecord
from keyforge.sender import backup

HOST = "server1"


def rec(slug: str, stamp: str, kind: str) -> ArchiveRecord:
    name = layout.archive_name(HOST, slug, stamp, kind, "zstd")
    parsed = layout.parse_archive_name(name, HOST, [slug])
    assert parsed is not None
    return parsed


def daily(slug: str, start: dt.date, days: int, full_every: int) -> list[ArchiveRecord]:
    """One archive a day, a master every ``full_every`` days."""
    out = []
    for i in range(days):
        day = start + dt.timedelta(days=i)
        out.append(
            rec(slug, day.strftime("%Y%m%d"), MASTER if i % full_every == 0 else INCREMENTAL)
        )
    return out


def test_archive_names_say_host_source_date_and_kind() -> None:
    assert (
        layout.archive_name("server1", "etc", "20261128", MASTER, "zstd")
        == "server1-etc.20261128.master.tar.zst"
    )
    assert layout.archive_name("h", "var_lib", "20261128", INCREMENTAL, "gzip").endswith(
        ".incremental.tar.gz"
    )


@pytest.mark.parametrize(
    ("source", "slug"),
    [("/etc", "etc"), ("/var/lib/", "var_lib"), ("/", "rootfs"), ("/srv/a b", "srv_a_b")],
)
def test_source_slugs_are_safe_file_name_parts(source: str, slug: str) -> None:
    assert layout.source_slug(source) == slug


def test_names_of_other_hosts_sources_or_partials_are_not_archives() -> None:
    slugs = ["etc"]
    assert layout.parse_archive_name("server2-etc.20261128.master.tar.zst", HOST, slugs) is None
    assert layout.parse_archive_name("server1-var.20261128.master.tar.zst", HOST, slugs) is None
    partial = layout.partial_name("server1-etc.20261128.master.tar.zst")
    assert layout.parse_archive_name(partial, HOST, slugs) is None


def test_a_host_name_with_dashes_still_parses() -> None:
    name = layout.archive_name("web-1", "var_lib", "20261128-101500", MASTER, "zstd")
    parsed = layout.parse_archive_name(name, "web-1", ["var", "var_lib"])
    assert parsed is not None
    assert (parsed.slug, parsed.stamp, parsed.kind) == ("var_lib", "20261128-101500", MASTER)


def test_the_first_run_of_a_day_gets_the_date_and_later_ones_the_time() -> None:
    now = dt.datetime(2026, 11, 28, 9, 30, 0)
    assert layout.new_stamp(now, []) == "20261128"
    assert layout.new_stamp(now, ["20261128"]) == "20261128-093000"
    assert layout.new_stamp(now, ["20261128", "20261128-093000"]) == "20261128-093000-2"


def test_stamps_sort_in_time_order() -> None:
    stamps = ["20261129", "20261128-093000-2", "20261128", "20261128-093000"]
    assert sorted(stamps, key=layout.stamp_key) == [
        "20261128",
        "20261128-093000",
        "20261128-093000-2",
        "20261129",
    ]


def test_chains_start_at_each_master() -> None:
    records = daily("etc", dt.date(2026, 11, 1), 10, full_every=7)
    chains = backup.chains_of(records)["etc"]
    assert [len(c.archives) for c in chains] == [7, 3]
    assert all(c.master is not None for c in chains)


def test_incrementals_without_a_master_form_an_orphan_chain() -> None:
    records = [rec("etc", "20261101", INCREMENTAL), rec("etc", "20261102", MASTER)]
    chains = backup.chains_of(records)["etc"]
    assert chains[0].master is None
    assert chains[1].master is not None


def test_retention_removes_only_whole_chains_older_than_the_window() -> None:
    # 30 days of daily runs, weekly masters: chains start on days 0, 7, 14, 21, 28
    start = dt.date(2026, 11, 1)
    records = daily("etc", start, 30, full_every=7)
    today = start + dt.timedelta(days=29)
    doomed = backup.chains_to_remove(records, today, retention_days=14)
    # cutoff = day 15: chain 0 (days 0-6) ends before it; chain 1 (7-13) too; chain 2 (14-20)
    # reaches past it and stays whole, so every day of the window remains restorable
    assert [c.name for c in doomed] == [records[0].name, records[7].name]
    kept = {a.name for a in records} - {a.name for c in doomed for a in c.archives}
    assert min(kept) == records[14].name


def test_retention_keeps_every_day_of_the_window_restorable() -> None:
    start = dt.date(2026, 11, 1)
    records = daily("etc", start, 40, full_every=5)
    today = start + dt.timedelta(days=39)
    doomed = {a.name for c in backup.chains_to_remove(records, today, 14) for a in c.archives}
    left = [r for r in records if r.name not in doomed]
    for back in range(15):
        day = today - dt.timedelta(days=back)
        chosen = backup.select_for_restore(left, "etc", day)
        assert chosen
        assert chosen[-1].when.date() == day


def test_retention_never_removes_the_newest_full_backup() -> None:
    # backups stopped long ago: the last chain stays even though it is far outside the window
    records = daily("etc", dt.date(2025, 1, 1), 10, full_every=7)
    doomed = backup.chains_to_remove(records, dt.date(2026, 11, 28), retention_days=14)
    assert [c.name for c in doomed] == [records[0].name]


def test_retention_keeps_the_newest_master_even_after_a_newer_orphan_chain() -> None:
    records = [rec("etc", "20250101", MASTER), rec("etc", "20250102", INCREMENTAL)]
    orphan_source = [rec("etc", "20250103", INCREMENTAL)]
    doomed = backup.chains_to_remove(records + orphan_source, dt.date(2026, 11, 28), 14)
    assert records[0].name not in {a.name for c in doomed for a in c.archives}


def test_retention_is_per_source() -> None:
    old = daily("etc", dt.date(2026, 10, 1), 8, full_every=7)
    new = daily("var", dt.date(2026, 11, 20), 8, full_every=7)
    doomed = backup.chains_to_remove(old + new, dt.date(2026, 11, 28), 14)
    assert [c.slug for c in doomed] == ["etc"]
    assert doomed[0].name == old[0].name


def test_a_full_is_due_on_the_weekday_once_and_when_no_chain_exists() -> None:
    chain = backup.chains_of([rec("etc", "20261122", MASTER)])["etc"][-1]  # a Sunday
    monday = dt.datetime(2026, 11, 23, 3, 0)
    sunday = dt.datetime(2026, 11, 29, 3, 0)
    assert not backup.full_is_due(chain, monday, "sunday", has_snapshot=True)
    assert backup.full_is_due(chain, sunday, "sunday", has_snapshot=True)
    same_day = dt.datetime(2026, 11, 22, 15, 0)
    assert not backup.full_is_due(chain, same_day, "sunday", has_snapshot=True)
    assert backup.full_is_due(None, monday, "sunday", has_snapshot=False)
    assert backup.full_is_due(chain, monday, "sunday", has_snapshot=False)


def test_a_full_is_due_after_the_interval() -> None:
    chain = backup.chains_of([rec("etc", "20261122", MASTER)])["etc"][-1]
    assert not backup.full_is_due(chain, dt.datetime(2026, 11, 28), 7, has_snapshot=True)
    assert backup.full_is_due(chain, dt.datetime(2026, 11, 29), 7, has_snapshot=True)


def test_restore_selection_is_the_master_then_incrementals_up_to_the_date() -> None:
    records = daily("etc", dt.date(2026, 11, 1), 10, full_every=7)
    chosen = backup.select_for_restore(records, "etc", dt.date(2026, 11, 5))
    assert [r.name for r in chosen] == [r.name for r in records[:5]]
    latest = backup.select_for_restore(records, "etc", None)
    assert [r.name for r in latest] == [r.name for r in records[7:]]
    assert backup.select_for_restore(records, "etc", dt.date(2026, 10, 1)) == []


def test_tar_keeps_xattrs_acls_sparseness_and_ignores_device_numbers() -> None:
    cfg = config.parse({"backup": {"directory": "/mnt/backups/server1"}}).backup
    argv = backup.tar_create_argv("/etc", Path("/b/.s.snar"), cfg)
    for option in (
        "--xattrs",
        "--xattrs-include=*",
        "--acls",
        "--sparse",
        "--numeric-owner",
        "--no-check-device",
        "--listed-incremental=/b/.s.snar",
    ):
        assert option in argv
    assert argv[-2:] == ["--directory=/etc", "."]


def test_the_backup_directory_inside_a_source_is_excluded() -> None:
    options = backup.exclude_options(
        "/var", "/var/backups/server1", ["/var/cache", "/etc/x", "*.tmp"]
    )
    assert options == [
        "--anchored",
        "--no-wildcards",
        "--exclude=./backups/server1",
        "--exclude=./cache",
        "--no-anchored",
        "--wildcards",
        "--exclude=*.tmp",
        "--no-wildcards",
    ]
    assert backup.exclude_options("/etc", "/mnt/backups/server1", []) == []


def test_compressors_default_to_zstd_on_every_core() -> None:
    assert backup.compress_argv("zstd", 3) == ["zstd", "-T0", "-3", "-q", "-c"]
    assert backup.compress_argv("pigz", 6) == ["pigz", "-6", "-c"]


def test_sources_that_collide_or_contain_the_backup_directory_are_refused() -> None:
    clash = config.parse({"backup": {"sources": ["/srv/a b", "/srv/a_b"]}}).backup
    with pytest.raises(ConfigError, match="share archive name"):
        backup.check_sources(clash)
    inside = config.parse(
        {"backup": {"sources": ["/mnt/backups/h/x"], "directory": "/mnt/backups/h"}}
    )
    with pytest.raises(ConfigError, match="inside the backup directory"):
        backup.check_sources(inside.backup)
    gzip9 = config.parse({"backup": {"compression": "gzip", "compression_level": 12}}).backup
    with pytest.raises(ConfigError, match="compression_level must be between 1 and 9"):
        backup.check_sources(gzip9)


def test_long_commands_run_at_idle_io_and_low_cpu_priority() -> None:
    argv = runner.wrap_priority(["tar", "-c"], runner.Priority(nice=10, ionice="idle"))
    assert argv == ["ionice", "-c", "3", "nice", "-n", "10", "tar", "-c"]
    assert runner.wrap_priority(["tar"], runner.Priority()) == ["tar"]


def test_manifests_of_a_host_whose_name_extends_ours_are_not_read_as_ours(tmp_path: Path) -> None:
    for host, stamp in ((HOST, "20261123"), (f"{HOST}.lan", "20261124")):
        name = layout.archive_name(host, "etc", stamp, MASTER, "zstd")
        entry = layout.ArchiveEntry(name, "/etc", MASTER, name, 1, "0" * 64)
        document = layout.manifest_json(host, stamp, dt.datetime(2026, 11, 23), [entry])
        (tmp_path / layout.manifest_name(host, stamp)).write_bytes(document)
    assert list(layout.run_manifests(tmp_path, HOST)) == ["20261123"]
    assert list(layout.read_manifests(tmp_path, HOST)) == ["server1-etc.20261123.master.tar.zst"]
