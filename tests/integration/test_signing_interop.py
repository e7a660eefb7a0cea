"""keyforge's SSHSIG signatures against stock OpenSSH, both ways.

keyforge signs with ``cryptography`` and checks in-process; these tests prove that a signature
keyforge writes verifies with ``ssh-keygen -Y verify -f allowed_signers -I server1 -n
keyforge-manifest``, and that one ``ssh-keygen -Y sign`` makes verifies in keyforge, with the
allowed_signers file each side wrote for the other.
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from pathlib import Path

import pytest

from keyforge import layout, signing
from keyforge.ssh import allowed_signers, keys, sshsig

SSH_KEYGEN = shutil.which("ssh-keygen")
MESSAGE = b'{"format": 1, "host": "server1", "archives": []}\n'


def keygen(*argv: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    assert SSH_KEYGEN is not None, "ssh-keygen (openssh-client) is needed"
    return subprocess.run([SSH_KEYGEN, *argv], input=stdin, capture_output=True, check=False)


def keyforge_key(tmp_path: Path) -> tuple[signing.SigningKey, str]:
    pair = signing.make_key("root@server1")
    path = tmp_path / "manifest-signing-key"
    keys.write_pair(path, pair, force=False)
    return signing.load_key(path), pair.public_line


def test_a_keyforge_signature_verifies_with_stock_ssh_keygen(tmp_path: Path) -> None:
    key, public_line = keyforge_key(tmp_path)
    manifest = tmp_path / "server1.20261128.manifest.json"
    signing.write_signed(manifest, MESSAGE, key)
    signers = tmp_path / "allowed_signers"
    signers.write_text(signing.signer_line(public_line, "server1") + "\n")
    sig = layout.signature_path(manifest)
    assert sig.name == "server1.20261128.manifest.json.sig"

    argv = ["-Y", "verify", "-f", str(signers), "-I", "server1", "-n", "keyforge-manifest"]
    good = keygen(*argv, "-s", str(sig), stdin=manifest.read_bytes())
    assert good.returncode == 0, good.stderr
    assert b"Good" in good.stdout
    # and stock ssh-keygen refuses what keyforge must refuse too
    assert keygen(*argv, "-s", str(sig), stdin=MESSAGE + b" ").returncode != 0
    other = ["-Y", "verify", "-f", str(signers), "-I", "server2", "-n", "keyforge-manifest"]
    assert keygen(*other, "-s", str(sig), stdin=MESSAGE).returncode != 0
    wrong_ns = ["-Y", "verify", "-f", str(signers), "-I", "server1", "-n", "file"]
    assert keygen(*wrong_ns, "-s", str(sig), stdin=MESSAGE).returncode != 0


def test_keyforge_checks_a_signature_made_by_stock_ssh_keygen(tmp_path: Path) -> None:
    private = tmp_path / "id_ed25519"
    made = keygen("-q", "-t", "ed25519", "-N", "", "-C", "root@server1", "-f", str(private))
    assert made.returncode == 0, made.stderr
    manifest = tmp_path / "m.json"
    manifest.write_bytes(MESSAGE)
    signed = keygen("-Y", "sign", "-f", str(private), "-n", "keyforge-manifest", str(manifest))
    assert signed.returncode == 0, signed.stderr
    armored = (tmp_path / "m.json.sig").read_bytes()
    public_line = (tmp_path / "id_ed25519.pub").read_text()
    line = f'server1 namespaces="keyforge-manifest" {public_line}'
    trusted = allowed_signers.parse(line)

    found = sshsig.check(armored, MESSAGE, "keyforge-manifest")
    assert found.hash_algorithm == "sha512"
    assert trusted.find("server1", "keyforge-manifest", found.public_blob) is not None
    assert trusted.find("server2", "keyforge-manifest", found.public_blob) is None
    with pytest.raises(ValueError, match="does not match"):
        sshsig.check(armored, MESSAGE.replace(b"[]", b"[ ]"), "keyforge-manifest")
    with pytest.raises(ValueError, match="namespace"):
        sshsig.check(armored, MESSAGE, "file")

    # the whole check keyforge makes before trusting a manifest, on ssh-keygen's signature
    now = dt.datetime.now(dt.UTC)
    checked = signing.check_manifest(manifest, "server1", trusted, now)
    assert checked.signer == found.public_blob


def test_ssh_keygen_reads_the_time_and_namespace_options_as_keyforge_does(tmp_path: Path) -> None:
    """A line that expired: refused by both; a namespace that does not match: refused by both."""
    key, public_line = keyforge_key(tmp_path)
    manifest = tmp_path / "server1.20261128.manifest.json"
    signing.write_signed(manifest, MESSAGE, key)
    sig = layout.signature_path(manifest)
    cases = {
        'server1 valid-before="20200101Z" ': False,
        'server1 valid-after="20200101Z" ': True,
        'server1 namespaces="file,git" ': False,
        'server1 namespaces="keyforge-*" ': True,
        "server?,!server2 ": True,
        "*,!server1 ": False,
    }
    for prefix, accepted in cases.items():
        signers = tmp_path / "allowed_signers"
        signers.write_text(prefix + public_line + "\n")
        argv = ["-Y", "verify", "-f", str(signers), "-I", "server1", "-n", "keyforge-manifest"]
        stock = keygen(*argv, "-s", str(sig), stdin=MESSAGE).returncode == 0
        parsed = allowed_signers.load(signers)
        ours = parsed.find("server1", "keyforge-manifest", key.public_blob) is not None
        assert (stock, ours) == (accepted, accepted), prefix
