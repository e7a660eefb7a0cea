"""keyforge.ssh.authorized_keys: reading lines the way sshd reads them, naming what it refuses."""

from __future__ import annotations

import base64
import struct
from pathlib import Path

import pytest

from keyforge.errors import ParseError
from keyforge.ssh import authorized_keys as ak

DATA = Path(__file__).resolve().parent.parent / "data"
FIXTURE_LINES = [
    line
    for line in (DATA / "authorized_keys_fixture_keys.pub").read_text().splitlines()
    if line and not line.startswith("#")
]
KEYS = {line.split()[0]: line for line in FIXTURE_LINES}
ED = KEYS["ssh-ed25519"]
ED_TYPE, ED_BLOB, _ = ED.split(" ", 2)


def ssh_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def blob_of(*fields: bytes) -> str:
    return base64.b64encode(b"".join(ssh_string(f) for f in fields)).decode()


def refusal(line: str) -> str:
    with pytest.raises(ParseError) as caught:
        ak.parse_line(line)
    return caught.value.reason


# --- key types ---------------------------------------------------------------------------------


@pytest.mark.parametrize("keytype", sorted(KEYS))
def test_every_openssh_key_type_ssh_keygen_makes_parses(keytype: str) -> None:
    entry = ak.parse_line(f"restrict {KEYS[keytype]}")
    assert entry is not None
    assert entry.keytype == keytype
    assert entry.options == (ak.Option("restrict"),)


def test_security_key_types_are_checked_by_structure() -> None:
    ed = blob_of(b"sk-ssh-ed25519@openssh.com", bytes(32), b"ssh:")
    ec = blob_of(b"sk-ecdsa-sha2-nistp256@openssh.com", b"nistp256", b"\x04" + bytes(64), b"ssh:")
    assert ak.parse_line(f"sk-ssh-ed25519@openssh.com {ed} yubi") is not None
    assert ak.parse_line(f"no-touch-required sk-ecdsa-sha2-nistp256@openssh.com {ec}") is not None


def test_a_security_key_without_its_application_field_is_refused() -> None:
    blob = blob_of(b"sk-ssh-ed25519@openssh.com", bytes(32))
    assert "truncated" in refusal(f"sk-ssh-ed25519@openssh.com {blob}")


def test_a_blob_that_is_not_base64_is_refused() -> None:
    assert "base64" in refusal("ssh-ed25519 AAAA!!!!")


def test_a_blob_with_missing_padding_is_refused() -> None:
    assert "base64" in refusal(f"ssh-ed25519 {ED_BLOB.rstrip('=')}x")


def test_a_blob_whose_inner_type_differs_from_the_declared_one_is_refused() -> None:
    reason = refusal(f"ssh-rsa {ED_BLOB}")
    assert "ssh-ed25519" in reason
    assert "ssh-rsa" in reason


def test_a_certificate_declared_as_a_plain_key_is_refused() -> None:
    cert_blob = KEYS["ssh-ed25519-cert-v01@openssh.com"].split()[1]
    assert "not the declared ssh-ed25519" in refusal(f"ssh-ed25519 {cert_blob}")


def test_a_truncated_key_is_refused() -> None:
    assert "truncated" in refusal(f"ssh-ed25519 {blob_of(b'ssh-ed25519', bytes(32))[:-8]}")


def test_a_key_with_trailing_bytes_is_refused() -> None:
    data = base64.b64decode(ED_BLOB) + b"\0\0\0\0"
    assert "trailing" in refusal(f"ssh-ed25519 {base64.b64encode(data).decode()}")


def test_a_certificate_with_trailing_bytes_is_refused() -> None:
    keytype, blob = KEYS["ssh-ed25519-cert-v01@openssh.com"].split()[:2]
    data = base64.b64encode(base64.b64decode(blob) + ssh_string(b"x")).decode()
    assert "trailing" in refusal(f"{keytype} {data}")


def test_an_ed25519_key_of_the_wrong_length_is_refused() -> None:
    assert "32 bytes" in refusal(f"ssh-ed25519 {blob_of(b'ssh-ed25519', bytes(31))}")


def test_an_ecdsa_point_that_is_not_on_the_curve_is_refused_by_cryptography() -> None:
    blob = blob_of(b"ecdsa-sha2-nistp256", b"nistp256", b"\x04" + b"\x01" * 64)
    assert "cannot be loaded" in refusal(f"ecdsa-sha2-nistp256 {blob}")


def test_an_ecdsa_key_whose_curve_differs_from_its_type_is_refused() -> None:
    blob = blob_of(b"ecdsa-sha2-nistp256", b"nistp384", b"\x04" + bytes(96))
    assert "curve" in refusal(f"ecdsa-sha2-nistp256 {blob}")


def test_an_rsa_key_below_1024_bits_is_refused_like_sshd_does() -> None:
    modulus = ((1 << 767) | 0xFFFF).to_bytes(96, "big")  # 768 bits, odd
    blob = blob_of(b"ssh-rsa", b"\x01\x00\x01", b"\x00" + modulus)
    assert "768 bits" in refusal(f"ssh-rsa {blob}")


def test_an_unknown_key_type_without_options_is_named() -> None:
    assert refusal(f"ssh-foo {ED_BLOB}") == "unknown key type or option 'ssh-foo'"


def test_an_unknown_key_type_after_options_is_named() -> None:
    assert refusal(f"restrict ssh-foo {ED_BLOB}") == "unknown key type 'ssh-foo'"


def test_options_without_a_key_are_refused() -> None:
    assert refusal('restrict,command="x"') == "no key after the options"


def test_a_key_type_without_key_data_is_refused() -> None:
    assert "no key data" in refusal("restrict ssh-ed25519")


# --- line structure ----------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   ", "\t", "# a comment", "  \t# indented comment", "\r"])
def test_blank_and_comment_lines_have_no_entry(text: str) -> None:
    assert ak.parse_line(text) is None


def test_leading_blanks_are_skipped_and_the_comment_kept_whole() -> None:
    entry = ak.parse_line(f" \t no-pty\t{ED_TYPE}  {ED_BLOB}   backup key  for server1  ")
    assert entry == ak.Entry(ED_TYPE, ED_BLOB, "backup key  for server1", (ak.Option("no-pty"),))


def test_option_names_are_read_case_insensitively_and_kept_lowercase() -> None:
    entry = ak.parse_line(f'No-X11-Forwarding,COMMAND="Echo" {ED}')
    assert entry is not None
    assert entry.options == (ak.Option("no-x11-forwarding"), ak.Option("command", "Echo"))


def test_only_backslash_quote_is_an_escape_inside_a_value() -> None:
    entry = ak.parse_line(r'command="a \"b\" c\d \\ e\\\"f" ' + ED)
    assert entry is not None
    assert entry.values("command") == ['a "b" c\\d \\\\ e\\\\"f']


def test_a_value_may_hold_blanks_commas_and_key_like_text() -> None:
    entry = ak.parse_line(f'command="x, y ssh-ed25519 {ED_BLOB}",no-pty {ED}')
    assert entry is not None
    assert entry.values("command") == [f"x, y ssh-ed25519 {ED_BLOB}"]
    assert entry.has("no-pty")


def test_a_nul_character_is_refused() -> None:
    assert "NUL" in refusal(f"{ED}\x00")


def test_principals_with_cert_authority_parse() -> None:
    ca = KEYS["ssh-ed25519"]
    entry = ak.parse_line(f'cert-authority,principals="backup,root" {ca}')
    assert entry is not None
    assert entry.values("principals") == ["backup,root"]


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("::1/129", "bad mask"),  # sshd treats this as a name pattern; keyforge calls it a typo
        ("10.0.0.0/abc", "bad mask"),
        ("127.1/8", "host bits"),  # the short forms inet_aton reads, as sshd's getaddrinfo does
        ("2001:db8::1/32", "host bits"),
        ("192.168.1.0/24,,10.0.0.0/8", "empty entry"),
        ("!", "empty entry"),
    ],
)
def test_bad_from_entries_are_refused(value: str, why: str) -> None:
    assert why in refusal(f'from="{value}" {ED}')


@pytest.mark.parametrize(
    "value",
    ["192.168.1.0/24", "!10.0.0.0/8,*", "*.example.org,backup?.lan", "fe80::/10", "1.2.3.4"],
)
def test_well_formed_from_lists_parse(value: str) -> None:
    assert ak.parse_line(f'from="{value}" {ED}') is not None


@pytest.mark.parametrize("value", ["20991231Z", "20991231utc", "209912312359Z", "20991231235959"])
def test_expiry_times_sshd_accepts_parse(value: str) -> None:
    assert ak.parse_line(f'expiry-time="{value}" {ED}') is not None


@pytest.mark.parametrize("value", ["19700101Z", "20991232", "209912312460", "2099-12-31", ""])
def test_bad_expiry_times_are_refused(value: str) -> None:
    assert "expiry-time" in refusal(f'expiry-time="{value}" {ED}')


def test_permitopen_service_names_are_refused_although_sshd_may_look_them_up() -> None:
    assert "port number" in refusal(f'permitopen="host:ssh" {ED}')


@pytest.mark.parametrize("value", ["any", "ANY", "0", " 5", "+7", "2147483645"])
def test_tunnel_values_sshd_accepts_parse(value: str) -> None:
    assert ak.parse_line(f'tunnel="{value}" {ED}') is not None


def test_a_tunnel_number_above_sshds_maximum_is_refused() -> None:
    assert "tun device" in refusal(f'tunnel="2147483646" {ED}')


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ('pty="yes"', 'option "pty" takes no value'),
        ("command", 'option "command" needs a value: command="..."'),
        ("command=", 'option "command" needs a value: command="..."'),
        ("command=x", 'the value of "command" must be in double quotes: command="..."'),
        ('command="x",command="y"', 'more than one "command" option'),
        ('principals="x"', '"principals" is only allowed together with "cert-authority"'),
        ("no-pty,frob", "unknown option 'frob'"),
        ('command="x"y', "unexpected 'y' after option 'command'"),
    ],
)
def test_each_refusal_names_its_reason(options: str, reason: str) -> None:
    assert refusal(f"{options} {ED}") == reason


def test_a_repeated_environment_variable_parses_with_a_warning() -> None:
    (line,) = ak.parse(f'environment="A=1",environment="A=2" {ED}\n')
    assert line.entry is not None
    assert line.entry.values("environment") == ["A=1", "A=2"]
    assert line.warnings == ("environment variable A is set twice: sshd keeps the first value",)


def test_a_line_over_the_documented_limit_parses_with_a_warning() -> None:
    long_line = f'command="{"x" * ak.LINE_LIMIT}" {ED}'
    (line,) = ak.parse(long_line)
    assert line.entry is not None
    assert len(line.warnings) == 1
    assert str(ak.LINE_LIMIT) in line.warnings[0]


def test_a_line_at_the_limit_has_no_warning() -> None:
    padding = ak.LINE_LIMIT - len(ED) - 1
    (line,) = ak.parse(f"{ED} {'c' * padding}")
    assert len(line.raw.encode()) == ak.LINE_LIMIT
    assert line.warnings == ()


# --- whole files -------------------------------------------------------------------------------


def test_strict_parse_raises_at_the_first_bad_line_with_its_number_and_source() -> None:
    text = f"# keys\n{ED}\nbogus {ED}\nalso bogus\n"
    with pytest.raises(ParseError) as caught:
        ak.parse(text, source="/home/foo/.ssh/authorized_keys")
    assert caught.value.lineno == 3
    assert str(caught.value) == (
        "/home/foo/.ssh/authorized_keys:3: unknown key type or option 'bogus'"
    )


def test_lenient_parse_keeps_bad_lines_with_their_error() -> None:
    lines = ak.parse(f"# keys\n{ED}\nbogus {ED}\n\n", strict=False)
    assert [line.lineno for line in lines] == [1, 2, 3, 4]
    assert [line.entry is not None for line in lines] == [False, True, False, False]
    assert [line.error is not None for line in lines] == [False, False, True, False]
    assert lines[2].error is not None
    assert lines[2].error.lineno == 3
    assert lines[2].raw == f"bogus {ED}"


SAMPLE = (
    "# managed by hand\r\n"
    f"  {ED} spaced  \n"
    "\n"
    f'restrict,command="rsync --server" {ED}\r\n'
    "bad line\n"
    "\ttrailing\r"
)


def test_raw_lines_are_kept_byte_for_byte_and_rejoin_to_the_original_text() -> None:
    pieces = ak.split_lines(SAMPLE)
    lines = ak.parse(SAMPLE, strict=False)
    assert "".join(pieces) == SAMPLE
    assert len(pieces) == len(lines)
    for piece, line in zip(pieces, lines, strict=True):
        terminator = piece[len(line.raw) :]
        assert piece.startswith(line.raw)
        assert terminator in ("\n", "\r\n", "")


def test_crlf_is_one_terminator_but_a_lone_trailing_cr_stays_in_raw() -> None:
    lines = ak.parse(SAMPLE, strict=False)
    assert lines[0].raw == "# managed by hand"
    assert lines[3].raw == f'restrict,command="rsync --server" {ED}'
    assert lines[5].raw == "\ttrailing\r"  # no "\n" follows it, so it is no terminator


def test_a_crlf_key_line_parses_to_the_same_entry_as_its_lf_twin() -> None:
    (crlf,) = ak.parse(f"restrict {ED}\r\n")
    (lf,) = ak.parse(f"restrict {ED}\n")
    assert crlf.entry == lf.entry


def test_only_newline_splits_lines_not_the_other_unicode_breaks() -> None:
    text = f"{ED_TYPE} {ED_BLOB} a\x0bb\x1cc\u2028d\n"
    assert ak.split_lines(text) == [text]
    (line,) = ak.parse(text)
    assert line.entry is not None
    assert line.entry.comment == "a\x0bb\x1cc\u2028d"


def test_an_empty_text_has_no_lines() -> None:
    assert ak.parse("") == []
    assert ak.split_lines("") == []


def test_a_final_line_without_newline_is_still_a_line() -> None:
    lines = ak.parse(f"# x\n{ED}")
    assert [line.raw for line in lines] == ["# x", ED]


# --- entries and public keys ------------------------------------------------------------------


def test_the_same_key_with_other_options_and_comment_is_the_same_key() -> None:
    a = ak.parse_line(f"restrict {ED}")
    b = ak.parse_line(f'command="x" {ED_TYPE} {ED_BLOB} other comment')
    other = ak.parse_line(KEYS["ssh-rsa"])
    assert a is not None and b is not None and other is not None
    assert a.same_key(b)
    assert not a.same_key(other)
    assert a.key_id() == (ED_TYPE, base64.b64decode(ED_BLOB))


def test_values_and_has_match_option_names_in_any_case() -> None:
    entry = ak.parse_line(f'permitopen="a:1",no-pty,permitopen="b:2" {ED}')
    assert entry is not None
    assert entry.values("PermitOpen") == ["a:1", "b:2"]
    assert entry.values("command") == []
    assert entry.has("NO-PTY")
    assert not entry.has("restrict")


def test_a_pub_file_parses_as_an_entry_without_options() -> None:
    entry = ak.parse_public_key(ED + "\n")
    assert entry == ak.Entry(ED_TYPE, ED_BLOB, "user")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (f"restrict {ED}", "options are not allowed here"),
        (f"{ED}\n{ED}\n", "exactly one public key line"),
        ("", "exactly one public key line"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----", "not a key type"),
        (f"{ED_TYPE} AAAA", "truncated"),
        (f"{ED_TYPE} AAAA!", "base64"),
    ],
)
def test_a_bad_pub_file_is_refused_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(ParseError) as caught:
        ak.parse_public_key(text, source="backups.pub")
    assert reason in str(caught.value)
    assert str(caught.value).startswith("backups.pub: ")


def test_option_names_cover_the_openssh_9_options() -> None:
    documented = {
        "agent-forwarding", "cert-authority", "command", "environment", "expiry-time", "from",
        "no-agent-forwarding", "no-port-forwarding", "no-pty", "no-touch-required",
        "no-user-rc", "no-x11-forwarding", "permitlisten", "permitopen", "port-forwarding",
        "principals", "pty", "restrict", "tunnel", "user-rc", "verify-required",
        "x11-forwarding",
    }  # fmt: skip
    assert documented <= ak.OPTION_NAMES
    assert all(name == name.lower() for name in ak.OPTION_NAMES)
