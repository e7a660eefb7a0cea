"""runner: how a missing program is reported."""

from __future__ import annotations

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
