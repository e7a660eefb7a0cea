"""The one reader of ``rsync --server``: where capture and the gate used to read the same string
two ways, both now take the stricter reading; and the tables the gate's options and the
rsync options are made from."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyforge.receiver import capture, explain, gate
from keyforge.ssh import rsync_server

HOME = Path("/home/foo")


def record(command: str) -> capture.Record:
    return capture.Record(1, "2024-05-01T02:03:04Z", "192.0.2.10", "SHA256:k", command)


def gate_refuses(tmp_path: Path, command: str) -> str:
    home = tmp_path / "foo"
    (home / "srvbackups").mkdir(parents=True)
    config = gate.GateConfig(str(home / "srvbackups"), home=str(home))
    decision = gate.judge(command, config)
    assert not decision.allowed, decision.argv
    return decision.reason


# --- what one side let through and the other refused --------------------------------------


def test_capture_refuses_a_glob_in_a_receives_destination() -> None:
    # installed, the login shell would glob it at every run: the destination would be whatever
    # directory matches ~/srv* that day
    with pytest.raises(capture.NotRsyncServerError, match=r"path '~/srv\*' holds an unescaped"):
        capture.command_from_record(record("rsync --server -a . ~/srv*"), home=HOME)


def test_the_gate_refuses_an_unquoted_closing_bracket(tmp_path: Path) -> None:
    assert "']' (a glob)" in gate_refuses(tmp_path, "rsync --server -r . srvbackups/a]")


def test_the_gate_refuses_a_character_that_does_not_print(tmp_path: Path) -> None:
    # srvbackups/<zero-width space>x reads as srvbackups/x to whoever looks at the log
    reason = gate_refuses(tmp_path, "rsync --server -r . srvbackups/\u200bx/")
    assert "does not print" in reason


def test_capture_refuses_an_escaped_control_character() -> None:
    with pytest.raises(capture.NotRsyncServerError, match="unescaped '\\\\t'"):
        capture.parse_server_command("rsync --server -a . ~/a\\\tb")


def test_capture_refuses_an_overlong_command() -> None:
    command = "rsync --server -a . ~/" + "a" * rsync_server.MAX_COMMAND
    with pytest.raises(capture.NotRsyncServerError, match="characters long"):
        capture.parse_server_command(command)


def test_capture_reads_no_option_as_another_options_value() -> None:
    # rsync could take --files-from=... as the option it is; the gate refuses to judge a word
    # two ways, and so does capture now
    command = "rsync --server -a --backup-dir --files-from=/etc/shadow . ~/x"
    with pytest.raises(capture.NotRsyncServerError, match="takes the next word"):
        capture.parse_server_command(command)


def test_a_quoted_path_is_judged_by_what_the_shell_makes_of_it() -> None:
    # quotes are read as the login shell reads them, so a quoted ~/.ssh is still ~/.ssh, even
    # for a command let through with --allow-any-command
    command = "rsync --server -a . '/home/foo/.ssh/'"
    with pytest.raises(capture.ForbiddenDestinationError, match="sshd reads"):
        capture.command_from_record(record(command), home=HOME, allow_any_command=True)


def test_a_quoted_destination_is_read_alike(tmp_path: Path) -> None:
    command = "rsync --server -logDtprze.iLsfxC --delete . 'srvbackups/my dir'"
    server = capture.parse_server_command(command)
    assert server.texts[-1] == "srvbackups/my dir"
    assert [word.text for word in gate.split_command(command)] == list(server.texts)


def test_explain_calls_no_command_with_shell_syntax_an_rsync_server() -> None:
    said = explain.describe_command("rsync --server -a . /srv/x;sh -i")
    assert "an rsync server" not in said
    assert "whatever the client asks for" in said


# --- the option table -----------------------------------------------------------------------


def test_every_option_has_one_gate_kind_and_a_reason_when_refused() -> None:
    kinds = {
        rsync_server.ALLOWED,
        rsync_server.TUNING,
        rsync_server.CONFINED,
        rsync_server.REFUSED,
        rsync_server.CLIENT,
    }
    for table in (rsync_server.LONG, rsync_server.SHORT):
        for name, option in table.items():
            assert option.gate in kinds, name
            assert (option.reason is not None) == (option.gate == rsync_server.REFUSED), name
            assert option.value or not option.path, name  # only a value can name a path
            if option.gate in (rsync_server.TUNING, rsync_server.CONFINED):
                assert option.value, name
            if option.gate == rsync_server.CONFINED:
                assert option.path, name


def test_the_gate_judges_by_the_table(tmp_path: Path) -> None:
    for name, option in rsync_server.LONG.items():
        word = f"--{name}=x" if option.value else f"--{name}"
        reason = gate_refuses_or_none(tmp_path / name, f"rsync --server -r {word} . srvbackups/")
        if option.gate == rsync_server.REFUSED:
            assert reason == option.reason, name
        elif option.gate == rsync_server.CLIENT:
            assert reason == f"unknown or refused option --{name}", name
        else:
            assert reason is None, (name, reason)


def gate_refuses_or_none(tmp_path: Path, command: str) -> str | None:
    home = tmp_path / "foo"
    (home / "srvbackups" / "x").mkdir(parents=True)
    decision = gate.judge(command, gate.GateConfig(str(home / "srvbackups"), home=str(home)))
    return None if decision.allowed else decision.reason


def test_capture_explains_with_the_tables_words() -> None:
    lines = capture.explain(capture.parse_server_command("rsync --server -rK --append . /x"))
    assert f"  -K  {rsync_server.SHORT['K'].meaning}" in lines
    assert f"--append: {rsync_server.LONG['append'].meaning}" in lines


# --- the gate's own options: one table, parser, renderer and help -------------------------


@given(
    directory=st.sampled_from(["/srv/backups", "/srv/my backups", "rel/dir"]),
    expect=st.one_of(st.none(), st.sampled_from(["rsync --server -r . x/", "a 'b' $c"])),
    exact=st.booleans(),
    log=st.one_of(st.none(), st.just("/var/log/k gate.log")),
    rsync=st.sampled_from([gate.DEFAULT_RSYNC, "/opt/rsync/bin/rsync"]),
    munge_links=st.booleans(),
    confine=st.booleans(),
)
def test_gate_command_reads_back_as_the_same_config(
    directory: str,
    expect: str | None,
    exact: bool,
    log: str | None,
    rsync: str,
    munge_links: bool,
    confine: bool,
) -> None:
    exact = exact and expect is not None
    config = gate.GateConfig(
        directory,
        home="/home/foo",
        expect=expect,
        exact=exact,
        log=log,
        rsync=rsync,
        munge_links=munge_links,
        confine=confine,
    )
    argv = shlex.split(gate.gate_command("/usr/bin/keyforge", config))
    assert argv[:2] == ["/usr/bin/keyforge", "gate"]
    back = gate.parse_gate_args(argv[2:], home="/home/foo")
    assert back is not None
    for option in gate.GATE_OPTIONS:
        assert getattr(back, option.attr) == getattr(config, option.attr), option.flag


def test_usage_names_every_gate_option_once_in_its_list() -> None:
    listed = [line.split()[0] for line in gate.USAGE.splitlines() if line.startswith("  --")]
    assert listed == [option.flag for option in gate.GATE_OPTIONS]
    usage_line = gate.USAGE.split("\n\n", 1)[0]
    for option in gate.GATE_OPTIONS:
        assert option.synopsis() in usage_line
