"""The producer of a ``kind = "sqlite"`` dump: ``python -m keyforge.sender.sqlite_online FILE``.

A copy of a SQLite file that another process is writing may hold half a transaction. SQLite's
online backup API copies the pages under its own locking, in one step, so the copy is one
consistent state. It goes into memory, never into
a file (a plaintext temporary copy is what the archive pipeline exists to avoid), and its
serialised image is written to standard output, where the pipeline compresses it. The image
is a database file as it is: restored, it opens as is.
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

# Every page in one step, under one read lock: copied in steps, a database that another
# process writes all the time would make the copy start over after every step, for ever. The
# copy goes to memory, so the lock is held briefly; a writer waits for it (its busy timeout),
# and in WAL mode writes on meanwhile.
PAGES_PER_STEP = -1


def backup_image(path: Path) -> bytes:
    """The database at ``path`` as one consistent file image (opened read-only: a missing
    file is an error, never a new empty database)."""
    source = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
    try:
        memory = sqlite3.connect(":memory:")
        try:
            source.backup(memory, pages=PAGES_PER_STEP)
            return memory.serialize()
        finally:
            memory.close()
    finally:
        source.close()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write("usage: python -m keyforge.sender.sqlite_online FILE\n")
        return 2
    try:
        image = backup_image(Path(argv[0]))
    except sqlite3.Error as err:
        sys.stderr.write(f"cannot back up {argv[0]}: {err}\n")
        return 1
    sys.stdout.buffer.write(image)
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
