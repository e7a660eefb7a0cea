"""A job run with its monitors around it: the start ping, then at the end the run log's line,
the system log's line, the Prometheus file and the end pings.

The start ping goes out on a thread while the job works, so a slow monitor costs the job
nothing then; at the end the start is waited for and the end requests sent, all within one
``[monitor] timeout``. So a monitor that never answers delays a run by at most that timeout,
and whatever goes wrong with monitoring (a monitor down, a log that cannot be written) is
reported as a warning and in the run log, never as the job's failure.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from keyforge.config import Config
from keyforge.errors import INTERRUPTED, KeyforgeError, UsageError
from keyforge.infra import fsutil, http, journal
from keyforge.monitor import pings, prometheus, runs

PROMETHEUS_MODE = 0o644  # node_exporter runs as its own user


def _now() -> datetime:
    return datetime.now(UTC)


@dataclasses.dataclass
class Effects:
    """The outside world a monitored run touches, replaceable in tests."""

    send: Callable[..., list[http.Outcome]] = http.send_all
    log_run: Callable[..., str] = journal.log_run
    now: Callable[[], datetime] = _now
    clock: Callable[[], float] = time.monotonic
    warn: Callable[[str], None] = lambda message: None


def exit_code_of(exc: BaseException | None) -> int:
    """The exit code the command ends with, from what ended the job."""
    if exc is None:
        return 0
    if isinstance(exc, KeyforgeError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return INTERRUPTED
    code = getattr(exc, "exit_code", None)  # typer.Exit, click's exits
    if isinstance(code, int):
        return code
    if isinstance(exc, SystemExit):
        return exc.code if isinstance(exc.code, int) else 1
    return 1


class JobRun:
    """``with JobRun(config, "backup") as run: ...``; ``run.note(line)`` adds to the log tail,
    ``run.add(TargetResult(...))`` records what the job did for a target."""

    def __init__(
        self,
        config: Config,
        job: str,
        effects: Effects | None = None,
        *,
        default_target: str = "local",
    ) -> None:
        self.config = config
        self.job = job
        # what a run that stopped before naming any target counts under
        self.default_target = default_target
        self.effects = effects or Effects()
        self.run_id = str(uuid.uuid4())
        self.lines: list[str] = []
        self.targets: list[runs.TargetResult] = []
        self.message = ""
        self.problems: list[str] = []
        self.record: runs.RunRecord | None = None
        self._start = self.effects.now()
        self._starter: threading.Thread | None = None
        self._start_outcomes: list[http.Outcome] = []

    # --- what the job tells ----------------------------------------------------------------

    def note(self, line: str) -> None:
        self.lines.append(line)

    def add(self, result: runs.TargetResult) -> None:
        self.targets.append(result)

    # --- around the job --------------------------------------------------------------------

    def __enter__(self) -> JobRun:
        self._start = self.effects.now()
        requests = pings.start_requests(self.config.monitor, self.job, self.run_id)
        if requests:
            # the start thread gets the whole budget; the end waits for it within its own
            deadline = self.effects.clock() + self.config.monitor.timeout

            def send() -> None:
                self._start_outcomes = self.effects.send(
                    requests, deadline=deadline, retries=self.config.monitor.retries
                )

            self._starter = threading.Thread(target=send, name="keyforge-ping", daemon=True)
            self._starter.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        code = exit_code_of(exc)
        if exc is not None and not self.message:
            self.message = str(exc) if isinstance(exc, KeyforgeError) else type(exc).__name__
        self.finish(code)

    def finish(self, exit_code: int) -> runs.RunRecord:
        monitor = self.config.monitor
        deadline = self.effects.clock() + monitor.timeout
        secrets = pings.monitor_secrets(monitor)
        message = pings.scrub(self.message, secrets)
        record = runs.RunRecord(
            job=self.job,
            host=self.config.host,
            run_id=self.run_id,
            start=self._start,
            end=self.effects.now(),
            exit_code=exit_code,
            message=message,
            targets=tuple(self.targets)
            or (runs.TargetResult(self.default_target, exit_code == 0, message=message),),
            log_tail=pings.tail([*self.lines, *([message] if message else [])], secrets),
        )
        if self._starter is not None:
            self._starter.join(max(0.0, deadline - self.effects.clock()))
            if self._starter.is_alive():
                self.problems.append(f"{self.job}_ping start: no answer within the timeout")
        outcomes = [*self._start_outcomes]
        outcomes += self.effects.send(
            pings.finish_requests(monitor, record), deadline=deadline, retries=monitor.retries
        )
        for outcome in outcomes:
            if not outcome.ok:
                self.problems.append(
                    f"{outcome.request.label}: {outcome.error} "
                    f"(after {outcome.attempts} attempt(s))"
                )
        # the log says what the monitors did not hear
        record = dataclasses.replace(record, monitor_problems=tuple(self.problems))
        self.record = record
        log_path = runs.run_log_path(self.config)
        self._guard("the run log", lambda: runs.append(log_path, record))
        if monitor.prometheus_textfile:
            self._guard("the Prometheus file", lambda: self._write_prometheus(log_path))
        for problem in self.problems:
            self.effects.warn(f"monitor: {problem}")
        self._log_line(record)
        return record

    # --- helpers ----------------------------------------------------------------------------

    def _guard(self, what: str, step: Callable[[], None]) -> None:
        try:
            step()
        except KeyforgeError as err:
            self.problems.append(f"{what}: {err}")

    def _write_prometheus(self, log_path: Path) -> None:
        text = prometheus.render(runs.read(log_path))
        path = Path(self.config.monitor.prometheus_textfile)
        fsutil.atomic_write(path, text.encode(), mode=PROMETHEUS_MODE, keep_owner=False)

    def _log_line(self, record: runs.RunRecord) -> None:
        summary = record.summary()
        if self.problems:
            summary += f" (monitor: {'; '.join(self.problems)})"
        fields = {
            "KEYFORGE_JOB": record.job,
            "KEYFORGE_RUN_ID": record.run_id,
            "KEYFORGE_EXIT_CODE": str(record.exit_code),
            "KEYFORGE_DURATION_SECONDS": f"{record.duration:.3f}",
        }
        priority = journal.INFO if record.ok else journal.ERR
        try:
            self.effects.log_run(summary, priority, fields)
        except OSError as err:
            self.effects.warn(f"monitor: the system log: {err}")


# --- systemd's OnFailure= ------------------------------------------------------------------

UNIT_PREFIX = "keyforge-"
UNIT_SUFFIX = ".service"
# a failure keyforge logged itself this recently is the one systemd reports: not twice
ALREADY_REPORTED_SECONDS = 600


def job_of_unit(unit: str) -> str | None:
    """``keyforge-backup.service`` (or another set's ``keyforge-drive-backup.service``) ->
    ``backup``; None for a unit that is no keyforge job."""
    if not (unit.startswith(UNIT_PREFIX) and unit.endswith(UNIT_SUFFIX)):
        return None
    # the set's name may hold dashes of its own; the job is always the last word
    job = unit[len(UNIT_PREFIX) : -len(UNIT_SUFFIX)].rsplit("-", 1)[-1]
    return job if job in ("backup", "sync", "snapshot", "drill", "freshness") else None


def unit_failure(unit: str, environ: dict[str, str]) -> tuple[int, str]:
    """The exit code and the words for a unit systemd saw fail, from the MONITOR_* variables
    it gives an OnFailure= unit (systemd 251 and later)."""
    status = environ.get("MONITOR_EXIT_STATUS", "")
    code = int(status) if status.isdigit() and int(status) > 0 else 1
    details = [
        environ.get(name, "")
        for name in ("MONITOR_SERVICE_RESULT", "MONITOR_EXIT_CODE", "MONITOR_EXIT_STATUS")
    ]
    said = ", ".join(d for d in details if d)
    return code, f"systemd: {unit} failed" + (f" ({said})" if said else "")


def already_reported(config: Config, job: str, now: datetime) -> bool:
    """keyforge itself logged (and pinged) this job's failure moments ago."""
    try:
        last = runs.last_by_job(runs.read(runs.run_log_path(config))).get(job)
    except KeyforgeError:
        return False
    if last is None or last.ok:
        return False
    return (now - last.end).total_seconds() <= ALREADY_REPORTED_SECONDS


def report_unit_failure(
    config: Config,
    unit: str,
    environ: dict[str, str],
    journal_lines: list[str],
    effects: Effects | None = None,
) -> runs.RunRecord | None:
    """What ``keyforge notify`` does: the failure ping, the webhook and the run log's line for
    a job that ended without saying so itself. None when keyforge already had."""
    job = job_of_unit(unit)
    if job is None:
        raise UsageError(f"{unit!r} is not a keyforge job's unit (keyforge-JOB.service)")
    effects = effects or Effects()
    if already_reported(config, job, effects.now()):
        return None
    code, message = unit_failure(unit, environ)
    run = JobRun(config, job, effects)
    run.message = message
    for line in journal_lines:
        run.note(line)
    return run.finish(code)
