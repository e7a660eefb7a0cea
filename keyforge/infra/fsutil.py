"""File-system primitives every writer in keyforge goes through.

Nothing here is ever half-written: content lands in a temporary file in the same directory,
is fsynced, then renamed over the target, and the directory is fsynced so the rename survives
a crash. Secrets are created with their final mode from the first byte.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from keyforge.errors import FileError, LockedError

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def mount_point_of(path: Path) -> Path:
    """The mount point of the filesystem ``path`` (or, while it is missing, its nearest
    existing parent) lies on."""
    current = path.resolve()  # a symbolic link leads to the filesystem it points into
    while not current.exists() and current != current.parent:
        current = current.parent
    while not os.path.ismount(current) and current != current.parent:
        current = current.parent
    return current


def lies_on_mount(path: Path, mount: Path) -> bool:
    """Whether a filesystem is mounted on ``mount`` and ``path`` (or, while it is missing, its
    nearest existing parent) lies inside it, on that same filesystem."""
    if not os.path.ismount(mount):
        return False
    mount = mount.resolve()
    current = path.resolve()
    if current != mount and mount not in current.parents:
        return False
    while not current.exists() and current != mount:
        current = current.parent
    try:
        return current.stat().st_dev == mount.stat().st_dev
    except OSError:
        return False


def ensure_private_dir(path: Path) -> bool:
    """Create ``path`` with mode 0700 when missing; return True when it was created.

    An existing directory keeps its mode: tightening it silently could lock out another user,
    widening it would be worse. Callers warn about loose modes instead.
    """
    try:
        try:
            path.mkdir(mode=PRIVATE_DIR, parents=False)
        except FileNotFoundError:
            # one retry after making the parents: a file system that refuses mkdir with ENOENT
            # even then (procfs) must end in an error, not in a loop
            path.parent.mkdir(parents=True, exist_ok=True)
            path.mkdir(mode=PRIVATE_DIR, parents=False)
    except FileExistsError:
        if not path.is_dir():
            raise FileError(f"{path} exists and is not a directory") from None
        return False
    except OSError as err:
        raise FileError.from_os_error("create directory", path, err) from err
    # mkdir's mode is filtered by the umask; 0700 must hold whatever the umask says
    path.chmod(PRIVATE_DIR)
    return True


def atomic_write(
    path: Path,
    data: bytes,
    *,
    mode: int | None = None,
    keep_owner: bool = True,
    exclusive: bool = False,
) -> None:
    """Replace ``path`` with ``data`` atomically.

    ``mode`` is the final mode; when None an existing file keeps its mode and a new one gets
    0600. The temporary file is created 0600 and only then given its final mode, so a secret is
    never readable by others, not even for a moment. With ``exclusive`` the write fails when
    ``path`` already exists (checked again at rename time with a hard link, so a racing writer
    cannot be overwritten).
    """
    directory = path.parent
    try:
        existing = path.stat()
    except FileNotFoundError:
        existing = None
    except OSError as err:
        raise FileError.from_os_error("read", path, err) from err
    if existing is not None and exclusive:
        raise FileError(f"{path} already exists")
    final_mode = mode
    if final_mode is None:
        final_mode = stat.S_IMODE(existing.st_mode) if existing is not None else PRIVATE_FILE

    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as err:
        raise FileError.from_os_error("write in", directory, err) from err
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), final_mode)
            if keep_owner and existing is not None and os.geteuid() == 0:
                os.fchown(handle.fileno(), existing.st_uid, existing.st_gid)
            os.fsync(handle.fileno())
        if exclusive:
            # link() refuses to replace an existing name, unlike rename()
            os.link(tmp, path)
            tmp.unlink()
        else:
            tmp.replace(path)
        fsync_dir(directory)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if exclusive and err.errno == errno.EEXIST:
            raise FileError(f"{path} already exists") from err
        raise FileError.from_os_error("write", path, err) from err
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _writable_then_retry(func: Callable[..., Any], path: str, _exc_info: Any) -> None:
    """rmtree's error hook: a read-only directory (copied or restored as it was) blocks a
    non-root run from emptying it; open it up (the tree is ours to remove) and try again."""
    if func in (os.open, os.scandir, os.listdir):
        Path(path).chmod(PRIVATE_DIR)
        shutil.rmtree(path, onerror=_writable_then_retry)
        return
    Path(path).parent.chmod(PRIVATE_DIR)
    func(path)


def remove_tree(path: Path) -> None:
    """Remove the directory tree at ``path``, read-only parts included; a missing one is fine."""
    try:
        shutil.rmtree(path, onerror=_writable_then_retry)
    except FileNotFoundError:
        pass
    except OSError as err:
        raise FileError.from_os_error("remove", path, err) from err


def read_text_if_exists(path: Path) -> str | None:
    """The file's text, or None when it does not exist; any other failure is a FileError."""
    try:
        return path.read_bytes().decode("utf-8", errors="surrogateescape")
    except FileNotFoundError:
        return None
    except OSError as err:
        raise FileError.from_os_error("read", path, err) from err


def loose_mode_warnings(*paths: Path) -> list[str]:
    """Describe each path that is writable by group or others (sshd's StrictModes refuses them)."""
    warnings: list[str] = []
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            continue
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            warnings.append(
                f"{path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
                "sshd's StrictModes will ignore keys behind it"
            )
    return warnings


@contextlib.contextmanager
def locked(lock_path: Path, *, wait: bool = True, timeout_hint: str = "") -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` for the duration of the block.

    flock is released by the kernel when the process dies, so a killed run never leaves a stale
    lock behind. With ``wait=False`` a held lock raises LockedError at once.
    """
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
    except OSError as err:
        raise FileError.from_os_error("open lock file", lock_path, err) from err
    try:
        flags = fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB
        try:
            fcntl.flock(fd, flags)
        except BlockingIOError:
            raise LockedError(
                f"another keyforge run holds {lock_path}{timeout_hint}; try again later"
            ) from None
        yield
    finally:
        os.close(fd)
