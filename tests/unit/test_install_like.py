"""`keyforge install --like OLD`: a new key beside the old one, with exactly its options."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from keyforge.errors import KeyforgeError, ParseError, UsageError
from keyforge.receiver import install
from keyforge.ssh import authorized_keys as ak
from keyforge.ssh import keys

RSYNC = "rsync --server -logDtprze.iLsfxCIvu --delete . srvbackups/"
GATE = '/opt/keyforge/bin/keyforge gate --dir /home/foo/srvbackups --expect "-logDtprze.iLsfxCIvu"'


def new_key(comment: str = "foo@server1") -> ak.Entry:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    raw = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return ak.parse_public_key(f"{raw.decode('ascii')} {comment}\n")


def plain(key: ak.Entry) -> str:
    return f"{key.keytype} {key.blob} {key.comment}"


def locked_line(key: ak.Entry, command: str = RSYNC) -> str:
    entry = install.locked_entry(key, from_patterns=["203.0.113.7"], command=command)
    return install.render_line(entry)


@pytest.fixture
def old() -> ak.Entry:
    return new_key("foo@server1 backups")


@pytest.fixture
def new() -> ak.Entry:
    return new_key("foo@server1 backups (next)")


def test_the_new_key_goes_right_after_the_old_line_with_exactly_its_options(
    old: ak.Entry, new: ak.Entry
) -> None:
    admin = plain(new_key("admin"))
    text = f"{admin}\n{locked_line(old)}\n# the end\n"

    plan = install.plan_install_like(text, new, old)

    lines = (plan.new_text or "").splitlines()
    assert lines[0] == admin
    assert lines[1] == locked_line(old)  # the old line stays, so both keys work
    assert lines[3] == "# the end"
    added = ak.parse_line(lines[2])
    assert added is not None
    assert added.same_key(new)
    assert added.options == ak.parse_line(locked_line(old)).options  # type: ignore[union-attr]
    assert added.comment == new.comment
    assert plan.action == "added"
    assert plan.linenos == (3,)


def test_a_gated_command_with_quotes_is_copied_byte_for_byte(old: ak.Entry, new: ak.Entry) -> None:
    old_line = locked_line(old, GATE)
    plan = install.plan_install_like(old_line + "\n", new, old)

    added = (plan.new_text or "").splitlines()[1]
    assert added.removesuffix(" " + new.comment).removesuffix(new.blob) == old_line.removesuffix(
        " " + old.comment
    ).removesuffix(old.blob)


def test_the_old_key_can_be_named_by_its_sha256_fingerprint(old: ak.Entry, new: ak.Entry) -> None:
    fingerprint = old.fingerprint()
    assert install.parse_old_key(fingerprint) == fingerprint

    plan = install.plan_install_like(locked_line(old) + "\n", new, fingerprint)

    assert plan.action == "added"


def test_installing_like_twice_changes_nothing_the_second_time(
    old: ak.Entry, new: ak.Entry
) -> None:
    first = install.plan_install_like(locked_line(old) + "\n", new, old)
    second = install.plan_install_like(first.new_text, new, old)

    assert second.action == "unchanged"
    assert not second.changed


def test_a_new_key_already_there_with_other_options_gets_the_old_lines_options(
    old: ak.Entry, new: ak.Entry
) -> None:
    text = f"{locked_line(old)}\n{plain(new)}\n"

    plan = install.plan_install_like(text, new, old)

    assert plan.action == "replaced"
    assert (plan.new_text or "").splitlines()[1].startswith("restrict,")


def test_an_old_key_that_is_not_there_is_refused(old: ak.Entry, new: ak.Entry) -> None:
    other = plain(new_key("someone else"))
    with pytest.raises(KeyforgeError, match="is not in authorized_keys"):
        install.plan_install_like(other + "\n", new, old)
    with pytest.raises(KeyforgeError, match="is not in"):
        install.plan_install_like(None, new, old.fingerprint())


def test_an_old_key_on_lines_with_different_options_is_refused(
    old: ak.Entry, new: ak.Entry
) -> None:
    text = f"{locked_line(old)}\n{plain(old)}\n"
    with pytest.raises(KeyforgeError, match=r"lines 1, 2 .* different options"):
        install.plan_install_like(text, new, old)


def test_an_old_key_on_two_identical_lines_is_accepted(old: ak.Entry, new: ak.Entry) -> None:
    text = f"{locked_line(old)}\n{locked_line(old)}\n"
    plan = install.plan_install_like(text, new, old)
    assert plan.linenos == (2,)


def test_the_last_line_without_a_newline_gets_one_before_the_new_line(
    old: ak.Entry, new: ak.Entry
) -> None:
    plan = install.plan_install_like(locked_line(old), new, old)

    assert (plan.new_text or "").startswith(locked_line(old) + "\n")
    assert (plan.new_text or "").endswith("\n")


def test_crlf_files_stay_crlf(old: ak.Entry, new: ak.Entry) -> None:
    plan = install.plan_install_like(locked_line(old) + "\r\n", new, old)
    assert (plan.new_text or "").count("\r\n") == 2


def test_the_old_key_as_the_new_one_is_refused(old: ak.Entry) -> None:
    with pytest.raises(UsageError, match="the new key is the old key"):
        install.plan_install_like(locked_line(old) + "\n", old, old)


def test_an_old_key_on_an_unparseable_line_is_refused(old: ak.Entry, new: ak.Entry) -> None:
    text = f'bogus-option="x" {plain(old)}\n'
    with pytest.raises(ParseError, match="the old key stands on a line keyforge cannot parse"):
        install.plan_install_like(text, new, old)


@pytest.mark.parametrize("spec", ["SHA256:short", "SHA256:" + "a" * 42 + "!"])
def test_a_malformed_fingerprint_is_refused(spec: str) -> None:
    with pytest.raises(UsageError, match="not a SHA256 fingerprint"):
        install.parse_old_key(spec)


def test_the_fingerprint_is_the_one_ssh_keygen_prints(old: ak.Entry) -> None:
    assert old.fingerprint() == keys.parse_public_line(plain(old)).sha256


def test_install_key_like_writes_the_file_and_keeps_a_backup(
    tmp_path: Path, old: ak.Entry, new: ak.Entry
) -> None:
    path = tmp_path / ".ssh" / "authorized_keys"
    path.parent.mkdir(mode=0o700)
    path.write_text(locked_line(old) + "\n")
    path.chmod(0o600)

    dry = install.install_key_like(path, new, old, dry_run=True)
    assert not dry.written
    assert path.read_text() == locked_line(old) + "\n"

    result = install.install_key_like(path, new, old)
    assert result.written
    assert path.read_text().splitlines()[0] == locked_line(old)
    assert len(path.read_text().splitlines()) == 2
    assert result.backup is not None
    assert result.backup.read_text() == locked_line(old) + "\n"


def test_install_key_like_in_a_missing_file_is_refused_and_creates_nothing(
    tmp_path: Path, old: ak.Entry, new: ak.Entry
) -> None:
    path = tmp_path / "home" / ".ssh" / "authorized_keys"
    with pytest.raises(KeyforgeError, match="is not in"):
        install.install_key_like(path, new, old)
    assert not path.parent.exists()
