"""keyforge find, restore --path and drill against the tar and zstd commands typed by hand.

Builds a synthetic tree (default 20,000 small files in 200 directories), backs it up with
keyforge (a master, then an incremental after changing 2% of the files), and times in one run:

    find          keyforge find NAME                  vs  zstd -dc A | tar -tv | grep, per archive
    restore-path  keyforge restore --path ONE_FILE    vs  zstd -dc A | tar -x ONE_FILE, per archive
    drill         keyforge drill                      vs  sha256sum + zstd -dc | tar -x + tar -tv

keyforge's find reads tar's listing of each archive and then, with Python's reader, only the
archive's head up to its last directory (the directory lists tar's listing leaves out); the rest
is parsing and Python's start-up, which a grep does not pay.

    python3 benchmarks/bench_catalog.py [--files 20000] [--repeat 3] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


def sh(script: str) -> list[str]:
    return ["bash", "-c", "set -euo pipefail; " + script]


def build(src: Path, files: int) -> None:
    for index in range(files):
        path = src / f"dir{index % 200:03d}" / f"file{index:06d}.conf"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes((f"setting {index} = value\n" * (1 + index % 40)).encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-catalog-", dir=args.workdir))
    keyforge = [sys.executable, "-m", "keyforge"]
    try:
        src, backups = work / "src", work / "backups"
        build(src, args.files)
        cfg = work / "keyforge.toml"
        cfg.write_text(
            f'[general]\nhost = "bench"\n[backup]\nsources = ["{src}"]\n'
            f'directory = "{backups}"\nnice = 0\nionice = "none"\nshrink_warn_percent = 0\n'
        )
        subprocess.run([*keyforge, "backup", "-c", str(cfg)], check=True, capture_output=True)
        for index in range(0, args.files, 50):
            path = src / f"dir{index % 200:03d}" / f"file{index:06d}.conf"
            path.write_bytes(b"changed\n")
        stamp = dt.datetime.now().strftime("%Y%m%d")
        subprocess.run([*keyforge, "backup", "-c", str(cfg)], check=True, capture_output=True)
        archives = sorted(p for p in backups.iterdir() if p.name.endswith(".tar.zst"))
        target = "file000050.conf"
        member = f"./dir050/{target}"
        listing = " ; ".join(
            f"zstd -dcq {a} | tar -tv --listed-incremental=/dev/null -f - | grep -F {target}"
            for a in archives
        )
        restore_by_hand = " ; ".join(
            f"zstd -dcq {a} | tar -x --listed-incremental=/dev/null -C {work}/hand -f - "
            f"{member} 2>/dev/null || true"
            for a in archives
        )
        drill_by_hand = " ; ".join(
            f"sha256sum {a} >/dev/null; zstd -dcq {a} | tar -x --listed-incremental=/dev/null "
            f"-C {work}/hand-drill -f - ; zstd -dcq {a} | tar -tv -f - >/dev/null"
            for a in archives
        )
        cases = {
            "find": (
                [*keyforge, "find", "-c", str(cfg), target],
                sh(listing),
            ),
            "restore-path": (
                [*keyforge, "restore", "-c", str(cfg), "--path", f"{src}/dir050/{target}",
                 "--to", str(work / "one")],
                sh(f"rm -rf {work}/hand; mkdir {work}/hand; {restore_by_hand}"),
            ),
            "drill": (
                [*keyforge, "drill", "-c", str(cfg), "--scratch", str(work)],
                sh(f"rm -rf {work}/hand-drill; mkdir {work}/hand-drill; {drill_by_hand}"),
            ),
        }  # fmt: skip
        env = {**os.environ, "KEYFORGE_STATE_DIR": str(work / "state")}
        print(f"{args.files} files, {len(archives)} archives ({stamp}), best of {args.repeat}")
        print(f"{'case':<14}{'keyforge s':>12}{'by hand s':>12}{'ratio':>8}")
        for name, (ours, theirs) in cases.items():
            mine, hand = [], []
            for _ in range(args.repeat):
                shutil.rmtree(work / "one", ignore_errors=True)
                mine.append(timed(ours, env))
                hand.append(timed(theirs))
            best_mine, best_hand = min(mine), min(hand)
            print(
                f"{name:<14}{best_mine:>12.2f}{best_hand:>12.2f}{best_mine / best_hand:>8.2f}"
                f"   (median {statistics.median(mine):.2f} / {statistics.median(hand):.2f})"
            )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
