"""Every read of an archive's content starts here: the file, decoded into a plain tar stream.

:func:`open_archive` is the one place that turns an archive file into the tar stream it holds
(today: its decompressor). Restoring, verifying, listing, finding and drilling all read through
it, so a further decoding step (decryption) is added here once for all of them. The consumers
are GNU tar itself (extraction, ``--list``) and, for what tar's listing does not print, Python's
tar reader.

What tar's listing leaves out: in the pax format keyforge writes (``--xattrs``), the list of
names a directory held at each run (GNU.dumpdir) is a pax header, and ``tar --list`` never
prints it. Deletions and renames between runs live there, so :func:`dumpdirs` reads those
headers, and nothing else, with Python's reader.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tarfile
import tempfile
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import IO

from keyforge.errors import CommandError
from keyforge.infra import runner
from keyforge.sender import backup, listing


def decode_argv(archive: Path) -> list[str]:
    """The program that writes ``archive``'s tar stream to its stdout."""
    return backup.decompress_argv(archive)


@contextlib.contextmanager
def open_archive(archive: Path) -> Iterator[IO[bytes]]:
    """The plain tar stream of ``archive``, for one consumer to read.

    A decoder that fails (a truncated or damaged archive) is a CommandError naming the
    archive once the consumer is done; one stopped by the consumer closing early (SIGPIPE) is
    the consumer's business. Whatever the consumer raises stops the decoder.
    """
    with tempfile.TemporaryFile() as err_file:
        proc = runner.spawn(decode_argv(archive), stdout=subprocess.PIPE, stderr=err_file)
        assert proc.stdout is not None
        try:
            yield proc.stdout
        except BaseException:
            proc.stdout.close()
            proc.kill()
            proc.wait()
            raise
        proc.stdout.close()  # a decoder still writing gets SIGPIPE, never blocks
        returncode = proc.wait()
        if returncode not in (0, -signal.SIGPIPE):
            err_file.seek(0)
            detail = runner.first_error_line(
                err_file.read().decode("utf-8", errors="replace"), fallback=f"exit {returncode}"
            )
            raise CommandError(f"cannot read {archive.name}: {detail}")


def tar_through(archive: Path, argv: list[str], *, env: dict[str, str] | None = None) -> bytes:
    """Run GNU tar ``argv`` on the stream of ``archive``; its stdout. A failure names it."""
    with open_archive(archive) as stream:
        proc = runner.spawn(
            argv,
            stdin=stream,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **env} if env else None,
        )
        out, err = proc.communicate()
        if proc.returncode != 0:
            detail = runner.first_error_line(
                err.decode("utf-8", errors="replace"), fallback=f"exit {proc.returncode}"
            )
            raise CommandError(f"tar failed reading {archive.name}: {detail}")
    return out


def list_members(archive: Path) -> list[listing.Member]:
    """Every member of ``archive``, as GNU tar's own listing shows it."""
    out = tar_through(archive, ["tar", *listing.LIST_OPTIONS], env=listing.LIST_ENV)
    return listing.parse_listing(out)


def _raw_dumpdir(member: tarfile.TarInfo, tf: tarfile.TarFile) -> bytes | None:
    header = member.pax_headers.get("GNU.dumpdir")
    if header is not None:
        return header.encode("utf-8", "surrogateescape")
    if member.type == b"D":  # the older GNU format keeps it as the member's data
        data = tf.extractfile(member)
        return data.read() if data is not None else b""
    return None


def dumpdirs(archive: Path, directories: Collection[bytes] = ()) -> dict[bytes, list[bytes]]:
    """The GNU dump directory of each directory in ``archive`` (flag byte + name entries).

    GNU tar writes an incremental's directories before its files, so once every directory of
    ``directories`` (those tar's listing shows) has been read, the rest is not.
    """
    found: dict[bytes, list[bytes]] = {}
    waiting = set(directories)
    with open_archive(archive) as stream:
        try:
            with tarfile.open(
                fileobj=stream, mode="r|", encoding="utf-8", errors="surrogateescape"
            ) as tf:
                for member in tf:
                    raw = _raw_dumpdir(member, tf)
                    if raw is not None:
                        path = listing.member_path(os.fsencode(member.name))
                        found[path] = [item for item in raw.split(b"\0") if item]
                        waiting.discard(path)
                        if directories and not waiting:
                            break
        except tarfile.TarError as err:
            raise CommandError(f"cannot read {archive.name}: {err}") from err
    return found
