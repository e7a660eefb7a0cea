"""Encrypted backups end to end: keyforge backup with encrypt_to -> sync with the locked key ->
the receiving host holds ciphertext only, checks it without a key, and a third machine holding
the identity restores the tree.

The identity is made with keyforge keygen-age on the intruder container, which plays the
administrator's offline machine here: neither the sender nor the receiver ever sees it.
"""

from __future__ import annotations

import pytest

from keyforge import signing

pytestmark = pytest.mark.docker

HOME = "/home/foo"
DATA = f"{HOME}/enc-data"
BACKUPS = f"{HOME}/enc-backups"
SENDER_CONFIG = f"{HOME}/enc-keyforge.toml"
# a copy of its own: the sync state of another module's pushes to ~/srvbackups stays theirs
COPY = f"{HOME}/enc-srvbackups"
RECEIVER_CONFIG = f"{HOME}/enc-receiver.toml"
IDENTITY = "/root/offline/key.txt"
ELSEWHERE = "/root/from-the-receiver"
CANARY = "keyforge-canary-3b1f6c0d-only-on-the-sender"
# signing on: every manifest signed on the sender, checked wherever an archive is trusted
SIGNING_KEY = f"{HOME}/enc-manifest-signing-key"
PINNED = f"{HOME}/enc-allowed_signers"
PINNED_ELSEWHERE = "/root/offline/allowed_signers"


def _keyforge(host, *args: str, user: str = "foo", check: bool = False):
    return host.run(["keyforge", *args], user=user, check=check, timeout=180)


def _receiver_config(directory: str, pinned: str = PINNED) -> str:
    return (
        f'[general]\nhost = "server1"\n[backup]\nsources = ["{DATA}"]\ndirectory = "{directory}"\n'
        f'allowed_signers = "{pinned}"\n'
    )


@pytest.fixture(scope="module")
def recipient(lab) -> str:
    lab.intruder.sh("rm -rf /root/offline && mkdir -m 0700 /root/offline")
    made = _keyforge(lab.intruder, "keygen-age", IDENTITY, user="root", check=True)
    assert "AGE-SECRET-KEY" not in made.stdout
    line = next(ln for ln in made.stdout.splitlines() if ln.startswith("recipient: "))
    return line.removeprefix("recipient: ")


@pytest.fixture(scope="module")
def encrypted_sync(lab, keys, recipient):
    """Two runs (a master, an incremental) of an encrypted backup, pushed with the locked key."""
    lab.sender.sh(
        f"rm -rf {DATA} {BACKUPS} && mkdir -p {DATA}/etc {DATA}/home && "
        f"printf '%s\\n' '{CANARY}' > {DATA}/etc/shadow && "
        f"head -c 200000 /dev/urandom > {DATA}/home/random.bin && "
        f"chown -R foo:foo {DATA} && rm -f {SIGNING_KEY} {SIGNING_KEY}.pub"
    )
    _keyforge(lab.sender, "pair", "--signing", SIGNING_KEY, check=True)
    config = lab.sender_config(
        data=DATA,
        backups=BACKUPS,
        copy=COPY,
        key=lab.BACKUP_KEY,
        sync=[f'log = "{HOME}/enc-sync.log"', "retry_delay = 1"],
    )
    # the archive test on: with encryption it reads the stream ahead of age
    config = config.replace("test_archives = false", "test_archives = true")
    config = config.replace(
        "[sync]", f'encrypt_to = ["{recipient}"]\nsigning_key = "{SIGNING_KEY}"\n[sync]'
    )
    lab.sender.write_file(SENDER_CONFIG, config)
    _keyforge(lab.sender, "backup", "--config", SENDER_CONFIG, check=True)
    lab.sender.sh(
        f"printf 'day 2 {CANARY}\\n' > {DATA}/etc/new.conf && chown foo {DATA}/etc/new.conf"
    )
    _keyforge(lab.sender, "backup", "--config", SENDER_CONFIG, check=True)
    forced = lab.sync_server_command(SENDER_CONFIG)
    lab.receiver.sh(f"rm -rf {COPY}")
    lab.write_authorized_keys(f"{keys.admin_public}\n")
    lab.keyforge_install(keys.backup_public, command=forced)
    result = _keyforge(lab.sender, "sync", "--config", SENDER_CONFIG)
    assert result.returncode == 0, result.stderr
    line = signing.signer_line(lab.sender.read_file(f"{SIGNING_KEY}.pub"), "server1") + "\n"
    lab.receiver.write_file(PINNED, line, mode="0644")
    lab.intruder.write_file(PINNED_ELSEWHERE, line, user="root")
    lab.receiver.write_file(RECEIVER_CONFIG, _receiver_config(COPY))
    return sorted(
        n for n in lab.receiver.run(["ls", "-1", COPY]).stdout.split() if n.endswith(".age")
    )


def test_the_receiver_holds_only_ciphertext_no_file_there_has_the_canary(lab, encrypted_sync):
    assert len(encrypted_sync) == 2
    assert all(n.endswith(".tar.gz.age") for n in encrypted_sync)
    found = lab.receiver.run(
        ["grep", "-rlF", "--exclude-dir=proc", "--exclude-dir=sys", "--exclude-dir=dev",
         CANARY, "/"],
        check=False,
        timeout=300,
    )  # fmt: skip
    assert found.returncode == 1, found.stdout  # 1: no file matched
    # the sender's own backup directory holds no plaintext either
    on_sender = lab.sender.run(["grep", "-rlF", CANARY, BACKUPS], check=False)
    assert on_sender.returncode == 1, on_sender.stdout


def test_verify_on_the_receiver_passes_without_identity_and_says_content_was_not_checked(
    lab, encrypted_sync
):
    result = _keyforge(lab.receiver, "verify", "--config", RECEIVER_CONFIG)
    assert result.returncode == 0, result.stderr
    assert "content not checked (no --identity)" in result.stdout
    assert "2 archive(s) match their manifests" in result.stdout


def test_a_restore_with_the_identity_elsewhere_equals_the_tree(lab, encrypted_sync, tmp_path):
    local = tmp_path / "copy"
    lab.receiver.copy_out(COPY, local)
    lab.intruder.sh(f"rm -rf {ELSEWHERE} /root/restored && mkdir -p {ELSEWHERE}")
    lab.intruder.copy_in(local, f"{ELSEWHERE}/")
    copy = f"{ELSEWHERE}/copy"
    lab.intruder.write_file(
        "/root/elsewhere.toml", _receiver_config(copy, PINNED_ELSEWHERE), user="root"
    )
    without = _keyforge(
        lab.intruder, "restore", "--config", "/root/elsewhere.toml", "--source", DATA,
        "--to", "/root/restored", user="root",
    )  # fmt: skip
    assert without.returncode == 7 and "give --identity FILE" in without.stderr
    restored = _keyforge(
        lab.intruder, "restore", "--config", "/root/elsewhere.toml", "--source", DATA,
        "--to", "/root/restored", "--identity", IDENTITY, user="root",
    )  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    got = lab.tree_hashes(lab.intruder, "/root/restored")
    sent = lab.tree_hashes(lab.sender, DATA)
    assert got == sent and len(sent) == 3
    verified = _keyforge(
        lab.intruder, "verify", "--config", "/root/elsewhere.toml", "--identity", IDENTITY,
        user="root",
    )  # fmt: skip
    assert verified.returncode == 0, verified.stderr
    assert "match their manifests and restore" in verified.stdout


def test_a_flipped_byte_in_one_archive_makes_verify_fail_naming_it(lab, encrypted_sync, tmp_path):
    damaged = f"{HOME}/enc-damaged"
    name = encrypted_sync[0]
    lab.receiver.sh(f"rm -rf {damaged} && cp -a {COPY} {damaged}", user="foo")
    lab.receiver.run(
        ["python3", "-c",
         "import sys; p = sys.argv[1]; b = bytearray(open(p, 'rb').read()); "
         "b[len(b) // 2] ^= 1; open(p, 'wb').write(b)",
         f"{damaged}/{name}"],
        user="foo",
    )  # fmt: skip
    lab.receiver.write_file(f"{HOME}/enc-damaged.toml", _receiver_config(damaged))
    result = _keyforge(lab.receiver, "verify", "--config", f"{HOME}/enc-damaged.toml")
    assert result.returncode == 1
    assert f"{name}: blake3 differs from the manifest" in result.stderr
    assert encrypted_sync[1] not in result.stderr
    lab.receiver.sh(f"rm -rf {damaged}")


def test_the_lab_images_carry_debian_age(lab):
    for host in (lab.sender, lab.receiver):
        version = host.run(["age", "--version"]).stdout.strip()
        assert version.startswith(("1.", "v1.")), version
