"""Whole lines, each with the verdict a real sshd (OpenSSH 9.2) gave it.

tests/data/sshd_line_verdicts.json was checked against a running sshd with
tests/data/verify_sshd_verdicts.py; keyforge's parser must agree with every verdict.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from keyforge.errors import ParseError
from keyforge.ssh import authorized_keys as ak

DATA = Path(__file__).resolve().parent.parent / "data"
CASES = json.loads((DATA / "sshd_line_verdicts.json").read_text())
KEY_LINE = next(
    line
    for line in (DATA / "authorized_keys_fixture_keys.pub").read_text().splitlines()
    if line.startswith("ssh-ed25519 ")
)


def keyforge_accepts(line: str) -> bool:
    try:
        return ak.parse_line(line) is not None
    except ParseError:
        return False


def test_the_verdict_table_covers_both_verdicts_broadly() -> None:
    accepted = [case for case in CASES if case["accepted"]]
    assert len(accepted) >= 15
    assert len(CASES) - len(accepted) >= 15


@pytest.mark.parametrize("case", CASES, ids=[c["options"] or "no options" for c in CASES])
def test_keyforge_gives_the_verdict_sshd_gave(case: dict[str, object]) -> None:
    options = str(case["options"])
    line = f"{options} {KEY_LINE}" if options else KEY_LINE
    assert keyforge_accepts(line) is case["accepted"], case["why"]


@pytest.mark.parametrize("case", [c for c in CASES if not c["accepted"]], ids=lambda c: c["why"])
def test_a_refused_line_names_its_line_number_and_a_reason(case: dict[str, object]) -> None:
    text = f"# first line\n{case['options']} {KEY_LINE}\n"
    with pytest.raises(ParseError) as caught:
        ak.parse(text, source="authorized_keys")
    assert caught.value.lineno == 2
    assert str(caught.value).startswith("authorized_keys:2: ")
    assert caught.value.reason
