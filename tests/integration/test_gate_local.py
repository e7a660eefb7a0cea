"""Real rsync pushes through ``keyforge gate`` on this host, no sshd needed.

A fake ``ssh`` does what ssh and sshd do with a command: join the words after the host with
single spaces into SSH_ORIGINAL_COMMAND, then run the key's forced command (the gate line
``keyforge install --gate`` writes) with ``sh -c``. A second fake rewrites the client's flag
string first, as an older or newer rsync would send it.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fake_ssh import write_fake_ssh

from keyforge.receiver import gate

pytestmark = [
    pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed"),
    pytest.mark.slow,
]

ROOT = Path(__file__).resolve().parents[2]
# where this host's rsync has --confine-root and --drop-D, the pushes go through them too
CONFINE = gate.rsync_can_confine(gate.rsync_program())


class Receiver:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.directory = root / "srvbackups"
        self.directory.mkdir()
        self.log = root / "gate.log"
        self.source = root / "source"
        (self.source / "etc").mkdir(parents=True)
        (self.source / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
        (self.source / "with space;semi").write_text("odd name\n")
        (self.source / "link").symlink_to("/etc/hostname")
        self.ssh = write_fake_ssh(root / "ssh")
        program = root / "keyforge"
        program.write_text(
            f"#!/bin/sh\nPYTHONPATH={shlex.quote(str(ROOT))} exec {shlex.quote(sys.executable)}"
            " -c 'from keyforge.entry import main; main()' \"$@\"\n"
        )
        program.chmod(0o755)
        self.program = str(program)

    def forced(self, expect: str | None = None) -> str:
        config = gate.GateConfig(
            str(self.directory),
            home=str(self.root),
            expect=expect,
            log=str(self.log),
            rsync=gate.rsync_program(),
            confine=CONFINE,
        )
        return gate.gate_command(self.program, config)

    def rsync(self, *args: str, forced: str, rewrite: str = "") -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "KEYFORGE_TEST_FORCED": forced,
            "KEYFORGE_TEST_REWRITE": rewrite,
        }
        return subprocess.run(
            ["rsync", f"--rsh={self.ssh}", *args],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )

    def records(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@pytest.fixture
def receiver(tmp_path: Path) -> Receiver:
    return Receiver(tmp_path)


def push_spec(receiver: Receiver, path: str = "") -> str:
    return f"foo@receiver:{path or receiver.directory}/"


def test_a_push_through_the_gate_arrives_with_links_munged(receiver: Receiver) -> None:
    result = receiver.rsync(
        "-az", "--delete", f"{receiver.source}/", push_spec(receiver), forced=receiver.forced()
    )

    assert result.returncode == 0, result.stderr
    assert (receiver.directory / "etc" / "passwd").read_text().startswith("root:")
    assert (receiver.directory / "with space;semi").read_text() == "odd name\n"
    assert os.readlink(receiver.directory / "link") == "/rsyncd-munged//etc/hostname"
    (record,) = receiver.records()
    assert record["event"] == "allowed"
    assert record["client"] == "192.0.2.10"


def test_delete_stays_inside_the_directory(receiver: Receiver) -> None:
    (receiver.directory / "stale").write_text("gone after the push\n")
    (receiver.root / "beside").write_text("stays\n")
    result = receiver.rsync(
        "-a", "--delete", f"{receiver.source}/", push_spec(receiver), forced=receiver.forced()
    )
    assert result.returncode == 0, result.stderr
    assert not (receiver.directory / "stale").exists()
    assert (receiver.root / "beside").read_text() == "stays\n"


def test_a_pull_is_refused_and_nothing_is_read(receiver: Receiver) -> None:
    (receiver.directory / "secret").write_text("backup data\n")
    target = receiver.root / "pulled"
    target.mkdir()
    result = receiver.rsync(
        "-a", f"foo@receiver:{receiver.directory}/", f"{target}/", forced=receiver.forced()
    )
    assert result.returncode != 0
    assert "keyforge gate: refused: a pull (--sender)" in result.stderr
    assert list(target.iterdir()) == []
    (record,) = receiver.records()
    assert record["event"] == "refused"


@pytest.mark.parametrize(
    ("destination", "reason"),
    [
        ("{root}/elsewhere", "is outside"),
        ("{dir}/../elsewhere", "'..' component"),
        ("{dir}/escape/inner", "symbolic link"),
    ],
)
def test_a_push_outside_the_directory_is_refused(
    receiver: Receiver, destination: str, reason: str
) -> None:
    (receiver.directory / "escape").symlink_to(receiver.root)
    path = destination.format(root=receiver.root, dir=receiver.directory)
    result = receiver.rsync(
        "-a", f"{receiver.source}/", f"foo@receiver:{path}/", forced=receiver.forced()
    )
    assert result.returncode != 0
    assert not (receiver.root / "elsewhere").exists()
    assert not (receiver.root / "inner").exists()
    (record,) = receiver.records()
    assert record["event"] == "refused"
    assert reason in str(record["reason"])


# An older client announces fewer capabilities (rsync 3.1 had no I, v, u); a newer one more.
# The server rsync ignores letters it does not know and uses only those both sides have.
OLDER = "s/-logDtprze\\.iLsfxCIvu/-logDtprze.iLsfxC/"
NEWER = "s/-logDtprze\\.iLsfxCIvu/-logDtprze.iLsfxCIvuZ/"


@pytest.mark.parametrize("rewrite", [OLDER, NEWER], ids=["older client", "newer client"])
def test_another_flag_string_still_pushes_and_is_logged_once_as_drift(
    receiver: Receiver, rewrite: str
) -> None:
    expected = f"rsync --server -logDtprze.iLsfxCIvu --delete . {receiver.directory}/"
    forced = receiver.forced(expect=expected)
    args = ("-az", "--delete", f"{receiver.source}/", push_spec(receiver))

    first = receiver.rsync(*args, forced=forced, rewrite=rewrite)
    second = receiver.rsync(*args, forced=forced, rewrite=rewrite)
    same = receiver.rsync(*args, forced=forced)

    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert same.returncode == 0, same.stderr
    assert (receiver.directory / "etc" / "passwd").exists()
    events = [record["event"] for record in receiver.records()]
    assert events == ["allowed", "drift", "allowed", "allowed"]
    drift = receiver.records()[1]
    assert drift["expected"] == expected
    assert drift["received"] != expected
    assert drift["received"] == receiver.records()[0]["command"]
    assert "keyforge capture" in str(drift["hint"])
