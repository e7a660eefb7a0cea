"""The rendered systemd units pass systemd's own checker, which warns about what it ignores."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from keyforge import schedule
from keyforge.config import parse


def _required() -> bool:
    return os.environ.get("CI", "").lower() == "true" or bool(
        os.environ.get("KEYFORGE_REQUIRE_DOCKER")
    )


@pytest.fixture(autouse=True)
def _systemd_analyze() -> None:
    """systemd-analyze checks the units: where the suite must be complete, its absence fails."""
    if shutil.which("systemd-analyze") is None:
        if _required():
            pytest.fail("systemd-analyze is required here (package systemd)")
        pytest.skip("systemd-analyze is not installed")


def _write_units(
    directory: Path,
    text_change: tuple[str, str] | None = None,
    sections: dict[str, dict[str, object]] | None = None,
) -> list[Path]:
    config = parse(sections or {"backup": {"directory": str(directory)}})
    # ExecStart must name an executable that exists, so the running python stands in
    jobs = schedule.jobs_for(config, Path("/etc/keyforge/keyforge.toml"), [sys.executable])
    paths = []
    for name, text in schedule.render_systemd(config.schedule, jobs, config.drill).items():
        changed = text.replace(*text_change) if text_change is not None else text
        path = directory / name
        path.write_text(changed)
        paths.append(path)
    return paths


def _verify(paths: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_systemd_analyze_verify_accepts_the_units_without_a_warning(tmp_path: Path) -> None:
    result = _verify(_write_units(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_the_check_notices_a_setting_systemd_would_ignore(tmp_path: Path) -> None:
    result = _verify(_write_units(tmp_path, ("Nice=10", "Nice=high")))
    assert "Failed to parse nice priority" in result.stderr


def test_systemd_analyze_verify_accepts_the_receiving_hosts_snapshot_units(tmp_path: Path) -> None:
    snapshot = {"source": str(tmp_path / "copy"), "directory": str(tmp_path / "snaps")}
    paths = _write_units(tmp_path, sections={"snapshot": snapshot})
    assert sorted(p.name for p in paths) == sorted(
        [*schedule.SNAPSHOT_UNIT_NAMES, *schedule.FRESHNESS_UNIT_NAMES, schedule.NOTIFY_UNIT_NAME]
    )
    result = _verify(paths)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_systemd_analyze_verify_accepts_a_second_configs_units(tmp_path: Path) -> None:
    config = parse({"backup": {"directory": str(tmp_path)}})
    jobs = schedule.jobs_for(config, Path("/etc/keyforge/drive.toml"), [sys.executable])
    paths = []
    for name, text in schedule.render_systemd(config.schedule, jobs).items():
        (tmp_path / name).write_text(text)
        paths.append(tmp_path / name)
    assert sorted(p.name for p in paths)[0] == "keyforge-drive-backup.service"
    result = _verify(paths)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


@pytest.mark.parametrize("host", ["sending server", "receiving host"])
def test_systemd_analyze_verify_accepts_the_monthly_drill_units(tmp_path: Path, host: str) -> None:
    if host == "sending server":
        sections: dict[str, dict[str, object]] = {"backup": {"directory": str(tmp_path)}}
    else:
        sections = {
            "snapshot": {"source": str(tmp_path / "copy"), "directory": str(tmp_path / "s")}
        }
    paths = _write_units(tmp_path, sections={**sections, "drill": {"day": 28, "at": "23:59"}})
    assert {"keyforge-drill.service", "keyforge-drill.timer"} <= {p.name for p in paths}
    result = _verify(paths)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    broken = _write_units(
        tmp_path,
        ("OnCalendar=*-*-28 23:59:00", "OnCalendar=*-*-28 25:59:00"),
        {**sections, "drill": {"day": 28, "at": "23:59"}},
    )
    assert "Failed to parse calendar specification" in _verify(broken).stderr
