"""`keyforge install` against real processes: concurrent installs and a crash mid-write."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from keyforge.errors import FileError
from keyforge.receiver import install
from keyforge.ssh import authorized_keys as ak

RSYNC = "rsync --server -logDtprze.iLsfxCIvu --delete . srvbackups/"


def public_line(comment: str) -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    raw = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return f"{raw.decode('ascii')} {comment}"


def entry_for(line: str) -> ak.Entry:
    key = ak.parse_public_key(line)
    return install.locked_entry(key, from_patterns=["203.0.113.7"], command=RSYNC)


def installed_keys(path: Path) -> list[str]:
    return [line.entry.comment for line in ak.parse(path.read_text()) if line.entry is not None]


def _install_slowly(path: str, line: str, barrier: multiprocessing.synchronize.Barrier) -> None:
    # widen the read-modify-write window so a missing lock would lose an update every time
    real_plan = install.plan_install

    def slow_plan(*args: object, **kwargs: object) -> install.Plan:
        plan = real_plan(*args, **kwargs)  # type: ignore[arg-type]
        time.sleep(0.2)
        return plan

    install.plan_install = slow_plan  # type: ignore[assignment]
    barrier.wait()
    install.install_key(Path(path), entry_for(line))


def test_concurrent_installs_of_different_keys_all_land(tmp_path: Path) -> None:
    target = tmp_path / ".ssh" / "authorized_keys"
    target.parent.mkdir(mode=0o700)
    target.write_text("# keep me\n")
    lines = [public_line(f"sender{i}@server1") for i in range(4)]
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(len(lines))
    workers = [
        context.Process(target=_install_slowly, args=(str(target), line, barrier)) for line in lines
    ]

    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)

    assert [worker.exitcode for worker in workers] == [0] * len(lines)
    assert target.read_text().startswith("# keep me\n")
    assert sorted(installed_keys(target)) == sorted(f"sender{i}@server1" for i in range(4))


@pytest.mark.slow
def test_concurrent_cli_processes_all_land(tmp_path: Path) -> None:
    target = tmp_path / ".ssh" / "authorized_keys"
    commands = []
    for i in range(3):
        pub = tmp_path / f"k{i}.pub"
        pub.write_text(public_line(f"cli{i}@server1") + "\n")
        commands.append(
            [sys.executable, "-m", "keyforge", "install", "--key", str(pub),
             "--from", "203.0.113.7", "--command", RSYNC, "--authorized-keys", str(target)]
        )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(install.__file__).resolve().parent.parent)}

    procs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for argv in commands]  # fmt: skip
    outcomes = [proc.communicate(timeout=60) for proc in procs]

    assert [proc.returncode for proc in procs] == [0, 0, 0], outcomes
    assert sorted(installed_keys(target)) == ["cli0@server1", "cli1@server1", "cli2@server1"]
    assert oct(target.stat().st_mode & 0o777) == "0o600"


def test_a_crash_before_the_rename_leaves_the_old_file_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ssh = tmp_path / ".ssh"
    ssh.mkdir(mode=0o700)
    target = ssh / "authorized_keys"
    old = "# keep me\n" + public_line("admin@laptop") + "\n"
    target.write_text(old)
    real_replace = Path.replace

    def crash_on_target(self: Path, dest: str | os.PathLike[str]) -> Path:
        if Path(dest) == target:
            raise OSError(5, "Input/output error")
        return real_replace(self, dest)

    monkeypatch.setattr(Path, "replace", crash_on_target)

    with pytest.raises(FileError, match="cannot write"):
        install.install_key(target, entry_for(public_line("foo@server1")))

    assert target.read_text() == old
    leftovers = [p.name for p in ssh.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_a_killed_writer_leaves_the_old_file_intact(tmp_path: Path) -> None:
    ssh = tmp_path / ".ssh"
    ssh.mkdir(mode=0o700)
    target = ssh / "authorized_keys"
    old = "# keep me\n" + public_line("admin@laptop") + "\n"
    target.write_text(old)
    context = multiprocessing.get_context("fork")
    child = context.Process(target=_die_before_rename, args=(str(target),))

    child.start()
    child.join(timeout=60)

    assert child.exitcode == 9
    assert target.read_text() == old
    assert [p.name for p in ssh.iterdir() if p.name.endswith(".tmp")] != []
    # the lock died with the process: the next install goes through
    result = install.install_key(target, entry_for(public_line("foo@server1")))
    assert installed_keys(target) == ["admin@laptop", "foo@server1"]
    assert [p.name for p in ssh.iterdir() if p.name.endswith(".tmp")] == []
    assert any("left over by an interrupted run" in w for w in result.warnings)


def _die_before_rename(path: str) -> None:
    target = Path(path)
    real_replace = Path.replace

    def die_on_target(self: Path, dest: str | os.PathLike[str]) -> Path:
        if Path(dest) == target:
            os._exit(9)  # no cleanup at all, as with SIGKILL or a power cut
        return real_replace(self, dest)

    Path.replace = die_on_target  # type: ignore[method-assign]
    install.install_key(target, entry_for(public_line("foo@server1")))
