"""Whatever the times and the config's name, --list reads back what --install wrote."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from keyforge import schedule
from keyforge.config import parse

KEYFORGE = ["/usr/local/bin/keyforge"]

times = st.tuples(st.integers(0, 23), st.integers(0, 59)).map(lambda hm: f"{hm[0]:02d}:{hm[1]:02d}")
names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,20}", fullmatch=True)
dirs = st.from_regex(r"/[a-z0-9 %$]{1,12}", fullmatch=True)


@settings(max_examples=60, deadline=None)
@given(
    backup_at=times,
    sync_at=times,
    name=names,
    directory=dirs,
    kind=st.sampled_from([schedule.CRON, schedule.SYSTEMD]),
)
def test_list_reads_back_each_job_and_the_config_that_installed_it(
    backup_at: str, sync_at: str, name: str, directory: str, kind: str
) -> None:
    if backup_at == sync_at:
        return  # refused on purpose (test_schedule covers it)
    config = parse(
        {
            "backup": {"directory": "/mnt/b"},
            "schedule": {"backup_at": backup_at, "sync_at": sync_at, "name": name},
        }
    )
    path = Path(directory) / "some.config.toml"
    jobs = schedule.jobs_for(config, path, KEYFORGE)
    with tempfile.TemporaryDirectory() as dest:
        files = schedule.rendered_files(kind, config.schedule, jobs, Path(dest))
        schedule.apply(schedule.plan_install(files))
        found = schedule.installed_sets(Path(dest))
    assert {item.name for item in found} == {jobs.name}
    assert {item.config for item in found} == {str(path)}
    read = sorted(job for item in found for job in item.jobs)
    assert read == sorted([("backup", backup_at), ("sync", sync_at)])
