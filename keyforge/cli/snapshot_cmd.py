"""``keyforge snapshot``: dated snapshots of the synced copy, on the receiving host."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer

from keyforge.cli import options
from keyforge.cli.monitoring import monitored
from keyforge.cli.output import job_line, say, warn
from keyforge.errors import KeyforgeError, UsageError


def snapshot_command(
    config_path: options.ConfigOption = None,
    dry_run: Annotated[
        bool,
        options.dry_run(
            "Run the checks, then print the snapshot it would make, the rsync command and "
            "what retention would remove; write nothing."
        ),
    ] = False,
    list_: Annotated[
        bool,
        typer.Option(
            "--list",
            help="List the snapshots, oldest first: date, files, size, and the bytes each one "
            "adds (a file hard-linked to an older snapshot counts once).",
        ),
    ] = False,
    accept: Annotated[
        bool,
        typer.Option(
            "--accept",
            help="The copy lost files or sources on purpose: take it as it is, apply "
            "retention, and judge later copies against this snapshot (instead of failing as a "
            "wiped copy). Archives that do not match their manifests are never accepted.",
        ),
    ] = False,
    verbose: options.VerboseOption = False,
) -> None:
    """Keep dated snapshots of the synced copy where the backup key cannot reach them.

    Run on the receiving host after each push, as root or a user of its own: never as the user
    the backup key logs in as. Each run copies [snapshot] source into [snapshot] directory as
    a new snapshot named by the UTC time (rsync -a --link-dest: unchanged files are hard links
    to the previous snapshot), complete or not at all, then removes snapshots older than
    retention_days, always keeping the newest min_keep.

    Refuses to run when the store lies inside the synced copy, when it or a directory above it
    is writable by the copy's owner or by others, or when run as the copy's owner. Each snapshot
    is judged by content: every archive its manifests list must be there with its recorded size,
    and what is new since the last good snapshot must match its recorded hash. When it is not
    a good copy (an archive cut short, missing or forged, or the copy looks wiped: empty, its
    manifests or a source's full backups gone, most of its files gone) the snapshot is still
    taken as evidence but nothing is pruned, and the run fails saying so. Retention counts only
    good snapshots and never removes the newest good one.

    Outside a terminal a good run prints nothing unless --verbose; each run is a line in the
    run log and the system log, and pings [monitor] snapshot_ping.
    """
    from keyforge.receiver import snapshot
    from keyforge.sender import backup

    cfg = options.load_config(config_path)
    if list_:
        if dry_run:
            raise UsageError("--list and --dry-run contradict each other; give one")
        infos = snapshot.list_snapshots(cfg)
        for info in infos:
            flag = f"  (not a good copy: {info.problem})" if info.problem else ""
            say(
                f"{info.stamp}  {snapshot.human_time(info.when)}  {info.files:>8} files  "
                f"{backup.human_size(info.size):>9}  {backup.human_size(info.new_size):>9} new"
                + flag
            )
        if not infos:
            say(f"no snapshot in {cfg.snapshot.directory} yet")
        return
    with monitored(cfg, "snapshot", enabled=not dry_run):
        report = snapshot.run_snapshot(cfg, dry_run=dry_run, accept=accept)
        for message in report.warnings:
            warn(message)
        linked = f", unchanged files linked to {report.link_dest}" if report.link_dest else ""
        verb = "would take" if dry_run else "took"
        show = say if dry_run or report.problem else _quiet(verbose)
        show(f"{verb} snapshot {report.path} ({report.count.files} files{linked})")
        if dry_run:
            say(f"  {' '.join(report.argv)}")
        for stamp in report.pruned:
            show(f"{'would prune' if dry_run else 'pruned'} snapshot {stamp}")
        if report.problem:
            raise KeyforgeError(snapshot.problem_message(report))


def _quiet(verbose: bool) -> Callable[[str], None]:
    return lambda line: job_line(line, verbose=verbose)


def register(app: typer.Typer) -> None:
    app.command("snapshot")(snapshot_command)
