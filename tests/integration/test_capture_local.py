"""``capture local`` prints the same string the recorder logs on the receiving host.

The receiving side is stood in for by a fake ``ssh`` that does what ssh and sshd do with a
command: join the words after the host with single spaces into SSH_ORIGINAL_COMMAND, then run
the forced command (the real recorder) with ``sh -c``. No sshd is needed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from fake_ssh import write_fake_ssh
from typer.testing import CliRunner

from keyforge.cli import app
from keyforge.errors import UsageError
from keyforge.receiver import capture
from keyforge.sender import capture_local

pytestmark = pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed")

KEY = "SHA256:Csfupk9ZSMNx/NIcVmCNs8TBLc6tJfwyCJrLB38TvuM"

OPTION_SETS = [
    ["-az", "--delete"],
    ["-a"],
    ["-avz", "--delete", "--exclude=*.tmp"],
    ["-rtz", "--partial", "--numeric-ids", "--backup-dir=~/old dir", "-b"],
]


@pytest.fixture
def receiving(tmp_path):
    """The recorder installed in a scratch home, and a fake ssh that runs it."""
    recorder = capture.install_recorder(tmp_path / "home")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    ssh = write_fake_ssh(bindir / "ssh")
    source = tmp_path / "src"
    source.mkdir()
    (source / "file").write_text("data\n")
    return recorder, ssh, source


def push_through_the_recorder(recorder, ssh, argv):
    env = {**os.environ, "KEYFORGE_TEST_FORCED": capture.recorder_command(recorder.script, KEY)}
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode != 0  # the recorder runs nothing, so rsync fails
    return capture.latest_record(capture.read_log(recorder.log)).command


@pytest.mark.parametrize("options", OPTION_SETS, ids=" ".join)
def test_capture_local_prints_what_the_recorder_logs(receiving, options):
    recorder, ssh, source = receiving
    argv = [
        "rsync", *options, "-e", f"{ssh} -p 2222 -i /nonexistent/key", str(source),
        "foo@raspberrypi:~/srvbackups/",
    ]  # fmt: skip

    logged = push_through_the_recorder(recorder, ssh, argv)
    local = capture_local.capture_local(argv)

    assert logged.startswith("rsync --server ")
    assert local.command == logged
    assert (local.host, local.user) == ("raspberrypi", "foo")
    assert local.remote_shell.port == "2222"
    assert local.remote_shell.identities == ("/nonexistent/key",)


def test_the_cli_prints_the_command_first_and_reports_the_remote_shell(receiving):
    recorder, ssh, source = receiving
    argv = [
        "rsync",
        "-az",
        "--delete",
        f"--rsh={ssh} -p 2222",
        str(source),
        "foo@rpi:~/srvbackups/",
    ]
    logged = push_through_the_recorder(recorder, ssh, argv)

    result = CliRunner().invoke(app, ["capture", "local", "--", *argv])

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == logged
    assert "  port: 2222" in "\n".join(lines)
    assert "not run" in result.stdout


def test_the_cli_json_holds_the_exact_command(receiving):
    recorder, ssh, source = receiving
    argv = ["rsync", "-a", "-e", str(ssh), str(source), "rpi:/srv/my dir/"]
    logged = push_through_the_recorder(recorder, ssh, argv)

    result = CliRunner().invoke(app, ["capture", "local", "--json", "--", *argv])

    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["command"] == logged
    assert data["command"].endswith(r" . /srv/my\ dir/")
    assert (data["host"], data["user"]) == ("rpi", None)


def test_the_users_remote_shell_is_never_run(tmp_path):
    canary = tmp_path / "canary"
    source = tmp_path / "src"
    source.mkdir()
    argv = ["rsync", "-a", "-e", f"sh -c 'touch {canary}'", str(source), "h:/x/"]

    local = capture_local.capture_local(argv)

    assert not canary.exists()
    assert local.command.startswith("rsync --server ")
    assert local.remote_shell.command == f"sh -c 'touch {canary}'"


def test_a_local_only_rsync_is_refused_before_it_copies_anything(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    dest = tmp_path / "dest"

    with pytest.raises(UsageError, match="names no HOST:PATH"):
        capture_local.capture_local(["rsync", "-a", str(source), str(dest)])

    assert not dest.exists()


@pytest.mark.parametrize("remote", ["rsync://h/mod/", "h::mod/"])
def test_an_rsync_daemon_target_is_refused_before_rsync_connects(tmp_path, remote):
    with pytest.raises(UsageError, match="names an rsync daemon"):
        capture_local.capture_local(["rsync", "-a", str(tmp_path), remote])


def test_rsync_failing_before_its_remote_shell_is_an_error_saying_so(tmp_path):
    with pytest.raises(capture.CaptureError, match=r"did not start a remote shell.*no-such-opt"):
        capture_local.capture_local(["rsync", "--no-such-opt", str(tmp_path), "h:/x/"])
