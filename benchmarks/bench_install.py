"""How fast `keyforge install` and the authorized_keys parser are, against their targets.

    python benchmarks/bench_install.py [--lines 10000] [--parse-lines 100000] [--repeat 5]

(with keyforge installed, or from a checkout with PYTHONPATH=.)

Prints three figures, each with its target and the ratio to it (ratio >= 1.0 meets the target):

* installing one key into an authorized_keys file of 10,000 lines (lock, parse, plan, verify,
  backup, atomic write with fsyncs), target < 200 ms;
* parsing a 100,000-line file, target > 200,000 lines/s on one core;
* `keyforge --version` as a whole process, target 0.15 s (a bare Typer app takes about 0.33 s).

Every key in the files is a distinct real ed25519 key, so the parser's caches get no free hits.
This is a measurement, not a test: nothing fails when a target is missed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from keyforge.receiver import install
from keyforge.ssh import authorized_keys as ak

RSYNC = "rsync --server -logDtprze.iLsfxCIvu --delete . srvbackups/"


def public_lines(count: int) -> list[str]:
    lines = []
    for i in range(count):
        key = ed25519.Ed25519PrivateKey.generate().public_key()
        raw = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        lines.append(f"{raw.decode('ascii')} user{i}@host{i % 97}")
    return lines


def authorized_keys_text(keys: list[str]) -> str:
    """A plausible file: mostly plain keys, some with options, a comment every 50 lines."""
    out = []
    for i, line in enumerate(keys):
        if i % 50 == 0:
            out.append(f"# block {i // 50}")
        if i % 10 == 0:
            out.append(f'restrict,from="10.{i % 250}.0.0/16",command="/usr/bin/true" {line}')
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def best_of(repeat: int, run: Callable[[], None]) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def show(label: str, value: str, target: str, ratio: float) -> None:
    verdict = "meets" if ratio >= 1.0 else "MISSES"
    print(f"{label:<44} {value:>14}   target {target:<16} ratio {ratio:6.2f}  ({verdict})")


def bench_install(keys: list[str], repeat: int) -> None:
    text = authorized_keys_text(keys)
    lines = text.count("\n")
    wanted = install.locked_entry(
        ak.parse_public_key(public_lines(1)[0]), from_patterns=["203.0.113.7"], command=RSYNC
    )
    with tempfile.TemporaryDirectory() as scratch:
        ssh = Path(scratch) / ".ssh"
        ssh.mkdir(mode=0o700)
        target = ssh / "authorized_keys"

        def one_install() -> None:
            target.write_text(text)
            target.chmod(0o600)
            start = time.perf_counter()
            result = install.install_key(target, wanted)
            elapsed.append(time.perf_counter() - start)
            assert result.action == "added"

        elapsed: list[float] = []
        for _ in range(repeat):
            one_install()
        seconds = min(elapsed)
    show(f"install one key into {lines:,} lines", f"{seconds * 1000:.1f} ms", "< 200 ms",
         0.200 / seconds)  # fmt: skip
    plan_seconds = best_of(repeat, lambda: install.plan_install(text, wanted))
    print(f"{'  of which planning (pure, no I/O)':<44} {plan_seconds * 1000:>11.1f} ms")


def bench_parse(keys: list[str], repeat: int) -> None:
    text = authorized_keys_text(keys)
    lines = text.count("\n")
    seconds = best_of(repeat, lambda: ak.parse(text))
    rate = lines / seconds
    show(f"parse {lines:,} lines", f"{rate:,.0f} lines/s", "> 200,000/s", rate / 200_000)


def version_argv() -> list[str]:
    script = shutil.which("keyforge")
    return [script, "--version"] if script else [sys.executable, "-m", "keyforge", "--version"]


def bench_version(repeat: int) -> None:
    argv = version_argv()
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "0"}
    subprocess.run(argv, check=True, capture_output=True, env=env)  # warm the bytecode cache
    seconds = best_of(
        repeat, lambda: subprocess.run(argv, check=True, capture_output=True, env=env)
    )
    how = "keyforge --version" if argv[0].endswith("keyforge") else "python -m keyforge --version"
    show(how, f"{seconds:.3f} s", "0.15 s", 0.15 / seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=10_000, help="keys in the install file")
    parser.add_argument("--parse-lines", type=int, default=100_000, help="keys in the parse file")
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure; best one counts")
    args = parser.parse_args()

    started = time.perf_counter()
    keys = public_lines(max(args.lines, args.parse_lines))
    print(f"(made {len(keys):,} distinct ed25519 keys in {time.perf_counter() - started:.1f} s)")
    bench_install(keys[: args.lines], args.repeat)
    bench_parse(keys[: args.parse_lines], args.repeat)
    bench_version(args.repeat)


if __name__ == "__main__":
    main()
