"""Capture: learn what rsync really asks the receiving host to run, then lock the key to it.

Two ways to learn it:

* on the receiving host, ``capture start`` makes a *recorder* the key's forced command. The next
  push is refused, and the recorder appends one record (time, client address, key, the command
  as ``SSH_ORIGINAL_COMMAND`` held it) to a 0600 log. The key stays restricted throughout.
* on the sending server, ``capture local`` (keyforge.sender.capture_local) runs the user's
  rsync with a remote shell that connects nowhere and writes down the command it would send.

The rest is pure: decoding records (the command is stored hex-encoded, so no command text,
however hostile, can pass for a second record), reading an ``rsync --server`` command (through
keyforge.ssh.rsync_server, the one reader the gate uses too), putting its cryptic flag string
into words, and rewriting a leading ``~`` to an absolute home.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import os
import pwd
import re
import shlex
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
from keyforge.infra import fsutil
from keyforge.infra.templating import render
from keyforge.receiver import install
from keyforge.ssh import authorized_keys as ak
from keyforge.ssh import rsync_server, wire

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


# How the recorder answers on stderr (the sending server reads them too, so they live in the
# shared rsync_server module).
RECORDED_NOTICE = rsync_server.RECORDED_NOTICE
UNRECORDED_NOTICE = rsync_server.UNRECORDED_NOTICE
RECORDER_NOTICES = rsync_server.RECORDER_NOTICES


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


# --- reading an rsync server command: keyforge.ssh.rsync_server, the one reader ------------

# What capture and explain print for each option comes from the option table.
SHORT_FLAGS = {
    letter: option.meaning
    for letter, option in rsync_server.SHORT.items()
    if option.meaning is not None
}
LONG_OPTIONS = {
    f"--{name}": option.meaning
    for name, option in rsync_server.LONG.items()
    if option.meaning is not None
}


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
    # the words as the program gets them (quotes and escapes removed), one for each of ``words``
    texts: tuple[str, ...] = field(default=(), repr=False)

    @property
    def secluded(self) -> bool:
        return "s" in self.flags

    @property
    def text(self) -> str:
        return " ".join(self.words)


def read_words(command: str) -> list[rsync_server.Word]:
    """The command's words as the login shell will read them when it runs the forced command
    (rsync_server.split_words), or a NotRsyncServerError naming what the shell would act on.

    Globs are kept (a pull's sources may hold them); where else they stand is refused later.
    Blanks must be the single spaces ssh joins the words with: rsync writes no others.
    """
    try:
        read = rsync_server.split_words(command, globs=True)
    except rsync_server.CommandSyntaxError as err:
        if err.char is None:
            raise NotRsyncServerError(err.reason) from None
        raise NotRsyncServerError(f"{err.word!r} holds an unescaped {err.char!r}") from None
    if not read or " ".join(word.raw for word in read) != command:
        raise NotRsyncServerError("it has doubled, leading or trailing spaces")
    return read


@dataclass
class _Options:
    flags: str = ""
    protocol: str | None = None
    capabilities: str | None = None
    options: list[str] = field(default_factory=list)
    value_indexes: list[int] = field(default_factory=list)


def _cluster(text: str) -> rsync_server.Cluster | None:
    try:
        return rsync_server.read_cluster(text)
    except rsync_server.CommandSyntaxError:
        return None  # not the flag cluster: passed on as an option


def _read_options(read: list[rsync_server.Word], index: int) -> tuple[_Options, int]:
    """The options between ``--server [--sender]`` and the ``.``; returns where they end."""
    found = _Options()
    while index < len(read) and read[index].text != ".":
        word = read[index]
        if word.glob is not None:
            raise NotRsyncServerError(f"option {word.raw!r} holds an unescaped {word.glob!r}")
        cluster = _cluster(word.text) if not found.flags and not found.options else None
        if cluster is not None:
            found.flags = cluster.letters
            found.protocol, found.capabilities = cluster.protocol, cluster.capabilities
        elif word.text.startswith("-"):
            found.options.append(word.raw)
            if word.text.startswith("--") and rsync_server.takes_next_word(word.text):
                try:
                    rsync_server.next_value((w.text for w in read[index + 1 :]), word.text)
                except rsync_server.CommandSyntaxError as err:
                    raise NotRsyncServerError(err.reason) from None
                index += 1
                value = read[index]
                if value.glob is not None:
                    raise NotRsyncServerError(
                        f"path {value.raw!r} holds an unescaped {value.glob!r}"
                    )
                found.options.append(value.raw)
                option = rsync_server.long_option(word.text)[1]
                if option is not None and option.path:
                    found.value_indexes.append(index)
        else:
            raise NotRsyncServerError(f"unexpected word {word.raw!r} before the '.'")
        index += 1
    return found, index


def parse_server_command(command: str) -> ServerCommand:
    """Read ``rsync --server [--sender] -FLAGS[e.CAPS] [options] . PATH...``.

    Anything else (shell syntax, another program, a missing path) is a NotRsyncServerError
    naming what is wrong.
    """
    read = read_words(command)
    words = [word.raw for word in read]
    texts = [word.text for word in read]
    if texts[0].rsplit("/", 1)[-1] != "rsync" or len(texts) < 2 or texts[1] != "--server":
        raise NotRsyncServerError(
            f"it does not start with 'rsync --server' ({shlex.quote(words[0])} ...)"
        )
    sender = len(texts) > 2 and texts[2] == "--sender"
    index = 3 if sender else 2
    if index < len(texts) and texts[index] == "--daemon":
        raise NotRsyncServerError("it starts an rsync daemon, whose module the client chooses")
    found, index = _read_options(read, index)
    path_indexes = list(found.value_indexes)
    if not ("s" in found.flags and index == len(words)):
        if index + 1 >= len(words):
            raise NotRsyncServerError("there is no '.' followed by a path")
        path_indexes.extend(range(index + 1, len(words)))
    if not sender:
        # only a pull's sources are globbed on purpose (rsync leaves them unescaped)
        for i in range(index + 1, len(words)):
            if read[i].glob is not None:
                raise NotRsyncServerError(f"path {words[i]!r} holds an unescaped {read[i].glob!r}")
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
        texts=tuple(texts),
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
        if set(server.flags) >= rsync_server.ARCHIVE_LETTERS:
            lines.append("  (r l p t g o D together are what -a, archive mode, turns on)")
    if server.capabilities is not None:
        pre_release = f" (pre-release protocol {server.protocol})" if server.protocol != "." else ""
        lines.append(
            f"e{server.protocol}{server.capabilities}: not an option anyone chose; the client "
            f"rsync announces its capabilities here{pre_release}:"
        )
        for letter in server.capabilities:
            meaning = rsync_server.CAPABILITIES.get(
                letter, "a capability this keyforge does not know"
            )
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

shell_escape_path = rsync_server.rsync_escape


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


def _absolute(text: str, home: Path, base: Path) -> Path:
    """A path of the command (as the program gets it, a leading ~ expanded) made absolute."""
    if text.startswith("~"):
        try:
            found = _tilde_home(text, home)
        except UsageError:
            found = None
        if found is not None:
            text = found[1] + text[len(found[0]) :]
    return Path(os.path.normpath(base / text))


Named = list[tuple[str, str]]  # (the word as written, the path it names)


def _path_words(command: str) -> tuple[Named, Named]:
    """(file names of the command, directory options relative to its destination)."""
    try:
        server = parse_server_command(command)
    except NotRsyncServerError:
        # not one plain rsync command: every word that looks like a path, read as best we can
        try:
            read = rsync_server.split_words(command, globs=True)
            pairs = [(word.raw, word.text) for word in read]
        except rsync_server.CommandSyntaxError:
            pairs = [(word, word) for word in command.split(" ")]
        return [(raw, text) for raw, text in pairs[1:] if text.startswith(("/", "~"))], []
    dot = len(server.words) - len(server.paths) - 1
    paths = list(zip(server.words[dot + 1 :], server.texts[dot + 1 :], strict=True))
    options = []
    for raw, text in zip(server.words[:dot], server.texts[:dot], strict=True):
        _, option, joined, value = rsync_server.long_option(text)
        # a directory option's value counts from the destination (not --files-from's list)
        confined = option is not None and option.gate == rsync_server.CONFINED
        if text.startswith("--") and joined and confined:
            options.append((raw.partition("=")[2], value))
    split = [(server.words[i], server.texts[i]) for i in server.path_indexes if i < dot]
    return paths, [*options, *split]


def forbidden_destinations(command: str, *, home: Path, authorized_keys: Path) -> list[str]:
    """Each path ``command`` names that the key must never reach, with the reason, one line
    each (empty when there is none). Relative paths count from the home, where sshd starts
    the command; each path is judged as written and with its symbolic links resolved."""
    home = Path(os.path.normpath(home.absolute()))
    keys_file = Path(os.path.normpath(authorized_keys.absolute()))
    paths, options = _path_words(command)
    named = [(word, _absolute(text, home, home)) for word, text in paths]
    destination = named[-1][1] if named else home
    named += [(word, _absolute(text, home, destination)) for word, text in options]
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
