"""`keyforge audit` and `keyforge explain` as a user types them: output, exit codes, errors."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keyforge.cli import app
from keyforge.receiver import audit

runner = CliRunner()
RunKeyforge = Callable[..., "subprocess.CompletedProcess[str]"]
DATA = Path(__file__).resolve().parents[1] / "data"
CORPUS = DATA / "audit"
ED25519, RSA_2048 = [
    line
    for line in (DATA / "authorized_keys_fixture_keys.pub").read_text().splitlines()
    if line and not line.startswith("#")
][:2]
LOCKED = 'restrict,from="192.0.2.10",command="true"'


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private home for a passwd user 'tester', and HOME pointing at it."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    home.chmod(0o700)
    (home / ".ssh").chmod(0o700)
    monkeypatch.setenv("HOME", str(home))
    accounts = [audit.Account("tester", os.getuid(), str(home))]
    monkeypatch.setattr(audit, "_passwd_accounts", lambda: accounts)
    return home


def corpus_copy(home: Path, name: str) -> Path:
    path = home / ".ssh" / name
    path.write_text((CORPUS / name).read_text())
    path.chmod(0o600)
    return path


# --- audit ---------------------------------------------------------------------------------------


def test_audit_of_a_clean_file_exits_0_and_says_clean(home: Path) -> None:
    path = corpus_copy(home, "clean.authorized_keys")
    result = runner.invoke(app, ["audit", str(path)])
    assert result.exit_code == 0, result.output
    assert "  clean: nothing above info" in result.stdout.splitlines()


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("expired.authorized_keys", 10),
        ("no-from.authorized_keys", 11),
        ("no-command.authorized_keys", 12),
        ("unrestricted.authorized_keys", 13),
    ],
)
def test_audit_exits_with_the_code_of_the_worst_severity(home: Path, name: str, code: int) -> None:
    result = runner.invoke(app, ["audit", str(corpus_copy(home, name))])
    assert result.exit_code == code, result.output


def test_audit_without_paths_reads_the_users_authorized_keys(home: Path) -> None:
    (home / ".ssh" / "authorized_keys").write_text(f"{LOCKED} {ED25519}\n")
    (home / ".ssh" / "authorized_keys").chmod(0o600)
    result = runner.invoke(app, ["audit"])
    assert result.exit_code == 0, result.output
    me = audit.current_account().name
    assert result.stdout.startswith(f"{home}/.ssh/authorized_keys (user {me}): 1 key")


def test_audit_json_follows_the_schema(home: Path) -> None:
    path = corpus_copy(home, "weak-keys.authorized_keys")
    result = runner.invoke(app, ["audit", "--json", str(path)])
    assert result.exit_code == 12
    document = json.loads(result.stdout)
    assert document["schema"] == "keyforge-audit/1"
    assert [(f["line"], f["code"]) for f in document["findings"]] == [
        (1, "weak-key"),
        (2, "weak-key"),
        (3, "weak-key"),
    ]
    assert document["summary"]["worst"] == "high"
    assert document["summary"]["exit_code"] == 12


def test_audit_reports_a_loose_mode_file_as_high(home: Path) -> None:
    path = corpus_copy(home, "clean.authorized_keys")
    path.chmod(0o666)
    result = runner.invoke(app, ["audit", str(path)])
    assert result.exit_code == 12
    assert "high     loose-mode: file" in result.stdout


def test_audit_of_a_missing_file_is_a_one_line_error(home: Path) -> None:
    result = runner.invoke(app, ["audit", str(home / "nope")])
    assert result.exit_code == 4
    assert result.stderr.splitlines() == [
        f"keyforge: error: cannot read {home / 'nope'}: No such file or directory"
    ]


def test_audit_all_users_reports_per_user(home: Path) -> None:
    (home / ".ssh" / "authorized_keys").write_text(f"{RSA_2048}\n")
    result = runner.invoke(app, ["audit", "--all-users"])
    assert result.exit_code == 13
    assert "(user tester)" in result.stdout


# --- explain -------------------------------------------------------------------------------------


def test_explain_a_line_prints_each_option_and_the_effect() -> None:
    result = runner.invoke(
        app, ["explain", f'restrict,pty,command="rsync --server . /x" {ED25519}']
    )
    assert result.exit_code == 0, result.output
    assert "  restrict: turns off port, agent and X11 forwarding" in result.stdout
    assert "  pty: allows a terminal (pty) again, overriding the earlier restrict" in result.stdout
    assert "  allowed: a terminal (pty)" in result.stdout


def test_explain_a_line_sshd_refuses_exits_3_with_one_line() -> None:
    result = runner.invoke(app, ["explain", f'from="10.0.0.1/8" {ED25519}'])
    assert result.exit_code == 3
    assert result.stderr.splitlines() == [
        'keyforge: error: sshd ignores this line: from="10.0.0.1/8": "10.0.0.1/8" has host bits'
        " set beyond the /8 mask"
    ]


def test_explain_a_comment_is_a_usage_error() -> None:
    result = runner.invoke(app, ["explain", "# just a comment"])
    assert result.exit_code == 2
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize("args", [[], ["LINE", "--key", "x.pub"]])
def test_explain_needs_exactly_one_of_line_and_key(args: list[str]) -> None:
    result = runner.invoke(app, ["explain", *args])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == ["keyforge: error: give either LINE or --key PUBFILE"]


def test_explain_key_explains_each_line_holding_it(home: Path, tmp_path: Path) -> None:
    pub = tmp_path / "k.pub"
    pub.write_text(ED25519 + "\n")
    keys = home / ".ssh" / "authorized_keys"
    keys.write_text(f'{RSA_2048}\n{LOCKED} {ED25519}\nrestrict,from="10.0.0.1" {ED25519}\n')
    result = runner.invoke(app, ["explain", "--key", str(pub)])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith(f"the key stands on 2 lines of {keys}: sshd uses the first one")
    assert "line 2: 256-bit ssh-ed25519 key" in out
    assert "line 3: 256-bit ssh-ed25519 key" in out


def test_explain_key_with_a_line_sshd_ignores_exits_3(home: Path, tmp_path: Path) -> None:
    pub = tmp_path / "k.pub"
    pub.write_text(ED25519 + "\n")
    keys = tmp_path / "ak"
    keys.write_text(f"no-such-option {ED25519}\n")
    result = runner.invoke(app, ["explain", "--key", str(pub), "--authorized-keys", str(keys)])
    assert result.exit_code == 3
    assert "line 1: sshd ignores this line: unknown key type or option" in result.stdout
    assert result.stderr.splitlines() == [
        f"keyforge: error: {keys}: sshd ignores line 1 holding this key"
    ]


def test_explain_key_not_in_the_file_exits_1(home: Path, tmp_path: Path) -> None:
    pub = tmp_path / "k.pub"
    pub.write_text(ED25519 + "\n")
    (home / ".ssh" / "authorized_keys").write_text(f"{RSA_2048}\n")
    result = runner.invoke(app, ["explain", "--key", str(pub)])
    assert result.exit_code == 1
    assert "is not in" in result.stderr


def test_explain_key_with_a_missing_file_is_a_one_line_error(tmp_path: Path) -> None:
    pub = tmp_path / "k.pub"
    pub.write_text(ED25519 + "\n")
    missing = tmp_path / "missing"
    result = runner.invoke(app, ["explain", "--key", str(pub), "-f", str(missing)])
    assert result.exit_code == 4
    assert result.stderr.splitlines() == [
        f"keyforge: error: cannot read {missing}: No such file or directory"
    ]


def test_audit_of_a_file_behind_a_closed_directory_is_an_unreadable_finding(
    tmp_path: Path, keyforge_bound_by_modes: RunKeyforge
) -> None:
    ssh = tmp_path / ".ssh"
    ssh.mkdir()
    (ssh / "authorized_keys").write_text(f"{LOCKED} {ED25519}\n")
    ssh.chmod(0o000)
    try:
        result = keyforge_bound_by_modes("audit", str(ssh / "authorized_keys"), home=tmp_path)
    finally:
        ssh.chmod(0o700)
    assert result.returncode == 11, result.stderr
    assert "medium   unreadable: cannot read" in result.stdout
    assert "Permission denied" in result.stdout
