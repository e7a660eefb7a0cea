"""How long `keyforge demo` takes as a whole process, against its target of one minute.

    python benchmarks/bench_demo.py [--repeat 2]

(with keyforge installed, or from a checkout with PYTHONPATH=.)

Runs `python -m keyforge demo` back to back (the second run right after the first, as a user
trying it twice would) and prints each run's wall time, the target (60 s on 2 cores) and the
ratio to it (ratio >= 1.0 meets the target), with the machine's core count and load beside it.
This is a measurement, not a test: nothing fails when the target is missed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

TARGET_SECONDS = 60.0


def one_run() -> float:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "keyforge", "demo"], capture_output=True, text=True, check=False
    )
    seconds = time.monotonic() - started
    if result.returncode != 0:
        sys.exit(f"keyforge demo failed (exit {result.returncode}):\n{result.stderr}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"cores: {os.cpu_count()}, load average before: {load}")
    for attempt in range(1, args.repeat + 1):
        seconds = one_run()
        ratio = TARGET_SECONDS / seconds
        print(
            f"run {attempt}: keyforge demo {seconds:6.1f} s   target < {TARGET_SECONDS:.0f} s   "
            f"ratio {ratio:5.1f}"
        )


if __name__ == "__main__":
    main()
