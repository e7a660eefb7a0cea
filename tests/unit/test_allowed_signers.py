"""allowed_signers lines as ssh-keygen(1) documents them, and the lines keyforge refuses."""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path

import pytest

from keyforge import layout
from keyforge.errors import FileError, ParseError
from keyforge.ssh import allowed_signers, sshsig

BLOB = sshsig.ed25519_public_blob(bytes(range(32)))
KEY = "ssh-ed25519 " + base64.b64encode(BLOB).decode()
NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("line", "principals", "namespaces", "after", "before", "comment"),
    [
        (f"server1 {KEY}", "server1", None, None, None, ""),
        (
            f"server1,backup@* {KEY} root@server1",
            "server1,backup@*",
            None,
            None,
            None,
            "root@server1",
        ),
        (f'"server 1" {KEY}', "server 1", None, None, None, ""),
        (
            f'  server1 namespaces="keyforge-manifest" {KEY}',
            "server1",
            "keyforge-manifest",
            None,
            None,
            "",
        ),
        (
            f'server1 valid-after="20261101",VALID-BEFORE="202701010000Z" {KEY} x y',
            "server1",
            None,
            "20261101",
            "202701010000Z",
            "x y",
        ),
    ],
)
def test_documented_lines_read(
    line: str,
    principals: str,
    namespaces: str | None,
    after: str | None,
    before: str | None,
    comment: str,
) -> None:
    signer = allowed_signers.parse_line(line)
    assert signer is not None
    assert (signer.principals, signer.namespaces, signer.valid_after, signer.valid_before) == (
        principals,
        namespaces,
        after,
        before,
    )
    assert signer.comment == comment
    assert signer.key_blob == BLOB


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (f"server1 bogus {KEY}", "unsupported option"),
        (f'server1 namespaces="a",namespaces="b" {KEY}', 'multiple "namespaces" clauses'),
        (f"server1 namespaces=a {KEY}", "missing start quote"),
        (f'server1 namespaces="a {KEY}', "missing end quote"),
        (f'server1 valid-after="yesterday" {KEY}', 'invalid "valid-after" time'),
        (f'server1 valid-after="20270101",valid-before="20260101" {KEY}', "is before"),
        ("server1", "missing key"),
        ("server1 ssh-ed25519 !!!", "unsupported option"),
        (f'"server1 {KEY}', "unterminated"),
        (f"server1 cert-authority, {KEY}", "unexpected end of options"),
    ],
)
def test_lines_ssh_keygen_refuses_are_refused_naming_the_line(line: str, reason: str) -> None:
    with pytest.raises(ParseError, match=f"^pinned:2: not an allowed_signers line: .*{reason}"):
        allowed_signers.parse(f"# comment\n{line}\n", path="pinned")


def test_principal_namespace_time_and_ca_decide_who_may_sign() -> None:
    text = "\n".join(
        [
            f'server1 namespaces="git" {KEY}',
            f"server1 cert-authority {KEY}",
            f'server1 valid-before="20261101Z" {KEY}',
        ]
    )
    assert allowed_signers.parse(text).find("server1", "keyforge-manifest", BLOB, NOW) is None
    ok = allowed_signers.parse(text + f'\n*,!server2 valid-after="20261101Z" {KEY}\n')
    assert ok.find("server1", "keyforge-manifest", BLOB, NOW) is ok.signers[3]
    assert ok.find("server2", "keyforge-manifest", BLOB, NOW) is None
    assert ok.find("server1", "keyforge-manifest", BLOB[:-1] + b"x", NOW) is None


def test_times_without_z_are_local_and_with_z_utc() -> None:
    assert allowed_signers.parse_time("20261128Z") == dt.datetime(2026, 11, 28, tzinfo=dt.UTC)
    local = allowed_signers.parse_time("202611281200")
    assert local == dt.datetime(2026, 11, 28, 12, 0).astimezone()


def test_a_missing_file_is_a_file_error(tmp_path: Path) -> None:
    with pytest.raises(FileError):
        allowed_signers.load(tmp_path / "allowed_signers")


def _manifest(tmp_path: Path, **extra: object) -> layout.Manifest:
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"format": 1, "host": "server1", "archives": [], **extra}))
    return layout.load_manifest(path)


def test_the_manifest_reader_takes_the_link_and_signer_and_refuses_malformed_ones(
    tmp_path: Path,
) -> None:
    link = {"name": "server1.20261127.manifest.json", "sha256": "a" * 64}
    fingerprint = "SHA256:" + "A" * 43
    read = _manifest(tmp_path, previous=link, signed_by=fingerprint)
    assert read.previous == layout.ManifestLink(link["name"], "a" * 64)
    assert read.signed_by == fingerprint
    for bad in (
        {"previous": {"name": "../x.manifest.json", "sha256": "a" * 64}},
        {"previous": {"name": link["name"], "sha256": "nothex"}},
        {"previous": "server1.20261127.manifest.json"},
        {"signed_by": "md5:xx"},
    ):
        with pytest.raises(FileError, match="malformed"):
            _manifest(tmp_path, **bad)
