"""capture local: on the sending server, learn the command rsync would send to the receiving
host without connecting anywhere.

The user's rsync runs with a remote shell that connects nowhere and writes down the arguments
rsync gave it; joined with spaces, exactly as ssh joins them, they are the command the receiving
host would see (``keyforge.receiver.capture`` records and installs it there). The user's own
remote shell (``-e``/``--rsh``/``RSYNC_RSH``) is reported, never run.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from keyforge.errors import CaptureError, UsageError
from keyforge.infra import runner
from keyforge.infra.templating import render
from keyforge.ssh import rsync_server

# rsync's options that take a value (the option table says which); their value may be the next
# word, which must then not be mistaken for -e or --rsh
_RSYNC_VALUE_LONG = frozenset(name for name, opt in rsync_server.LONG.items() if opt.value)
_RSYNC_VALUE_SHORT = frozenset(letter for letter, opt in rsync_server.SHORT.items() if opt.value)
_SSH_VALUE_FLAGS = frozenset("BbcDEeFIiJLlmOoPpQRSWw")


def split_remote_shell(text: str) -> list[str]:
    """Split an ``--rsh`` value into words exactly as rsync does (main.c, do_cmd).

    Words are separated by spaces only; '...' and "..." quote, and a doubled quote character
    inside quotes stands for itself. There are no backslash escapes.
    """
    words: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] == " ":
            i += 1
            continue
        word: list[str] = []
        quote = ""
        while i < n and (text[i] != " " or quote):
            char = text[i]
            if char in "'\"":
                if not quote:
                    quote = char
                    i += 1
                    continue
                if char == quote:
                    i += 1
                    if i >= n or text[i] != quote:
                        quote = ""
                        continue
            word.append(text[i])
            i += 1
        if quote:
            raise UsageError(f"missing trailing {quote} in the remote shell command {text!r}")
        words.append("".join(word))
    return words


def quote_for_remote_shell(word: str) -> str:
    """Quote one word so rsync's remote-shell splitter reads it back unchanged."""
    return "'" + word.replace("'", "''") + "'"


@dataclass(frozen=True)
class RsyncArgv:
    """The user's rsync command line with its remote-shell options taken out."""

    argv: tuple[str, ...]
    rsh: str | None
    positionals: tuple[str, ...] = ()


def extract_rsh(argv: Sequence[str]) -> RsyncArgv:
    """Take ``-e``/``--rsh`` out of an rsync argv (the last one wins, as in rsync)."""
    kept: list[str] = [argv[0]]
    positionals: list[str] = []
    rsh: str | None = None
    i = 1
    while i < len(argv):
        word = argv[i]
        following = argv[i + 1] if i + 1 < len(argv) else ""
        if word == "--":
            kept.extend(argv[i:])
            positionals.extend(argv[i + 1 :])
            break
        takes_next = False
        if word.startswith("--"):
            name, has_value, value = word[2:].partition("=")
            takes_next = not has_value and (name == "rsh" or name in _RSYNC_VALUE_LONG)
            if name == "rsh":
                rsh = value if has_value else following
            else:
                kept.extend([word, following] if takes_next else [word])
        elif word.startswith("-") and len(word) > 1:
            cluster = _value_in_cluster(word, following)
            if cluster is None:
                kept.append(word)
            elif word[cluster[0]] == "e":
                pos, rsh, takes_next = cluster
                if pos > 1:
                    kept.append(word[:pos])  # the flags before -e, e.g. -az of -aze
            else:
                takes_next = cluster[2]
                kept.extend([word, following] if takes_next else [word])
        else:
            kept.append(word)
            positionals.append(word)
        if takes_next and i + 1 >= len(argv):
            raise UsageError(f"rsync option {word} needs a value")
        i += 2 if takes_next else 1
    return RsyncArgv(tuple(kept), rsh, tuple(positionals))


def _value_in_cluster(word: str, following: str) -> tuple[int, str, bool] | None:
    """In a short-option cluster like ``-aze`` or ``-essh``: where the first option that takes
    a value is, its value, and whether that value is the next word."""
    for pos in range(1, len(word)):
        if word[pos] == "e" or word[pos] in _RSYNC_VALUE_SHORT:
            rest = word[pos + 1 :]
            if rest:
                return pos, rest, False
            return pos, following, True
    return None


@dataclass(frozen=True)
class RemoteShell:
    """The user's remote shell, reported but never run."""

    command: str
    origin: str
    words: tuple[str, ...]
    port: str | None = None
    identities: tuple[str, ...] = ()
    user: str | None = None
    other_options: tuple[str, ...] = ()

    def describe(self) -> list[str]:
        lines = [f"remote shell ({self.origin}), not run: {self.command}"]
        if self.port:
            lines.append(f"  port: {self.port}")
        lines.extend(f"  identity (key): {identity}" for identity in self.identities)
        if self.user:
            lines.append(f"  login user: {self.user}")
        if self.other_options:
            lines.append(f"  other options: {' '.join(self.other_options)}")
        return lines


def describe_remote_shell(command: str, origin: str) -> RemoteShell:
    """Pick out the port, key and user from an ssh-style remote shell command."""
    words = tuple(split_remote_shell(command))
    if not words:
        raise UsageError("the remote shell command is empty")
    port: str | None = None
    identities: list[str] = []
    user: str | None = None
    others: list[str] = []
    i = 1
    while i < len(words):
        word = words[i]
        if word.startswith("-") and len(word) > 1 and word[1] in _SSH_VALUE_FLAGS:
            letter = word[1]
            value = word[2:]
            if not value and i + 1 < len(words):
                i += 1
                value = words[i]
            if letter == "p":
                port = value
            elif letter == "i":
                identities.append(value)
            elif letter == "l":
                user = user or value  # ssh keeps the first -l
            elif letter == "o" and value.lower().startswith("port="):
                port = value.split("=", 1)[1]
            elif letter == "o" and value.lower().startswith("identityfile="):
                identities.append(value.split("=", 1)[1])
            else:
                others.append(f"-{letter} {value}")
        else:
            others.append(word)
        i += 1
    return RemoteShell(command, origin, words, port, tuple(identities), user, tuple(others))


@dataclass(frozen=True)
class LocalCapture:
    command: str
    host: str
    user: str | None
    remote_shell: RemoteShell


def parse_rsh_call(args: Sequence[str], skip: int) -> tuple[str, str | None, str]:
    """From the arguments rsync gave its remote shell: (host, -l user, command).

    rsync calls ``RSH [its own options] [-l USER] [-4|-6] HOST COMMAND...``; ``skip`` is the
    number of words the user's remote shell command put before ours. The command is the
    remaining words joined with single spaces, which is exactly what ssh sends.
    """
    rest = list(args[skip:])
    user: str | None = None
    while rest and rest[0].startswith("-"):
        if rest[0] == "-l" and len(rest) > 1:
            user = rest[1]
            rest = rest[2:]
        else:
            rest = rest[1:]
    if len(rest) < 2:
        raise CaptureError("rsync started its remote shell without a host and a command")
    return rest[0], user, " ".join(rest[1:])


def _is_remote_shell_spec(arg: str) -> bool:
    """``[user@]host:path`` as rsync reads it: a ':' before any '/' (``[v6]:`` included)."""
    host, colon, rest = arg.partition(":")
    if not colon or not host or "/" in host:
        return False
    return not rest.startswith(":")


def _require_remote_shell_transfer(positionals: Sequence[str]) -> None:
    """Refuse what would run without the remote shell: it would really copy or connect."""
    for arg in positionals:
        if arg.lower().startswith("rsync://") or "::" in arg.partition("/")[0]:
            raise UsageError(
                f"{arg!r} names an rsync daemon, which rsync reaches without a remote shell; "
                "capture local only handles HOST:PATH transfers over ssh"
            )
    if not any(_is_remote_shell_spec(arg) for arg in positionals):
        raise UsageError(
            "the rsync command names no HOST:PATH, so it would copy locally instead of "
            "starting a remote shell; give the command cron runs for the push"
        )


def _recorder_name(program: str) -> str:
    # rsync looks at the remote shell's name (it adds -4/-6 for "ssh"); keep that name
    name = Path(program).name
    return name if re.fullmatch(r"[A-Za-z0-9._+-]+", name) else "remote-shell"


def capture_local(argv: Sequence[str], *, environ: dict[str, str] | None = None) -> LocalCapture:
    """Run the user's rsync with a recording remote shell; return the command it would send."""
    if not argv:
        raise UsageError("give the rsync command after '--', e.g. -- rsync -az SRC HOST:DEST")
    if Path(argv[0]).name != "rsync":
        raise UsageError(f"the command after '--' must be rsync, not {argv[0]!r}")
    env = os.environ if environ is None else environ
    split = extract_rsh(argv)
    _require_remote_shell_transfer(split.positionals)
    if split.rsh is not None:
        shell = describe_remote_shell(split.rsh, "--rsh")
    elif env.get("RSYNC_RSH"):
        shell = describe_remote_shell(env["RSYNC_RSH"], "RSYNC_RSH")
    else:
        shell = describe_remote_shell("ssh", "rsync's default")
    workdir = Path(tempfile.mkdtemp(prefix="keyforge-capture-"))
    try:
        workdir.chmod(0o700)
        out = workdir / "args"
        fake = workdir / _recorder_name(shell.words[0])
        fake.write_text(render("rsh_recorder.sh.j2", out_path=shlex.quote(str(out))))
        fake.chmod(0o700)
        rsh = " ".join(quote_for_remote_shell(w) for w in (str(fake), *shell.words[1:]))
        result = runner.run([split.argv[0], f"--rsh={rsh}", *split.argv[1:]], check=False)
        if not out.exists():
            why = runner.first_error_line(
                result.stderr, fallback=f"exit status {result.returncode}"
            )
            raise CaptureError(
                f"rsync did not start a remote shell, so nothing was captured: {why}"
            )
        args = out.read_bytes().decode("utf-8", errors="surrogateescape").split("\0")[:-1]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    host, user, command = parse_rsh_call(args, len(shell.words) - 1)
    return LocalCapture(command, host, shell.user or user, shell)
