"""keyforge explain: what one authorized_keys line lets its key do, in plain words."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from keyforge.errors import ParseError, UsageError
from keyforge.receiver import explain
from keyforge.ssh import authorized_keys as ak
from keyforge.ssh import keys

DATA = Path(__file__).resolve().parent.parent / "data"
FIXTURE_KEYS = [
    line
    for line in (DATA / "authorized_keys_fixture_keys.pub").read_text().splitlines()
    if line and not line.startswith("#")
]
ED25519 = FIXTURE_KEYS[0]
CERTS = [line for line in FIXTURE_KEYS if "-cert-" in line]
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
RSYNC = "rsync --server -logDtpre.iLsfxCIvu --delete . /srv/backups/server1"
ALL = {"port-forwarding", "agent-forwarding", "x11-forwarding", "pty", "user-rc"}


def summary(line: str, now: dt.datetime = NOW) -> dict[str, str]:
    return dict(explain.explain_line(line, now=now).summary)


def effects(line: str) -> list[tuple[str, str]]:
    return list(explain.explain_line(line, now=NOW).effects)


# --- the flags -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "allowed"),
    [
        ("", ALL),
        ("restrict", set()),
        ("restrict,pty", {"pty"}),
        ("pty,restrict", set()),
        ("no-pty,pty", ALL),
        ("pty,no-pty", ALL - {"pty"}),
        ("NO-PORT-FORWARDING,no-user-rc", ALL - {"port-forwarding", "user-rc"}),
        ("restrict,port-forwarding,no-port-forwarding", set()),
    ],
)
def test_flags_are_read_left_to_right_as_sshd_does(options: str, allowed: set[str]) -> None:
    line = f"{options} {ED25519}" if options else ED25519
    entry = ak.parse_line(line)
    assert entry is not None
    assert explain.effective_permissions(entry).allowed == allowed


def test_fido_flags_are_read_left_to_right_too() -> None:
    entry = ak.parse_line(f"no-touch-required,verify-required,touch-required {ED25519}")
    assert entry is not None
    permissions = explain.effective_permissions(entry)
    assert (permissions.touch_required, permissions.verify_required) == (True, True)


# --- what the line allows ------------------------------------------------------------------------


def test_a_bare_key_may_run_anything_from_anywhere_forever() -> None:
    said = summary(ED25519)
    assert said["runs"].startswith("any command, including a shell")
    assert said["from"].startswith("anywhere")
    assert said["expires"].startswith("never")
    assert said["refused"] == "nothing"
    assert "no restrict" in said["note"]


def test_a_forced_rsync_server_says_which_way_the_files_go() -> None:
    said = summary(f'restrict,command="{RSYNC}" {ED25519}')
    assert said["runs"].startswith(f"only {RSYNC!r}, an rsync server that receives files")
    sender = summary(f'restrict,command="rsync --server --sender -vlogDtpre.iLsfxC . /" {ED25519}')
    assert "--sender: the client can read them" in sender["runs"]


@pytest.mark.parametrize(
    "command",
    [
        "/usr/local/bin/keyforge gate --dir /srv/backups/server1",
        "/usr/local/bin/keyforge gate --log /var/log/kf.log --dir=/srv/backups/server1 --exact",
    ],
)
def test_a_gate_command_is_named_with_the_directory_it_confines_to(command: str) -> None:
    said = summary(f'restrict,command="{command}" {ED25519}')
    assert said["runs"].startswith("only keyforge's gate, confined to /srv/backups/server1")
    assert ("--exact" in said["runs"]) == ("--exact" in command)


def test_a_gate_without_confine_is_said_to_be_a_weaker_lock_and_why() -> None:
    gate_line = "/usr/local/bin/keyforge gate --dir /srv/backups/server1"
    unconfined = summary(f'restrict,command="{gate_line}" {ED25519}')["runs"]
    confined = summary(f'restrict,command="{gate_line} --confine" {ED25519}')["runs"]
    assert "a weaker lock" in unconfined
    assert "merge file" in unconfined
    assert "weaker" not in confined
    assert not explain.gate_unconfined(f"{gate_line} --confine")
    assert not explain.gate_unconfined("rsync --server . /srv/backups")


def test_a_command_that_merely_mentions_gate_is_not_the_gate() -> None:
    assert explain.gate_directory("echo gate") is None
    assert explain.gate_directory("unbalanced 'quote gate --dir /x") is None


def test_from_lists_the_allowed_and_the_negated_patterns() -> None:
    said = summary(f'restrict,from="10.0.0.0/8,!10.0.0.5" {ED25519}')
    assert said["from"].startswith("only 10.0.0.0/8, except 10.0.0.5")


def test_from_with_only_negations_admits_from_nowhere() -> None:
    assert summary(f'restrict,from="!10.0.0.5" {ED25519}')["from"].startswith("nowhere")


def test_from_host_names_are_flagged_as_needing_usedns() -> None:
    assert "UseDNS yes" in summary(f'restrict,from="backup.example.org" {ED25519}')["from"]


def test_expiry_is_shown_with_its_zone_and_turns_to_expired_once_past() -> None:
    line = f'restrict,expiry-time="20260601Z" {ED25519}'
    assert summary(line)["expires"].startswith("at 20260601Z (UTC)")
    later = dt.datetime(2026, 7, 1, tzinfo=dt.UTC)
    assert summary(line, now=later)["expires"].startswith("expired at 20260601Z")


def test_of_several_expiry_times_the_earliest_is_the_one_shown() -> None:
    line = f'restrict,expiry-time="29990101Z",expiry-time="20300101Z" {ED25519}'
    assert summary(line)["expires"].startswith("at 20300101Z")


def test_what_is_allowed_and_refused_is_listed() -> None:
    said = summary(f"restrict,agent-forwarding {ED25519}")
    assert said["allowed"] == "agent forwarding"
    assert said["refused"] == (
        "port forwarding, X11 forwarding, a terminal (pty), running ~/.ssh/rc"
    )
    assert "note" not in said


def test_permitopen_is_a_limit_when_forwarding_is_on_and_void_when_off() -> None:
    on = summary(f'restrict,port-forwarding,permitopen="db:5432" {ED25519}')
    assert on["limits"] == "ssh -L only to db:5432; ssh -R not limited (no permitlisten=)"
    off = summary(f'restrict,permitopen="db:5432" {ED25519}')
    assert off["limits"] == "permitopen= has no effect: port forwarding is off"


def test_environment_and_certificates_are_explained() -> None:
    said = summary(f'cert-authority,principals="backup,ops",environment="A=1",restrict {ED25519}')
    assert said["environment"].startswith("A (needs PermitUserEnvironment yes)")
    assert said["certificates"] == (
        "admits user certificates signed by this key naming one of: backup,ops"
    )


# --- each option in turn -------------------------------------------------------------------------


def test_options_are_shown_in_file_order_each_with_its_effect() -> None:
    line = f'pty,restrict,command="{RSYNC}",from="192.0.2.10",pty {ED25519}'
    shown = effects(line)
    assert [option for option, _ in shown] == [
        "pty",
        "restrict",
        f'command="{RSYNC}"',
        'from="192.0.2.10"',
        "pty",
    ]
    assert shown[0][1] == "allows a terminal (pty)"
    assert shown[1][1].endswith("undoing the earlier pty")
    assert shown[4][1] == "allows a terminal (pty) again, overriding the earlier restrict"


def test_a_fido_option_on_a_plain_key_is_said_to_have_no_effect() -> None:
    ((_, effect),) = effects(f"no-touch-required {ED25519}")
    assert effect.endswith("no effect here: this is not a FIDO (sk-) key")


def test_the_text_output_has_the_key_the_options_and_the_effect() -> None:
    lines = explain.explain_line(f'restrict,command="true" {ED25519}', now=NOW).lines()
    assert lines[0] == (
        "256-bit ssh-ed25519 key SHA256:0+CyE/WC7WIroFO7PJ+nm/jugAQCCpFfCRd65VnoqsY (user)"
    )
    assert lines[1] == "options, in the order sshd reads them:"
    assert "in effect:" in lines
    assert any(line.startswith("  runs:") for line in lines)


# --- lines sshd refuses --------------------------------------------------------------------------


def test_a_line_sshd_refuses_is_a_parse_error_saying_sshd_ignores_it() -> None:
    with pytest.raises(ParseError) as caught:
        explain.explain_line(f"no-such-option {ED25519}")
    assert str(caught.value) == (
        "sshd ignores this line: unknown key type or option 'no-such-option'"
    )


@pytest.mark.parametrize("line", ["", "   ", "# a comment"])
def test_a_blank_or_comment_line_is_a_usage_error(line: str) -> None:
    with pytest.raises(UsageError):
        explain.explain_line(line)


# --- keys ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("line", [k for k in FIXTURE_KEYS if "-cert-" not in k])
def test_key_facts_match_ssh_keygens_fingerprint_and_size(line: str) -> None:
    entry = ak.parse_line(line)
    assert entry is not None
    facts = explain.key_facts(entry)
    expected = keys.parse_public_line(line)
    assert (facts.fingerprint, facts.bits) == (expected.sha256, expected.bits)


@pytest.mark.parametrize("line", CERTS)
def test_a_certificate_is_fingerprinted_as_the_key_it_certifies(line: str) -> None:
    cert = ak.parse_line(line)
    assert cert is not None
    plain = next(k for k in FIXTURE_KEYS if k.split()[0] == ak.CERT_KEY_TYPES[cert.keytype])
    plain_entry = ak.parse_line(plain)
    assert plain_entry is not None
    facts = explain.key_facts(cert)
    assert facts.plain_type == plain_entry.keytype
    assert facts.bits == explain.key_facts(plain_entry).bits


def test_a_hand_built_entry_with_bad_data_still_gets_a_label() -> None:
    facts = explain.key_facts(ak.Entry("ssh-ed25519", "AAAA", "x"))
    assert facts.bits is None and facts.fingerprint == "...AAAA"


# --- finding a key in a file ---------------------------------------------------------------------


def test_every_line_holding_the_key_is_found_including_ones_sshd_ignores() -> None:
    key = ak.parse_public_key(ED25519)
    other = FIXTURE_KEYS[1]
    text = (
        f"{other}\n"
        f'restrict,command="true" {ED25519}\n'
        f"no-such-option {ED25519}\n"
        f'restrict,from="10.0.0.1" {ED25519}\n'
    )
    found = explain.explain_key_in(text, key, now=NOW)
    assert [(k.lineno, k.explanation is None) for k in found] == [
        (2, False),
        (3, True),
        (4, False),
    ]
    assert found[1].ignored_because == "unknown key type or option 'no-such-option'"
