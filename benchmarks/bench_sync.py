"""keyforge sync against the same rsync command typed by hand, over loopback ssh.

Both push the same data through a private sshd on 127.0.0.1 with the same locked key (its
forced command captured from keyforge's own argv), each run into an empty copy. keyforge's run
is the whole command line: Python start, config, guards, lock, rsync, log and syslog.

    python3 benchmarks/bench_sync.py [--megabytes 200] [--rounds 5] [--bwlimit 20m]

Prints each side's median wall time, the ratio (target: at most 1.05) and keyforge's fixed
cost (the difference). Over bare loopback rsync moves a few hundred MB/s, so at small sizes the
fixed cost of starting Python dominates the ratio; ``--bwlimit`` gives both sides the same
rsync bandwidth limit, to see the ratio at the speed of a real offsite link.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))

from sync_lab import locked_receiver

from keyforge.sender import sync


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--bwlimit", default="", help="rsync --bwlimit for both sides, e.g. 20m (default: none)"
    )
    args = parser.parse_args()
    settings = {"bwlimit": args.bwlimit} if args.bwlimit else {}

    with (
        tempfile.TemporaryDirectory(prefix="keyforge-bench-") as tmp,
        locked_receiver(Path(tmp) / "lab") as lab,
    ):
        # distinct random bytes per file, like compressed archives: rsync -z cannot shrink them,
        # and no file repeats another inside the compressor's window
        for i in range(args.megabytes):
            name = f"server1-home.2026{i:04d}.master.tar.zst"
            (lab.source / name).write_bytes(os.urandom(1024 * 1024))
        config_path = lab.write_config(**settings)
        config = lab.config(**settings)
        [target] = sync.select_targets(config.targets, None)
        by_hand = sync.rsync_argv(sync.find_tools(), lab.source, target, config.sync)
        keyforge = [sys.executable, "-m", "keyforge", "sync", "--config", str(config_path)]
        limit = f"; bwlimit {args.bwlimit}" if args.bwlimit else ""
        print(f"data: {args.megabytes} MiB in {args.megabytes} files; rounds: {args.rounds}{limit}")
        print(f"by hand:  {sync.display(by_hand)[:100]}...")
        print(f"keyforge: {' '.join(keyforge)}")

        hand_times: list[float] = []
        keyforge_times: list[float] = []
        for round_number in range(args.rounds):
            # alternate the order so neither side always runs on a warmer cache
            pairs = [(by_hand, hand_times), (keyforge, keyforge_times)]
            if round_number % 2:
                pairs.reverse()
            for argv, times in pairs:
                shutil.rmtree(lab.copy, ignore_errors=True)
                times.append(timed(argv))

    hand = statistics.median(hand_times)
    ours = statistics.median(keyforge_times)
    print(f"rsync by hand: median {hand:.3f} s  ({', '.join(f'{t:.2f}' for t in hand_times)})")
    print(f"keyforge sync: median {ours:.3f} s  ({', '.join(f'{t:.2f}' for t in keyforge_times)})")
    print(f"ratio keyforge/by hand: {ours / hand:.3f} (target <= 1.05)")
    print(f"keyforge's fixed cost (start-up, config, guards, log): {ours - hand:+.3f} s")


if __name__ == "__main__":
    main()
