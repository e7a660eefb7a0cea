"""restore --path and --at a run, list, find, --from a pushed copy, and the drill, against real
GNU tar and zstd archives made by keyforge backup (with faked run dates)."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keyforge import config, layout, signing
from keyforge.cli import app
from keyforge.monitor import runs
from keyforge.receiver import snapshot
from keyforge.sender import backup, drill
from keyforge.ssh import keys

DAY1 = dt.datetime(2026, 11, 23, 1, 15)  # a Monday; full_every = 7 keeps weekdays out of it
NOBODY = 65534
ALLOWED = "allowed_signers"
runner = CliRunner()


def _required() -> bool:
    return os.environ.get("CI", "").lower() == "true" or bool(
        os.environ.get("KEYFORGE_REQUIRE_DOCKER")
    )


def write(path: Path, data: bytes, mtime: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))


@pytest.fixture
def history(tmp_path: Path) -> dict[str, object]:
    """Four runs of SRC: a master, then incrementals; what the tree held at each, by run.

    Run 1 (master): etc/app.conf v1, d/x, k.  Run 2: app.conf v2, d renamed to e.
    Run 3 (the second incremental): app.conf v3, k deleted, new.txt.  Run 4: app.conf v4.
    """
    src = tmp_path / "srv"
    cfg_path = tmp_path / "keyforge.toml"
    # signed, as restore, verify and the drill require; ALLOWED pins the key where no
    # config names it (a copy read --from, the receiving host)
    key = tmp_path / "manifest-signing-key"
    keys.write_pair(key, signing.make_key("server1"), force=False)
    public = keys.public_path_for(key).read_text(encoding="utf-8").strip()
    (tmp_path / ALLOWED).write_text(signing.signer_line(public, "server1"))
    cfg_path.write_text(
        f'[general]\nhost = "server1"\n[backup]\nsources = ["{src}"]\n'
        f'directory = "{tmp_path / "backups"}"\nfull_every = 7\nnice = 0\nionice = "none"\n'
        f'shrink_warn_percent = 0\nsigning_key = "{key}"\n[drill]\n'
    )
    cfg = config.load(cfg_path)
    write(src / "etc/app.conf", b"version 1\n", 1_000_000)
    write(src / "d/x", b"x in d\n", 1_000_100)
    write(src / "k", b"kept until run 3\n", 1_000_200)
    seen = {}
    for day in range(4):
        if day == 1:
            write(src / "etc/app.conf", b"version 2, longer\n", 1_100_000)
            (src / "d").rename(src / "e")
        if day == 2:
            write(src / "etc/app.conf", b"version 3\n", 1_200_000)
            (src / "k").unlink()
            write(src / "new.txt", b"new in run 3\n", 1_200_100)
        if day == 3:
            write(src / "etc/app.conf", b"v4\n", 1_300_000)
        report = backup.run_backup(cfg, now=DAY1 + dt.timedelta(days=day))
        seen[report.plan.stamp] = (src / "etc/app.conf").read_bytes()
    stamps = list(seen)
    slug = layout.source_slug(str(src))
    return {
        "src": src,
        "cfg": cfg,
        "cfg_path": cfg_path,
        "stamps": stamps,
        "conf": seen,
        "slug": slug,
        "allowed": str(tmp_path / ALLOWED),
    }


def _cli(*args: str) -> object:
    return runner.invoke(app, list(args))


def test_one_file_from_the_second_incremental_equals_the_file_as_it_was_then(
    history: dict[str, object], tmp_path: Path
) -> None:
    src, cfg = history["src"], str(history["cfg_path"])
    stamps = history["stamps"]
    assert isinstance(stamps, list)
    second_incremental = stamps[2]
    out = tmp_path / "restored"
    result = _cli(
        "restore",
        "-c",
        cfg,
        "--path",
        f"{src}/etc/app.conf",
        "--at",
        second_incremental,
        "--to",
        str(out),
    )
    assert result.exit_code == 0, result.output
    restored = out / "etc/app.conf"
    assert restored.read_bytes() == b"version 3\n" == history["conf"][second_incremental]  # type: ignore[index]
    assert int(restored.stat().st_mtime) == 1_200_000
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["etc", "etc/app.conf"]
    assert (
        f"applied server1-{history['slug']}.{second_incremental}.incremental.tar.zst"
        in result.output
    )


def test_a_directory_renamed_since_the_master_restores_with_its_unchanged_files(
    history: dict[str, object], tmp_path: Path
) -> None:
    out = tmp_path / "r"
    result = _cli(
        "restore", "-c", str(history["cfg_path"]), "--path", f"{history['src']}/e", "--to", str(out)
    )
    assert result.exit_code == 0, result.output
    assert (out / "e/x").read_bytes() == b"x in d\n"
    assert int((out / "e/x").stat().st_mtime) == 1_000_100
    assert not (out / "d").exists()
    gone = _cli(
        "restore",
        "-c",
        str(history["cfg_path"]),
        "--path",
        f"{history['src']}/k",
        "--to",
        str(tmp_path / "k"),
    )
    assert gone.exit_code == 4
    assert "/k is not in the backup of" in gone.stderr
    assert not (tmp_path / "k").exists()


def test_two_runs_of_one_day_are_told_apart_by_their_stamps(
    history: dict[str, object], tmp_path: Path
) -> None:
    cfg = history["cfg"]
    assert isinstance(cfg, config.Config)
    backup.run_backup(cfg, now=DAY1 + dt.timedelta(days=3, hours=5))  # a second run of day 4
    write(Path(str(history["src"])) / "etc/app.conf", b"v5\n", 1_400_000)
    report = backup.run_backup(cfg, now=DAY1 + dt.timedelta(days=3, hours=6))
    assert "-" in report.plan.stamp
    first = _cli(
        "restore",
        "-c",
        str(history["cfg_path"]),
        "--path",
        f"{history['src']}/etc/app.conf",
        "--at",
        "20261126",
        "--to",
        str(tmp_path / "a"),
    )
    last = _cli(
        "restore",
        "-c",
        str(history["cfg_path"]),
        "--path",
        f"{history['src']}/etc/app.conf",
        "--at",
        "2026-11-26",
        "--to",
        str(tmp_path / "b"),
    )
    assert first.exit_code == last.exit_code == 0, first.output + last.output
    assert (tmp_path / "a/etc/app.conf").read_bytes() == b"v4\n"
    assert (tmp_path / "b/etc/app.conf").read_bytes() == b"v5\n"


def test_find_follows_a_file_across_a_rename_and_a_deletion(history: dict[str, object]) -> None:
    src, stamps = history["src"], history["stamps"]
    assert isinstance(stamps, list)
    renamed = _cli("find", "-c", str(history["cfg_path"]), "x")
    assert renamed.exit_code == 0, renamed.output
    lines = renamed.stdout.splitlines()
    assert lines[0] == f"{src}/d/x"
    assert lines[1].split()[0] == stamps[0]
    assert lines[2].split() == [stamps[1], "gone"]
    assert lines[3] == f"{src}/e/x"
    assert [line.split()[0] for line in lines[4:]] == stamps[1:]
    assert all(
        f"server1-{history['slug']}.{stamps[0]}.master.tar.zst" in line for line in lines[4:]
    )
    deleted = _cli("find", "-c", str(history["cfg_path"]), f"{src}/k").stdout.splitlines()
    assert [line.split()[0] for line in deleted[1:]] == [*stamps[:2], stamps[2]]
    assert deleted[-1].split() == [stamps[2], "gone"]
    assert deleted[1].split()[2:4] == ["17", "1970-01-12"]  # size and mtime then
    nothing = _cli("find", "-c", str(history["cfg_path"]), "no-such-name")
    assert nothing.exit_code == 1


def test_list_shows_every_run_its_archives_and_their_sizes(
    history: dict[str, object], tmp_path: Path
) -> None:
    result = _cli("list", "-c", str(history["cfg_path"]))
    assert result.exit_code == 0, result.output
    backups = tmp_path / "backups"
    for stamp in history["stamps"]:  # type: ignore[attr-defined]
        kind = "master" if stamp == history["stamps"][0] else "incremental"  # type: ignore[index]
        name = f"server1-{history['slug']}.{stamp}.{kind}.tar.zst"
        assert (
            f"{stamp}  1 archive(s)  {backup.human_size((backups / name).stat().st_size)}"
            in result.stdout
        )
        assert name in result.stdout
    tree = _cli(
        "list",
        "-c",
        str(history["cfg_path"]),
        "--source",
        str(history["src"]),
        "--at",
        "2026-11-24",
    )
    paths = [line.split()[-1] for line in tree.stdout.splitlines()[1:]]
    assert paths == [
        str(history["src"]),
        *(f"{history['src']}/{p}" for p in ("e", "e/x", "etc", "etc/app.conf", "k")),
    ]


# --- a pushed copy, no config --------------------------------------------------------------------


@pytest.fixture
def copy(history: dict[str, object], tmp_path: Path) -> Path:
    pushed = tmp_path / "srvbackups"
    shutil.copytree(tmp_path / "backups", pushed, ignore=shutil.ignore_patterns(layout.LOCK_NAME))
    return pushed


def _listing(top: Path) -> dict[str, tuple[int, float]]:
    return {str(p): (p.lstat().st_size, p.lstat().st_mtime) for p in [top, *top.rglob("*")]}


def test_restore_list_find_and_verify_read_a_pushed_copy_with_no_config(
    history: dict[str, object], copy: Path, tmp_path: Path
) -> None:
    before = _listing(copy)
    src = history["src"]
    assert _cli("list", "--from", str(copy)).exit_code == 0
    found = _cli("find", "--from", str(copy), "--host", "server1", "app.conf")
    assert found.exit_code == 0 and found.stdout.startswith(f"{src}/etc/app.conf\n"), found.output
    pinned = ("--allowed-signers", str(history["allowed"]))
    restored = _cli(
        "restore", "--from", str(copy), "--source", str(src), "--to", str(tmp_path / "all"),
        *pinned,
    )  # fmt: skip
    assert restored.exit_code == 0, restored.output
    assert (tmp_path / "all/etc/app.conf").read_bytes() == b"v4\n"
    assert not (tmp_path / "all/k").exists()
    verified = _cli("verify", "--from", str(copy), *pinned)
    assert verified.exit_code == 0, verified.output
    assert _listing(copy) == before


def test_from_needs_host_when_the_copy_holds_several_and_refuses_a_stranger(
    history: dict[str, object], copy: Path
) -> None:
    wrong = _cli("list", "--from", str(copy), "--host", "server2")
    assert wrong.exit_code == 4
    assert "no manifests of server2 there (hosts: server1)" in wrong.stderr
    other = json.loads(next(copy.glob("server1.*.manifest.json")).read_text())
    other["host"] = "server2"
    (copy / "server2.20261123.manifest.json").write_text(json.dumps(other))
    ambiguous = _cli("list", "--from", str(copy))
    assert ambiguous.exit_code == 2
    assert "give --host" in ambiguous.stderr and "server1, server2" in ambiguous.stderr
    both = _cli("list", "--from", str(copy), "-c", str(history["cfg_path"]))
    assert both.exit_code == 2


def test_an_unprivileged_user_restores_and_drills_from_the_copy_and_is_told_about_owners(
    history: dict[str, object],
) -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        if _required():
            pytest.fail("needs root and setpriv to run as another user")
        pytest.skip("needs root and setpriv")
    world = Path(tempfile.mkdtemp(prefix="keyforge-catalog-"))
    try:
        world.chmod(0o755)
        pushed = world / "copy"
        shutil.copytree(Path(str(history["cfg"].backup_dir)), pushed)  # type: ignore[attr-defined]
        home = world / "home"
        home.mkdir()
        allowed = world / ALLOWED
        shutil.copy(str(history["allowed"]), allowed)
        allowed.chmod(0o644)
        for path in [pushed, *pushed.rglob("*"), home]:
            os.chown(path, NOBODY, NOBODY, follow_symlinks=False)
        result = subprocess.run(
            ["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups",
             sys.executable, "-m", "keyforge", "restore", "--from", str(pushed),
             "--path", f"{history['src']}/etc", "--to", str(home / "r"),
             "--allowed-signers", str(allowed)],
            capture_output=True, text=True, check=False, cwd="/",
            env={**os.environ, "HOME": "/nonexistent"},
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "not running as root: owners are not restored" in result.stderr
        assert (home / "r/etc/app.conf").read_bytes() == b"v4\n"
        assert (home / "r/etc/app.conf").stat().st_uid == NOBODY
        drilled = subprocess.run(
            ["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups",
             sys.executable, "-m", "keyforge", "drill", "--from", str(pushed),
             "--scratch", str(home / "scratch"), "--allowed-signers", str(allowed),
             "--verbose"],
            capture_output=True, text=True, check=False, cwd="/",
            env={**os.environ, "HOME": "/nonexistent", "KEYFORGE_STATE_DIR": str(home / "state")},
        )  # fmt: skip
        assert drilled.returncode == 0, drilled.stderr
        assert "owners are not compared" in drilled.stderr
        assert drilled.stdout.startswith("drill of server1: ok: 4 archive(s)")
        assert list((home / "scratch").iterdir()) == []
    finally:
        shutil.rmtree(world)


# --- the drill ---------------------------------------------------------------------------------


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    place = tmp_path / "scratch"
    place.mkdir()
    yield place
    assert list(place.iterdir()) == []  # the drill cleans up after itself, failed or not


def _drill(history: dict[str, object], scratch: Path, *extra: str) -> object:
    return _cli(
        "drill", "-c", str(history["cfg_path"]), "--scratch", str(scratch), "--verbose", *extra
    )


def test_a_drill_of_good_backups_passes_and_status_shows_it(
    history: dict[str, object], scratch: Path
) -> None:
    result = _drill(history, scratch)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("drill of server1: ok: 4 archive(s), 1 source(s), ")
    record = json.loads(drill.record_path(history["cfg"], "server1").read_text())  # type: ignore[arg-type]
    assert record["runs"][-1]["ok"] is True and record["runs"][-1]["seconds"] >= 0
    status = _cli("status", "-c", str(history["cfg_path"]), "--json")
    items = {i["name"]: i for i in json.loads(status.stdout)["items"]}
    assert items["drill of server1"]["ok"] is True


def _archive(history: dict[str, object], index: int) -> Path:
    stamps = history["stamps"]
    kind = "master" if index == 0 else "incremental"
    return (
        Path(str(history["cfg"].backup_dir))
        / f"server1-{history['slug']}.{stamps[index]}.{kind}.tar.zst"
    )  # type: ignore[attr-defined,index]


def _fails_naming(history: dict[str, object], scratch: Path, name: str, words: str) -> None:
    result = _drill(history, scratch)
    assert result.exit_code == 1, result.output
    assert "FAILED" in result.stdout
    assert f"{name}: {words}" in result.stderr
    status = _cli("status", "-c", str(history["cfg_path"]))
    assert status.exit_code == 1
    assert "FAIL drill of server1" in status.stdout


def test_the_drill_names_an_archive_with_a_flipped_byte(
    history: dict[str, object], scratch: Path
) -> None:
    assert _drill(history, scratch).exit_code == 0
    archive = _archive(history, 2)
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0x01
    archive.write_bytes(bytes(data))
    _fails_naming(history, scratch, archive.name, "blake3 differs from the manifest")


def test_the_drill_names_a_missing_incremental(history: dict[str, object], scratch: Path) -> None:
    archive = _archive(history, 1)
    archive.unlink()
    stamp = history["stamps"][1]  # type: ignore[index]
    _fails_naming(
        history, scratch, archive.name, f"missing (listed in server1.{stamp}.manifest.json)"
    )


def test_the_drill_names_a_truncated_archive(history: dict[str, object], scratch: Path) -> None:
    archive = _archive(history, 3)
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    result = _drill(history, scratch)
    assert result.exit_code == 1
    assert f"{archive.name}: blake3 differs from the manifest" in result.stderr
    # the signed manifest's size gives the cut away before tar reads a byte of it
    assert "bytes where its signed manifest records" in result.stderr


def test_the_spot_check_catches_a_backup_that_differs_from_an_untouched_live_file(
    history: dict[str, object], scratch: Path
) -> None:
    good = _drill(history, scratch, "--spot-check", "5")
    assert good.exit_code == 0, good.output
    assert "spot check 3/3 same (0 changed, 0 gone)" in good.stdout
    live = Path(str(history["src"])) / "e/x"
    live.write_bytes(b"X IN D\n")  # same size, same mtime: tar's listing cannot tell
    os.utime(live, (1_000_100, 1_000_100))
    bad = _drill(history, scratch, "--spot-check", "5")
    assert bad.exit_code == 1
    assert f"spot check: {live}: content differs from the live file" in bad.stderr


def test_a_drill_on_the_receiving_host_reads_the_copy_and_keeps_its_scratch_out_of_it(
    history: dict[str, object], copy: Path, tmp_path: Path, scratch: Path
) -> None:
    receiving = tmp_path / "raspberrypi.toml"
    receiving.write_text(
        f'[general]\nhost = "raspberrypi"\n[snapshot]\nsource = "{copy}"\n'
        f'directory = "{tmp_path / "snaps"}"\nallowed_signers = "{history["allowed"]}"\n'
        "[drill]\n"
    )
    before = _listing(copy)
    result = _cli("drill", "-c", str(receiving), "--scratch", str(scratch), "--verbose")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("drill of server1: ok: 4 archive(s)")
    assert _listing(copy) == before
    refused = _cli("drill", "-c", str(receiving), "--scratch", str(copy / "tmp"))
    assert refused.exit_code == 2
    assert f"lies in {copy}" in refused.stderr
    assert not (copy / "tmp").exists()
    spot = _cli(
        "drill", "--from", str(copy), "--scratch", str(scratch), "--spot-check", "1",
        "--allowed-signers", str(history["allowed"]),
    )  # fmt: skip
    assert spot.exit_code == 2
    assert "run it on the sending server" in spot.stderr


def test_a_damaged_manifest_is_a_recorded_finding_of_the_drill(
    history: dict[str, object], scratch: Path
) -> None:
    stamps = history["stamps"]
    manifest = Path(str(history["cfg"].backup_dir)) / f"server1.{stamps[1]}.manifest.json"  # type: ignore[attr-defined,index]
    manifest.write_text("{not json")
    result = _drill(history, scratch)
    assert result.exit_code == 1
    assert f"cannot read manifest {manifest}: not JSON" in result.stderr
    record = json.loads(drill.record_path(history["cfg"], "server1").read_text())  # type: ignore[arg-type]
    assert record["runs"][-1]["ok"] is False


def test_restore_path_dry_run_names_only_the_archives_holding_it_and_force_replaces_just_it(
    history: dict[str, object], tmp_path: Path
) -> None:
    stamps, slug, src = history["stamps"], history["slug"], history["src"]
    cfg = str(history["cfg_path"])
    target = tmp_path / "busy"
    (target / "e").mkdir(parents=True)
    (target / "e/x").write_bytes(b"local edit\n")
    (target / "mine").write_bytes(b"not from the backup\n")
    dry = _cli("restore", "-c", cfg, "--path", f"{src}/e/x", "--to", str(target), "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert dry.stdout.splitlines() == [
        f"would apply server1-{slug}.{stamps[0]}.master.tar.zst",  # type: ignore[index]
        f"would apply server1-{slug}.{stamps[3]}.incremental.tar.zst",  # type: ignore[index]
    ]
    assert (target / "e/x").read_bytes() == b"local edit\n"
    refused = _cli("restore", "-c", cfg, "--path", f"{src}/e/x", "--to", str(target))
    assert refused.exit_code == 2 and "is not empty" in refused.stderr
    forced = _cli("restore", "-c", cfg, "--path", f"{src}/e/x", "--to", str(target), "--force")
    assert forced.exit_code == 0, forced.output
    assert (target / "e/x").read_bytes() == b"x in d\n"
    assert (target / "mine").read_bytes() == b"not from the backup\n"
    assert sorted(p.name for p in tmp_path.iterdir() if "keyforge-partial" in p.name) == []


def test_a_snapshot_of_the_copy_restores_and_drills_like_the_copy(
    history: dict[str, object], copy: Path, tmp_path: Path, scratch: Path
) -> None:
    for path in [copy, *copy.rglob("*")]:
        os.chown(path, NOBODY, NOBODY, follow_symlinks=False)  # the pushes' user, not root
    store = tmp_path / "snaps"
    settings = {"source": str(copy), "directory": str(store)}
    taken = snapshot.run_snapshot(config.parse({"snapshot": settings}))
    dated = store / taken.stamp
    assert (dated / layout.MANIFEST_NAME).exists()
    out = tmp_path / "from-snapshot"
    pinned = ("--allowed-signers", str(history["allowed"]))
    restored = _cli(
        "restore", "--from", str(dated), "--path", f"{history['src']}/etc", "--to", str(out),
        *pinned,
    )  # fmt: skip
    assert restored.exit_code == 0, restored.output
    assert (out / "etc/app.conf").read_bytes() == b"v4\n"
    drilled = _cli("drill", "--from", str(dated), "--scratch", str(scratch), *pinned)
    assert drilled.exit_code == 0, drilled.output


def test_the_drill_fails_a_chain_whose_manifest_lost_its_signature(
    history: dict[str, object], scratch: Path
) -> None:
    stamps = history["stamps"]
    manifest = Path(str(history["cfg"].backup_dir)) / f"server1.{stamps[2]}.manifest.json"  # type: ignore[attr-defined,index]
    layout.signature_path(manifest).unlink()
    result = _drill(history, scratch)
    assert result.exit_code == 1, result.output
    assert f"{manifest.name} is not signed" in result.stderr
    record = json.loads(drill.record_path(history["cfg"], "server1").read_text())  # type: ignore[arg-type]
    assert record["runs"][-1]["ok"] is False


def test_a_drill_of_a_copy_with_no_pinned_signer_is_refused_before_it_reads(
    copy: Path, scratch: Path
) -> None:
    result = _cli("drill", "--from", str(copy), "--scratch", str(scratch))
    assert result.exit_code == 16, result.output
    assert "no allowed signers" in result.stderr


def test_a_drill_is_a_monitored_job_and_quiet_when_all_is_well(
    history: dict[str, object], scratch: Path
) -> None:
    quiet = _cli("drill", "-c", str(history["cfg_path"]), "--scratch", str(scratch))
    assert quiet.exit_code == 0, quiet.output
    assert quiet.stdout == ""
    logged = runs.read(runs.run_log_path(history["cfg"]))  # type: ignore[arg-type]
    assert [(r.job, r.exit_code) for r in logged] == [("drill", 0)]
