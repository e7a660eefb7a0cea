"""History that a stolen key cannot destroy: keyforge snapshot on the receiving host.

The backup key is locked to the post's forced ``rsync --server ... --delete`` command. The
sender pushes day-1 and day-2 data; root on the receiver runs ``keyforge snapshot`` after each
push. Then the stolen key, used from the sender (its from= admits no other address), pushes an
empty tree with --delete: the mirror is wiped, every earlier snapshot is byte for byte intact,
and the next snapshot run keeps them all, even past retention, and says the copy looks wiped.
"""

from __future__ import annotations

import datetime as dt

import pytest

pytestmark = pytest.mark.docker

HOME = "/home/foo"
COPY = f"{HOME}/srvbackups"
STORE = "/var/backups/keyforge-snapshots"
CONFIG = "/etc/keyforge/snapshot.toml"
MANIFEST = "server1.20261127.manifest.json"
# The sender's backups for this module alone: other modules of the session-wide lab run
# keyforge backup as root on /mnt/backups, which leaves it root's.
SOURCE = "/mnt/snapshot-test/server1"
SOURCE_SCRIPT = f"""
set -e
rm -rf /mnt/snapshot-test
mkdir -p {SOURCE}/etc {SOURCE}/home/foo
head -c 300000 /dev/urandom > {SOURCE}/home/foo/random.bin
printf 'root:x:0:0:root:/root:/bin/bash\\n' > {SOURCE}/etc/passwd
: > {SOURCE}/etc/empty
chown -R foo:foo /mnt/snapshot-test
"""


def _snapshot(lab, *args: str, user: str = "root"):
    return lab.receiver.run(
        ["keyforge", "snapshot", "--config", CONFIG, "--verbose", *args],
        user=user,
        check=False,
        timeout=120,
    )


def _stamps(lab) -> list[str]:
    names = lab.receiver.run(["ls", "-1", STORE]).stdout.split()
    return sorted(n for n in names if not n.startswith("."))


def _push(lab, source: str):
    return lab.sender.run(lab.push_argv(lab.BACKUP_KEY, source), user="foo", check=False)


def _inode(lab, path: str) -> str:
    return lab.receiver.run(["stat", "-c", "%i", path]).stdout.strip()


@pytest.fixture(scope="module")
def snapshot_source(lab) -> str:
    lab.sender.sh(SOURCE_SCRIPT)
    return SOURCE


@pytest.fixture(scope="module")
def history(lab, keys, rsync_server_command, snapshot_source):
    backup_source = snapshot_source
    """Two days pushed with the locked key, each followed by a snapshot as root. The two
    snapshots are then dated three and two days back, so retention (1 day, min_keep 1) would
    remove both but for the wipe guard."""
    # as the 'locked' fixture does, once for the module: the backup key locked by keyforge
    # install to the post's forced command, foo's home otherwise empty
    lab.receiver.sh(
        f"find {HOME} -mindepth 1 -maxdepth 1 ! -name .ssh -exec rm -rf {{}} +"
        f" && find {HOME}/.ssh -mindepth 1 ! -name authorized_keys -exec rm -rf {{}} +"
    )
    lab.write_authorized_keys(f"{keys.admin_public}\n")
    lab.keyforge_install(keys.backup_public, command=rsync_server_command)
    assert "--delete" in lab.authorized_keys()
    lab.receiver.sh(f"rm -rf {STORE} && mkdir -p /etc/keyforge")
    lab.receiver.write_file(
        CONFIG,
        f'[snapshot]\nsource = "{COPY}"\ndirectory = "{STORE}"\nretention_days = 1\nmin_keep = 1\n',
        user="root",
        mode="0644",
    )
    lab.sender.write_file(
        f"{backup_source}/{MANIFEST}", '{"format": 1, "host": "server1", "archives": []}\n'
    )
    assert _push(lab, backup_source).returncode == 0
    day1 = _snapshot(lab)
    assert day1.returncode == 0, day1.stderr
    lab.sender.sh(
        f"printf 'day 2\\n' > {backup_source}/etc/day2 && "
        f"printf 'changed\\n' > {backup_source}/etc/empty && chown -R foo {backup_source}"
    )
    assert _push(lab, backup_source).returncode == 0
    day2 = _snapshot(lab)
    assert day2.returncode == 0, day2.stderr
    now = dt.datetime.now(dt.UTC)
    old = []
    for stamp, days in zip(_stamps(lab), (3, 2), strict=True):
        renamed = (now - dt.timedelta(days=days)).strftime("%Y%m%dT%H%M%SZ")
        lab.receiver.run(["mv", f"{STORE}/{stamp}", f"{STORE}/{renamed}"])
        old.append(renamed)
    hashes = {stamp: lab.tree_hashes(lab.receiver, f"{STORE}/{stamp}") for stamp in old}
    yield {"stamps": old, "hashes": hashes, "day1": day1, "day2": day2}
    lab.receiver.sh(f"rm -rf {STORE} {CONFIG}")


def test_each_snapshot_holds_what_that_day_pushed(lab, history):
    day1, day2 = history["stamps"]
    assert "./server1/etc/day2" not in history["hashes"][day1]
    assert "./server1/etc/day2" in history["hashes"][day2]
    assert f"./server1/{MANIFEST}" in history["hashes"][day1]
    assert "took snapshot" in history["day2"].stdout
    assert "unchanged files linked to" in history["day2"].stdout


def test_unchanged_files_are_hard_links_between_snapshots_never_to_the_mirror(lab, history):
    day1, day2 = history["stamps"]
    first = _inode(lab, f"{STORE}/{day1}/server1/home/foo/random.bin")
    assert _inode(lab, f"{STORE}/{day2}/server1/home/foo/random.bin") == first
    assert _inode(lab, f"{COPY}/server1/home/foo/random.bin") != first
    assert _inode(lab, f"{STORE}/{day2}/server1/etc/empty") != _inode(
        lab, f"{STORE}/{day1}/server1/etc/empty"
    )


def test_the_backup_key_cannot_write_into_the_store_and_foo_cannot_list_it(
    lab, history, snapshot_source
):
    before = {s: lab.tree_hashes(lab.receiver, f"{STORE}/{s}") for s in history["stamps"]}
    lab.sender.sh("rm -rf /tmp/evil && mkdir /tmp/evil && echo evil > /tmp/evil/evil")
    lab.sender.run(["chown", "-R", "foo", "/tmp/evil"])
    # the client names the store; the forced command ignores it and receives into the mirror
    argv = lab.push_argv(lab.BACKUP_KEY, "/tmp/evil/", destination=f"{STORE}/")
    pushed = lab.sender.run(argv, user="foo", check=False)
    assert pushed.returncode == 0, pushed.stderr
    assert {s: lab.tree_hashes(lab.receiver, f"{STORE}/{s}") for s in history["stamps"]} == before
    assert not lab.receiver.exists(f"{STORE}/evil")
    assert lab.receiver.exists(f"{COPY}/evil")
    assert _push(lab, snapshot_source).returncode == 0  # the nightly push puts the mirror back
    listing = lab.receiver.run(["ls", STORE], user="foo", check=False)
    assert listing.returncode != 0
    assert "Permission denied" in listing.stderr


def test_snapshot_refuses_to_run_as_the_user_the_key_logs_in_as(lab, history):
    result = _snapshot(lab, user="foo")
    assert result.returncode == 2
    assert "runs as foo, the owner of the synced copy" in result.stderr


def test_a_stolen_key_pushing_an_empty_tree_wipes_the_mirror_but_no_snapshot(lab, history):
    assert lab.tree_hashes(lab.receiver, COPY)  # the mirror holds the day-2 push
    lab.sender.sh("rm -rf /tmp/empty && mkdir /tmp/empty && chown foo /tmp/empty")
    attack = _push(lab, "/tmp/empty/")
    assert attack.returncode == 0, attack.stderr
    assert lab.tree_hashes(lab.receiver, COPY) == {}  # the mirror is gone

    for stamp in history["stamps"]:
        assert lab.tree_hashes(lab.receiver, f"{STORE}/{stamp}") == history["hashes"][stamp]

    after = _snapshot(lab)
    assert after.returncode == 1
    assert f"the synced copy {COPY} looks wiped (it holds no file at all)" in after.stderr
    assert "every earlier snapshot is kept (nothing pruned)" in after.stderr
    assert len(after.stderr.strip().splitlines()) == 1
    # retention (1 day, min_keep 1) would have removed both: the guard kept them
    stamps = _stamps(lab)
    assert len(stamps) == 3
    assert stamps[:2] == history["stamps"]
    for stamp in history["stamps"]:
        assert lab.tree_hashes(lab.receiver, f"{STORE}/{stamp}") == history["hashes"][stamp]
    listing = _snapshot(lab, "--list")
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.count("\n") == 3
    assert "(not a good copy: it holds no file at all)" in listing.stdout.splitlines()[-1]


def test_a_stolen_key_pushing_junk_with_a_manifest_of_braces_is_not_a_good_copy(lab, history):
    """As many empty files as the last good snapshot holds, plus ``{}`` as the index: the old
    file-count guard passed this and took it as the new baseline."""
    good = history["stamps"][1]
    count = int(lab.receiver.sh(f"find {STORE}/{good} ! -type d | wc -l").stdout.strip())
    lab.sender.sh(
        "rm -rf /tmp/junk && mkdir /tmp/junk && "
        f"for i in $(seq {count}); do : > /tmp/junk/junk$i; done && "
        "echo '{}' > /tmp/junk/keyforge-manifest.json && chown -R foo /tmp/junk"
    )
    attack = _push(lab, "/tmp/junk/")
    assert attack.returncode == 0, attack.stderr
    assert lab.receiver.exists(f"{COPY}/keyforge-manifest.json")

    after = _snapshot(lab)
    assert after.returncode == 1
    assert (
        f"the synced copy {COPY} is not a good copy (keyforge-manifest.json is not a keyforge "
        "manifest (no format number))"
    ) in after.stderr
    assert len(after.stderr.strip().splitlines()) == 1
    stamps = _stamps(lab)
    assert stamps[:2] == history["stamps"]  # past retention, still kept
    for stamp in history["stamps"]:
        assert lab.tree_hashes(lab.receiver, f"{STORE}/{stamp}") == history["hashes"][stamp]
    listing = _snapshot(lab, "--list")
    assert (
        "(not a good copy: keyforge-manifest.json is not a keyforge manifest"
        in (listing.stdout.splitlines()[-1])
    )


def test_schedule_on_the_receiver_installs_the_snapshot_job_alone_as_root(lab, history):
    result = lab.receiver.run(["keyforge", "schedule", "--cron", "--config", CONFIG])
    jobs = [line for line in result.stdout.splitlines() if line[:1].isdigit()]
    # the snapshot, and the hourly check that the pushes keep arriving; nothing that pushes
    assert len(jobs) == 2
    fields = jobs[0].split()
    assert fields[:2] == ["30", "5"]  # two hours after the default sync_at, 03:30
    assert fields[5] == "root"  # not foo, whom the backup key logs in as
    assert fields[7:] == ["snapshot", "--config", CONFIG]
    check = jobs[1].split()
    assert check[:2] == ["17", "*"] and check[5] == "root"
    assert check[7:] == ["status", "--config", CONFIG, "--max-age", "26", "--ping"]
