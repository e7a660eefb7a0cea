"""Capture and the gate read an ``rsync --server`` command through one reader, so whatever text
arrives, they see the same words or both refuse it: a command 'install --from-capture --gate'
takes from the one is never read otherwise by the other."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from keyforge.receiver import capture, gate

# What a word can be made of: letters, every character a shell or rsync treats specially, the
# quotes and escapes, a non-printing character, a control character.
PIECES = st.sampled_from(
    [
        "a", "b", "/", ".", "~", "-", "=", ":", "#", "%", ";", "&", "|", "<", ">", "(", ")",
        "$", "`", "*", "?", "[", "]", "{", "}", "!", "'", '"', "\\", "\\ ", "\\*", "\\]",
        "'a b'", '"a b"', "\t", "\n", "\x7f", "\u200b", "\xa0", "é",
    ]
)  # fmt: skip
WORD = st.lists(PIECES, min_size=1, max_size=8).map("".join)
FORMS = st.sampled_from(
    [
        "rsync --server -logDtprze.iLsfxCIvu --delete . {}",  # the destination
        "rsync --server -logDtprze.iLsfxCIvu --backup-dir={} . srvbackups/",  # an option's path
        "rsync --server -r --link-dest {} . srvbackups/",  # the split idiom
    ]
)


def _gate_words(command: str) -> list[str] | None:
    try:
        return [word.text for word in gate.split_command(command)]
    except gate.GateRefusalError:
        return None


def _ssh_spacing(command: str) -> bool:
    """Whether the blanks are the single spaces ssh joins words with: capture also refuses
    others (rsync writes none), where the gate lets a shell's reading collapse them."""
    words = gate.split_command(command)
    return " ".join(word.raw for word in words) == command


def _capture_words(command: str) -> list[str] | None:
    try:
        return list(capture.parse_server_command(command).texts)
    except capture.NotRsyncServerError:
        return None


@settings(max_examples=600, deadline=None)
@given(FORMS, WORD)
def test_capture_and_the_gate_read_the_same_words_or_both_refuse(form: str, word: str) -> None:
    command = form.format(word)
    gate_words = _gate_words(command)
    capture_words = _capture_words(command)
    if gate_words is None:
        assert capture_words is None, command
        return
    # the gate's words in the form's shape: one word where the form holds one, and (for the
    # split idiom) a value rsync cannot read as an option, a rule both sides share
    shape = form.split(" ")
    at = next(i for i, part in enumerate(shape) if "{}" in part)
    shaped = len(gate_words) == len(shape) and _ssh_spacing(command)
    if shaped and shape[at - 1] == "--link-dest":
        shaped = not (gate_words[at].startswith("-") or gate_words[at] == ".")
    if shaped:
        assert capture_words == gate_words, command
    else:
        assert capture_words is None, command


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=120))
def test_a_receive_capture_accepts_is_one_the_gate_reads_word_for_word(command: str) -> None:
    try:
        server = capture.parse_server_command(command)
    except capture.NotRsyncServerError:
        return
    if server.sender:
        return  # a pull's sources may hold globs; the gate refuses every pull anyway
    assert _gate_words(command) == list(server.texts)
