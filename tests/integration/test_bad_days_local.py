"""The bad days of a sending server, for real: tar, zstd, rsync, a private sshd, tmpfs mounts.

An unmounted backup disk, a full disk, an empty or shrunk source, a push killed mid-file and a
receiver that cannot write part of the copy. Each must end with the history intact (on the
server and on the copy) and a clear, non-zero outcome. Mounting needs root.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sync_lab import Lab, locked_key_line, locked_receiver, make_backup_dir, run_keyforge, tree

from keyforge import config, layout
from keyforge.errors import ConfigError
from keyforge.infra import fsutil
from keyforge.sender import capture_local, status, sync

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root"),
]

NOBODY = 65534


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with locked_receiver(tmp_path_factory.mktemp("baddays") / "lab") as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh_copy(lab: Lab) -> Iterator[None]:
    yield
    if lab.copy.exists():
        fsutil.remove_tree(lab.copy)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A backup disk: a tmpfs mounted on tmp_path/disk, unmounted at the end if still there."""
    mount = tmp_path / "disk"
    mount.mkdir()
    _mount(mount, "16m")
    try:
        yield mount
    finally:
        if os.path.ismount(mount):
            subprocess.run(["umount", "-l", str(mount)], check=False)


def _mount(path: Path, size: str) -> None:
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True
    )


def _data(tmp_path: Path) -> list[Path]:
    sources = []
    for name in ("etc", "home"):
        source = tmp_path / "data" / name
        source.mkdir(parents=True)
        (source / f"{name}.conf").write_bytes(os.urandom(20000))
        sources.append(source)
    return sources


def _config_text(
    tmp_path: Path,
    sources: list[Path],
    directory: Path,
    *,
    target: dict[str, object] | None = None,
    backup_lines: tuple[str, ...] = (),
    sync_lines: tuple[str, ...] = (),
) -> Path:
    lines = [
        "[general]",
        'host = "server1"',
        "[backup]",
        f"sources = {json.dumps([str(s) for s in sources])}",
        f"directory = {json.dumps(str(directory))}",
        "full_every = 7",
        "nice = 0",
        'ionice = "none"',
        *backup_lines,
        "[sync]",
        f"log = {json.dumps(str(tmp_path / 'sync.log'))}",
        "retries = 0",
        *sync_lines,
    ]
    if target is not None:
        lines.append("[[targets]]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in target.items()]
    path = tmp_path / "keyforge.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _remote(lab: Lab, remote_path: str | None = None) -> dict[str, object]:
    target = lab.config().targets[0]
    values: dict[str, object] = {
        key: getattr(target, key)
        for key in ("name", "host", "port", "user", "key", "remote_path", "known_hosts")
    }
    if remote_path is not None:
        values["remote_path"] = remote_path
    return values


# --- 1 and 2: an unmounted backup disk ----------------------------------------------------------


def test_an_unmounted_disk_ends_with_the_offsite_copy_intact_and_a_failed_sync(
    lab: Lab, tmp_path: Path, disk: Path
) -> None:
    """The cron order on a day the disk is not mounted: backup makes a fresh history in the
    empty mount point, then sync finds manifests there and would mirror them with --delete."""
    sources = _data(tmp_path)
    path = _config_text(tmp_path, sources, disk / "backups" / "server1", target=_remote(lab))
    for command in ("backup", "sync"):
        done = run_keyforge(command, "--config", str(path))
        assert done.returncode == 0, done.stderr
    before = tree(lab.copy)
    assert len([n for n in before if n.endswith(".tar.zst")]) == 2

    subprocess.run(["umount", str(disk)], check=True)
    # the bad day comes a day later, not within the same second: rsync's quick check (size and
    # mtime to the second) would take a fresh manifest of the same size and second for the
    # offsite one and skip it
    time.sleep(1.05 - time.time() % 1)
    fresh = run_keyforge("backup", "--config", str(path))
    assert fresh.returncode == 0, fresh.stderr  # no require_mountpoint: a new history
    pushed = run_keyforge("sync", "--config", str(path))

    assert pushed.returncode != 0
    assert (
        "refusing to sync to offsite: the push would delete or overwrite 2 archive(s)"
        in pushed.stderr
    )
    assert "--accept-loss" in pushed.stderr
    assert tree(lab.copy) == before
    record = json.loads((tmp_path / "sync.log").read_text().splitlines()[-1])
    assert record["ok"] is False
    # the explicit override still works, for a disk that really was replaced
    forced = run_keyforge("sync", "--config", str(path), "--accept-loss")
    assert forced.returncode == 0, forced.stderr
    assert tree(lab.copy) == tree(disk / "backups" / "server1")


def test_require_mountpoint_refuses_an_unmounted_disk_in_one_line(
    tmp_path: Path, disk: Path
) -> None:
    sources = _data(tmp_path)
    directory = disk / "backups" / "server1"
    path = _config_text(tmp_path, sources, directory, backup_lines=("require_mountpoint = true",))
    first = run_keyforge("backup", "--config", str(path))
    assert first.returncode == 0, first.stderr

    subprocess.run(["umount", str(disk)], check=True)
    for args in ((), ("--dry-run",)):
        refused = run_keyforge("backup", "--config", str(path), *args)
        assert refused.returncode == 1
        assert refused.stderr == (
            f"keyforge: error: refusing to back up: {directory} does not exist, it would lie "
            "on the root filesystem (require_mountpoint = true); mount the backup disk\n"
        )
    assert list(disk.iterdir()) == []  # no new history was started

    # a directory that exists but sits on the root filesystem is refused just the same
    directory.mkdir(parents=True)
    refused = run_keyforge("backup", "--config", str(path))
    assert refused.returncode == 1
    assert "is not on a mounted filesystem" in refused.stderr
    assert list(directory.iterdir()) == []


def test_init_turns_require_mountpoint_on_for_a_directory_on_its_own_filesystem(
    disk: Path,
) -> None:
    mounted = config.render_default("server1", str(disk / "backups" / "server1"))
    assert f'\nrequire_mountpoint = "{disk}"\n' in mounted
    assert config.parse(_toml(mounted)).backup.require_mountpoint == str(disk)
    on_root = config.render_default("server1", "/var/backups-keyforge-nowhere/server1")
    assert "\n#require_mountpoint = false\n" in on_root
    assert not config.parse(_toml(on_root)).backup.require_mountpoint


def test_a_pinned_mount_point_refuses_a_disk_unmounted_under_another_filesystem(
    tmp_path: Path, disk: Path
) -> None:
    # /var on a filesystem of its own, the backup disk mounted at /var/backups: unmounted, the
    # directory falls onto /var's filesystem, which is not "/", so 'true' cannot tell
    inner = disk / "backups"
    inner.mkdir()
    _mount(inner, "16m")
    try:
        sources = _data(tmp_path)
        directory = inner / "server1"
        pinned = f'require_mountpoint = "{inner}"'
        path = _config_text(tmp_path, sources, directory, backup_lines=(pinned,))
        first = run_keyforge("backup", "--config", str(path))
        assert first.returncode == 0, first.stderr
    finally:
        subprocess.run(["umount", str(inner)], check=True)
    refused = run_keyforge("backup", "--config", str(path))
    assert refused.returncode == 1
    assert refused.stderr == (
        f"keyforge: error: refusing to back up: {directory} does not exist: nothing is "
        f"mounted on {inner}, it would lie on the filesystem of {disk} "
        f"(require_mountpoint = '{inner}'); mount the backup disk\n"
    )
    assert list(inner.iterdir()) == []  # no new history was started
    loose = _config_text(tmp_path, sources, directory, backup_lines=("require_mountpoint = true",))
    assert run_keyforge("backup", "--config", str(loose), "--dry-run").returncode == 0


def test_require_mountpoint_must_be_a_switch_or_an_absolute_path() -> None:
    with pytest.raises(ConfigError, match="require_mountpoint must be true, false or the disk"):
        config.parse({"backup": {"require_mountpoint": "mnt/backups"}})


def _toml(text: str) -> dict[str, object]:
    import tomllib  # noqa: PLC0415

    return tomllib.loads(text)


# --- 4: a full disk --------------------------------------------------------------------------


def test_a_full_disk_fails_that_source_tries_the_others_and_reports_all(tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    _mount(small, "2m")
    try:
        sources = _data(tmp_path)
        big = tmp_path / "data" / "var"
        big.mkdir()
        (big / "db").write_bytes(os.urandom(4 * 1024 * 1024))
        gone = tmp_path / "data" / "gone"
        ordered = [sources[0], big, gone, sources[1]]
        path = _config_text(tmp_path, ordered, small / "backups")
        result = run_keyforge("backup", "--config", str(path))
        assert result.returncode != 0
        error = result.stderr.splitlines()[-1]
        assert error.startswith("keyforge: error: backup failed for 2 of 4 source(s): ")
        assert "No space left on device" in error
        assert f"source {gone} does not exist" in error
        names = sorted(p.name for p in (small / "backups").iterdir())
        archives = [n for n in names if n.endswith(".tar.zst")]
        slugs = [layout.source_slug(str(s)) for s in sources]
        assert [a.split(".")[0] for a in archives] == [f"server1-{s}" for s in slugs]
        assert not [n for n in names if n.endswith(layout.PARTIAL_SUFFIX)]
        snapshots = [p.name for p in (small / "backups" / layout.SNAPSHOT_DIR).iterdir()]
        assert sorted(snapshots) == sorted(f"server1-{s}.snar" for s in slugs)
        # the manifest lists exactly what is there, and each listed archive is whole
        cfg = config.load(path)
        recorded = layout.read_manifests(cfg.backup_dir, "server1")
        assert sorted(recorded) == archives
        for name, entry in recorded.items():
            assert layout.hash_of_file(cfg.backup_dir / name) == entry["blake3"]
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


# --- 5: an empty or shrunk source -----------------------------------------------------------


def test_an_empty_source_warns_is_recorded_and_fails_status(tmp_path: Path) -> None:
    sources = _data(tmp_path)
    home = sources[1]
    path = _config_text(tmp_path, sources, tmp_path / "backups")
    assert run_keyforge("backup", "--config", str(path)).returncode == 0
    _mount(home, "1m")  # an empty tmpfs over /home, as on the bad day
    try:
        result = run_keyforge("backup", "--config", str(path))
        assert result.returncode == 0, result.stderr
        assert (
            f"warning: {home} is empty; if it is meant to be, add it to [backup] allow_empty"
            in (result.stderr)
        )
        cfg = config.load(path)
        shown = status.assess(cfg, _now(), 26.0)
        assert not shown.ok
        assert f"{home} is empty" in " ".join(status.lines(shown))
        said = run_keyforge("status", "--config", str(path))
        assert said.returncode != 0
        assert f"{home} is empty" in said.stdout

        quiet = run_keyforge("backup", "--config", str(path), "--allow-empty")
        assert quiet.returncode == 0, quiet.stderr
        assert "is empty" not in quiet.stderr
        assert status.assess(config.load(path), _now(), 26.0).ok
        allowed = _config_text(
            tmp_path, sources, tmp_path / "backups",
            backup_lines=(f"allow_empty = [{json.dumps(str(home))}]",),
        )  # fmt: skip
        silent = run_keyforge("backup", "--config", str(allowed))
        assert silent.returncode == 0, silent.stderr
        assert "is empty" not in silent.stderr
    finally:
        subprocess.run(["umount", "-l", str(home)], check=False)


def test_a_source_that_shrank_since_its_last_master_warns(tmp_path: Path) -> None:
    sources = _data(tmp_path)
    var = sources[0]
    (var / "db").write_bytes(os.urandom(400000))
    path = _config_text(tmp_path, sources, tmp_path / "backups")
    assert run_keyforge("backup", "--config", str(path)).returncode == 0
    (var / "db").unlink()
    result = run_keyforge("backup", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert f"warning: {var} holds 19.5 KB, 95% less than" in result.stderr
    assert "(shrink_warn_percent = 50)" in result.stderr
    # a new master is judged against the previous one too; once made, it is the new measure
    (var / "db").write_bytes(os.urandom(15000))
    again = run_keyforge("backup", "--config", str(path), "--full")
    assert f"warning: {var} holds 34.2 KB, 92% less than" in again.stderr
    (var / "db").write_bytes(os.urandom(10000))
    quiet = run_keyforge("backup", "--config", str(path))
    assert quiet.returncode == 0, quiet.stderr
    assert "less than" not in quiet.stderr


def _now() -> status.datetime:
    return status.datetime.now(status.UTC)


# --- 3: a push killed mid-file --------------------------------------------------------------


def _big_backup_dir(directory: Path) -> str:
    make_backup_dir(directory, files=2)
    name = "server1-var.20261211.master.tar.zst"
    (directory / name).write_bytes(os.urandom(6 * 1024 * 1024))
    return name


def _rsync_children(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children if Path(f"/proc/{c}/comm").read_text().strip() == "rsync"]


def _interrupt(path: Path, copy: Path) -> subprocess.CompletedProcess[str]:
    """Start 'keyforge sync', and once a file is arriving in the copy, kill the sending rsync
    (a crash, the OOM killer, a reboot of the sender): the receiving rsync sees the stream end
    mid-file and decides what becomes of the partial file."""
    process = subprocess.Popen(
        [sys.executable, "-m", "keyforge", "sync", "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and process.poll() is None:
            arriving = [p for p in copy.rglob("*") if p.is_file() and p.stat().st_size > 300000]
            if arriving:
                break
            time.sleep(0.05)
        assert process.poll() is None, "the push ended before it could be interrupted"
        [rsync] = _rsync_children(process.pid)
        os.kill(rsync, signal.SIGKILL)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def _assert_no_truncated_archive(source: Path, copy: Path, name: str) -> None:
    final = copy / name
    if final.exists():
        assert final.read_bytes() == (source / name).read_bytes(), "a truncated archive"
    for path in copy.iterdir():
        if path.is_file() and not path.name.startswith("."):
            assert path.read_bytes() == (source / path.name).read_bytes(), path.name


@pytest.mark.parametrize("kind", ["ssh", "local"])
def test_an_interrupted_push_leaves_no_truncated_archive_under_its_final_name(
    lab: Lab, tmp_path: Path, kind: str
) -> None:
    source = tmp_path / "backups"
    name = _big_backup_dir(source)
    if kind == "ssh":
        copy, target = lab.copy, _remote(lab)
    else:
        copy = tmp_path / "external"
        copy.mkdir()
        target = {"name": "external", "path": str(copy)}
    path = _config_text(
        tmp_path, [], source, target=target, sync_lines=('bwlimit = "1000"', "timeout = 60")
    )
    copy.mkdir(exist_ok=True)
    interrupted = _interrupt(path, copy)
    assert interrupted.returncode != 0
    _assert_no_truncated_archive(source, copy, name)
    # the next push finishes the job
    path = _config_text(tmp_path, [], source, target=target)
    done = run_keyforge("sync", "--config", str(path))
    assert done.returncode == 0, done.stderr
    assert tree(copy) == tree(source)


# --- 6: a receiver that cannot write part of the copy ---------------------------------------


def test_a_file_error_on_the_receiver_is_reported_as_such_not_as_a_refused_key(
    lab: Lab, tmp_path: Path
) -> None:
    """The receiving rsync runs as an ordinary user, and a directory in the copy belongs to
    root: rsync exits 23 after sshd accepted the key."""
    outside = Path(tempfile.mkdtemp(prefix="keyforge-receiver-"))
    try:
        outside.chmod(0o755)
        copy = outside / "copy"
        copy.mkdir()
        os.chown(copy, NOBODY, NOBODY)
        source = tmp_path / "backups"
        make_backup_dir(source, files=2)
        (source / layout.SNAPSHOT_DIR).mkdir()
        (source / layout.SNAPSHOT_DIR / "server1-etc.snar").write_text("1\n")
        target = _remote(lab, f"{copy}/")
        path = _config_text(tmp_path, [], source, target=target)
        cfg = config.load(path)
        [remote] = sync.select_targets(cfg.targets, None)
        argv = sync.rsync_argv(sync.find_tools(), source, remote, cfg.sync)
        forced = capture_local.capture_local(argv).command
        drop = f"setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups "
        public = subprocess.run(
            ["ssh-keygen", "-y", "-f", str(lab.key)], capture_output=True, text=True, check=True
        ).stdout
        saved = lab.server.authorized_keys.read_text()
        lab.server.authorized_keys.write_text(locked_key_line(public, drop + forced) + "\n")
        try:
            first = run_keyforge("sync", "--config", str(path))
            assert first.returncode == 0, first.stderr
            os.chown(copy / layout.SNAPSHOT_DIR, 0, 0)
            # another size, so rsync's quick check (size and mtime) sees a change even within
            # the second the first push ran in
            (source / layout.SNAPSHOT_DIR / "server1-etc.snar").write_text("changed\n")
            failed = run_keyforge("sync", "--config", str(path))
        finally:
            lab.server.authorized_keys.write_text(saved)
        assert failed.returncode != 0
        assert "refused the key" not in failed.stderr
        assert "rsync exit 23 (partial transfer due to error)" in failed.stderr
        assert "on the receiving host (the key and the connection worked)" in failed.stderr
        assert "Permission denied (13)" in failed.stderr
    finally:
        shutil.rmtree(outside, ignore_errors=True)


def test_the_locked_forced_command_keeps_partial_files_out_of_final_names(lab: Lab) -> None:
    assert "--partial-dir .rsync-partial" in lab.forced_command
    assert "--delay-updates" in lab.forced_command
