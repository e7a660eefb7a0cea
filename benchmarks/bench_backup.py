"""keyforge backup/restore against the same GNU tar and zstd commands typed by hand.

Builds a synthetic tree (default about 500 MB), then a day-2 state (about 2% of the files
appended to, rewritten, touched, deleted and added, and one directory renamed), and times, in one
run, on the same tree and with the same tar options:

    full         keyforge backup (a master)      vs  tar --listed-incremental ... | zstd -T0 -3
    encrypted    keyforge backup with encrypt_to  vs  the same keyforge backup without (age)
    incremental  keyforge backup (day 2)         vs  the same, on a copy of the day-1 snapshot
    restore      keyforge restore (both archives) vs  zstd -dc | tar -x --listed-incremental=...
                 and vs the same after ssh-keygen -Y verify of each manifest and b3sum of
                 each archive: keyforge's restore checks both before it trusts an archive

For each: wall time, CPU (user + system of every process involved), peak memory (the largest
resident set of any process involved) and archive size, with the ratios the targets ask for.
keyforge runs with nice 0 and no ionice here (--niced keeps its defaults), so both sides compete
for the CPU alike on a shared machine. Every step starts after a sync, with the last run's output
already removed, and each round takes the full-backup and restore steps in a rotated order, so
no step pays for its neighbour's writeback. "hand full + sync" (the hand pipeline, then its
archive flushed to disk, as keyforge does before it names an archive) is shown for reference.
A ratio is the median, over the rounds, of the two steps' ratio within one round: a shared
machine's speed drifts from minute to minute, and steps of the same round see the same speed.

    python3 benchmarks/bench_backup.py [--size-mb 500] [--repeat 3] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

TAR_OPTS = "--xattrs --xattrs-include='*' --acls --sparse --numeric-owner --no-check-device"


@dataclass
class Sample:
    wall: float
    cpu: float
    peak_mb: float


def measure(argv: list[str], env: dict[str, str] | None = None) -> Sample:
    """Run argv; wall time, CPU and peak RSS of it and all its waited-for descendants.

    Every step starts with nothing dirty in the page cache: without the sync, the writeback of
    the step before (an archive the hand pipeline never flushed, a tree just removed) lands
    in whichever step runs next and is charged to it."""
    os.sync()
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark step failed ({proc.returncode}): {' '.join(argv)}")
    return Sample(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)


def sh(script: str) -> list[str]:
    return ["bash", "-c", "set -euo pipefail; " + script]


# --- the synthetic tree --------------------------------------------------------------------


def text_pool(rng: random.Random, size: int) -> bytes:
    words = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 10)))
        for _ in range(4000)
    ]
    out = bytearray()
    while len(out) < size:
        out += (" ".join(rng.choices(words, k=200)) + "\n").encode()
    return bytes(out[:size])


def file_bytes(rng: random.Random, pool: bytes, size: int) -> bytes:
    """About two thirds compressible text, one third random bytes, like a real /var."""
    if rng.random() < 0.33:
        return os.urandom(size)
    start = rng.randrange(0, len(pool) - size)
    return pool[start : start + size]


def build_tree(root: Path, total_mb: int, rng: random.Random, pool: bytes) -> list[Path]:
    files: list[Path] = []
    budget = total_mb * 1024 * 1024
    written = 0
    n = 0
    while written < budget:
        directory = root / f"d{n % 40:02d}" / f"s{(n // 40) % 25:02d}"
        directory.mkdir(parents=True, exist_ok=True)
        size = rng.randint(200_000, 2_000_000) if rng.random() < 0.1 else rng.randint(500, 30_000)
        path = directory / f"file-{n:06d}.dat"
        path.write_bytes(file_bytes(rng, pool, size))
        files.append(path)
        written += size
        n += 1
    return files


def day_two(root: Path, files: list[Path], rng: random.Random, pool: bytes) -> dict[str, int]:
    """About 2% of the files each appended, rewritten, touched, deleted; 2% added; a dir renamed."""
    picks = rng.sample(files, k=max(5, len(files) * 10 // 100))
    share = len(picks) // 5
    counts = {"appended": 0, "rewritten": 0, "touched": 0, "deleted": 0, "added": 0}
    for path in picks[:share]:
        with path.open("ab") as handle:
            handle.write(file_bytes(rng, pool, 2000))
        counts["appended"] += 1
    for path in picks[share : 2 * share]:
        path.write_bytes(file_bytes(rng, pool, path.stat().st_size))
        counts["rewritten"] += 1
    for path in picks[2 * share : 3 * share]:
        path.touch()
        counts["touched"] += 1
    for path in picks[3 * share : 4 * share]:
        path.unlink()
        counts["deleted"] += 1
    for i in range(share):
        path = root / f"d{i % 40:02d}" / "new" / f"added-{i:05d}.dat"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(file_bytes(rng, pool, rng.randint(500, 30_000)))
        counts["added"] += 1
    (root / "d07" / "s03").rename(root / "d07" / "s03-renamed")
    return counts


# --- the runs --------------------------------------------------------------------------------


def keyforge_config(
    path: Path,
    src: Path,
    backup_dir: Path,
    *,
    test: bool,
    niced: bool,
    env: dict[str, str],
    encrypt_to: str = "",
) -> Path:
    """keyforge as it is meant to run: its manifests signed, so restore checks every one."""
    priority = "" if niced else 'nice = 0\nionice = "none"\n'
    encrypt = f'encrypt_to = ["{encrypt_to}"]\n' if encrypt_to else ""
    key = path.with_suffix(".signing-key")
    subprocess.run(
        keyforge("pair", "--signing", str(key)), env=env, check=True, stdout=subprocess.DEVNULL
    )
    path.write_text(
        f'[general]\nhost = "bench"\n[backup]\nsources = ["{src}"]\ndirectory = "{backup_dir}"\n'
        f"full_every = 7\ntest_archives = {'true' if test else 'false'}\n{priority}{encrypt}"
        f'signing_key = "{key}"\n'
    )
    return path


def new_recipient(work: Path) -> str:
    """An age identity in the work directory (keyforge keygen-age's code); its recipient."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from keyforge import age  # noqa: PLC0415 - the tree under test, found only here

    identity = age.new_identity()
    age.write_identity(work / "identity.txt", identity)
    return identity.recipient.text


def keyforge(*args: str) -> list[str]:
    return [sys.executable, "-m", "keyforge", *args]


def archive_of(backup_dir: Path, kind: str) -> Path:
    found = sorted(backup_dir.glob(f"*.{kind}.tar.zst"))
    assert len(found) == 1, found
    return found[0]


Step = tuple[str, Callable[[], list[str]]]  # its name in the results, and its argv once prepared


def run_rounds(
    steps: list[Step], repeat: int, env: dict[str, str], results: dict[str, list[Sample]]
) -> None:
    """Measure every step ``repeat`` times; each round starts one step further on, so no step
    always follows the same neighbour."""
    for round_ in range(repeat):
        by = round_ % len(steps)
        for name, argv in steps[by:] + steps[:by]:
            results[name].append(measure(argv(), env))


def median(samples: list[Sample]) -> Sample:
    return Sample(
        statistics.median(s.wall for s in samples),
        statistics.median(s.cpu for s in samples),
        max(s.peak_mb for s in samples),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=500, help="size of the synthetic tree")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each step (median kept)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--niced", action="store_true", help="keep keyforge's nice/ionice defaults")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="kf-bench-", dir=args.workdir))
    env = dict(os.environ)
    env["PYTHONPATH"] = (
        str(Path(__file__).resolve().parent.parent) + os.pathsep + env.get("PYTHONPATH", "")
    )
    # an installed keyforge has its bytecode compiled; keep it in the work directory, not the tree
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    try:
        run(work, args, env)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def run(work: Path, args: argparse.Namespace, env: dict[str, str]) -> None:
    rng = random.Random(20261128)
    pool = text_pool(rng, 4 * 1024 * 1024)
    src = work / "src"
    t0 = time.perf_counter()
    files = build_tree(src, args.size_mb, rng, pool)
    print(f"tree: {len(files)} files, {args.size_mb} MB, built in {time.perf_counter() - t0:.1f} s")
    # read the tree once so every timed run starts from the same warm page cache (through a
    # pipe: tar skips reading files when it writes to /dev/null)
    subprocess.run(sh(f"tar -cf - -C {src} . | cat > /dev/null"), check=True)

    hand = work / "hand"
    hand.mkdir()
    kf_dirs = {name: work / name for name in ("kf-notest", "kf", "kf-age-notest", "kf-age")}
    recipient = new_recipient(work)
    configs = {
        name: keyforge_config(
            work / f"{name}.toml",
            src,
            d,
            test=not name.endswith("notest"),
            niced=args.niced,
            env=env,
            encrypt_to=recipient if "-age" in name else "",
        )
        for name, d in kf_dirs.items()
    }

    def hand_full() -> list[str]:
        # the last run's archive goes before the clock starts, as keyforge's does (kf_full):
        # freeing its blocks is the step before's cost, not this one's
        for old in (hand / "full.snar", hand / "full.tar.zst"):
            old.unlink(missing_ok=True)
        return sh(
            f"tar --listed-incremental={hand}/full.snar {TAR_OPTS} "
            f"-C {src} -cf - . | zstd -T0 -3 -q -f -o {hand}/full.tar.zst"
        )

    def hand_full_tested() -> list[str]:
        return sh(hand_full()[2] + f"; zstd -t -q {hand}/full.tar.zst")

    def hand_full_synced() -> list[str]:
        # a reference, not a target: keyforge fsyncs an archive before naming it, which the
        # hand pipeline leaves to the kernel's writeback after the clock stopped
        return sh(hand_full()[2] + f"; sync {hand}/full.tar.zst")

    def kf_full(name: str) -> list[str]:
        shutil.rmtree(kf_dirs[name], ignore_errors=True)
        return keyforge("backup", "--config", str(configs[name]))

    results: dict[str, list[Sample]] = {
        k: []
        for k in (
            "hand full",
            "hand full + zstd -t",
            "keyforge full (no test)",
            "keyforge full",
            "keyforge full encrypted (no test)",
            "keyforge full encrypted",
            "hand full + sync",
            "hand incremental",
            "keyforge incremental",
            "hand restore",
            "hand checked restore",
            "keyforge restore",
        )
    }
    full_steps: list[Step] = [
        ("hand full", hand_full),
        ("keyforge full (no test)", lambda: kf_full("kf-notest")),
        ("hand full + zstd -t", hand_full_tested),
        ("keyforge full", lambda: kf_full("kf")),
        ("keyforge full encrypted (no test)", lambda: kf_full("kf-age-notest")),
        ("keyforge full encrypted", lambda: kf_full("kf-age")),
        ("hand full + sync", hand_full_synced),
    ]
    run_rounds(full_steps, args.repeat, env, results)

    counts = day_two(src, files, rng, pool)
    print("day 2: " + ", ".join(f"{v} {k}" for k, v in counts.items()) + ", 1 directory renamed")
    kf_dir = kf_dirs["kf"]
    kf_snar = next((kf_dir / ".snapshots").glob("*.snar"))
    saved_snar = work / "kf-day1.snar"
    shutil.copy2(kf_snar, saved_snar)
    for _ in range(args.repeat):
        (hand / "inc.tar.zst").unlink(missing_ok=True)
        results["hand incremental"].append(
            measure(
                sh(
                    f"cp {hand}/full.snar {hand}/inc.snar; "
                    f"tar --listed-incremental={hand}/inc.snar "
                    f"{TAR_OPTS} -C {src} -cf - . | zstd -T0 -3 -q -f -o {hand}/inc.tar.zst"
                ),
                env,
            )
        )
        for leftover in [
            *kf_dir.glob("*.incremental.tar.zst"),
            *kf_dir.glob("bench.*-*.manifest.json"),
        ]:
            leftover.unlink()
        shutil.copy2(saved_snar, kf_snar)
        results["keyforge incremental"].append(
            measure(keyforge("backup", "--config", str(configs["kf"])), env)
        )

    master, incremental = archive_of(kf_dir, "master"), archive_of(kf_dir, "incremental")
    extract = f"tar -x --listed-incremental=/dev/null {TAR_OPTS} --same-owner --same-permissions"
    # what a careful admin types to trust the archives first: each run manifest's signature
    # (ssh-keygen -Y verify against the pinned key) and each archive's BLAKE3 hash (b3sum, as
    # the manifests record it), as restore checks
    signers = work / "allowed_signers"
    signers.write_text(
        'bench namespaces="keyforge-manifest" '
        + configs["kf"].with_suffix(".signing-key.pub").read_text()
    )
    verify_runs = "; ".join(
        f"ssh-keygen -Y verify -f {signers} -I bench -n keyforge-manifest -s {m}.sig < {m}"
        " > /dev/null || exit 1"
        for m in sorted(kf_dir.glob("bench.*.manifest.json"))
    )

    def fresh(name: str, *, made: bool = True) -> Path:
        out = work / name
        shutil.rmtree(out, ignore_errors=True)
        if made:
            out.mkdir()
        return out

    def hand_checked_restore() -> list[str]:
        out = fresh("hand-checked-restore")
        return sh(
            f"{verify_runs}; b3sum {master} {incremental} > /dev/null; "
            f"zstd -dc -q {master} | {extract} -C {out} -f -; "
            f"zstd -dc -q {incremental} | {extract} -C {out} -f -"
        )

    def hand_restore() -> list[str]:
        out = fresh("hand-restore")
        return sh(
            f"zstd -dc -q {hand}/full.tar.zst | {extract} -C {out} -f -; "
            f"zstd -dc -q {hand}/inc.tar.zst | {extract} -C {out} -f -"
        )

    def kf_restore() -> list[str]:
        out = fresh("kf-restore", made=False)
        return keyforge(
            "restore", "--config", str(configs["kf"]), "--source", str(src), "--to", str(out)
        )

    restore_steps: list[Step] = [
        ("hand checked restore", hand_checked_restore),
        ("hand restore", hand_restore),
        ("keyforge restore", kf_restore),
    ]
    run_rounds(restore_steps, args.repeat, env, results)
    same = (
        subprocess.run(
            ["diff", "-r", "--no-dereference", str(src), str(work / "kf-restore")],
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )

    encrypted = next(kf_dirs["kf-age"].glob("*.master.tar.zst.age"))
    decrypted = subprocess.run(
        sh(f"age -d -i {work / 'identity.txt'} {encrypted} | cmp - {master}"), check=False
    )
    same_plaintext = "yes" if decrypted.returncode == 0 else "NO"
    print(f"encrypted master decrypts to the plaintext master: {same_plaintext}")
    sizes = {
        "full": ((hand / "full.tar.zst").stat().st_size, master.stat().st_size),
        "incremental": ((hand / "inc.tar.zst").stat().st_size, incremental.stat().st_size),
    }
    report(results, sizes, same)


def paired(results: dict[str, list[Sample]], step: str, reference: str) -> float:
    """The median over the rounds of ``step``'s wall time over ``reference``'s in the same
    round (each round runs every step once)."""
    pairs = zip(results[step], results[reference], strict=True)
    return statistics.median(a.wall / b.wall for a, b in pairs)


def report(results: dict[str, list[Sample]], sizes: dict[str, tuple[int, int]], same: bool) -> None:
    med = {k: median(v) for k, v in results.items()}
    print()
    print(f"{'step':28} {'wall s':>8} {'cpu s':>8} {'peak MB':>8}")
    for name, s in med.items():
        print(f"{name:28} {s.wall:8.2f} {s.cpu:8.2f} {s.peak_mb:8.1f}")
    print()
    print(f"{'archive':12} {'hand bytes':>14} {'keyforge bytes':>15}  identical")
    for name, (h, k) in sizes.items():
        print(f"{name:12} {h:14d} {k:15d}  {'yes' if h == k else 'NO'}")
    print()
    checks = [
        ("full / hand", paired(results, "keyforge full (no test)", "hand full"), "<= 1.15"),
        (
            "encrypted full / full",
            paired(results, "keyforge full encrypted (no test)", "keyforge full (no test)"),
            "<= 1.10",
        ),
        (
            "encrypted full / full (tested)",
            paired(results, "keyforge full encrypted", "keyforge full"),
            "<= 1.10",
        ),
        ("full with zstd -t / hand", paired(results, "keyforge full", "hand full"), "<= 1.25"),
        # the same work on both sides: the hand-typed full followed by its own zstd -t
        (
            "full with zstd -t / hand + -t",
            paired(results, "keyforge full", "hand full + zstd -t"),
            "<= 1.25",
        ),
        (
            "incremental - hand (s)",
            med["keyforge incremental"].wall - med["hand incremental"].wall,
            "<= 0.50",
        ),
        ("restore / hand", paired(results, "keyforge restore", "hand restore"), "<= 1.10"),
        # the same work on both sides: signatures and hashes checked before extracting
        (
            "restore / hand checked",
            paired(results, "keyforge restore", "hand checked restore"),
            "<= 1.10",
        ),
        ("keyforge peak MB", max(med[k].peak_mb for k in med if k.startswith("keyforge")), "< 100"),
    ]
    print(f"{'target':30} {'value':>8}  goal")
    for name, value, goal in checks:
        limit = float(goal.split()[-1])
        ok = value < limit if goal.startswith("<") and not goal.startswith("<=") else value <= limit
        print(f"{name:30} {value:8.2f}  {goal:8} {'ok' if ok else 'MISSED'}")
    print(f"restored tree equals day-2 tree: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
