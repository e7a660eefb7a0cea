"""The systemd units keyforge schedules, as systemd itself judges them: 'systemd-analyze
verify' accepts them without a word, 'systemd-analyze security' rates every job unit's
exposure low (it was 9.6, "UNSAFE", before the hardening), and each job names the notifier in
OnFailure=."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from keyforge import schedule
from keyforge.config import parse

# what systemd-analyze rates the hardened units at most (0 safe ... 10 unsafe)
MAX_EXPOSURE = 3.0
_SCORE_RE = re.compile(r"Overall exposure level for \S+: ([0-9.]+)")
SENDER = {
    "backup": {"directory": "/srv/backups/server1"},
    "monitor": {"log": "/var/log/k/r.log"},
    "drill": {},
}
RECEIVER = {
    "snapshot": {"source": "/home/foo/srvbackups", "directory": "/var/backups/snaps"},
    "monitor": {"prometheus_textfile": "/var/lib/prometheus/node-exporter/keyforge.prom"},
    "drill": {"scratch": "/var/tmp/drill"},
}


def _analyze() -> str:
    found = shutil.which("systemd-analyze")
    assert found is not None, "systemd-analyze (Debian package systemd) is needed"
    return found


def _units(directory: Path, sections: dict[str, dict[str, object]]) -> dict[str, Path]:
    config = parse(sections)
    # ExecStart must name an executable that exists: the running python stands in
    jobs = schedule.jobs_for(config, Path("/etc/keyforge/keyforge.toml"), [sys.executable])
    paths = {}
    for name, text in schedule.render_systemd(config.schedule, jobs).items():
        path = directory / name
        path.write_text(text)
        paths[name] = path
    return paths


def _exposure(unit: Path) -> float:
    result = subprocess.run(
        [_analyze(), "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    match = _SCORE_RE.search(result.stdout + result.stderr)
    assert match is not None, result.stdout + result.stderr
    return float(match.group(1))


def _unhardened(text: str) -> str:
    """The unit as it was before the hardening: the included block left out."""
    start = text.index("# Hardening:")
    return text[:start]


@pytest.mark.parametrize("sections", [SENDER, RECEIVER], ids=["sender", "receiver"])
def test_systemd_analyze_verify_accepts_every_unit(
    tmp_path: Path, sections: dict[str, dict[str, object]]
) -> None:
    paths = _units(tmp_path, sections)
    # a template unit is verified as an instance, the name OnFailure= gives it
    template = paths.pop(schedule.NOTIFY_UNIT_NAME)
    instance = tmp_path / "keyforge-notify@keyforge-backup.service.service"
    instance.write_text(template.read_text())
    result = subprocess.run(
        [_analyze(), "verify", *map(str, [*paths.values(), instance])],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


@pytest.mark.parametrize(
    ("sections", "job"),
    [
        (SENDER, "backup"),
        (SENDER, "sync"),
        (SENDER, "drill"),
        (RECEIVER, "snapshot"),
        (RECEIVER, "freshness"),
        (RECEIVER, "drill"),
    ],
)
def test_every_job_unit_is_rated_low_and_was_not_before(
    tmp_path: Path, sections: dict[str, dict[str, object]], job: str
) -> None:
    unit = _units(tmp_path, sections)[f"keyforge-{job}.service"]
    text = unit.read_text()
    assert "OnFailure=keyforge-notify@%n.service" in text
    assert _exposure(unit) <= MAX_EXPOSURE
    before = tmp_path / "before" / unit.name
    before.parent.mkdir()
    before.write_text(_unhardened(text))
    assert _exposure(before) > 9.0  # the same check rates the unhardened unit unsafe


def test_the_notifier_is_hardened_and_never_notifies_about_itself(tmp_path: Path) -> None:
    template = _units(tmp_path, SENDER)[schedule.NOTIFY_UNIT_NAME]
    text = template.read_text()
    assert "\nOnFailure=" not in text  # a failing notifier must not start itself again
    assert "--unit %i" in text
    instance = tmp_path / "keyforge-notify@keyforge-sync.service.service"
    instance.write_text(text)
    assert _exposure(instance) <= MAX_EXPOSURE


def test_each_job_may_write_only_its_own_directories(tmp_path: Path) -> None:
    units = _units(tmp_path, SENDER)
    backup = units["keyforge-backup.service"].read_text()
    assert "ProtectSystem=strict" in backup and "ProtectHome=read-only" in backup
    [line] = [ln for ln in backup.splitlines() if ln.startswith("ReadWritePaths=")]
    assert line.split("=", 1)[1].split() == [
        "-/srv/backups/server1",
        "-/srv/backups",
        "-/var/lib/keyforge",
        "-/var/log/k",
    ]
    sync = units["keyforge-sync.service"].read_text()
    assert "-/var/log" in sync  # the sync log's directory
    assert "CapabilityBoundingSet=CAP_DAC_READ_SEARCH CAP_DAC_OVERRIDE\n" in sync


def test_the_drill_writes_its_scratch_and_never_the_copy_it_reads(tmp_path: Path) -> None:
    drill = _units(tmp_path, RECEIVER)["keyforge-drill.service"].read_text()
    [line] = [ln for ln in drill.splitlines() if ln.startswith("ReadWritePaths=")]
    writable = line.split("=", 1)[1].split()
    assert "-/var/tmp/drill" in writable
    assert not any(p.startswith("-/home/foo/srvbackups") for p in writable)
    assert "\nOnFailure=keyforge-notify@%n.service\n" in drill
