"""`keyforge capture` against a real sshd: the recorder learns the push's command while the key
stays locked, `install --from-capture` locks the key to it, and then the push works and
nothing else does."""

from __future__ import annotations

import json

import pytest

from keyforge.errors import CaptureError

pytestmark = pytest.mark.docker


def fresh_receiver(lab, keys):
    """foo's home empty but for .ssh, and authorized_keys holding only the admin's key."""
    lab.receiver.sh(
        f"find {lab.FOO_HOME} -mindepth 1 -maxdepth 1 ! -name .ssh -exec rm -rf {{}} +"
        f" && find {lab.FOO_HOME}/.ssh -mindepth 1 ! -name authorized_keys -exec rm -rf {{}} +"
        " && rm -f /tmp/canary"
    )
    lab.write_authorized_keys(f"{keys.admin_public}\n")


def keyforge(lab, *args, public_key=None, check=True):
    return lab.receiver.run(["keyforge", *args], user="foo", input=public_key, check=check)


def push(lab, client):
    argv = lab.push_argv(lab.BACKUP_KEY, lab.BACKUP_SOURCE)
    return client.run(argv, user="foo", check=False)


def test_capture_then_install_from_capture_makes_the_push_work_and_nothing_else(
    lab, keys, backup_source
):
    fresh_receiver(lab, keys)
    backup_key = keys.backup_public.split()[1]

    # 1. lock the key to the recorder
    keyforge(lab, "capture", "start", "--key", "-", "--from", lab.SENDER_IP,
             public_key=keys.backup_public)  # fmt: skip
    line = next(x for x in lab.authorized_keys().splitlines() if backup_key in x)
    assert line.startswith(
        "restrict,no-port-forwarding,no-x11-forwarding,no-agent-forwarding,no-pty,no-user-rc,"
        f'from="{lab.SENDER_IP}",command="{lab.FOO_HOME}/.ssh/keyforge/capture-recorder SHA256:'
    )

    # 2. while capturing, the key runs nothing: a shell command is only recorded
    probe = lab.ssh(lab.sender, lab.BACKUP_KEY, f"foo@{lab.RECEIVER_IP}", "touch /tmp/canary; id")
    assert probe.returncode != 0
    assert "uid=" not in probe.stdout
    assert "command recorded, not run" in probe.stderr
    assert not lab.receiver.exists("/tmp/canary")

    # 3. the real push fails, as expected, and is recorded
    failed = push(lab, lab.sender)
    assert failed.returncode != 0
    assert "command recorded, not run" in failed.stderr
    assert not lab.receiver.exists(f"{lab.FOO_HOME}/srvbackups")

    # 4. capture show prints exactly the rsync --server string, the one capture local predicts
    shown = keyforge(lab, "capture", "show").stdout.splitlines()[0]
    record = json.loads(keyforge(lab, "capture", "show", "--json").stdout)
    local_argv = ["keyforge", "capture", "local", "--json", "--",
                  *lab.push_argv(lab.BACKUP_KEY, lab.BACKUP_SOURCE)]  # fmt: skip
    predicted = json.loads(lab.sender.run(local_argv, user="foo").stdout)
    assert shown.startswith("rsync --server -")
    assert shown.endswith(" . ~/srvbackups/")
    assert record["command"] == shown
    assert record["client"] == lab.SENDER_IP
    assert predicted["command"] == shown
    assert predicted["host"] == lab.RECEIVER_IP

    # 5. the probe and the push differ, so the push's record must be chosen; then lock the key
    # to the captured command, from the captured address
    unchosen = keyforge(lab, "install", "--key", "-", "--from-capture", "--from-captured-address",
                        public_key=keys.backup_public, check=False)  # fmt: skip
    assert unchosen.returncode == CaptureError.exit_code
    assert "2 different commands" in unchosen.stderr
    installed = keyforge(lab, "install", "--key", "-", "--from-capture",
                         "--from-captured-address", "--record", str(record["line"]),
                         public_key=keys.backup_public)  # fmt: skip
    assert "rewrote ~/srvbackups/ to /home/foo/srvbackups/" in installed.stdout
    line = next(x for x in lab.authorized_keys().splitlines() if backup_key in x)
    expected_command = shown.replace(" ~/srvbackups/", f" {lab.FOO_HOME}/srvbackups/")
    assert line == (
        "restrict,no-port-forwarding,no-x11-forwarding,no-agent-forwarding,no-pty,no-user-rc,"
        f'from="{lab.SENDER_IP}",command="{expected_command}" {keys.backup_public}'
    )
    assert lab.authorized_keys().splitlines()[0] == keys.admin_public

    # 6. the same push now succeeds
    pushed = push(lab, lab.sender)
    assert pushed.returncode == 0, pushed.stderr
    received = lab.tree_hashes(lab.receiver, f"{lab.FOO_HOME}/srvbackups")
    assert received == lab.tree_hashes(lab.sender, "/mnt/backups")

    # 7. and nothing else does
    before = lab.home_snapshot()
    shell = lab.ssh(lab.sender, lab.BACKUP_KEY, f"foo@{lab.RECEIVER_IP}", "touch /tmp/canary; id")
    pull = lab.sender.run(
        ["rsync", "-a", f"--rsh={lab.rsh(lab.BACKUP_KEY)}",
         f"foo@{lab.RECEIVER_IP}:/etc/passwd", "/tmp/pulled"],
        user="foo", check=False,
    )  # fmt: skip
    stolen = push(lab, lab.intruder)
    assert "uid=" not in shell.stdout
    assert not lab.receiver.exists("/tmp/canary")
    assert pull.returncode != 0
    assert not lab.sender.exists("/tmp/pulled")
    assert stolen.returncode != 0
    assert lab.home_snapshot() == before
