"""``keyforge install --gate`` against a real sshd: the backup key pushes into its directory and
nothing else, every refusal is logged with the client's address, and a client whose rsync sends
another flag string still pushes, logged once as drift."""

from __future__ import annotations

import json
import shlex

import pytest

pytestmark = pytest.mark.docker

DIRECTORY = "/home/foo/srvbackups"
GATE_LOG = "/home/foo/.ssh/keyforge/gate.log"

# Runs on the sender in place of ssh: rewrites each word rsync gives its remote shell with the
# sed expression in $REWRITE, as an older or newer rsync would have written the command.
REWRITING_SSH = """#!/bin/sh
for word in "$@"; do
  shift
  set -- "$@" "$(printf '%s' "$word" | sed "$REWRITE")"
done
exec ssh "$@"
"""
REWRITER = "/home/foo/rewriting-ssh"


def receiver_can_confine(lab) -> bool:
    help_text = lab.receiver.run(["rsync", "--help"]).stdout
    return "--confine-root" in help_text and "--drop-D" in help_text


def captured_text(rsync_server_command: str) -> str:
    """The command as the client sends it (the fixture made its path absolute for command=)."""
    return rsync_server_command.replace(f" {DIRECTORY}/", " ~/srvbackups/")


@pytest.fixture
def gated(lab, keys, rsync_server_command):
    """foo's home emptied, the admin key, then the backup key installed with --gate."""
    lab.receiver.sh(
        "find /home/foo -mindepth 1 -maxdepth 1 ! -name .ssh -exec rm -rf {} +"
        " && find /home/foo/.ssh -mindepth 1 ! -name authorized_keys -exec rm -rf {} +"
    )
    lab.write_authorized_keys(f"{keys.admin_public}\n")
    expected = captured_text(rsync_server_command)
    argv = ["keyforge", "install", "--key", "-", "--from", lab.SENDER_IP,
            "--gate", DIRECTORY, "--command", expected]  # fmt: skip
    if not receiver_can_confine(lab):
        argv.append("--allow-unconfined")
    lab.receiver.run(argv, user="foo", input=keys.backup_public)
    # the gate makes its log directory on the first connection; made here, the home's own
    # entries stay as they are when the tests compare them
    lab.receiver.run(["mkdir", "-p", "-m", "700", DIRECTORY, "/home/foo/.ssh/keyforge"], user="foo")
    lab.sender.write_file(REWRITER, REWRITING_SSH, user="foo", mode="0755")
    lab.sender.sh("rm -rf /tmp/pulled && mkdir -p /tmp/pulled && chown foo /tmp/pulled")
    return expected


def gate_records(lab, *, warnings=False):
    """The gate's log; without the warning line each unconfined push adds, unless asked."""
    if not lab.receiver.exists(GATE_LOG):
        return []
    records = [json.loads(line) for line in lab.receiver.read_file(GATE_LOG).splitlines()]
    return [r for r in records if warnings or r["event"] != "warning"]


def untouched_state(lab):
    """foo's home and /tmp, the gate's own log and drift state left out."""
    return [line for line in lab.home_snapshot().splitlines() if "/.ssh/keyforge" not in line]


def test_install_gate_writes_the_gate_line(lab, keys, gated):
    line = lab.authorized_keys().splitlines()[-1]
    assert line.startswith("restrict,no-port-forwarding,")
    assert f'from="{lab.SENDER_IP}"' in line
    forced = line.split('command="', 1)[1].rsplit('" ', 1)[0]
    confine = ["--confine"] if receiver_can_confine(lab) else []
    assert shlex.split(forced) == [
        "/opt/keyforge/bin/keyforge", "gate", "--dir", DIRECTORY, "--expect", gated, *confine
    ]  # fmt: skip


def test_the_post_push_through_the_gate_works(lab, gated, backup_source):
    result = lab.sender.run(lab.push_argv(lab.BACKUP_KEY, backup_source), user="foo", check=False)

    assert result.returncode == 0, result.stderr
    assert lab.tree_hashes(lab.receiver, DIRECTORY) == lab.tree_hashes(lab.sender, "/mnt/backups")
    link = lab.receiver.run(["readlink", f"{DIRECTORY}/server1/home/foo/link"]).stdout.strip()
    assert link == "/rsyncd-munged/../etc/passwd"
    (record,) = gate_records(lab)
    assert record["event"] == "allowed"
    assert record["client"] == lab.SENDER_IP
    assert record["command"] == gated
    warned = [r for r in gate_records(lab, warnings=True) if r["event"] == "warning"]
    assert len(warned) == (0 if receiver_can_confine(lab) else 1)


@pytest.mark.parametrize("confined", [True, False], ids=["confined", "unconfined"])
def test_no_fifo_or_device_node_arrives_through_the_gate_as_foo(lab, gated, confined):
    # unconfined: the line as an older rsync's host gets it (no --confine); the gate runs as foo,
    # so it passes --no-specials, and foo's rsync makes no device node
    if not confined:
        lab.write_authorized_keys(lab.authorized_keys().replace(" --confine", ""))
    lab.sender.sh(
        "rm -rf /tmp/specials && mkdir /tmp/specials && echo kept > /tmp/specials/data"
        " && mkfifo /tmp/specials/fifo && mknod /tmp/specials/null c 1 3"
        " && chown -R foo /tmp/specials"
    )
    result = rsync_as_sender(lab, "-a", "/tmp/specials/", f"foo@{lab.RECEIVER_IP}:~/srvbackups/")
    assert result.returncode == 0, result.stderr
    assert lab.receiver.read_file(f"{DIRECTORY}/data") == "kept\n"
    assert not lab.receiver.exists(f"{DIRECTORY}/fifo")
    assert not lab.receiver.exists(f"{DIRECTORY}/null")
    (record,) = [r for r in gate_records(lab) if r["event"] == "allowed"]
    can_confine = confined and receiver_can_confine(lab)
    assert ("--drop-D" if can_confine else "--no-specials") in record["argv"]
    warned = [r for r in gate_records(lab, warnings=True) if r["event"] == "warning"]
    assert len(warned) == (0 if can_confine else 1)


def rsync_as_sender(lab, *args, env=None, rsh=None):
    argv = ["rsync", f"--rsh={rsh or lab.rsh(lab.BACKUP_KEY)}", *args]
    return lab.sender.run(["timeout", "-s", "KILL", "20", *argv], user="foo", check=False, env=env)


ATTACKS = {
    "pull": (
        lambda lab: rsync_as_sender(
            lab, "-a", f"foo@{lab.RECEIVER_IP}:~/srvbackups/", "/tmp/pulled/"
        ),
        "a pull (--sender)",
    ),
    "path outside": (
        lambda lab: rsync_as_sender(lab, "-a", "/etc/hostname", f"foo@{lab.RECEIVER_IP}:~/.ssh/"),
        "is outside",
    ),
    "dotdot escape": (
        lambda lab: rsync_as_sender(
            lab, "-a", "/etc/hostname", f"foo@{lab.RECEIVER_IP}:~/srvbackups/../.ssh/"
        ),
        "'..' component",
    ),
    "symlink escape": (
        lambda lab: rsync_as_sender(
            lab, "-a", "/etc/hostname", f"foo@{lab.RECEIVER_IP}:~/srvbackups/escape/"
        ),
        "through a symbolic link",
    ),
    "shell metacharacter payload": (
        lambda lab: lab.ssh(
            lab.sender,
            lab.BACKUP_KEY,
            f"foo@{lab.RECEIVER_IP}",
            "rsync --server -r . srvbackups/;touch /home/foo/pwned;echo $(id)>/tmp/pwned",
        ),
        "';' (a second command)",
    ),
}


@pytest.mark.parametrize("attack", ATTACKS, ids=list(ATTACKS))
def test_attacks_are_refused_and_logged_with_the_client_address(lab, gated, attack):
    lab.receiver.run(["ln", "-s", "/home/foo/.ssh", f"{DIRECTORY}/escape"], user="foo")
    before = untouched_state(lab)
    run, reason = ATTACKS[attack]

    result = run(lab)

    assert result.returncode != 0
    assert "keyforge gate: refused:" in result.stderr
    assert untouched_state(lab) == before
    assert lab.sender.run(["ls", "-A", "/tmp/pulled"]).stdout == ""
    (record,) = gate_records(lab)
    assert record["event"] == "refused"
    assert record["client"] == lab.SENDER_IP
    assert reason in record["reason"]


CLIENTS = {
    # rsync 3.1 announced fewer capabilities and no checksum negotiation
    "older client": "s/^-logDtprze\\.iLsfxCIvu$/-logDtprze.iLsfxC/",
    # a future rsync announcing a capability this one does not know, and verbose output
    "newer client": "s/^-logDtprze\\.iLsfxCIvu$/-vlogDtprze.iLsfxCIvuZ/",
}


@pytest.mark.parametrize("client", CLIENTS, ids=list(CLIENTS))
def test_another_clients_flag_string_still_pushes_and_is_logged_once_as_drift(
    lab, gated, backup_source, client
):
    rsh = shlex.join([REWRITER, *shlex.split(lab.rsh(lab.BACKUP_KEY))[1:]])
    env = {"REWRITE": CLIENTS[client]}
    push = ["-az", "--delete", f"{backup_source}", f"foo@{lab.RECEIVER_IP}:~/srvbackups/"]

    first = rsync_as_sender(lab, *push, env=env, rsh=rsh)
    second = rsync_as_sender(lab, *push, env=env, rsh=rsh)

    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert lab.tree_hashes(lab.receiver, DIRECTORY) == lab.tree_hashes(lab.sender, "/mnt/backups")
    records = gate_records(lab)
    assert [r["event"] for r in records] == ["allowed", "drift", "allowed"]
    drift = records[1]
    assert drift["expected"] == gated
    assert drift["received"] == records[0]["command"] != gated
    assert drift["client"] == lab.SENDER_IP
    assert "keyforge capture" in drift["hint"]
