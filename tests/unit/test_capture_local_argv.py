"""The sending side of a capture: parsing rsync and remote-shell command lines the way rsync
does, and what ``capture local`` refuses before it runs anything."""

from __future__ import annotations

import pytest

from keyforge.errors import UsageError
from keyforge.sender import capture_local

# --- the sending side -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("ssh", ["ssh"]),
        ("ssh -p 2222 -i /k", ["ssh", "-p", "2222", "-i", "/k"]),
        ("  ssh   -p 22 ", ["ssh", "-p", "22"]),
        ("ssh -i '/my keys/k'", ["ssh", "-i", "/my keys/k"]),
        ('ssh -o "ProxyCommand=nc %h %p"', ["ssh", "-o", "ProxyCommand=nc %h %p"]),
        ("ssh -i 'it''s'", ["ssh", "-i", "it's"]),
        ("ssh -i a\\ b", ["ssh", "-i", "a\\", "b"]),
    ],
)
def test_remote_shell_is_split_like_rsync_splits_it(text, words):
    assert capture_local.split_remote_shell(text) == words


def test_an_unterminated_quote_in_the_remote_shell_is_refused():
    with pytest.raises(UsageError, match="missing trailing '"):
        capture_local.split_remote_shell("ssh -i 'key")


@pytest.mark.parametrize("word", ["plain", "/tmp/dir with space/ssh", "it's", '"q"', "''"])
def test_quoting_for_the_remote_shell_round_trips(word):
    assert capture_local.split_remote_shell(capture_local.quote_for_remote_shell(word)) == [word]


@pytest.mark.parametrize(
    ("argv", "kept", "rsh"),
    [
        (["rsync", "-az", "src", "h:d"], ["rsync", "-az", "src", "h:d"], None),
        (["rsync", "-az", "--rsh=ssh -p 2", "s", "h:d"], ["rsync", "-az", "s", "h:d"], "ssh -p 2"),
        (["rsync", "--rsh", "ssh -p 2", "s", "h:d"], ["rsync", "s", "h:d"], "ssh -p 2"),
        (["rsync", "-e", "ssh -p 2", "s", "h:d"], ["rsync", "s", "h:d"], "ssh -p 2"),
        (["rsync", "-aze", "ssh -p 2", "s", "h:d"], ["rsync", "-az", "s", "h:d"], "ssh -p 2"),
        (["rsync", "-essh", "s", "h:d"], ["rsync", "s", "h:d"], "ssh"),
        (["rsync", "-e", "a", "-e", "b", "s", "h:d"], ["rsync", "s", "h:d"], "b"),
        (["rsync", "--exclude", "-e", "s", "h:d"], ["rsync", "--exclude", "-e", "s", "h:d"], None),
        (["rsync", "-f", "- -e", "s", "h:d"], ["rsync", "-f", "- -e", "s", "h:d"], None),
        (["rsync", "-aB1024", "s", "h:d"], ["rsync", "-aB1024", "s", "h:d"], None),
        (["rsync", "-a", "--", "-e", "h:d"], ["rsync", "-a", "--", "-e", "h:d"], None),
    ],
)
def test_rsh_is_taken_out_of_the_rsync_command_line(argv, kept, rsh):
    split = capture_local.extract_rsh(argv)

    assert list(split.argv) == kept
    assert split.rsh == rsh


@pytest.mark.parametrize(
    ("argv", "positionals"),
    [
        (["rsync", "-az", "--exclude", "x", "-e", "ssh", "s", "h:d"], ("s", "h:d")),
        (["rsync", "-a", "--", "-odd", "h:d"], ("-odd", "h:d")),
    ],
)
def test_positional_arguments_are_told_from_option_values(argv, positionals):
    assert capture_local.extract_rsh(argv).positionals == positionals


def test_a_missing_rsh_value_is_refused():
    with pytest.raises(UsageError, match="needs a value"):
        capture_local.extract_rsh(["rsync", "-a", "--rsh"])


def test_port_key_and_user_are_picked_out_of_the_remote_shell():
    shell = capture_local.describe_remote_shell(
        "ssh -p 2222 -i /home/foo/.ssh/backups -l bob -o IdentityFile=/k2 -C", "--rsh"
    )

    assert shell.port == "2222"
    assert shell.identities == ("/home/foo/.ssh/backups", "/k2")
    assert shell.user == "bob"
    assert shell.other_options == ("-C",)
    assert "port: 2222" in "\n".join(shell.describe())


@pytest.mark.parametrize(
    ("args", "skip", "expected"),
    [
        (["host", "rsync", "--server", "-a", ".", "d"], 0, ("host", None, "rsync --server -a . d")),
        (["-l", "foo", "-4", "h", "rsync", "--server"], 0, ("h", "foo", "rsync --server")),
        (["-p", "22", "-l", "foo", "h", "rsync", "x"], 2, ("h", "foo", "rsync x")),
        (["h", "sudo rsync", "--server", r"~/a\ b"], 0, ("h", None, r"sudo rsync --server ~/a\ b")),
    ],
)
def test_the_remote_command_is_the_words_after_the_host_joined_like_ssh(args, skip, expected):
    assert capture_local.parse_rsh_call(args, skip) == expected


def test_capture_local_refuses_a_program_that_is_not_rsync():
    with pytest.raises(UsageError, match="must be rsync, not 'scp'"):
        capture_local.capture_local(["scp", "a", "h:b"])
