"""The sync runner's pure parts: argv, verdicts, retries, stats, log line; and its guards."""

from __future__ import annotations

import datetime as dt
import json
import shlex
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keyforge.config import Config, SyncConfig, TargetConfig, parse
from keyforge.errors import ConfigError, FileError, KeyforgeError, LockedError, UsageError
from keyforge.infra import fsutil, runner
from keyforge.sender import sync

TOOLS = sync.Tools(rsync="/usr/bin/rsync", ssh="/usr/bin/ssh")
REMOTE = TargetConfig(
    name="offsite",
    host="raspberrypi",
    port=2222,
    user="foo",
    key="/root/.ssh/backups",
    remote_path="srvbackups/",
    known_hosts="/etc/keyforge/known_hosts",
)
LOCAL = TargetConfig(name="external", path="/mnt/external", require_mountpoint=True)


def remote(**changes: object) -> sync.RemoteTarget:
    target = sync.target_from_config(REMOTE, 0)
    assert isinstance(target, sync.RemoteTarget)
    return sync.RemoteTarget(**{**target.__dict__, **changes})  # type: ignore[arg-type]


# --- argv ------------------------------------------------------------------------------------


def test_remote_argv_is_the_posts_command_with_absolute_paths_and_a_pinned_host_key() -> None:
    argv = sync.rsync_argv(TOOLS, Path("/mnt/backups/server1"), remote(), SyncConfig())
    assert argv[:3] == ["/usr/bin/rsync", "-az", "--delete"]
    # a file reaches its final name on the copy only when it (and the whole push) is complete
    assert argv[3:5] == ["--partial-dir=.rsync-partial", "--delay-updates"]
    assert "--partial" not in argv
    assert f"--timeout={SyncConfig().timeout}" in argv
    assert f"--max-delete={SyncConfig().max_delete}" in argv
    assert not any(a.startswith("--bwlimit") for a in argv)
    assert argv[-2:] == ["/mnt/backups/server1/", "foo@raspberrypi:srvbackups/"]
    rsh = next(a for a in argv if a.startswith("--rsh="))
    assert shlex.split(rsh.removeprefix("--rsh=")) == [
        "/usr/bin/ssh",
        "-p",
        "2222",
        "-i",
        "/root/.ssh/backups",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "UserKnownHostsFile=/etc/keyforge/known_hosts",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "ConnectTimeout=30",
    ]


def test_bwlimit_is_passed_only_when_configured() -> None:
    argv = sync.rsync_argv(TOOLS, Path("/b"), remote(), SyncConfig(bwlimit="2m"))
    assert "--bwlimit=2m" in argv


def test_the_lock_file_and_half_written_archives_are_never_sent() -> None:
    argv = sync.rsync_argv(TOOLS, Path("/b"), remote(), SyncConfig())
    assert "--exclude=/.keyforge.lock" in argv
    assert "--exclude=.*.partial" in argv


def test_local_target_mirrors_into_the_directory_without_ssh_or_compression() -> None:
    target = sync.target_from_config(LOCAL, 0)
    argv = sync.rsync_argv(TOOLS, Path("/srv/copy"), target, SyncConfig(max_delete=7))
    assert argv[1] == "-a"
    assert "--max-delete=7" in argv
    assert not any(a.startswith("--rsh") for a in argv)
    assert argv[-2:] == ["/srv/copy/", "/mnt/external/"]


def test_ipv6_host_is_bracketed_in_the_destination() -> None:
    target = sync.target_from_config(
        TargetConfig(**{**REMOTE.__dict__, "host": "2001:db8::1", "name": ""}), 0
    )
    assert target.destination == "foo@[2001:db8::1]:srvbackups/"
    assert target.name == "2001:db8::1"


def test_display_is_a_line_a_shell_splits_back_into_the_argv() -> None:
    argv = sync.rsync_argv(TOOLS, Path("/mnt/backups/server1"), remote(), SyncConfig())
    assert shlex.split(sync.display(argv)) == argv


# --- configuration -> targets ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"user": ""}, "needs user"),
        ({"known_hosts": ""}, "needs known_hosts"),
        ({"host": "-oProxyCommand=x"}, "host must be"),
        ({"user": "foo bar"}, "user must be"),
        ({"remote_path": "-e sh"}, "remote_path must be"),
        ({"remote_path": "a b"}, "remote_path must be"),
        ({"key": "relative/key"}, "key must be an absolute path"),
        ({"key": "/root/%h/key"}, "key must be an absolute path"),
        ({"known_hosts": "/etc/known hosts"}, "known_hosts must be an absolute path"),
        ({"require_mountpoint": True}, "require_mountpoint applies to a local target"),
        ({"path": "/mnt/x"}, r"sets path \(a local target\) and host"),
        ({"name": "a b"}, "name must be a short name"),
        (
            {"host": "", "user": "", "key": "", "remote_path": "", "known_hosts": ""},
            r"needs path \(a local drive\) or host, user, key, remote_path, known_hosts",
        ),
    ],
)
def test_a_wrong_target_is_a_config_error_naming_the_key(
    changes: dict[str, object], message: str
) -> None:
    cfg = TargetConfig(**{**REMOTE.__dict__, **changes})
    with pytest.raises(ConfigError, match=message):
        sync.target_from_config(cfg, 0)


def test_select_targets_picks_by_name_and_names_the_choices_when_unknown() -> None:
    assert [t.name for t in sync.select_targets([REMOTE, LOCAL], None)] == ["offsite", "external"]
    assert [t.name for t in sync.select_targets([REMOTE, LOCAL], "external")] == ["external"]
    with pytest.raises(
        UsageError, match="no target called 'nope' \\(configured: offsite, external"
    ):
        sync.select_targets([REMOTE, LOCAL], "nope")


def test_no_targets_and_duplicate_names_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="no \\[\\[targets\\]\\] configured"):
        sync.select_targets([], None)
    with pytest.raises(ConfigError, match="two \\[\\[targets\\]\\] are called 'offsite'"):
        sync.select_targets([REMOTE, REMOTE], None)


# --- verdicts and retries --------------------------------------------------------------------


@pytest.mark.parametrize("code", [10, 12, 30, 35, 255])
def test_network_failures_are_retried(code: int) -> None:
    verdict = sync.judge(code, "rsync: connection unexpectedly closed\n", SyncConfig())
    assert not verdict.ok
    assert verdict.retry


@pytest.mark.parametrize("code", [1, 2, 3, 5, 11, 23, 24, 25])
def test_usage_and_local_errors_are_not_retried(code: int) -> None:
    assert not sync.judge(code, "", SyncConfig()).retry


def test_a_wrong_host_key_is_reported_plainly_and_never_retried() -> None:
    stderr = (
        "@@@@@@@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n"
        "Host key verification failed.\nrsync: connection unexpectedly closed\n"
    )
    verdict = sync.judge(255, stderr, SyncConfig())
    assert not verdict.retry
    assert "is not the one pinned in the known_hosts file" in verdict.message


def test_a_refused_key_is_not_retried() -> None:
    verdict = sync.judge(255, "foo@raspberrypi: Permission denied (publickey).\n", SyncConfig())
    assert not verdict.retry
    assert "refused the key" in verdict.message


@pytest.mark.parametrize(
    "said",
    [
        "keyforge: command recorded, not run; run 'keyforge capture show' on the receiving host",
        "keyforge: command not run, and it could not be recorded in /home/foo/.ssh/x.log",
    ],
)
def test_the_capture_recorders_answer_is_not_retried_and_says_what_to_do(said: str) -> None:
    stderr = f"{said}\nrsync: connection unexpectedly closed (0 bytes received so far)\n"
    verdict = sync.judge(12, stderr, SyncConfig())
    assert not verdict.retry
    assert "capture recorder" in verdict.message
    assert said in verdict.message


def test_max_delete_exit_explains_the_limit() -> None:
    verdict = sync.judge(
        25, "Deletions stopped due to --max-delete limit\n", SyncConfig(max_delete=9)
    )
    assert "more than max_delete = 9" in verdict.message
    assert not verdict.retry


def test_other_failures_show_the_first_telling_line() -> None:
    stderr = 'rsync: [Receiver] mkdir "/x" failed: Permission denied\nrsync error: some files\n'
    verdict = sync.judge(23, stderr, SyncConfig())
    assert verdict.message.startswith("rsync exit 23 (partial transfer due to error): ")
    assert verdict.message.endswith(': rsync: [Receiver] mkdir "/x" failed: Permission denied')


def test_a_file_error_on_the_receiver_is_not_blamed_on_the_key() -> None:
    # what rsync says when a root-owned directory in the copy stops the receiver
    stderr = (
        'rsync: [receiver] mkstemp "/home/foo/srvbackups/.snapshots/.server1-etc.snar.x3Fq"'
        " failed: Permission denied (13)\n"
        "rsync error: some files/attrs were not transferred (see previous errors) (code 23)\n"
    )
    verdict = sync.judge(23, stderr, SyncConfig())
    assert "refused the key" not in verdict.message
    assert "on the receiving host (the key and the connection worked)" in verdict.message
    assert "Permission denied (13)" in verdict.message
    assert not verdict.retry


def test_vanished_files_on_the_sender_are_said_to_be_here() -> None:
    stderr = 'file has vanished: "/b/x"\nrsync: [sender] read errors mapping "/b/y": No data (61)\n'
    verdict = sync.judge(24, stderr, SyncConfig())
    assert "refused the key" not in verdict.message
    assert "rsync exit 24 (partial transfer due to vanished source files)" in verdict.message


def test_retry_delays_double_and_stop_at_the_cap() -> None:
    assert sync.retry_delays(4, 60) == [60, 120, 240, 480]
    assert sync.retry_delays(3, 1000, cap=1500) == [1000, 1500, 1500]
    assert sync.retry_delays(0, 60) == []


# --- stats and log ---------------------------------------------------------------------------


def test_bytes_sent_is_read_from_stats_with_thousands_separators() -> None:
    stats = "Literal data: 2 bytes\nTotal bytes sent: 1,234,567\nTotal bytes received: 46\n"
    assert sync.parse_bytes_sent(stats) == 1234567
    assert sync.parse_bytes_sent("nothing here") is None


def _report(**changes: object) -> sync.Report:
    start = datetime(2026, 1, 2, 3, 30, tzinfo=UTC)
    values: dict[str, object] = {
        "target": "offsite",
        "destination": "foo@raspberrypi:srvbackups/",
        "argv": ("/usr/bin/rsync",),
        "start": start,
        "end": start + timedelta(seconds=12),
        "exit": 0,
        "bytes_sent": 1234,
        "attempts": 1,
        "ok": True,
        "message": "done",
    }
    values.update(changes)
    return sync.Report(**values)  # type: ignore[arg-type]


def test_log_line_is_one_json_object_with_start_end_exit_and_bytes() -> None:
    line = sync.log_line(_report())
    assert line.endswith("\n")
    assert line.count("\n") == 1
    record = json.loads(line)
    assert record["start"] == "2026-01-02T03:30:00+00:00"
    assert record["end"] == "2026-01-02T03:30:12+00:00"
    assert record["exit"] == 0
    assert record["bytes_sent"] == 1234
    assert record["target"] == "offsite"


def test_summary_says_ok_or_failed_with_the_reason() -> None:
    assert sync.summary(_report()) == "sync offsite: ok in 12.0 s, 1,234 bytes sent"
    failed = sync.summary(_report(ok=False, attempts=4, message="rsync exit 12 (x)"))
    assert failed == "sync offsite: FAILED after 4 attempt(s): rsync exit 12 (x)"


# --- the run loop with a fake runner ---------------------------------------------------------


class FakeRsync:
    def __init__(self, codes: Sequence[int], stderr: str = "") -> None:
        self.codes = list(codes)
        self.stderr = stderr
        self.calls: list[tuple[str, ...]] = []
        self.slept: list[float] = []
        self.notes: list[str] = []
        self.logged: list[sync.Report] = []

    def run(self, argv: Sequence[str]) -> runner.Result:
        self.calls.append(tuple(argv))
        code = self.codes.pop(0)
        out = b"Total bytes sent: 4,096\n" if code == 0 else b""
        return runner.Result(tuple(argv), code, out, self.stderr if code else "")

    def effects(self) -> sync.Effects:
        return sync.Effects(
            run=self.run,
            sleep=self.slept.append,
            notify=self.notes.append,
            syslog=self.logged.append,
        )


def _backup_dir(tmp_path: Path) -> Path:
    source = tmp_path / "backups"
    source.mkdir()
    (source / "server1.20260101.manifest.json").write_text('{"format": 1, "archives": []}')
    (source / "server1-etc.20260101.master.tar.zst").write_bytes(b"x")
    return source


def _config(tmp_path: Path, source: Path, **sync_values: object) -> Config:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("[raspberrypi]:2222 ssh-ed25519 AAAA\n")
    key = tmp_path / "key"
    key.write_text("secret")
    return parse(
        {
            "backup": {"directory": str(source)},
            "sync": {"log": str(tmp_path / "log" / "sync.log"), **sync_values},
            "targets": [
                {
                    **{k: v for k, v in REMOTE.__dict__.items() if v not in ("", False)},
                    "key": str(key),
                    "known_hosts": str(known_hosts),
                }
            ],
        }
    )


def test_a_network_failure_is_retried_with_backoff_then_succeeds(tmp_path: Path) -> None:
    config = _config(tmp_path, _backup_dir(tmp_path), retries=3, retry_delay=5)
    fake = FakeRsync([12, 255, 0], stderr="rsync: connection unexpectedly closed\n")
    [report] = sync.sync(config, None, tools=TOOLS, effects=fake.effects())
    assert report.ok
    assert report.attempts == 3
    assert report.bytes_sent == 4096
    assert fake.slept == [5, 10]
    assert "retry 1 of 3 in 5 s" in fake.notes[0]
    assert fake.logged == [report]


def test_retries_stop_after_the_configured_number(tmp_path: Path) -> None:
    config = _config(tmp_path, _backup_dir(tmp_path), retries=2, retry_delay=1)
    fake = FakeRsync([30, 30, 30, 0])
    [report] = sync.sync(config, None, tools=TOOLS, effects=fake.effects())
    assert not report.ok
    assert report.attempts == 3
    assert report.exit == 30


def test_a_usage_error_is_not_retried(tmp_path: Path) -> None:
    config = _config(tmp_path, _backup_dir(tmp_path))
    fake = FakeRsync([1, 0])
    [report] = sync.sync(config, None, tools=TOOLS, effects=fake.effects())
    assert report.attempts == 1
    assert fake.slept == []


def test_each_run_appends_one_log_line(tmp_path: Path) -> None:
    config = _config(tmp_path, _backup_dir(tmp_path))
    for _ in range(2):
        sync.sync(config, None, tools=TOOLS, effects=FakeRsync([0]).effects())
    lines = (tmp_path / "log" / "sync.log").read_text().splitlines()
    assert len(lines) == 2
    assert all(json.loads(line)["ok"] for line in lines)
    assert (tmp_path / "log" / "sync.log").stat().st_mode & 0o077 == 0


def test_an_empty_source_is_refused_logged_and_nothing_runs(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    config = _config(tmp_path, empty)
    fake = FakeRsync([0])
    with pytest.raises(KeyforgeError, match="holds no keyforge manifest"):
        sync.sync(config, None, tools=TOOLS, effects=fake.effects())
    assert fake.calls == []
    record = json.loads((tmp_path / "log" / "sync.log").read_text())
    assert record["ok"] is False
    assert "no keyforge manifest" in record["message"]


def test_a_missing_source_is_refused(tmp_path: Path) -> None:
    config = _config(tmp_path, tmp_path / "not-mounted")
    with pytest.raises(KeyforgeError, match="is not a directory"):
        sync.sync(config, None, tools=TOOLS, effects=FakeRsync([0]).effects())


def test_a_file_named_like_a_manifest_but_not_one_does_not_count(tmp_path: Path) -> None:
    source = tmp_path / "b"
    source.mkdir()
    (source / "x.manifest.json").write_text("not json")
    with pytest.raises(KeyforgeError, match="no keyforge manifest"):
        sync.check_source(source)


def test_a_missing_pin_refuses_the_target_and_names_ssh_keyscan(tmp_path: Path) -> None:
    config = _config(tmp_path, _backup_dir(tmp_path))
    (tmp_path / "known_hosts").unlink()
    fake = FakeRsync([0])
    [report] = sync.sync(config, None, tools=TOOLS, effects=fake.effects())
    assert not report.ok
    assert fake.calls == []
    assert "ssh-keyscan -p 2222 raspberrypi" in report.message


def test_a_running_backup_holds_the_lock_and_sync_refuses(tmp_path: Path) -> None:
    source = _backup_dir(tmp_path)
    config = _config(tmp_path, source)
    fake = FakeRsync([0])
    with (
        fsutil.locked(source / ".keyforge.lock"),
        pytest.raises(LockedError, match="another keyforge run holds"),
    ):
        sync.sync(config, None, tools=TOOLS, effects=fake.effects())
    assert fake.calls == []


def test_local_target_requiring_a_mountpoint_refuses_a_plain_directory(tmp_path: Path) -> None:
    source = _backup_dir(tmp_path)
    target = sync.LocalTarget("external", tmp_path / "drive", require_mountpoint=True)
    (tmp_path / "drive").mkdir()
    with pytest.raises(KeyforgeError, match="is not a mounted filesystem"):
        sync.check_target(source, target)
    sync.check_target(source, sync.LocalTarget("external", Path("/proc"), True))


def test_local_target_inside_the_source_is_refused(tmp_path: Path) -> None:
    source = _backup_dir(tmp_path)
    with pytest.raises(ConfigError, match="overlaps the source"):
        sync.check_target(source, sync.LocalTarget("x", source / "copy", False))


def test_dry_run_checks_the_guards_and_returns_the_command(tmp_path: Path) -> None:
    config = _config(tmp_path, _backup_dir(tmp_path))
    [line] = sync.dry_run(config, None, TOOLS)
    assert line.startswith("/usr/bin/rsync -az --delete")
    assert not (tmp_path / "log").exists()


def test_missing_key_file_is_a_file_error(tmp_path: Path) -> None:
    config = _config(tmp_path, _backup_dir(tmp_path))
    (tmp_path / "key").unlink()
    with pytest.raises(FileError, match=r"the key .* does not exist"):
        sync.dry_run(config, None, TOOLS)


@pytest.mark.parametrize(
    "changes",
    [{"host": "pi\n"}, {"user": "foo\n"}, {"remote_path": "srvbackups/\n"}, {"name": "pi\n"}],
    ids=["host", "user", "remote_path", "name"],
)
def test_a_trailing_newline_in_a_target_field_is_refused(changes: dict[str, object]) -> None:
    # '$' in a regular expression also matches before a final newline; the checks must not
    cfg = TargetConfig(**{**REMOTE.__dict__, **changes})
    with pytest.raises(ConfigError):
        sync.target_from_config(cfg, 0)


# --- the loss guard --------------------------------------------------------------------------

DAY = dt.date(2026, 12, 11)


def _names(host: str, stamps_kinds: Sequence[tuple[str, str]]) -> dict[str, sync.Stamp]:
    return {f"{host}-etc.{stamp}.{kind}.tar.zst": (1, int(stamp)) for stamp, kind in stamps_kinds}


def test_a_fresh_history_in_place_of_the_old_one_is_a_loss() -> None:
    sent = _names("server1", [("20261207", "master"), ("20261208", "incremental")])
    present = _names("server1", [("20261211", "master")])
    assert sync.unexpired_losses(sent, present, DAY, 14) == sorted(sent)


def test_a_chain_that_retention_expired_may_go() -> None:
    old = _names("server1", [("20261101", "master"), ("20261102", "incremental")])
    kept = _names("server1", [("20261207", "master")])
    assert sync.unexpired_losses({**old, **kept}, kept, DAY, 14) == []
    # inside the window the same chain is a loss
    assert sync.unexpired_losses({**old, **kept}, kept, dt.date(2026, 11, 10), 14) == sorted(old)


def test_the_newest_master_chain_is_never_expired() -> None:
    only = _names("server1", [("20260101", "master")])
    assert sync.unexpired_losses(only, {}, DAY, 14) == list(only)


def test_an_archive_replaced_under_its_own_name_is_a_loss() -> None:
    # a fresh history made the same day as the old one gets the same names
    sent = _names("server1", [("20261211", "master")])
    present = {name: (size + 1, mtime) for name, (size, mtime) in sent.items()}
    assert sync.unexpired_losses(sent, present, DAY, 14) == list(sent)
    assert sync.unexpired_losses(sent, dict(sent), DAY, 14) == []


def test_a_push_that_would_lose_archives_is_refused_and_rsync_never_runs(tmp_path: Path) -> None:
    source = _backup_dir(tmp_path)
    # last week's chain, well inside retention_days = 14
    week_ago = (dt.datetime.now() - dt.timedelta(days=7)).strftime("%Y%m%d")
    old = f"server1-etc.{week_ago}.master.tar.zst"
    (source / "server1-etc.20260101.master.tar.zst").rename(source / old)
    config = _config(tmp_path, source, retries=0)
    fake = FakeRsync([0, 0])
    [first] = sync.sync(config, None, tools=TOOLS, effects=fake.effects())
    assert first.ok
    [target] = sync.select_targets(config.targets, None)
    recorded = json.loads(sync.sent_state_path(config, target).read_text())
    assert list(recorded["archives"]) == [old]
    # the disk is not mounted: a fresh history takes the old one's place
    (source / old).unlink()
    today = dt.datetime.now().strftime("%Y%m%d")
    (source / f"server1-etc.{today}.master.tar.zst").write_bytes(b"y")
    [second] = sync.sync(config, None, tools=TOOLS, effects=fake.effects())
    assert not second.ok
    assert second.message.startswith(
        "refusing to sync to offsite: the push would delete or overwrite 1 archive(s)"
    )
    assert "--accept-loss" in second.message
    assert len(fake.calls) == 1
    with pytest.raises(KeyforgeError, match="would delete or overwrite 1 archive"):
        sync.dry_run(config, None, TOOLS)
    [third] = sync.sync(config, None, accept_loss=True, tools=TOOLS, effects=fake.effects())
    assert third.ok
    assert len(fake.calls) == 2


def test_max_delete_does_not_stand_in_for_the_loss_guard(tmp_path: Path) -> None:
    source = _backup_dir(tmp_path)
    config = _config(tmp_path, source, retries=0, max_delete=100000)
    fake = FakeRsync([0, 0])
    sync.sync(config, None, tools=TOOLS, effects=fake.effects())
    (source / "server1-etc.20260101.master.tar.zst").unlink()
    [report] = sync.sync(config, None, tools=TOOLS, effects=fake.effects())
    assert not report.ok
    assert len(fake.calls) == 1


def test_what_a_push_sent_is_kept_per_destination_not_per_target_name(tmp_path: Path) -> None:
    config = _config(tmp_path, _backup_dir(tmp_path), retries=0)

    def remote(path: str, port: int = 22) -> sync.RemoteTarget:
        return sync.RemoteTarget(
            "pi", "192.0.2.7", port, "foo", tmp_path / "k", path, tmp_path / "kh"
        )

    def state(target: sync.Target) -> Path:
        return sync.sent_state_path(config, target)

    # two configs on one host may both name their target "pi"
    assert state(remote("/srv/a/")) == state(remote("/srv/a/"))
    assert state(remote("/srv/a/")) != state(remote("/srv/b/"))
    assert state(remote("/srv/a/")) != state(remote("/srv/a/", port=2222))
    drive = sync.LocalTarget("pi", tmp_path / "drive", require_mountpoint=False)
    assert state(drive) != state(remote(f"{tmp_path / 'drive'}/"))
    assert state(drive).name.startswith("sync-pi-")


# --- a source per target ---------------------------------------------------------------------


def _local_targets_config(tmp_path: Path, **drive: object) -> Config:
    return parse(
        {
            "backup": {"directory": str(tmp_path / "backups")},
            "sync": {"log": str(tmp_path / "sync.log")},
            "general": {"state_dir": str(tmp_path / "state")},
            "targets": [
                {"name": "mirror", "path": str(tmp_path / "mirror")},
                {"name": "drive", "path": str(tmp_path / "drive"), **drive},
            ],
        }
    )


def test_a_target_with_a_source_of_its_own_gets_that_source_and_the_others_the_default(
    tmp_path: Path,
) -> None:
    default = _backup_dir(tmp_path)
    (tmp_path / "pushed-copy").mkdir()
    own_source = _backup_dir(tmp_path / "pushed-copy")
    (own_source / "only-in-the-copy").write_text("c")
    for name in ("mirror", "drive"):
        (tmp_path / name).mkdir()
    config = _local_targets_config(tmp_path, source=str(own_source))
    reports = sync.sync(config, None, effects=sync.Effects(syslog=lambda report: None))
    assert [r.ok for r in reports] == [True, True], [r.message for r in reports]
    sent = sorted(p.name for p in (tmp_path / "mirror").iterdir())
    assert sent == sorted(p.name for p in default.iterdir() if p.name != ".keyforge.lock")
    assert (tmp_path / "drive" / "only-in-the-copy").read_text() == "c"
    assert not (tmp_path / "mirror" / "only-in-the-copy").exists()
    plan = sync.plan(config, None, TOOLS)
    assert [plan.source_for(t) for t, _ in plan.commands] == [default, own_source]


def test_a_target_source_without_a_manifest_refuses_that_target_only(tmp_path: Path) -> None:
    _backup_dir(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    for name in ("mirror", "drive"):
        (tmp_path / name).mkdir()
    config = _local_targets_config(tmp_path, source=str(empty))
    fake = FakeRsync([0])
    reports = sync.sync(config, None, tools=TOOLS, effects=fake.effects())
    assert [(r.target, r.ok) for r in reports] == [("drive", False), ("mirror", True)]
    assert "holds no keyforge manifest" in reports[0].message
    assert len(fake.calls) == 1
    assert fake.calls[0][-2] == f"{tmp_path / 'backups'}/"


def test_a_target_source_must_be_absolute() -> None:
    with pytest.raises(ConfigError, match=r"\[\[targets\]\] #1 source must hold absolute paths"):
        parse({"targets": [{"name": "d", "path": "/mnt/d", "source": "relative"}]})
