"""The node_exporter textfile-collector file (pure): per job and target, the last start,
success and failure as Unix timestamps, the last run's duration, exit code and bytes, the
archive count, and a run counter. Rendered from the run log, so it says what the log says;
written by atomic rename, so the collector never reads half a file.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from keyforge.monitor.runs import RunRecord

PREFIX = "keyforge"

# (name, type, help): the metrics, in the order the file lists them
METRICS = (
    ("last_start_timestamp_seconds", "gauge", "When the job's last run started."),
    ("last_success_timestamp_seconds", "gauge", "When the job's last successful run ended."),
    ("last_failure_timestamp_seconds", "gauge", "When the job's last failed run ended."),
    ("last_duration_seconds", "gauge", "How long the job's last run took."),
    ("last_exit_code", "gauge", "The exit code of the job's last run (0: success)."),
    ("last_written_bytes", "gauge", "Bytes the last backup wrote into archives."),
    ("last_sent_bytes", "gauge", "Bytes the last sync sent."),
    ("archives", "gauge", "Archives in the backup directory after the last backup."),
    ("runs_total", "counter", "Runs of the job, by result."),
)
BYTES_METRIC = {"backup": "last_written_bytes", "sync": "last_sent_bytes"}


@dataclass
class _Series:
    start: float = 0.0
    success: float | None = None
    failure: float | None = None
    duration: float = 0.0
    exit_code: int = 0
    bytes: int | None = None
    archives: int | None = None
    runs: dict[str, int] = field(default_factory=lambda: {"success": 0, "failure": 0})


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".") if isinstance(value, float) else str(value)


def series(records: Iterable[RunRecord]) -> dict[tuple[str, str], _Series]:
    """Each (job, target)'s figures, from every run in order."""
    out: dict[tuple[str, str], _Series] = {}
    for record in sorted(records, key=lambda r: r.end):
        targets = record.targets or ()
        pairs = [(t.target, t.ok, t.bytes, t.archives) for t in targets]
        if not pairs:
            pairs = [("", record.ok, None, None)]
        for target, target_ok, nbytes, archives in pairs:
            s = out.setdefault((record.job, target), _Series())
            s.start = record.start.timestamp()
            s.duration = record.duration
            # a run's only target fails with the run; of several, each says for itself
            ok = (target_ok and record.ok) if len(pairs) == 1 else target_ok
            s.exit_code = 0 if ok else (record.exit_code or 1)
            if ok:
                s.success = record.end.timestamp()
            else:
                s.failure = record.end.timestamp()
            s.runs["success" if ok else "failure"] += 1
            if nbytes is not None:
                s.bytes = nbytes
            if archives is not None:
                s.archives = archives
    return out


def render(records: Iterable[RunRecord]) -> str:
    found = series(records)
    values: dict[str, list[tuple[str, float | int]]] = {name: [] for name, _, _ in METRICS}
    for (job, target), s in sorted(found.items()):
        labels = f'job="{_label(job)}",target="{_label(target)}"'
        values["last_start_timestamp_seconds"].append((labels, s.start))
        if s.success is not None:
            values["last_success_timestamp_seconds"].append((labels, s.success))
        if s.failure is not None:
            values["last_failure_timestamp_seconds"].append((labels, s.failure))
        values["last_duration_seconds"].append((labels, s.duration))
        values["last_exit_code"].append((labels, s.exit_code))
        if s.bytes is not None and job in BYTES_METRIC:
            values[BYTES_METRIC[job]].append((labels, s.bytes))
        if s.archives is not None:
            values["archives"].append((labels, s.archives))
        for result, count in s.runs.items():
            values["runs_total"].append((f'{labels},result="{result}"', count))
    lines = []
    for name, kind, help_text in METRICS:
        if not values[name]:
            continue
        full = f"{PREFIX}_{name}"
        lines += [f"# HELP {full} {help_text}", f"# TYPE {full} {kind}"]
        lines += [f"{full}{{{labels}}} {_number(value)}" for labels, value in values[name]]
    return "\n".join(lines) + "\n" if lines else ""
