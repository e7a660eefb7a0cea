"""Capture: learn what rsync really asks the receiving host to run, then lock the key to it.

Two ways to learn it:

* on the receiving host, ``capture start`` makes a *recorder* the key's forced command. The next
  push is refused, and the recorder appends one record (time, client address, key, the command
  as ``SSH_ORIGINAL_COMMAND`` held it) to a 0600 log. The key stays restricted throughout.
* on the sending server, ``capture local`` runs the user's rsync with a remote shell that
  connects nowhere and writes down the arguments rsync gave it; joined with spaces, exactly as
  ssh joins them, they are the command the receiving host would see.

The rest is pure: decoding records (the command is stored hex-encoded, so no command text,
however hostile, can pass for a second record), reading an ``rsync --server`` command, putting
its cryptic flag string into words, and rewriting a leading ``~`` to an absolute home.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import os
import pwd
import re
import shlex
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from keyforge.errors import (
    CaptureError,
    FileError,
    ForbiddenDestinationError,
    NotRsyncServerError,
    ParseError,
    UsageError,
)
from keyforge.infra import fsutil, runner
from keyforge.infra.templating import render
from keyforge.receiver import install
from keyforge.ssh import authorized_keys as ak
from keyforge.ssh import wire

RECORD_TAG = "keyforge-capture-1"
# 'capture start' writes one of these before any record: what follows it is this capture's
START_TAG = "keyforge-capture-start-1"
RECORDER_NAME = "capture-recorder"
LOG_NAME = "capture.log"
RECORDER_MODE = 0o700

_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
# the recorder keeps only these characters (anything else becomes "unknown")
_CLIENT = re.compile(r"[0-9A-Za-z:.%]+")
_KEY_ID = re.compile(r"[A-Za-z0-9+/:=]+")
_HEX = re.compile(r"(?:[0-9a-f]{2})*")


# --- where things live -------------------------------------------------------------------------


def keyforge_dir(home: Path) -> Path:
    return home / ".ssh" / "keyforge"


def default_log_path(home: Path | None = None) -> Path:
    return keyforge_dir(home if home is not None else Path.home()) / LOG_NAME


def home_for(authorized_keys: Path) -> Path:
    """The home of the user whose authorized_keys file this is: where the recorder and its log
    go, and what a leading ``~`` means for that user's forced command.

    ``<home>/.ssh/authorized_keys`` names its home. For a file elsewhere (an
    ``AuthorizedKeysFile`` outside the home) it is its owner's home when root runs keyforge,
    else the caller's own.
    """
    authorized_keys = authorized_keys.absolute()  # the forced command needs absolute paths
    if authorized_keys.parent.name == ".ssh":
        return authorized_keys.parent.parent
    if os.geteuid() == 0:
        try:
            return Path(pwd.getpwuid(authorized_keys.stat().st_uid).pw_dir)
        except (OSError, KeyError):
            pass
    return Path.home()


def key_id(blob: str | bytes) -> str:
    """``SHA256:<base64, no padding>`` of a key blob, as ``ssh-keygen -l`` shows it."""
    return wire.fingerprint(blob if isinstance(blob, bytes) else base64.b64decode(blob))


# --- the recorder ---------------------------------------------------------------------------


# How the recorder answers on stderr; a sending server that reads either knows its push
# reached the recorder, so trying again would only record it again.
RECORDED_NOTICE = "keyforge: command recorded, not run"
UNRECORDED_NOTICE = "keyforge: command not run"
RECORDER_NOTICES = (RECORDED_NOTICE, UNRECORDED_NOTICE)


def render_recorder(log: Path) -> str:
    """The recorder script for ``log``; values are shell-quoted here, never in the template."""
    return render(
        "recorder.sh.j2",
        tag=RECORD_TAG,
        log_path=shlex.quote(str(log)),
        recorded=shlex.quote(
            f"{RECORDED_NOTICE}; run 'keyforge capture show' on the receiving host"
        ),
        unrecorded=shlex.quote(f"{UNRECORDED_NOTICE}, and it could not be recorded in "),
    )


def recorder_command(recorder: Path, key: str) -> str:
    """The forced command that runs the recorder and tags each record with the key."""
    if _KEY_ID.fullmatch(key) is None:
        raise UsageError(f"not a key fingerprint: {key!r}")
    return f"{shlex.quote(str(recorder))} {key}"


@dataclass(frozen=True)
class Recorder:
    """What ``install_recorder`` wrote (or would write, with dry_run)."""

    directory: Path
    script: Path
    log: Path
    created_dir: bool
    warnings: tuple[str, ...] = ()


def _hand_to_home_owner(home: Path, paths: Iterable[Path]) -> None:
    """When root writes into another user's home, give the new files to that user.

    The recorder runs as that user and must be able to write its log beside it.
    """
    if os.geteuid() != 0:
        return
    try:
        owner = home.stat()
        for path in paths:
            if path.stat().st_uid != owner.st_uid:
                os.chown(path, owner.st_uid, owner.st_gid)
    except OSError as err:
        raise FileError.from_os_error("hand over", home, err) from err


def install_recorder(home: Path, *, dry_run: bool = False) -> Recorder:
    """Write ``~/.ssh/keyforge/capture-recorder`` (0700, in a 0700 directory)."""
    directory = keyforge_dir(home)
    script = directory / RECORDER_NAME
    log = directory / LOG_NAME
    if dry_run:
        return Recorder(directory, script, log, not directory.exists())
    text = render_recorder(log)
    ssh_dir_existed = directory.parent.exists()
    created = fsutil.ensure_private_dir(directory)
    if not ssh_dir_existed:
        directory.parent.chmod(fsutil.PRIVATE_DIR)
    warnings: list[str] = []
    mode = directory.stat().st_mode & 0o777
    if mode & 0o077:
        warnings.append(
            f"{directory} is mode {mode:04o}, so others may read the capture log; "
            f"run: chmod 700 {directory}"
        )
    fsutil.atomic_write(script, text.encode("utf-8"), mode=RECORDER_MODE)
    made = [directory.parent] if not ssh_dir_existed else []
    _hand_to_home_owner(home, [*made, directory, script])
    return Recorder(directory, script, log, created, tuple(warnings))


# --- records --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One call of the recorder. ``command`` is None for a login that asked for no command."""

    lineno: int
    time: str
    client: str
    key: str
    command: str | None

    def as_json(self) -> dict[str, object]:
        return {
            "line": self.lineno,
            "time": self.time,
            "client": self.client,
            "key": self.key,
            "command": self.command,
        }


def decode_record(line: str, *, lineno: int = 0, source: str | None = None) -> Record:
    """One log line (with its newline) back into a Record; anything else is a ParseError."""

    def bad(reason: str) -> ParseError:
        return ParseError(reason, lineno=lineno or None, source=source)

    if not line.endswith("\n"):
        raise bad("incomplete record (no line end): the recorder was interrupted")
    fields = line[:-1].split("\t")
    if len(fields) != 5 or fields[0] != RECORD_TAG:
        raise bad("not a keyforge capture record")
    _, when, client, key, command = fields
    if _TIME.fullmatch(when) is None:
        raise bad(f"bad time {when!r}")
    if client != "unknown" and _CLIENT.fullmatch(client) is None:
        raise bad("bad client address")
    if key != "unknown" and _KEY_ID.fullmatch(key) is None:
        raise bad("bad key fingerprint")
    if command == "-":
        return Record(lineno, when, client, key, None)
    if not command.startswith("x") or _HEX.fullmatch(command, 1) is None:
        raise bad("bad command encoding")
    try:
        raw = binascii.unhexlify(command[1:])
    except binascii.Error:
        raise bad("bad command encoding") from None
    return Record(lineno, when, client, key, raw.decode("utf-8", errors="surrogateescape"))


@dataclass(frozen=True)
class Start:
    """A ``capture start``: when, for which key, and the from= it allowed (None: anywhere)."""

    lineno: int
    time: str
    key: str
    from_patterns: tuple[str, ...] | None


def encode_start(time: str, key: str, from_patterns: Sequence[str] | None) -> str:
    patterns = ",".join(from_patterns) if from_patterns is not None else "-"
    return f"{START_TAG}\t{time}\t{key}\t{patterns}\n"


def decode_start(line: str, *, lineno: int = 0, source: str | None = None) -> Start:
    fields = line.removesuffix("\n").split("\t")
    if not line.endswith("\n") or len(fields) != 4 or fields[0] != START_TAG:
        raise ParseError("not a keyforge capture start", lineno=lineno or None, source=source)
    _, when, key, patterns = fields
    if _TIME.fullmatch(when) is None or _KEY_ID.fullmatch(key) is None:
        raise ParseError("bad capture start", lineno=lineno or None, source=source)
    return Start(lineno, when, key, None if patterns == "-" else tuple(patterns.split(",")))


@dataclass(frozen=True)
class CaptureLog:
    path: Path
    records: tuple[Record, ...]
    bad_lines: tuple[str, ...] = ()
    starts: tuple[Start, ...] = ()


def read_log(path: Path) -> CaptureLog:
    """Every record in the log; lines that do not decode are reported, never trusted."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CaptureError(
            f"no capture log at {path}: run 'keyforge capture start --key PUBFILE' on this "
            "host, then push once from the sending server"
        ) from None
    except OSError as err:
        raise FileError.from_os_error("read the capture log", path, err) from err
    text = data.decode("utf-8", errors="surrogateescape")
    records: list[Record] = []
    starts: list[Start] = []
    bad: list[str] = []
    for lineno, line in enumerate(text.splitlines(keepends=True), start=1):
        try:
            if line.startswith(START_TAG + "\t"):
                starts.append(decode_start(line, lineno=lineno, source=str(path)))
            else:
                records.append(decode_record(line, lineno=lineno, source=str(path)))
        except ParseError as err:
            bad.append(str(err))
    return CaptureLog(path, tuple(records), tuple(bad), tuple(starts))


@dataclass(frozen=True)
class Session:
    """The records since the last ``capture start`` (for one key, when one is asked about)."""

    start: Start | None  # None: the log holds no start (one written before keyforge kept them)
    records: tuple[Record, ...]

    @property
    def commands(self) -> set[str | None]:
        return {record.command for record in self.records}

    @property
    def clients(self) -> set[str]:
        return {record.client for record in self.records}

    @property
    def differ(self) -> bool:
        return len(self.commands) > 1 or len(self.clients) > 1

    def differences(self) -> str:
        """'2 different commands and 2 client addresses', for a message."""
        parts = []
        if len(self.commands) > 1:
            parts.append(f"{len(self.commands)} different commands")
        if len(self.clients) > 1:
            parts.append(
                f"{len(self.clients)} client addresses ({', '.join(sorted(self.clients))})"
            )
        return " and ".join(parts)


def since_start(log: CaptureLog, key: str | None = None) -> Session:
    """The last ``capture start`` (for ``key``, else any) and the records after it."""
    starts = [start for start in log.starts if key is None or start.key == key]
    start = starts[-1] if starts else None
    after = start.lineno if start is not None else 0
    records = tuple(
        record
        for record in log.records
        if record.lineno > after and (key is None or record.key == key)
    )
    return Session(start, records)


def latest_record(log: CaptureLog, key: str | None = None) -> Record:
    """The newest record, or the newest for ``key``; a clear error when there is none."""
    if not log.records:
        raise CaptureError(
            f"the capture log {log.path} holds no record yet: push once from the sending "
            "server (the push fails; that is expected), then try again"
        )
    if key is None:
        return log.records[-1]
    mine = [record for record in log.records if record.key == key]
    if not mine:
        other = log.records[-1].key
        raise CaptureError(
            f"the captured command in {log.path} is for key {other}, not {key}: run "
            "'keyforge capture start --key' with this key and push again"
        )
    return mine[-1]


# --- reading an rsync server command -------------------------------------------------------

# rsync backslash-escapes these in the arguments it puts on the remote command line
# (options.c, safe_arg), so an unescaped one means the command was not written by rsync.
_SHELL_SPECIAL = set("!#$&;|<>(){}\"'` \t\\\n\r")
# options the server takes with their value as the next word (rsync's "split idiom")
_SPLIT_VALUE_OPTIONS = frozenset(
    {
        "--backup-dir",
        "--partial-dir",
        "--temp-dir",
        "--files-from",
        "--compare-dest",
        "--copy-dest",
        "--link-dest",
    }
)
_FLAGS = re.compile(r"-([A-Za-z]*?)(?:e((?:\d+\.\d+|\.))([A-Za-z]*))?")

SHORT_FLAGS = {
    "s": "the file names travel inside the protocol (--secluded-args), not on this line",
    "v": "verbose",
    "q": "quiet",
    "b": "make backups of replaced files (--backup)",
    "u": "skip files that are newer on the receiver (--update)",
    "n": "dry run: change nothing (--dry-run)",
    "l": "copy symlinks as symlinks (--links)",
    "d": "transfer directories without recursing (--dirs)",
    "K": "treat symlinked directories on the receiver as directories (--keep-dirlinks)",
    "m": "prune empty directories (--prune-empty-dirs)",
    "O": "do not keep directory times (--omit-dir-times)",
    "J": "do not keep symlink times (--omit-link-times)",
    "y": "look for a similar file as the basis of a new one (--fuzzy)",
    "L": "copy the files symlinks point to (--copy-links)",
    "k": "copy the directories symlinks point to (--copy-dirlinks)",
    "W": "copy whole files, no delta transfer (--whole-file)",
    "H": "keep hard links (--hard-links)",
    "o": "keep the owner (--owner)",
    "g": "keep the group (--group)",
    "D": "keep device and special files (--devices --specials)",
    "t": "keep modification times (--times)",
    "U": "keep access times (--atimes)",
    "N": "keep creation times (--crtimes)",
    "p": "keep permissions (--perms)",
    "E": "keep the executable bit (--executability)",
    "A": "keep ACLs (--acls)",
    "X": "keep extended attributes (--xattrs)",
    "r": "recurse into directories (--recursive)",
    "c": "compare files by checksum, not size and time (--checksum)",
    "C": "skip files the way CVS would (--cvs-exclude)",
    "I": "do not skip files that match in size and time (--ignore-times)",
    "R": "use relative path names (--relative)",
    "x": "do not cross file system boundaries (--one-file-system)",
    "S": "handle sparse files efficiently (--sparse)",
    "z": "compress data in transit (--compress)",
}
CAPABILITIES = {
    "i": "incremental recursion",
    "L": "setting symlink times",
    "s": "symlink name conversion (iconv)",
    "f": "safe file-list error handling",
    "x": "no xattr hard-link optimisation",
    "C": "the checksum seed order fix",
    "I": "--inplace with --partial-dir",
    "v": "varint file-list flags and checksum negotiation",
    "u": "names for uid 0 and gid 0 in the id map",
}
LONG_OPTIONS = {
    "--delete": "delete files on this host that the sender no longer has",
    "--delete-before": "delete vanished files before the transfer",
    "--delete-during": "delete vanished files during the transfer",
    "--delete-delay": "delete vanished files after the transfer, found during it",
    "--delete-after": "delete vanished files after the transfer",
    "--delete-excluded": "also delete excluded files on this host",
    "--partial": "keep partially transferred files",
    "--inplace": "update files in place",
    "--append": "append to shorter files",
    "--numeric-ids": "keep numeric user and group ids, not names",
    "--no-specials": "do not keep special files",
    "--specials": "keep special files",
    "--force": "delete non-empty directories when they are replaced",
    "--size-only": "skip files that match in size",
    "--existing": "update only files that already exist here",
    "--ignore-existing": "skip files that already exist here",
    "--mkpath": "create the destination's missing path components",
    "--fsync": "fsync every written file",
}
ARCHIVE_LETTERS = frozenset("rlptgoD")


@dataclass(frozen=True)
class ServerCommand:
    """An ``rsync --server`` command line as the receiving host sees it (words as written)."""

    words: tuple[str, ...]
    sender: bool
    flags: str
    protocol: str | None
    capabilities: str | None
    options: tuple[str, ...]
    paths: tuple[str, ...]
    # indexes in ``words`` of the file names (after ".") and the split-idiom option values
    path_indexes: tuple[int, ...] = field(default=(), repr=False)

    @property
    def secluded(self) -> bool:
        return "s" in self.flags

    @property
    def text(self) -> str:
        return " ".join(self.words)


def split_words(command: str) -> list[str]:
    """The command's words, split on the single spaces ssh joined them with.

    A word keeps its backslash escapes (``my\\ dir`` stays one word, as the shell reads it).
    """
    words: list[str] = []
    current: list[str] = []
    escaped = False
    for char in command:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char == " ":
            words.append("".join(current))
            current = []
        else:
            current.append(char)
    words.append("".join(current))
    return words


def _unescaped_special(word: str, *, allow_glob: bool) -> str | None:
    """The first shell-special character in ``word`` that is not backslash-escaped."""
    specials = _SHELL_SPECIAL if allow_glob else _SHELL_SPECIAL | set("*?[]")
    i = 0
    while i < len(word):
        char = word[i]
        if char == "\\" and i + 1 < len(word) and word[i + 1] not in "\n\r":
            i += 2
            continue
        if char in specials or not char.isprintable():
            return char
        i += 1
    return None


@dataclass
class _Options:
    flags: str = ""
    protocol: str | None = None
    capabilities: str | None = None
    options: list[str] = field(default_factory=list)
    value_indexes: list[int] = field(default_factory=list)


def _read_options(words: list[str], index: int) -> tuple[_Options, int]:
    """The options between ``--server [--sender]`` and the ``.``; returns where they end."""
    found = _Options()
    while index < len(words) and words[index] != ".":
        word = words[index]
        special = _unescaped_special(word, allow_glob=False)
        if special is not None:
            raise NotRsyncServerError(f"option {word!r} holds an unescaped {special!r}")
        match = _FLAGS.fullmatch(word)
        if match is not None and not found.flags and not found.options:
            found.flags, found.protocol, found.capabilities = match.group(1, 2, 3)
        elif word.startswith("-"):
            found.options.append(word)
            if word in _SPLIT_VALUE_OPTIONS and index + 1 < len(words):
                index += 1
                found.options.append(words[index])
                found.value_indexes.append(index)
        else:
            raise NotRsyncServerError(f"unexpected word {word!r} before the '.'")
        index += 1
    return found, index


def parse_server_command(command: str) -> ServerCommand:
    """Read ``rsync --server [--sender] -FLAGS[e.CAPS] [options] . PATH...``.

    Anything else (shell syntax, another program, a missing path) is a NotRsyncServerError
    naming what is wrong.
    """
    words = split_words(command)
    if any(word == "" for word in words):
        raise NotRsyncServerError("it has doubled, leading or trailing spaces")
    if Path(words[0]).name != "rsync" or len(words) < 2 or words[1] != "--server":
        raise NotRsyncServerError(
            f"it does not start with 'rsync --server' ({shlex.quote(words[0])} ...)"
        )
    sender = len(words) > 2 and words[2] == "--sender"
    index = 3 if sender else 2
    if index < len(words) and words[index] == "--daemon":
        raise NotRsyncServerError("it starts an rsync daemon, whose module the client chooses")
    found, index = _read_options(words, index)
    path_indexes = list(found.value_indexes)
    if not ("s" in found.flags and index == len(words)):
        if index + 1 >= len(words):
            raise NotRsyncServerError("there is no '.' followed by a path")
        path_indexes.extend(range(index + 1, len(words)))
    for i in path_indexes:
        special = _unescaped_special(words[i], allow_glob=True)
        if special is not None:
            raise NotRsyncServerError(f"path {words[i]!r} holds an unescaped {special!r}")
    if not sender and len(words) - index - 1 > 1:
        raise NotRsyncServerError("a receiving rsync takes one destination, this has several")
    return ServerCommand(
        words=tuple(words),
        sender=sender,
        flags=found.flags,
        protocol=found.protocol,
        capabilities=found.capabilities,
        options=tuple(found.options),
        paths=tuple(words[index + 1 :]),
        path_indexes=tuple(path_indexes),
    )


def explain(server: ServerCommand) -> list[str]:
    """The command in plain words, one line each, for an admin about to trust it."""
    lines: list[str] = []
    if server.sender:
        lines.append("rsync runs here as the SENDER (--sender): the client pulls from this host.")
    else:
        lines.append("rsync runs here as the receiver: the client pushes files to this host.")
    if server.flags:
        lines.append(f"short options -{server.flags}:")
        for letter in server.flags:
            meaning = SHORT_FLAGS.get(letter, "an option this keyforge does not know")
            lines.append(f"  -{letter}  {meaning}")
        if set(server.flags) >= ARCHIVE_LETTERS:
            lines.append("  (r l p t g o D together are what -a, archive mode, turns on)")
    if server.capabilities is not None:
        pre_release = f" (pre-release protocol {server.protocol})" if server.protocol != "." else ""
        lines.append(
            f"e{server.protocol}{server.capabilities}: not an option anyone chose; the client "
            f"rsync announces its capabilities here{pre_release}:"
        )
        for letter in server.capabilities:
            meaning = CAPABILITIES.get(letter, "a capability this keyforge does not know")
            lines.append(f"  {letter}  {meaning}")
        lines.append(
            "  These letters pin the client rsync's version: after an rsync upgrade on either "
            "side, run the capture again."
        )
    for option in server.options:
        name = option.split("=", 1)[0]
        if name in LONG_OPTIONS:
            lines.append(f"{option}: {LONG_OPTIONS[name]}")
        elif option.startswith("-"):
            lines.append(f"{option}: passed on as on rsync's own command line (see rsync(1))")
    if server.secluded:
        lines.append(
            "WARNING: with -s the destination is sent inside the protocol, so this command does "
            "not pin where files go."
        )
    label = "source" if server.sender else "destination"
    for path in server.paths:
        lines.append(f"{label}: {path}")
    return lines


# --- ~ rewriting ----------------------------------------------------------------------------

_ESCAPE_IN_PATH = _SHELL_SPECIAL | set("*?[]")


def shell_escape_path(path: str) -> str:
    """Backslash-escape a path the way rsync escapes the arguments it sends."""
    return "".join("\\" + c if c in _ESCAPE_IN_PATH else c for c in path)


def _tilde_home(word: str, home: Path) -> tuple[str, str] | None:
    """(``~`` or ``~name`` prefix, that user's home) when ``word`` starts with one."""
    if not word.startswith("~"):
        return None
    end = word.find("/")
    prefix = word if end < 0 else word[:end]
    name = prefix[1:]
    if not name:
        return prefix, str(home)
    if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name) is None:
        return None  # the shell would not expand it either (escaped or odd characters)
    try:
        return prefix, pwd.getpwnam(name).pw_dir
    except KeyError:
        raise UsageError(f"the captured path {word!r} names user {name!r}, unknown here") from None


@dataclass(frozen=True)
class Rewrite:
    command: str
    changes: tuple[tuple[str, str], ...]


def rewrite_tilde(server: ServerCommand, home: Path) -> Rewrite:
    """Replace a leading ``~`` / ``~/`` / ``~user`` in each path with the absolute home."""
    words = list(server.words)
    changes: list[tuple[str, str]] = []
    for i in server.path_indexes:
        found = _tilde_home(words[i], home)
        if found is None:
            continue
        prefix, target = found
        new = shell_escape_path(target) + words[i][len(prefix) :]
        changes.append((words[i], new))
        words[i] = new
    return Rewrite(" ".join(words), tuple(changes))


# --- destinations a backup key must never reach ---------------------------------------------
# A push that can write into the home (or above it), ~/.ssh, a dotfile of the home or the
# authorized_keys file writes what sshd or the login shell reads at the next login (an
# authorized_keys line without options, ~/.ssh/rc, ~/.profile...): the key becomes a shell.
# A pull from there reads the private keys kept beside them.


def _relation(path: Path, home: Path, authorized_keys: Path) -> str | None:
    """Why ``path`` (absolute, normalised) is out of bounds, or None."""
    if path == home or path in home.parents:
        return f"is the home directory {home}" + ("" if path == home else " or above it")
    if home in path.parents:
        first = path.relative_to(home).parts[0]
        if first == ".ssh":
            return f"is in {home / '.ssh'}, whose authorized_keys and rc sshd reads"
        if first.startswith("."):
            return (
                f"is {home / first}, a dotfile or dot-directory of the home, which sshd or the "
                "login shell may read at login (~/.profile, ~/.bashrc, ~/.ssh...)"
            )
    keys_dir = authorized_keys.parent
    if path == keys_dir or path in keys_dir.parents or keys_dir in path.parents:
        return f"holds {authorized_keys}, which sshd reads for this user"
    return None


def _absolute(word: str, home: Path, base: Path) -> Path:
    """A path word of the command (rsync's backslash escapes, a leading ~) as an absolute path."""
    text = re.sub(r"\\(.)", r"\1", word, flags=re.DOTALL)
    if text.startswith("~"):
        try:
            found = _tilde_home(text, home)
        except UsageError:
            found = None
        if found is not None:
            text = found[1] + text[len(found[0]) :]
    return Path(os.path.normpath(base / text))


def _path_words(command: str) -> tuple[list[str], list[str]]:
    """(file names of the command, directory options relative to its destination)."""
    try:
        server = parse_server_command(command)
    except NotRsyncServerError:
        words = split_words(command)
        return [w for w in words[1:] if w.startswith(("/", "~"))], []
    options = []
    for option in server.options:
        name, has_value, value = option.partition("=")
        if has_value and name in _SPLIT_VALUE_OPTIONS and name != "--files-from":
            options.append(value)
    values = [server.words[i] for i in server.path_indexes if i < len(server.words)]
    split = [v for v in values if v not in server.paths]
    return list(server.paths), [*options, *split]


def forbidden_destinations(command: str, *, home: Path, authorized_keys: Path) -> list[str]:
    """Each path ``command`` names that the key must never reach, with the reason, one line
    each (empty when there is none). Relative paths count from the home, where sshd starts
    the command; each path is judged as written and with its symbolic links resolved."""
    home = Path(os.path.normpath(home.absolute()))
    keys_file = Path(os.path.normpath(authorized_keys.absolute()))
    paths, options = _path_words(command)
    named = [(word, _absolute(word, home, home)) for word in paths]
    destination = named[-1][1] if named else home
    named += [(word, _absolute(word, home, destination)) for word in options]
    found = []
    for word, path in named:
        for candidate in dict.fromkeys((path, Path(os.path.realpath(path)))):
            reason = _relation(candidate, home, keys_file) or _relation(
                candidate, Path(os.path.realpath(home)), Path(os.path.realpath(keys_file))
            )
            if reason is not None:
                via = "" if candidate == path else f" (through a symbolic link, {candidate})"
                found.append(f"{word} {reason}{via}")
                break
    return found


# --- from a capture to a forced command ------------------------------------------------------


@dataclass(frozen=True)
class CapturedCommand:
    """The forced command to install from a record, and what the admin should read about it."""

    command: str
    server: ServerCommand | None
    notes: tuple[str, ...]


def _refuse_forbidden(command: str, *, home: Path, authorized_keys: Path) -> None:
    reasons = forbidden_destinations(command, home=home, authorized_keys=authorized_keys)
    if reasons:
        raise ForbiddenDestinationError(
            f"refusing the captured command: {'; '.join(reasons)}. Whoever holds the key could "
            "then log in with a shell or read the keys kept there, and no option lifts this "
            "(not --allow-any-command either): push into a directory of its own, such as "
            "~/srvbackups/, and capture again"
        )


def command_from_record(
    record: Record,
    *,
    home: Path,
    authorized_keys: Path | None = None,
    allow_any_command: bool = False,
    keep_tilde: bool = False,
) -> CapturedCommand:
    """Check the captured command, rewrite its ``~``, and explain it.

    A command that reaches the home itself, ~/.ssh, a dotfile of the home or the
    authorized_keys file is refused whatever the flags; ``allow_any_command`` only lets
    through a command that is not a plain push (another program, a pull, -s).
    """
    if record.command is None:
        raise CaptureError(
            f"the latest capture (line {record.lineno}, {record.time}) is a login without a "
            "command, not an rsync push; push once with rsync and try again"
        )
    keys_file = (
        authorized_keys if authorized_keys is not None else home / ".ssh" / "authorized_keys"
    )
    _refuse_forbidden(record.command, home=home, authorized_keys=keys_file)
    try:
        server = parse_server_command(record.command)
    except NotRsyncServerError as err:
        if not allow_any_command:
            raise NotRsyncServerError(
                f"{err.reason}; pass --allow-any-command to lock the key to it anyway"
            ) from None
        return CapturedCommand(
            record.command,
            None,
            ("not an rsync server command; installed as captured because of --allow-any-command",),
        )
    if server.sender and not allow_any_command:
        raise NotRsyncServerError(
            "it is a pull (--sender): the client would read files from this host, not push "
            "backups to it; capture the push again, or pass --allow-any-command"
        )
    if server.secluded and not allow_any_command:
        raise NotRsyncServerError(
            "the captured rsync command uses -s (--secluded-args): the client would choose the "
            "destination on every run; drop -s/--secluded-args from the rsync command line and "
            "capture again, or pass --allow-any-command"
        )
    notes = list(explain(server))
    command = server.text
    if not keep_tilde:
        rewrite = rewrite_tilde(server, home)
        command = rewrite.command
        parse_server_command(command)  # the home spliced in must leave one plain command
        _refuse_forbidden(command, home=home, authorized_keys=keys_file)
        for old, new in rewrite.changes:
            notes.append(
                f"rewrote {old} to {new}: sshd runs the forced command through the user's login "
                "shell, and an absolute path does not depend on it (--keep-tilde keeps ~)"
            )
    return CapturedCommand(command, server, tuple(notes))


# --- capture local: the sending server's side ------------------------------------------------

# rsync's options that take a value (rsync --help shows them with =VALUE); their value may be
# the next word, which must then not be mistaken for -e or --rsh
_VALUE_LONG_NAMES = """
    info debug stderr backup-dir suffix confine-root chmod checksum-choice cc rsync-path
    max-delete max-size min-size max-alloc partial-dir usermap groupmap chown timeout contimeout
    compare-dest copy-dest link-dest compress-choice zc compress-level zl compress-threads
    skip-compress exclude exclude-from include include-from files-from copy-as address port
    sockopts outbuf out-format log-format log-file log-file-format password-file early-input
    bwlimit stop-after time-limit stop-at write-batch only-write-batch read-batch protocol iconv
    checksum-seed block-size modify-window temp-dir filter remote-option"""
_RSYNC_VALUE_LONG = frozenset(_VALUE_LONG_NAMES.split())
_RSYNC_VALUE_SHORT = frozenset("B@TfM")
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


# --- the receiving host's steps --------------------------------------------------------------


@dataclass(frozen=True)
class Started:
    recorder: Recorder
    entry: ak.Entry
    result: install.Result
    warnings: tuple[str, ...] = ()


def _append_start(log: Path, home: Path, marker: str) -> None:
    """Append the start marker to the log (0600), as the recorder appends its records."""
    try:
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, fsutil.PRIVATE_FILE)
        try:
            os.write(fd, marker.encode("ascii"))
        finally:
            os.close(fd)
    except OSError as err:
        raise FileError.from_os_error("append to the capture log", log, err) from err
    _hand_to_home_owner(home, [log])


def start(
    authorized_keys: Path,
    key: ak.Entry,
    *,
    from_patterns: Sequence[str] | None,
    dry_run: bool = False,
) -> Started:
    """Lock ``key`` to the recorder (with every restriction on) and install the recorder."""
    home = home_for(authorized_keys)
    if not home.is_dir():
        # a mistyped path must not grow a new home: sshd would never look there
        raise FileError(f"home directory {home} does not exist; check the path")
    recorder = install_recorder(home, dry_run=dry_run)
    command = recorder_command(recorder.script, key_id(key.blob))
    entry = install.locked_entry(key, from_patterns=from_patterns, command=command, restrict=True)
    result = install.install_key(authorized_keys, entry, dry_run=dry_run)
    if not dry_run:
        # records before this line belong to an earlier capture, and install ignores them
        when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        _append_start(recorder.log, home, encode_start(when, key_id(key.blob), from_patterns))
    warnings = []
    if from_patterns is None or ak.admits_every_address(from_patterns) is not None:
        warnings.append(
            "no --from: any address can reach the recorder with this key and write records, "
            "so whoever else holds the key can offer its own command; give --from with the "
            "sending server's address"
        )
    return Started(recorder, entry, result, tuple(warnings))


def require_installed_key(authorized_keys: Path, key: ak.Entry) -> None:
    """Refuse to go on when ``key`` is not in the file ('capture start' puts it there)."""
    text = fsutil.read_text_if_exists(authorized_keys)
    lines = ak.parse(text or "", source=str(authorized_keys), strict=False)
    if not any(line.entry is not None and line.entry.same_key(key) for line in lines):
        raise CaptureError(
            f"no such key in {authorized_keys}: {key_id(key.blob)}; run "
            "'keyforge capture start --key PUBFILE' first"
        )


@dataclass(frozen=True)
class FromCapture:
    record: Record
    captured: CapturedCommand
    session: Session | None = None


def choose_record(
    session: Session, log: CaptureLog, key: str, record_number: int | None = None
) -> Record:
    """The record to install: the one asked for, else the only command and address there is.

    Records that differ mean the key reached the recorder from somewhere else, or asked for
    something else: keyforge will not pick one of them for the admin.
    """
    since = f"since 'capture start' (line {session.start.lineno})" if session.start else ""
    if not session.records:
        if since:
            raise CaptureError(
                f"the capture log {log.path} holds no record for this key {since}: push once "
                "from the sending server (the push fails; that is expected), then try again"
            )
        return latest_record(log, key)  # raises, saying why: an empty log, or another key's
    lines = ", ".join(str(record.lineno) for record in session.records)
    if record_number is not None:
        for record in session.records:
            if record.lineno == record_number:
                return record
        raise CaptureError(
            f"line {record_number} of {log.path} is not a record for this key {since or 'in it'}"
            f"; the records are on lines {lines} ('keyforge capture show' lists them)"
        )
    if session.differ:
        raise CaptureError(
            f"the records {since or 'in ' + str(log.path)} hold {session.differences()} "
            f"(lines {lines}): someone else may have used the key; read them with 'keyforge "
            "capture show' and choose the sending server's with --record LINE"
        )
    return session.records[-1]


def captured_address(plan: FromCapture) -> list[str]:
    """``--from-captured-address``: the record's client, when 'capture start' vouches for it.

    Only a capture started with ``--from`` proves where a record came from; a record outside
    that ``--from`` was not written through this key's recorder line as it was started.
    """
    record, start = plan.record, plan.session.start if plan.session is not None else None
    if record.client == "unknown":
        raise UsageError("the capture holds no client address; give --from instead")
    if start is None or start.from_patterns is None:
        raise UsageError(
            f"the capture was started without --from, so any address could have written the "
            f"record from {record.client}; give --from with the sending server's address, or "
            "start the capture again with --from"
        )
    if not ak.admits(start.from_patterns, record.client):
        raise UsageError(
            f"the record comes from {record.client}, outside the --from "
            f"{','.join(start.from_patterns)} that 'capture start' was given; give --from instead"
        )
    return [record.client]


def install_plan_from_capture(
    authorized_keys: Path,
    key: ak.Entry,
    *,
    log: Path | None = None,
    allow_any_command: bool = False,
    keep_tilde: bool = False,
    record_number: int | None = None,
) -> FromCapture:
    """The captured command for ``key``, checked, rewritten and explained, ready to install.

    Only the records since the key's last ``capture start`` count; when they differ,
    ``record_number`` (the record's line in the log) must say which one.
    """
    require_installed_key(authorized_keys, key)
    home = home_for(authorized_keys)
    captured_log = read_log(log or default_log_path(home))
    session = since_start(captured_log, key_id(key.blob))
    record = choose_record(session, captured_log, key_id(key.blob), record_number)
    captured = command_from_record(
        record,
        home=home,
        authorized_keys=authorized_keys.absolute(),
        allow_any_command=allow_any_command,
        keep_tilde=keep_tilde,
    )
    return FromCapture(record, captured, session)
