"""keyforge's own exceptions.

The library raises these; only the CLI turns them into a message on stderr and an exit code,
so every caller of the library sees one family of errors with a readable message.
"""

from __future__ import annotations

import os


class KeyforgeError(Exception):
    """Base class: ``str(err)`` is the one-line message shown to the user."""

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

    exit_code = 3


class RenderError(KeyforgeError):
    """A value that cannot be written into an authorized_keys line safely."""

    exit_code = 3


class ConfigError(KeyforgeError):
    """The configuration file is missing, unreadable or has a wrong key or type."""

    exit_code = 2


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


class CaptureError(KeyforgeError):
    """No usable capture: missing or empty log, or none for the key asked about; or rsync
    started no remote shell for 'capture local'."""

    exit_code = 4


class CommandError(KeyforgeError):
    """An external command (tar, rsync, ssh) failed."""

    exit_code = 5
