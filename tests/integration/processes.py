"""What the integration tests ask of /proc: is any process left behind?"""

from __future__ import annotations

from pathlib import Path

from keyforge.lab import sshd


def live_processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes (zombies excluded) that hold ``text``."""
    found = []
    for pid in sshd.processes_mentioning(text):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue  # gone since
        found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found
