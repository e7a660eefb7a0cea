"""The one rule for finding the programs keyforge runs or writes into cron, systemd and sshd.

cron, systemd and sshd start programs with a PATH of their own, so everything keyforge hands
them is an absolute path, found once here:

* a program (rsync, ssh, sshd, tar…): on this PATH, else in the sbin directories root's PATH may
  lack; the path as found, not with its symbolic links resolved (``/usr/bin/rsync`` may be an
  alternatives link whose target changes on an upgrade; the link's name does not);
* keyforge itself: the script beside the running Python first (a venv's ``bin/``, whatever the
  PATH), then the one on PATH. ``schedule`` (cron, systemd) and ``install --gate`` (sshd's
  ``command=``) both ask ``keyforge_program``, so they get the same answer.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

# where sshd and other admin programs live when root's (or cron's) PATH lacks them
SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_program(name: str) -> str | None:
    """``name``'s absolute path: on PATH, else in SBIN_DIRS; None when it is in neither."""
    found = shutil.which(name)
    if found is not None:
        return str(Path(found).absolute())  # absolute, not resolve(): the link's name stays
    for directory in SBIN_DIRS:
        candidate = Path(directory) / name
        if _executable(candidate):
            return str(candidate)
    return None


def keyforge_program() -> str | None:
    """The keyforge script's absolute path: beside the running Python, else on PATH."""
    beside = Path(sys.executable).absolute().parent / "keyforge"
    if _executable(beside):
        return str(beside)
    found = shutil.which("keyforge")
    return str(Path(found).absolute()) if found is not None else None


def keyforge_argv() -> list[str]:
    """How cron or systemd starts this keyforge: the script, else this Python with -m keyforge.

    The Python is named as it runs (a venv's ``bin/python``), never resolved to the system
    interpreter the venv links to, which cannot import keyforge.
    """
    program = keyforge_program()
    if program is not None:
        return [program]
    return [str(Path(sys.executable).absolute()), "-m", "keyforge"]
