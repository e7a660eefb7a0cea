"""Encrypted archives with Debian's age: the round trip, disaster recovery without keyforge,
and every failure named in one line.

Real tar, zstd and age. The identities are made by keyforge (keygen-age), by age-keygen and by
keyforge pair (an SSH key as recipient), so each is checked against the real age binary.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from test_backup import DAY1, DAY2, assert_same_tree, build_tree, change_tree, make_config
from typer.testing import CliRunner

from keyforge import age, config, layout
from keyforge.cli import app
from keyforge.errors import CommandError, KeyMaterialError, SignatureError
from keyforge.sender import backup, pipeline, restore
from keyforge.signing import INSECURE
from keyforge.ssh import keys

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="backups of owners need root")

CANARY = b"keyforge-canary-7f3d9a1e-never-in-an-archive"


@pytest.fixture(autouse=True)
def _age_is_installed() -> None:
    # tests/run.sh installs Debian's age: a missing one is a failure, never a skip
    assert shutil.which("age") and shutil.which("age-keygen"), "Debian package 'age' is missing"


@dataclasses.dataclass(frozen=True)
class Keys:
    identity: Path  # keyforge keygen-age
    recipient: str
    ssh_private: Path  # keyforge pair's key, an age identity too
    ssh_public: str
    other: Path  # age-keygen's, not a recipient


@pytest.fixture
def age_keys(tmp_path: Path) -> Keys:
    keydir = tmp_path / "keys"
    keydir.mkdir(mode=0o700)
    made = age.new_identity()
    age.write_identity(keydir / "key.txt", made)
    pair = keys.generate("ed25519", comment="team@laptop")
    (keydir / "team").write_bytes(pair.private_pem)
    (keydir / "team").chmod(0o600)
    other = keydir / "other.txt"
    subprocess.run(["age-keygen", "-o", str(other)], check=True, capture_output=True)
    return Keys(keydir / "key.txt", made.recipient.text, keydir / "team", pair.public_line, other)


def encrypted_source(
    tmp_path: Path, age_keys: Keys, **values: object
) -> tuple[Path, config.Config]:
    src = tmp_path / "src"
    build_tree(src)
    (src / "etc/canary.conf").write_bytes(CANARY + b"\n")
    cfg = make_config(tmp_path, src, encrypt_to=[age_keys.recipient, age_keys.ssh_public], **values)
    return src, cfg


def files_holding(directory: Path, needle: bytes) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file() and needle in p.read_bytes()]


def identity(path: Path) -> pipeline.Identity:
    return pipeline.load_identity(path)


# --- the round trip ------------------------------------------------------------------------


def test_encrypted_archives_hold_no_plaintext_and_restore_with_either_identity(
    tmp_path: Path, age_keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))  # temporary files of every program run
    src, cfg = encrypted_source(tmp_path, age_keys)
    first = backup.run_backup(cfg, now=DAY1)
    change_tree(src)
    second = backup.run_backup(cfg, now=DAY2)
    names = [e.name for e in (*first.entries, *second.entries)]
    assert all(n.endswith(".tar.zst.age") for n in names)
    assert files_holding(cfg.backup_dir, CANARY) == []
    assert files_holding(scratch, CANARY) == []
    assert files_holding(cfg.backup_dir, b"alice's notes") == []

    entry = second.entries[0]
    wanted = age.fingerprints(age.parse_recipients(cfg.backup.encrypt_to))
    assert entry.encrypted_to == wanted
    archive = cfg.backup_dir / entry.name
    assert entry.size == archive.stat().st_size
    assert entry.digest == layout.hash_of_file(archive)
    assert archive.read_bytes().startswith(age.HEADER_MAGIC)
    assert layout.read_manifests(cfg.backup_dir, "server1")[entry.name]["encrypted_to"] == list(
        wanted
    )

    for key in (age_keys.identity, age_keys.ssh_private):
        target = tmp_path / f"restored-{key.name}"
        restore.run_restore(cfg, str(src), target, identity=identity(key))
        assert_same_tree(src, target)


def test_debian_age_zstd_and_tar_alone_restore_the_same_tree(
    tmp_path: Path, age_keys: Keys
) -> None:
    """The README's disaster recovery, without keyforge: every archive of the chain in order."""
    src, cfg = encrypted_source(tmp_path, age_keys)
    backup.run_backup(cfg, now=DAY1)
    change_tree(src)
    backup.run_backup(cfg, now=DAY2)
    target = tmp_path / "dr"
    target.mkdir()
    chain = [cfg.backup_dir / r.name for r in backup.scan_archives(cfg)]
    assert [p.name.split(".")[2] for p in chain] == ["master", "incremental"]
    for archive in chain:
        subprocess.run(
            f"age -d -i {age_keys.identity} {archive} | zstd -d | "
            f"tar -x --listed-incremental=/dev/null --xattrs --xattrs-include='*' --acls "
            f"--numeric-owner -C {target}",
            shell=True,
            check=True,
        )
    assert_same_tree(src, target)


def test_gzip_archives_are_encrypted_too_and_verify_with_the_identity(
    tmp_path: Path, age_keys: Keys
) -> None:
    _src, cfg = encrypted_source(tmp_path, age_keys, compression="gzip")
    (entry,) = backup.run_backup(cfg, now=DAY1).entries
    assert entry.name.endswith(".tar.gz.age")
    report = restore.run_verify(cfg, identity=identity(age_keys.identity))
    assert report.ok and report.unchecked_sources == ()
    assert report.sources[0].entries > 10


def test_verify_without_identity_checks_ciphertext_and_header_and_says_content_was_not(
    tmp_path: Path, age_keys: Keys
) -> None:
    src, cfg = encrypted_source(tmp_path, age_keys)
    backup.run_backup(cfg, now=DAY1)
    report = restore.run_verify(cfg)
    assert report.ok
    assert report.checked_archives == 1
    assert report.unchecked_sources == (str(src),)
    result = CliRunner().invoke(app, ["verify", "--config", _write(tmp_path, cfg)])
    assert result.exit_code == 0, result.output
    assert "content not checked (no --identity)" in result.output
    assert "was not checked: encrypted, and no --identity given" in result.output


def test_a_flipped_byte_makes_verify_fail_naming_the_archive(
    tmp_path: Path, age_keys: Keys
) -> None:
    src, cfg = encrypted_source(tmp_path, age_keys)
    (entry,) = backup.run_backup(cfg, now=DAY1).entries
    archive = cfg.backup_dir / entry.name
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0x01
    archive.write_bytes(bytes(data))
    for key in (None, identity(age_keys.identity)):
        report = restore.run_verify(cfg, identity=key)
        assert not report.ok
        assert f"{entry.name}: blake3 differs from the manifest" in report.problems
    # the signed manifest's hash refuses it first; unsigned, age itself would
    with pytest.raises(SignatureError, match=f"{entry.name}: its content is not what its signed"):
        restore.run_restore(cfg, str(src), tmp_path / "r", identity=identity(age_keys.identity))
    with pytest.raises(CommandError, match=f"cannot decrypt {entry.name}: .*corrupted"):
        restore.run_restore(
            cfg, str(src), tmp_path / "r", identity=identity(age_keys.identity), trust=INSECURE
        )
    assert not (tmp_path / "r").exists()


def test_a_truncated_ciphertext_is_named_by_verify_and_restore(
    tmp_path: Path, age_keys: Keys
) -> None:
    src, cfg = encrypted_source(tmp_path, age_keys)
    (entry,) = backup.run_backup(cfg, now=DAY1).entries
    archive = cfg.backup_dir / entry.name
    with archive.open("r+b") as handle:
        handle.truncate(entry.size - 1000)
    problems = restore.run_verify(cfg).problems
    assert f"{entry.name}: {entry.size - 1000} bytes, the manifest records {entry.size}" in problems
    with pytest.raises(SignatureError, match=f"{entry.name}: {entry.size - 1000} bytes where"):
        restore.run_restore(cfg, str(src), tmp_path / "r", identity=identity(age_keys.identity))
    with pytest.raises(CommandError, match=f"cannot decrypt {entry.name}"):
        restore.run_restore(
            cfg, str(src), tmp_path / "r", identity=identity(age_keys.identity), trust=INSECURE
        )


def test_a_header_addressed_to_other_keys_fails_verify_without_identity(
    tmp_path: Path, age_keys: Keys
) -> None:
    """A pushed archive re-encrypted to another SSH key, with a manifest hash to match: the
    header check names it even though the hash agrees."""
    _src, cfg = encrypted_source(tmp_path, age_keys)
    (entry,) = backup.run_backup(cfg, now=DAY1).entries
    archive = cfg.backup_dir / entry.name
    intruder = keys.generate("ed25519", comment="intruder").public_line
    forged = subprocess.run(
        ["age", "-r", age_keys.recipient, "-r", intruder],
        input=b"anything",
        capture_output=True,
        check=True,
    ).stdout
    archive.write_bytes(forged)
    manifest = cfg.backup_dir / layout.manifest_name("server1", "20261123")
    text = manifest.read_text().replace(entry.digest, layout.hash_of_file(archive))
    manifest.write_text(text.replace(f'"size": {entry.size}', f'"size": {len(forged)}'))
    # the planted archive re-encrypted to the same recipient, with a manifest to match: the
    # manifest's signature is no longer server1's, so verify and restore refuse it
    with pytest.raises(SignatureError, match=f"refusing {entry.name}: .* is badly signed"):
        restore.run_verify(cfg)
    with pytest.raises(SignatureError, match=f"refusing {entry.name}: .* is badly signed"):
        restore.run_restore(cfg, str(_src), tmp_path / "r", identity=identity(age_keys.identity))
    assert not (tmp_path / "r").exists()
    # without signatures (--insecure-unsigned) the header check still names it
    problems = restore.run_verify(cfg, trust=INSECURE).problems
    assert problems == (
        f"{entry.name}: its header is addressed to an ssh-ed25519 key the manifest does not list",
    )


# --- keys: wrong, missing, unparsable --------------------------------------------------------


def test_a_wrong_or_missing_identity_is_one_line_naming_the_archive_and_key(
    tmp_path: Path, age_keys: Keys
) -> None:
    src, cfg = encrypted_source(tmp_path, age_keys)
    (entry,) = backup.run_backup(cfg, now=DAY1).entries
    path = _write(tmp_path, cfg)
    runner = CliRunner()
    base = ["restore", "--config", path, "--source", str(src), "--to", str(tmp_path / "r")]
    missing = runner.invoke(app, base)
    assert missing.exit_code == KeyMaterialError.exit_code
    assert f"{entry.name} is encrypted" in missing.output
    assert "give --identity FILE" in missing.output
    wrong = runner.invoke(app, [*base, "--identity", str(age_keys.other)])
    assert wrong.exit_code == KeyMaterialError.exit_code
    assert f"identity {age_keys.other}" in wrong.output and entry.name in wrong.output
    absent = runner.invoke(app, [*base, "--identity", str(tmp_path / "nope.txt")])
    assert absent.exit_code == KeyMaterialError.exit_code
    assert "nope.txt does not exist" in absent.output
    for result in (missing, wrong, absent):
        assert len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "r").exists()


def test_an_identity_age_refuses_is_named_even_without_the_manifest(
    tmp_path: Path, age_keys: Keys
) -> None:
    _src, cfg = encrypted_source(tmp_path, age_keys)
    (entry,) = backup.run_backup(cfg, now=DAY1).entries
    archive = cfg.backup_dir / entry.name
    extract = backup.tar_extract_argv(tmp_path)
    with pytest.raises(KeyMaterialError, match=f"identity .*other.txt cannot decrypt {entry.name}"):
        pipeline.read_archive(archive, extract, identity=identity(age_keys.other))


def test_a_recipient_that_does_not_parse_is_a_config_error_naming_the_key(
    tmp_path: Path, age_keys: Keys
) -> None:
    path = tmp_path / "keyforge.toml"
    typo = age_keys.recipient[:-1] + ("q" if age_keys.recipient[-1] != "q" else "p")
    path.write_text(
        f'[general]\nhost = "server1"\n[backup]\nsources = ["{tmp_path}"]\n'
        f'directory = "{tmp_path / "b"}"\nencrypt_to = ["{typo}"]\n'
    )
    result = CliRunner().invoke(app, ["backup", "--config", str(path)])
    assert result.exit_code == 6
    assert result.output.strip().splitlines() == [
        f"keyforge: error: keyforge.toml: [backup] encrypt_to entry 1: {typo!r} is not a valid "
        "age recipient: it has a wrong checksum (a typo, or a cut-off copy)"
    ]
    assert not (tmp_path / "b").exists()


# --- chains ------------------------------------------------------------------------------------


def test_turning_encryption_on_changing_recipients_or_off_starts_a_new_master(
    tmp_path: Path, age_keys: Keys
) -> None:
    src = tmp_path / "src"
    build_tree(src)
    plain = make_config(tmp_path, src)
    runs = [
        plain,
        dataclasses.replace(
            plain, backup=dataclasses.replace(plain.backup, encrypt_to=(age_keys.recipient,))
        ),
        dataclasses.replace(
            plain,
            backup=dataclasses.replace(
                plain.backup, encrypt_to=(age_keys.recipient, age_keys.ssh_public)
            ),
        ),
        # the same set in another order is the same set: the chain goes on
        dataclasses.replace(
            plain,
            backup=dataclasses.replace(
                plain.backup, encrypt_to=(age_keys.ssh_public, age_keys.recipient)
            ),
        ),
        plain,
    ]
    kinds = []
    for day, cfg in enumerate(runs):
        (entry,) = backup.run_backup(cfg, now=DAY1 + day * (DAY2 - DAY1)).entries
        kinds.append((entry.kind, entry.name.endswith(".age")))
    assert kinds == [
        ("master", False),
        ("master", True),
        ("master", True),
        ("incremental", True),
        ("master", False),
    ]


def test_the_dry_run_shows_age_with_recipients_only(tmp_path: Path, age_keys: Keys) -> None:
    _src, cfg = encrypted_source(tmp_path, age_keys)
    plan = backup.run_backup(cfg, now=DAY1, dry_run=True).plan
    lines = "\n".join(backup.describe_plan(plan))
    assert f"| age --encrypt --recipient {age_keys.recipient} --recipient ssh-ed25519 " in lines
    assert ".tar.zst.age" in lines
    assert "AGE-SECRET-KEY" not in lines


# --- the pipeline's own failures ---------------------------------------------------------------


def test_a_compressor_whose_stream_does_not_decompress_fails_the_encrypted_check(
    tmp_path: Path, age_keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check reads the compressed stream ahead of age (tee), so encryption does not
    blind it: a compressor writing garbage is caught and nothing is committed."""
    _src, cfg = encrypted_source(tmp_path, age_keys)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    real = shutil.which("zstd")
    script = bindir / "zstd"
    script.write_text(
        f'#!/bin/sh\nif [ "$1" = "-t" ]; then exec {real} "$@"; fi\n'
        "cat >/dev/null\necho 'not zstd'\n"
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    with pytest.raises(CommandError, match="does not decompress"):
        backup.run_backup(cfg, now=DAY1)
    assert backup.scan_archives(cfg) == []
    assert not list(cfg.backup_dir.glob(".*.partial"))


def test_a_missing_age_fails_the_source_and_leaves_nothing(
    tmp_path: Path, age_keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    _src, cfg = encrypted_source(tmp_path, age_keys)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("tar", "zstd", "tee", "nice", "ionice"):
        found = shutil.which(tool)
        if found:
            (bindir / tool).symlink_to(found)
    monkeypatch.setenv("PATH", str(bindir))
    with pytest.raises(CommandError, match="age: command not found"):
        backup.run_backup(cfg, now=DAY1)
    assert backup.scan_archives(cfg) == []
    assert not list(cfg.backup_dir.glob(".*.partial"))


def test_write_archive_refuses_a_name_that_lies_about_encryption(
    tmp_path: Path, age_keys: Keys
) -> None:
    recipient = age.parse_recipient(age_keys.recipient)
    with pytest.raises(ValueError, match=r"ends in \.age"):
        pipeline.write_archive(
            tmp_path / "x.tar.zst", ["true"], compression="zstd", level=3, recipients=[recipient]
        )
    with pytest.raises(ValueError, match=r"ends in \.age"):
        pipeline.write_archive(tmp_path / "x.tar.zst.age", ["true"], compression="zstd", level=3)


def test_write_and_read_archive_round_trip_any_producer(tmp_path: Path, age_keys: Keys) -> None:
    """The API issue 18's dumps use: any program's output in, the same bytes out."""
    payload = os.urandom(200_000) + CANARY
    source = tmp_path / "dump.sql"
    source.write_bytes(payload)
    recipient = age.parse_recipient(age_keys.recipient)
    final = tmp_path / "out" / "db.sql.zst.age"
    final.parent.mkdir()
    written = pipeline.write_archive(
        final, ["cat", str(source)], compression="zstd", level=3, recipients=[recipient]
    )
    assert written.size == final.stat().st_size
    assert written.digest == layout.hash_of_file(final)
    assert CANARY not in final.read_bytes()
    read = pipeline.read_archive(
        final,
        lambda stream: stream.read(),
        identity=identity(age_keys.identity),
        encrypted_to=written.encrypted_to,
    )
    assert read == payload
    copy = tmp_path / "copy"
    result = pipeline.read_archive(
        final, ["sh", "-c", f"cat > {copy}"], identity=identity(age_keys.identity)
    )
    assert result.returncode == 0
    assert copy.read_bytes() == payload


def test_an_identity_readable_by_others_is_warned_about(tmp_path: Path, age_keys: Keys) -> None:
    age_keys.identity.chmod(0o644)
    warnings = pipeline.load_identity(age_keys.identity).warnings
    assert len(warnings) == 1 and "readable by others (mode 0644)" in warnings[0]
    age_keys.identity.chmod(0o600)
    assert pipeline.load_identity(age_keys.identity).warnings == ()


# --- keygen-age ----------------------------------------------------------------------------------


def test_keygen_age_writes_a_private_identity_debian_age_reads_and_prints_only_the_recipient(
    tmp_path: Path,
) -> None:
    path = tmp_path / "key.txt"
    runner = CliRunner()
    result = runner.invoke(app, ["keygen-age", str(path)])
    assert result.exit_code == 0, result.output
    assert path.stat().st_mode & 0o777 == 0o600
    recipient = subprocess.run(
        ["age-keygen", "-y", str(path)], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert f"recipient: {recipient}" in result.output
    assert "AGE-SECRET-KEY" not in result.output
    secret = path.read_text().splitlines()[-1]
    ciphertext = subprocess.run(
        ["age", "-r", recipient], input=CANARY, capture_output=True, check=True
    ).stdout
    plain = subprocess.run(
        ["age", "-d", "-i", str(path)], input=ciphertext, capture_output=True, check=True
    ).stdout
    assert plain == CANARY

    again = runner.invoke(app, ["keygen-age", str(path)])
    assert again.exit_code == 4 and "already exists" in again.output
    assert path.read_text().splitlines()[-1] == secret

    shown = runner.invoke(app, ["keygen-age", str(tmp_path / "paper.txt"), "--show"])
    assert shown.exit_code == 0
    assert (tmp_path / "paper.txt").read_text().splitlines()[-1] in shown.output

    dry = runner.invoke(app, ["keygen-age", str(tmp_path / "dry.txt"), "--dry-run"])
    assert dry.exit_code == 0 and not (tmp_path / "dry.txt").exists()


def test_keygen_age_help_advises_an_offline_identity_and_a_second_recipient() -> None:
    text = " ".join(CliRunner().invoke(app, ["keygen-age", "--help"]).output.split())
    assert "Keep it offline" in text
    assert "second recipient for the team" in text


def test_age_keygen_identities_are_read_to_the_recipient_age_keygen_prints(
    age_keys: Keys,
) -> None:
    printed = subprocess.run(
        ["age-keygen", "-y", str(age_keys.other)], capture_output=True, text=True, check=True
    ).stdout.strip()
    (found,) = pipeline.load_identity(age_keys.other).recipients
    assert found.text == printed


def _write(tmp_path: Path, cfg: config.Config) -> str:
    """The config as a file, for runs through the command line."""
    b = cfg.backup
    path = tmp_path / "keyforge.toml"
    path.write_text(
        '[general]\nhost = "server1"\n[backup]\n'
        f"sources = {json.dumps(list(b.sources))}\ndirectory = {json.dumps(b.directory)}\n"
        f'full_every = 7\nnice = 0\nionice = "none"\n'
        f"encrypt_to = {json.dumps(list(b.encrypt_to))}\n"
        f"signing_key = {json.dumps(b.signing_key)}\n"
    )
    return str(path)


@pytest.mark.parametrize("zero_copy", [True, False], ids=["tee(2)", "buffer"])
def test_the_checked_encrypted_stream_reaches_age_whole_either_way(
    tmp_path: Path, age_keys: Keys, monkeypatch: pytest.MonkeyPatch, zero_copy: bool
) -> None:
    """The stream copied to the check and into age: with the kernel's tee(2), and with the
    buffer used where tee(2) is refused; the archive decrypts to exactly zstd's output."""
    if not zero_copy:
        monkeypatch.setattr(pipeline, "_TEE", None)
    payload = tmp_path / "payload"
    payload.write_bytes(os.urandom(3_000_000) + CANARY * 1000)
    final = tmp_path / "out.zst.age"
    pipeline.write_archive(
        final,
        ["cat", str(payload)],
        compression="zstd",
        level=3,
        recipients=[age.parse_recipient(age_keys.recipient)],
        test=True,
    )
    compressed = subprocess.run(
        ["age", "-d", "-i", str(age_keys.identity), str(final)], capture_output=True, check=True
    ).stdout
    plain = subprocess.run(["zstd", "-d", "-c"], input=compressed, capture_output=True, check=True)
    assert plain.stdout == payload.read_bytes()


@pytest.mark.parametrize("kernel_refuses", [False, True])
def test_an_archive_written_back_behind_its_hash_is_whole_either_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kernel_refuses: bool
) -> None:
    """The follower asks the kernel to start writing what it hashed (sync_file_range), so the
    fsync before the rename has only the tail left; where the kernel refuses, the rest is left
    to that fsync, and either way the archive is the producer's every byte."""
    real = pipeline._SYNC_FILE_RANGE
    assert real is not None, "Linux's sync_file_range(2) should be found through libc"
    asked: list[tuple[int, int]] = []

    def sync_file_range(fd: int, offset: int, length: int, flags: int) -> int:
        asked.append((offset, length))
        return -1 if kernel_refuses else real(fd, offset, length, flags)

    monkeypatch.setattr(pipeline, "_SYNC_FILE_RANGE", sync_file_range)
    payload = tmp_path / "payload"
    payload.write_bytes(os.urandom(40 << 20))  # incompressible: 40 MiB reach the file
    final = tmp_path / "out.zst"
    written = pipeline.write_archive(final, ["cat", str(payload)], compression="zstd", level=1)
    assert written.digest == layout.hash_of_file(final)
    plain = subprocess.run(["zstd", "-d", "-c", str(final)], capture_output=True, check=True)
    assert plain.stdout == payload.read_bytes()
    assert asked and asked[0][0] == 0
    if kernel_refuses:
        assert len(asked) == 1  # asked once, then left to the fsync
    else:
        assert len(asked) >= 4  # every 8 MiB hashed
        assert all(a[0] + a[1] == b[0] for a, b in itertools.pairwise(asked))
