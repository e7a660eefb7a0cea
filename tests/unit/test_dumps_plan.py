"""[[dumps]], [hooks] and excludes as pure functions: argv planners, checks, names, the guard."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyforge import config, layout
from keyforge.config import DumpConfig
from keyforge.errors import ConfigError
from keyforge.sender import backup, dbguard, dump_producer, dumps, hooks


def pg(**values: object) -> DumpConfig:
    return DumpConfig(name="pg", kind="postgresql", **values)  # type: ignore[arg-type]


def test_postgresql_dumps_each_database_in_custom_format_uncompressed_and_without_prompts() -> None:
    [unit] = dumps.postgresql_units(pg(databases=("shop",)), ["shop"], None)
    assert unit.unit == "pg"  # one database: the entry's own name
    assert unit.argv == (
        "pg_dump",
        "--no-password",
        "--username=postgres",
        "--format=custom",
        "--compress=0",
        "--dbname=shop",
    )


def test_postgresql_all_adds_the_roles_and_names_each_database() -> None:
    entry = pg(host="/run/pg", port=5433, user="backup", options=("--exclude-table=log",))
    units = dumps.postgresql_units(entry, ["app", "weird name"], "backup")
    assert [u.unit for u in units] == ["pg-globals", "pg-app", "pg-weird_name"]
    assert units[0].argv[:4] == ("runuser", "-u", "backup", "--")
    assert "--globals-only" in units[0].argv
    assert units[1].argv[4:] == (
        "pg_dump",
        "--no-password",
        "--username=backup",
        "--host=/run/pg",
        "--port=5433",
        "--format=custom",
        "--compress=0",
        "--exclude-table=log",
        "--dbname=app",
    )


def test_postgresql_lists_its_databases_with_psql() -> None:
    argv = dumps.postgresql_list_argv(pg(), None)
    assert argv[0] == "psql" and "--tuples-only" in argv and "--dbname=postgres" in argv
    assert argv[-1].startswith("--command=SELECT datname FROM pg_database")


def test_mariadb_reads_one_consistent_transaction_with_routines_and_events() -> None:
    entry = DumpConfig(
        name="m", kind="mariadb", databases=("a", "b"), user="root", socket="/run/m.sock"
    )
    assert dumps.mariadb_argv(entry) == [
        "mariadb-dump",
        "--single-transaction",
        "--routines",
        "--events",
        "--triggers",
        "--user=root",
        "--socket=/run/m.sock",
        "--databases",
        "a",
        "b",
    ]
    every = DumpConfig(name="m", kind="mariadb")
    assert dumps.mariadb_argv(every, "mysqldump")[0] == "mysqldump"
    assert dumps.mariadb_argv(every)[-1] == "--all-databases"


def test_sqlite_uses_keyforges_online_backup_producer() -> None:
    entry = DumpConfig(name="app", kind="sqlite", path="/var/lib/app/app.db")
    argv = dumps.sqlite_argv(entry, "/usr/bin/python3")
    assert argv == [
        "/usr/bin/python3",
        "-m",
        "keyforge.sender.sqlite_online",
        "/var/lib/app/app.db",
    ]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (DumpConfig(kind="sqlite", path="/x"), "needs a name and a kind"),
        (DumpConfig(name="a", kind="sqlite"), "needs path"),
        (DumpConfig(name="a", kind="command"), "needs command"),
        (DumpConfig(name="a", kind="command", command=("x",), path="/y"), "path means nothing"),
        (DumpConfig(name="a", kind="sqlite", path="/x", databases=("d",)), "databases means"),
        (DumpConfig(name="a", kind="postgresql", databases=("all", "x")), "stands alone"),
    ],
)
def test_each_kind_gets_what_it_needs_and_nothing_it_would_ignore(
    entry: DumpConfig, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        dumps.check_entry(entry, "[[dumps]] #1:")


def test_dumps_parse_from_the_config_and_names_are_checked() -> None:
    parsed = config.parse({"dumps": [{"name": "app", "kind": "sqlite", "path": "/var/lib/app.db"}]})
    assert parsed.dumps == (DumpConfig(name="app", kind="sqlite", path="/var/lib/app.db"),)
    with pytest.raises(ConfigError, match=r"\[\[dumps\]\] #1 name must be a short name"):
        config.parse({"dumps": [{"name": "a.b", "kind": "sqlite"}]})
    with pytest.raises(ConfigError, match="kind must be one of"):
        config.parse({"dumps": [{"name": "a", "kind": "oracle"}]})
    with pytest.raises(ConfigError, match="name 'a' is used twice"):
        config.parse(
            {"dumps": [{"name": "a", "kind": "mariadb"}, {"name": "a", "kind": "mariadb"}]}
        )


def test_a_dump_failure_is_one_line_naming_it() -> None:
    unit = dumps.DumpUnit("pg", "postgresql", "pg", ("runuser", "-u", "postgres", "--", "pg_dump"))

    def ended(stderr: str, count: int, code: int) -> dumps.runner.Result:
        text = stderr + dump_producer.trailer(count, code) + "\n"
        return dumps.runner.Result(unit.argv, code if code >= 0 else 128 - code, b"", text)

    missing = ended('pg_dump: error: database "x" does not exist\n', 0, 1)
    assert dumps.producer_failure(unit, missing) == (
        'dump pg: pg_dump failed: pg_dump: error: database "x" does not exist'
    )
    killed = ended("", 10, -9)
    assert dumps.producer_failure(unit, killed) == "dump pg: pg_dump was killed (signal 9)"
    assert dumps.producer_failure(unit, ended("", 0, 0)) == "dump pg: pg_dump wrote nothing"
    fine = ended("pg_dump: warning: x\n", 1, 0)
    assert dumps.producer_failure(unit, fine) is None
    assert dumps.producer_warnings(unit, fine) == ("dump pg: pg_dump: warning: x",)
    stage_killed = dumps.runner.Result(unit.argv, -15, b"", "")
    assert dumps.producer_failure(unit, stage_killed) == "dump pg: pg_dump was killed (exit -15)"


@given(count=st.integers(0, 2**50), code=st.integers(-64, 255), before=st.text())
def test_the_producer_stages_last_line_reads_back(count: int, code: int, before: str) -> None:
    stderr = before + ("\n" if before and not before.endswith("\n") else "")
    read = dump_producer.read_trailer(stderr + dump_producer.trailer(count, code) + "\n")
    assert read is not None
    assert read[:2] == (count, code)


# --- names -------------------------------------------------------------------------------------

units = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,40}", fullmatch=True)
hosts = st.from_regex(r"[a-z0-9][a-z0-9.-]{0,20}", fullmatch=True)


@given(
    host=hosts,
    unit=units,
    day=st.dates(dt.date(2000, 1, 1), dt.date(2099, 12, 31)),
    compression=st.sampled_from(["zstd", "gzip", "pigz"]),
    encrypted=st.booleans(),
)
def test_a_dump_name_reads_back_as_its_unit_and_stamp(
    host: str, unit: str, day: dt.date, compression: str, encrypted: bool
) -> None:
    stamp = day.strftime("%Y%m%d")
    name = layout.dump_name(host, unit, stamp, compression, encrypted=encrypted)
    record = layout.parse_dump_name(name, host)
    assert record is not None
    assert (record.slug, record.stamp, record.kind) == (layout.dump_source(unit), stamp, "master")
    assert layout.is_archive_name(name)
    assert layout.is_encrypted_name(name) == encrypted
    assert name.endswith(".age") == encrypted
    assert [r.name for r in layout.archive_records([name])] == [name]
    assert layout.parse_archive_name(name, host, [unit]) is None  # never a source's archive
    assert layout.is_dump_source(record.slug)
    assert not layout.is_dump_source(unit)


def test_an_encrypted_dump_and_the_plaintext_one_before_it_are_one_units_history() -> None:
    names = [
        layout.dump_name("server1", "pg", "20261101", "zstd"),
        layout.dump_name("server1", "pg", "20261120", "zstd", encrypted=True),
    ]
    records = sorted(r for r in (layout.parse_dump_name(n, "server1") for n in names) if r)
    assert {r.slug for r in records} == {"dump:pg"}
    doomed = backup.chains_to_remove(records, dt.date(2026, 11, 30), 14)
    assert [c.name for c in doomed] == [names[0]]
    assert layout.parse_dump_name(names[1] + ".partial", "server1") is None
    assert layout.parse_dump_name(names[1].replace(".age", ".gpg"), "server1") is None


def test_dump_records_age_out_as_whole_chains_and_the_newest_stays() -> None:
    names = [layout.dump_name("server1", "pg", s, "zstd") for s in ("20261101", "20261120")]
    records = [r for r in (layout.parse_dump_name(n, "server1") for n in names) if r]
    doomed = backup.chains_to_remove(records, dt.date(2026, 11, 30), 14)
    assert [c.name for c in doomed] == [names[0]]
    alone = backup.chains_to_remove(records[1:], dt.date(2027, 6, 1), 14)
    assert alone == []  # the newest dump is never removed


# --- excludes ----------------------------------------------------------------------------------


def test_the_default_excludes_leave_out_caches_scratch_docker_and_lost_found() -> None:
    assert config.parse({}).backup.exclude == (
        "/var/cache",
        "/var/tmp",
        "/var/lib/docker",
        "lost+found",
    )
    # defaults under no source stay unused, without an error
    assert config.parse({"backup": {"sources": ["/srv"]}}).backup.sources == ("/srv",)


@pytest.mark.parametrize(
    ("exclude", "message"),
    [
        ("var/lib/docker", r"'var/lib/docker' can never match.*write '/var/lib/docker'"),
        ("./var/cache", r"can never match.*'/var/cache'"),
        ("/srv/cache", r"exclude '/srv/cache' lies under none of the sources \(/etc, /var\)"),
        ("/var", r"'/var' lies under none"),
    ],
)
def test_an_exclude_that_can_never_match_is_an_error_naming_it(exclude: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config.parse({"backup": {"sources": ["/etc", "/var"], "exclude": [exclude]}})


@given(
    sources=st.lists(st.sampled_from(["/etc", "/var", "/var/lib", "/home", "/"]), min_size=1),
    pattern=st.from_regex(r"/[a-z]{1,4}(/[a-z]{1,4}){0,2}", fullmatch=True),
)
def test_an_exclude_is_reachable_exactly_when_tar_would_be_told_of_it(
    sources: list[str], pattern: str
) -> None:
    unreachable = config.unreachable_excludes(sources, [pattern])
    told = any(
        f"--exclude=./{Path(pattern).relative_to(s)}" in backup.exclude_options(s, "/b", [pattern])
        for s in sources
        if Path(pattern) != Path(s) and Path(pattern).is_relative_to(s)
    )
    assert (unreachable == []) == told


def test_the_init_template_says_which_lines_are_defaults_and_which_examples() -> None:
    text = config.render_default("server1", "/mnt/backups/server1")
    assert '#exclude = ["/var/cache", "/var/tmp", "/var/lib/docker", "lost+found"]' in text
    assert "Example" in text
    parsed = config.parse(__import__("tomllib").loads(text.replace("#exclude =", "exclude =", 1)))
    assert parsed.backup.exclude == config.DEFAULT_EXCLUDES


# --- the guard and the hooks -------------------------------------------------------------------


def test_the_guard_warns_only_for_a_live_data_directory_in_a_source_with_no_dump() -> None:
    live = [dbguard.RunningDatabase(Path("/var/lib/postgresql/15/main"), "postgresql")]
    plain = config.parse({})
    [warning] = dbguard.unguarded(plain, live)
    assert warning.startswith("/var holds /var/lib/postgresql/15/main, the data directory")
    dumped = config.parse({"dumps": [{"name": "pg", "kind": "postgresql"}]})
    assert dbguard.unguarded(dumped, live) == []
    other = config.parse({"dumps": [{"name": "m", "kind": "mariadb"}]})
    assert len(dbguard.unguarded(other, live)) == 1
    excluded = config.parse({"backup": {"exclude": ["/var/lib/postgresql"]}})
    assert dbguard.unguarded(excluded, live) == []
    elsewhere = config.parse({"backup": {"sources": ["/etc"]}})
    assert dbguard.unguarded(elsewhere, live) == []


def test_a_running_process_is_read_from_proc(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    for pid, comm, cwd in (
        ("10", "postgres", "/data/pg"),
        ("11", "postgres", "/data/pg"),
        ("12", "mariadbd", "/data/my"),
        ("13", "bash", "/root"),
    ):
        (proc / pid).mkdir(parents=True)
        (proc / pid / "comm").write_text(comm + "\n")
        (proc / pid / "cwd").symlink_to(cwd)
    (proc / "self").mkdir()
    assert dbguard.running_databases(proc) == [
        dbguard.RunningDatabase(Path("/data/my"), "mariadb"),
        dbguard.RunningDatabase(Path("/data/pg"), "postgresql"),
    ]


def test_a_hooks_environment_names_the_run_its_result_and_its_log() -> None:
    cfg = config.parse({"general": {"host": "server1"}})
    env = hooks.hook_env(
        {"PATH": "/usr/bin"},
        cfg,
        hook="on_error",
        run="2026-11-28T01:15:00+00:00",
        result="failed",
        log=Path("/var/lib/keyforge/last-backup.log"),
        error="tar failed on /var",
    )
    assert env == {
        "PATH": "/usr/bin",
        "KEYFORGE_HOOK": "on_error",
        "KEYFORGE_COMMAND": "backup",
        "KEYFORGE_HOST": "server1",
        "KEYFORGE_RUN": "2026-11-28T01:15:00+00:00",
        "KEYFORGE_RESULT": "failed",
        "KEYFORGE_ERROR": "tar failed on /var",
        "KEYFORGE_LOG": "/var/lib/keyforge/last-backup.log",
        "KEYFORGE_BACKUP_DIR": "/mnt/backups/server1",
    }


def test_hooks_are_argv_lists_with_a_timeout() -> None:
    parsed = config.parse({"hooks": {"before": ["mount", "/mnt/backups"], "timeout": 60}})
    assert parsed.hooks.before == ("mount", "/mnt/backups")
    with pytest.raises(ConfigError, match=r"\[hooks\] before must be a list of strings"):
        config.parse({"hooks": {"before": "mount /mnt/backups"}})
    with pytest.raises(ConfigError, match=r"\[hooks\] timeout must be >= 1"):
        config.parse({"hooks": {"timeout": 0}})
