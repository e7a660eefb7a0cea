"""The post's system against a real sshd: keyforge pairs on the sender, installs on the
receiver, and the nightly push works from the sender's address and nowhere else."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.docker


def push(lab, client, source=None, destination="~/srvbackups/"):
    argv = lab.push_argv(lab.BACKUP_KEY, source or lab.BACKUP_SOURCE, destination)
    return client.run(argv, user="foo", check=False)


def test_install_writes_one_locked_line_for_the_backup_key(lab, keys, locked):
    backup_lines = [line for line in locked.splitlines() if keys.backup_public.split()[1] in line]
    assert len(backup_lines) == 1
    line = backup_lines[0]
    assert f'from="{lab.SENDER_IP}"' in line
    assert 'command="rsync --server ' in line
    assert locked.splitlines()[0] == keys.admin_public


def test_push_from_the_sender_arrives_byte_identical(lab, locked):
    result = push(lab, lab.sender)

    assert result.returncode == 0, result.stderr
    sent = lab.tree_hashes(lab.sender, "/mnt/backups")
    received = lab.tree_hashes(lab.receiver, f"{lab.FOO_HOME}/srvbackups")
    assert len(sent) >= 5
    assert received == sent
    link = lab.receiver.run(["readlink", f"{lab.FOO_HOME}/srvbackups/server1/home/foo/link"])
    assert link.stdout.strip() == "../etc/passwd"


def test_push_with_delete_mirrors_a_removed_file(lab, locked):
    assert push(lab, lab.sender).returncode == 0
    lab.sender.run(["rm", f"{lab.BACKUP_SOURCE}/etc/empty"], user="foo")
    try:
        result = push(lab, lab.sender)
        assert result.returncode == 0, result.stderr
        assert not lab.receiver.exists(f"{lab.FOO_HOME}/srvbackups/server1/etc/empty")
        received = lab.tree_hashes(lab.receiver, f"{lab.FOO_HOME}/srvbackups")
        assert received == lab.tree_hashes(lab.sender, "/mnt/backups")
    finally:
        lab.sender.run(["touch", f"{lab.BACKUP_SOURCE}/etc/empty"], user="foo")


def test_push_runs_as_the_forced_command(lab, locked, rsync_server_command):
    log = lab.sshd_log()

    assert push(lab, lab.sender).returncode == 0

    line = log.wait_for("Starting session: forced-command (key-option)")
    assert rsync_server_command in line
    assert f"from {lab.SENDER_IP}" in line


def test_the_same_key_from_the_intruder_is_refused(lab, locked):
    assert push(lab, lab.sender).returncode == 0
    before = lab.home_snapshot()
    log = lab.sshd_log()

    shell = lab.ssh(lab.intruder, lab.BACKUP_KEY, f"foo@{lab.RECEIVER_IP}", "id")
    pushed = push(lab, lab.intruder, source="/etc/hostname")

    assert shell.returncode == 255
    assert "Permission denied (publickey)" in shell.stderr
    assert pushed.returncode != 0
    refusal = log.wait_for("with correct key but not from a permitted host")
    assert f"ip={lab.INTRUDER_IP}" in refusal
    assert lab.home_snapshot() == before


def test_admin_key_keeps_its_shell_through_install_and_revoke(lab, keys, locked):
    def admin_shell():
        return lab.ssh(lab.sender, lab.ADMIN_KEY, f"foo@{lab.RECEIVER_IP}", "echo shell:$((6*7))")

    assert admin_shell().stdout.strip() == "shell:42"

    lab.keyforge_revoke(keys.backup_public)

    assert lab.authorized_keys() == f"{keys.admin_public}\n"
    assert admin_shell().stdout.strip() == "shell:42"
    refused = lab.ssh(lab.sender, lab.BACKUP_KEY, f"foo@{lab.RECEIVER_IP}")
    assert refused.returncode == 255
    assert "Permission denied (publickey)" in refused.stderr


def test_install_twice_leaves_the_file_unchanged(lab, keys, locked, rsync_server_command):
    lab.keyforge_install(keys.backup_public, command=rsync_server_command)

    assert lab.authorized_keys() == locked
