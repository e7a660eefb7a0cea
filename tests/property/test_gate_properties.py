"""Whatever text arrives in SSH_ORIGINAL_COMMAND, the gate either refuses it with its own error
or allows a push whose destination lies inside the configured directory."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyforge.receiver import gate

HOME = Path("/nonexistent-keyforge-home/foo")
DIRECTORY = HOME / "srvbackups"
CONFIG = gate.GateConfig(str(DIRECTORY), home=str(HOME))

# Words that real commands and attacks are made of, so the search reaches deep into the parser.
PIECES = st.sampled_from(
    [
        "rsync", "--server", "--sender", "-logDtprze.iLsfxCIvu", "-e.", ".", "..", "/", "~",
        "~/", "srvbackups", "srvbackups/", "/etc", "--delete", "--backup-dir", "--backup-dir=",
        "--link-dest=", "-B", "-@", "1", "'", '"', "\\", " ", ";", "$", "`", "*", "#", "\n",
        "\t", "\x00", "é", "a b", "-s", "-K", "--files-from=", "--timeout", "=",
    ]
)  # fmt: skip
COMMANDS = st.one_of(
    st.text(max_size=200),
    st.lists(PIECES, max_size=25).map("".join),
    st.lists(st.one_of(PIECES, st.text(max_size=5)), max_size=12).map(
        lambda parts: "rsync --server -r . " + "".join(parts)
    ),
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(COMMANDS)
def test_any_text_is_refused_or_lands_inside_the_directory(command: str) -> None:
    decision = gate.judge(command, CONFIG)  # raises nothing: refusals are decisions
    if not decision.allowed:
        assert decision.reason
        return
    argv = decision.argv
    assert argv[:2] == (gate.DEFAULT_RSYNC, "--server")
    assert "--sender" not in argv
    assert "--munge-links" in argv
    destination = argv[-1]
    assert argv[-2] == "."
    assert os.path.isabs(destination)
    assert ".." not in destination.split("/")
    real = os.path.realpath(destination)
    assert real == str(DIRECTORY) or real.startswith(f"{DIRECTORY}/")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_split_command_raises_only_the_gates_refusal(command: str) -> None:
    try:
        words = gate.split_command(command)
    except gate.GateRefusalError:
        return
    for word in words:
        assert not any(ord(c) < 32 or ord(c) == 127 for c in word.text)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=40))
def test_a_quoted_word_reads_back_as_itself(text: str) -> None:
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        return
    quoted = "'" + text.replace("'", "'\\''") + "'"
    (word,) = gate.split_command(quoted)
    assert word.text == text
    assert not word.tilde
