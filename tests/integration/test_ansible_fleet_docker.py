"""Three sending servers and one receiving host, set up by the keyforge.offsite playbook.

The playbook (ansible/playbooks/offsite.yml, the README's) runs from this machine against the
Docker lab over the community.docker.docker connection: each sender gets its key, config and
schedule; each key is locked on the receiver to its sender's own rsync command, address and
directory; the receiver gets a snapshot job per sender. A second run changes nothing, a check
run with a changed inventory shows the diff and changes nothing, every sender's keyforge sync
then works, and one sender holding another's key is refused by from=.
"""

from __future__ import annotations

import json
import re

import pytest
import yaml
from ansible_lab import COLLECTION_SOURCE, collection_tree, environment, program, run

pytestmark = pytest.mark.docker

RECEIVER_USER = "fleet"
AUTHORIZED_KEYS = f"/home/{RECEIVER_USER}/.ssh/authorized_keys"
BASE = f"/home/{RECEIVER_USER}/offsite"
DATA = "/srv/fleet-data"
CONFIG = "/etc/keyforge/offsite.toml"
KEY = "/root/.ssh/keyforge-offsite"
PLAYBOOK = COLLECTION_SOURCE / "playbooks" / "offsite.yml"
NAMES = ("server1", "server2", "server3")
PYTHON = "/opt/keyforge/bin/python"


def _inventory(fleet, **changes) -> dict:
    """The lab's inventory: the senders by name, the receiver, each as its container."""
    senders = {}
    for name, host in zip(NAMES, fleet.senders, strict=True):
        senders[name] = {
            "ansible_host": host.container,
            "offsite_from": [host.address, *changes.get(name, {}).get("extra_from", [])],
            "offsite_sync_at": changes.get(name, {}).get("sync_at", "03:30"),
        }
    connection = {
        "ansible_connection": "community.docker.docker",
        "ansible_python_interpreter": PYTHON,
    }
    return {
        "all": {
            "vars": {
                **connection,
                "offsite_receiver": "raspberrypi",
                "offsite_receiver_address": fleet.receiver.address,
                "offsite_receiver_user": RECEIVER_USER,
                "offsite_sources": [DATA],
                "offsite_compression": "gzip",
                "offsite_backup_extra": {"test_archives": False, "nice": 0, "ionice": "none"},
            },
            "children": {
                "senders": {"hosts": senders},
                "receivers": {"hosts": {"raspberrypi": {"ansible_host": fleet.receiver.container}}},
            },
        }
    }


@pytest.fixture(scope="module")
def controller(tmp_path_factory):
    root = tmp_path_factory.mktemp("fleet")
    collection_tree(root)
    return root


def _playbook(controller, fleet, *extra, **changes):
    inventory = controller / "inventory.yml"
    inventory.write_text(yaml.safe_dump(_inventory(fleet, **changes)))
    argv = [program("ansible-playbook"), "-i", str(inventory), str(PLAYBOOK), *extra]
    return run(argv, env=environment(controller), check=False)


def _recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP as {host: {ok: n, changed: n, failed: n, ...}}."""
    recap = {}
    for line in output.split("PLAY RECAP", 1)[1].splitlines()[1:]:
        if ":" not in line:
            continue
        host, _, counts = line.partition(":")
        recap[host.strip()] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", counts)}
    return recap


@pytest.fixture(scope="module")
def deployed(fleet, controller):
    """Cron present on every host, a receiving account, data on every sender; then the
    playbook twice."""
    receiver = fleet.receiver
    receiver.sh(
        f"id {RECEIVER_USER} >/dev/null 2>&1 || (useradd --create-home --shell /bin/sh "
        f"{RECEIVER_USER} && usermod --password '*' {RECEIVER_USER}) && "
        f"install -d -m 0700 -o {RECEIVER_USER} -g {RECEIVER_USER} /home/{RECEIVER_USER}/.ssh"
        " && mkdir -p /etc/cron.d"
    )
    for name, host in zip(NAMES, fleet.senders, strict=True):
        host.sh(
            f"mkdir -p /etc/cron.d {DATA}/etc && printf '{name}\\n' > {DATA}/etc/hostname && "
            f"head -c 50000 /dev/urandom > {DATA}/random.bin"
        )
    first = _playbook(controller, fleet)
    assert first.returncode == 0, first.stdout[-8000:] + first.stderr[-2000:]
    second = _playbook(controller, fleet)
    assert second.returncode == 0, second.stdout[-8000:] + second.stderr[-2000:]
    return first, second


def test_the_first_run_changes_every_host_and_the_second_changes_nothing(deployed):
    first, second = deployed
    assert all(
        counts["changed"] > 0 for host, counts in _recap(first.stdout).items() if host in NAMES
    ), first.stdout[-3000:]
    recap = _recap(second.stdout)
    assert set(NAMES) <= set(recap), second.stdout[-3000:]
    assert {host: counts["changed"] for host, counts in recap.items()} == dict.fromkeys(recap, 0), (
        second.stdout[-6000:]
    )
    assert all(counts["failed"] == 0 for counts in recap.values())


def test_each_key_is_locked_to_its_senders_address_and_directory(fleet, deployed):
    lines = fleet.receiver.read_file(AUTHORIZED_KEYS).splitlines()
    assert len(lines) == 3
    for name, host in zip(NAMES, fleet.senders, strict=True):
        public = host.read_file(f"{KEY}.pub").strip()
        [line] = [line for line in lines if line.endswith(public)]
        assert line.startswith("restrict,")
        assert f'from="{host.address}"' in line
        assert f" {BASE}/{name}/" in line
        assert f"root@{name}" in public


def test_check_diff_on_a_changed_inventory_shows_the_change_and_changes_nothing(
    fleet, controller, deployed
):
    before_keys = fleet.receiver.read_file(AUTHORIZED_KEYS)
    sender = fleet.senders[0]
    before_config = sender.read_file(CONFIG)
    before_cron = sender.read_file("/etc/cron.d/keyforge-offsite")
    changes = {"server1": {"extra_from": ["192.0.2.99"], "sync_at": "04:10"}}
    checked = _playbook(controller, fleet, "--check", "--diff", **changes)
    assert checked.returncode == 0, checked.stdout[-8000:]
    out = checked.stdout
    assert "+restrict," in out and f'from="{sender.address},192.0.2.99"' in out, out[-6000:]
    assert '-sync_at = "03:30"' in out and '+sync_at = "04:10"' in out, out[-6000:]
    assert _recap(out)["server1"]["changed"] > 0
    assert _recap(out)["server2"]["changed"] == 0
    assert fleet.receiver.read_file(AUTHORIZED_KEYS) == before_keys
    assert sender.read_file(CONFIG) == before_config
    assert sender.read_file("/etc/cron.d/keyforge-offsite") == before_cron


def test_every_sender_syncs_and_the_receiver_snapshots_each_copy(fleet, deployed):
    for name, host in zip(NAMES, fleet.senders, strict=True):
        host.run(["keyforge", "backup", "--config", CONFIG], timeout=180)
        result = host.run(["keyforge", "sync", "--config", CONFIG], check=False, timeout=180)
        assert result.returncode == 0, result.stdout + result.stderr
        copied = fleet.receiver.run(["ls", f"{BASE}/{name}"]).stdout.split()
        assert any(f.startswith(f"{name}.") and f.endswith(".manifest.json") for f in copied)
        assert all(not f.startswith(tuple(n for n in NAMES if n != name)) for f in copied)
    for name in NAMES:
        config = f"/etc/keyforge/offsite-{name}.toml"
        snap = fleet.receiver.run(["keyforge", "snapshot", "--config", config], check=False)
        assert snap.returncode == 0, snap.stdout + snap.stderr
    listed = fleet.receiver.run(["keyforge", "schedule", "--list"]).stdout
    sets = {line.split("\t")[0]: line for line in listed.splitlines()}
    for name in NAMES:
        assert f"/etc/keyforge/offsite-{name}.toml" in sets[f"keyforge-offsite-{name}"]
        assert "snapshot 05:30" in sets[f"keyforge-offsite-{name}"]
    for host in fleet.senders:
        status = host.run(["keyforge", "status", "--json", "--config", CONFIG], check=False)
        assert status.returncode == 0, status.stdout + status.stderr
        assert json.loads(status.stdout)


def _ssh(key: str, receiver_address: str) -> list[str]:
    return [
        "ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
        "-o", "UserKnownHostsFile=/etc/keyforge/offsite_known_hosts",
        "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=10", "-i", key,
        f"{RECEIVER_USER}@{receiver_address}", "true",
    ]  # fmt: skip


def test_a_sender_using_another_senders_key_is_refused_by_from(fleet, lab, deployed):
    server1, server2 = fleet.senders[0], fleet.senders[1]
    server2.write_file("/root/stolen-key", server1.read_file(KEY), user="root", mode="0600")
    log = lab.sshd_log()
    refused = server2.run(_ssh("/root/stolen-key", fleet.receiver.address), check=False)
    assert refused.returncode == 255, refused.stdout + refused.stderr
    assert "Permission denied" in refused.stderr
    log.wait_for(
        f"Authentication tried for {RECEIVER_USER} with correct key but not from a permitted host"
    )
    # the same key from its own sender logs in (and gets its rsync server, not 'true')
    own = server1.run(_ssh(KEY, fleet.receiver.address), check=False)
    assert "Permission denied" not in own.stderr, own.stderr
