"""Authenticated restores: real backups signed with the manifest-signing key, real tar and zstd,
and the archives a compromised receiving host could plant.

The attacker holds everything the receiving host holds: the synced copy (tar's snapshot files
and the manifests too), keyforge itself, a key of its own. It makes a real archive of a tree of
its choosing under server1's name, with a manifest that matches it byte for byte; only the
signature is not server1's. restore, verify and snapshot must refuse it, and a run dropped from
the middle of a chain, while the real chains still restore.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keyforge import config, layout, signing
from keyforge.cli import app
from keyforge.errors import ConfigError, SignatureError
from keyforge.receiver import snapshot
from keyforge.sender import backup, restore
from keyforge.ssh import allowed_signers, keys

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="backups of owners need root")

DAY1 = dt.datetime(2026, 11, 23, 1, 15)
NOBODY = 65534


def day(n: int) -> dt.datetime:
    return DAY1 + dt.timedelta(days=n - 1)


def make_key(path: Path) -> str:
    """A manifest-signing key at ``path``; its public line."""
    pair = signing.make_key("keyforge-manifests@server1")
    keys.write_pair(path, pair, force=False)
    return pair.public_line


def make_config(tmp_path: Path, src: Path, directory: Path, key: Path | None) -> config.Config:
    values: dict[str, object] = {
        "sources": [str(src)],
        "directory": str(directory),
        "full_every": 30,
        "nice": 0,
        "ionice": "none",
    }
    if key is not None:
        values["signing_key"] = str(key)
    return config.parse({"general": {"host": "server1"}, "backup": values})


def pin(tmp_path: Path, *public_lines: str, name: str = "allowed_signers") -> Path:
    path = tmp_path / name
    path.write_text("".join(signing.signer_line(p, "server1") + "\n" for p in public_lines))
    return path


class Server1:
    """The sending server: a source, its signing key, its backups."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.src = tmp_path / "src"
        (self.src / "etc").mkdir(parents=True)
        (self.src / "etc/passwd").write_text("root:x:0:0\n")
        self.key = tmp_path / "keys/manifest-signing-key"
        self.key.parent.mkdir(mode=0o700)
        self.public = make_key(self.key)
        self.config = make_config(tmp_path, self.src, tmp_path / "backups", self.key)
        self.signers = pin(tmp_path, self.public)

    @property
    def trust(self) -> signing.Trust:
        return signing.Trust(allowed_signers.load(self.signers))

    def backup(self, n: int, text: str) -> backup.BackupReport:
        (self.src / "etc/motd").write_text(text)
        return backup.run_backup(self.config, now=day(n))


@pytest.fixture
def server1(tmp_path: Path) -> Server1:
    return Server1(tmp_path)


def plant(server1: Server1, n: int, *, attacker_key: bool) -> str:
    """What a compromised receiving host can do: a real master of its own tree under
    server1's name, made by keyforge from a copy of the backup directory, with a manifest
    that matches it, put into the backup directory. Returns the planted archive's name."""
    work = server1.tmp / "attacker"
    copy = work / "backups"
    shutil.copytree(server1.config.backup_dir, copy, symlinks=True)
    key = None
    if attacker_key:
        key = work / "key"
        make_key(key)
    evil = make_config(work, server1.src, copy, key)
    saved = (server1.src / "etc/passwd").read_text()
    (server1.src / "etc/passwd").write_text("root::0:0:planted\n")
    try:
        report = backup.run_backup(evil, force_full=True, now=day(n))
    finally:
        (server1.src / "etc/passwd").write_text(saved)
    [entry] = report.entries
    manifest = layout.manifest_name("server1", report.plan.stamp)
    real = server1.config.backup_dir
    shutil.copy2(copy / entry.name, real / entry.name)
    for name in (manifest, layout.MANIFEST_NAME):  # its run manifest, and an index to match
        shutil.copy2(copy / name, real / name)
        sig = layout.signature_path(copy / name)
        if sig.exists():
            shutil.copy2(sig, real / sig.name)
        else:
            layout.signature_path(real / name).unlink(missing_ok=True)
    shutil.rmtree(work)
    return entry.name


def test_every_manifest_is_signed_and_stock_ssh_keygen_verifies_each(server1: Server1) -> None:
    server1.backup(1, "one\n")
    server1.backup(2, "two\n")
    backup_dir = server1.config.backup_dir
    manifests = sorted(
        p for p in backup_dir.iterdir() if p.name.endswith(".json") and "manifest" in p.name
    )
    assert [p.name for p in manifests] == [
        "keyforge-manifest.json",
        "server1.20261123.manifest.json",
        "server1.20261124.manifest.json",
    ]
    for manifest in manifests:
        sig = layout.signature_path(manifest)
        argv = ["ssh-keygen", "-Y", "verify", "-f", str(server1.signers), "-I", "server1"]
        argv += ["-n", "keyforge-manifest", "-s", str(sig)]
        done = subprocess.run(argv, input=manifest.read_bytes(), capture_output=True, check=False)
        assert done.returncode == 0, (manifest.name, done.stderr)
    second = layout.load_manifest(manifests[2])
    first_bytes = manifests[1].read_bytes()
    assert second.previous == layout.ManifestLink(
        manifests[1].name, hashlib.sha256(first_bytes).hexdigest()
    )
    assert second.signed_by == signing.load_key(server1.key).fingerprint


def test_the_signing_key_never_goes_into_an_archive(tmp_path: Path) -> None:
    """Kept inside a source (/etc/keyforge under /etc), it is still left out."""
    src = tmp_path / "etc"
    (src / "keyforge").mkdir(parents=True, mode=0o700)
    key = src / "keyforge/manifest-signing-key"
    make_key(key)
    cfg = make_config(tmp_path, src, tmp_path / "backups", key)
    [entry] = backup.run_backup(cfg, now=day(1)).entries
    listing = subprocess.run(
        f"zstd -dc {cfg.backup_dir / entry.name} | tar -t",
        shell=True,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert "./keyforge/" in listing
    assert "./keyforge/manifest-signing-key.pub" in listing
    assert "./keyforge/manifest-signing-key" not in listing


@pytest.mark.parametrize("attacker_key", [False, True], ids=["unsigned", "signed-by-another"])
def test_a_planted_archive_with_a_matching_manifest_is_refused_by_restore_and_verify(
    server1: Server1, attacker_key: bool
) -> None:
    server1.backup(1, "one\n")
    planted = plant(server1, 2, attacker_key=attacker_key)
    # the forgery is consistent: the old checks (hash against the manifest) pass
    assert restore.check_checksums(server1.config, backup.scan_archives(server1.config))[1] == []

    target = server1.tmp / "restored"
    with pytest.raises(SignatureError, match=f"refusing {planted}: ") as refused:
        restore.run_restore(server1.config, str(server1.src), target, trust=server1.trust)
    expected = "does not allow to sign server1's manifests" if attacker_key else "is not signed"
    assert expected in str(refused.value)
    assert not target.exists()
    with pytest.raises(SignatureError, match=planted):
        restore.run_verify(server1.config, trust=server1.trust)
    # the real chain, before the planted one, still restores
    restore.run_restore(server1.config, str(server1.src), target, at=day(1).date())
    assert (target / "etc/passwd").read_text() == "root:x:0:0\n"


def test_the_command_line_refuses_in_one_line_and_insecure_unsigned_says_what_it_skips(
    server1: Server1,
) -> None:
    server1.backup(1, "one\n")
    planted = plant(server1, 2, attacker_key=False)
    path = server1.tmp / "keyforge.toml"
    path.write_text(
        f'[general]\nhost = "server1"\n[backup]\nsources = ["{server1.src}"]\n'
        f'directory = "{server1.config.backup_dir}"\n'
    )
    argv = ["restore", "--config", str(path), "--source", str(server1.src)]
    out = server1.tmp / "out"
    pinned = CliRunner().invoke(app, [*argv, "--to", str(out), "--allowed-signers", str(out)])
    assert pinned.exit_code != 0  # a bad path, named
    refused = CliRunner().invoke(
        app, [*argv, "--to", str(out), "--allowed-signers", str(server1.signers)]
    )
    assert refused.exit_code == SignatureError.exit_code == 16, refused.output
    assert refused.stderr.startswith(f"keyforge: error: refusing {planted}: ")
    assert len(refused.stderr.splitlines()) == 1
    assert not out.exists()
    nothing = CliRunner().invoke(app, [*argv, "--to", str(out)])
    assert nothing.exit_code == 16
    assert "--insecure-unsigned" in nothing.stderr
    opted = CliRunner().invoke(app, [*argv, "--to", str(out), "--insecure-unsigned"])
    assert opted.exit_code == 0, opted.output
    assert "--insecure-unsigned: the manifests are not checked" in opted.stderr
    assert (out / "etc/passwd").read_text() == "root::0:0:planted\n"  # what the opt-out risks


def test_a_tampered_manifest_or_a_swapped_archive_is_refused(server1: Server1) -> None:
    server1.backup(1, "one\n")
    [run] = layout.run_manifests(server1.config.backup_dir, "server1").values()
    original = run.read_bytes()
    run.write_bytes(original.replace(b'"format": 1', b'"format": 1 '))
    with pytest.raises(SignatureError, match="is badly signed: the signature does not match"):
        restore.run_restore(
            server1.config, str(server1.src), server1.tmp / "a", trust=server1.trust
        )
    run.write_bytes(original)
    [archive] = [p for p in server1.config.backup_dir.iterdir() if layout.is_archive_name(p.name)]
    data = bytearray(archive.read_bytes())
    data[-5] ^= 0xFF
    archive.write_bytes(bytes(data))
    with pytest.raises(SignatureError, match="not what its signed manifest records"):
        restore.run_restore(
            server1.config, str(server1.src), server1.tmp / "b", trust=server1.trust
        )
    assert not (server1.tmp / "b").exists()
    # onto a non-empty directory (--force) the hash is checked before tar writes a byte
    kept = server1.tmp / "in-place"
    (kept / "etc").mkdir(parents=True)
    (kept / "etc/motd").write_text("mine\n")
    with pytest.raises(SignatureError, match="not what its signed manifest records"):
        restore.run_restore(server1.config, str(server1.src), kept, force=True, trust=server1.trust)
    assert sorted(p.name for p in kept.rglob("*")) == ["etc", "motd"]


def test_removing_a_middle_incremental_and_its_manifest_is_detected(server1: Server1) -> None:
    server1.backup(1, "one\n")
    middle = server1.backup(2, "two\n")
    server1.backup(3, "three\n")
    backup_dir = server1.config.backup_dir
    manifest = backup_dir / layout.manifest_name("server1", middle.plan.stamp)
    for path in (backup_dir / middle.entries[0].name, manifest, layout.signature_path(manifest)):
        path.unlink()

    with pytest.raises(SignatureError, match="a run of its chain was removed") as refused:
        restore.run_restore(
            server1.config, str(server1.src), server1.tmp / "r", trust=server1.trust
        )
    assert manifest.name in str(refused.value)
    with pytest.raises(SignatureError):
        restore.run_verify(server1.config, trust=server1.trust)
    # what lies before the gap is whole, and restores
    restore.run_restore(
        server1.config, str(server1.src), server1.tmp / "r1", at=day(1).date(), trust=server1.trust
    )
    assert (server1.tmp / "r1/etc/motd").read_text() == "one\n"


def test_removing_only_the_middle_archive_is_detected_too(server1: Server1) -> None:
    server1.backup(1, "one\n")
    middle = server1.backup(2, "two\n")
    server1.backup(3, "three\n")
    (server1.config.backup_dir / middle.entries[0].name).unlink()
    with pytest.raises(SignatureError, match=f"{middle.entries[0].name} of its chain is missing"):
        restore.run_restore(
            server1.config, str(server1.src), server1.tmp / "r", trust=server1.trust
        )


def test_a_new_signing_key_starts_a_new_master_and_both_keys_verify_during_the_rotation(
    server1: Server1,
) -> None:
    server1.backup(1, "one\n")
    server1.backup(2, "two\n")
    new_key = server1.tmp / "keys/new-key"
    new_public = make_key(new_key)
    server1.config = dataclasses.replace(
        server1.config,
        backup=dataclasses.replace(server1.config.backup, signing_key=str(new_key)),
    )
    reporter = backup.SilentReporter()
    (server1.src / "etc/motd").write_text("three\n")
    third = backup.run_backup(server1.config, now=day(3), reporter=reporter)
    assert [e.kind for e in third.entries] == [layout.MASTER]
    fingerprint = signing.load_key(new_key).fingerprint
    [announced] = [w for w in reporter.warnings if "new manifest-signing key" in w]
    assert fingerprint in announced
    assert "every source starts a new master" in announced
    server1.backup(4, "four\n")  # the new chain goes on as an incremental
    assert layout.run_manifests(server1.config.backup_dir, "server1")

    both = signing.Trust(allowed_signers.load(pin(server1.tmp, server1.public, new_public)))
    for n, text in ((2, "two\n"), (4, "four\n")):
        out = server1.tmp / f"both-{n}"
        restore.run_restore(server1.config, str(server1.src), out, at=day(n).date(), trust=both)
        assert (out / "etc/motd").read_text() == text
    only_new = signing.Trust(allowed_signers.load(pin(server1.tmp, new_public, name="new")))
    restore.run_restore(server1.config, str(server1.src), server1.tmp / "n4", trust=only_new)
    with pytest.raises(SignatureError, match="does not allow"):
        restore.run_restore(
            server1.config, str(server1.src), server1.tmp / "n2", at=day(2).date(), trust=only_new
        )


def _chown_tree(top: Path) -> None:
    os.chown(top, NOBODY, NOBODY)
    for root, dirs, files in os.walk(top):
        for name in dirs + files:
            os.chown(Path(root) / name, NOBODY, NOBODY, follow_symlinks=False)


@pytest.mark.skipif(shutil.which("rsync") is None, reason="snapshot copies with rsync")
def test_snapshot_with_allowed_signers_takes_a_planted_copy_as_not_good(server1: Server1) -> None:
    server1.backup(1, "one\n")
    copy = server1.tmp / "srvbackups"
    store = server1.tmp / "store"

    def push() -> None:
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(server1.config.backup_dir, copy, symlinks=True)
        _chown_tree(copy)

    settings = {"source": str(copy), "directory": str(store)}
    pinned = config.parse({"snapshot": {**settings, "allowed_signers": str(server1.signers)}})
    push()
    first = snapshot.run_snapshot(pinned, now=dt.datetime(2026, 11, 23, 5, 30, tzinfo=dt.UTC))
    assert first.problem is None
    planted = plant(server1, 2, attacker_key=False)
    push()
    later = dt.datetime(2026, 11, 24, 5, 30, tzinfo=dt.UTC)
    unpinned = snapshot.run_snapshot(config.parse({"snapshot": settings}), now=later)
    assert unpinned.problem is None  # consistent: without signers it passes for a good copy
    second = snapshot.run_snapshot(pinned, now=later + dt.timedelta(minutes=1))
    assert second.problem is not None
    assert f"{planted}: server1.20261124.manifest.json is not signed" in second.problem
    assert "keyforge-manifest.json is not signed" in second.problem


def test_prune_removes_run_manifests_only_from_the_oldest_end(server1: Server1) -> None:
    """A run manifest in the middle that lists no archive any more still carries the link
    between the runs around it; only a run older than every archive left goes."""
    reports = [server1.backup(n, f"{n}\n") for n in (1, 2, 3)]
    backup_dir = server1.config.backup_dir
    runs = [backup_dir / layout.manifest_name("server1", r.plan.stamp) for r in reports]
    (backup_dir / reports[1].entries[0].name).unlink()
    backup.remove_chains(server1.config, [])
    assert all(p.exists() for p in runs)
    (backup_dir / reports[0].entries[0].name).unlink()
    backup.remove_chains(server1.config, [])
    assert [p.exists() for p in runs] == [False, False, True]
    assert not layout.signature_path(runs[0]).exists()


def test_a_last_run_whose_signature_no_longer_matches_starts_a_new_master(
    server1: Server1,
) -> None:
    """A run killed between writing its manifest and its signature: the chain is not extended
    from a manifest the key cannot vouch for."""
    first = server1.backup(1, "one\n")
    manifest = server1.config.backup_dir / layout.manifest_name("server1", first.plan.stamp)
    sig = layout.signature_path(manifest)
    sig.write_bytes(signing.load_key(server1.key).sign(b"an earlier version"))
    reporter = backup.SilentReporter()
    (server1.src / "etc/motd").write_text("two\n")
    second = backup.run_backup(server1.config, now=day(2), reporter=reporter)
    assert [e.kind for e in second.entries] == [layout.MASTER]
    assert any(
        f"{manifest.name} has a signature that does not match it" in w for w in reporter.warnings
    )
    out = server1.tmp / "latest"
    restore.run_restore(server1.config, str(server1.src), out, trust=server1.trust)
    assert (out / "etc/motd").read_text() == "two\n"


def test_a_signing_key_inside_the_backup_directory_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (tmp_path / "backups").mkdir(mode=0o700)
    key = tmp_path / "backups/manifest-signing-key"
    make_key(key)
    cfg = make_config(tmp_path, src, tmp_path / "backups", key)
    with pytest.raises(ConfigError, match="lies inside the backup directory"):
        backup.run_backup(cfg, now=day(1))
    assert not list((tmp_path / "backups").glob("*.manifest.json"))
