"""Everything a thief could try with the locked backup key, from the sender's own address,
against a real sshd whose sshd_config allows all of it: the authorized_keys line that
``keyforge install`` writes is the only thing in the way. Each attack runs nothing but the
forced rsync (or nothing at all), and foo's home is byte for byte what it was.

Where the server refuses on the key's behalf, a control shows the unrestricted admin key
getting the same thing, so the refusal is the key line's doing."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.docker

FORCED = "Starting session: forced-command (key-option)"


@pytest.fixture
def guarded(lab, locked):
    """A real backup already on the receiver, and a snapshot of foo's home to compare with."""
    result = lab.sender.run(
        lab.push_argv(lab.BACKUP_KEY, lab.BACKUP_SOURCE), user="foo", check=False
    )
    assert result.returncode == 0, result.stderr
    lab.sender.sh("rm -rf /tmp/stolen /tmp/pulled && mkdir -p /tmp/pulled && chown foo /tmp/pulled")
    return lab.home_snapshot()


def ssh_to_receiver(lab, *remote, options=(), key=None, input=None):
    """ssh [options] foo@receiver [remote command] from the sender's address."""
    return lab.ssh(
        lab.sender,
        key or lab.BACKUP_KEY,
        *options,
        f"foo@{lab.RECEIVER_IP}",
        *remote,
        input=input,
    )


def client_options(lab):
    """The lab's ssh client options, taken from its --rsh string past "ssh -p 22 -i KEY"."""
    words = lab.rsh(lab.BACKUP_KEY).split()
    return words[words.index("-o") :]


def bounded(*argv):
    """A client the forced rsync may leave waiting forever (two rsync receivers, or scp and
    rsync, each waiting for the other): it is stopped after a few seconds."""
    return ["timeout", "-s", "KILL", "5", *argv]


def scp_argv(lab, *args):
    return bounded("scp", *client_options(lab), "-i", lab.BACKUP_KEY, *args)


SESSION_ATTACKS = {
    "remote command rm -rf ~": lambda lab: ssh_to_receiver(lab, "rm -rf ~; touch ~/pwned"),
    "interactive shell": lambda lab: ssh_to_receiver(lab, input="touch ~/pwned\nrm -rf ~\n"),
    "forced terminal (ssh -tt)": lambda lab: ssh_to_receiver(
        lab, options=["-tt"], input="touch ~/pwned\nrm -rf ~\n"
    ),
    "scp upload (sftp protocol)": lambda lab: lab.sender.run(
        scp_argv(lab, "/etc/hostname", f"foo@{lab.RECEIVER_IP}:pwned"), user="foo", check=False
    ),
    "scp upload (legacy -O)": lambda lab: lab.sender.run(
        scp_argv(lab, "-O", "/etc/hostname", f"foo@{lab.RECEIVER_IP}:pwned"),
        user="foo",
        check=False,
    ),
    "scp download of authorized_keys": lambda lab: lab.sender.run(
        scp_argv(lab, f"foo@{lab.RECEIVER_IP}:.ssh/authorized_keys", "/tmp/stolen"),
        user="foo",
        check=False,
    ),
    "sftp put, get and rm": lambda lab: lab.sender.run(
        bounded(
            "sftp", *client_options(lab), "-i", lab.BACKUP_KEY, "-b", "-", f"foo@{lab.RECEIVER_IP}"
        ),
        user="foo",
        input="put /etc/hostname pwned\nget .ssh/authorized_keys /tmp/stolen\nrm srvbackups\n",
        check=False,
    ),
    "rsync pull of the backups": lambda lab: lab.sender.run(
        bounded(
            "rsync",
            "-az",
            f"--rsh={lab.rsh(lab.BACKUP_KEY)}",
            f"foo@{lab.RECEIVER_IP}:~/srvbackups/",
            "/tmp/pulled/",
        ),
        user="foo",
        check=False,
    ),
    "rsync push to another path": lambda lab: lab.sender.run(
        lab.push_argv(lab.BACKUP_KEY, lab.BACKUP_SOURCE, "~/.ssh/"), user="foo", check=False
    ),
}


@pytest.mark.parametrize("attack", SESSION_ATTACKS, ids=list(SESSION_ATTACKS))
def test_attack_runs_only_the_forced_rsync_and_changes_nothing(
    lab, guarded, rsync_server_command, attack
):
    log = lab.sshd_log()

    SESSION_ATTACKS[attack](lab)

    started = log.wait_for(FORCED)
    assert rsync_server_command in started
    sessions = [line for line in log.lines() if "Starting session:" in line]
    assert all(FORCED in line for line in sessions), sessions
    assert lab.home_snapshot() == guarded
    stolen = lab.sender.run(["sh", "-c", "cat /tmp/stolen 2>/dev/null; ls -A /tmp/pulled"])
    assert stolen.stdout == ""


def test_pty_is_refused_to_the_backup_key_but_not_to_the_admin_key(lab, guarded):
    backup = ssh_to_receiver(lab, options=["-tt"], input="")
    admin = ssh_to_receiver(lab, "tty", options=["-tt"], key=lab.ADMIN_KEY, input="")

    assert "PTY allocation request failed" in backup.stderr
    assert admin.stdout.startswith("/dev/pts/"), admin
    assert lab.home_snapshot() == guarded


# --- forwarding ------------------------------------------------------------------------------

# Runs in the sender as foo: starts ssh with a forward, then tries to reach the receiver's own
# sshd through it and prints what it got as JSON. ssh's -N means no session: the forced
# command never runs, so only the key's no-port-forwarding can stop the forward.
FORWARD_PROBE = r"""
import json, socket, struct, subprocess, sys, time

mode, *ssh = sys.argv[1:]
port = 40022
spec = {"L": ["-L", f"127.0.0.1:{port}:127.0.0.1:22"], "D": ["-D", f"127.0.0.1:{port}"],
        "R": ["-R", f"127.0.0.1:{port}:127.0.0.1:9"]}[mode]
proc = subprocess.Popen([*ssh[:1], "-N", "-o", "ExitOnForwardFailure=yes", *spec, *ssh[1:]],
                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        text=True)

def connect():
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            time.sleep(0.1)
    return None

got = ""
if mode == "R":
    time.sleep(3)  # the server answers the forward request right after authentication
else:
    conn = connect()
    if conn is not None:
        with conn:
            try:
                if mode == "D":  # SOCKS5: no auth, then CONNECT 127.0.0.1:22
                    conn.sendall(b"\x05\x01\x00")
                    conn.recv(2)
                    conn.sendall(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1")
                                 + struct.pack("!H", 22))
                    reply = conn.recv(10)
                    if len(reply) < 2 or reply[1] != 0:
                        raise OSError("SOCKS connect refused")
                got = conn.recv(64).decode(errors="replace")
            except OSError:
                pass
exited = proc.poll()
proc.terminate()
_, err = proc.communicate(timeout=10)
print(json.dumps({"banner": got, "exited": exited, "stderr": err}))
"""


def forward(lab, mode, key):
    ssh = ["ssh", *client_options(lab), "-i", key, f"foo@{lab.RECEIVER_IP}"]
    result = lab.sender.run(["python3", "-c", FORWARD_PROBE, mode, *ssh], user="foo")
    return json.loads(result.stdout)


def receiver_listens_on(lab, port):
    probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)"
    return lab.receiver.run(["python3", "-c", probe], check=False).returncode == 0


@pytest.mark.parametrize("mode", ["L", "D"], ids=["local -L", "dynamic -D"])
def test_local_and_dynamic_forwards_are_refused_to_the_backup_key(lab, guarded, mode):
    log = lab.sshd_log()

    refused = forward(lab, mode, lab.BACKUP_KEY)
    allowed = forward(lab, mode, lab.ADMIN_KEY)

    assert refused["banner"] == ""
    assert allowed["banner"].startswith("SSH-2.0-"), allowed
    log.wait_for("refused local port forward")
    assert lab.home_snapshot() == guarded


def test_remote_forward_is_refused_to_the_backup_key(lab, guarded):
    refused = forward(lab, "R", lab.BACKUP_KEY)
    assert refused["exited"] == 255
    assert "remote port forwarding failed" in refused["stderr"]

    allowed = forward(lab, "R", lab.ADMIN_KEY)
    assert allowed["exited"] is None, allowed  # still running: the forward stood
    assert lab.home_snapshot() == guarded


# --- agent and X11 forwarding ----------------------------------------------------------------

# Runs in the receiver as foo (a container's root may not read another user's environ): the
# environment of foo's session process (the forced rsync, or the admin's sleep), as JSON.
SESSION_ENV_PROBE = r"""
import json, os, sys, time

names = set(sys.argv[1:])
deadline = time.monotonic() + 15
while time.monotonic() < deadline:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
            if os.path.basename(argv[0].decode()) not in names:
                continue
            env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        pairs = dict(e.decode().split("=", 1) for e in env if b"=" in e)
        print(json.dumps(pairs))
        sys.exit(0)
    time.sleep(0.1)
sys.exit("no session process appeared")
"""

# Runs in the sender as foo: an agent holding the key, a fake X display, and ssh -A -X whose
# session stays open a few seconds (stdin held open) so its environment can be read.
AGENT_X11_CLIENT = r"""
eval "$(ssh-agent -s)" >/dev/null
ssh-add -q "$KEY" 2>/dev/null
export DISPLAY=:0
sleep 4 | ssh "$@"
status=$?
ssh-agent -k >/dev/null
exit $status
"""


def session_environment(lab, key, *remote):
    ssh = [*client_options(lab), "-A", "-X", "-i", key, f"foo@{lab.RECEIVER_IP}", *remote]
    client = lab.sender.popen(["env", f"KEY={key}", "sh", "-c", AGENT_X11_CLIENT, "client", *ssh])
    probe = lab.receiver.run(
        ["python3", "-c", SESSION_ENV_PROBE, "rsync", "sleep"], user="foo", check=False
    )
    _, err = client.communicate(timeout=30)
    assert probe.returncode == 0, f"{probe.stderr}; the client said: {err}"
    return json.loads(probe.stdout), err


def test_agent_and_x11_forwarding_are_refused_to_the_backup_key(lab, guarded):
    env, err = session_environment(lab, lab.BACKUP_KEY)

    assert "SSH_AUTH_SOCK" not in env
    assert "DISPLAY" not in env
    assert "X11 forwarding request failed" in err
    assert env["SSH_CONNECTION"].startswith(lab.SENDER_IP)
    assert lab.home_snapshot() == guarded


def test_agent_and_x11_forwarding_reach_the_admin_key(lab, guarded):
    env, _ = session_environment(lab, lab.ADMIN_KEY, "sleep 3")

    assert env["SSH_AUTH_SOCK"].startswith("/tmp/ssh-")
    assert env["DISPLAY"].startswith("localhost:")
