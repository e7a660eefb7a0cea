"""README's Quickstart, command by command, through keyforge's CLI in the lab: root on the
sender plays server1, foo on the receiver plays raspberrypi."""

from __future__ import annotations

import tomllib

import pytest

pytestmark = pytest.mark.docker

CONFIG = "/etc/keyforge/keyforge.toml"
PINNED = "/etc/keyforge/known_hosts"
BACKUPS = "/mnt/backups/server1"
SIGNING_KEY = "/etc/keyforge/manifest-signing-key"
ALLOWED_SIGNERS = "/etc/keyforge/allowed_signers"
TARGET_BLOCK = """#[[targets]]
#name = "offsite"
#host = "raspberrypi"
#port = 22
#user = "foo"
#key = "/root/.ssh/backups"
#remote_path = "srvbackups/"
#known_hosts = "/etc/keyforge/known_hosts"
"""


def edited_config(text: str, receiver_ip: str) -> str:
    """What the user does in $EDITOR: uncomment the first [[targets]] entry, point it at the
    receiver; a small source and gzip (the lab images carry no zstd) keep the run short."""
    assert TARGET_BLOCK in text, "keyforge init no longer writes the entry README describes"
    target = "".join(line[1:] + "\n" for line in TARGET_BLOCK.splitlines())
    text = text.replace(TARGET_BLOCK, target.replace('"raspberrypi"', f'"{receiver_ip}"'))
    assert f'#signing_key = "{SIGNING_KEY}"' in text
    text = text.replace(f'#signing_key = "{SIGNING_KEY}"', f'signing_key = "{SIGNING_KEY}"')
    text = text.replace(
        'sources = ["/etc", "/home", "/var", "/boot", "/root"]', 'sources = ["/etc/ssh"]'
    )
    return text.replace('#compression = "zstd"', 'compression = "gzip"')


def fresh_hosts(lab):
    """server1 without keyforge's files; raspberrypi with foo's home empty but for .ssh."""
    lab.sender.sh(
        f"rm -rf /etc/keyforge {BACKUPS} /root/.ssh /var/log/keyforge-sync.log /tmp/restored"
    )
    lab.receiver.sh(
        f"find {lab.FOO_HOME} -mindepth 1 -maxdepth 1 ! -name .ssh -exec rm -rf {{}} +"
        f" && find {lab.FOO_HOME}/.ssh -mindepth 1 -exec rm -rf {{}} +"
        f" && rm -rf /root/server1.toml /root/restored {ALLOWED_SIGNERS}"
    )


def test_the_readme_quickstart_works_as_written(lab):
    fresh_hosts(lab)
    server1, pi = lab.sender, lab.receiver

    def on_server1(*args, check=True):
        return server1.run(["keyforge", *args], check=check)

    def on_pi(*args, check=True):
        return pi.run(["sh", "-c", 'cd && exec "$@"', "as-foo", "keyforge", *args], user="foo",
                      check=check)  # fmt: skip

    # on server1: config, pinned host key, key, first backup, the public key copied over
    on_server1("init")
    server1.write_file(
        CONFIG, edited_config(server1.read_file(CONFIG), lab.RECEIVER_IP), user="root"
    )
    server1.sh(f"ssh-keyscan -t ed25519 {lab.RECEIVER_IP} > {PINNED}")
    pinned = server1.read_file(PINNED).split()
    assert pinned[1:3] == pi.read_file("/etc/ssh/ssh_host_ed25519_key.pub").split()[:2]
    on_server1("pair")
    signing = on_server1("pair", "--signing").stdout
    [pin] = [ln.strip() for ln in signing.splitlines() if ln.startswith("  server1 ")]
    on_server1("backup")
    public_key = server1.read_file("/root/.ssh/backups.pub")
    pi.write_file(f"{lab.FOO_HOME}/backups.pub", public_key, user="foo", mode="0644")

    # on raspberrypi: lock the key to the recorder
    on_pi("capture", "start", "--key", "backups.pub", "--from", lab.SENDER_IP)

    # on server1: the push fails at once, without retries, and is recorded
    failed = on_server1("sync", check=False)
    assert failed.returncode == 5
    assert "capture recorder answered" in failed.stderr
    assert "retry" not in failed.stderr
    assert not pi.exists(f"{lab.FOO_HOME}/srvbackups")

    # on raspberrypi: the captured command, from the captured address
    shown = on_pi("capture", "show").stdout
    command = shown.splitlines()[0]
    assert command.startswith("rsync --server -")
    assert command.endswith(" . srvbackups/")
    assert f"client {lab.SENDER_IP}" in shown
    on_pi("install", "--key", "backups.pub", "--from-capture", "--from-captured-address")
    line = next(x for x in lab.authorized_keys().splitlines() if public_key.split()[1] in x)
    assert f'from="{lab.SENDER_IP}",command="{command}" ' in line

    # the alternative path predicts the very same line
    printed = on_server1("sync", "--print-server-command").stdout
    assert command in printed.splitlines()

    # on server1: the push works, the key does one thing, the schedule, the status
    synced = on_server1("sync", "--verbose")  # quiet by default, as under cron
    assert "sync offsite: ok" in synced.stdout
    sent = lab.tree_hashes(server1, BACKUPS)
    del sent["./.keyforge.lock"]  # sync leaves the lock behind, by design
    assert lab.tree_hashes(pi, f"{lab.FOO_HOME}/srvbackups") == sent
    checked = on_server1("check")
    assert "not ok" not in checked.stdout
    assert "/opt/keyforge/bin/keyforge sync --config /etc/keyforge/keyforge.toml" in (
        on_server1("schedule").stdout
    )
    on_server1("status", "--max-age", "26")

    # on raspberrypi, as root: list, find and restore server1's /etc/ssh from the offsite copy,
    # with no config file (README: --from)
    config = tomllib.loads(server1.read_file(CONFIG))
    assert config["backup"]["sources"] == ["/etc/ssh"]
    copy = f"{lab.FOO_HOME}/srvbackups"
    listed = pi.run(["keyforge", "list", "--from", copy]).stdout
    assert "1 archive(s)" in listed and "server1-etc_ssh." in listed
    found = pi.run(["keyforge", "find", "--from", copy, "sshd_config"]).stdout
    assert found.splitlines()[0] == "/etc/ssh/sshd_config"
    pi.sh(f"mkdir -p /etc/keyforge && echo '{pin}' > {ALLOWED_SIGNERS}")
    restore = [
        "keyforge",
        "restore",
        "--from",
        copy,
        "--path",
        "/etc/ssh",
        "--to",
        "/root/restored",
    ]
    unpinned = pi.run(restore, check=False)
    assert unpinned.returncode == 16, unpinned.stderr
    pi.run([*restore, "--allowed-signers", ALLOWED_SIGNERS])
    assert lab.tree_hashes(pi, "/root/restored") == lab.tree_hashes(server1, "/etc/ssh")
