"""The rendered recorder, run by real shells the way sshd runs a forced command: hostile
commands are stored verbatim and never executed."""

from __future__ import annotations

import shutil
import stat
import subprocess

import pytest

from keyforge.receiver import capture

KEY = "SHA256:Csfupk9ZSMNx/NIcVmCNs8TBLc6tJfwyCJrLB38TvuM"
SHELLS = [s for s in ("/bin/sh", shutil.which("dash"), shutil.which("bash")) if s]


@pytest.fixture
def recorder(tmp_path):
    return capture.install_recorder(tmp_path / "home")


def call(recorder, shell, command, *, client="192.0.2.10 50022 22", key=KEY):
    """Run the forced command as sshd does: ``$SHELL -c COMMAND``, SSH_* in the environment."""
    env = {"PATH": "/usr/bin:/bin", "SSH_CLIENT": client}
    if command is not None:
        env["SSH_ORIGINAL_COMMAND"] = command
    forced = capture.recorder_command(recorder.script, key)
    return subprocess.run(
        [shell, "-c", forced], env=env, capture_output=True, text=True, check=False, timeout=30
    )


def hostile_commands(canary):
    return [
        f"touch {canary}",
        f"rsync --server -a . /x; touch {canary}",
        f"$(touch {canary})",
        f"`touch {canary}`",
        f"'\"; touch {canary}; echo \"'",
        f"x\ntouch {canary}\n",
        f"x\n{capture.RECORD_TAG}\t2020-01-01T00:00:00Z\t1.2.3.4\t{KEY}\tx6c73\n",
        "".join(chr(c) for c in range(1, 32)) + "\x7f\x1b]0;title\x07",
        "%s %n %d \\n \\0 \\c",
        "-n",
        "A" * 65536,
        "",
    ]


@pytest.mark.parametrize("shell", SHELLS)
def test_hostile_commands_are_recorded_verbatim_and_never_run(recorder, tmp_path, shell):
    canary = tmp_path / "canary"
    commands = hostile_commands(canary)

    results = [call(recorder, shell, command) for command in commands]

    assert not canary.exists()
    assert all(r.returncode != 0 for r in results)
    log = capture.read_log(recorder.log)
    assert log.bad_lines == ()
    assert [r.command for r in log.records] == commands
    assert {(r.client, r.key) for r in log.records} == {("192.0.2.10", KEY)}


def test_the_recorder_says_it_ran_nothing(recorder):
    result = call(recorder, "/bin/sh", "rsync --server -a . /x")

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        "keyforge: command recorded, not run; run 'keyforge capture show' on the receiving host\n"
    )


def test_the_log_is_private_and_the_recorder_too(recorder):
    call(recorder, "/bin/sh", "rsync --server -a . /x")

    assert stat.S_IMODE(recorder.log.stat().st_mode) == 0o600
    assert stat.S_IMODE(recorder.script.stat().st_mode) == 0o700
    assert stat.S_IMODE(recorder.directory.stat().st_mode) == 0o700


def test_a_log_made_readable_is_made_private_again(recorder):
    call(recorder, "/bin/sh", "one")
    recorder.log.chmod(0o644)

    call(recorder, "/bin/sh", "two")

    assert stat.S_IMODE(recorder.log.stat().st_mode) == 0o600


def test_a_login_without_a_command_is_recorded_as_such(recorder):
    result = call(recorder, "/bin/sh", None)

    assert result.returncode == 1
    assert capture.read_log(recorder.log).records[0].command is None


@pytest.mark.parametrize(
    ("client", "expected"),
    [
        ("2001:db8::7 40000 22", "2001:db8::7"),
        ("", "unknown"),
        ("1.2.3.4\tforged 1 2", "unknown"),
        ("$(id) 1 2", "unknown"),
    ],
)
def test_the_client_address_is_kept_only_when_it_looks_like_one(recorder, client, expected):
    call(recorder, "/bin/sh", "x", client=client)

    assert capture.read_log(recorder.log).records[0].client == expected


def test_an_odd_key_argument_is_recorded_as_unknown(recorder):
    forced = f"{recorder.script} 'a\tb'"
    subprocess.run(["/bin/sh", "-c", forced], env={"SSH_ORIGINAL_COMMAND": "x"}, check=False)

    assert capture.read_log(recorder.log).records[0].key == "unknown"


def test_the_recorder_reads_no_input(recorder):
    forced = capture.recorder_command(recorder.script, KEY)
    result = subprocess.run(
        ["/bin/sh", "-c", forced],
        env={"SSH_ORIGINAL_COMMAND": "x"},
        input="this must not be read\n" * 1000,
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )

    assert result.returncode == 1
    assert "this must not be read" not in recorder.log.read_text()


def test_an_unwritable_log_is_reported_and_nothing_runs(recorder, tmp_path):
    recorder.log.mkdir()  # appending to a directory fails for root too
    canary = tmp_path / "canary"

    result = call(recorder, "/bin/sh", f"touch {canary}")

    assert result.returncode == 1
    assert "could not be recorded" in result.stderr
    assert not canary.exists()
