"""Hypothesis: Bech32 and recipients round-trip, a typo never passes, headers and manifest
fields read back as written."""

from __future__ import annotations

import datetime as dt
import string
import tempfile
from pathlib import Path

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from keyforge import age, layout
from keyforge.errors import KeyMaterialError

keys32 = st.binary(min_size=32, max_size=32)
hrps = st.text(alphabet=string.ascii_lowercase + "-", min_size=1, max_size=20)


@given(hrp=hrps, data=st.binary(max_size=64))
def test_bech32_round_trips(hrp: str, data: bytes) -> None:
    text = age.bech32_encode(hrp, data)
    assert age.bech32_decode(text) == (hrp, data)
    assert age.bech32_decode(text.upper()) == (hrp, data)


@given(key=keys32)
def test_every_x25519_key_round_trips_as_a_recipient(key: bytes) -> None:
    recipient = age.x25519_recipient(key)
    assert recipient.text.startswith("age1") and len(recipient.text) == 62
    assert age.parse_recipient(recipient.text) == recipient
    assert age.is_fingerprint(recipient.fingerprint)


@given(key=keys32, position=st.integers(min_value=4, max_value=61), data=st.data())
def test_a_recipient_with_one_character_changed_is_refused(
    key: bytes, position: int, data: st.DataObject
) -> None:
    text = age.x25519_recipient(key).text
    replacement = data.draw(st.sampled_from("qpzry9x8gf2tvdw0s3jn54khce6mua7l"))
    assume(replacement != text[position])
    typo = text[:position] + replacement + text[position + 1 :]
    try:
        age.parse_recipient(typo)
    except KeyMaterialError as err:
        assert "checksum" in str(err)
    else:
        raise AssertionError(f"{typo} was accepted")


@given(key=keys32, cut=st.integers(min_value=1, max_value=57))
def test_a_cut_off_recipient_is_refused(key: bytes, cut: int) -> None:
    text = age.x25519_recipient(key).text
    try:
        age.parse_recipient(text[:-cut])
    except KeyMaterialError:
        return
    raise AssertionError(f"{text[:-cut]} was accepted")


base64_char = st.sampled_from(string.ascii_letters + string.digits + "+/")
words = st.text(alphabet=string.ascii_letters + string.digits + "+/-", min_size=1, max_size=20)


@st.composite
def stanzas(draw: st.DrawFn) -> tuple[str, tuple[str, ...], str]:
    kind = draw(st.sampled_from(["X25519", "ssh-ed25519", "ssh-rsa", "grease-x"]))
    args = tuple(draw(st.lists(words, max_size=3)))
    body = "".join(draw(st.lists(base64_char, max_size=200)))
    return kind, args, body


def render(stanza: tuple[str, tuple[str, ...], str]) -> str:
    kind, args, body = stanza
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    if not lines or len(lines[-1]) == 64:
        lines.append("")
    return "-> " + " ".join((kind, *args)) + "\n" + "".join(f"{ln}\n" for ln in lines)


@given(parts=st.lists(stanzas(), min_size=1, max_size=5), payload=st.binary(max_size=64))
def test_a_rendered_header_reads_back_to_its_stanzas(
    parts: list[tuple[str, tuple[str, ...], str]], payload: bytes
) -> None:
    text = age.HEADER_MAGIC.decode() + "".join(render(p) for p in parts) + f"--- {'M' * 43}\n"
    header = age.parse_header(text.encode() + payload)
    assert [(s.kind, s.args) for s in header.stanzas] == [(k, a) for k, a, _ in parts]
    assert header.size == len(text)


@given(
    fingerprints=st.lists(keys32, max_size=3, unique=True).map(
        lambda ks: [age.x25519_recipient(k).fingerprint for k in ks]
    ),
    size=st.integers(min_value=0, max_value=10_000_000),
)
def test_manifest_entries_round_trip_their_encrypted_to(fingerprints: list[str], size: int) -> None:
    encrypted = bool(fingerprints)
    name = layout.archive_name("server1", "etc", "20261128", "master", "zstd", encrypted=encrypted)
    entry = layout.ArchiveEntry(
        name=name,
        source="/etc",
        kind="master",
        chain=name,
        size=size,
        digest="a" * 64,
        encrypted_to=tuple(sorted(fingerprints)),
    )
    data = layout.manifest_json("server1", "20261128", dt.datetime(2026, 11, 28), [entry])
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "m.json"
        path.write_bytes(data)
        assert layout.load_manifest(path).archives == (entry,)


@settings(max_examples=50)
@given(size=st.integers(min_value=0, max_value=5 * (age.CHUNK_SIZE + age.TAG_SIZE)))
def test_payload_sizes_age_can_produce_are_accepted(size: int) -> None:
    """age writes full chunks and one last chunk of 0..64 KiB plaintext (empty only alone)."""
    full = age.CHUNK_SIZE + age.TAG_SIZE
    plaintext = size
    chunks, last = divmod(plaintext, age.CHUNK_SIZE)
    if last == 0 and chunks > 0:
        chunks, last = chunks - 1, age.CHUNK_SIZE
    produced = age.PAYLOAD_NONCE_SIZE + chunks * full + last + age.TAG_SIZE
    assert age.payload_problem(produced) is None
