"""Hypothesis: the allowed_signers reader and writer, the pattern matcher, and SSHSIG blobs."""

from __future__ import annotations

import base64
import datetime as dt
import re

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from keyforge.errors import ParseError
from keyforge.ssh import allowed_signers, sshsig

NS = "keyforge-manifest"


def _blob(raw: bytes) -> bytes:
    return sshsig.ed25519_public_blob(raw)


principal_chars = st.characters(
    codec="utf-8", exclude_categories=("Cc", "Cs", "Zs", "Zl", "Zp"), exclude_characters='",\\'
)
principal = st.text(principal_chars, min_size=1, max_size=12).filter(
    lambda s: not s.startswith(("#", "!"))
)
principals = st.lists(principal, min_size=1, max_size=3).map(",".join)
times = st.builds(
    lambda d, clock, z: d.strftime("%Y%m%d") + clock + z,
    st.dates(dt.date(1971, 1, 2), dt.date(2200, 1, 1)),
    st.sampled_from(["", "0000", "2359", "120030"]),
    st.sampled_from(["", "Z"]),
)
namespace_lists = st.lists(
    st.text(st.sampled_from("abkeyforg-*?,.@"), min_size=1, max_size=10).filter(
        lambda s: "," not in s
    ),
    min_size=1,
    max_size=3,
).map(",".join)
comments = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp")), max_size=20
).map(str.strip)


@st.composite
def signers(draw: st.DrawFn) -> allowed_signers.Signer:
    after = draw(st.none() | times)
    before = draw(st.none() | times)
    if after and before:
        a, b = sorted([after, before], key=allowed_signers.parse_time)
        if allowed_signers.parse_time(a) == allowed_signers.parse_time(b):
            before = None
        else:
            after, before = a, b
    return allowed_signers.Signer(
        principals=draw(principals),
        key_type="ssh-ed25519",
        key_blob=_blob(draw(st.binary(min_size=32, max_size=32))),
        cert_authority=draw(st.booleans()),
        namespaces=draw(st.none() | namespace_lists),
        valid_after=after,
        valid_before=before,
        comment=draw(comments),
    )


@settings(max_examples=300)
@given(st.lists(signers(), max_size=4))
def test_rendered_files_read_back_equal(entries: list[allowed_signers.Signer]) -> None:
    text = "# pinned on raspberrypi\n\n" + allowed_signers.render_file(entries)
    assert allowed_signers.parse(text).signers == tuple(entries)


@given(signers(), st.sampled_from(["CERT-AUTHORITY", "Namespaces", "VALID-AFTER"]))
def test_option_names_are_read_in_any_case(signer: allowed_signers.Signer, name: str) -> None:
    line = allowed_signers.render(signer)
    lowered = name.lower()
    if lowered not in line:
        return
    assert allowed_signers.parse_line(line.replace(lowered, name, 1)) == signer


@given(st.text(max_size=60))
def test_any_text_is_a_file_or_one_error_naming_its_line(text: str) -> None:
    try:
        allowed_signers.parse(text, path="pinned")
    except ParseError as err:
        assert re.match(r"^pinned:\d+: not an allowed_signers line: ", str(err))
        assert "\n" not in str(err)


def _reference_match(text: str, pattern: str) -> bool:
    """A second reading of OpenSSH's match_pattern, by recursion as match.c does it."""
    if not pattern:
        return not text
    if pattern[0] == "*":
        return any(_reference_match(text[i:], pattern[1:]) for i in range(len(text) + 1))
    if not text:
        return False
    return (pattern[0] == "?" or pattern[0] == text[0]) and _reference_match(text[1:], pattern[1:])


@given(st.text("ab*?.", max_size=8), st.text("ab.", max_size=8))
def test_patterns_match_as_openssh_matches_them(pattern: str, text: str) -> None:
    assert allowed_signers.match_pattern(text, pattern) == _reference_match(text, pattern)


@given(st.lists(st.text("ab*?", min_size=1, max_size=4), min_size=1, max_size=4), st.text("ab"))
def test_a_negated_match_wins_over_any_positive_one(patterns: list[str], text: str) -> None:
    listed = ",".join(patterns)
    negated = ",".join(["!" + patterns[0], *patterns[1:]])
    if allowed_signers.match_pattern(text, patterns[0]):
        assert allowed_signers.match_list(text, negated) == -1
    positive = any(allowed_signers.match_pattern(text, p) for p in patterns)
    assert allowed_signers.match_list(text, listed) == (1 if positive else 0)


@given(signers(), st.binary(min_size=32, max_size=32))
def test_only_the_pinned_key_for_a_matching_principal_is_admitted(
    signer: allowed_signers.Signer, other: bytes
) -> None:
    file = allowed_signers.AllowedSigners((signer,))
    first = signer.principals.split(",")[0]
    now = dt.datetime.now(dt.UTC)
    found = file.find(first, NS, signer.key_blob, now)
    pt = allowed_signers.parse_time
    in_time = (signer.valid_after is None or pt(signer.valid_after) <= now) and (
        signer.valid_before is None or now <= pt(signer.valid_before)
    )
    in_namespace = signer.namespaces is None or allowed_signers.match_list(NS, signer.namespaces)
    # a CA line never admits a plain key; a plain one admits its key where its options allow
    expected = not signer.cert_authority and in_time and in_namespace in (None, True, 1)
    assert (found == signer) == expected
    assert file.find(first + "\n", NS, signer.key_blob, now) is None or "*" in signer.principals
    if _blob(other) != signer.key_blob:
        assert file.find(first, NS, _blob(other), now) is None


KEY = ed25519.Ed25519PrivateKey.generate()


@given(st.binary(max_size=200))
def test_a_signature_checks_for_its_message_and_no_other(message: bytes) -> None:
    armored = sshsig.sign(KEY, message, NS)
    assert sshsig.check(armored, message, NS).namespace == NS
    with pytest.raises(ValueError, match="does not match"):
        sshsig.check(armored, message + b"\n", NS)


@settings(max_examples=200)
@given(st.integers(min_value=0), st.integers(min_value=1, max_value=255))
def test_a_flipped_byte_anywhere_in_the_blob_is_refused(where: int, flip: int) -> None:
    message = b"manifest"
    blob = sshsig.dearmor(sshsig.sign(KEY, message, NS))
    at = where % len(blob)
    broken = bytearray(blob)
    broken[at] ^= flip
    armored = sshsig.armor(bytes(broken))
    with pytest.raises(ValueError):
        sshsig.check(armored, message, NS)


@given(st.binary(max_size=120))
def test_any_bytes_are_a_signature_or_a_value_error(data: bytes) -> None:
    armored = sshsig.armor(data)
    with pytest.raises(ValueError):
        sshsig.check(armored, b"m", NS)
    with pytest.raises(ValueError):
        sshsig.check(base64.b64encode(data), b"m", NS)
