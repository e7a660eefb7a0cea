"""keyforge's PostgreSQL dump against ``pg_dump -Fc`` typed by hand, on the same database.

Starts a private PostgreSQL server (as the dump tests do: tests/integration/databases.py),
fills one database with about --size-mb of rows (default 1024: 1 GB; text that compresses like
real data and some that does not), then times, in one run and alternately:

    keyforge  keyforge backup with one [[dumps]] entry (pg_dump -Fc -Z0 | zstd -T0 -3, hashed
              and tested as it is written, committed, listed in the manifest)
    by hand   pg_dump -Fc -f FILE (its own zlib compression), as the same user

and prints wall time, CPU (user + system of every process) and dump size for each, with the
ratio of wall times (target: keyforge <= 1.10x the hand-typed command). A third line, the
pipeline keyforge runs typed by hand (pg_dump -Fc -Z0 | zstd -T0 -3 > FILE), shows what
keyforge's own work (hashing, testing, committing, the manifest) costs on top of it.

    python3 benchmarks/bench_dump.py [--size-mb 1024] [--repeat 3] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.databases import Postgres, postgres_server  # noqa: E402

TARGET_RATIO = 1.10
ROW_BYTES = 210  # about what one row below takes in the table


@dataclass
class Sample:
    wall: float
    cpu: float


def measure(argv: list[str]) -> Sample:
    """Run argv; wall time and the CPU of it and all its waited-for descendants."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            err.seek(0)
            detail = err.read().decode(errors="replace")
            raise SystemExit(f"benchmark step failed ({code}): {' '.join(argv)}\n{detail}")
    return Sample(wall, usage.ru_utime + usage.ru_stime)


def fill(pg: Postgres, size_mb: int) -> int:
    """A database ``bench`` of about size_mb: md5 text (compresses about 2x), a number, a
    timestamp and a random blob per row, as an application's tables hold them."""
    pg.psql("DROP DATABASE IF EXISTS bench")
    pg.psql("CREATE DATABASE bench")
    rows = max(1000, size_mb * 1024 * 1024 // ROW_BYTES)
    pg.psql(
        "CREATE TABLE events (id bigint PRIMARY KEY, note text, amount numeric, at timestamptz,"
        " payload bytea); "
        f"INSERT INTO events SELECT g, md5(g::text) || ' ' || md5((g * 7)::text) || ' order', "
        "g % 9973, now() - g * interval '1 second', "
        "decode(substr(md5(random()::text) || md5(random()::text), 1, 64), 'hex') "
        f"FROM generate_series(1, {rows}) g",
        "bench",
    )
    return int(pg.psql("SELECT pg_database_size('bench')", "bench").strip())


def keyforge_config(work: Path, pg: Postgres) -> Path:
    source = work / "empty-source"
    source.mkdir(exist_ok=True)
    entry = pg.dump_entry("bench", ["bench"])
    text = (
        f'[general]\nhost = "bench"\nstate_dir = "{work}/state"\n'
        f'[backup]\nsources = ["{source}"]\ndirectory = "{work}/backups"\n'
        f'allow_empty = ["{source}"]\nnice = 0\nionice = "none"\n[[dumps]]\n'
        + "".join(f"{key} = {json.dumps(value)}\n" for key, value in entry.items())
    )
    path = work / "keyforge.toml"
    path.write_text(text)
    return path


def human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="database size (default 1024)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each side (default 3)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    keyforge = shutil.which("keyforge", path=str(Path(sys.executable).parent)) or "keyforge"

    work = Path(tempfile.mkdtemp(prefix="keyforge-bench-dump-"))
    work.chmod(0o755)  # the dump by hand runs as the server's account and writes here
    try:
        with postgres_server() as pg:
            started = time.perf_counter()
            on_disk = fill(pg, args.size_mb)
            filled = time.perf_counter() - started
            print(f"database: {human(on_disk)} on disk, filled in {filled:.0f} s")
            config = keyforge_config(work, pg)
            hand_out = work / "by-hand"
            hand_out.mkdir()
            hand_out.chmod(0o777)
            ours: list[Sample] = []
            theirs: list[Sample] = []
            same: list[Sample] = []
            target, piped = hand_out / "bench.pgdump", hand_out / "bench.pgdump.zst"
            dump_z0 = " ".join(pg.client("pg_dump", "-Fc", "-Z0", "bench"))
            for _ in range(args.repeat):
                shutil.rmtree(work / "backups", ignore_errors=True)
                ours.append(measure([keyforge, "backup", "--config", str(config)]))
                target.unlink(missing_ok=True)
                theirs.append(measure(pg.client("pg_dump", "-Fc", "-f", str(target), "bench")))
                piped.unlink(missing_ok=True)
                script = f"set -o pipefail; {dump_z0} | zstd -T0 -3 -q -c > {piped}"
                same.append(measure(["bash", "-c", script]))
            [dump] = (work / "backups").glob("bench-bench.*.dump.zst")
            ours_size, theirs_size = dump.stat().st_size, target.stat().st_size
            same_size = piped.stat().st_size
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    def row(name: str, samples: list[Sample], size: int) -> float:
        wall = statistics.median(s.wall for s in samples)
        cpu = statistics.median(s.cpu for s in samples)
        print(f"  {name:<9} wall {wall:7.2f} s   cpu {cpu:7.2f} s   dump {human(size)}")
        return wall

    print(f"median of {args.repeat} run(s) each:")
    ours_wall = row("keyforge", ours, ours_size)
    theirs_wall = row("by hand", theirs, theirs_size)
    same_wall = row("same pipe", same, same_size)
    print(f"keyforge / the same pipeline by hand: {ours_wall / same_wall:.2f}x")
    ratio = ours_wall / theirs_wall
    verdict = "ok" if ratio <= TARGET_RATIO else "OVER TARGET"
    print(f"ratio keyforge / pg_dump -Fc: {ratio:.2f}x (target <= {TARGET_RATIO:.2f}x): {verdict}")
    return 0 if ratio <= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
