"""The pure half of `keyforge install` / `revoke`: the locked-down line and the merge."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from keyforge.errors import KeyforgeError, ParseError, RenderError, UsageError
from keyforge.receiver import install
from keyforge.ssh import authorized_keys as ak

RSYNC = "rsync --server -logDtprze.iLsfxCIvu --delete . srvbackups/"


def public_line(comment: str) -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    raw = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return f"{raw.decode('ascii')} {comment}"


@pytest.fixture
def make_key() -> Callable[[str], ak.Entry]:
    def make(comment: str = "foo@server1") -> ak.Entry:
        return ak.parse_public_key(public_line(comment) + "\n")

    return make


@pytest.fixture
def key(make_key: Callable[[str], ak.Entry]) -> ak.Entry:
    return make_key("foo@server1")


def locked(key: ak.Entry, **overrides: object) -> ak.Entry:
    values: dict[str, object] = {"from_patterns": ["203.0.113.7"], "command": RSYNC}
    values.update(overrides)
    return install.locked_entry(key, **values)  # type: ignore[arg-type]


def names(entry: ak.Entry) -> list[str]:
    return [option.name for option in entry.options]


def plain(key: ak.Entry) -> str:
    return f"{key.keytype} {key.blob} {key.comment}"


# --- the locked-down line ---------------------------------------------------------------------


def test_locked_entry_puts_restrict_first_then_the_flags_from_and_command(key: ak.Entry) -> None:
    entry = locked(key)

    assert names(entry) == [
        "restrict",
        "no-port-forwarding",
        "no-x11-forwarding",
        "no-agent-forwarding",
        "no-pty",
        "no-user-rc",
        "from",
        "command",
    ]
    assert entry.values("from") == ["203.0.113.7"]
    assert entry.values("command") == [RSYNC]
    assert (entry.keytype, entry.blob, entry.comment) == (key.keytype, key.blob, key.comment)


def test_locked_entry_joins_several_from_patterns_with_commas(key: ak.Entry) -> None:
    entry = locked(key, from_patterns=["203.0.113.7", "2001:db8::/32", "192.0.2.*", "!10.0.0.0/8"])

    assert entry.values("from") == ["203.0.113.7,2001:db8::/32,192.0.2.*,!10.0.0.0/8"]


def test_no_restrict_keeps_every_explicit_no_flag(key: ak.Entry) -> None:
    entry = locked(key, restrict=False)

    assert names(entry)[:5] == list(install.LOCKDOWN_FLAGS)
    assert not entry.has("restrict")


def test_dropbear_line_has_no_restrict_no_user_rc_nor_from(key: ak.Entry) -> None:
    entry = locked(key, dropbear=True, from_patterns=None)

    assert names(entry) == [
        "no-port-forwarding",
        "no-x11-forwarding",
        "no-agent-forwarding",
        "no-pty",
        "command",
    ]


def test_dropbear_refuses_from_because_dropbear_would_reject_the_line(key: ak.Entry) -> None:
    with pytest.raises(UsageError, match="Dropbear has no from="):
        locked(key, dropbear=True)


def test_dropbear_refuses_a_double_quote_in_the_command(key: ak.Entry) -> None:
    with pytest.raises(UsageError, match="double quote"):
        locked(key, dropbear=True, from_patterns=None, command='echo "hi"')


def test_expiry_time_and_environment_follow_the_command(key: ak.Entry) -> None:
    entry = locked(key, expiry_time="20301231", environment=["LANG=C", "TZ=UTC"])

    assert names(entry)[-4:] == ["command", "expiry-time", "environment", "environment"]
    assert entry.values("environment") == ["LANG=C", "TZ=UTC"]


def test_a_command_with_quotes_round_trips(key: ak.Entry) -> None:
    entry = locked(key, command='sh -c "exec rrsync -wo /srv/backups"')

    line = install.render_line(entry)

    assert ak.parse_line(line) == entry


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("rsync\n--server", "newline"),
        ("rsync\r", "carriage return"),
        ("rsync\0", "NUL"),
        ("rsync --server \\", "backslash"),
    ],
)
def test_bad_commands_are_refused(key: ak.Entry, command: str, reason: str) -> None:
    with pytest.raises(UsageError, match=reason):
        locked(key, command=command)


@pytest.mark.parametrize(
    ("patterns", "reason"),
    [
        ([], "no from pattern"),
        ([""], "empty from pattern"),
        (["203.0.113.7", ""], "empty from pattern"),
        (["203.0.113.7 10.0.0.1"], "whitespace"),
        (['203.0.113.7"'], "quote"),
        (["203.0.113.7,10.0.0.1"], "comma"),
        (["!"], "empty entry"),
        (["10.0.0.0/33"], "bad mask length"),
        (["10.0.0.1/24"], "host bits set beyond the /24 mask; did you mean 10.0.0.0/24"),
        (["2001:db8::1/32"], "host bits set"),
        (["10.0.0.0/255.0.0.0"], "bad mask length"),
        (["10.0.*.0/8"], "wildcards"),
    ],
)
def test_bad_from_patterns_are_refused(key: ak.Entry, patterns: list[str], reason: str) -> None:
    with pytest.raises(UsageError, match=reason):
        locked(key, from_patterns=patterns)


@pytest.mark.parametrize("value", ["2030", "20301332", "203012311260", "20301231T1200", "x"])
def test_bad_expiry_times_are_refused(key: ak.Entry, value: str) -> None:
    with pytest.raises(UsageError, match="expiry-time"):
        locked(key, expiry_time=value)


@pytest.mark.parametrize("value", ["LANG", "A-B=c", "=x", "X=a\nb", "X=a\\"])
def test_bad_environment_assignments_are_refused(key: ak.Entry, value: str) -> None:
    with pytest.raises(UsageError, match="environment"):
        locked(key, environment=[value])


def test_host_names_in_from_warn_that_usedns_no_never_matches_them(key: ak.Entry) -> None:
    entry = locked(key, from_patterns=["server1.example.com", "203.0.113.7"])

    warnings = install.plan_install(None, entry).warnings

    assert any("server1.example.com" in w and "UseDNS no" in w for w in warnings)


@pytest.mark.parametrize("pattern", ["203.0.113.7", "203.0.113.*", "2001:db8::/32", "fe80::*"])
def test_addresses_in_from_raise_no_host_name_warning(key: ak.Entry, pattern: str) -> None:
    warnings = install.plan_install(None, locked(key, from_patterns=[pattern])).warnings

    assert not any("UseDNS" in w for w in warnings)


def test_any_source_is_stated_as_a_warning(key: ak.Entry) -> None:
    warnings = install.plan_install(None, locked(key, from_patterns=None)).warnings

    assert any("any source address" in w for w in warnings)


def test_a_rendered_line_that_does_not_read_back_is_never_planned(
    key: ak.Entry, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_render = ak.render
    monkeypatch.setattr(ak, "render", lambda e: real_render(e).replace("203.0.113.7", "0.0.0.0"))

    with pytest.raises(RenderError, match="does not read back"):
        install.plan_install("", locked(key))


# --- the merge: install ---------------------------------------------------------------------------

HEADER = "# keys for foo\n\n"


def test_install_into_a_missing_file_writes_just_the_line(key: ak.Entry) -> None:
    plan = install.plan_install(None, locked(key))

    assert plan.action == "added"
    assert plan.new_text == plan.line + "\n"
    assert plan.linenos == (1,)


def test_a_new_line_over_the_8_kb_limit_is_written_with_a_warning(key: ak.Entry) -> None:
    long_command = RSYNC + " " + "x" * ak.LINE_LIMIT

    plan = install.plan_install(None, locked(key, command=long_command))

    assert plan.action == "added"
    assert any("sshd(8) documents a limit of 8192" in w for w in plan.warnings)


def test_a_new_line_under_the_limit_has_no_length_warning(key: ak.Entry) -> None:
    plan = install.plan_install(None, locked(key))

    assert not any("documents a limit" in w for w in plan.warnings)


def test_install_appends_and_keeps_comments_blank_lines_and_other_keys(
    make_key: Callable[[str], ak.Entry],
) -> None:
    other = make_key("admin@laptop")
    old = HEADER + plain(other) + "\n\n# trailing comment\n"

    plan = install.plan_install(old, locked(make_key("foo@server1")))

    assert plan.action == "added"
    assert plan.new_text == old + plan.line + "\n"
    assert plan.linenos == (6,)


def test_install_replaces_the_keys_line_where_it_stands(
    make_key: Callable[[str], ak.Entry],
) -> None:
    key, before, after = make_key("foo@server1"), make_key("a@x"), make_key("b@y")
    old = HEADER + plain(before) + "\n" + 'command="ls" ' + plain(key) + "\n" + plain(after) + "\n"

    plan = install.plan_install(old, locked(key))

    assert plan.action == "replaced"
    assert plan.linenos == (4,)
    expected = HEADER + plain(before) + "\n" + f"{plan.line}\n" + plain(after) + "\n"
    assert plan.new_text == expected


def test_install_matches_the_key_whatever_its_comment(make_key: Callable[[str], ak.Entry]) -> None:
    key = make_key("old comment")
    renamed = ak.Entry(key.keytype, key.blob, "new comment")

    plan = install.plan_install(plain(key) + "\n", locked(renamed))

    assert plan.action == "replaced"
    assert ak.split_lines(plan.new_text or "") == [plan.line + "\n"]


def test_a_second_identical_install_is_unchanged(key: ak.Entry) -> None:
    first = install.plan_install(HEADER, locked(key))

    second = install.plan_install(first.new_text, locked(key))

    assert second.action == "unchanged"
    assert second.new_text == first.new_text
    assert not second.changed
    assert second.diff() == ""


def test_crlf_file_gets_a_crlf_line_and_keeps_its_other_bytes(
    make_key: Callable[[str], ak.Entry],
) -> None:
    other = make_key("admin@laptop")
    old = "# windows editor\r\n" + plain(other) + "\r\n"

    plan = install.plan_install(old, locked(make_key()))

    assert plan.new_text == old + plan.line + "\r\n"


def test_crlf_line_replaced_in_place_keeps_its_crlf(key: ak.Entry) -> None:
    old = "# a\r\n" + plain(key) + "\r\n# b\r\n"

    plan = install.plan_install(old, locked(key))

    assert plan.new_text == f"# a\r\n{plan.line}\r\n# b\r\n"


def test_missing_final_newline_puts_the_new_line_on_its_own_line(
    make_key: Callable[[str], ak.Entry],
) -> None:
    old = HEADER + plain(make_key("admin@laptop"))

    plan = install.plan_install(old, locked(make_key()))

    assert plan.new_text == old + "\n" + plan.line + "\n"


def test_a_key_on_two_lines_is_refused_naming_both(key: ak.Entry) -> None:
    old = plain(key) + "\n# between\n" + 'from="10.0.0.1" ' + plain(key) + "\n"

    with pytest.raises(KeyforgeError, match=r"several lines of authorized_keys \(1, 3\)"):
        install.plan_install(old, locked(key))


def test_unparseable_lines_are_kept_byte_for_byte_with_a_warning(
    make_key: Callable[[str], ak.Entry],
) -> None:
    old = "this is not a key line\n" + plain(make_key("admin@laptop")) + "\n"

    plan = install.plan_install(old, locked(make_key()))

    assert plan.new_text == old + plan.line + "\n"
    assert any(w.startswith("line 1:") and "kept as it is" in w for w in plan.warnings)


def test_an_unparseable_line_holding_the_key_is_refused(key: ak.Entry) -> None:
    old = f'command="unterminated {plain(key)}\n'

    with pytest.raises(ParseError, match="line 1: this key stands on a line keyforge cannot"):
        install.plan_install(old, locked(key))


def test_diff_shows_the_added_line(key: ak.Entry) -> None:
    plan = install.plan_install(HEADER, locked(key))

    diff = plan.diff("/home/foo/.ssh/authorized_keys")

    assert diff.startswith("--- /home/foo/.ssh/authorized_keys (current)\n")
    assert f"+{plan.line}\n" in diff.splitlines(keepends=True)


def test_a_new_text_that_reads_back_differently_is_refused(
    key: ak.Entry, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_parse = ak.parse

    def parse_losing_the_new_entry(text: str, **kwargs: object) -> list[ak.Line]:
        lines = real_parse(text, **kwargs)  # type: ignore[arg-type]
        if "restrict" not in text:
            return lines
        last = lines[-1]
        return [*lines[:-1], ak.Line(last.raw, last.lineno, None)]

    monkeypatch.setattr(ak, "parse", parse_losing_the_new_entry)

    with pytest.raises(RenderError, match="refusing to write"):
        install.plan_install("# only a comment\n", locked(key))


# --- widening -------------------------------------------------------------------------------------


def test_replacing_a_line_with_from_by_any_source_warns(key: ak.Entry) -> None:
    old = install.render_line(locked(key)) + "\n"

    plan = install.plan_install(old, locked(key, from_patterns=None))

    assert any("any source address" in w and "203.0.113.7" in w for w in plan.warnings)


def test_dropping_restrict_warns(key: ak.Entry) -> None:
    old = install.render_line(locked(key)) + "\n"

    plan = install.plan_install(old, locked(key, restrict=False))

    assert any("drops it" in w and "'restrict'" in w for w in plan.warnings)


def test_a_new_from_pattern_warns_that_it_widens(key: ak.Entry) -> None:
    old = install.render_line(locked(key)) + "\n"

    plan = install.plan_install(old, locked(key, from_patterns=["203.0.113.7", "198.51.100.0/24"]))

    assert any("now also allows 198.51.100.0/24" in w for w in plan.warnings)


def test_a_changed_command_is_stated(key: ak.Entry) -> None:
    old = 'command="rsync --server --sender . x" ' + plain(key) + "\n"

    plan = install.plan_install(old, locked(key))

    assert any("forced command changes" in w for w in plan.warnings)


def test_locking_down_a_plain_key_raises_no_widening_warning(key: ak.Entry) -> None:
    plan = install.plan_install(plain(key) + "\n", locked(key))

    assert not any(key.comment in w for w in plan.warnings)


def test_widening_warnings_name_lost_no_flags() -> None:
    old = ak.Entry("ssh-ed25519", "AAAA", "c", (ak.Option("no-pty"), ak.Option("command", "ls")))
    new = ak.Entry("ssh-ed25519", "AAAA", "c", (ak.Option("command", "ls"),))

    warnings = install.widening_warnings(old, new)

    assert any("no longer has no-pty" in w for w in warnings)


def test_widening_reads_options_in_order_as_sshd_does() -> None:
    # "pty,restrict": restrict comes last, so sshd gives no terminal; a new line with only
    # no-port-forwarding hands the terminal back, and that must be said.
    old = ak.Entry("ssh-ed25519", "AAAA", "c", (ak.Option("pty"), ak.Option("restrict")))
    new = ak.Entry("ssh-ed25519", "AAAA", "c", (ak.Option("no-port-forwarding"),))

    warnings = install.widening_warnings(old, new)

    assert any("no-pty" in w for w in warnings)


def test_a_flag_reenabled_after_restrict_is_not_counted_as_a_restriction() -> None:
    # "restrict,pty" lets the key have a terminal; a new "restrict" line takes it away (narrower)
    old = ak.Entry("ssh-ed25519", "AAAA", "c", (ak.Option("restrict"), ak.Option("pty")))
    new = ak.Entry("ssh-ed25519", "AAAA", "c", (ak.Option("restrict"),))

    assert install.widening_warnings(old, new) == []


# --- the merge: revoke ----------------------------------------------------------------------------


def test_revoke_removes_the_line_and_keeps_everything_else(
    make_key: Callable[[str], ak.Entry],
) -> None:
    key, other = make_key(), make_key("admin@laptop")
    kept_before = HEADER + plain(other) + "\r\n"
    old = kept_before + install.render_line(locked(key)) + "\n" + "# end\n"

    plan = install.plan_revoke(old, key)

    assert plan.action == "removed"
    assert plan.linenos == (4,)
    assert plan.new_text == kept_before + "# end\n"


def test_revoke_removes_every_line_of_the_key(key: ak.Entry) -> None:
    old = plain(key) + "\n# keep\n" + 'command="ls" ' + plain(key)

    plan = install.plan_revoke(old, key)

    assert plan.new_text == "# keep\n"
    assert plan.linenos == (1, 3)


def test_revoke_of_an_absent_key_changes_nothing(make_key: Callable[[str], ak.Entry]) -> None:
    old = HEADER + plain(make_key("admin@laptop")) + "\n"

    plan = install.plan_revoke(old, make_key())

    assert plan.action == "absent"
    assert not plan.changed


def test_revoke_on_a_missing_file_is_absent(key: ak.Entry) -> None:
    assert install.plan_revoke(None, key).action == "absent"


def test_install_then_revoke_gives_back_the_original_bytes(
    make_key: Callable[[str], ak.Entry],
) -> None:
    old = HEADER + plain(make_key("admin@laptop")) + "\r\n\n# end\n"
    key = make_key()

    installed = install.plan_install(old, locked(key))
    revoked = install.plan_revoke(installed.new_text, key)

    assert revoked.new_text == old
