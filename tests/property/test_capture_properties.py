"""Round trips the capture code relies on, for any input hypothesis can think of."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from keyforge.receiver import capture
from keyforge.sender import capture_local

KEY = "SHA256:Csfupk9ZSMNx/NIcVmCNs8TBLc6tJfwyCJrLB38TvuM"
# what an environment variable can hold: any bytes but NUL, read the way keyforge reads them
commands = st.binary(max_size=300).map(
    lambda raw: raw.replace(b"\0", b"").decode("utf-8", "surrogateescape")
)


@given(commands)
def test_any_command_round_trips_through_a_record_and_stays_one_line(command):
    hexed = "x" + command.encode("utf-8", "surrogateescape").hex()
    line = f"{capture.RECORD_TAG}\t2024-01-01T00:00:00Z\t192.0.2.1\t{KEY}\t{hexed}\n"

    assert line.count("\n") == 1
    assert capture.decode_record(line).command == command


@given(st.lists(st.text(alphabet=st.characters(blacklist_characters="\0")), min_size=1))
def test_remote_shell_words_survive_quoting_and_rsyncs_splitting(words):
    text = " ".join(capture_local.quote_for_remote_shell(word) for word in words)

    assert capture_local.split_remote_shell(text) == words


# printable: keyforge refuses control characters in a command path, even escaped
@given(st.text(min_size=1).filter(lambda name: name.isprintable() and "/" not in name))
def test_an_escaped_home_is_one_safe_word(name):
    escaped = capture.shell_escape_path(f"/home/{name}")
    command = f"rsync --server -a . {escaped}/x"

    server = capture.parse_server_command(command)

    assert server.paths == (f"{escaped}/x",)
