"""`keyforge capture` and `keyforge install --from-capture` as an admin on the receiving host
types them: the whole flow without sshd, and every error as one line and a non-zero exit."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keyforge.cli import app
from keyforge.errors import CaptureError
from keyforge.receiver import capture

runner = CliRunner()

KEY_A = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA99e4w4N2v+R70Lqw2rv2+GcJGHoCiQW3RJibF+KIVm foo@server1"
)
KEY_B = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOfJd1ZKjYUhRaG0Ywy/oFMDHBdRJH+nWVFAIkqUM4Zf other"
PUSH = "rsync --server -logDtprze.iLsfxCIvu --delete . ~/srvbackups/"


@pytest.fixture
def home(tmp_path, monkeypatch):
    home = tmp_path / "foo"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    monkeypatch.setenv("HOME", str(home))
    (tmp_path / "a.pub").write_text(KEY_A + "\n")
    (tmp_path / "b.pub").write_text(KEY_B + "\n")
    return home


def ak(home: Path) -> Path:
    return home / ".ssh" / "authorized_keys"


def log_of(home: Path) -> Path:
    return home / ".ssh" / "keyforge" / "capture.log"


def invoke(*args: str):
    return runner.invoke(app, list(args))


def start(home: Path, pub: str = "a.pub", *extra: str):
    result = invoke(
        "capture", "start", "--key", str(home.parent / pub), "-f", str(ak(home)), *extra
    )
    assert result.exit_code == 0, result.output
    return result


def push(home: Path, command: str | None = PUSH, client: str = "192.0.2.10 50000 22") -> None:
    """What sshd does on a push: run the key's forced command with the login shell."""
    line = ak(home).read_text().splitlines()[-1]
    forced = line.split('command="', 1)[1].split('"', 1)[0]
    env = {"PATH": "/usr/bin:/bin", "SSH_CLIENT": client}
    if command is not None:
        env["SSH_ORIGINAL_COMMAND"] = command
    done = subprocess.run(["/bin/sh", "-c", forced], env=env, capture_output=True, check=False)
    assert done.returncode == 1


def assert_one_line_error(result, code: int, fragment: str) -> None:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("keyforge: error: ")
    assert fragment in lines[0]


# --- the flow --------------------------------------------------------------------------------


def test_capture_start_locks_the_key_to_the_recorder_with_every_restriction(home):
    result = start(home)

    line = ak(home).read_text().strip()
    recorder = home / ".ssh" / "keyforge" / "capture-recorder"
    key_id = capture.key_id(KEY_A.split()[1])
    assert line == (
        "restrict,no-port-forwarding,no-x11-forwarding,no-agent-forwarding,no-pty,no-user-rc,"
        f'command="{recorder} {key_id}" {KEY_A}'
    )
    assert stat.S_IMODE(recorder.stat().st_mode) == 0o700
    assert stat.S_IMODE(recorder.parent.stat().st_mode) == 0o700
    assert "push once from the sending server" in result.stdout


def test_capture_start_with_from_adds_the_source_restriction(home):
    start(home, "a.pub", "--from", "192.0.2.10")

    assert 'from="192.0.2.10",command="' in ak(home).read_text()


def test_capture_start_dry_run_writes_nothing(home):
    result = invoke("capture", "start", "--key", str(home.parent / "a.pub"), "-f", str(ak(home)),
                    "--dry-run")  # fmt: skip

    assert result.exit_code == 0, result.output
    assert not ak(home).exists()
    assert not (home / ".ssh" / "keyforge").exists()
    assert "would add key" in result.stdout


def test_capture_show_prints_the_exact_command_first(home):
    start(home)
    push(home)

    result = invoke("capture", "show")

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == PUSH
    assert "client 192.0.2.10" in result.stdout


def test_capture_show_json_and_all(home):
    start(home)
    push(home, "first")
    push(home, PUSH)

    latest = json.loads(invoke("capture", "show", "--json").stdout)
    every = json.loads(invoke("capture", "show", "--all", "--json").stdout)

    assert latest["command"] == PUSH
    assert latest["client"] == "192.0.2.10"
    assert [r["command"] for r in every] == ["first", PUSH]


def test_capture_show_escapes_control_characters_on_a_terminal(home):
    start(home)
    push(home, "evil\x1b]0;owned\x07\nsecond line")

    result = invoke("capture", "show")

    assert result.exit_code == 0
    assert "\x1b" not in result.stdout
    assert result.stdout.splitlines()[0] == "evil\\x1b]0;owned\\x07\\nsecond line"
    assert "--json has it exactly" in result.stderr


def test_install_from_capture_installs_the_locked_line(home):
    start(home, "a.pub", "--from", "192.0.2.0/24")
    push(home)

    result = invoke("install", "--key", str(home.parent / "a.pub"), "-f", str(ak(home)),
                    "--from-capture", "--from-captured-address")  # fmt: skip

    assert result.exit_code == 0, result.output
    line = ak(home).read_text().strip()
    assert line == (
        "restrict,no-port-forwarding,no-x11-forwarding,no-agent-forwarding,no-pty,no-user-rc,"
        f'from="192.0.2.10",command="rsync --server -logDtprze.iLsfxCIvu --delete . '
        f'{home}/srvbackups/" {KEY_A}'
    )
    assert f"rewrote ~/srvbackups/ to {home}/srvbackups/" in result.stdout
    assert "-z  compress data in transit" in result.stdout
    assert "after an rsync upgrade on either side, run the capture again" in result.stdout


def test_install_from_capture_keep_tilde_and_explicit_from(home):
    start(home)
    push(home)

    result = invoke("install", "--key", str(home.parent / "a.pub"), "-f", str(ak(home)),
                    "--from-capture", "--keep-tilde", "--from", "198.51.100.0/24")  # fmt: skip

    assert result.exit_code == 0, result.output
    assert f'from="198.51.100.0/24",command="{PUSH}"' in ak(home).read_text()


def test_install_from_capture_takes_a_non_rsync_command_only_when_allowed(home):
    start(home)
    push(home, "/usr/local/bin/backup-receive --now")
    args = ["install", "--key", str(home.parent / "a.pub"), "-f", str(ak(home)), "--from-capture",
            "--from", "192.0.2.10"]  # fmt: skip

    refused = invoke(*args)
    allowed = invoke(*args, "--allow-any-command")

    assert_one_line_error(refused, 2, "not a plain rsync server command")
    assert "--allow-any-command" in refused.stderr
    assert allowed.exit_code == 0, allowed.output
    assert 'command="/usr/local/bin/backup-receive --now"' in ak(home).read_text()


# --- errors ----------------------------------------------------------------------------------


def test_error_no_such_key_in_authorized_keys(home):
    ak(home).write_text(KEY_B + "\n")

    result = invoke("install", "--key", str(home.parent / "a.pub"), "-f", str(ak(home)),
                    "--from-capture", "--from", "192.0.2.10")  # fmt: skip

    assert_one_line_error(result, CaptureError.exit_code, "no such key in")
    assert "capture start" in result.stderr


def test_error_capture_start_in_a_missing_home_makes_no_directory(home):
    typo = home.parent / "fooo"

    result = invoke(
        "capture", "start", "--key", str(home.parent / "a.pub"),
        "-f", str(typo / ".ssh" / "authorized_keys"),
    )  # fmt: skip

    assert_one_line_error(result, 4, f"home directory {typo} does not exist")
    assert not typo.exists()


def test_error_unreadable_log(home):
    log = home / "not-a-file"
    log.mkdir()

    result = invoke("capture", "show", "--log", str(log))

    assert_one_line_error(result, 4, f"cannot read the capture log {log}")


def test_error_log_without_read_permission(home, keyforge_bound_by_modes):
    start(home)
    push(home)
    log_of(home).chmod(0o000)

    done = keyforge_bound_by_modes("capture", "show", home=home)

    assert done.returncode == 4, done.stderr
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"keyforge: error: cannot read the capture log {log_of(home)}: Permission denied"
    ]


def test_error_missing_log(home):
    result = invoke("capture", "show")

    assert_one_line_error(result, CaptureError.exit_code, "no capture log at")


def test_error_empty_log(home):
    start(home)
    log_of(home).write_text("")

    result = invoke("capture", "show")

    assert_one_line_error(result, CaptureError.exit_code, "holds no record yet: push once")


def test_error_capture_for_another_key(home):
    start(home, "b.pub")
    push(home)
    start(home, "a.pub")  # key A is now in the file too, but never pushed

    shown = invoke("capture", "show", "--key", str(home.parent / "a.pub"))
    installed = invoke("install", "--key", str(home.parent / "a.pub"), "-f", str(ak(home)),
                       "--from-capture", "--from", "192.0.2.10")  # fmt: skip

    other = capture.key_id(KEY_B.split()[1])
    assert_one_line_error(shown, CaptureError.exit_code, f"is for key {other}")
    assert_one_line_error(
        installed, CaptureError.exit_code, "holds no record for this key since 'capture start'"
    )


def test_bad_records_are_skipped_with_a_warning(home):
    start(home)
    push(home)
    with log_of(home).open("a") as log:
        log.write("injected\tgarbage\n")

    result = invoke("capture", "show")

    assert result.exit_code == 0
    assert result.stdout.splitlines()[0] == PUSH
    assert "garbage" not in result.stdout
    assert "not a keyforge capture record; skipped" in result.stderr


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--command", "x", "--from-capture"], "contradict"),
        (["--from-captured-address", "--command", "x"], "only make sense with --from-capture"),
        (["--keep-tilde", "--command", "x"], "only make sense with --from-capture"),
        (["--from-capture", "--from-captured-address", "--any-source"], "replaces --from"),
    ],
)
def test_error_conflicting_install_options(home, extra, fragment):
    result = invoke("install", "--key", str(home.parent / "a.pub"), "-f", str(ak(home)),
                    "--from", "192.0.2.10", *extra)  # fmt: skip

    assert_one_line_error(result, 2, fragment)


def test_error_captured_address_unknown(home):
    start(home)
    push(home, client="")

    result = invoke("install", "--key", str(home.parent / "a.pub"), "-f", str(ak(home)),
                    "--from-capture", "--from-captured-address")  # fmt: skip

    assert_one_line_error(result, 2, "no client address")


def test_capture_local_without_rsync_is_a_one_line_error():
    result = invoke("capture", "local", "--", "scp", "a", "h:b")

    assert_one_line_error(result, 2, "must be rsync")


def test_every_capture_command_has_help():
    for command in ("start", "show", "local"):
        result = invoke("capture", command, "--help")
        assert result.exit_code == 0
        assert len(result.stdout) > 300


# --- a stolen key's records ------------------------------------------------------------------


def test_a_captured_address_outside_capture_starts_from_is_refused(home):
    start(home, "a.pub", "--from", "192.0.2.0/24")
    push(home, client="203.0.113.5 50000 22")  # a record sshd's from= should have kept out

    result = invoke("install", "--key", str(home.parent / "a.pub"), "-f", str(ak(home)),
                    "--from-capture", "--from-captured-address")  # fmt: skip

    assert_one_line_error(result, 2, "outside the --from 192.0.2.0/24")


def test_capture_show_lists_every_record_since_start_and_says_they_differ(home):
    start(home)
    push(home, "before the start")
    start(home)
    push(home)
    push(home, PUSH.replace("~/srvbackups/", "~/.ssh/"), client="198.51.100.7 1 22")

    result = invoke("capture", "show")

    assert result.exit_code == 0, result.output
    assert "before the start" not in result.stdout
    assert "2 records since 'capture start'" in result.stdout
    assert "\t192.0.2.10\t" in result.stdout
    assert "\t198.51.100.7\t" in result.stdout
    assert "differ (2 different commands and 2 client addresses" in result.stderr
    assert "started without --from" in result.stderr


def test_install_command_by_hand_warns_about_the_home_itself(home):
    result = invoke("install", "--key", str(home.parent / "a.pub"), "-f", str(ak(home)),
                    "--from", "192.0.2.10", "--command", "rsync --server -a . ~/")  # fmt: skip

    assert result.exit_code == 0, result.output
    assert f"~/ is the home directory {home}" in result.stderr
