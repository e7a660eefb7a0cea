"""[[dumps]] against real PostgreSQL and MariaDB servers (tests/integration/databases.py):
rows written, dumped by keyforge backup, the database dropped, the dump taken back out with
keyforge restore --dump, loaded with the database's own tool, and compared row for row."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keyforge import config as config_mod
from keyforge.cli import app
from keyforge.layout import hash_of_file
from keyforge.sender import dbguard
from tests.integration.databases import MariaDB, Postgres, mariadb_server, postgres_server
from tests.integration.dump_config import write_config

pytestmark = pytest.mark.slow

ROWS = [(1, "plain"), (2, "quote ' and \\ backslash"), (3, "ünïcode ✓"), (4, None)]


@pytest.fixture(scope="module")
def pg() -> Iterator[Postgres]:
    with postgres_server() as server:
        yield server


@pytest.fixture(scope="module")
def maria() -> Iterator[MariaDB]:
    with mariadb_server() as server:
        yield server


def _pg_literal(value: str | None) -> str:
    return "NULL" if value is None else "'" + value.replace("'", "''") + "'"


def fill_postgres(pg: Postgres, database: str) -> str:
    pg.psql(f"DROP DATABASE IF EXISTS {database}")
    pg.psql(f"CREATE DATABASE {database}")
    values = ", ".join(f"({i}, {_pg_literal(v)})" for i, v in ROWS)
    pg.psql(
        "CREATE TABLE items (id int PRIMARY KEY, note text); "
        f"INSERT INTO items VALUES {values}; "
        "INSERT INTO items SELECT g, md5(g::text) FROM generate_series(10, 5000) g",
        database,
    )
    return pg.psql("SELECT id, note FROM items ORDER BY id", database)


def backup(config: Path) -> subprocess.CompletedProcess[str] | object:
    return CliRunner().invoke(app, ["backup", "--config", str(config)])


def manifest_entries(tmp_path: Path) -> dict[str, dict[str, object]]:
    found: dict[str, dict[str, object]] = {}
    for path in sorted((tmp_path / "backups").glob("server1.*.manifest.json")):
        for entry in json.loads(path.read_text())["archives"]:
            found[entry["name"]] = entry
    return found


def test_postgresql_dump_restores_row_for_row_after_the_database_is_dropped(
    pg: Postgres, tmp_path: Path
) -> None:
    before = fill_postgres(pg, "shop")
    src = tmp_path / "src"
    src.mkdir()
    cfg = write_config(tmp_path, [src], dumps=[pg.dump_entry("shop", ["shop"])])
    made = CliRunner().invoke(app, ["backup", "--config", str(cfg), "--verbose"])
    assert made.exit_code == 0, made.output
    assert "1 dump" in made.stdout
    [dump] = sorted((tmp_path / "backups").glob("server1-shop.*.dump.zst"))
    entry = manifest_entries(tmp_path)[dump.name]
    assert entry["source"] == "dump:shop"
    assert entry["kind"] == "dump"
    assert entry["blake3"] == hash_of_file(dump)
    assert not list((tmp_path / "backups").glob(".*partial"))

    pg.psql("DROP DATABASE shop")
    out = tmp_path / "shop.pgdump"
    restored = CliRunner().invoke(
        app, ["restore", "--config", str(cfg), "--dump", "shop", "--to", str(out)]
    )
    assert restored.exit_code == 0, restored.output
    with out.open("rb") as dump:  # on stdin: pg_restore runs as the server's account
        load = subprocess.run(
            pg.client("pg_restore", "--create", "--dbname=postgres"),
            stdin=dump,
            capture_output=True,
            text=True,
            check=False,
        )
    assert load.returncode == 0, load.stderr
    assert pg.psql("SELECT id, note FROM items ORDER BY id", "shop") == before


def test_all_databases_and_the_roles_each_get_an_archive(pg: Postgres, tmp_path: Path) -> None:
    fill_postgres(pg, "alpha")
    fill_postgres(pg, "beta")
    pg.psql("DROP ROLE IF EXISTS reporter; CREATE ROLE reporter LOGIN")
    src = tmp_path / "src"
    src.mkdir()
    cfg = write_config(tmp_path, [src], dumps=[pg.dump_entry("pg", ["all"])])
    made = CliRunner().invoke(app, ["backup", "--config", str(cfg)])
    assert made.exit_code == 0, made.output
    units = {p.name.split(".")[0] for p in (tmp_path / "backups").glob("*.dump.zst")}
    assert {"server1-pg-alpha", "server1-pg-beta", "server1-pg-globals"} <= units
    # to standard output, straight from the decompressor: a real process, whose stdout is one
    done = subprocess.run(
        [sys.executable, "-m", "keyforge", "restore", "--config", str(cfg), "--dump", "pg-globals"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "CREATE ROLE reporter" in done.stdout


def test_a_database_that_does_not_exist_fails_that_dump_only(pg: Postgres, tmp_path: Path) -> None:
    fill_postgres(pg, "kept")
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("data\n")
    good = pg.dump_entry("kept", ["kept"])
    cfg = write_config(tmp_path, [src], dumps=[good])
    first = CliRunner().invoke(app, ["backup", "--config", str(cfg)])
    assert first.exit_code == 0, first.output
    [old] = (tmp_path / "backups").glob("server1-kept.*.dump.zst")
    old_sha = hash_of_file(old)

    cfg = write_config(tmp_path, [src], dumps=[pg.dump_entry("gone", ["nosuchdb"]), good])
    second = CliRunner().invoke(app, ["backup", "--config", str(cfg)])
    assert second.exit_code == 5, second.output
    [line] = second.stderr.strip().splitlines()[-1:]
    assert line.startswith("keyforge: error: backup failed for 1 of 3 source(s) and dump(s): ")
    assert "dump gone: pg_dump failed: " in line
    assert "nosuchdb" in line
    names = {p.name for p in (tmp_path / "backups").iterdir()}
    assert not [n for n in names if n.startswith("server1-gone")]
    assert not [n for n in names if n.endswith(".partial")]
    kept = sorted((tmp_path / "backups").glob("server1-kept.*.dump.zst"))
    assert len(kept) == 2  # the other dump still ran
    assert hash_of_file(old) == old_sha  # and the previous one is untouched
    listed = manifest_entries(tmp_path)
    assert all(k.name in listed for k in kept)


def test_the_guard_warns_of_a_running_server_inside_a_source_until_a_dump_is_set(
    pg: Postgres, tmp_path: Path
) -> None:
    data_dir = pg.socket_dir  # the fixture keeps its socket in the data directory
    source = data_dir.parent
    cfg = config_mod.load(write_config(tmp_path, [source]))
    [warning] = dbguard.warnings(cfg)
    assert str(data_dir) in warning and "postgresql" in warning

    made = CliRunner().invoke(app, ["backup", "--config", str(tmp_path / "keyforge.toml")])
    assert f"warning: {warning}" in made.stderr
    status = CliRunner().invoke(app, ["status", "--config", str(tmp_path / "keyforge.toml")])
    assert f"warning: {warning}" in status.stderr
    check = CliRunner().invoke(app, ["check", "--config", str(tmp_path / "keyforge.toml")])
    assert f"warning: {warning}" in check.stderr

    guarded = write_config(tmp_path, [source], dumps=[pg.dump_entry("pg", ["postgres"])])
    assert dbguard.warnings(config_mod.load(guarded)) == []
    excluded = write_config(tmp_path, [source], backup={"exclude": [str(data_dir)]})
    assert dbguard.warnings(config_mod.load(excluded)) == []


def _maria_literal(value: str | None) -> str:
    if value is None:
        return "NULL"
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def test_mariadb_dump_restores_row_for_row_after_the_database_is_dropped(
    maria: MariaDB, tmp_path: Path
) -> None:
    values = ", ".join(f"({i}, {_maria_literal(v)})" for i, v in ROWS)
    maria.sql(
        "DROP DATABASE IF EXISTS shop; CREATE DATABASE shop CHARACTER SET utf8mb4; USE shop; "
        "CREATE TABLE items (id int PRIMARY KEY, note text) ENGINE=InnoDB; "
        f"INSERT INTO items VALUES {values}; "
        "CREATE PROCEDURE counted() SELECT COUNT(*) FROM items;"
    )
    query = "SELECT id, note FROM items ORDER BY id"
    before = maria.sql(query, database="shop")
    src = tmp_path / "src"
    src.mkdir()
    cfg = write_config(tmp_path, [src], dumps=[maria.dump_entry("maria", ["shop"])])
    made = CliRunner().invoke(app, ["backup", "--config", str(cfg)])
    assert made.exit_code == 0, made.output

    maria.sql("DROP DATABASE shop")
    out = tmp_path / "maria.sql"
    restored = CliRunner().invoke(
        app, ["restore", "--config", str(cfg), "--dump", "maria", "--to", str(out)]
    )
    assert restored.exit_code == 0, restored.output
    with out.open("rb") as dump:
        load = subprocess.run(maria.client(), stdin=dump, capture_output=True, check=False)
    assert load.returncode == 0, load.stderr
    assert maria.sql(query, database="shop") == before
    assert maria.sql("CALL counted()", database="shop").strip() == str(len(ROWS))


def test_a_mariadb_database_that_does_not_exist_fails_that_dump(
    maria: MariaDB, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    cfg = write_config(tmp_path, [src], dumps=[maria.dump_entry("nope", ["nosuchdb"])])
    made = CliRunner().invoke(app, ["backup", "--config", str(cfg)])
    assert made.exit_code == 5, made.output
    assert "dump nope: mariadb-dump failed: " in made.stderr
    assert not list((tmp_path / "backups").glob("server1-nope*"))
