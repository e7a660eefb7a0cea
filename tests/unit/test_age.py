"""keyforge.age: recipients, identities, fingerprints and the header, each case by hand."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from keyforge import age, layout
from keyforge.errors import FileError, KeyMaterialError
from keyforge.ssh import keys

# age's own example recipient (from its README) and its identity's published public half
AGE_README_RECIPIENT = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"


def ed25519_line(comment: str = "admin@laptop") -> str:
    return keys.generate("ed25519", comment=comment).public_line


# --- Bech32 ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "valid",
    # BIP 173's valid test vectors (those within the lengths age uses)
    [
        "A12UEL5L",
        "a12uel5l",
        "abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw",
        "split1checkupstagehandshakeupstreamerranterredcaperred2y9e3w",
    ],
)
def test_bip173_valid_strings_decode(valid: str) -> None:
    hrp, data = age.bech32_decode(valid)
    assert hrp == valid.lower().rsplit("1", 1)[0]
    assert age.bech32_encode(hrp, data) == valid.lower()


@pytest.mark.parametrize(
    ("invalid", "reason"),
    [
        ("A1G7SGD8", "checksum"),  # BIP 173: checksum calculated with uppercase form of HRP
        ("a12UEL5L", "mixes upper and lower case"),
        ("pzry9x0s0muk", "too short"),  # no separator
        ("1pzry9x0s0muk", "too short"),  # empty HRP
        ("x1b4n0q5v", "'b'"),  # invalid data character
        ("li1dgmt3", "too short"),  # too short checksum
    ],
)
def test_bip173_invalid_strings_are_refused_with_a_reason(invalid: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        age.bech32_decode(invalid)


# --- recipients --------------------------------------------------------------------------------


def test_the_age_readme_recipient_parses_to_its_32_byte_key() -> None:
    recipient = age.parse_recipient(AGE_README_RECIPIENT)
    assert recipient.kind == age.X25519
    assert len(recipient.key) == 32
    assert recipient.text == AGE_README_RECIPIENT
    assert recipient.fingerprint.startswith("X25519 SHA256:")


def test_an_upper_case_recipient_is_the_same_key_given_to_age_in_lower_case() -> None:
    recipient = age.parse_recipient(AGE_README_RECIPIENT.upper())
    assert recipient.text == AGE_README_RECIPIENT


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        (AGE_README_RECIPIENT[:-1] + "q", "wrong checksum"),
        (AGE_README_RECIPIENT[:30], "wrong checksum"),
        (AGE_README_RECIPIENT[:10] + AGE_README_RECIPIENT[10:].upper(), "mixes upper and lower"),
        ("age1yubikey1qwt50d05nh5vutpdzmlg5wn80xq5negm4uj9ghv0snvdd3yysf5yw3rhl3t", "plugin"),
        ("AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ5JHS8J", "identity"),
        ("ecdsa-sha2-nistp256 AAAAE2VjZHNh", "ssh-ed25519 and ssh-rsa keys only"),
        ("sk-ssh-ed25519@openssh.com AAAA", "ssh-ed25519 and ssh-rsa keys only"),
        ("ssh-ed25519 not-base64!", "not a valid age recipient"),
        ("hello", "is not an age recipient"),
    ],
)
def test_a_string_that_is_no_recipient_is_refused_saying_why(text: str, reason: str) -> None:
    with pytest.raises(KeyMaterialError, match=reason):
        age.parse_recipient(text)


def test_an_ssh_ed25519_recipient_keeps_its_key_and_fingerprint_as_ssh_keygen_shows_it() -> None:
    line = ed25519_line()
    recipient = age.parse_recipient(line)
    public = keys.parse_public_line(line)
    assert recipient.kind == age.SSH_ED25519
    assert recipient.key == public.blob
    assert recipient.fingerprint == f"ssh-ed25519 {public.sha256}"
    # age is given the key without its comment
    assert recipient.text == " ".join(line.split()[:2])
    assert recipient.comment == "admin@laptop"


def test_rsa_recipients_follow_age_minimum_of_2048_bits() -> None:
    def rsa_line(bits: int) -> str:
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        return (
            key.public_key()
            .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            .decode()
        )

    assert age.parse_recipient(rsa_line(2048)).kind == age.SSH_RSA
    with pytest.raises(KeyMaterialError, match="under 2048 bits"):
        age.parse_recipient(rsa_line(1024))


def test_the_same_key_twice_is_refused_naming_the_entry() -> None:
    with pytest.raises(KeyMaterialError, match=r"entry 2: .* listed twice"):
        age.parse_recipients([AGE_README_RECIPIENT, AGE_README_RECIPIENT.upper()])


def test_fingerprints_are_sorted_so_the_order_of_encrypt_to_does_not_matter() -> None:
    one, two = age.parse_recipient(AGE_README_RECIPIENT), age.parse_recipient(ed25519_line())
    assert age.fingerprints([one, two]) == age.fingerprints([two, one])
    assert all(age.is_fingerprint(f) for f in age.fingerprints([one, two]))


def test_the_encrypt_argv_holds_recipients_only() -> None:
    recipient = age.parse_recipient(AGE_README_RECIPIENT)
    assert age.age_encrypt_argv([recipient]) == [
        "age",
        "--encrypt",
        "--recipient",
        AGE_README_RECIPIENT,
    ]


# --- identities --------------------------------------------------------------------------------


def test_a_new_identity_reads_back_to_its_recipient_and_hides_its_secret() -> None:
    identity = age.new_identity()
    assert "AGE-SECRET-KEY-1" not in repr(identity)
    lines = identity.file_text.splitlines()
    assert lines[0].startswith("# created: ")
    assert lines[1] == f"# public key: {identity.recipient.text}"
    assert lines[2].startswith("AGE-SECRET-KEY-1") and lines[2].isupper()
    assert age.identity_recipients(identity.file_text.encode()) == (identity.recipient,)


def _string(value: bytes) -> bytes:
    return len(value).to_bytes(4, "big") + value


def test_an_openssh_private_key_gives_its_public_key_even_behind_a_passphrase() -> None:
    line = ed25519_line()
    blob = keys.parse_public_line(line).blob
    # the openssh-key-v1 layout of a passphrase-protected key: the public key stays in clear,
    # the private section is ciphertext (random bytes here: the reader must not need it)
    body = b"openssh-key-v1\0" + _string(b"aes256-ctr") + _string(b"bcrypt")
    body += _string(_string(b"salt" * 4) + (16).to_bytes(4, "big"))
    body += (1).to_bytes(4, "big") + _string(blob) + _string(bytes(range(64)))
    encoded = base64.b64encode(body).decode()
    pem = "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    pem += "".join(encoded[i : i + 70] + "\n" for i in range(0, len(encoded), 70))
    pem += "-----END OPENSSH PRIVATE KEY-----\n"
    (found,) = age.identity_recipients(pem.encode())
    assert found.fingerprint == age.parse_recipient(line).fingerprint


def test_the_backup_key_keyforge_pair_makes_is_an_identity_of_its_public_key() -> None:
    pair = keys.generate("ed25519", comment="root@server1")
    (found,) = age.identity_recipients(pair.private_pem)
    assert found.fingerprint == age.parse_recipient(pair.public_line).fingerprint


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "holds no age identity"),
        (b"# only a comment\n", "holds no age identity"),
        (b"AGE-SECRET-KEY-1QQQQ\n", "line 1 is not an age identity"),
        (b"\xff\xfe", "not ASCII"),
        (b"AGE-PLUGIN-YUBIKEY-1QQQQ\n", "plugin"),
        (
            b"-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
            "not a readable OpenSSH private key",
        ),
    ],
)
def test_a_file_that_is_no_identity_is_refused_without_showing_its_content(
    data: bytes, reason: str
) -> None:
    with pytest.raises(KeyMaterialError, match=reason) as caught:
        age.identity_recipients(data)
    assert "QQQQ" not in str(caught.value)


def test_a_recipient_file_given_as_identity_names_no_secret_in_the_error() -> None:
    secret = age.new_identity().file_text.splitlines()[-1]
    damaged = secret[:-1] + ("Q" if secret[-1] != "Q" else "P")
    with pytest.raises(KeyMaterialError, match="line 1") as caught:
        age.identity_recipients((damaged + "\n").encode())
    assert secret[16:40] not in str(caught.value)


def test_write_identity_is_private_and_never_replaces_a_file(tmp_path) -> None:
    path = tmp_path / "key.txt"
    identity = age.new_identity()
    age.write_identity(path, identity)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_text() == identity.file_text
    with pytest.raises(FileError, match="already exists"):
        age.write_identity(path, age.new_identity())
    assert path.read_text() == identity.file_text


# --- the header --------------------------------------------------------------------------------

MAC = "A" * 43


def header(*stanzas: str) -> bytes:
    return (age.HEADER_MAGIC.decode() + "".join(stanzas) + f"--- {MAC}\n").encode()


def x25519_stanza() -> str:
    return f"-> X25519 {'B' * 43}\n{'C' * 43}\n"


def ssh_stanza(fingerprint: str) -> str:
    kind = fingerprint.split(" ", 1)[0]
    return f"-> {kind} {age.ssh_tag(fingerprint)} {'D' * 43}\n{'E' * 43}\n"


def test_a_header_is_read_to_its_stanzas_and_its_length() -> None:
    ssh = age.parse_recipient(ed25519_line()).fingerprint
    data = header(x25519_stanza(), ssh_stanza(ssh))
    parsed = age.parse_header(data + b"\x00payload")
    assert [s.kind for s in parsed.stanzas] == ["X25519", "ssh-ed25519"]
    assert parsed.size == len(data)


def test_a_stanza_body_of_exactly_64_columns_goes_on_to_its_short_last_line() -> None:
    body = "F" * 64 + "\n" + "G" * 10 + "\n"
    parsed = age.parse_header(header(f"-> grease x y\n{body}", x25519_stanza()))
    assert [s.kind for s in parsed.stanzas] == ["grease", "X25519"]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"not age at all", "does not start with an age v1 header"),
        (age.HEADER_MAGIC + b"-> X25519 abc\n", "cut off"),
        (age.HEADER_MAGIC + f"--- {MAC}\n".encode(), "names no recipient"),
        (age.HEADER_MAGIC + b"-> X25519 abc\nCCCC\n--- short\n", "malformed MAC"),
        (age.HEADER_MAGIC + b"-> X25519 abc\n!!!!\n", "malformed stanza body"),
        (age.HEADER_MAGIC + b"hello\n", "neither a stanza nor the MAC"),
    ],
)
def test_a_damaged_header_is_refused_saying_how(data: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        age.parse_header(data)


def test_the_header_must_be_addressed_to_the_recorded_keys() -> None:
    mine = age.parse_recipient(ed25519_line()).fingerprint
    other = age.parse_recipient(ed25519_line()).fingerprint
    x25519 = age.parse_recipient(AGE_README_RECIPIENT).fingerprint
    good = age.parse_header(header(x25519_stanza(), ssh_stanza(mine)))
    payload = age.PAYLOAD_NONCE_SIZE + age.TAG_SIZE + 100
    assert age.header_problems(good, payload, [x25519, mine]) == []
    assert age.header_problems(good, payload, [x25519, other]) == [
        "its header is addressed to an ssh-ed25519 key the manifest does not list"
    ]
    assert age.header_problems(good, payload, [mine]) == [
        "its header has 1 X25519 recipient(s), the manifest 0"
    ]


@pytest.mark.parametrize(
    ("size", "ok"),
    [
        (16 + 16, True),  # empty plaintext: one empty final chunk
        (16 + 16 + 1, True),
        (16 + 65552, True),  # exactly one full chunk
        (16 + 65552 + 17, True),
        (16 + 15, False),
        (16 + 65552 + 5, False),  # ends inside a chunk's tag
        (16 + 65552 + 16, False),  # an empty chunk after a full one
        (10, False),
    ],
)
def test_the_payload_length_must_be_one_age_chunking_allows(size: int, ok: bool) -> None:
    assert (age.payload_problem(size) is None) is ok


def test_the_ssh_tag_is_the_first_four_bytes_of_the_key_hash() -> None:
    line = ed25519_line()
    blob = keys.parse_public_line(line).blob
    expected = base64.b64encode(hashlib.sha256(blob).digest()[:4]).decode().rstrip("=")
    assert age.ssh_tag(age.parse_recipient(line).fingerprint) == expected


# --- the manifest fields -----------------------------------------------------------------------


def _entry(name: str, encrypted_to: list[str]) -> dict[str, object]:
    return {
        "name": name,
        "source": "/etc",
        "kind": "master",
        "chain": name,
        "size": 1,
        "sha256": "0" * 64,
        "encrypted_to": encrypted_to,
    }


def test_the_manifest_reader_checks_encrypted_to_against_the_name(tmp_path) -> None:
    fingerprint = age.parse_recipient(AGE_README_RECIPIENT).fingerprint
    cases = {
        "server1-etc.20261128.master.tar.zst.age": ([fingerprint], None),
        "server1-etc.20261128.master.tar.zst": ([], None),
        "server1-etc.20261129.master.tar.zst.age": ([], "named against its encrypted_to"),
        "server1-etc.20261130.master.tar.zst": ([fingerprint], "named against its encrypted_to"),
        "server1-etc.20261201.master.tar.zst.age": (["age1secret"], "malformed encrypted_to"),
    }
    for index, (name, (encrypted_to, problem)) in enumerate(cases.items()):
        path = tmp_path / f"m{index}.json"
        document = {"format": 1, "host": "server1", "archives": [_entry(name, encrypted_to)]}
        path.write_text(json.dumps(document))
        if problem is None:
            (entry,) = layout.load_manifest(path).archives
            assert entry.encrypted_to == tuple(encrypted_to)
        else:
            with pytest.raises(FileError, match=problem):
                layout.load_manifest(path)


def test_encrypted_archive_names_are_archives_of_their_source() -> None:
    name = layout.archive_name("server1", "etc", "20261128", "master", "gzip", encrypted=True)
    assert name == "server1-etc.20261128.master.tar.gz.age"
    record = layout.parse_archive_name(name, "server1", ["etc"])
    assert record is not None and record.kind == "master"
    assert layout.is_encrypted_name(name) and layout.is_encrypted_name(f".{name}.partial")
    assert not layout.is_encrypted_name(name.removesuffix(".age"))
