"""``keyforge init``, ``backup``, ``prune``, ``restore``, ``verify``: the local backups, on the
sending server."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from keyforge.cli import options
from keyforge.cli.monitoring import monitored
from keyforge.cli.output import job_line, say, warn
from keyforge.errors import KeyforgeError, UsageError


def init_command(
    config_path: options.ConfigOption = None,
    host: Annotated[
        str | None,
        typer.Option(
            "--host",
            help="Name of this server in archive names. Default: the short host name.",
            show_default=False,
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite an existing config file.")
    ] = False,
    dry_run: Annotated[
        bool,
        options.dry_run("Print the config that would be written; write nothing."),
    ] = False,
) -> None:
    """Write a config file with every default shown and commented.

    Sources default to /etc, /home, /var, /boot and /root; archives go to /mnt/backups/<host>.
    An existing config is never overwritten unless --force is given. The file is made 0600.
    """
    from keyforge import config
    from keyforge.infra import fsutil

    path = config.resolve_path(config_path)
    text = config.render_default(host)
    if dry_run:
        typer.echo(text, nl=False)
        return
    if path.exists() and not force:
        raise UsageError(f"{path} already exists; pass --force to overwrite it")
    if not path.parent.is_dir():
        fsutil.ensure_private_dir(path.parent)
    fsutil.atomic_write(path, text.encode(), mode=0o600, exclusive=not force)
    say(f"wrote {path}")


def backup_command(
    config_path: options.ConfigOption = None,
    full: Annotated[
        bool, typer.Option("--full", help="Start a new chain with a full (master) backup now.")
    ] = False,
    dry_run: Annotated[
        bool, options.dry_run("Print the archives and commands; write nothing.")
    ] = False,
    allow_empty: Annotated[
        bool,
        typer.Option(
            "--allow-empty",
            help="No warning for a source that is empty or shrank since its last master.",
        ),
    ] = False,
    verbose: options.VerboseOption = False,
) -> None:
    """Archive every source with GNU tar --listed-incremental, then apply retention.

    One archive per source per run: a master on the configured day (full_every) or when a source
    has none, an incremental relative to the previous run otherwise. Archives appear only once
    complete; a manifest records each one's size, BLAKE3 hash and chain. A source that fails leaves
    nothing behind and the others are still backed up; the run then fails naming each one and
    prunes nothing. A source that is empty or shrank by more than shrink_warn_percent since its
    last master is warned about. Shows progress in a terminal (the total estimated from the
    previous run, percent and ETA); outside one it prints nothing on success unless --verbose.
    Each run is one line in the run log and the system log, and pings [monitor] backup_ping.
    """
    from keyforge.sender import backup, dbguard, hooks, progress

    cfg = options.load_config(config_path)
    with monitored(cfg, "backup", enabled=not dry_run) as run:
        interactive = sys.stderr.isatty()
        note = run.note if run is not None else None
        reporter: progress.TerminalReporter | progress.LogReporter
        if interactive and not dry_run:
            totals = progress.estimate_totals(cfg, force_full=full)
            reporter = progress.TerminalReporter(totals=totals, listener=note)
        else:
            reporter = progress.LogReporter(listener=note)
        if dry_run:
            report = backup.run_backup(cfg, force_full=full, dry_run=True, reporter=reporter)
            for line in [*backup.describe_plan(report.plan), *backup.describe_dumps(cfg)]:
                say(line)
            for line in dbguard.warnings(cfg):
                warn(line)
            return

        def attempt(log: hooks.RunLog) -> backup.BackupReport:
            logged = hooks.LoggingReporter(reporter, log)
            for line in dbguard.warnings(cfg):
                logged.warn(line)
            return backup.run_backup(cfg, force_full=full, allow_empty=allow_empty, reporter=logged)

        try:
            report = hooks.with_hooks(cfg, attempt)
        except backup.SourcesFailedError as err:
            if err.report.entries:
                say(progress.summary_line(cfg.host, err.report))
            if run is not None:
                run.add(progress.target_result(cfg, err.report, ok=False))
            raise
        if run is not None:
            run.add(progress.target_result(cfg, report, ok=True))
        job_line(progress.summary_line(cfg.host, report), verbose=verbose)


def prune_command(
    config_path: options.ConfigOption = None,
    dry_run: Annotated[
        bool,
        options.dry_run("List the chains that would be removed; remove nothing."),
    ] = False,
) -> None:
    """Remove whole chains older than retention_days (every backup run does this too).

    A chain goes only when its newest archive is older than the window, and the newest full
    backup of each source is never removed.
    """
    from keyforge.sender import backup

    cfg = options.load_config(config_path)
    doomed = backup.run_prune(cfg, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for chain in doomed:
        say(f"{verb} chain {chain.name} ({len(chain.archives)} archives)")
    if not doomed:
        say("nothing to prune")


AT_HELP = (
    "Restore as of this run: a day (YYYY-MM-DD: its last run), a run as 'keyforge list' shows "
    "it (20261128-093000) or a time (2026-11-28T09:30: the newest run made by then). "
    "Default: the latest."
)


def restore_command(
    to: Annotated[
        Path | None,
        typer.Option(
            "--to",
            metavar="DIR",
            show_default=False,
            help="Empty (or new) directory to restore into; with --dump the file to write "
            "(default, or '-': standard output).",
        ),
    ] = None,
    dump: Annotated[
        str | None,
        typer.Option(
            "--dump",
            metavar="NAME",
            show_default=False,
            help="Restore this [[dumps]] stream instead of a source: the dump as its tool "
            "made it, for pg_restore, mariadb or sqlite3 to load.",
        ),
    ] = None,
    source: Annotated[
        str | None,
        typer.Option(
            "--source",
            metavar="PATH",
            show_default=False,
            help="The configured source to restore, e.g. /etc (with --path: optional).",
        ),
    ] = None,
    path: Annotated[
        str | None,
        typer.Option(
            "--path",
            metavar="PATH",
            show_default=False,
            help="Only this file or directory, e.g. etc/nginx or /etc/nginx/nginx.conf; it "
            "lands in DIR as it lies in its source (DIR/nginx/nginx.conf).",
        ),
    ] = None,
    at: Annotated[
        str | None, typer.Option("--at", metavar="WHEN", show_default=False, help=AT_HELP)
    ] = None,
    config_path: options.ConfigOption = None,
    from_dir: options.FromOption = None,
    host: options.HostOption = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Restore into a non-empty DIR (files the backup says "
            "were deleted are deleted there; with --path, the path there is replaced; with "
            "--dump, an existing file is replaced).",
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        options.dry_run("List the archives that would be applied; change nothing."),
    ] = False,
    allowed_signers: options.AllowedSignersOption = None,
    insecure_unsigned: options.InsecureUnsignedOption = False,
    identity: options.IdentityOption = None,
) -> None:
    """Rebuild a source, or one path of it, as it was at a run: its master, then each
    incremental in order.

    Encrypted archives (*.tar.zst.age) need --identity FILE: one of the keys they were
    encrypted to. It is checked against every archive of the chain before anything is written.

    GNU tar's incremental extraction also deletes files that were deleted between runs, so the
    result is the tree as it stood, not a union of every version. With --path only that file
    or directory is extracted, from the archives holding its versions as of that run (read
    from tar's listings; a directory renamed since is followed). Run as root to give files
    their recorded owners back; anyone else gets them as their own (tar --no-same-owner), and
    is told so. Nothing is written into a synced copy: only where keyforge backup writes (its
    lock is there) does restore take that lock. --from DIR reads a synced copy or a snapshot
    with no config file. Every manifest of the chain must be signed by a key allowed_signers
    admits, and every archive be what it records; else nothing is restored. With --dump NAME,
    writes that dump (signed and checked against its manifest alike) to --to FILE or to
    standard output; an encrypted dump (*.dump.zst.age) needs --identity FILE too, and is
    decrypted on its way out.
    """
    from keyforge.sender import catalog, restore

    cfg = options.load_backups(config_path, from_dir, host)
    when = catalog.parse_at(at) if at else None
    if dump is not None:
        if source is not None or path is not None:
            raise UsageError("--dump and --source (or --path) each name what to restore: give one")
        to_stdout = to is None or str(to) == "-"
        record = restore.run_dump_restore(
            cfg,
            dump,
            None if to_stdout else to,
            at=when,
            force=force,
            dry_run=dry_run,
            stdout=_stdout_fd,
            identity=options.load_identity(identity),
            trust=options.trust(cfg, allowed_signers, insecure=insecure_unsigned),
        )
        if dry_run:
            say(f"would write {record.name}")
        elif not to_stdout:
            say(f"restored dump {dump} ({record.name}) into {to}")
        return
    if to is None:
        raise UsageError("restore needs --to DIR (or --dump NAME)")
    inner: bytes | None = None
    if path is not None:
        source, inner = catalog.resolve_path(cfg, path, source)
    if source is None:
        raise UsageError("give --source (a configured source) or --path")
    restore.slug_for(cfg, source)  # a wrong request first, then who may sign
    trust = options.trust(cfg, allowed_signers, insecure=insecure_unsigned)
    notice = restore.owner_notice()
    if notice:
        warn(notice)
    key = options.load_identity(identity)
    archives = restore.run_restore(
        cfg,
        source,
        to,
        at=when,
        force=force,
        dry_run=dry_run,
        path=inner,
        identity=key,
        trust=trust,
    )
    verb = "would apply" if dry_run else "applied"
    for record in archives:
        say(f"{verb} {record.name}")
    if not dry_run:
        what = catalog.shown_path(source, inner) if inner else source
        say(f"restored {what} into {to}")


def _stdout_fd() -> int:
    """Standard output's descriptor, flushed: the dump goes there straight from the
    decompressor, never through keyforge."""
    sys.stdout.flush()
    return sys.stdout.fileno()


def verify_command(
    config_path: options.ConfigOption = None,
    from_dir: options.FromOption = None,
    host: options.HostOption = None,
    scratch: Annotated[
        Path | None,
        typer.Option(
            "--scratch",
            metavar="DIR",
            show_default=False,
            help="Restore for the check into a new directory inside DIR (removed afterwards; "
            "nothing else in DIR is touched). Default: .verify-scratch in the backup directory "
            "where keyforge backup writes, the system's temporary directory for a synced copy.",
        ),
    ] = None,
    allowed_signers: options.AllowedSignersOption = None,
    insecure_unsigned: options.InsecureUnsignedOption = False,
    identity: options.IdentityOption = None,
) -> None:
    """Prove the backups restore: check every archive's hash against the manifests, then
    restore the latest chain of each source and compare content, modes, owners, mtimes,
    symlinks, hard links and xattrs with what the archives record, and read the newest
    archive of each [[dumps]] stream back whole (decrypted and decompressed, into nothing).

    Encrypted archives are restored for the check only with --identity FILE. Without it (as
    on the receiving host, which holds no key) each one's size, hash and age header are
    checked against its manifest, and verify says that their content was not checked.

    Owners are compared only when run as root (no one else can restore them). On a synced
    copy nothing is written into it: no lock, and the trial restores go to --scratch or the
    system's temporary directory. --from DIR reads a synced copy or a snapshot with no config
    file. Every chain's manifests must be signed by a key allowed_signers admits
    (--insecure-unsigned for an old, unsigned chain)."""
    from keyforge.sender import restore
    from keyforge.sender.backup import human_size

    cfg = options.load_backups(config_path, from_dir, host)
    trust = options.trust(cfg, allowed_signers, insecure=insecure_unsigned)
    notice = restore.owner_notice(verify=True)
    if notice:
        warn(notice)
    key = options.load_identity(identity)
    report = restore.run_verify(cfg, scratch=scratch, identity=key, trust=trust)
    for verdict in report.sources:
        state = "ok" if not verdict.problems else f"{len(verdict.problems)} problem(s)"
        count = len(verdict.archives)
        if not verdict.content_checked:
            say(
                f"{verdict.source}: {count} encrypted archive(s): ciphertext and age header "
                "match the manifest; content not checked (no --identity)"
            )
            continue
        say(f"{verdict.source}: {count} archive(s), {verdict.entries} entries, {state}")
    for verdict in report.dumps:
        state = "ok" if not verdict.problems else f"{len(verdict.problems)} problem(s)"
        if not verdict.content_checked:
            say(
                f"{verdict.source}: encrypted dump: ciphertext and age header match the "
                "manifest; content not checked (no --identity)"
            )
            continue
        say(f"{verdict.source}: {human_size(verdict.dump_bytes)} read back whole, {state}")
    if not report.ok:
        problems = [*report.problems]
        for verdict in [*report.sources, *report.dumps]:
            problems += [f"{verdict.source}: {p}" for p in verdict.problems]
        raise KeyforgeError(f"verify failed: {restore.summarize_problems(problems)}")
    unchecked = report.unchecked_sources
    if unchecked:
        say(
            f"verify ok: {report.checked_archives} archive(s) match their manifests; the content "
            f"of {', '.join(unchecked)} was not checked: encrypted, and no --identity given"
        )
        return
    say(f"verify ok: {report.checked_archives} archive(s) match their manifests and restore")


def register(app: typer.Typer) -> None:
    app.command("init")(init_command)
    app.command("backup")(backup_command)
    app.command("prune")(prune_command)
    app.command("restore")(restore_command)
    app.command("verify")(verify_command)
