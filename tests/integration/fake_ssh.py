"""A fake ``ssh`` that does what ssh and sshd do with a command, with no sshd.

It skips ssh's options and the host, joins the remaining words with single spaces into
SSH_ORIGINAL_COMMAND (as ssh sends them and sshd sets them), then runs the forced command in
``$KEYFORGE_TEST_FORCED`` with ``sh -c``. When ``$KEYFORGE_TEST_REWRITE`` holds a sed script,
the command is rewritten with it first, as an older or newer client rsync would send it.
"""

from __future__ import annotations

from pathlib import Path

FAKE_SSH = """#!/bin/sh
while [ $# -gt 0 ]; do
  case $1 in
    -[pilobcDEFIJLmOQRSWw]) shift 2 ;;
    -*) shift ;;
    *) break ;;
  esac
done
shift
command="$*"
if [ -n "$KEYFORGE_TEST_REWRITE" ]; then
  command=$(printf '%s' "$command" | sed "$KEYFORGE_TEST_REWRITE")
fi
SSH_ORIGINAL_COMMAND=$command
SSH_CLIENT="192.0.2.10 40000 22"
export SSH_ORIGINAL_COMMAND SSH_CLIENT
exec /bin/sh -c "$KEYFORGE_TEST_FORCED"
"""


def write_fake_ssh(path: Path) -> Path:
    """Write the fake ssh at ``path``, executable; return ``path``."""
    path.write_text(FAKE_SSH)
    path.chmod(0o755)
    return path
