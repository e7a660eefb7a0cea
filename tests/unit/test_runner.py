"""runner: how a missing program is reported."""

from __future__ import annotations

import fcntl
import sys
from pathlib import Path

import pytest

from keyforge.errors import CommandError
from keyforge.infra import runner


def test_a_missing_program_behind_nice_is_named_plainly_not_through_nice() -> None:
    argv = runner.wrap_priority(["keyforge-no-such-program", "-c"], runner.Priority(nice=10))
    with pytest.raises(CommandError) as caught:
        runner.run_pipe(["true"], argv)
    assert str(caught.value) == "keyforge-no-such-program: command not found"


def test_a_missing_program_is_named_plainly() -> None:
    with pytest.raises(CommandError) as caught:
        runner.run(["keyforge-no-such-program"])
    assert str(caught.value) == "keyforge-no-such-program: command not found"


# what the second program of a chain sees on its stdin: the size of the pipe's buffer
_PIPE_SIZE_OF_STDIN = "import fcntl, sys; sys.stdin.buffer.read(); print(fcntl.fcntl(0, 1032))"


def test_the_pipe_between_two_programs_holds_a_mebibyte(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with out.open("wb") as handle:
        first, second = runner.run_chain(
            [["printf", "x"], [sys.executable, "-c", _PIPE_SIZE_OF_STDIN]], stdout=handle
        )
    assert (first.returncode, second.returncode) == (0, 0)
    assert int(out.read_text()) == runner.PIPE_SIZE == 1 << 20


def test_the_pipe_to_the_caller_holds_a_mebibyte_too() -> None:
    with runner.open_chain([["printf", "x"]]) as chain:
        size = fcntl.fcntl(chain.stdout.fileno(), 1032)  # F_GETPIPE_SZ
        assert chain.stdout.read() == b"x"
    assert size == runner.PIPE_SIZE


def test_a_pipe_that_cannot_widen_still_works(tmp_path: Path) -> None:
    target = tmp_path / "plain-file"
    with target.open("wb") as handle:
        runner.widen_pipe(handle.fileno())  # not a pipe: refused, silently
        handle.write(b"still writable")
    assert target.read_bytes() == b"still writable"
