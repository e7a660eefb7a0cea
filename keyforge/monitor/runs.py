"""One job run as a record: what the run log holds (one JSON line per run), what ``keyforge
status`` judges and what the Prometheus file and the webhook are made of."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from keyforge.config import Config, state_dir
from keyforge.errors import FileError
from keyforge.infra import fsutil

SCHEMA = "keyforge-run/1"
RUN_LOG_NAME = "runs.log"


@dataclasses.dataclass(frozen=True)
class TargetResult:
    """What a run did for one target (a backup has one, "local"; a sync one per target)."""

    target: str
    ok: bool
    bytes: int | None = None
    archives: int | None = None
    message: str = ""


@dataclasses.dataclass(frozen=True)
class RunRecord:
    job: str
    host: str
    run_id: str
    start: datetime
    end: datetime
    exit_code: int
    message: str = ""
    targets: tuple[TargetResult, ...] = ()
    log_tail: str = ""
    # what the monitors did not hear (a ping that failed): the job itself is not affected
    monitor_problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def duration(self) -> float:
        return max(0.0, (self.end - self.start).total_seconds())

    def to_json(self, *, with_tail: bool = True) -> dict[str, Any]:
        document: dict[str, Any] = {
            "schema": SCHEMA,
            "job": self.job,
            "host": self.host,
            "run_id": self.run_id,
            "start": self.start.isoformat(timespec="seconds"),
            "end": self.end.isoformat(timespec="seconds"),
            "duration_seconds": round(self.duration, 3),
            "exit_code": self.exit_code,
            "ok": self.ok,
            "message": self.message,
            "targets": [dataclasses.asdict(t) for t in self.targets],
            "monitor_problems": list(self.monitor_problems),
        }
        if with_tail:
            document["log_tail"] = self.log_tail
        return document

    def summary(self) -> str:
        """The run as one line of words, for syslog and journald."""
        state = "ok" if self.ok else f"FAILED (exit {self.exit_code})"
        text = f"{self.job} {self.host}: {state} in {self.duration:.1f} s"
        return f"{text}: {self.message}" if self.message else text


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def from_json(document: object) -> RunRecord | None:
    """A run log line read back; None for anything that is not one (a torn line, another
    schema)."""
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        return None
    start, end = _time(document.get("start")), _time(document.get("end"))
    job, code = document.get("job"), document.get("exit_code")
    if start is None or end is None or not isinstance(job, str) or not isinstance(code, int):
        return None
    targets = []
    for item in document.get("targets") or ():
        if isinstance(item, dict) and isinstance(item.get("target"), str):
            targets.append(
                TargetResult(
                    target=item["target"],
                    ok=item.get("ok") is True,
                    bytes=item["bytes"] if isinstance(item.get("bytes"), int) else None,
                    archives=item["archives"] if isinstance(item.get("archives"), int) else None,
                    message=str(item.get("message", "")),
                )
            )
    return RunRecord(
        job=job,
        host=str(document.get("host", "")),
        run_id=str(document.get("run_id", "")),
        start=start,
        end=end,
        exit_code=code,
        message=str(document.get("message", "")),
        targets=tuple(targets),
        monitor_problems=tuple(str(p) for p in document.get("monitor_problems") or ()),
    )


def run_log_path(config: Config) -> Path:
    """[monitor] log, else runs.log in the state directory (outside the backup directory)."""
    if config.monitor.log:
        return Path(config.monitor.log)
    return state_dir(config) / RUN_LOG_NAME


def append(path: Path, record: RunRecord) -> None:
    """One line per run; a single O_APPEND write keeps concurrent lines whole. The log tail
    stays out: it went to the monitors, and the log is the record, not a transcript."""
    if not path.parent.is_dir():
        fsutil.ensure_private_dir(path.parent)
    data = (json.dumps(record.to_json(with_tail=False), sort_keys=True) + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, fsutil.PRIVATE_FILE)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    except OSError as err:
        raise FileError.from_os_error("append to", path, err) from err


def read(path: Path) -> list[RunRecord]:
    """Every run the log holds, oldest first; a missing log is no run yet."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    except OSError as err:
        raise FileError.from_os_error("read", path, err) from err
    records = []
    for line in text.splitlines():
        try:
            record = from_json(json.loads(line))
        except ValueError:
            continue
        if record is not None:
            records.append(record)
    return records


def last_by_job(records: Iterable[RunRecord]) -> dict[str, RunRecord]:
    """The newest run of each job (by its end time)."""
    newest: dict[str, RunRecord] = {}
    for record in records:
        found = newest.get(record.job)
        if found is None or record.end >= found.end:
            newest[record.job] = record
    return newest
