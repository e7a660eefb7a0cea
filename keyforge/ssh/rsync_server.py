"""The one reader of ``rsync --server ...``: the string the capture records, the gate judges and
explain describes.

sshd hands a forced command the client's request as one string (``SSH_ORIGINAL_COMMAND``), which
the login shell would have split. Here it is read once, the way a POSIX shell reads it:

* :func:`split_words` turns it into words, with one definition of the characters a shell acts on
  (:data:`SHELL_SPECIAL`): anything that would make the shell do more than pass words on is
  refused, never interpreted;
* :func:`read_cluster` reads a short-option cluster such as ``-logDtprze.iLsfxCIvu``;
* :data:`LONG` and :data:`SHORT` are the one option table: for each option its meaning (what
  capture and explain print), what the gate does with it (:data:`ALLOWED`, :data:`TUNING`,
  :data:`CONFINED`, :data:`REFUSED`, or :data:`CLIENT` for options only a client's command line
  holds), whether it takes a value and whether that value names a path.

The gate imports this module on every backup connection: standard library only, and nothing
heavier than the builtins (no re, no dataclasses, no pathlib).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

# A real server command is a few hundred characters; anything far longer is not one.
MAX_COMMAND = 16384

# --- the words, read as a shell reads them ----------------------------------------------------

# Outside quotes, each of these makes the shell do something other than pass a word on: run
# another command, redirect, expand a variable, a glob or a brace list, start a subshell.
SHELL_SPECIAL = {
    ";": "';' (a second command)",
    "&": "'&' (a background command)",
    "|": "'|' (a pipe)",
    "<": "'<' (a redirection)",
    ">": "'>' (a redirection)",
    "(": "'(' (a subshell)",
    ")": "')' (a subshell)",
    "$": "'$' (an expansion)",
    "`": "a backquote (command substitution)",
    "*": "'*' (a glob)",
    "?": "'?' (a glob)",
    "[": "'[' (a glob)",
    "]": "']' (a glob)",
    "{": "'{' (brace expansion)",
    "}": "'}' (brace expansion)",
    "!": "'!' (history or negation)",
}
# The glob characters among them: a pull's sources are globbed by the shell on purpose (rsync
# leaves them unescaped), so a reader of pulls may take them (split_words(globs=True)).
GLOB = frozenset("*?[]")
# Inside double quotes the shell still expands these.
_EXPANDED_IN_DOUBLE_QUOTES = "$`"
# Starting a word (only there), '#' makes the rest of the line a comment and '~' names a home.
COMMENT = "#"
TILDE = "~"
# What rsync backslash-escapes in the arguments it sends (options.c, safe_arg), besides a
# leading '~': every character above but the globs in a file name, the quotes, the blanks, the
# backslash itself and '#'. Escaping a path with these makes it one plain word.
RSYNC_ESCAPES = frozenset(SHELL_SPECIAL) | frozenset("#\"' \t\\\n\r")


class CommandSyntaxError(ValueError):
    """A command a shell would not pass on as plain words. ``reason`` names the first problem;
    ``char`` is the character at fault (None for an unclosed quote or an overlong command) and
    ``word`` the word it stands in, as written."""

    def __init__(self, reason: str, *, char: str | None = None, word: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.char = char
        self.word = word


class Word:
    """One word: ``raw`` as written, ``text`` after quote removal (what the program gets);
    ``tilde`` when it began with a bare ``~``; ``glob`` the first unquoted glob character in it
    (only with split_words(globs=True), else such a word is refused)."""

    __slots__ = ("glob", "raw", "text", "tilde")

    def __init__(
        self, text: str, tilde: bool = False, raw: str = "", glob: str | None = None
    ) -> None:
        self.text = text
        self.tilde = tilde
        self.raw = raw
        self.glob = glob

    def __repr__(self) -> str:
        return f"Word({self.text!r}, tilde={self.tilde})"


def _word_at(command: str, i: int) -> str:
    """The word (as written) that holds position ``i``: for a refusal's message only."""
    start = command.rfind(" ", 0, i) + 1
    end = command.find(" ", i)
    return command[start : end if end >= 0 else len(command)]


def _refuse(command: str, i: int, reason: str) -> CommandSyntaxError:
    return CommandSyntaxError(reason, char=command[i], word=_word_at(command, i))


def _refuse_control_characters(command: str) -> None:
    for i, char in enumerate(command):
        code = ord(char)
        if code < 32 or code == 127:
            raise _refuse(command, i, f"the command holds a control character ({char!r})")


def split_words(command: str, *, globs: bool = False) -> list[Word]:
    """The words a POSIX shell would pass to the program, or a CommandSyntaxError.

    Quotes and backslashes are removed as the shell removes them; anything the shell would act
    on instead (SHELL_SPECIAL, a ``#`` starting a word, ``$`` or a backquote inside double
    quotes) is refused, never interpreted, and so are control characters anywhere and a
    character that does not print outside quotes (it could hide a word from whoever reads the
    command). Blanks between words are single spaces as ssh joins them; several count as one.
    """
    if len(command) > MAX_COMMAND:
        raise CommandSyntaxError(
            f"the command is {len(command)} characters long, not an rsync command"
        )
    _refuse_control_characters(command)
    words: list[Word] = []
    out: list[str] = []
    start = -1  # where the current word began, -1 between words
    tilde = False
    glob: str | None = None
    i, n = 0, len(command)
    while i < n:
        char = command[i]
        if char == " ":
            if start >= 0:
                words.append(Word("".join(out), tilde, command[start:i], glob))
                out, start, tilde, glob = [], -1, False, None
            i += 1
            continue
        if start < 0:
            start = i
            tilde = char == TILDE
            if char == COMMENT:
                raise _refuse(command, i, "an unquoted '#' starting a word (a shell comment)")
        if char in GLOB and globs:
            glob = glob or char
            out.append(char)
            i += 1
            continue
        i = _read_piece(command, i, out)
    if start >= 0:
        words.append(Word("".join(out), tilde, command[start:], glob))
    return words


def _read_piece(command: str, i: int, out: list[str]) -> int:
    """Read one character, escape or quoted run at ``i`` into ``out``; return where it ends."""
    char = command[i]
    if char == "\\":
        if i + 1 >= len(command):
            raise _refuse(command, i, "a backslash at the end of the command")
        out.append(command[i + 1])
        return i + 2
    if char == "'":
        end = command.find("'", i + 1)
        if end < 0:
            raise CommandSyntaxError("an unclosed single quote", word=_word_at(command, i))
        out.append(command[i + 1 : end])
        return end + 1
    if char == '"':
        return _double_quoted(command, i + 1, out)
    if char in SHELL_SPECIAL:
        raise _refuse(command, i, f"an unquoted shell metacharacter {SHELL_SPECIAL[char]}")
    if not char.isprintable():
        raise _refuse(command, i, f"an unquoted character that does not print ({char!r})")
    out.append(char)
    return i + 1


def _double_quoted(command: str, start: int, out: list[str]) -> int:
    """Read a "..." run starting after its opening quote; return the index after the closing."""
    i, n = start, len(command)
    while i < n:
        char = command[i]
        if char == '"':
            return i + 1
        if char in _EXPANDED_IN_DOUBLE_QUOTES:
            raise _refuse(
                command,
                i,
                f"{SHELL_SPECIAL[char]} inside double quotes: the shell would expand it",
            )
        if char == "\\" and i + 1 < n and command[i + 1] in '$`"\\':
            out.append(command[i + 1])
            i += 2
            continue
        out.append(char)
        i += 1
    raise CommandSyntaxError("an unclosed double quote", word=_word_at(command, start - 1))


def rsync_escape(path: str) -> str:
    """Backslash-escape a path the way rsync escapes the arguments it sends (globs included, so
    the shell reads it back as exactly this one word)."""
    return "".join("\\" + c if c in RSYNC_ESCAPES else c for c in path)


# --- short-option clusters -------------------------------------------------------------------

_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
# Short options whose value is a number written in the same word (-B2048, -@-1).
NUMBER_SHORT = "B@"


class Cluster:
    """``-FLAGS[eVERSION.CAPABILITIES]``: the option letters, and the capability string the
    client rsync announces after ``e`` (``protocol`` is ``.`` or a pre-release ``31.14``)."""

    __slots__ = ("capabilities", "letters", "protocol")

    def __init__(self, letters: str, protocol: str | None, capabilities: str | None) -> None:
        self.letters = letters
        self.protocol = protocol
        self.capabilities = capabilities


def read_cluster(word: str) -> Cluster:
    """Read ``-logDtprze.iLsfxCIvu`` (letters, then ``e`` and the capabilities to the end) into
    its parts; a CommandSyntaxError when it is not one. Which letters may pass is the reader's
    business (see SHORT)."""
    if not word.startswith("-") or word.startswith("--"):
        raise CommandSyntaxError(f"option {word!r}: not a short-option cluster")
    end = word.find("e", 1)
    letters = word[1:] if end < 0 else word[1:end]
    if not set(letters) <= _LETTERS:
        raise CommandSyntaxError(f"option {word!r}: not a short-option cluster")
    if end < 0:
        return Cluster(letters, None, None)
    rest = word[end + 1 :]
    dot = rest.find(".")
    if dot < 0:
        raise CommandSyntaxError(f"option {word!r}: a capability string without its '.'")
    version, capabilities = rest[:dot], rest[dot + 1 :]
    protocol = "."
    if version:
        minor = capabilities
        capabilities = capabilities.lstrip("0123456789")
        minor = minor[: len(minor) - len(capabilities)]
        if not (version.isdigit() and minor.isdigit()):
            raise CommandSyntaxError(f"option {word!r}: a malformed protocol version")
        protocol = f"{version}.{minor}"
    if not set(capabilities) <= _LETTERS:
        raise CommandSyntaxError(f"option {word!r}: a malformed capability string")
    return Cluster(letters, protocol, capabilities)


def number_option(word: str) -> bool | None:
    """For ``-B...`` and ``-@...``: whether the value is a number (None: not one of those)."""
    if len(word) <= 2 or word[1] not in NUMBER_SHORT or word.startswith("--"):
        return None
    number = word[2:].removeprefix("-") if word[1] == "@" else word[2:]
    return number.isdigit() and number.isascii()


# --- the option table --------------------------------------------------------------------------

# What the gate does with an option.
ALLOWED = "allowed"  # a flag a receive may carry: harmless inside the directory
TUNING = "tuning"  # takes a value that only tunes the transfer
CONFINED = "confined"  # takes a directory, read from the gate's directory and kept inside it
REFUSED = "refused"  # never through the gate; the option's ``reason`` says why
CLIENT = "client"  # only a client's command line holds it; the gate knows it no more than a typo


class Option:
    """One rsync option: ``meaning`` (None: capture and explain show it as passed on), what the
    gate does with it (``gate``, and ``reason`` when refused), whether it takes a value and
    whether that value names a path."""

    __slots__ = ("gate", "meaning", "path", "reason", "value")

    def __init__(
        self,
        gate: str,
        *,
        value: bool = False,
        path: bool = False,
        meaning: str | None = None,
        reason: str | None = None,
    ) -> None:
        self.gate = gate
        self.value = value
        self.path = path
        self.meaning = meaning
        self.reason = reason


def _many(gate: str, names: str, *, value: bool = False, path: bool = False) -> dict[str, Option]:
    return {name: Option(gate, value=value, path=path) for name in names.split()}


_LINKS_HERE = "follows symbolic links on this host"
_IN_PROTOCOL = "sends the destination inside the protocol, where it cannot be checked"

# Long options, by name without the leading "--".
LONG: dict[str, Option] = {
    # flags a receive may carry
    **_many(
        ALLOWED,
        """
        append-verify backup checksum delay-updates
        delete-missing-args dirs fake-super from0 fuzzy group hard-links
        ignore-errors ignore-missing-args ignore-times links msgs2stderr munge-links
        new-compress no-W no-implied-dirs no-i-r no-inc-recursive no-msgs2stderr no-r
        no-relative old-compress omit-dir-times omit-link-times one-file-system open-noatime
        owner perms preallocate prune-empty-dirs recursive relative remove-source-files
        safe-links sparse stats super times update use-qsort whole-file
        """,
    ),
    # values that only tune the transfer
    **_many(
        TUNING,
        """
        block-size bwlimit checksum-choice checksum-seed compress-choice compress-level
        compress-threads groupmap iconv info log-format max-alloc max-delete max-size min-size
        modify-window out-format skip-compress stderr suffix timeout usermap
        """,
        value=True,
    ),
    # directories rsync reads or writes, kept inside the gate's directory
    **_many(
        CONFINED,
        "backup-dir compare-dest copy-dest link-dest partial-dir temp-dir",
        value=True,
        path=True,
    ),
    # what a client's command line holds and a server is never sent
    **_many(
        CLIENT,
        """
        confine-root chmod cc rsync-path chown contimeout zc zl exclude exclude-from include
        include-from address port sockopts outbuf password-file early-input stop-after
        time-limit stop-at protocol filter remote-option
        """,
        value=True,
    ),
    # with the words capture and explain print
    "delete": Option(ALLOWED, meaning="delete files on this host that the sender no longer has"),
    "delete-before": Option(ALLOWED, meaning="delete vanished files before the transfer"),
    "delete-during": Option(ALLOWED, meaning="delete vanished files during the transfer"),
    "delete-delay": Option(
        ALLOWED, meaning="delete vanished files after the transfer, found during it"
    ),
    "delete-after": Option(ALLOWED, meaning="delete vanished files after the transfer"),
    "delete-excluded": Option(ALLOWED, meaning="also delete excluded files on this host"),
    "partial": Option(ALLOWED, meaning="keep partially transferred files"),
    "inplace": Option(ALLOWED, meaning="update files in place"),
    "append": Option(ALLOWED, meaning="append to shorter files"),
    "numeric-ids": Option(ALLOWED, meaning="keep numeric user and group ids, not names"),
    "no-specials": Option(ALLOWED, meaning="do not keep special files"),
    "specials": Option(ALLOWED, meaning="keep special files"),
    "force": Option(ALLOWED, meaning="delete non-empty directories when they are replaced"),
    "size-only": Option(ALLOWED, meaning="skip files that match in size"),
    "existing": Option(ALLOWED, meaning="update only files that already exist here"),
    "ignore-existing": Option(ALLOWED, meaning="skip files that already exist here"),
    "mkpath": Option(ALLOWED, meaning="create the destination's missing path components"),
    "fsync": Option(ALLOWED, meaning="fsync every written file"),
    # refused by the gate, each with its reason
    "sender": Option(
        REFUSED, reason="a pull (--sender): this key may only push into the directory"
    ),
    "daemon": Option(
        REFUSED, reason="an rsync daemon (--daemon), whose modules the client would choose"
    ),
    "server": Option(REFUSED, reason="a second --server"),
    "files-from": Option(
        REFUSED,
        value=True,
        path=True,
        reason="--files-from reads a list of files from a path the client chooses",
    ),
    "log-file": Option(
        REFUSED, value=True, path=True, reason="--log-file writes to a path the client chooses"
    ),
    "log-file-format": Option(
        REFUSED, value=True, reason="--log-file-format belongs to --log-file, which is refused"
    ),
    "write-batch": Option(
        REFUSED, value=True, path=True, reason="--write-batch writes a file the client names"
    ),
    "only-write-batch": Option(
        REFUSED,
        value=True,
        path=True,
        reason="--only-write-batch writes a file the client names",
    ),
    "read-batch": Option(
        REFUSED, value=True, path=True, reason="--read-batch reads a file the client names"
    ),
    "write-devices": Option(REFUSED, reason="--write-devices writes into device files"),
    "copy-devices": Option(REFUSED, reason="--copy-devices reads device files"),
    "remove-sent-files": Option(
        REFUSED, reason="--remove-sent-files: a backup push never moves files away"
    ),
    "list-only": Option(REFUSED, reason="--list-only lists files, which only a pull does"),
    "secluded-args": Option(REFUSED, reason=f"--secluded-args {_IN_PROTOCOL}"),
    "protect-args": Option(REFUSED, reason=f"--protect-args {_IN_PROTOCOL}"),
    "keep-dirlinks": Option(
        REFUSED, reason="--keep-dirlinks follows symbolic links to directories on this host"
    ),
    "copy-links": Option(REFUSED, reason=f"--copy-links {_LINKS_HERE}"),
    "copy-dirlinks": Option(REFUSED, reason=f"--copy-dirlinks {_LINKS_HERE}"),
    "copy-unsafe-links": Option(REFUSED, reason=f"--copy-unsafe-links {_LINKS_HERE}"),
    "no-munge-links": Option(
        REFUSED, reason="--no-munge-links would let a pushed symbolic link lead out"
    ),
    "copy-as": Option(REFUSED, value=True, reason="--copy-as switches to another user"),
    "debug": Option(REFUSED, value=True, reason="--debug prints rsync's internals to the client"),
    "config": Option(REFUSED, reason="--config reads a daemon configuration"),
}

# Except a --partial-dir without a '/': rsync makes that name inside each directory it writes
# to, which --delay-updates relies on, so it stays a name, checked where the destination is.
# One partial directory (a path) with --delay-updates makes rsync discard every file and exit
# 0, so the gate refuses that pair.
PER_DIRECTORY = "partial-dir"


def _short(gate: str, meaning: str | None = None, reason: str | None = None) -> Option:
    return Option(gate, meaning=meaning, reason=reason)


# Short options, by letter ('e' starts the capability string, see read_cluster). The gate
# refuses on purpose: s (the file names would travel inside the protocol, unchecked), K L k
# (follow symbolic links on this side), T (a temporary directory anywhere), and every letter a
# client never sends to a server.
SHORT: dict[str, Option] = {
    "s": _short(
        REFUSED,
        "the file names travel inside the protocol (--secluded-args), not on this line",
        f"-s (--secluded-args) {_IN_PROTOCOL}",
    ),
    "v": _short(ALLOWED, "verbose"),
    "q": _short(ALLOWED, "quiet"),
    "b": _short(ALLOWED, "make backups of replaced files (--backup)"),
    "u": _short(ALLOWED, "skip files that are newer on the receiver (--update)"),
    "n": _short(ALLOWED, "dry run: change nothing (--dry-run)"),
    "l": _short(ALLOWED, "copy symlinks as symlinks (--links)"),
    "d": _short(ALLOWED, "transfer directories without recursing (--dirs)"),
    "K": _short(
        REFUSED,
        "treat symlinked directories on the receiver as directories (--keep-dirlinks)",
        "-K (--keep-dirlinks) follows symbolic links to directories on this host",
    ),
    "m": _short(ALLOWED, "prune empty directories (--prune-empty-dirs)"),
    "O": _short(ALLOWED, "do not keep directory times (--omit-dir-times)"),
    "J": _short(ALLOWED, "do not keep symlink times (--omit-link-times)"),
    "y": _short(ALLOWED, "look for a similar file as the basis of a new one (--fuzzy)"),
    "L": _short(
        REFUSED,
        "copy the files symlinks point to (--copy-links)",
        f"-L (--copy-links) {_LINKS_HERE}",
    ),
    "k": _short(
        REFUSED,
        "copy the directories symlinks point to (--copy-dirlinks)",
        f"-k (--copy-dirlinks) {_LINKS_HERE}",
    ),
    "W": _short(ALLOWED, "copy whole files, no delta transfer (--whole-file)"),
    "H": _short(ALLOWED, "keep hard links (--hard-links)"),
    "o": _short(ALLOWED, "keep the owner (--owner)"),
    "g": _short(ALLOWED, "keep the group (--group)"),
    "D": _short(ALLOWED, "keep device and special files (--devices --specials)"),
    "t": _short(ALLOWED, "keep modification times (--times)"),
    "U": _short(ALLOWED, "keep access times (--atimes)"),
    "N": _short(ALLOWED, "keep creation times (--crtimes)"),
    "p": _short(ALLOWED, "keep permissions (--perms)"),
    "E": _short(ALLOWED, "keep the executable bit (--executability)"),
    "A": _short(ALLOWED, "keep ACLs (--acls)"),
    "X": _short(ALLOWED, "keep extended attributes (--xattrs)"),
    "r": _short(ALLOWED, "recurse into directories (--recursive)"),
    "c": _short(ALLOWED, "compare files by checksum, not size and time (--checksum)"),
    "C": _short(ALLOWED, "skip files the way CVS would (--cvs-exclude)"),
    "I": _short(ALLOWED, "do not skip files that match in size and time (--ignore-times)"),
    "R": _short(ALLOWED, "use relative path names (--relative)"),
    "x": _short(ALLOWED, "do not cross file system boundaries (--one-file-system)"),
    "S": _short(ALLOWED, "handle sparse files efficiently (--sparse)"),
    "z": _short(ALLOWED, "compress data in transit (--compress)"),
    "T": Option(
        REFUSED,
        value=True,
        path=True,
        reason="-T (--temp-dir) names a directory outside the checked ones",
    ),
    # numbers written in the same word (NUMBER_SHORT)
    "B": Option(TUNING, value=True),
    "@": Option(TUNING, value=True),
    # the client's filter and remote options
    "f": Option(CLIENT, value=True),
    "M": Option(CLIENT, value=True),
}

# The letters of -a, archive mode.
ARCHIVE_LETTERS = frozenset("rlptgoD")
# What the client rsync announces after 'e' in its short-option cluster.
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


def names(table: dict[str, Option], gate: str) -> frozenset[str]:
    """The options of ``table`` the gate treats as ``gate``."""
    return frozenset(name for name, option in table.items() if option.gate == gate)


def long_option(word: str) -> tuple[str, Option | None, bool, str]:
    """``--name[=value]``: (name, its table entry or None, whether '=' holds the value, value)."""
    name, joined, value = word[2:].partition("=")
    return name, LONG.get(name), bool(joined), value


def takes_next_word(word: str) -> bool:
    """Whether a long option written as ``word`` takes the next word as its value."""
    _, option, joined, _ = long_option(word)
    return option is not None and option.value and not joined


def next_value(words: Iterable[str], option: str) -> str:
    """The word after ``option`` as its value, or a CommandSyntaxError: no word, the ``.`` that
    ends the options, or a word rsync could read as the next option (no word is read two ways).
    """
    value = next(iter(words), None)
    if value is None or value == ".":
        raise CommandSyntaxError(f"{option} has no value")
    if value.startswith("-"):
        raise CommandSyntaxError(f"{option} takes the next word, {value[:60]!r}, as its value")
    return value


# --- what stands in for rsync --server ----------------------------------------------------------

# How keyforge's capture recorder answers on stderr instead of running rsync; a sending server
# that reads either knows its push reached the recorder, so trying again would only record it
# again.
RECORDED_NOTICE = "keyforge: command recorded, not run"
UNRECORDED_NOTICE = "keyforge: command not run"
RECORDER_NOTICES = (RECORDED_NOTICE, UNRECORDED_NOTICE)
