"""keyforge.lab.sshd: a private sshd that starts, answers, pins its host key and leaves nothing."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from processes import live_processes_mentioning

from keyforge.errors import UsageError
from keyforge.lab import sshd

pytestmark = pytest.mark.slow


def make_client_key(directory: Path) -> Path:
    key = directory / "client"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "client", "-f", str(key)],
        check=True,
    )
    return key


def ssh(server: sshd.PrivateSshd, key: Path, *command: str, known_hosts: Path | None = None):
    options = server.ssh_options()
    if known_hosts is not None:
        options[options.index(f"UserKnownHostsFile={server.known_hosts}")] = (
            f"UserKnownHostsFile={known_hosts}"
        )
    return subprocess.run(
        ["ssh", *options, "-i", str(key), f"{server.user}@127.0.0.1", *command],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_private_sshd_answers_with_its_banner_and_is_gone_afterwards(tmp_path: Path) -> None:
    with sshd.private_sshd(tmp_path) as server:
        banner = sshd.read_banner(server.port)
        assert banner is not None and banner.startswith("SSH-2.0-OpenSSH_")
        assert server.pid_file.read_text().strip() == str(server.pid)
        assert sshd.is_running(server.pid)
        pid = server.pid
    assert not sshd.is_running(pid)
    assert live_processes_mentioning(str(tmp_path)) == []
    assert sshd.read_banner(server.port) is None


def test_known_hosts_pins_the_generated_host_key(tmp_path: Path) -> None:
    with sshd.private_sshd(tmp_path) as server:
        line = server.known_hosts.read_text()
        keytype, blob = server.host_key_line.split()[:2]
        assert line == f"[127.0.0.1]:{server.port} {keytype} {blob}\n"
        assert (tmp_path / "ssh_host_ed25519_key").stat().st_mode & 0o077 == 0


def test_a_key_in_authorized_keys_logs_in_with_strict_host_key_checking(tmp_path: Path) -> None:
    key = make_client_key(tmp_path)
    with sshd.private_sshd(tmp_path) as server:
        server.authorized_keys.write_text(Path(f"{key}.pub").read_text())
        result = ssh(server, key, "echo", "logged-in")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "logged-in"


def test_a_different_pinned_host_key_is_refused(tmp_path: Path) -> None:
    key = make_client_key(tmp_path)
    other = tmp_path / "other_known_hosts"
    with sshd.private_sshd(tmp_path) as server:
        server.authorized_keys.write_text(Path(f"{key}.pub").read_text())
        wrong = Path(f"{key}.pub").read_text().split()[:2]  # a key, but not the host's
        other.write_text(f"[127.0.0.1]:{server.port} {wrong[0]} {wrong[1]}\n")
        result = ssh(server, key, "true", known_hosts=other)
    assert result.returncode == 255
    assert "Host key verification failed" in result.stderr


def test_leaving_on_an_exception_stops_sshd_and_its_sessions(tmp_path: Path) -> None:
    key = make_client_key(tmp_path)
    session = None
    pid = 0
    children: list[int] = []
    with pytest.raises(RuntimeError, match="boom"), sshd.private_sshd(tmp_path) as server:
        pid = server.pid
        server.authorized_keys.write_text(Path(f"{key}.pub").read_text())
        session = subprocess.Popen(
            ["ssh", *server.ssh_options(), "-i", str(key), f"{server.user}@127.0.0.1",
             "sleep", "60"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not any("sleep" in _comm(p) for p in sshd.descendants(pid)):
            assert time.monotonic() < deadline, "the session never started"
            time.sleep(0.05)
        children = sshd.descendants(pid)
        raise RuntimeError("boom")
    try:
        assert not sshd.is_running(pid)
        assert children and not any(sshd.is_running(child) for child in children)
    finally:
        assert session is not None
        session.kill()
        session.wait()


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def test_a_config_sshd_refuses_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "sshd_config"
    config.write_text("NoSuchOption yes\n")
    with pytest.raises(sshd.SshdError, match=r"sshd -t refused .*NoSuchOption"):
        sshd.check_config(sshd.find_sshd(), config)


def test_an_sshd_that_dies_at_start_is_reported_with_its_words(tmp_path: Path) -> None:
    fake = tmp_path / "fake-sshd"
    fake.write_text(
        "#!/bin/sh\n"
        'case "$1" in -V) echo OpenSSH_9.2 >&2; exit 0 ;; -t) exit 0 ;; esac\n'
        "echo 'fatal: something sshd would say' >&2\nexit 1\n"
    )
    fake.chmod(0o755)
    server_dir = tmp_path / "server"
    server_dir.mkdir(mode=0o700)
    expected = "exited with status 1 at start: fatal: something"
    with (
        pytest.raises(sshd.SshdError, match=expected),
        sshd.private_sshd(server_dir, sshd=str(fake)),
    ):
        pytest.fail("the block must not run")


def test_a_directory_sshd_config_cannot_hold_is_refused_before_anything_starts(
    tmp_path: Path,
) -> None:
    odd = tmp_path / "with space"
    odd.mkdir()
    with pytest.raises(UsageError, match="cannot go into an sshd_config"), sshd.private_sshd(odd):
        pytest.fail("the block must not run")
    assert list(odd.iterdir()) == []


def test_stragglers_naming_the_directory_are_stopped_even_outside_the_tree(tmp_path: Path) -> None:
    marker = str(tmp_path / "straggler-marker")
    # an orphan, like a forced rsync whose session sshd already exited: its parent is gone
    launcher = subprocess.run(
        [
            sys.executable,
            "-c",
            "import subprocess, sys; "
            "sleeper = [sys.executable, '-c', 'import time; time.sleep(60)', sys.argv[1]]; "
            "print(subprocess.Popen(sleeper, start_new_session=True, stdout=subprocess.DEVNULL,"
            " stderr=subprocess.DEVNULL).pid)",
            marker,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    orphan = int(launcher.stdout.strip())
    assert sshd.is_running(orphan)
    stopped = sshd.stop_stragglers(marker, timeout=5)
    assert orphan in stopped
    assert not sshd.is_running(orphan)
    assert live_processes_mentioning(marker) == []
