"""``keyforge list``, ``find``, ``drill``: what the backups hold, and the monthly proof that they
restore, on either host."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated

import typer

from keyforge.cli import options
from keyforge.cli.monitoring import monitored
from keyforge.cli.output import job_line, say, warn
from keyforge.errors import KeyforgeError, UsageError


def _when(mtime: int) -> str:
    return dt.datetime.fromtimestamp(mtime, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def list_command(
    config_path: options.ConfigOption = None,
    from_dir: options.FromOption = None,
    host: options.HostOption = None,
    source: Annotated[
        str | None,
        typer.Option(
            "--source",
            metavar="PATH",
            show_default=False,
            help="List what this source held as of --at (default: the latest run), from tar's "
            "own listings, instead of the runs.",
        ),
    ] = None,
    at: Annotated[
        str | None,
        typer.Option(
            "--at",
            metavar="WHEN",
            show_default=False,
            help="With --source: a day (its last run), a run (20261128-093000) or a time.",
        ),
    ] = None,
    identity: options.IdentityOption = None,
) -> None:
    """Every run with its archives and their sizes; with --source, the files of one run.

    The runs come from the archive names (a run's stamp is what restore --at takes); the files
    from GNU tar's own listing of each archive of the chain, deletions and renames between
    runs applied as tar's incremental restore applies them.
    """
    from keyforge.sender import backup, catalog, restore

    cfg = options.load_backups(config_path, from_dir, host)
    if source is None:
        if at is not None:
            raise UsageError("--at goes with --source (without it every run is listed)")
        runs = catalog.list_runs(cfg)
        if not runs:
            raise KeyforgeError(f"no archives of {cfg.host} in {cfg.backup_dir}")
        for run in runs:
            say(f"{run.stamp}  {len(run.archives)} archive(s)  {backup.human_size(run.size)}")
            for line in run.archives:
                size = backup.human_size(line.size)
                say(f"  {line.kind:<11} {line.source:<12} {size:>9}  {line.name}")
        return
    slug = restore.slug_for(cfg, source)
    key = options.load_identity(identity)
    chain, state = catalog.tree_at(cfg, slug, catalog.parse_at(at) if at else None, key)
    if not chain:
        raise KeyforgeError(f"no full backup of {source} in {cfg.backup_dir}")
    say(f"{source} as of run {chain[-1].stamp} ({len(chain)} archive(s)):")
    for path in sorted(state):
        member = state[path].member
        say(
            f"{member.kind:<8} {member.mode:04o} {member.uid}:{member.gid} {member.size:>10} "
            f"{_when(member.mtime)}  {catalog.shown_path(source, path)}"
        )


def find_command(
    pattern: Annotated[
        str,
        typer.Argument(
            metavar="PATTERN",
            help="A shell glob: without '/' it matches file names (nginx.conf, '*.pem'); "
            "with '/' whole paths (etc/nginx/*).",
        ),
    ],
    config_path: options.ConfigOption = None,
    from_dir: options.FromOption = None,
    host: options.HostOption = None,
    source: Annotated[
        str | None,
        typer.Option(
            "--source", metavar="PATH", show_default=False, help="Search this source only."
        ),
    ] = None,
    identity: options.IdentityOption = None,
) -> None:
    """Which runs hold a path: for every path matching PATTERN, each run that holds it, with
    its size and mtime then and the archive holding that version, and the first run it is
    gone from (deleted, or renamed away).

    Reads GNU tar's own listing of every archive; nothing is extracted. Exits 1 when nothing
    matches.
    """
    from keyforge import layout
    from keyforge.sender import catalog, restore

    cfg = options.load_backups(config_path, from_dir, host)
    sources = None
    if source is not None:
        slug = restore.slug_for(cfg, source)
        sources = [s for s in cfg.backup.sources if layout.source_slug(s) == slug]
    found = catalog.find(cfg, pattern, sources, options.load_identity(identity))
    if not found:
        raise KeyforgeError(f"no path in the backups of {cfg.host} matches {pattern!r}")
    for item in found:
        say(item.path)
        for seen in item.sightings:
            member = seen.held.member
            say(
                f"  {seen.stamp:<17} {member.kind:<8} {member.size:>10} "
                f"{_when(member.mtime)}  {seen.held.archive}"
            )
        if item.gone_in is not None:
            say(f"  {item.gone_in:<17} gone")


def drill_command(
    config_path: options.ConfigOption = None,
    from_dir: options.FromOption = None,
    host: options.HostOption = None,
    scratch: Annotated[
        Path | None,
        typer.Option(
            "--scratch",
            metavar="DIR",
            show_default=False,
            help="Restore into a new directory inside DIR, removed afterwards. Default: [drill] "
            "scratch, else the system's temporary directory; never inside a backup directory, "
            "a copy or a source.",
        ),
    ] = None,
    spot_check: Annotated[
        int | None,
        typer.Option(
            "--spot-check",
            metavar="N",
            min=0,
            show_default=False,
            help="Also compare N random restored files with the live sources (sending server "
            "only). Default: [drill] spot_check.",
        ),
    ] = None,
    allowed_signers: options.AllowedSignersOption = None,
    insecure_unsigned: options.InsecureUnsignedOption = False,
    identity: options.IdentityOption = None,
    verbose: options.VerboseOption = False,
) -> None:
    """Prove the backups restore: every archive the manifests expect is there and matches its
    hash, and the newest chain of every source, restored into a scratch directory, equals
    what tar's listings say it holds.

    Every chain's manifests must be signed by a key allowed_signers admits (--allowed-signers,
    else [backup] allowed_signers or signing_key's public half on the sending server, [snapshot]
    allowed_signers on a receiving host); an unsigned or badly signed chain fails the drill.

    A missing incremental, a flipped byte and a truncated archive are each named. The result
    and its duration are recorded in the state directory, where 'keyforge status' shows them;
    a failed drill exits 1. On a receiving host (a config with [snapshot] and no [backup], or
    --from DIR) it reads the synced copy and writes nothing into it; reading the copy is all
    the rights it needs. 'keyforge schedule' runs it monthly.
    """
    from keyforge.config import reads_copy
    from keyforge.sender import drill, restore

    if from_dir is not None:
        own = options.load_backups(None, from_dir, host)
        target, guard, live = own, None, False
    else:
        own = options.load_backups(config_path, None, host)
        target, guard, live = drill.drill_config(own), own, not reads_copy(own)
    count = own.drill.spot_check if spot_check is None else spot_check
    where = scratch or (Path(own.drill.scratch) if own.drill.scratch else None)
    pinned = own.snapshot.allowed_signers if reads_copy(own) else ""
    trust = options.trust(
        own, allowed_signers or (Path(pinned) if pinned else None), insecure=insecure_unsigned
    )
    notice = restore.owner_notice(verify=True)
    if notice:
        warn(notice)
    key = options.load_identity(identity)
    with monitored(own, "drill"):
        report = drill.run_drill(
            target,
            scratch=where,
            spot_check=count,
            live_sources=live,
            guard=guard,
            identity=key,
            trust=trust,
        )
        recorded = drill.record(own, report)
        for verdict in report.sources:
            if verdict.note:
                job_line(f"{verdict.source}: {verdict.note}", verbose=verbose)
        if not report.ok:
            say(drill.summary(report))  # the failure's detail goes to stderr below
            raise KeyforgeError(
                f"drill failed (recorded in {recorded}): "
                + restore.summarize_problems(report.all_problems)
            )
        job_line(drill.summary(report), verbose=verbose)


def register(app: typer.Typer) -> None:
    app.command("list")(list_command)
    app.command("find")(find_command)
    app.command("drill")(drill_command)
