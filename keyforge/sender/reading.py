"""Every read of an archive's content for list, find, restore --path and drill goes through
``pipeline.read_archive``: the file, decrypted and decompressed into a plain tar stream, read
by GNU tar itself (extraction, ``--list``) or, for what tar's listing does not print, Python's
tar reader.

What tar's listing leaves out: in the pax format keyforge writes (``--xattrs``), the list of
names a directory held at each run (GNU.dumpdir) is a pax header, and ``tar --list`` never
prints it. Deletions and renames between runs live there, so :func:`dumpdirs` reads those
headers, and nothing else, with Python's reader.
"""

from __future__ import annotations

import os
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path
from typing import IO

from keyforge.errors import CommandError
from keyforge.infra import runner
from keyforge.sender import listing, pipeline


def _drain(stream: IO[bytes]) -> None:
    """Read the rest of a stream the reader is done with, so no stage before it is cut short
    (a cut stage would look like a damaged archive)."""
    while stream.read(1 << 20):
        pass


def _tar_output(
    argv: Sequence[str], stream: IO[bytes], archive: Path, env: dict[str, str] | None
) -> bytes:
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


def list_members(
    archive: Path,
    *,
    identity: pipeline.Identity | None = None,
    encrypted_to: Sequence[str] = (),
) -> list[listing.Member]:
    """Every member of ``archive``, as GNU tar's own listing shows it."""
    argv = ["tar", *listing.LIST_OPTIONS]
    out = pipeline.read_archive(
        archive,
        lambda stream: _tar_output(argv, stream, archive, listing.LIST_ENV),
        identity=identity,
        encrypted_to=encrypted_to,
    )
    return listing.parse_listing(out)


def _raw_dumpdir(member: tarfile.TarInfo, tf: tarfile.TarFile) -> bytes | None:
    header = member.pax_headers.get("GNU.dumpdir")
    if header is not None:
        return header.encode("utf-8", "surrogateescape")
    if member.type == b"D":  # the older GNU format keeps it as the member's data
        data = tf.extractfile(member)
        return data.read() if data is not None else b""
    return None


def dumpdirs(
    archive: Path,
    directories: Collection[bytes] = (),
    *,
    identity: pipeline.Identity | None = None,
    encrypted_to: Sequence[str] = (),
) -> dict[bytes, list[bytes]]:
    """The GNU dump directory of each directory in ``archive`` (flag byte + name entries).

    GNU tar writes an incremental's directories before its files, so once every directory of
    ``directories`` (those tar's listing shows) has been read, the rest is only drained.
    """

    def read(stream: IO[bytes]) -> dict[bytes, list[bytes]]:
        found: dict[bytes, list[bytes]] = {}
        waiting = set(directories)
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
        _drain(stream)
        return found

    return pipeline.read_archive(archive, read, identity=identity, encrypted_to=encrypted_to)


def extract_selected(
    archive: Path,
    argv_for: Callable[[Path, int], list[str]],
    target: Path,
    select: Iterable[bytes],
    *,
    identity: pipeline.Identity | None = None,
    encrypted_to: Sequence[str] = (),
) -> runner.Result:
    """GNU tar extracting only the members ``select`` names (relative paths, b"" the top) from
    ``archive`` into ``target``; ``argv_for(target, fd)`` is tar's argv reading the names from
    descriptor ``fd``. tar's result, for the caller to judge."""
    with tempfile.TemporaryFile() as names:
        names.write(b"".join(b"./" + name + b"\0" for name in select))
        names.flush()
        argv = argv_for(target, names.fileno())

        def extract(stream: IO[bytes]) -> runner.Result:
            result = runner.run(
                argv, stdin=stream, capture_stdout=False, check=False, pass_fds=(names.fileno(),)
            )
            _drain(stream)
            return result

        return pipeline.read_archive(archive, extract, identity=identity, encrypted_to=encrypted_to)
