"""[hooks]: commands run around each backup, as backup-manager's pre/post commands and
borgmatic's before/after/on-error hooks.

Each hook is an argv list (a shell only if the user writes ``["sh", "-c", …]``), run through
the runner with a timeout and environment variables that name the run, its result and its
log. A failing ``before`` stops the backup with one line (and ``on_error`` runs); ``after``
runs after a run that succeeded, ``on_error`` after one that failed.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

from keyforge.config import Config, state_dir
from keyforge.errors import CommandError, KeyforgeError
from keyforge.infra import fsutil, runner
from keyforge.layout import ArchiveEntry
from keyforge.sender.backup import Reporter

HOOKS = ("before", "after", "on_error")
LOG_NAME = "last-backup.log"  # in the state directory: what the hooks' KEYFORGE_LOG names

T = TypeVar("T")


def hook_env(
    base: Mapping[str, str],
    config: Config,
    *,
    hook: str,
    run: str,
    result: str,
    log: Path,
    error: str = "",
) -> dict[str, str]:
    """The hook's environment: keyforge's own, and what the run was (pure)."""
    env = dict(base)
    env.update(
        {
            "KEYFORGE_HOOK": hook,
            "KEYFORGE_COMMAND": "backup",
            "KEYFORGE_HOST": config.host,
            "KEYFORGE_RUN": run,  # when the run started, which also names it in the log
            "KEYFORGE_RESULT": result,  # "running" (before), "ok" or "failed"
            "KEYFORGE_ERROR": error,  # the one line a failed run ended with
            "KEYFORGE_LOG": str(log),  # the run's warnings and result, one per line
            "KEYFORGE_BACKUP_DIR": str(config.backup_dir),
        }
    )
    if config.path is not None:
        env["KEYFORGE_CONFIG"] = str(config.path.absolute())
    return env


def run_hook(config: Config, hook: str, env: Mapping[str, str]) -> None:
    """Run one hook if it is set; its failure or its timeout is a CommandError naming it."""
    argv: tuple[str, ...] = getattr(config.hooks, hook)
    if not argv:
        return
    try:
        result = runner.run(argv, env=env, timeout=config.hooks.timeout, check=False)
    except CommandError as err:
        raise CommandError(f"hook {hook} ({argv[0]}): {err}") from err
    if result.returncode != 0:
        detail = runner.first_error_line(result.stderr, fallback=f"exit {result.returncode}")
        raise CommandError(f"hook {hook} ({argv[0]}) failed: {detail}")


def _same_code(message: str, err: KeyforgeError) -> KeyforgeError:
    """A new one-line message for ``err``, with its exit code."""
    wrapped = KeyforgeError(message)
    wrapped.exit_code = err.exit_code
    return wrapped


class LoggingReporter:
    """A run's reporter that also keeps each warning for the run's log."""

    def __init__(self, inner: Reporter, log: RunLog) -> None:
        self.inner = inner
        self.log = log

    def progress(self, source: str, written: int, elapsed: float) -> None:
        self.inner.progress(source, written, elapsed)

    def archive_done(self, entry: ArchiveEntry, elapsed: float) -> None:
        self.inner.archive_done(entry, elapsed)

    def warn(self, message: str) -> None:
        self.log.lines.append(f"warning: {message}")
        self.inner.warn(message)


class RunLog:
    """The lines a run leaves for its hooks: every warning, then its result."""

    def __init__(self, config: Config, started: dt.datetime) -> None:
        self.path = state_dir(config) / LOG_NAME
        self.started = started.isoformat(timespec="seconds")
        self.lines: list[str] = [f"backup {config.host} started {self.started}"]

    def write(self) -> None:
        fsutil.ensure_private_dir(self.path.parent)
        text = "".join(line + "\n" for line in self.lines)
        fsutil.atomic_write(self.path, text.encode(), mode=fsutil.PRIVATE_FILE)


def with_hooks(
    config: Config,
    action: Callable[[RunLog], T],
    *,
    now: dt.datetime | None = None,
    environ: Mapping[str, str] | None = None,
) -> T:
    """``action`` between the hooks: ``before`` (its failure stops the run), then ``after``
    or ``on_error``. ``action`` gets the run's log to add its warnings to."""
    hooks = config.hooks
    if not (hooks.before or hooks.after or hooks.on_error):
        return action(RunLog(config, now or dt.datetime.now()))
    log = RunLog(config, now or dt.datetime.now().astimezone())
    base = dict(os.environ if environ is None else environ)

    def env(hook: str, result: str, error: str = "") -> dict[str, str]:
        return hook_env(
            base, config, hook=hook, run=log.started, result=result, log=log.path, error=error
        )

    log.write()
    try:
        run_hook(config, "before", env("before", "running"))
        value = action(log)
    except KeyforgeError as err:
        message = f"backup not run: {err}" if str(err).startswith("hook before") else str(err)
        log.lines.append(f"failed: {message}")
        log.write()
        try:
            run_hook(config, "on_error", env("on_error", "failed", message))
        except KeyforgeError as hook_err:
            log.lines.append(f"failed: {hook_err}")
            log.write()
            raise _same_code(f"{message}; and {hook_err}", err) from err
        if message != str(err):
            raise _same_code(message, err) from err
        raise
    log.lines.append("ok")
    log.write()
    run_hook(config, "after", env("after", "ok"))
    return value
