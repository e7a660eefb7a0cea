"""keyforge.ssh.authorized_keys: writing lines sshd reads back exactly, refusing the unwritable."""

from __future__ import annotations

from pathlib import Path

import pytest

from keyforge.errors import RenderError
from keyforge.ssh import authorized_keys as ak

DATA = Path(__file__).resolve().parent.parent / "data"
ED = next(
    line
    for line in (DATA / "authorized_keys_fixture_keys.pub").read_text().splitlines()
    if line.startswith("ssh-ed25519 ")
)
ED_TYPE, ED_BLOB, _ = ED.split(" ", 2)


def entry(*options: ak.Option, comment: str = "keyforge backup@server1") -> ak.Entry:
    return ak.Entry(ED_TYPE, ED_BLOB, comment, options)


def test_a_locked_down_entry_renders_as_one_line_in_option_order() -> None:
    wanted = entry(
        ak.Option("from", "192.0.2.10"),
        ak.Option("command", "rsync --server -logDtpre.iLsfxC . backups/"),
        ak.Option("restrict"),
    )
    assert ak.render(wanted) == (
        'from="192.0.2.10",command="rsync --server -logDtpre.iLsfxC . backups/",restrict '
        f"{ED_TYPE} {ED_BLOB} keyforge backup@server1"
    )


def test_an_entry_without_options_or_comment_is_just_the_key() -> None:
    assert ak.render(ak.Entry(ED_TYPE, ED_BLOB)) == f"{ED_TYPE} {ED_BLOB}"


def test_double_quotes_are_escaped_and_other_backslashes_left_alone() -> None:
    option = ak.Option("command", 'echo "a\\b" \\"c\\"')
    assert ak.format_option(option) == 'command="echo \\"a\\b\\" \\\\"c\\\\""'
    line = ak.render(entry(option))
    assert ak.parse_line(line) == entry(option)


def test_flag_names_are_written_lowercase() -> None:
    assert ak.format_option(ak.Option("No-X11-Forwarding")) == "no-x11-forwarding"


@pytest.mark.parametrize(
    ("option", "reason"),
    [
        (ak.Option("command", "ends with \\"), "ends with a backslash"),
        (ak.Option("command", "two\nlines"), "a newline"),
        (ak.Option("command", "cr\rhere"), "a carriage return"),
        (ak.Option("command", "nul\x00"), "a NUL"),
        (ak.Option("no-pty", "yes"), "takes no value"),
        (ak.Option("command"), "needs a value"),
        (ak.Option("frobnicate"), "unknown option"),
    ],
)
def test_an_unwritable_option_is_refused(option: ak.Option, reason: str) -> None:
    with pytest.raises(RenderError, match=reason):
        ak.format_option(option)
    with pytest.raises(RenderError, match=reason):
        ak.render(entry(option))


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ((ak.Option("from", ""),), "empty entry"),
        ((ak.Option("from", "10.0.0.1/8"),), "host bits"),
        ((ak.Option("command", "a"), ak.Option("command", "b")), 'more than one "command"'),
        ((ak.Option("principals", "root"),), "cert-authority"),
        ((ak.Option("permitopen", "host"),), "port"),
        ((ak.Option("expiry-time", "tomorrow"),), "expiry-time"),
    ],
)
def test_an_entry_sshd_would_refuse_is_not_written(
    options: tuple[ak.Option, ...], reason: str
) -> None:
    with pytest.raises(RenderError, match=reason):
        ak.render(entry(*options))


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (ak.Entry("ssh-foo", ED_BLOB), "unknown key type"),
        (ak.Entry(ED_TYPE, "not base64!"), "not base64"),
        (ak.Entry("ssh-rsa", ED_BLOB), "not the declared ssh-rsa"),
        (ak.Entry(ED_TYPE, ED_BLOB, "two\nlines"), "newline"),
        (ak.Entry(ED_TYPE, ED_BLOB, " padded"), "start or end"),
    ],
)
def test_an_unwritable_key_or_comment_is_refused(bad: ak.Entry, reason: str) -> None:
    with pytest.raises(RenderError, match=reason):
        ak.render(bad)


def test_the_template_holds_the_layout_only() -> None:
    template = (
        Path(__file__).resolve().parents[2] / "templates" / "authorized_keys.j2"
    ).read_text()
    assert "replace" not in template
    assert "{{ options }}" in template
