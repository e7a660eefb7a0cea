"""[[dumps]]: databases (or any command's output) archived beside the sources, one stream each.

A live database's files are not a backup: tar reads them at different moments, and the copy
may not start again. A dump is the database's own consistent picture of itself. Each kind is
a row of one table, a pure planner from a [[dumps]] entry to the argv of its *producer* (the
program whose standard output is the dump); the rest is the archive pipeline every archive
goes through (keyforge.sender.pipeline): producer -> compressor [-> age] -> the partial file,
hashed and tested while it grows, renamed only once complete. The dump is never a plaintext
file of its own, not even for a moment.

A dump that exits non-zero, is killed or writes nothing fails that dump alone, with one line
naming it; the others still run, and the run (which then prunes nothing) fails at the end, so
the previous dumps stay as they were.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pwd
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from keyforge.config import Config, DumpConfig
from keyforge.errors import CommandError, ConfigError, KeyforgeError
from keyforge.infra import runner, tools
from keyforge.layout import DUMP, ArchiveEntry, dump_name, dump_source
from keyforge.sender import dump_producer
from keyforge.sender.pipeline import Written

ALL = "all"  # databases = ["all"]: every database of the server
GLOBALS = "globals"  # the unit holding PostgreSQL's roles and tablespaces
POSTGRES_USER = "postgres"

# psql's list of the databases pg_dump can dump: every one that accepts connections
_LIST_POSTGRESQL = (
    "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1"
)
_UNIT_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


@dataclasses.dataclass(frozen=True)
class DumpUnit:
    """One stream of one [[dumps]] entry: one archive per run, restored by its ``unit`` name."""

    entry: str
    kind: str
    unit: str
    argv: tuple[str, ...]


# --- planners (pure) ---------------------------------------------------------------------------


def _as_user(argv: list[str], run_as: str | None) -> list[str]:
    """``argv`` run as the system user ``run_as`` (runuser: no password, no shell, no pty)."""
    return ["runuser", "-u", run_as, "--", *argv] if run_as else argv


def postgresql_role(entry: DumpConfig) -> str:
    return entry.user or POSTGRES_USER


def postgresql_connection(entry: DumpConfig) -> list[str]:
    """The options that say which server, as whom; --no-password so that a job under cron
    fails at once instead of waiting for a password nobody types (use ~/.pgpass)."""
    options = ["--no-password", f"--username={postgresql_role(entry)}"]
    if entry.host:
        options.append(f"--host={entry.host}")
    if entry.port:
        options.append(f"--port={entry.port}")
    return options


def postgresql_list_argv(entry: DumpConfig, run_as: str | None) -> list[str]:
    """psql printing the names of the databases ``databases = ["all"]`` dumps, one a line."""
    argv = ["psql", *postgresql_connection(entry), "--no-psqlrc", "--tuples-only", "--no-align"]
    return _as_user([*argv, "--dbname=postgres", f"--command={_LIST_POSTGRESQL}"], run_as)


def unit_name(entry: DumpConfig, database: str, *, single: bool) -> str:
    """The entry's name for its one stream; ``name-database`` for one of several."""
    if single:
        return entry.name
    return f"{entry.name}-{_UNIT_UNSAFE.sub('_', database)}"


def postgresql_units(
    entry: DumpConfig, databases: Sequence[str], run_as: str | None
) -> list[DumpUnit]:
    """pg_dump's custom format per database (pg_restore reads it, and it restores one table
    as easily as all); with ``all`` also pg_dumpall --globals-only, the roles no database dump
    holds. --compress=0: the archive pipeline compresses, once, on every core."""
    every = list(entry.databases) == [ALL]
    units = []
    if every:
        argv = _as_user(["pg_dumpall", *postgresql_connection(entry), "--globals-only"], run_as)
        units.append(DumpUnit(entry.name, entry.kind, f"{entry.name}-{GLOBALS}", tuple(argv)))
    single = not every and len(databases) == 1
    for database in databases:
        argv = [
            "pg_dump",
            *postgresql_connection(entry),
            "--format=custom",
            "--compress=0",
            *entry.options,
            f"--dbname={database}",
        ]
        unit = unit_name(entry, database, single=single)
        units.append(DumpUnit(entry.name, entry.kind, unit, tuple(_as_user(argv, run_as))))
    return units


def mariadb_argv(entry: DumpConfig, program: str = "mariadb-dump") -> list[str]:
    """One SQL stream for every database asked for (CREATE DATABASE and USE included, so
    ``mariadb < dump`` rebuilds them), read in one consistent InnoDB transaction."""
    argv = [program, "--single-transaction", "--routines", "--events", "--triggers"]
    if entry.user:
        argv.append(f"--user={entry.user}")
    if entry.host:
        argv.append(f"--host={entry.host}")
    if entry.port:
        argv.append(f"--port={entry.port}")
    if entry.socket:
        argv.append(f"--socket={entry.socket}")
    argv += entry.options
    if list(entry.databases) == [ALL]:
        return [*argv, "--all-databases"]
    return [*argv, "--databases", *entry.databases]


def sqlite_argv(entry: DumpConfig, python: str = sys.executable) -> list[str]:
    """keyforge's own online backup of the file (SQLite's backup API, see sqlite_online)."""
    return [python, "-m", "keyforge.sender.sqlite_online", entry.path]


def check_entry(entry: DumpConfig, where: str) -> None:
    """What each kind needs, and nothing it would silently ignore."""
    needs: Mapping[str, tuple[str, ...]] = {
        "postgresql": (),
        "mariadb": (),
        "sqlite": ("path",),
        "command": ("command",),
    }
    if not entry.name or not entry.kind:
        raise ConfigError(f"{where} needs a name and a kind ({', '.join(needs)})")
    for key in needs[entry.kind]:
        if not getattr(entry, key):
            raise ConfigError(f'{where} kind = "{entry.kind}" needs {key}')
    foreign = {
        "postgresql": ("path", "command", "socket"),
        "mariadb": ("path", "command"),
        "sqlite": ("command", "user", "host", "port", "socket", "options"),
        "command": ("path", "user", "host", "port", "socket", "options"),
    }[entry.kind]
    defaults = DumpConfig()
    for key in foreign:
        if getattr(entry, key) != getattr(defaults, key):
            raise ConfigError(f'{where} {key} means nothing for kind = "{entry.kind}"')
    if entry.kind in ("sqlite", "command") and entry.databases != defaults.databases:
        raise ConfigError(f'{where} databases means nothing for kind = "{entry.kind}"')
    if ALL in entry.databases and len(entry.databases) > 1:
        raise ConfigError(f'{where} databases: "all" stands alone')


def check_dumps(config: Config) -> None:
    for index, entry in enumerate(config.dumps):
        check_entry(entry, f"[[dumps]] #{index + 1} ({entry.name or 'no name'}):")


# --- the edge: which user, which databases -----------------------------------------------------


def postgresql_run_as(entry: DumpConfig) -> str | None:
    """As root, the dump runs as the system user of the role's name when there is one, as
    Debian's peer authentication expects (root may not log in as postgres); else as is."""
    role = postgresql_role(entry)
    if os.geteuid() != 0 or role == "root":
        return None
    try:
        pwd.getpwnam(role)
    except KeyError:
        return None
    return role


def plan_units(entry: DumpConfig) -> list[DumpUnit]:
    """The streams of one entry; for PostgreSQL's ``all``, asks the server for its databases."""
    if entry.kind == "postgresql":
        run_as = postgresql_run_as(entry)
        databases = list(entry.databases)
        if databases == [ALL]:
            listed = runner.run(postgresql_list_argv(entry, run_as), timeout=120).stdout
            databases = [n for n in listed.decode("utf-8", "replace").splitlines() if n]
        return postgresql_units(entry, databases, run_as)
    if entry.kind == "mariadb":
        program = "mariadb-dump" if tools.find_program("mariadb-dump") else "mysqldump"
        return [DumpUnit(entry.name, entry.kind, entry.name, tuple(mariadb_argv(entry, program)))]
    if entry.kind == "sqlite":
        return [DumpUnit(entry.name, entry.kind, entry.name, tuple(sqlite_argv(entry)))]
    return [DumpUnit(entry.name, entry.kind, entry.name, entry.command)]


def describe(config: Config) -> list[str]:
    """--dry-run's lines: each entry and its producer (PostgreSQL's ``all`` is listed when the
    run asks the server, so a dry run connects to no database)."""
    lines = []
    for entry in config.dumps:
        if entry.kind == "postgresql" and list(entry.databases) == [ALL]:
            lines.append(f"  dump {entry.name}: pg_dump per database and pg_dumpall --globals-only")
            continue
        for unit in plan_units(entry):
            lines.append(f"  dump {unit.unit}: {' '.join(unit.argv)}")
    return lines


# --- the edge: one stream into one archive -------------------------------------------------------

# the archive pipeline a dump goes through (keyforge.sender.pipeline.write_archive with the
# run's [backup] settings): the producer's argv, the archive's final path, a judge of the
# producer's result (it raises to discard the archive) and the reporter's tick; it commits the
# archive under its final name (compressed, and encrypted with encrypt_to, in one stream)
Judge = Callable[[runner.Result], None]
Write = Callable[[Sequence[str], Path, Judge, Callable[[int], None]], Written]


def producer_failure(unit: DumpUnit, result: runner.Result) -> str | None:
    """Why a dump is no dump, or None: a non-zero exit, a signal, or nothing written. The
    producer stage (dump_producer) says how the dump ended and what it wrote."""
    name = runner_name(unit.argv)
    ended = dump_producer.read_trailer(result.stderr)
    if ended is None:  # the counting stage itself died: killed with the whole run, say
        code = result.returncode
        return f"dump {unit.unit}: {name} was killed (exit {code})"
    produced, returncode, stderr = ended
    if returncode < 0:
        return f"dump {unit.unit}: {name} was killed (signal {-returncode})"
    if returncode == 127 and stderr.strip().endswith("command not found"):
        return f"dump {unit.unit}: {runner.first_error_line(stderr, fallback=name)}"
    if returncode != 0:
        detail = runner.first_error_line(stderr, fallback=f"exit {returncode}")
        return f"dump {unit.unit}: {name} failed: {detail}"
    if produced == 0:
        return f"dump {unit.unit}: {name} wrote nothing"
    return None


def producer_warnings(unit: DumpUnit, result: runner.Result) -> tuple[str, ...]:
    """What a dump that succeeded said on stderr, each line a warning naming it."""
    ended = dump_producer.read_trailer(result.stderr)
    text = ended[2] if ended is not None else result.stderr
    return tuple(f"dump {unit.unit}: {ln.strip()}" for ln in text.splitlines() if ln.strip())


def runner_name(argv: Sequence[str]) -> str:
    """The program a dump's argv runs, past runuser: what the user wrote, not our wrapper."""
    rest = list(argv)
    if rest[:1] == ["runuser"] and "--" in rest:
        rest = rest[rest.index("--") + 1 :]
    return Path(rest[0]).name if rest else "command"


def make_dump(
    config: Config,
    unit: DumpUnit,
    stamp: str,
    write: Write,
    on_progress: Callable[[int], None],
) -> ArchiveEntry:
    """Write one dump's archive through ``write``; nothing stays behind when it fails."""
    encrypted = bool(config.backup.encrypt_to)
    name = dump_name(config.host, unit.unit, stamp, config.backup.compression, encrypted=encrypted)

    def judge(result: runner.Result) -> None:
        problem = producer_failure(unit, result)
        if problem is not None:
            raise CommandError(problem)

    try:
        producer = dump_producer.argv(unit.argv)
        written = write(producer, config.backup_dir / name, judge, on_progress)
    except KeyforgeError as err:
        if not str(err).startswith(f"dump {unit.unit}"):
            raise type(err)(f"dump {unit.unit}: {err}") from err
        raise
    warnings = producer_warnings(unit, written.producer)
    return ArchiveEntry(
        name=name,
        source=dump_source(unit.unit),
        kind=DUMP,
        chain=name,
        size=written.size,
        digest=written.digest,
        warnings=warnings,
        encrypted_to=written.encrypted_to,
    )


@dataclasses.dataclass
class DumpOutcome:
    entries: list[ArchiveEntry]
    failures: list[KeyforgeError]
    tried: int


def run_dumps(
    config: Config,
    stamp: str,
    write: Write,
    commit: Callable[[ArchiveEntry], None],
    *,
    on_progress: Callable[[str, int, float], None] | None = None,
) -> DumpOutcome:
    """Every [[dumps]] entry, each unit on its own: ``commit`` records each finished archive
    (the run manifest), a failure is remembered and the next unit tried."""
    outcome = DumpOutcome([], [], 0)
    for entry in config.dumps:
        try:
            units = plan_units(entry)
        except KeyforgeError as err:
            outcome.tried += 1
            outcome.failures.append(type(err)(f"dump {entry.name}: {err}"))
            continue
        for unit in _unique(units, outcome):
            outcome.tried += 1
            started = time.monotonic()

            def tick(written: int, unit: DumpUnit = unit, started: float = started) -> None:
                if on_progress is not None:
                    on_progress(f"dump {unit.unit}", written, time.monotonic() - started)

            try:
                archive = make_dump(config, unit, stamp, write, tick)
            except KeyforgeError as err:
                outcome.failures.append(err)
                continue
            try:
                commit(archive)
            except BaseException as err:
                # an archive no manifest lists would look complete yet be unverifiable
                with contextlib.suppress(OSError):
                    (config.backup_dir / archive.name).unlink()
                if not isinstance(err, KeyforgeError):
                    raise
                outcome.failures.append(type(err)(f"dump {unit.unit}: {err}"))
                continue
            outcome.entries.append(archive)
    return outcome


def _unique(units: Iterable[DumpUnit], outcome: DumpOutcome) -> list[DumpUnit]:
    """Two databases whose names sanitise alike would share an archive: both fail, by name."""
    seen: dict[str, int] = {}
    units = list(units)
    for unit in units:
        seen[unit.unit] = seen.get(unit.unit, 0) + 1
    kept = []
    for unit in units:
        if seen[unit.unit] > 1:
            outcome.tried += 1
            outcome.failures.append(
                CommandError(f"dump {unit.unit}: two databases of {unit.entry} share this name")
            )
        else:
            kept.append(unit)
    return kept
