"""A stolen backup key against a real sshd on loopback: capture, install, audit and the gate
must not turn it into more rights than the one push.

The private sshd listens on 127.0.0.1; the sending server connects from 127.0.0.1 and the
holder of a stolen copy of its key from 127.0.0.2 (``ssh -b``), so from= and the recorder see
two real client addresses. Every push and pull is the real rsync client through real ssh.
"""

from __future__ import annotations

import datetime as dt
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keyforge.cli import app
from keyforge.errors import CaptureError
from keyforge.lab import sshd
from keyforge.receiver import audit, capture, explain, gate
from keyforge.ssh import authorized_keys as ak
from keyforge.ssh import keys

pytestmark = [
    pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed"),
    pytest.mark.slow,
]

SENDER = "127.0.0.1"
INTRUDER = "127.0.0.2"
ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


@dataclass(frozen=True)
class Receiving:
    home: Path
    key: Path
    public: Path
    server: sshd.PrivateSshd
    scratch: Path

    @property
    def authorized_keys(self) -> Path:
        return self.home / ".ssh" / "authorized_keys"

    @property
    def log(self) -> Path:
        return self.home / ".ssh" / "keyforge" / "capture.log"

    def ssh_words(self, source: str) -> list[str]:
        return ["ssh", *self.server.ssh_options(), "-b", source, "-i", str(self.key)]

    def login(self) -> str:
        return f"{self.server.user}@{sshd.LOOPBACK}"

    def rsync(self, source: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["rsync", f"--rsh={shlex.join(self.ssh_words(source))}", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def ssh(self, source: str, command: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.ssh_words(source), self.login(), command],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def capture_start(self, *extra: str):
        return runner.invoke(
            app,
            ["capture", "start", "--key", str(self.public), "-f", str(self.authorized_keys),
             *extra],
        )  # fmt: skip

    def install(self, *extra: str):
        return runner.invoke(
            app,
            ["install", "--key", str(self.public), "-f", str(self.authorized_keys), *extra],
        )

    def key_line(self) -> str:
        blob = self.public.read_text().split()[1]
        return next(line for line in self.authorized_keys.read_text().splitlines() if blob in line)


@pytest.fixture
def receiving(tmp_path: Path) -> Iterator[Receiving]:
    home = tmp_path / "foo"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    (home / "srvbackups").mkdir()
    (home / ".ssh" / "id_ed25519").write_text("the receiving host's own private key\n")
    server_dir = tmp_path / "sshd"
    server_dir.mkdir(mode=0o700)
    pair = keys.generate("ed25519", comment="foo@server1 backups")
    key = tmp_path / "backups"
    key.write_bytes(pair.private_pem)
    key.chmod(0o600)
    public = tmp_path / "backups.pub"
    public.write_text(pair.public_line + "\n")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    authorized_keys = home / ".ssh" / "authorized_keys"
    with sshd.private_sshd(server_dir, authorized_keys=authorized_keys) as server:
        yield Receiving(home, key, public, server, scratch)


def source_tree(root: Path) -> Path:
    source = root / "source"
    source.mkdir()
    (source / "archive.tar").write_text("backup data\n")
    return source


# --- capture -> install ---------------------------------------------------------------------


def test_a_recorded_pull_of_the_home_is_never_installed(receiving: Receiving) -> None:
    """The issue's first attack: the stolen key records a pull of the whole home."""
    started = receiving.capture_start()  # no --from: any address reaches the recorder
    assert started.exit_code == 0, started.output
    assert "any address can reach the recorder" in started.stderr
    loot = receiving.scratch / "loot"
    recorded = receiving.rsync(INTRUDER, "-a", f"{receiving.login()}:{receiving.home}/", f"{loot}/")
    assert "command recorded, not run" in recorded.stderr

    installed = receiving.install("--from-capture", "--from-captured-address")
    forced = receiving.install("--from-capture", "--from", SENDER, "--allow-any-command")

    assert installed.exit_code != 0
    assert forced.exit_code == 2, forced.output
    assert f"{receiving.home}/ is the home directory" in forced.stderr
    assert "capture-recorder" in receiving.key_line()
    again = receiving.rsync(INTRUDER, "-a", f"{receiving.login()}:{receiving.home}/", f"{loot}/")
    assert again.returncode != 0
    assert not (loot / ".ssh").exists()


def test_a_recorded_push_into_ssh_is_never_installed_and_gives_no_shell(
    receiving: Receiving,
) -> None:
    """The issue's second attack: a push into ~/.ssh, to write an authorized_keys of its own."""
    assert receiving.capture_start().exit_code == 0
    evil = receiving.scratch / "evil"
    evil.mkdir()
    (evil / "authorized_keys").write_text(receiving.public.read_text())
    receiving.rsync(INTRUDER, "-a", f"{evil}/", f"{receiving.login()}:~/.ssh/")

    installed = receiving.install("--from-capture", "--from", SENDER)
    forced = receiving.install("--from-capture", "--from", SENDER, "--allow-any-command")

    assert installed.exit_code == 2, installed.output
    assert forced.exit_code == 2, forced.output
    assert f"is in {receiving.home / '.ssh'}" in installed.stderr
    assert "capture-recorder" in receiving.key_line()
    pushed = receiving.rsync(SENDER, "-a", f"{evil}/", f"{receiving.login()}:~/.ssh/")
    shell = receiving.ssh(INTRUDER, "id")
    assert pushed.returncode != 0
    assert "uid=" not in shell.stdout
    assert shell.returncode != 0


def test_a_recorded_pull_of_a_harmless_directory_needs_allow_any_command(
    receiving: Receiving,
) -> None:
    assert receiving.capture_start("--from", SENDER).exit_code == 0
    (receiving.home / "srvbackups" / "copy").write_text("the backups\n")
    pulled = receiving.scratch / "pulled"
    spec = f"{receiving.login()}:{receiving.home}/srvbackups/"
    receiving.rsync(SENDER, "-a", spec, f"{pulled}/")

    refused = receiving.install("--from-capture", "--from-captured-address")
    between = receiving.rsync(SENDER, "-a", spec, f"{pulled}/")
    allowed = receiving.install("--from-capture", "--from-captured-address", "--allow-any-command")
    after = receiving.rsync(SENDER, "-a", spec, f"{pulled}/")

    assert refused.exit_code == 2, refused.output
    assert "a pull (--sender)" in refused.stderr
    assert between.returncode != 0
    assert allowed.exit_code == 0, allowed.output
    assert after.returncode == 0, after.stderr
    assert (pulled / "copy").read_text() == "the backups\n"


def test_records_from_two_addresses_are_installed_only_as_chosen(receiving: Receiving) -> None:
    assert receiving.capture_start("--from", "127.0.0.0/8").exit_code == 0
    source = source_tree(receiving.scratch)
    spec = f"{receiving.login()}:~/srvbackups/"
    receiving.rsync(SENDER, "-a", f"{source}/", spec)
    receiving.rsync(INTRUDER, "-a", f"{source}/", spec)  # the latest record: the intruder's
    records = capture.read_log(receiving.log).records
    assert [r.client for r in records] == [SENDER, INTRUDER]

    shown = runner.invoke(app, ["capture", "show", "--log", str(receiving.log)])
    refused = receiving.install("--from-capture", "--from-captured-address")
    chosen = receiving.install(
        "--from-capture", "--from-captured-address", "--record", str(records[0].lineno)
    )

    assert shown.exit_code == 0, shown.output
    assert f"\t{SENDER}\t" in shown.stdout
    assert f"\t{INTRUDER}\t" in shown.stdout
    assert "records since 'capture start' differ" in shown.stderr
    assert refused.exit_code == CaptureError.exit_code, refused.output
    assert f"2 client addresses ({SENDER}, {INTRUDER})" in refused.stderr
    assert chosen.exit_code == 0, chosen.output
    assert f'from="{SENDER}"' in receiving.key_line()
    legit = receiving.rsync(SENDER, "-a", f"{source}/", spec)
    stolen = receiving.rsync(INTRUDER, "-a", f"{source}/", spec)
    assert legit.returncode == 0, legit.stderr
    assert stolen.returncode != 0


# --- install --from -----------------------------------------------------------------------


@pytest.mark.parametrize("pattern", ["*", "0.0.0.0/0", "127.0.0.1,*.*.*.*"])
def test_a_from_that_admits_every_address_needs_any_source(
    receiving: Receiving, pattern: str
) -> None:
    command = "echo forced"
    refused = receiving.install("--from", pattern, "--command", command)
    assert refused.exit_code == 2, refused.output
    assert "admits every IPv4 address" in refused.stderr
    assert not receiving.authorized_keys.exists()

    allowed = receiving.install("--from", pattern, "--any-source", "--command", command)
    assert allowed.exit_code == 0, allowed.output
    # what the refusal is about: sshd lets the stolen key in from the other address
    assert receiving.ssh(INTRUDER, "anything").stdout == "forced\n"


def test_install_command_by_hand_warns_about_a_push_into_ssh(receiving: Receiving) -> None:
    command = "rsync --server -logDtprze.iLsfxCIvu . ~/.ssh/"
    result = receiving.install("--from", SENDER, "--command", command)
    assert result.exit_code == 0, result.output
    assert f"~/.ssh/ is in {receiving.home / '.ssh'}" in result.stderr


# --- audit and explain ------------------------------------------------------------------------

SHELL_COMMANDS = [
    'sh -c "$SSH_ORIGINAL_COMMAND"',
    "$SSH_ORIGINAL_COMMAND",
    "eval ${SSH_ORIGINAL_COMMAND}",
    'c=$SSH_ORIGINAL_COMMAND; exec "/bin/"s"h" -c "$c"',
]


@pytest.mark.parametrize("command", SHELL_COMMANDS)
def test_audit_rates_a_command_that_runs_the_request_as_no_command(
    receiving: Receiving, command: str
) -> None:
    option = ak.format_option(ak.Option("command", command))
    line = f'restrict,from="0.0.0.0/0",{option} {receiving.public.read_text().strip()}'
    receiving.authorized_keys.write_text(line + "\n")

    shell = receiving.ssh(INTRUDER, "sh", stdin="id -u; echo shell\n")
    judged = audit.audit_text(line, file="f", now=dt.datetime.now(dt.UTC))
    said = "\n".join(explain.explain_line(line).lines())

    assert shell.stdout.endswith("shell\n"), shell  # sshd gives a shell from anywhere
    codes = {f.code: f.severity for f in judged.findings}
    assert codes["command-runs-request"] == "critical"
    assert codes["from-admits-all"] == "high"
    assert audit.worst_severity(judged.findings) == "critical"
    assert "runs whatever the client asks for" in said
    assert "anywhere: from= admits every IPv4 address" in said
    assert "nothing beyond the command" not in said


# --- the gate -------------------------------------------------------------------------------


def test_the_gate_lets_a_push_remove_its_source_files(receiving: Receiving) -> None:
    program = receiving.scratch / "keyforge"
    program.write_text(
        f"#!/bin/sh\nPYTHONPATH={shlex.quote(str(ROOT))} exec {shlex.quote(sys.executable)}"
        " -c 'from keyforge.entry import main; main()' \"$@\"\n"
    )
    program.chmod(0o755)
    config = gate.GateConfig(
        str(receiving.home / "srvbackups"),
        home=str(receiving.home),
        log=str(receiving.scratch / "gate.log"),
        rsync=gate.rsync_program(),
        confine=gate.rsync_can_confine(gate.rsync_program()),
    )
    forced = gate.gate_command(str(program), config)
    option = ak.format_option(ak.Option("command", forced))
    receiving.authorized_keys.write_text(
        f'restrict,from="{SENDER}",{option} {receiving.public.read_text().strip()}\n'
    )
    source = source_tree(receiving.scratch)

    pushed = receiving.rsync(
        SENDER, "-a", "--remove-source-files", f"{source}/",
        f"{receiving.login()}:{receiving.home}/srvbackups/",
    )  # fmt: skip

    assert pushed.returncode == 0, pushed.stderr
    assert (receiving.home / "srvbackups" / "archive.tar").read_text() == "backup data\n"
    assert not (source / "archive.tar").exists()
