"""``keyforge sync``, ``schedule``, ``status``, ``check``: offsite and unattended, on the sending
server."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from keyforge.cli import options
from keyforge.cli.monitoring import monitored
from keyforge.cli.output import job_line, say, warn
from keyforge.errors import CommandError, KeyforgeError, UsageError

if TYPE_CHECKING:
    from keyforge.infra import runner
    from keyforge.schedule import Change


def sync_command(
    config_path: options.ConfigOption = None,
    target: Annotated[
        str | None,
        options.target("Sync only the [[targets]] entry with this name. Default: every target."),
    ] = None,
    dry_run: Annotated[
        bool,
        options.dry_run(
            "Check the source and the targets, print each rsync command, connect nowhere."
        ),
    ] = False,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait", help="Wait for a running backup to finish instead of refusing at once."
        ),
    ] = False,
    accept_loss: Annotated[
        bool,
        typer.Option(
            "--accept-loss",
            help="Push even when the copy would lose archives that the last successful push "
            "sent and that retention keeps (a new backup disk, archives removed by hand).",
        ),
    ] = False,
    print_server_command: Annotated[
        bool,
        typer.Option(
            "--print-server-command",
            help="Print the 'rsync --server ...' line each remote target's forced command must "
            "be (for 'keyforge install --command'); connect nowhere, send nothing.",
        ),
    ] = False,
    verbose: options.VerboseOption = False,
) -> None:
    """Push the backup directory to each target with rsync over the locked-down key.

    Runs rsync -az --delete --partial-dir=.rsync-partial --delay-updates with --timeout and
    --max-delete (and --bwlimit when set) over ssh with the backup key only, the pinned
    known_hosts file only and no prompts: a file reaches its name on the copy only once the
    whole push is in. It refuses a source that holds no keyforge manifest (an empty or unmounted
    backup disk must never wipe the copy) and a push that would delete archives the last
    successful push sent and retention keeps (unless --accept-loss), takes the backup
    directory's lock, retries network failures with backoff, and appends one JSON line per
    target to the sync log and a line to syslog.

    In a terminal it shows rsync's progress (bytes, percent, rate, ETA); outside one it prints
    nothing on success unless --verbose. Each run pings [monitor] sync_ping.

    --dry-run never connects: the receiving side runs its forced command, which ignores
    rsync's -n and would really delete. --print-server-command shows the line that forced
    command must be, learnt from this very rsync command without connecting.
    """
    import sys

    from keyforge.monitor.runs import TargetResult
    from keyforge.sender import sync

    cfg = options.load_config(config_path)
    tools = sync.find_tools()
    if print_server_command:
        import shlex

        for remote, command in sync.server_commands(cfg, target, tools):
            say(f"# {remote.name} ({remote.destination}) will be asked to run:")
            say(command)
            say(
                f"# lock the key to it there: keyforge install --key {remote.key.name}.pub "
                f"--from ADDRESS --command {shlex.quote(command)}"
            )
        return
    if dry_run:
        for line in sync.dry_run(cfg, target, tools, accept_loss=accept_loss):
            say(line)
        say("dry run: checked the source and the targets; connected nowhere")
        return
    effects = sync.Effects(notify=warn)
    if sys.stderr.isatty():
        effects.run = _run_with_display
    with monitored(cfg, "sync", default_target="") as run:
        reports = sync.sync(
            cfg, target, wait=wait, accept_loss=accept_loss, tools=tools, effects=effects
        )
        failed = [report for report in reports if not report.ok]
        for report in reports:
            if run is not None:
                run.add(
                    TargetResult(report.target, report.ok, report.bytes_sent, None, report.message)
                )
            if report.ok:
                job_line(sync.summary(report), verbose=verbose)
        if failed:
            raise CommandError("; ".join(sync.summary(report) for report in failed))


def _run_with_display(argv: Sequence[str]) -> runner.Result:
    """rsync with its progress shown on stderr, in a terminal."""
    from keyforge.infra import runner
    from keyforge.sender import progress, sync

    display = progress.SyncDisplay(argv[-1])
    try:
        return runner.run_streaming(sync.with_progress(argv), display.feed)
    finally:
        display.close()


def schedule_command(
    config_path: options.ConfigOption = None,
    cron: Annotated[
        bool, typer.Option("--cron", help="A /etc/cron.d/keyforge file (default without systemd).")
    ] = False,
    systemd: Annotated[
        bool,
        typer.Option(
            "--systemd",
            help="systemd service and timer units in /etc/systemd/system (default when systemd "
            "runs this machine).",
        ),
    ] = False,
    install: Annotated[
        bool,
        typer.Option("--install", help="Write the files, changing only those that differ."),
    ] = False,
    dry_run: Annotated[
        bool,
        options.dry_run("With --install: show what would change; write nothing."),
    ] = False,
    dest: Annotated[
        Path | None,
        typer.Option(
            "--dest",
            metavar="DIR",
            show_default=False,
            help="Install into DIR instead of /etc/cron.d or /etc/systemd/system (for staging "
            "an image); with --list, read DIR.",
        ),
    ] = None,
    list_all: Annotated[
        bool,
        typer.Option(
            "--list",
            help="Show every config's installed jobs (cron files and timers): set, scheduler, "
            "config, each job's time.",
        ),
    ] = False,
) -> None:
    """Run the backup daily and the sync at night after it, from cron or systemd timers.

    Times come from the config's [schedule] section. Commands use absolute paths (cron's PATH
    is not yours); the cron file sets PATH and MAILTO; the systemd units run Persistent timers
    with a RandomizedDelaySec, at Nice=10 and IOSchedulingClass=idle, and need the backup
    directory mounted. Without --install the files are printed.

    On the receiving host, a config with a [snapshot] section schedules 'keyforge snapshot' at
    snapshot_at (default two hours after sync_at) as [schedule] user, and the backup and the
    sync only when it also has [backup] or [[targets]].

    Each config's jobs are a set of their own, named for the config file: keyforge.toml's are
    /etc/cron.d/keyforge and keyforge-*.timer, drive.toml's /etc/cron.d/keyforge-drive and
    keyforge-drive-*.timer ([schedule] name sets it). Installing one config never touches
    another's set; --list shows them all.

    A config with a [drill] section (keyforge init writes one) also gets 'keyforge drill'
    once a month, on [drill] day at [drill] at, on either host.
    """
    from keyforge import config, schedule

    if list_all:
        _list_schedules(dest, install=install or dry_run)
        return
    if cron and systemd:
        raise UsageError("--cron and --systemd contradict each other; give one")
    if dry_run and not install:
        raise UsageError("--dry-run goes with --install (without --install nothing is written)")
    path = config.resolve_path(config_path).absolute()
    cfg = config.load(path)
    kind = schedule.CRON if cron else schedule.SYSTEMD if systemd else schedule.default_kind()
    jobs = schedule.jobs_for(cfg, path, schedule.keyforge_argv())
    schedule.check_snapshot_user(cfg, jobs, schedule.owner_name)
    files = schedule.rendered_files(kind, cfg.schedule, jobs, dest, cfg.drill)
    mail = schedule.mail_warning(cfg.schedule, kind, schedule.find_sendmail)
    if mail is not None:
        warn(mail)
    if not install:
        for file_path, text in files.items():
            if len(files) > 1:
                say(f"# --- {file_path}")
            typer.echo(text, nl=False)
        return
    changes = schedule.plan_install(files)
    schedule.check_owner(changes, jobs)
    if not dry_run:
        schedule.apply(changes)
    _say_changes(changes, dry_run=dry_run)
    if dest is None:
        for other in schedule.other_kind_files(kind, jobs.name):
            warn(f"{other} is installed too: remove it, or every job runs twice")
    if kind == schedule.SYSTEMD and not dry_run and any(c.action != "unchanged" for c in changes):
        say("next: systemctl daemon-reload && systemctl enable --now " + " ".join(jobs.timers))


def _say_changes(changes: Sequence[Change], *, dry_run: bool) -> None:
    for change in changes:
        if dry_run and change.action != "unchanged":
            typer.echo(change.diff(), nl=False)
            say(f"would be {change.action}: {change.path}")
        else:
            say(f"{change.action}: {change.path}")


def _list_schedules(dest: Path | None, *, install: bool) -> None:
    from keyforge import schedule

    if install:
        raise UsageError("--list only reads; it does not go with --install or --dry-run")
    dirs = (dest,) if dest else (schedule.CRON_DIR, schedule.SYSTEMD_DIR)
    for line in schedule.list_lines(schedule.installed_sets(*dirs)):
        typer.echo(line)


def status_command(
    config_path: options.ConfigOption = None,
    as_json: Annotated[bool, options.as_json("Print the status as JSON.")] = False,
    max_age: Annotated[
        float,
        typer.Option(
            "--max-age",
            metavar="HOURS",
            min=0.0,
            help="Fail when the last successful backup or sync is older than this.",
        ),
    ] = 26.0,  # a daily job, plus its random delay and a slow run
    ping: Annotated[
        bool,
        typer.Option(
            "--ping",
            help="Report the verdict to [monitor] freshness_ping like a job (start, success or "
            "the exit code), and print nothing when all is well unless --verbose: the check "
            "'keyforge schedule' installs on a receiving host.",
        ),
    ] = False,
    verbose: options.VerboseOption = False,
) -> None:
    """When the last backup and the last sync of each target succeeded: age and size.

    Exits 1 when any of them is older than --max-age or never succeeded, when a target's last
    sync failed, when the newest backup run made no archive of a [[dumps]] entry (it failed),
    or when the last run of any job (backup, sync, snapshot) failed, so a
    monitoring system (Nagios, a cron MAILTO, a systemd OnFailure) can call it as is; --json
    lists the reasons. Reads the newest complete manifest in the backup directory, the sync
    log and the run log; connects nowhere (but for --ping). On a receiving host the manifests
    are the sending servers': one line per sending host whose pushes land there ("pushed copy
    of server1"), aged by its newest manifest whose archives all arrived. A config with
    [snapshot] and no [backup] reads the synced copy ([snapshot] source).
    """
    from datetime import UTC, datetime

    from keyforge.sender import dbguard, status

    cfg = options.load_config(config_path)
    with monitored(cfg, "freshness", enabled=ping):
        result = status.assess(cfg, datetime.now(UTC), max_age)
        if not status.reads_copy(cfg):
            for line in dbguard.warnings(cfg):
                warn(line)
        quiet = ping and result.ok and not as_json
        if as_json:
            say(status.as_json(result))
        else:
            for line in status.lines(result):
                if quiet:
                    job_line(line, verbose=verbose)
                else:
                    say(line)
        if not result.ok:
            stale = [item.name for item in result.items if not item.ok]
            raise KeyforgeError(f"not ok: {', '.join(stale)}")


def check_command(
    config_path: options.ConfigOption = None,
    target: Annotated[
        str | None,
        options.target(
            "Check only the [[targets]] entry with this name. Default: every remote target."
        ),
    ] = None,
) -> None:
    """Prove from the sending server that the backup key can do nothing but its rsync.

    Logs in with the key as the sync does and asks for a command of its own, a shell, a
    terminal and a port forward. A locked key answers each with the forced rsync server (which
    stops at the first unreadable byte, before any file or deletion). Prints what each probe
    saw and exits 1 when the key is less restricted than expected.
    """
    from keyforge.sender import check, dbguard

    cfg = options.load_config(config_path)
    for line in dbguard.warnings(cfg):
        warn(line)
    findings = check.run_checks(cfg, target)
    loose = []
    for name, results in findings.items():
        say(f"{name}:")
        for finding in results:
            say(f"  {'ok  ' if finding.ok else 'FAIL'} {finding.probe}: {finding.saw}")
            if not finding.ok:
                loose.append(f"{name}: {finding.probe}")
    for item in check.NOT_PROBED:
        say(f"  not probed: {item}")
    if loose:
        raise KeyforgeError(f"the key is less restricted than expected ({'; '.join(loose)})")


def notify_command(
    unit: Annotated[
        str,
        typer.Option(
            "--unit",
            metavar="UNIT",
            help="The systemd unit that failed, e.g. keyforge-backup.service (systemd's "
            "OnFailure= gives it as the instance name).",
        ),
    ],
    config_path: options.ConfigOption = None,
) -> None:
    """Report a keyforge job that systemd saw fail to its monitors.

    Started by keyforge-notify@.service, which every keyforge unit names in OnFailure=: a job
    killed, out of memory or timed out cannot ping for itself. Sends the job's failure ping
    ([monitor] JOB_ping, with the unit's last journal lines, scrubbed) and the webhook, and
    adds the failure to the run log, so 'keyforge status' fails too. A failure keyforge
    reported itself minutes ago is not reported twice.
    """
    import os

    from keyforge.infra import runner, tools
    from keyforge.monitor import job

    cfg = options.load_config(config_path)
    lines: list[str] = []
    journalctl = tools.find_program("journalctl")
    if journalctl is not None:
        argv = [journalctl, "--unit", unit, "--lines", "20", "--no-pager", "--output", "cat"]
        try:
            found = runner.run(argv, check=False, timeout=10)
            lines = found.stdout.decode("utf-8", "replace").splitlines()
        except KeyforgeError:
            lines = []
    record = job.report_unit_failure(cfg, unit, dict(os.environ), lines, job.Effects(warn=warn))
    if record is None:
        say(f"{unit}: keyforge reported this failure itself")


def register(app: typer.Typer) -> None:
    app.command("sync")(sync_command)
    app.command("schedule")(schedule_command)
    app.command("status")(status_command)
    app.command("check")(check_command)
    app.command("notify")(notify_command)
