"""keyforge's authorized_keys parser and the real sshd agree, line by line.

Each case of tests/data/sshd_line_verdicts.json is an options prefix; with a key appended it is
written as foo's whole authorized_keys (directly: keyforge would refuse the invalid ones), and
the key tries to log in running "echo kf-ok" (the table's command= cases echo it too). sshd's
verdict is whether that printed kf-ok; keyforge's is whether parse_line accepts the line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from keyforge.errors import ParseError
from keyforge.ssh.authorized_keys import parse_line

pytestmark = pytest.mark.docker

TABLE = Path(__file__).resolve().parents[1] / "data" / "sshd_line_verdicts.json"
CASES = json.loads(TABLE.read_text(encoding="utf-8"))
MARK = "kf-ok"


def keyforge_accepts(line: str) -> bool:
    try:
        parse_line(line)
    except ParseError:
        return False
    return True


def sshd_accepts(lab, line: str) -> bool:
    lab.write_authorized_keys(line + "\n")
    result = lab.ssh(lab.sender, lab.ADMIN_KEY, "-n", f"foo@{lab.RECEIVER_IP}", f"echo {MARK}")
    return result.returncode == 0 and MARK in result.stdout


def test_the_table_has_both_verdicts():
    verdicts = {case["accepted"] for case in CASES}
    assert verdicts == {True, False}


@pytest.mark.parametrize(
    "case", CASES, ids=[f"{i:02d}-{case['options'][:40]}" for i, case in enumerate(CASES)]
)
def test_keyforge_and_sshd_give_the_same_verdict(lab, keys, case):
    options = case["options"]
    line = f"{options} {keys.admin_public}" if options else keys.admin_public

    by_sshd = sshd_accepts(lab, line)
    by_keyforge = keyforge_accepts(line)

    expected = "accepted" if case["accepted"] else "refused"
    assert by_sshd == case["accepted"], f"sshd disagrees with the table ({expected}): {case}"
    assert by_keyforge == by_sshd, f"keyforge disagrees with sshd ({expected}): {case}"
