"""The running-database guard: a source that holds a live database's files, and no dump of it.

tar reads a running server's data directory file by file while the server writes it: the
archive holds pages from different moments and may not start again, and nothing says so when
it is made. A server process's working directory is its data directory (PostgreSQL and
MariaDB both change into it at start), so /proc tells which data directories are live. A
source holding one, not excluded, with no [[dumps]] entry of that kind, is warned about at
every backup, in ``check`` and in ``status``. Reading /proc is the edge; judging is pure.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

from keyforge.config import Config

# a server's process name (/proc/PID/comm) -> the [[dumps]] kind that dumps it
SERVERS = {
    "postgres": "postgresql",
    "postmaster": "postgresql",
    "mariadbd": "mariadb",
    "mysqld": "mariadb",
}


@dataclasses.dataclass(frozen=True, order=True)
class RunningDatabase:
    data_dir: Path
    kind: str


def running_databases(proc: Path = Path("/proc")) -> list[RunningDatabase]:
    """The data directories of the database servers running now (those whose working
    directory keyforge may read: root sees every one)."""
    found: set[RunningDatabase] = set()
    try:
        pids = [p for p in proc.iterdir() if p.name.isdigit()]
    except OSError:
        return []
    for pid in pids:
        try:
            kind = SERVERS.get((pid / "comm").read_text().strip())
            if kind is None:
                continue
            found.add(RunningDatabase((pid / "cwd").readlink(), kind))
        except OSError:
            continue  # gone meanwhile, or another user's
    return sorted(found)


def _inside(path: Path, directory: Path) -> bool:
    return path == directory or path.is_relative_to(directory)


def unguarded(config: Config, running: Iterable[RunningDatabase]) -> list[str]:
    """One warning per running server whose data directory a source archives with no dump of
    its kind configured (pure)."""
    kinds = {entry.kind for entry in config.dumps}
    excluded = [Path(p) for p in config.backup.exclude if p.startswith("/")]
    warnings = []
    for database in running:
        if database.kind in kinds or any(_inside(database.data_dir, e) for e in excluded):
            continue
        for source in config.backup.sources:
            if _inside(database.data_dir, Path(source)):
                warnings.append(
                    f"{source} holds {database.data_dir}, the data directory of a running "
                    f"{database.kind} server, and no [[dumps]] entry has kind = "
                    f'"{database.kind}": its archive may not start again; add a dump, or '
                    "exclude the directory"
                )
                break
    return warnings


def warnings(config: Config) -> list[str]:
    return unguarded(config, running_databases())
