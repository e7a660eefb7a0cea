"""keyforge sync end to end over a real sshd on 127.0.0.1 with a locked key (no Docker)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sync_lab import Lab, locked_receiver, run_keyforge, tree

from keyforge.errors import KeyforgeError
from keyforge.infra import fsutil
from keyforge.lab import sshd
from keyforge.sender import sync
from keyforge.ssh import keys

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with locked_receiver(tmp_path_factory.mktemp("sync") / "lab", max_delete=5) as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh_copy(lab: Lab) -> Iterator[None]:
    yield
    # each test starts from a synced copy of an untouched source
    for path in lab.copy.glob("*"):
        path.unlink()


def test_sync_with_the_locked_key_makes_an_exact_copy(lab: Lab) -> None:
    [report] = sync.sync(lab.config(max_delete=5), None)
    assert report.ok, report.message
    assert tree(lab.copy) == tree(lab.source)
    assert report.bytes_sent is not None
    assert report.bytes_sent > 20 * 4096
    record = json.loads(lab.log.read_text().splitlines()[-1])
    assert record["ok"] is True
    assert record["exit"] == 0


def test_the_forced_command_carries_the_receivers_guards(lab: Lab) -> None:
    assert lab.forced_command.startswith("rsync --server ")
    for option in ("--delete", "--partial", "--max-delete=5", "--timeout="):
        assert option in lab.forced_command


def test_sync_through_the_command_line_prints_the_summary(lab: Lab) -> None:
    result = run_keyforge("sync", "--config", str(lab.write_config(max_delete=5)), "--verbose")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("sync offsite: ok in ")
    assert tree(lab.copy) == tree(lab.source)


def test_an_empty_source_is_refused_and_the_copy_stays_intact(lab: Lab, tmp_path: Path) -> None:
    sync.sync(lab.config(max_delete=5), None)
    before = tree(lab.copy)
    empty = tmp_path / "empty"
    empty.mkdir()
    config_path = lab.write_config(max_delete=5, source=str(empty))
    result = run_keyforge("sync", "--config", str(config_path))
    assert result.returncode == 1
    assert "refusing to sync" in result.stderr
    assert "holds no keyforge manifest" in result.stderr
    assert tree(lab.copy) == before


def test_a_wrong_host_key_fails_clearly_without_retrying(lab: Lab, tmp_path: Path) -> None:
    impostor = keys.generate("ed25519", comment="impostor").public_line
    pinned = tmp_path / "known_hosts"
    pinned.write_text(sshd.known_hosts_line(lab.server.port, impostor))
    config_path = lab.write_config(max_delete=5, retries=3)
    text = config_path.read_text().replace(str(lab.server.known_hosts), str(pinned))
    config_path.write_text(text)
    result = run_keyforge("sync", "--config", str(config_path))
    assert result.returncode == 5
    assert "is not the one pinned in the known_hosts file" in result.stderr
    assert "FAILED after 1 attempt(s)" in result.stderr
    assert tree(lab.copy) == {}


def test_an_unknown_host_is_never_trusted_on_first_use(lab: Lab, tmp_path: Path) -> None:
    pinned = tmp_path / "known_hosts"
    pinned.write_text("[192.0.2.1]:22 " + lab.server.host_key_line + "\n")
    config_path = lab.write_config(max_delete=5)
    config_path.write_text(
        config_path.read_text().replace(str(lab.server.known_hosts), str(pinned))
    )
    result = run_keyforge("sync", "--config", str(config_path))
    assert result.returncode == 5
    assert "is not the one pinned in the known_hosts file" in result.stderr
    assert pinned.read_text().count("\n") == 1


def test_more_deletions_than_max_delete_stop_with_a_clear_message(lab: Lab, tmp_path: Path) -> None:
    sync.sync(lab.config(max_delete=5), None)
    shrunk = tmp_path / "shrunk"
    shrunk.mkdir()
    for path in lab.source.iterdir():
        if path.name.endswith(".manifest.json") or path.name.endswith("000001.master.tar.zst"):
            (shrunk / path.name).write_bytes(path.read_bytes())
    # past the sending side's loss guard, the receiver's own limit still holds
    [report] = sync.sync(lab.config(max_delete=5, source=str(shrunk)), None, accept_loss=True)
    assert report.exit == sync.MAX_DELETE_EXIT
    assert report.attempts == 1
    assert "more than max_delete = 5" in report.message
    # the receiver stopped after 5 of the 19 deletions
    assert len(tree(lab.copy)) == 21 - 5


def test_print_server_command_prints_the_line_the_locked_key_accepts(lab: Lab) -> None:
    config = lab.write_config(max_delete=5)
    result = run_keyforge("sync", "--print-server-command", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1] == lab.forced_command
    # the receiver's key is locked to exactly that line, and the real sync gets through
    [report] = sync.sync(lab.config(max_delete=5), None)
    assert report.ok, report.message


def test_dry_run_connects_nowhere(lab: Lab) -> None:
    result = run_keyforge("sync", "--dry-run", "--config", str(lab.write_config(max_delete=5)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("/usr/bin/rsync -az --delete")
    assert "connected nowhere" in result.stdout
    assert not lab.copy.exists() or tree(lab.copy) == {}


def test_a_sync_killed_halfway_then_run_again_completes_exactly(lab: Lab, tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.mkdir()
    for path in lab.source.iterdir():
        (big / path.name).write_bytes(path.read_bytes())
    (big / "server1-home.20260102.master.tar.zst").write_bytes(os.urandom(6 * 1024 * 1024))
    # --bwlimit acts on the sending side only, so the forced command still matches
    slow = lab.write_config(max_delete=5, source=str(big), bwlimit="1000")
    proc = subprocess.Popen(
        [sys.executable, "-m", "keyforge", "sync", "--config", str(slow)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    # files reach their names only at the end (--delay-updates): wait for one arriving
    while time.monotonic() < deadline and not [
        p for p in lab.copy.rglob("*") if p.is_file() and p.stat().st_size > 1024 * 1024
    ]:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert tree(lab.copy) != tree(big)

    result = run_keyforge("sync", "--config", str(lab.write_config(max_delete=5, source=str(big))))
    assert result.returncode == 0, result.stderr
    assert tree(lab.copy) == tree(big)


def test_a_held_lock_refuses_a_second_run(lab: Lab) -> None:
    with fsutil.locked(lab.source / ".keyforge.lock"):
        result = run_keyforge("sync", "--config", str(lab.write_config(max_delete=5)), "--verbose")
    assert result.returncode == 75
    assert "another keyforge run holds" in result.stderr


def test_a_missing_source_directory_is_refused(lab: Lab, tmp_path: Path) -> None:
    config = lab.config(max_delete=5, source=str(tmp_path / "unmounted"))
    with pytest.raises(KeyforgeError, match="is not a directory"):
        sync.sync(config, None)


# --- keyforge check ----------------------------------------------------------------------------


def _check_with_key_options(lab: Lab, options: str) -> subprocess.CompletedProcess[str]:
    """Run keyforge check with the key under other authorized_keys options, then put it back."""
    old = lab.server.authorized_keys.read_text()
    key = old[old.index("ssh-ed25519 ") :]
    lab.server.authorized_keys.write_text(f"{options} {key}".lstrip())
    try:
        return run_keyforge("check", "--config", str(lab.write_config(max_delete=5)))
    finally:
        lab.server.authorized_keys.write_text(old)


def test_check_proves_the_locked_key_refuses_everything_but_rsync(lab: Lab) -> None:
    result = run_keyforge("check", "--config", str(lab.write_config(max_delete=5)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok   a command of its own: refused: the forced rsync server answered" in result.stdout
    assert "ok   an interactive shell: refused" in result.stdout
    assert "ok   terminal: refused: PTY allocation request failed" in result.stdout
    assert "ok   port forwarding: refused: administratively prohibited" in result.stdout
    assert tree(lab.copy) == {}


def test_check_fails_on_an_unrestricted_key(lab: Lab) -> None:
    result = _check_with_key_options(lab, "")
    assert result.returncode == 1
    assert "FAIL a command of its own: it ran what was asked" in result.stdout
    assert "FAIL port forwarding" in result.stdout
    assert "less restricted than expected" in result.stderr


def test_check_fails_on_a_forced_command_that_is_not_rsync(lab: Lab) -> None:
    result = _check_with_key_options(lab, 'restrict,command="ls"')
    assert result.returncode == 1
    assert "FAIL a command of its own: no rsync server answered" in result.stdout
    assert "ok   terminal" in result.stdout
