"""`keyforge install --gate` and `keyforge gate` as an admin types them on the receiving host."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keyforge.cli import app
from keyforge.receiver import gate
from keyforge.ssh import authorized_keys as ak

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA99e4w4N2v+R70Lqw2rv2+GcJGHoCiQW3RJibF+KIVm foo@server1"
PUSH = "rsync --server -logDtprze.iLsfxCIvu --delete . ~/srvbackups/"
PULL = "rsync --server --sender -logDtprze.iLsfxCIvu . ~/srvbackups/"
PROGRAM = "/opt/keyforge/bin/keyforge"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "foo"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    (home / "srvbackups").mkdir()
    monkeypatch.setenv("HOME", str(home))
    (tmp_path / "a.pub").write_text(KEY + "\n")
    return home


def authorized_keys(home: Path) -> Path:
    return home / ".ssh" / "authorized_keys"


def install(home: Path, *extra: str, program: str = PROGRAM):  # type: ignore[no-untyped-def]
    args = ["install", "--key", str(home.parent / "a.pub"), "-f", str(authorized_keys(home))]
    args += ["--from", "192.0.2.10", *extra]
    if "--gate" in extra and "--gate-program" not in extra:
        args += ["--gate-program", program]
    return runner.invoke(app, args)


def forced_command(home: Path) -> str:
    (line,) = ak.parse(authorized_keys(home).read_text())
    assert line.entry is not None
    (command,) = line.entry.values("command")
    return command


def test_install_gate_locks_the_key_to_the_gate_with_the_expected_command(home: Path) -> None:
    result = install(home, "--gate", str(home / "srvbackups"), "--command", PUSH)

    assert result.exit_code == 0, result.output
    command = forced_command(home)
    assert shlex.split(command) == [
        PROGRAM, "gate", "--dir", str(home / "srvbackups"), "--expect", PUSH,
        *(["--rsync", gate.rsync_program()] if gate.rsync_program() != gate.DEFAULT_RSYNC else []),
        *(["--confine"] if gate.rsync_can_confine(gate.rsync_program()) else []),
    ]  # fmt: skip
    line = authorized_keys(home).read_text()
    assert line.startswith("restrict,no-port-forwarding,")
    assert 'from="192.0.2.10"' in line
    assert "the gate will run: " in result.stdout


def test_install_gate_without_a_command_has_no_expect(home: Path) -> None:
    result = install(home, "--gate", str(home / "srvbackups"))
    assert result.exit_code == 0, result.output
    assert "--expect" not in forced_command(home)


def test_install_gate_exact_and_log_are_passed_on(home: Path) -> None:
    log = home / "gate-log" / "gate.log"
    result = install(
        home, "--gate", str(home / "srvbackups"), "--command", PUSH, "--exact",
        "--gate-log", str(log),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    words = shlex.split(forced_command(home))
    assert "--exact" in words
    assert words[words.index("--log") + 1] == str(log)


def test_install_gate_relative_dir_becomes_absolute(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(home)
    result = install(home, "--gate", "srvbackups")
    assert result.exit_code == 0, result.output
    assert f"--dir {home}/srvbackups" in forced_command(home)


def test_install_gate_dry_run_writes_nothing(home: Path) -> None:
    result = install(home, "--gate", str(home / "srvbackups"), "--dry-run")
    assert result.exit_code == 0, result.output
    assert "gate --dir" in result.stdout
    assert not authorized_keys(home).exists()


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--exact", "--command", PUSH], "--exact only make sense with --gate"),
        (["--gate-log", "/tmp/g.log", "--command", PUSH], "--gate-log only make sense with"),
        (["--gate", "{home}", "--command", PUSH], "authorized_keys"),
        (["--gate", "{home}/.ssh/backups"], "authorized_keys"),
        (["--gate", "{home}/srvbackups", "--exact"], "--exact needs"),
        (["--gate", "{home}/srvbackups", "--command", PULL], "would refuse the expected command"),
        (["--gate", "{home}/srvbackups", "--command", PUSH + ";id"], "shell metacharacter"),
        (["--gate", "srv", "--gate-program", "keyforge"], "absolute path"),
    ],
)
def test_install_gate_errors_are_one_line(home: Path, extra: list[str], fragment: str) -> None:
    result = install(home, *[e.replace("{home}", str(home)) for e in extra])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("keyforge: error: ")
    assert fragment in lines[0]
    assert not authorized_keys(home).exists()


# rsync 3.4's --help as far as it matters here: no --confine-root, no --drop-D
OLD_RSYNC = """#!/bin/sh
echo 'rsync  version 3.4.1  protocol version 32'
echo ' --devices                preserve device files (super-user only)'
echo ' -D                       same as --devices --specials'
"""


@pytest.fixture
def old_rsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An rsync without --confine-root first on PATH, which install --gate reads."""
    bin_dir = tmp_path / "old-bin"
    bin_dir.mkdir()
    rsync = bin_dir / "rsync"
    rsync.write_text(OLD_RSYNC)
    rsync.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return rsync


def test_install_gate_on_an_rsync_without_confine_root_refuses(home: Path, old_rsync: Path) -> None:
    result = install(home, "--gate", str(home / "srvbackups"), "--command", PUSH)
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("keyforge: error: the gate would run unconfined")
    assert "merge file" in line
    assert f"{old_rsync} has no --confine-root" in line
    assert "--allow-unconfined" in line
    assert not authorized_keys(home).exists()


def test_allow_unconfined_installs_the_weaker_gate_with_a_warning(
    home: Path, old_rsync: Path
) -> None:
    result = install(
        home, "--gate", str(home / "srvbackups"), "--command", PUSH, "--allow-unconfined"
    )
    assert result.exit_code == 0, result.output
    assert "warning: the gate will run unconfined" in result.stderr
    assert "merge file" in result.stderr
    words = shlex.split(forced_command(home))
    assert "--confine" not in words
    assert words[words.index("--rsync") + 1] == str(old_rsync)
    # the gate will run: ... --no-specials . DIR/ (--no-D as root)
    assert " ".join(gate.unconfined_no_specials()) in result.stdout


def test_allow_unconfined_needs_gate(home: Path) -> None:
    result = install(home, "--command", PUSH, "--allow-unconfined")
    assert result.exit_code == 2
    assert "--allow-unconfined only make sense with --gate" in result.stderr


def test_the_installed_line_runs_the_gate_which_refuses_a_pull(home: Path, tmp_path: Path) -> None:
    """What sshd does: the forced command through the login shell, SSH_ORIGINAL_COMMAND set."""
    program = tmp_path / "keyforge"
    program.write_text(
        f"#!/bin/sh\nPYTHONPATH={shlex.quote(str(ROOT))} exec {shlex.quote(sys.executable)} "
        "-c 'from keyforge.entry import main; main()' \"$@\"\n"
    )
    program.chmod(0o755)
    log = tmp_path / "gate.log"
    result = install(
        home, "--gate", str(home / "srvbackups"), "--command", PUSH, "--gate-log", str(log),
        program=str(program),
    )  # fmt: skip
    assert result.exit_code == 0, result.output

    env = {"PATH": "/usr/bin:/bin", "SSH_CLIENT": "192.0.2.10 5 22", "SSH_ORIGINAL_COMMAND": PULL}
    done = subprocess.run(
        ["/bin/sh", "-c", forced_command(home)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )

    assert done.returncode == 1
    assert done.stderr.startswith("keyforge gate: refused: a pull (--sender)")
    (record,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert (record["event"], record["client"], record["command"]) == ("refused", "192.0.2.10", PULL)


def test_install_gate_from_capture_expects_the_command_as_captured(home: Path) -> None:
    start = runner.invoke(
        app,
        ["capture", "start", "--key", str(home.parent / "a.pub"), "-f", str(authorized_keys(home))],
    )
    assert start.exit_code == 0, start.output
    recorder = forced_command(home)
    env = {"PATH": "/usr/bin:/bin", "SSH_CLIENT": "192.0.2.10 5 22", "SSH_ORIGINAL_COMMAND": PUSH}
    subprocess.run(["/bin/sh", "-c", recorder], env=env, capture_output=True, check=False)

    result = install(home, "--gate", str(home / "srvbackups"), "--from-capture")

    assert result.exit_code == 0, result.output
    words = shlex.split(forced_command(home))
    assert words[words.index("--expect") + 1] == PUSH  # the ~ kept: compared with the client's
    assert "rewrote" not in result.stdout


# --- keyforge gate through the CLI --------------------------------------------------------------


def test_gate_command_refuses_and_logs(tmp_path: Path, home: Path) -> None:
    log = tmp_path / "gate.log"
    result = runner.invoke(
        app,
        ["gate", "--dir", str(home / "srvbackups"), "--log", str(log)],
        env={"SSH_ORIGINAL_COMMAND": "rsync --server -r . /etc/;id", "SSH_CLIENT": "192.0.2.9 1 2"},
    )
    assert result.exit_code == 1
    (record,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert record["event"] == "refused"
    assert record["client"] == "192.0.2.9"
    assert "shell metacharacter" in record["reason"]


def test_gate_help_names_what_it_refuses() -> None:
    result = runner.invoke(app, ["gate", "--help"])
    assert result.exit_code == 0
    for word in ("--sender", "'..'", "symbolic", "shell", "--delete"):
        assert word in result.output
