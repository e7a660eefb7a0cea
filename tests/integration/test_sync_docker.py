"""keyforge backup -> keyforge sync with the locked key -> restore from the receiver's copy.

The sender backs up a data tree as foo, learns the exact rsync server command its sync sends,
the receiver locks the backup key to it with keyforge install, and the nightly sync runs
through the real sshd. Restoring from the receiver's copy gives the source tree back.
"""

from __future__ import annotations

import json
import time

import pytest

from keyforge import signing

pytestmark = pytest.mark.docker

HOME = "/home/foo"
DATA = f"{HOME}/data"
BACKUPS = f"{HOME}/backups"
SENDER_CONFIG = f"{HOME}/keyforge.toml"
COPY = f"{HOME}/srvbackups"
RECEIVER_CONFIG = f"{HOME}/receiver.toml"
SIGNING_KEY = f"{HOME}/manifest-signing-key"


def _sender_config(lab, *, source: str | None = None, bwlimit: str = "") -> str:
    sync_lines = [f'log = "{HOME}/sync.log"', "retry_delay = 1", "max_delete = 50"]
    if source:
        sync_lines.append(f'source = "{source}"')
    if bwlimit:
        sync_lines.append(f'bwlimit = "{bwlimit}"')
    text = lab.sender_config(
        data=DATA, backups=BACKUPS, copy=COPY, key=lab.BACKUP_KEY, sync=sync_lines
    )
    return text.replace("[sync]", f'signing_key = "{SIGNING_KEY}"\n[sync]', 1)


def _keyforge(host, *args: str, check: bool = False):
    return host.run(["keyforge", *args], user="foo", check=check, timeout=180)


@pytest.fixture(scope="module")
def synced(lab, keys):
    """A backup on the sender and a receiver whose authorized_keys locks the key to its sync."""
    lab.sender.sh(
        f"rm -rf {DATA} {BACKUPS} && mkdir -p {DATA}/etc '{DATA}/with space' && "
        f"head -c 200000 /dev/urandom > {DATA}/random.bin && "
        f"printf 'caf\\303\\251\\n' > '{DATA}/with space/caf\\303\\251.txt' && "
        f"printf 'x\\n' > {DATA}/etc/conf && chown -R foo:foo {DATA} && "
        f"rm -f {SIGNING_KEY} {SIGNING_KEY}.pub"
    )
    _keyforge(lab.sender, "pair", "--signing", SIGNING_KEY, check=True)
    lab.sender.write_file(SENDER_CONFIG, _sender_config(lab))
    _keyforge(lab.sender, "backup", "--config", SENDER_CONFIG, check=True)
    forced = lab.sync_server_command(SENDER_CONFIG)
    assert forced.startswith("rsync --server "), forced
    lab.receiver.sh(f"rm -rf {COPY}")
    lab.write_authorized_keys(f"{keys.admin_public}\n")
    lab.keyforge_install(keys.backup_public, command=forced)
    result = _keyforge(lab.sender, "sync", "--config", SENDER_CONFIG, "--verbose")
    assert result.returncode == 0, result.stderr
    return result


def test_sync_reports_success_and_logs_one_json_line(lab, synced):
    assert synced.stdout.startswith("sync pi: ok in ")
    record = json.loads(lab.sender.read_file(f"{HOME}/sync.log").splitlines()[-1])
    assert record["ok"] is True
    assert record["exit"] == 0
    assert record["bytes_sent"] > 200000


def test_restore_from_the_receivers_copy_equals_the_source_tree(lab, synced):
    public = lab.sender.read_file(f"{SIGNING_KEY}.pub")
    lab.receiver.write_file(f"{HOME}/allowed_signers", signing.signer_line(public, "server1"))
    lab.receiver.write_file(
        RECEIVER_CONFIG,
        f'[general]\nhost = "server1"\n[backup]\nsources = ["{DATA}"]\ndirectory = "{COPY}"\n'
        f'allowed_signers = "{HOME}/allowed_signers"\n',
    )
    lab.receiver.sh("rm -rf /tmp/restored")
    lab.receiver.run(
        ["keyforge", "restore", "--config", RECEIVER_CONFIG, "--source", DATA, "--to",
         "/tmp/restored"],
        user="foo",
    )  # fmt: skip
    restored = lab.tree_hashes(lab.receiver, "/tmp/restored")
    sent = lab.tree_hashes(lab.sender, DATA)
    # the restore may keep the source's path below /tmp/restored: compare names and contents
    assert sorted((p.rsplit("/", 1)[-1], d) for p, d in restored.items()) == sorted(
        (p.rsplit("/", 1)[-1], d) for p, d in sent.items()
    )
    assert len(sent) == 3


def test_check_proves_the_lock_from_the_sender(lab, synced):
    result = _keyforge(lab.sender, "check", "--config", SENDER_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("ok   ") == 4


def test_a_sync_of_an_empty_source_is_refused_and_the_copy_is_intact(lab, synced):
    before = lab.tree_hashes(lab.receiver, COPY)
    lab.sender.run(["mkdir", "-p", f"{HOME}/empty"], user="foo")
    lab.sender.write_file(f"{HOME}/empty.toml", _sender_config(lab, source=f"{HOME}/empty"))
    result = _keyforge(lab.sender, "sync", "--config", f"{HOME}/empty.toml")
    assert result.returncode == 1
    assert "holds no keyforge manifest" in result.stderr
    assert lab.tree_hashes(lab.receiver, COPY) == before


def test_a_sync_killed_halfway_then_run_again_completes(lab, synced):
    lab.sender.sh(
        f"head -c 4000000 /dev/urandom > {BACKUPS}/big.bin && chown foo {BACKUPS}/big.bin"
    )
    slow = f"{HOME}/slow.toml"
    lab.sender.write_file(slow, _sender_config(lab, bwlimit="500"))
    started = lab.sender.run(
        ["sh", "-c", f"setsid keyforge sync --config {slow} >/dev/null 2>&1 & echo $!"],
        user="foo",
    )
    pid = started.stdout.strip()
    time.sleep(3)
    lab.sender.run(["kill", "-KILL", "--", f"-{pid}"], user="foo", check=False)
    assert lab.tree_hashes(lab.receiver, COPY) != lab.tree_hashes(lab.sender, BACKUPS)

    result = _keyforge(lab.sender, "sync", "--config", SENDER_CONFIG)
    assert result.returncode == 0, result.stderr
    # the lock is never sent; a restore on the receiver makes its own
    assert _without_lock(lab.tree_hashes(lab.receiver, COPY)) == _without_lock(
        lab.tree_hashes(lab.sender, BACKUPS)
    )


def _without_lock(hashes: dict[str, str]) -> dict[str, str]:
    return {path: digest for path, digest in hashes.items() if path != "./.keyforge.lock"}


def test_a_wrong_host_key_on_the_receiver_fails_clearly(lab, synced):
    pinned = lab.sender.read_file(f"{HOME}/.ssh/known_hosts", user="foo")
    other = lab.sender.run(
        ["sh", "-c", "rm -f /tmp/impostor*; ssh-keygen -q -t ed25519 -N '' -f /tmp/impostor"
         " >/dev/null && cat /tmp/impostor.pub"], user="foo",
    ).stdout.split()  # fmt: skip
    lab.sender.write_file(f"{HOME}/.ssh/known_hosts", f"{lab.RECEIVER_IP} {other[0]} {other[1]}\n")
    try:
        result = _keyforge(lab.sender, "sync", "--config", SENDER_CONFIG)
    finally:
        lab.sender.write_file(f"{HOME}/.ssh/known_hosts", pinned, mode="0644")
    assert result.returncode == 5
    assert "Host key verification failed" in result.stderr
    assert "FAILED after 1 attempt(s)" in result.stderr
