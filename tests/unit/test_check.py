"""keyforge check's reading of what each probe saw."""

from __future__ import annotations

import struct

from keyforge.infra.runner import Result
from keyforge.sender import check

TOKEN = "keyforge-probe-0123"


def _result(stdout: bytes = b"", stderr: str = "", code: int = 0) -> Result:
    return Result(("ssh",), code, stdout, stderr)


def test_an_rsync_greeting_is_a_little_endian_protocol_number() -> None:
    assert check.rsync_greeting(struct.pack("<i", 32)) == 32
    assert check.rsync_greeting(b"echo") is None
    assert check.rsync_greeting(b"\x20\x00") is None


def test_the_forced_rsync_answering_a_command_is_a_refusal() -> None:
    finding = check.read_command_probe("cmd", _result(struct.pack("<i", 31), code=12), TOKEN)
    assert finding.ok
    assert "protocol 31" in finding.saw


def test_the_token_in_the_output_means_the_command_ran() -> None:
    finding = check.read_command_probe("cmd", _result(f"{TOKEN}\n".encode()), TOKEN)
    assert not finding.ok
    assert "ran what was asked" in finding.saw


def test_another_forced_command_is_not_the_expected_rsync_server() -> None:
    finding = check.read_command_probe("cmd", _result(b"srvbackups\nword.c\n"), TOKEN)
    assert not finding.ok
    assert "'srvbackups\\\\nword.c\\\\n'" in finding.saw


def test_pty_and_forwarding_refusals_are_read_from_sshs_messages() -> None:
    assert check.read_pty_probe(_result(stderr="PTY allocation request failed on channel 0")).ok
    assert not check.read_pty_probe(_result()).ok
    refused = "channel 0: open failed: administratively prohibited: open failed"
    assert check.read_forward_probe(_result(stderr=refused, code=255)).ok
    opened = "channel 0: open failed: connect failed: Connection refused"
    assert not check.read_forward_probe(_result(stderr=opened, code=255)).ok


def test_a_key_that_cannot_log_in_is_a_connection_problem_not_a_finding() -> None:
    denied = _result(stderr="root@127.0.0.1: Permission denied (publickey).", code=255)
    assert "refused the key" in (check.connection_problem(denied) or "")
    wrong = _result(stderr="Host key verification failed.", code=255)
    assert "pinned" in (check.connection_problem(wrong) or "")
    assert check.connection_problem(_result(struct.pack("<i", 32), code=12)) is None
