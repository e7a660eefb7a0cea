"""A scheduled job's command under its monitors: the pings, the run log, the metrics and the
system log's line around it (``keyforge.monitor.job``), and every line it prints in the log
tail the monitors receive."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from keyforge.cli import output

if TYPE_CHECKING:
    from keyforge.config import Config
    from keyforge.monitor.job import JobRun


@contextlib.contextmanager
def monitored(
    config: Config, job: str, *, enabled: bool = True, default_target: str = "local"
) -> Iterator[JobRun | None]:
    """Run the block as ``job``; a dry run or a listing (``enabled`` false) is no run.
    ``default_target`` names what a run that failed before any target is counted under."""
    if not enabled:
        yield None
        return
    from keyforge.monitor.job import Effects, JobRun  # only real runs need it

    run = JobRun(config, job, Effects(warn=output.warn), default_target=default_target)
    with run, output.listening(run.note):
        yield run
