"""The live displays against the real programs: the backup's estimated total from a real
previous archive (or the source's bytes), and rsync's --info=progress2 output as rsync prints
it, read while it runs."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

from keyforge.config import Config, parse
from keyforge.infra import runner
from keyforge.sender import backup, progress, sync


def _write_config(tmp_path: Path, src: Path) -> Config:
    return parse(
        {
            "general": {"host": "server1"},
            "backup": {
                "sources": [str(src)],
                "directory": str(tmp_path / "backups"),
                "nice": 0,
                "ionice": "none",
                "full_every": 7,
            },
        }
    )


def test_the_total_is_the_previous_archive_of_the_same_kind_else_the_sources_bytes(
    tmp_path: Path,
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(300_000))
    config = _write_config(tmp_path, src)
    # no archive yet: what du would count
    assert progress.estimate_totals(config, force_full=False) == {str(src): 300_000}
    backup.run_backup(config)
    [master] = backup.scan_archives(config)
    size = (config.backup_dir / master.name).stat().st_size
    assert progress.estimate_totals(config, force_full=True) == {str(src): size}
    # the next run is an incremental and none was made yet: du again
    assert progress.estimate_totals(config, force_full=False) == {str(src): 300_000}


def test_real_rsync_progress2_output_is_read(tmp_path: Path) -> None:
    rsync = shutil.which("rsync")
    assert rsync is not None, "rsync is needed"
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(os.urandom(2_000_000))
    (src / "b").write_bytes(os.urandom(1_000_000))
    out = io.StringIO()
    display = progress.SyncDisplay("local", out)
    argv = sync.with_progress([rsync, "-a", "--stats", f"{src}/", str(tmp_path / "dst")])
    result = runner.run_streaming(argv, display.feed)
    assert result.returncode == 0
    assert display.last is not None
    assert display.last.bytes == 3_000_000
    assert display.last.percent == 100
    assert sync.parse_bytes_sent(result.stdout.decode()) is not None  # --stats still read
