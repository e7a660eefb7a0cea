"""keyforge's own exceptions, and the table of exit codes they and the CLI use.

The library raises these; only the CLI turns them into a message on stderr and an exit code,
so every caller of the library sees one family of errors with a readable message. Each exit
code means one thing (``EXIT_CODES``); the README's table is checked against it by a test.

The gate's start-up path imports this module, so it stays standard-library-only and cheap: no
typing, no dataclasses, nothing but class statements and literals.
"""

from __future__ import annotations

import os

# code -> what it means, the one table the README shows. A class below carries its code in
# ``exit_code``; the rows without a class are results a command reports without raising.
EXIT_CODES = (
    (0, "success (audit: nothing above info)"),
    (
        1,
        "a check found a problem: status, check, verify, a sync refused, the gate's refusal, a "
        "snapshot's wipe guard, a demo step",
    ),
    (
        2,
        "a wrong request: a bad option or value, options that conflict, a command keyforge will "
        "not install",
    ),
    (3, "an authorized_keys line (or key line) sshd would refuse"),
    (4, "a file or directory that cannot be read or written"),
    (5, "an external command (tar, rsync, ssh, sshd) failed"),
    (6, "the configuration file is missing, unreadable, or has a wrong key or type"),
    (
        7,
        "a key that cannot be made, read or accepted (weak type, bad file, an age identity that "
        "cannot open an archive)",
    ),
    (8, "a value that cannot be written into an authorized_keys line safely"),
    (9, "no usable capture: no log, an empty one, or none for the key asked about"),
    (10, "audit: the worst finding is low"),
    (11, "audit: the worst finding is medium"),
    (12, "audit: the worst finding is high"),
    (13, "audit: the worst finding is critical"),
    (14, "the private sshd (demo, tests) could not be configured or started"),
    (75, "another keyforge run holds the lock: try again later (EX_TEMPFAIL)"),
    (130, "interrupted (Ctrl-C)"),
)
# audit's severities -> exit code (the rows 10-13 above)
AUDIT_EXIT_CODES = {"info": 0, "low": 10, "medium": 11, "high": 12, "critical": 13}
INTERRUPTED = 130


class KeyforgeError(Exception):
    """Base class: ``str(err)`` is the one-line message shown to the user.

    Raised as it is, it means a check found a problem (exit 1).
    """

    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(KeyforgeError):
    """The request itself is wrong (bad value, conflicting options)."""

    exit_code = 2


class ParseError(KeyforgeError):
    """A line of an authorized_keys file (or a key) that sshd would refuse."""

    exit_code = 3

    def __init__(
        self, reason: str, *, lineno: int | None = None, source: str | None = None
    ) -> None:
        self.reason = reason
        self.lineno = lineno
        self.source = source
        where = ""
        if source is not None and lineno is not None:
            where = f"{source}:{lineno}: "
        elif lineno is not None:
            where = f"line {lineno}: "
        elif source is not None:
            where = f"{source}: "
        super().__init__(f"{where}{reason}")


class KeyMaterialError(KeyforgeError):
    """A key that cannot be made, read or accepted (weak type, bad file)."""

    exit_code = 7


class RenderError(KeyforgeError):
    """A value that cannot be written into an authorized_keys line safely."""

    exit_code = 8


class ConfigError(KeyforgeError):
    """The configuration file is missing, unreadable or has a wrong key or type."""

    exit_code = 6


class LockedError(KeyforgeError):
    """Another keyforge run holds the lock."""

    exit_code = 75  # EX_TEMPFAIL: try again later


class FileError(KeyforgeError):
    """A file or directory that cannot be read or written as needed."""

    exit_code = 4

    @classmethod
    def from_os_error(cls, action: str, path: os.PathLike[str] | str, err: OSError) -> FileError:
        reason = err.strerror or str(err)
        return cls(f"cannot {action} {os.fspath(path)}: {reason}")


class CommandError(KeyforgeError):
    """An external command (tar, rsync, ssh) failed."""

    exit_code = 5


# --- the receiving host's capture and gate -------------------------------------------------


class CaptureError(KeyforgeError):
    """No usable capture: missing or empty log, or none for the key asked about; or rsync
    started no remote shell for 'capture local'."""

    exit_code = 9


class NotRsyncServerError(UsageError):
    """A captured command that keyforge will not install without --allow-any-command."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"the captured command is not a plain rsync server command: {reason}")


class ForbiddenDestinationError(UsageError):
    """A captured command that reaches where sshd or the login shell reads: never installed."""


class GateRefusalError(KeyforgeError):
    """A command the gate will not run; the message is the reason (the gate's check failed)."""

    exit_code = 1


class GateUsageError(KeyforgeError):
    """The gate's own command line (in authorized_keys) is wrong: a wrong request."""

    exit_code = 2


# --- the lab ---------------------------------------------------------------------------------


class SshdError(KeyforgeError):
    """The private sshd could not be configured or started."""

    exit_code = 14


class DemoError(KeyforgeError):
    """A step of the demo did not do what it must (its check failed)."""

    exit_code = 1
