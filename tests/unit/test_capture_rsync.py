"""Reading rsync's server command, explaining it, and rewriting ~ (the sending side's parsing of
rsync and remote-shell command lines is in test_capture_local_argv.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from keyforge.errors import UsageError
from keyforge.receiver import capture

POST = "rsync --server -vlogDtprze.iLsfxCIvu --delete . ~/srvbackups"
HOME = Path("/home/foo")


def record(command):
    return capture.Record(1, "2024-05-01T02:03:04Z", "192.0.2.10", "SHA256:k", command)


def test_the_posts_command_is_read_into_its_parts():
    server = capture.parse_server_command(POST)

    assert server.sender is False
    assert server.flags == "vlogDtprz"
    assert (server.protocol, server.capabilities) == (".", "iLsfxCIvu")
    assert server.options == ("--delete",)
    assert server.paths == ("~/srvbackups",)


def test_a_pull_is_recognised_by_sender():
    server = capture.parse_server_command("rsync --server --sender -logDtpre.iLsfxCIvu . /srv")

    assert server.sender is True
    assert "SENDER" in capture.explain(server)[0]


def test_a_pre_release_protocol_is_read():
    server = capture.parse_server_command("rsync --server -re31.14iLsf . /x")

    assert (server.flags, server.protocol, server.capabilities) == ("r", "31.14", "iLsf")


def test_split_value_options_and_escaped_paths_are_kept_as_words():
    server = capture.parse_server_command(
        r"rsync --server -logDtpre.iLsfxCIvu --backup-dir ~/old --partial . ~/my\ dir/\$\(x\)"
    )

    assert server.options == ("--backup-dir", "~/old", "--partial")
    assert server.paths == (r"~/my\ dir/\$\(x\)",)


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        ("ls -la", "does not start with 'rsync --server'"),
        ("sudo rsync --server -a . /x", "does not start with 'rsync --server'"),
        ("rsync -a . /x", "does not start with 'rsync --server'"),
        ("rsync --server -a . ~/x; rm -rf ~", "unescaped ';'"),
        ("rsync --server -a . $(touch /tmp/canary)", "unescaped '$'"),
        ("rsync --server -a . `id`", "unescaped '`'"),
        ("rsync --server -a . /x|nc evil 1", "unescaped '|'"),
        ("rsync --server -a . /x>/etc/passwd", "unescaped '>'"),
        ("rsync --server -a . /x\nid", "unescaped '\\n'"),
        ("rsync --server -a --log-file=/tmp/* . /x", "unescaped '*'"),
        ("rsync --server -a .", "no '.' followed by a path"),
        ("rsync --server -a", "no '.' followed by a path"),
        ("rsync --server -a . /x /y", "one destination"),
        ("rsync --server -a stray . /x", "unexpected word 'stray'"),
        ("rsync --server  -a . /x", "doubled, leading or trailing spaces"),
        ("rsync --server --daemon .", "daemon"),
    ],
)
def test_anything_but_a_plain_rsync_server_command_is_refused(command, reason):
    pattern = "not a plain rsync server command.*" + re.escape(reason)
    with pytest.raises(capture.NotRsyncServerError, match=pattern):
        capture.parse_server_command(command)


def test_a_pull_may_name_several_sources_and_globs():
    server = capture.parse_server_command("rsync --server --sender -r . /a /b/*.tar")

    assert server.paths == ("/a", "/b/*.tar")


def test_the_explanation_names_each_flag_and_the_version_pin():
    text = "\n".join(capture.explain(capture.parse_server_command(POST)))

    assert "-z  compress data in transit (--compress)" in text
    assert "-l  copy symlinks as symlinks (--links)" in text
    assert "what -a, archive mode, turns on" in text
    assert "e.iLsfxCIvu: not an option anyone chose" in text
    assert "  i  incremental recursion" in text
    assert "after an rsync upgrade on either side, run the capture again" in text
    assert "--delete: delete files on this host" in text
    assert "destination: ~/srvbackups" in text


def test_archive_mode_is_not_claimed_without_all_its_letters():
    text = "\n".join(capture.explain(capture.parse_server_command("rsync --server -rtz . /x")))

    assert "archive mode" not in text


def test_a_leading_tilde_becomes_the_absolute_home():
    server = capture.parse_server_command(POST)

    rewrite = capture.rewrite_tilde(server, HOME)

    assert rewrite.command == "rsync --server -vlogDtprze.iLsfxCIvu --delete . /home/foo/srvbackups"
    assert rewrite.changes == (("~/srvbackups", "/home/foo/srvbackups"),)


def test_a_bare_tilde_and_a_backup_dir_are_rewritten_too():
    server = capture.parse_server_command("rsync --server -a --backup-dir ~/old . ~")

    assert capture.rewrite_tilde(server, HOME).command == (
        "rsync --server -a --backup-dir /home/foo/old . /home/foo"
    )


def test_tilde_user_uses_that_users_home():
    server = capture.parse_server_command("rsync --server -a . ~root/x")

    assert capture.rewrite_tilde(server, HOME).command == "rsync --server -a . /root/x"


def test_tilde_of_an_unknown_user_is_refused():
    server = capture.parse_server_command("rsync --server -a . ~nosuchuser-kf/x")

    with pytest.raises(UsageError, match="names user 'nosuchuser-kf', unknown here"):
        capture.rewrite_tilde(server, HOME)


def test_an_escaped_or_inner_tilde_is_left_alone():
    server = capture.parse_server_command(r"rsync --server -a . /x/~y")

    assert capture.rewrite_tilde(server, HOME).changes == ()


def test_a_home_with_special_characters_is_escaped_like_rsync_does():
    server = capture.parse_server_command(POST)

    rewrite = capture.rewrite_tilde(server, Path("/home/my user$"))

    assert rewrite.command.endswith(r" . /home/my\ user\$/srvbackups")


def test_install_from_a_record_rewrites_and_explains():
    captured = capture.command_from_record(record(POST), home=HOME)

    assert captured.command.endswith(" . /home/foo/srvbackups")
    assert any("rewrote ~/srvbackups to /home/foo/srvbackups" in n for n in captured.notes)
    assert any("--keep-tilde" in n for n in captured.notes)


def test_keep_tilde_keeps_the_command_as_captured():
    captured = capture.command_from_record(record(POST), home=HOME, keep_tilde=True)

    assert captured.command == POST


def test_a_command_that_is_not_rsync_is_refused_unless_allowed():
    with pytest.raises(capture.NotRsyncServerError, match="pass --allow-any-command"):
        capture.command_from_record(record("backup.sh --now"), home=HOME)

    allowed = capture.command_from_record(
        record("backup.sh --now"), home=HOME, allow_any_command=True
    )
    assert allowed.command == "backup.sh --now"


def test_secluded_args_are_refused_because_they_pin_no_destination():
    command = "rsync --server -slogDtpre.iLsfxCIvu"
    assert capture.parse_server_command(command).paths == ()

    with pytest.raises(capture.NotRsyncServerError, match="secluded-args"):
        capture.command_from_record(record(command), home=HOME)


def test_a_login_capture_cannot_be_installed():
    with pytest.raises(capture.CaptureError, match="login without a command"):
        capture.command_from_record(record(None), home=HOME)
