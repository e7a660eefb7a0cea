"""The recorder's log format: what decodes, what is refused, and that no command can forge a
second record."""

from __future__ import annotations

from pathlib import Path

import pytest

from keyforge.errors import ParseError
from keyforge.receiver import capture

KEY = "SHA256:Csfupk9ZSMNx/NIcVmCNs8TBLc6tJfwyCJrLB38TvuM"
OTHER = "SHA256:AAAAk9ZSMNx/NIcVmCNs8TBLc6tJfwyCJrLB38TvuM"
WHEN = "2024-05-01T02:03:04Z"


def encode(command: str | None, *, client: str = "192.0.2.10", key: str = KEY) -> str:
    """What the recorder writes for one call (its Python twin, for these tests)."""
    field = "-" if command is None else "x" + command.encode("utf-8", "surrogateescape").hex()
    return f"{capture.RECORD_TAG}\t{WHEN}\t{client}\t{key}\t{field}\n"


HOSTILE = [
    "rsync --server -logDtprze.iLsfxCIvu --delete . ~/srvbackups/",
    "",
    'it\'s "quoted" $(touch /tmp/x) `id` ; rm -rf / | cat > f & \\',
    "line one\nline two\r\n",
    "\t".join(["tab", "separated", "fields"]),
    "".join(chr(c) for c in range(1, 32)) + "\x7f\x1b[31m",
    "ünïcödé ✓",
    "x" * 65536,
    encode("forged").rstrip("\n"),
    "\n" + encode("forged"),
]


@pytest.mark.parametrize("command", HOSTILE)
def test_every_command_decodes_to_exactly_itself(command):
    record = capture.decode_record(encode(command), lineno=3)

    assert record.command == command
    assert (record.time, record.client, record.key, record.lineno) == (WHEN, "192.0.2.10", KEY, 3)


@pytest.mark.parametrize("command", HOSTILE)
def test_a_hostile_command_stays_one_line_and_cannot_forge_a_record(tmp_path, command):
    log = tmp_path / "capture.log"
    log.write_text(encode(command) + encode("rsync --server -a . /real"))

    read = capture.read_log(log)

    assert [r.command for r in read.records] == [command, "rsync --server -a . /real"]
    assert read.bad_lines == ()


def test_a_login_without_a_command_is_recorded_as_such():
    record = capture.decode_record(encode(None))

    assert record.command is None


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (encode("ls").rstrip("\n"), "incomplete record"),
        ("rsync --server -a . /x\n", "not a keyforge capture record"),
        (encode("ls").replace(capture.RECORD_TAG, "keyforge-capture-0"), "not a keyforge"),
        (encode("ls").replace("\n", "\textra\n"), "not a keyforge capture record"),
        (encode("ls").replace(WHEN, "yesterday"), "bad time"),
        (encode("ls", client="1.2.3.4;id"), "bad client address"),
        (encode("ls", key="SHA256:a b"), "bad key fingerprint"),
        (encode("ls").replace("x6c73", "ls"), "bad command encoding"),
        (encode("ls").replace("x6c73", "x6c7"), "bad command encoding"),
        (encode("ls").replace("x6c73", "x6C73"), "bad command encoding"),
        (encode("ls").replace("x6c73", "x6c7g"), "bad command encoding"),
    ],
)
def test_a_malformed_line_is_refused_with_its_reason(line, reason):
    with pytest.raises(ParseError, match=reason) as caught:
        capture.decode_record(line, lineno=7, source="capture.log")

    assert str(caught.value).startswith("capture.log:7: ")


def test_bad_lines_are_reported_and_the_good_ones_kept(tmp_path):
    log = tmp_path / "capture.log"
    log.write_text(encode("one") + "garbage\n" + encode("two") + encode("cut").rstrip("\n"))

    read = capture.read_log(log)

    assert [r.command for r in read.records] == ["one", "two"]
    assert [r.lineno for r in read.records] == [1, 3]
    assert len(read.bad_lines) == 2
    assert "log:2: not a keyforge capture record" in read.bad_lines[0]
    assert "log:4: incomplete record" in read.bad_lines[1]


def test_the_latest_record_is_the_last_one(tmp_path):
    log = tmp_path / "capture.log"
    log.write_text(encode("first") + encode("second", key=OTHER) + encode("third"))
    read = capture.read_log(log)

    assert capture.latest_record(read).command == "third"
    assert capture.latest_record(read, OTHER).command == "second"
    assert capture.latest_record(read, KEY).command == "third"


def test_a_missing_log_says_how_to_make_one(tmp_path):
    with pytest.raises(capture.CaptureError, match=r"no capture log at .*capture start"):
        capture.read_log(tmp_path / "capture.log")


def test_an_empty_log_says_to_push_once(tmp_path):
    log = tmp_path / "capture.log"
    log.write_text("")

    with pytest.raises(capture.CaptureError, match="holds no record yet: push once"):
        capture.latest_record(capture.read_log(log))


def test_a_capture_for_another_key_is_refused(tmp_path):
    log = tmp_path / "capture.log"
    log.write_text(encode("rsync --server -a . /x", key=OTHER))

    with pytest.raises(capture.CaptureError, match=f"is for key {OTHER}, not {KEY}"):
        capture.latest_record(capture.read_log(log), KEY)


def test_key_id_matches_ssh_keygen_format():
    blob = "AAAAC3NzaC1lZDI1NTE5AAAAIA99e4w4N2v+R70Lqw2rv2+GcJGHoCiQW3RJibF+KIVm"

    assert capture.key_id(blob) == KEY


def test_the_forced_command_runs_the_recorder_with_the_key():
    command = capture.recorder_command(Path("/home/foo/.ssh/keyforge/capture-recorder"), KEY)

    assert command == f"/home/foo/.ssh/keyforge/capture-recorder {KEY}"


def test_the_recorder_template_quotes_the_log_path():
    script = capture.render_recorder(Path("/home/o'brien/.ssh/keyforge/capture.log"))

    assert "log='/home/o'\"'\"'brien/.ssh/keyforge/capture.log'\n" in script
    assert script.startswith("#!/bin/sh\n")
