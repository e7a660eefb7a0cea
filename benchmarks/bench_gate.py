"""How long `keyforge gate` takes per connection, against rsync's own `rrsync`, in one run.

    python benchmarks/bench_gate.py [--connections 50] [--python /usr/bin/python3]

Installs keyforge's wheel, built from this checkout, into a fresh venv (the way a receiving
host runs it: the console script in the venv's bin/), then starts, alternately, N connections
of each, both refusing the same pull with SSH_ORIGINAL_COMMAND set as sshd sets it:

* ``/usr/bin/rrsync -wo DIR`` (Debian's restricted rsync, a Python script);
* ``<venv>/bin/keyforge gate --dir DIR --log LOG`` (judges, logs a JSON line, exits 1).

Prints the median and 90th percentile of each, the ratio of the medians and the target
(gate within 1.2x of rrsync), and the time of an allowed decision up to the exec (the gate
execs /bin/true instead of rsync). The interpreter's own start-up is shown for scale. This is a
measurement, not a test: nothing fails when the target is missed.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEELHOUSE = ROOT / "docker" / "wheelhouse"
RRSYNC = "/usr/bin/rrsync"
TARGET = 1.2
PULL = "rsync --server --sender -logDtprze.iLsfxCIvu . {dir}/"
PUSH = "rsync --server -logDtprze.iLsfxCIvu --delete . {dir}/"


def install_venv(work: Path, python: str) -> Path:
    """A fresh venv with keyforge from this checkout; returns its keyforge script."""
    wheels = work / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(wheels), str(ROOT)],
        check=True,
    )  # fmt: skip
    venv = work / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-index"]
    wheel = next(wheels.glob("keyforge-*.whl"))
    if WHEELHOUSE.is_dir():  # the dependencies too, as on a real host
        pip += ["--find-links", str(WHEELHOUSE)]
    else:
        pip.append("--no-deps")
    subprocess.run([*pip, str(wheel)], check=True)
    return venv / "bin" / "keyforge"


def one_connection(argv: list[str], env: dict[str, str], expect: int) -> float:
    start = time.perf_counter()
    result = subprocess.run(
        argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, check=False
    )
    elapsed = time.perf_counter() - start
    if result.returncode != expect:
        raise SystemExit(
            f"{argv[0]} exited {result.returncode}, expected {expect}: {result.stderr!r}"
        )
    return elapsed


def figures(times: list[float]) -> tuple[float, float]:
    ordered = sorted(times)
    return statistics.median(ordered), ordered[max(0, int(len(ordered) * 0.9) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--python", default="/usr/bin/python3", help="the venv's interpreter")
    args = parser.parse_args()
    if not Path(RRSYNC).exists():
        raise SystemExit(f"{RRSYNC} is missing (Debian: apt-get install rsync)")
    work = Path(tempfile.mkdtemp(prefix="keyforge-bench-gate-"))
    try:
        keyforge = install_venv(work, args.python)
        directory = work / "srvbackups"
        directory.mkdir()
        env = {
            "PATH": "/usr/bin:/bin",
            "SSH_CLIENT": "192.0.2.7 50000 22",
            "SSH_CONNECTION": "192.0.2.7 50000 192.0.2.1 22",
            "SSH_ORIGINAL_COMMAND": PULL.format(dir=directory),
        }
        log = work / "gate.log"
        gate = [str(keyforge), "gate", "--dir", str(directory), "--log", str(log)]
        rrsync = [RRSYNC, "-wo", str(directory)]
        python_floor = [args.python, "-c", "pass"]
        venv_floor = [str(keyforge.parent / "python"), "-c", "pass"]
        allowed = [*gate, "--rsync", "/bin/true"]
        push_env = {**env, "SSH_ORIGINAL_COMMAND": PUSH.format(dir=directory)}
        runs: dict[str, list[float]] = {name: [] for name in ("rrsync", "gate", "allowed", "py")}
        for _ in range(3):  # page cache and .pyc files, as on a host that runs it nightly
            one_connection(rrsync, env, 1)
            one_connection(gate, env, 1)
            one_connection(allowed, push_env, 0)
        for _ in range(args.connections):
            runs["rrsync"].append(one_connection(rrsync, env, 1))
            runs["gate"].append(one_connection(gate, env, 1))
            runs["allowed"].append(one_connection(allowed, push_env, 0))
            runs["py"].append(one_connection(venv_floor, env, 0))
        floor = [one_connection(python_floor, env, 0) for _ in range(args.connections)]
        assert log.read_text().count('"event":"refused"') == args.connections + 3
        n = args.connections
        print(f"per connection, {n} each, refusing the same pull (median / p90):")
        for label, times in (
            ("rrsync -wo DIR", runs["rrsync"]),
            ("keyforge gate (venv wheel)", runs["gate"]),
            ("keyforge gate, allowed push up to exec", runs["allowed"]),
            ("venv python -c pass (floor)", runs["py"]),
            (f"{args.python} -c pass (floor)", floor),
        ):
            median, p90 = figures(times)
            print(f"  {label:<42} {median * 1000:7.1f} ms  {p90 * 1000:7.1f} ms")
        ratio = figures(runs["gate"])[0] / figures(runs["rrsync"])[0]
        verdict = "meets" if ratio <= TARGET else "MISSES"
        print(f"gate / rrsync (medians): {ratio:.2f}x; target <= {TARGET}x: {verdict} it")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
