"""restore and verify on a receiving host: nothing written into the synced copy, any user.

server1's backups are made by keyforge backup as root (root's files, another user's files) and
pushed into the copy with the sync's own rsync command; the copy then belongs to nobody, as it
belongs to foo, whom the backup key logs in as. Root runs restore and verify on it (as the
README says), and nobody, a real unprivileged user (setpriv), restores from it too.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keyforge import layout
from keyforge.cli import app
from keyforge.config import SyncConfig, parse
from keyforge.sender import backup, restore, sync

NOBODY = 65534

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("rsync", "zstd", "setpriv")),
    reason="needs root (owners, another user), rsync, zstd and setpriv",
)


def _chown_tree(top: Path, uid: int = NOBODY) -> None:
    os.chown(top, uid, uid)
    for root, dirs, files in os.walk(top):
        for name in dirs + files:
            os.chown(Path(root) / name, uid, uid, follow_symlinks=False)


def _listing(top: Path) -> dict[str, tuple[int, int, float]]:
    """Every name under ``top``, hidden ones included, with its inode, size and mtime."""
    found = {}
    for path in [top, *top.rglob("*")]:
        st = path.lstat()
        found[str(path.relative_to(top))] = (st.st_ino, st.st_size, st.st_mtime)
    return found


def _contents(top: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(top)): hashlib.sha256(p.read_bytes()).digest()
        for p in top.rglob("*")
        if p.is_file() and not p.is_symlink()
    }


@pytest.fixture
def world() -> Iterator[Path]:
    """A directory nobody can reach (pytest's tmp_path is root's alone)."""
    top = Path(tempfile.mkdtemp(prefix="keyforge-receiver-"))
    top.chmod(0o755)
    yield top
    shutil.rmtree(top)


@pytest.fixture
def receiver(world: Path) -> dict[str, Path]:
    """server1's backup of SRC pushed into COPY (nobody's); CFG: the receiving host's config."""
    src = world / "server1" / "etc"
    (src / "ssl").mkdir(parents=True)
    (src / "passwd").write_text("root:x:0:0\n")
    (src / "shadow").write_text("secret\n")
    (src / "shadow").chmod(0o600)
    (src / "ssl" / "alice.pem").write_text("alice's\n")
    os.chown(src / "ssl" / "alice.pem", 1001, 1002)
    (src / "localtime").symlink_to("/usr/share/zoneinfo/UTC")
    backups = world / "server1" / "backups"
    sender = parse(
        {
            "general": {"host": "server1"},
            "backup": {"sources": [str(src)], "directory": str(backups), "nice": 0},
        }
    )
    backup.run_backup(sender, now=dt.datetime(2026, 11, 23, 1, 15))
    copy = world / "srvbackups"
    copy.mkdir()
    tools = sync.Tools(rsync=shutil.which("rsync") or "rsync", ssh="ssh")
    target = sync.LocalTarget("pi", copy, require_mountpoint=False)
    subprocess.run(sync.rsync_argv(tools, backups, target, SyncConfig()), check=True)
    _chown_tree(copy)
    assert not layout.lock_path(copy).exists()  # sync never sends the lock
    cfg = world / "server1.toml"
    cfg.write_text(
        f'[general]\nhost = "server1"\n[backup]\nsources = ["{src}"]\ndirectory = "{copy}"\n'
    )
    cfg.chmod(0o644)
    return {"src": src, "copy": copy, "cfg": cfg, "world": world}


def _as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
    argv = ["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups"]
    return subprocess.run(
        [*argv, sys.executable, "-m", "keyforge", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd="/",
        env={**os.environ, "HOME": "/nonexistent"},
    )


def test_restore_and_verify_as_root_write_nothing_into_the_synced_copy(
    receiver: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = receiver["copy"]
    before = _listing(copy)
    targets: list[Path] = []
    real = restore.apply_chain

    def watched(config: object, archives: object, target: Path, *rest: object) -> None:
        targets.append(target)
        assert not target.is_relative_to(copy), f"restoring into the synced copy: {target}"
        real(config, archives, target, *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(restore, "apply_chain", watched)
    runner = CliRunner()
    cfg = str(receiver["cfg"])
    verified = runner.invoke(app, ["verify", "--config", cfg])
    assert verified.exit_code == 0, verified.output
    assert "verify ok: 1 archive(s)" in verified.output
    restored = runner.invoke(
        app, ["restore", "--config", cfg, "--source", str(receiver["src"]), "--to", f"{tmp_path}/r"]
    )
    assert restored.exit_code == 0, restored.output
    assert len(targets) == 2
    assert _listing(copy) == before  # no lock, no scratch, nothing
    assert _contents(tmp_path / "r") == _contents(receiver["src"])
    assert (tmp_path / "r" / "ssl" / "alice.pem").stat().st_uid == 1001  # root restores owners


def test_a_restore_as_an_unprivileged_user_after_roots_works_and_says_owners_are_not_restored(
    receiver: dict[str, Path],
) -> None:
    cfg = str(receiver["cfg"])
    assert CliRunner().invoke(app, ["verify", "--config", cfg]).exit_code == 0  # root's first
    home = receiver["world"] / "nobody"
    home.mkdir()
    os.chown(home, NOBODY, NOBODY)
    result = _as_nobody(
        "restore", "--config", cfg, "--source", str(receiver["src"]), "--to", f"{home}/etc"
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("warning: not running as root: owners are not restored")
    assert len(result.stderr.splitlines()) == 1
    assert f"restored {receiver['src']} into {home}/etc" in result.stdout
    assert _contents(home / "etc") == _contents(receiver["src"])
    assert {p.lstat().st_uid for p in (home / "etc").rglob("*")} == {NOBODY}
    assert ((home / "etc" / "shadow").stat().st_mode & 0o777) == 0o600


def test_verify_as_an_unprivileged_user_checks_all_but_owners(receiver: dict[str, Path]) -> None:
    before = _listing(receiver["copy"])
    result = _as_nobody("verify", "--config", str(receiver["cfg"]))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "owners are not compared" in result.stderr
    assert "verify ok: 1 archive(s) match their manifests and restore" in result.stdout
    assert _listing(receiver["copy"]) == before


def test_verify_with_a_scratch_directory_touches_nothing_else_in_it(
    receiver: dict[str, Path], tmp_path: Path
) -> None:
    scratch = tmp_path / "big-disk"
    scratch.mkdir()
    (scratch / "keep").write_text("someone else's\n")
    report = restore.run_verify(
        parse(
            {
                "general": {"host": "server1"},
                "backup": {
                    "sources": [str(receiver["src"])],
                    "directory": str(receiver["copy"]),
                },
            }
        ),
        scratch=scratch,
    )
    assert report.ok, report
    assert [p.name for p in scratch.iterdir()] == ["keep"]
    assert (scratch / "keep").read_text() == "someone else's\n"


def test_a_root_lock_an_older_run_left_in_the_copy_neither_blocks_nor_draws_the_scratch(
    receiver: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = receiver["copy"]
    stale = layout.lock_path(copy)
    stale.write_bytes(b"")
    stale.chmod(0o600)  # root's, as keyforge restore as root used to make it
    before = _listing(copy)
    real = restore.apply_chain

    def watched(config: object, archives: object, target: Path, *rest: object) -> None:
        assert not target.is_relative_to(copy), f"restoring into the synced copy: {target}"
        real(config, archives, target, *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(restore, "apply_chain", watched)
    verified = CliRunner().invoke(app, ["verify", "--config", str(receiver["cfg"])])
    assert verified.exit_code == 0, verified.output
    assert _listing(copy) == before
    home = receiver["world"] / "nobody"
    home.mkdir()
    os.chown(home, NOBODY, NOBODY)
    argv = ["restore", "--config", str(receiver["cfg"]), "--source", str(receiver["src"])]
    result = _as_nobody(*argv, "--to", f"{home}/etc")
    assert result.returncode == 0, result.stderr
    assert _contents(home / "etc") == _contents(receiver["src"])
