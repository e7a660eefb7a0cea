"""keyforge audit: the judging of keys, lines and file modes, and the report it prints."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
from pathlib import Path

import pytest

from keyforge.errors import FileError
from keyforge.receiver import audit, install
from keyforge.ssh import authorized_keys as ak

DATA = Path(__file__).resolve().parent.parent / "data"
CORPUS = DATA / "audit"
EXPECTED = json.loads((CORPUS / "expected.json").read_text())
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
FIXTURE_KEYS = [
    line
    for line in (DATA / "authorized_keys_fixture_keys.pub").read_text().splitlines()
    if line and not line.startswith("#")
]
ED25519, RSA_2048, DSA = FIXTURE_KEYS[0], FIXTURE_KEYS[1], FIXTURE_KEYS[2]
RSYNC = "rsync --server -logDtpre.iLsfxCIvu --delete . /srv/backups/server1"
LOCKED = f'restrict,from="192.0.2.10",command="{RSYNC}"'


def found(text: str, now: dt.datetime = NOW) -> set[tuple[int | None, str, str]]:
    judged = audit.audit_text(text, file="authorized_keys", now=now)
    return {(f.line, f.code, f.severity) for f in judged.findings}


def codes(text: str) -> set[str]:
    return {code for _, code, _ in found(text)}


# --- the corpus --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(k for k in EXPECTED if not k.startswith("_")))
def test_audit_finds_exactly_the_known_problems_of_each_corpus_file(name: str) -> None:
    text = (CORPUS / name).read_text()
    expected = {(line, code, severity) for line, code, severity in EXPECTED[name]}
    assert found(text) == expected


def test_every_corpus_file_is_listed_with_its_expected_findings() -> None:
    assert {p.name for p in CORPUS.glob("*.authorized_keys")} == {
        k for k in EXPECTED if not k.startswith("_")
    }


def test_the_clean_corpus_file_is_what_keyforge_install_writes() -> None:
    lines = [line for line in (CORPUS / "clean.authorized_keys").read_text().splitlines() if line]
    for line in lines[1:]:
        entry = ak.parse_line(line)
        assert entry is not None
        key = ak.Entry(entry.keytype, entry.blob, entry.comment)
        patterns = entry.values("from")[0].split(",")
        rewritten = install.locked_entry(
            key, from_patterns=patterns, command=entry.values("command")[0]
        )
        assert install.render_line(rewritten) == line


# --- severities --------------------------------------------------------------------------------


def test_a_key_with_neither_command_nor_from_is_critical() -> None:
    assert (1, "no-command", "critical") in found(ED25519)
    assert (1, "no-from", "high") in found(ED25519)


def test_a_missing_command_with_from_is_high_and_a_missing_from_with_command_is_medium() -> None:
    assert (1, "no-command", "high") in found(f'restrict,from="192.0.2.10" {ED25519}')
    assert (1, "no-from", "medium") in found(f'restrict,command="true" {ED25519}')


def test_a_missing_no_user_rc_ranks_below_an_unrestricted_key() -> None:
    user_rc = found(
        f"no-port-forwarding,no-agent-forwarding,no-x11-forwarding,no-pty,{LOCKED[9:]} {ED25519}"
    )
    assert user_rc == {(1, "user-rc", "low")}
    assert audit.SEVERITIES.index("low") < audit.SEVERITIES.index("critical")


def test_the_locked_line_keyforge_installs_has_no_findings() -> None:
    assert found(f"{LOCKED} {ED25519}") == set()


# --- flags, as sshd reads them left to right --------------------------------------------------


GATE = "/usr/local/bin/keyforge gate --dir /srv/backups/server1"


def test_a_gate_without_confine_rates_one_level_below_a_confined_one() -> None:
    confined = f'restrict,from="192.0.2.10",command="{GATE} --confine" {ED25519}'
    unconfined = f'restrict,from="192.0.2.10",command="{GATE}" {ED25519}'
    assert found(confined) == set()
    assert found(unconfined) == {(1, "unconfined-gate", "low")}
    (finding,) = audit.audit_text(unconfined, file="authorized_keys", now=NOW).findings
    assert "merge file" in finding.message
    assert "--confine" in finding.message


def test_a_plain_command_is_no_unconfined_gate() -> None:
    assert "unconfined-gate" not in codes(f"{LOCKED} {ED25519}")


def test_an_option_re_enabled_after_restrict_is_reported() -> None:
    assert codes(f"{LOCKED},pty {ED25519}") == {"pty"}


def test_a_flag_before_restrict_is_switched_off_by_it() -> None:
    assert codes(f"pty,port-forwarding,{LOCKED} {ED25519}") == set()


def test_a_later_positive_flag_undoes_an_earlier_no_flag() -> None:
    line = (
        "no-port-forwarding,no-agent-forwarding,no-x11-forwarding,no-pty,no-user-rc,pty,"
        f'from="192.0.2.10",command="true" {ED25519}'
    )
    assert codes(line) == {"pty"}


def test_port_forwarding_limited_both_ways_is_low_and_names_its_limits() -> None:
    line = f'{LOCKED},port-forwarding,permitopen="db:5432",permitlisten="8080" {ED25519}'
    judged = audit.audit_text(line, file="f", now=NOW)
    (finding,) = judged.findings
    assert (finding.code, finding.severity) == ("port-forwarding", "low")
    assert "permitopen=db:5432" in finding.message
    assert "permitlisten=8080" in finding.message


def test_unlimited_port_forwarding_is_medium() -> None:
    assert found(f"{LOCKED},port-forwarding {ED25519}") == {(1, "port-forwarding", "medium")}


# --- keys --------------------------------------------------------------------------------------


def test_a_dsa_key_is_high_and_says_its_bits() -> None:
    judged = audit.audit_text(f"{LOCKED} {DSA}", file="f", now=NOW)
    (finding,) = judged.findings
    assert (finding.code, finding.severity) == ("weak-key", "high")
    assert "1024 bits" in finding.message
    assert finding.key is not None and finding.key.bits == 1024


def test_a_2048_bit_rsa_key_is_medium_and_says_its_bits() -> None:
    judged = audit.audit_text(f"{LOCKED} {RSA_2048}", file="f", now=NOW)
    (finding,) = judged.findings
    assert (finding.code, finding.severity) == ("weak-key", "medium")
    assert "2048 bits" in finding.message


def test_each_key_finding_carries_the_fingerprint_type_and_comment() -> None:
    judged = audit.audit_text(ED25519, file="f", now=NOW)
    key = judged.findings[0].key
    assert key is not None
    assert key.fingerprint == "SHA256:0+CyE/WC7WIroFO7PJ+nm/jugAQCCpFfCRd65VnoqsY"
    assert (key.keytype, key.comment, key.bits) == ("ssh-ed25519", "user", 256)


def test_an_expiry_is_reported_only_once_it_is_past() -> None:
    line = f'{LOCKED},expiry-time="20260601Z" {ED25519}'
    assert codes(line) == set()
    later = dt.datetime(2026, 7, 1, tzinfo=dt.UTC)
    assert found(line, now=later) == {(1, "expired", "low")}


# --- duplicates and refused lines ---------------------------------------------------------------


def test_a_duplicate_after_an_unconditional_line_is_never_reached() -> None:
    text = f"{LOCKED.replace('from=', 'x=').split(',x=')[0]} {ED25519}\n{LOCKED} {ED25519}\n"
    judged = audit.audit_text(text, file="f", now=NOW)
    (dup,) = [f for f in judged.findings if f.code == "duplicate-key"]
    assert (dup.line, dup.severity) == (2, "low")
    assert "never reaches this line" in dup.message


def test_a_duplicate_with_other_options_after_a_from_line_is_medium() -> None:
    text = f'{LOCKED} {ED25519}\nrestrict,from="10.0.0.0/8",command="true" {ED25519}\n'
    assert (2, "duplicate-key", "medium") in found(text)


def test_a_refused_line_carries_the_parsers_reason_and_line_number() -> None:
    text = f"# header\n\nno-such-option {ED25519}\n"
    judged = audit.audit_text(text, file="f", now=NOW)
    (finding,) = judged.findings
    assert (finding.line, finding.code, finding.severity) == (3, "refused-line", "medium")
    assert finding.message == "sshd ignores this line: unknown key type or option 'no-such-option'"


def test_a_key_shared_by_two_users_is_reported_at_both_lines() -> None:
    texts = {"alice": f"{LOCKED} {ED25519}\n", "bob": f"# bob\n{LOCKED} {ED25519}\n"}
    reports = []
    for user, text in texts.items():
        judged = audit.audit_text(text, file=f"/home/{user}/ak", now=NOW, user=user)
        reports.append(
            audit.FileReport(
                f"/home/{user}/ak", user, "checked", judged.keys, judged.findings, judged.key_ids
            )
        )
    shared = audit.shared_key_findings(reports)
    assert {(f.user, f.line) for f in shared} == {("alice", 1), ("bob", 2)}
    assert all(f.code == "shared-key" for f in shared)


# --- file modes: sshd's StrictModes ------------------------------------------------------------


@pytest.mark.parametrize(
    ("owner", "mode", "expected"),
    [
        (1000, 0o100600, []),
        (0, 0o100644, []),
        (1001, 0o100600, ["bad-owner"]),
        (1000, 0o100620, ["loose-mode"]),
        (1000, 0o100602, ["loose-mode"]),
        (1001, 0o100666, ["bad-owner", "loose-mode"]),
        (1000, 0o100444, []),
        (1000, 0o040755, []),
        (0, 0o041777, ["loose-mode"]),  # sshd makes no exception for the sticky bit
    ],
)
def test_stat_problems_follow_sshds_ownership_and_mode_rule(
    owner: int, mode: int, expected: list[str]
) -> None:
    problems = audit.stat_problems("file", "/x", owner, mode, 1000)
    assert [code for code, _ in problems] == expected


def test_stat_problems_name_who_may_write_and_the_mode() -> None:
    ((_, message),) = audit.stat_problems("directory", "/home/foo", 1000, 0o040775, 1000)
    assert "writable by group" in message and "0775" in message
    assert "chmod go-w /home/foo" in message


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home" / "foo"
    (home / ".ssh").mkdir(parents=True)
    home.chmod(0o755)
    (home / ".ssh").chmod(0o700)
    keys = home / ".ssh" / "authorized_keys"
    keys.write_text(f"{LOCKED} {ED25519}\n")
    keys.chmod(0o600)
    return home


def me(home: Path) -> audit.Account:
    return audit.Account("foo", os.getuid(), str(home))


def mode_codes(path: Path, home: Path) -> set[tuple[str, str]]:
    return {(f.code, f.message.split(" ")[1]) for f in audit.path_findings(str(path), me(home))}


def test_a_private_file_in_private_directories_has_no_mode_findings(home: Path) -> None:
    assert audit.path_findings(str(home / ".ssh" / "authorized_keys"), me(home)) == []


def test_a_group_writable_file_is_found(home: Path) -> None:
    keys = home / ".ssh" / "authorized_keys"
    keys.chmod(0o664)
    assert mode_codes(keys, home) == {("loose-mode", str(keys))}


def test_a_world_writable_ssh_directory_is_found(home: Path) -> None:
    keys = home / ".ssh" / "authorized_keys"
    (home / ".ssh").chmod(0o777)
    assert mode_codes(keys, home) == {("loose-mode", str(home / ".ssh"))}


def test_a_group_writable_home_is_found_and_the_walk_stops_there(home: Path) -> None:
    keys = home / ".ssh" / "authorized_keys"
    home.chmod(0o775)
    home.parent.chmod(0o777)  # above the home: sshd does not look
    assert mode_codes(keys, home) == {("loose-mode", str(home))}


def test_a_symlink_to_a_file_in_a_writable_directory_is_found(home: Path, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    target = shared / "keys"
    target.write_text(f"{LOCKED} {ED25519}\n")
    target.chmod(0o600)
    link = home / ".ssh" / "authorized_keys"
    link.unlink()
    link.symlink_to(target)
    findings = audit.path_findings(str(link), me(home))
    assert ("symlink", "info") in {(f.code, f.severity) for f in findings}
    assert any(f.code == "loose-mode" and str(shared) in f.message for f in findings)


def test_a_directory_in_place_of_the_file_is_not_a_regular_file(home: Path) -> None:
    keys = home / ".ssh" / "authorized_keys"
    keys.unlink()
    keys.mkdir()
    report = audit.audit_file(keys, me(home), now=NOW, must_exist=True)
    assert [(f.code, f.severity) for f in report.findings] == [("not-regular-file", "high")]


def test_ownership_by_another_user_is_found_through_the_stat_values(home: Path) -> None:
    keys = str(home / ".ssh" / "authorized_keys")
    real_stat = os.stat

    def stat_as_if_owned_by_someone_else(path: str) -> os.stat_result:
        st = real_stat(path)
        if path != keys:
            return st
        fields = list(st)
        fields[stat.ST_UID] = os.getuid() + 4242
        return os.stat_result(fields)

    findings = audit.path_findings(keys, me(home), stat_fn=stat_as_if_owned_by_someone_else)
    assert [(f.code, f.severity) for f in findings] == [("bad-owner", "high")]


# --- reading files ------------------------------------------------------------------------------


def test_an_unreadable_file_is_a_finding_not_a_crash(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", refuse)
    report = audit.audit_file(home / ".ssh" / "authorized_keys", me(home), now=NOW, must_exist=True)
    assert report.status == "unreadable"
    assert [(f.code, f.severity) for f in report.findings] == [("unreadable", "medium")]
    assert "Permission denied" in report.findings[0].message


def test_a_missing_file_named_on_the_command_line_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileError, match="No such file"):
        audit.run_audit([tmp_path / "nope"], now=NOW)


def test_the_default_reads_authorized_keys_and_authorized_keys2(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(home))
    (home / ".ssh" / "authorized_keys2").write_text(f"{DSA}\n")
    report = audit.run_audit([], now=NOW)
    assert [Path(f.path).name for f in report.files] == ["authorized_keys", "authorized_keys2"]
    assert {f.code for f in report.findings if f.file.endswith("2")} >= {"weak-key"}


def test_a_missing_default_file_is_reported_absent_without_findings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    report = audit.run_audit([], now=NOW)
    assert [(f.status, f.keys) for f in report.files] == [("absent", 0)]
    assert report.exit_code == 0


def test_all_users_walks_existing_homes_and_finds_shared_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    accounts = []
    for name in ("alice", "bob", "carol"):
        home = tmp_path / name
        (home / ".ssh").mkdir(parents=True)
        accounts.append(audit.Account(name, os.getuid(), str(home)))
    for name in ("alice", "bob"):
        (tmp_path / name / ".ssh" / "authorized_keys").write_text(f"{LOCKED} {ED25519}\n")
    accounts.append(audit.Account("ghost", 9999, str(tmp_path / "no-such-home")))
    monkeypatch.setattr(audit, "_passwd_accounts", lambda: accounts)
    report = audit.run_audit([], all_users=True, now=NOW)
    assert [f.user for f in report.files] == ["alice", "bob"]
    assert {(f.user, f.code) for f in report.findings} == {
        ("alice", "shared-key"),
        ("bob", "shared-key"),
    }


def test_a_named_file_is_judged_for_the_user_whose_home_holds_it(tmp_path: Path) -> None:
    accounts = [
        audit.Account("root", 0, "/root"),
        audit.Account("foo", 1000, str(tmp_path / "foo")),
        audit.Account("deep", 1001, str(tmp_path / "foo" / "deep")),
    ]
    assert audit.account_for(tmp_path / "foo" / ".ssh" / "ak", accounts).name == "foo"
    assert audit.account_for(tmp_path / "foo" / "deep" / "ak", accounts).name == "deep"
    assert audit.account_for(Path("/elsewhere/ak"), accounts) == audit.current_account()


# --- report: exit code, JSON, text ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("severities", "code"),
    [
        ((), 0),
        (("info",), 0),
        (("info", "low"), 10),
        (("low", "medium"), 11),
        (("high", "low"), 12),
        (("critical", "info", "high"), 13),
    ],
)
def test_the_exit_code_is_that_of_the_worst_severity(
    severities: tuple[str, ...], code: int
) -> None:
    findings = tuple(audit.Finding(s, "pty", "m", "f") for s in severities)  # type: ignore[arg-type]
    assert audit.Report((), findings).exit_code == code


def test_exit_codes_never_collide_with_keyforges_other_codes() -> None:
    assert set(audit.EXIT_CODES.values()) - {0} == {10, 11, 12, 13}
    assert not (set(audit.EXIT_CODES.values()) & {1, 2, 3, 4, 5, 75})


@pytest.fixture
def tester_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path as the private home of a passwd user, so sshd's walk ends there."""
    tmp_path.chmod(0o700)
    accounts = [audit.Account("tester", os.getuid(), str(tmp_path))]
    monkeypatch.setattr(audit, "_passwd_accounts", lambda: accounts)
    return tmp_path


def test_the_json_schema_is_pinned(tester_home: Path) -> None:
    tmp_path = tester_home
    path = tmp_path / "authorized_keys"
    path.write_text(f'restrict,command="true" {ED25519}\n')
    path.chmod(0o600)
    document = json.loads(audit.as_json(audit.run_audit([path], now=NOW)))
    assert list(document) == ["schema", "files", "findings", "summary"]
    assert document["schema"] == "keyforge-audit/1"
    assert document["files"] == [
        {"path": str(path), "user": "tester", "status": "checked", "keys": 1}
    ]
    (finding,) = document["findings"]
    assert finding == {
        "severity": "medium",
        "code": "no-from",
        "message": finding["message"],
        "file": str(path),
        "line": 1,
        "user": "tester",
        "key": {
            "type": "ssh-ed25519",
            "bits": 256,
            "fingerprint": "SHA256:0+CyE/WC7WIroFO7PJ+nm/jugAQCCpFfCRd65VnoqsY",
            "comment": "user",
        },
    }
    assert document["summary"] == {
        "files": 1,
        "keys": 1,
        "findings": 1,
        "by_severity": {"info": 0, "low": 0, "medium": 1, "high": 0, "critical": 0},
        "worst": "medium",
        "exit_code": 11,
    }


def test_human_output_groups_by_file_and_line_and_says_clean(tester_home: Path) -> None:
    tmp_path = tester_home
    dirty, clean = tmp_path / "dirty", tmp_path / "clean"
    dirty.write_text(f"# c\n{ED25519}\n")
    clean.write_text(f"{LOCKED} {ED25519}\n")
    for path in (dirty, clean):
        path.chmod(0o600)
    lines = audit.human_lines(audit.run_audit([dirty, clean], now=NOW))
    assert lines[0] == f"{dirty} (user tester): 1 key"
    assert lines[1].startswith("  line 2: 256-bit ssh-ed25519 key SHA256:")
    assert lines[2].startswith("    critical no-command: ")
    clean_at = next(i for i, line in enumerate(lines) if line.startswith(str(clean)))
    assert lines[clean_at + 1] == "  clean: nothing above info"
    assert lines[-1].endswith("(exit 13)")


def test_every_code_a_finding_can_carry_is_documented() -> None:
    text = (CORPUS / "mixed.authorized_keys").read_text()
    judged = audit.audit_text(text, file="f", now=NOW)
    assert {f.code for f in judged.findings} <= set(audit.CODES)


def test_human_output_says_when_no_file_was_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit, "_passwd_accounts", lambda: [audit.Account("a", 1, str(tmp_path))])
    lines = audit.human_lines(audit.run_audit([], all_users=True, now=NOW))
    assert lines == ["no authorized_keys file found", "0 file(s), 0 key(s): no findings (exit 0)"]
