"""keyforge rotate in the lab: the sender's backup key, locked on the receiver, is replaced
through foo's admin key while syncs run in a loop, and every one of those syncs succeeds.

The rotating key is its own pair (not the lab's shared backup key), so the other Docker
tests of the session see their keys unchanged.
"""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.docker

HOME = "/home/foo"
KEY = f"{HOME}/.ssh/rotating"
SAVED_OLD_KEY = f"{HOME}/.ssh/rotating.saved"
DATA = f"{HOME}/rotdata"
BACKUPS = f"{HOME}/rotbackups"
COPY = f"{HOME}/rotcopy"
CONFIG = f"{HOME}/rotate.toml"
LOOP_LOG = "/tmp/rotate-sync-loop.log"
LOOP_STOP = "/tmp/rotate-sync-loop.stop"

# cron's nightly job, run back to back: each result on its own line, until told to stop
SYNC_LOOP = f"""
rm -f {LOOP_STOP} {LOOP_LOG}
while [ ! -e {LOOP_STOP} ]; do
    keyforge sync --wait --config {CONFIG} >/dev/null 2>>{LOOP_LOG}.err
    echo "rc=$?" >> {LOOP_LOG}
done
"""


def _config(lab) -> str:
    return lab.sender_config(
        data=DATA,
        backups=BACKUPS,
        copy=COPY,
        key=KEY,
        sync=[f'log = "{HOME}/rotate-sync.log"', "retry_delay = 1"],
    )


def _keyforge(host, *args: str):
    return host.run(["keyforge", *args], user="foo", check=False, timeout=180)


def _line_of(text: str, blob: str) -> list[str]:
    return [line for line in text.splitlines() if blob in line]


def _loop_results(lab) -> list[str]:
    found = lab.sender.run(["cat", LOOP_LOG], check=False)
    return found.stdout.split()


@pytest.fixture
def locked_rotating_key(lab, keys):
    """A backup on the sender; its own key locked on the receiver to the exact sync command,
    beside foo's admin key (a plain line: a shell, the admin channel)."""
    lab.sender.sh(
        f"rm -rf {DATA} {BACKUPS} {KEY} {KEY}.* {LOOP_LOG}* && mkdir -p {DATA}/etc && "
        f"head -c 100000 /dev/urandom > {DATA}/random.bin && printf 'x\\n' > {DATA}/etc/conf && "
        f"chown -R foo:foo {DATA}"
    )
    lab.sender.write_file(CONFIG, _config(lab))
    lab.sender.run(["keyforge", "pair", KEY, "--comment", "foo@server1 rotating"], user="foo")
    assert _keyforge(lab.sender, "backup", "--config", CONFIG).returncode == 0
    forced = lab.sync_server_command(CONFIG)
    assert forced.startswith("rsync --server "), forced
    lab.receiver.sh(f"rm -rf {COPY}")
    lab.write_authorized_keys(f"{keys.admin_public}\n")
    public = lab.sender.read_file(f"{KEY}.pub", user="foo").strip()
    lab.keyforge_install(public, command=forced.strip())
    synced = _keyforge(lab.sender, "sync", "--config", CONFIG)
    assert synced.returncode == 0, synced.stderr
    return public


def test_rotation_keeps_every_sync_working_and_leaves_only_the_new_key(
    lab, keys, locked_rotating_key
):
    old_public = locked_rotating_key
    old_blob = old_public.split()[1]
    before = lab.authorized_keys()
    [old_line] = _line_of(before, old_blob)
    old_options = old_line[: old_line.index(" ssh-ed25519 ")]
    lab.sender.run(["cp", "-p", KEY, SAVED_OLD_KEY], user="foo")

    loop = lab.sender.popen(["sh", "-c", SYNC_LOOP], user="foo")
    try:
        rotated = _keyforge(
            lab.sender, "rotate", "--config", CONFIG,
            "--admin", "foo", "--admin-key", lab.ADMIN_KEY,
        )  # fmt: skip
        finished_at = len(_loop_results(lab))
        deadline = time.monotonic() + 120
        while len(_loop_results(lab)) < finished_at + 1 and time.monotonic() < deadline:
            time.sleep(0.2)  # at least one sync after the rotation, with the new key
    finally:
        lab.sender.run(["touch", LOOP_STOP], user="foo")
        loop.wait(timeout=180)

    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    steps = [line[:3] for line in rotated.stdout.splitlines() if line[1:3] == "/6"]
    assert steps == ["1/6", "2/6", "3/6", "4/6", "5/6", "6/6"]
    results = _loop_results(lab)
    errors = lab.sender.run(["cat", f"{LOOP_LOG}.err"], check=False).stdout
    assert len(results) >= 2, errors
    assert set(results) == {"rc=0"}, errors

    # authorized_keys: the new key with exactly the old line's options, the old key gone
    new_public = lab.sender.read_file(f"{KEY}.pub", user="foo").strip()
    new_blob = new_public.split()[1]
    after = lab.authorized_keys()
    assert old_blob not in after
    [new_line] = _line_of(after, new_blob)
    assert new_line == f"{old_options} {new_public}"
    assert after.splitlines()[0] == keys.admin_public
    assert len(after.splitlines()) == 2
    leftovers = lab.sender.run(["sh", "-c", f"ls -a {HOME}/.ssh | grep rotating"], user="foo")
    assert leftovers.stdout.split() == [".rotating.rotate.lock", "rotating", "rotating.pub",
                                        "rotating.saved"]  # fmt: skip

    # the old key is refused; the new key pushes
    refused = lab.ssh(lab.sender, SAVED_OLD_KEY, f"foo@{lab.RECEIVER_IP}")
    assert refused.returncode == 255
    assert "Permission denied" in refused.stderr
    pushed = _keyforge(lab.sender, "sync", "--config", CONFIG, "--verbose")
    assert pushed.returncode == 0, pushed.stderr
    assert "sync pi: ok" in pushed.stdout
