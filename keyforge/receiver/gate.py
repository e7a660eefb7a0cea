"""keyforge gate: the forced command that lets a backup key push into one directory, nothing else.

sshd puts what the client asked to run in ``SSH_ORIGINAL_COMMAND``. The gate reads it the way a
POSIX shell would have read it for the client (rsync 3.2.4 and later backslash-escape special
characters in the arguments they send, older clients send them bare), refuses anything a shell
would have treated as syntax (``;``, ``|``, ``$``, a backquote, a redirection...), then judges the
``rsync --server`` arguments on their meaning:

* only a receive (no ``--sender``: nothing can be read back), into exactly one destination;
* every option is one a receiving rsync takes and is harmless inside the directory; options that
  name other directories (``--link-dest``, ``--backup-dir`` and the like) are read as rrsync reads
  them, a relative path starting at the directory, and must stay inside it once symbolic links
  are resolved; options that read or write files elsewhere (``--files-from``, ``--log-file``...)
  are refused;
* the destination, read as sshd's shell would (relative to the home, ``~`` is the home), must be
  the configured directory or inside it: a ``..`` component is refused, and symbolic links are
  resolved, so a link pointing out is refused too. ``--delete`` is allowed because of that.

An allowed push runs rsync through ``os.execv`` with an argument list (never a shell), with
``--munge-links`` added so a symbolic link pushed by one run cannot be followed by a later one,
and with no device or special file made: ``--drop-D`` with ``--confine`` (rsync 3.5 and later,
which also gets ``--confine-root``), ``--no-specials`` without it (and ``--no-devices`` too when
the gate runs as root, the only user whose rsync makes device nodes). Every decision is one
JSON line in the gate's log (mode 0600); an allowed push without ``--confine`` adds a warning
line, since filter rules travel inside rsync's protocol, where the gate cannot see them.

``--expect`` names the command captured for the key. A push whose text differs but passes the
checks (an rsync upgrade on either side changes the flags) is still allowed, and the first push
with each new text is logged once as ``drift``, with both texts and a hint to capture again.
``--exact`` keeps the strict comparison: only the expected text runs.

The gate runs on every backup connection, so this module imports nothing but the standard
library's cheapest modules (json only when a record is written); ``keyforge.entry`` reaches it
without loading the CLI.
"""

# pathlib stays out of the gate's start-up, hence os.path throughout
# ruff: noqa: PTH103, PTH112, PTH118, PTH120, PTH123

from __future__ import annotations

import os
import sys

from keyforge.errors import GateRefusalError, GateUsageError
from keyforge.ssh import rsync_server

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

DEFAULT_RSYNC = "/usr/bin/rsync"
LOG_NAME = "gate.log"
MAX_COMMAND = rsync_server.MAX_COMMAND
# What a log record keeps of a command: enough to see the attack, not enough to flood the disk.
LOG_COMMAND_LIMIT = 2048
DRIFT_HINT = (
    "the client's rsync now sends another command than the captured one (an rsync upgrade on "
    "either side?); it was judged on its meaning and allowed. Capture it again ('keyforge "
    "capture', then 'keyforge install --gate DIR --from-capture'), or reinstall the key with "
    "'keyforge install --gate DIR --command' and the received text, so --expect matches"
)
# Said by the gate's log on each unconfined push, by 'install --gate' and by audit/explain.
UNCONFINED_RISK = (
    "unconfined (no --confine, which needs rsync 3.5 or later for --confine-root): filter "
    "rules travel inside rsync's protocol, where the gate cannot see them, so a client can make "
    "the receiving rsync read a file outside the directory as a merge file (--filter=':- "
    "../FILE'), and what --delete then removes tells it what the file holds"
)


# --- reading the command: keyforge.ssh.rsync_server, the one reader -------------------------

Word = rsync_server.Word


def split_command(command: str) -> list[Word]:
    """The words a POSIX shell would pass to the program, or a GateRefusalError naming what the
    shell would have acted on instead (see rsync_server.split_words: globs are refused too)."""
    try:
        return rsync_server.split_words(command)
    except rsync_server.CommandSyntaxError as err:
        raise GateRefusalError(err.reason) from None


# --- rsync's server arguments, judged by the option table (rsync_server.LONG and SHORT) -------


class OptionPath:
    """A CONFINED option's value and where it stands among the option words."""

    __slots__ = ("index", "joined", "name", "value")

    def __init__(self, name: str, value: str, index: int, *, joined: bool) -> None:
        self.name = name  # without the leading --
        self.value = value
        self.index = index  # of the word holding the value
        self.joined = joined  # --name=value, else --name value

    def word(self, value: str) -> str:
        """The word holding ``value`` in place of this one's."""
        return f"--{self.name}={value}" if self.joined else value


class ServerArgs:
    """The judged parts of an ``rsync --server`` command."""

    __slots__ = ("confined", "destination", "options")

    def __init__(self, options: list[str], confined: list[OptionPath], destination: Word) -> None:
        self.options = options  # the option words, unquoted, in order
        self.confined = confined  # the directories options name, to check and resolve
        self.destination = destination


def _check_short_cluster(word: str) -> None:
    """``-logDtprze.iLsfxCIvu``: letters the gate allows, then ``e`` and the capabilities."""
    number = rsync_server.number_option(word)
    if number is not None:
        if number:
            return
        raise GateRefusalError(f"option {word!r}: -{word[1]} takes a number")
    end = word.find("e", 1)
    for letter in word[1 : end if end > 0 else len(word)]:
        option = rsync_server.SHORT.get(letter)
        if option is not None and option.gate == rsync_server.REFUSED:
            raise GateRefusalError(option.reason or f"-{letter} is refused")
        if option is None or option.gate != rsync_server.ALLOWED:
            raise GateRefusalError(f"unknown or refused short option -{letter} (in {word!r})")
    if end > 0:
        try:
            rsync_server.read_cluster(word)
        except rsync_server.CommandSyntaxError as err:
            raise GateRefusalError(err.reason) from None


def _check_value(name: str, value: str) -> None:
    if name == "suffix" and "/" in value:
        raise GateRefusalError("--suffix holds a '/', which would put backups in other directories")


def _read_long_option(
    words: Sequence[Word], index: int, options: list[str], confined: list[OptionPath]
) -> int:
    """Check ``words[index - 1]``, a long option, and its value; return the next index."""
    word = words[index - 1].text
    name, option, has_value, value = rsync_server.long_option(word)
    kind = option.gate if option is not None else None
    if option is not None and kind == rsync_server.REFUSED:
        raise GateRefusalError(option.reason or f"--{name} is refused")
    if kind == rsync_server.ALLOWED:
        if has_value:
            raise GateRefusalError(f"--{name} takes no value")
        options.append(word)
        return index
    if kind not in (rsync_server.TUNING, rsync_server.CONFINED):
        raise GateRefusalError(f"unknown or refused option --{name[:60]}")
    at = len(options)
    if has_value:
        options.append(word)
    else:
        try:
            value = rsync_server.next_value((w.text for w in words[index:]), f"--{name}")
        except rsync_server.CommandSyntaxError as err:
            raise GateRefusalError(err.reason) from None
        options.extend((word, value))
        at, index = at + 1, index + 1
    _check_value(name, value)
    if kind == rsync_server.CONFINED:
        confined.append(OptionPath(name, value, at, joined=bool(has_value)))
    return index


def parse_server_args(words: Sequence[Word]) -> ServerArgs:
    """Judge ``rsync --server [options] . DEST``; a GateRefusalError names the first problem."""
    if not words:
        raise GateRefusalError("an empty command")
    program = words[0].text
    if program.rsplit("/", 1)[-1] != "rsync":
        raise GateRefusalError(f"not an rsync command ({program[:60]!r})")
    if len(words) < 2 or words[1].text != "--server":
        raise GateRefusalError("not an rsync server command ('rsync --server' expected)")
    options: list[str] = []
    confined: list[OptionPath] = []
    index = 2
    while index < len(words):
        word = words[index].text
        index += 1
        if word == ".":
            break
        if word.startswith("--"):
            index = _read_long_option(words, index, options, confined)
        elif word.startswith("-") and len(word) > 1:
            _check_short_cluster(word)
            options.append(word)
        else:
            raise GateRefusalError(f"unexpected word {word[:60]!r} among the options")
    else:
        raise GateRefusalError("no '.' and destination after the options")
    paths = words[index:]
    if not paths:
        raise GateRefusalError("no destination after the '.'")
    if len(paths) > 1:
        raise GateRefusalError(
            "several paths after the '.': a receiving rsync takes one destination"
        )
    return ServerArgs(options, confined, paths[0])


# --- where the destination is ---------------------------------------------------------------


def _has_dotdot(path: str) -> bool:
    return ".." in path.split("/")


def is_inside(path: str, root: str) -> bool:
    """``path`` is ``root`` or below it (both absolute and normalised)."""
    if root == "/":
        return True
    return path == root or path.startswith(root + "/")


def destination_path(destination: Word, home: str) -> str:
    """Where sshd's shell would have put the destination, as an absolute, normalised path."""
    text = destination.text
    if not text:
        raise GateRefusalError("an empty destination")
    if _has_dotdot(text):
        raise GateRefusalError(f"the destination {text[:200]!r} holds a '..' component")
    if destination.tilde:
        rest = text[1:]
        if rest and not rest.startswith("/"):
            raise GateRefusalError(f"the destination {text[:200]!r} names another user's home")
        text = home + rest
    elif not text.startswith("/"):
        text = home + "/" + text
    return os.path.normpath(text)


def _inside_or_refuse(what: str, path: str, root: str) -> str:
    """``path`` (absolute, normalised) with its symbolic links resolved, when that is ``root`` or
    below it: a link at any component that leads out is refused, one that stays in is followed."""
    real = os.path.realpath(path)
    if not is_inside(real, root):
        if real != path:
            raise GateRefusalError(
                f"{what} leads out of {root} through a symbolic link (to {real})"
            )
        raise GateRefusalError(f"{what} ({path}) is outside {root}")
    return real


def option_path(option: OptionPath, destination: str, root: str) -> str:
    """The value rsync gets for a CONFINED option, or the --partial-dir name as it is; a
    GateRefusalError if it leads out.

    Read as rrsync reads them: a relative path starts at the gate's directory, not at the
    destination (which may lie below it: the rotating layout pushes into cur/ with
    --link-dest=prev), an absolute one must lie in the directory too, and rsync gets the
    resolved absolute path.

    ``destination`` is the destination with its links resolved, ``root`` the gate's directory.
    """
    value = option.value
    what = f"--{option.name} {value[:200]!r}"
    if not value or value.startswith("~"):
        raise GateRefusalError(
            f"{what}: only a path inside the directory (relative to it, or absolute)"
        )
    if _has_dotdot(value):
        raise GateRefusalError(f"{what} holds a '..' component")
    if option.name == rsync_server.PER_DIRECTORY and "/" not in value:
        _inside_or_refuse(what, os.path.join(destination, value), root)
        return value
    start = "" if value.startswith("/") else root + "/"
    return _inside_or_refuse(what, os.path.normpath(start + value), root)


# --- the decision ---------------------------------------------------------------------------


class GateConfig:
    """What the gate's command line in authorized_keys says; ``log_option`` is --log as given
    (None: the default log in the user's keyforge directory)."""

    __slots__ = (
        "confine",
        "directory",
        "exact",
        "expect",
        "home",
        "log_option",
        "munge_links",
        "rsync",
    )

    def __init__(
        self,
        directory: str,
        *,
        home: str,
        expect: str | None = None,
        exact: bool = False,
        log: str | None = None,
        rsync: str = DEFAULT_RSYNC,
        munge_links: bool = True,
        confine: bool = False,
    ) -> None:
        self.directory = directory
        self.confine = confine
        self.home = home
        self.expect = expect
        self.exact = exact
        self.log_option = log
        self.rsync = rsync
        self.munge_links = munge_links

    @property
    def log(self) -> str:
        if self.log_option is not None:
            return self.log_option
        return os.path.join(self.home, ".ssh", "keyforge", LOG_NAME)


class Decision:
    """Allowed (with the argv to exec) or refused (with the reason)."""

    __slots__ = ("argv", "command", "drift", "reason")

    def __init__(
        self,
        command: str | None,
        *,
        argv: tuple[str, ...] = (),
        reason: str = "",
        drift: bool = False,
    ) -> None:
        self.command = command
        self.argv = argv
        self.reason = reason
        self.drift = drift

    @property
    def allowed(self) -> bool:
        return bool(self.argv)

    def __repr__(self) -> str:
        if self.allowed:
            return f"Decision(allowed, argv={self.argv!r}, drift={self.drift})"
        return f"Decision(refused, reason={self.reason!r})"


def _home_of(path: str) -> str:
    return os.path.normpath(path if path.startswith("/") else "/" + path)


def _root_of(config: GateConfig) -> str:
    """The configured directory, symbolic links resolved; refused when it holds ~/.ssh or the
    log (a push with --delete could replace authorized_keys or wipe the record)."""
    home = _home_of(config.home)
    directory = config.directory
    if not directory.startswith("/"):
        directory = home + "/" + directory
    root = os.path.realpath(directory)
    ssh_dir = os.path.realpath(home + "/.ssh")
    if is_inside(ssh_dir, root) or is_inside(root, ssh_dir):
        raise GateRefusalError(
            f"misconfigured gate: --dir {root} holds or lies in {ssh_dir}; a push could replace "
            "authorized_keys: give the backups a directory of their own"
        )
    if is_inside(os.path.realpath(config.log), root):
        raise GateRefusalError(f"misconfigured gate: the log {config.log} lies inside --dir {root}")
    return root


def _meaning(command: str, config: GateConfig, root: str) -> tuple[tuple[str, ...], str, bool]:
    """The checked option words, the absolute destination, and whether it ends with '/'."""
    server = parse_server_args(split_command(command))
    home = _home_of(config.home)
    destination = destination_path(server.destination, home)
    real = _inside_or_refuse(
        f"the destination {server.destination.text[:200]!r}", destination, root
    )
    options = server.options
    for option in server.confined:
        resolved = option_path(option, real, root)
        if (
            option.name == rsync_server.PER_DIRECTORY
            and resolved.startswith("/")
            and "--delay-updates" in options
        ):
            raise GateRefusalError(
                f"--partial-dir {option.value[:200]!r} is one directory, and with --delay-updates "
                "rsync would discard every file: give --partial-dir a name without '/' (rsync "
                "makes it in each directory)"
            )
        options[option.index] = option.word(resolved)
    return tuple(options), destination, server.destination.text.endswith("/")


def judge(command: str | None, config: GateConfig) -> Decision:
    """The gate's verdict on ``command`` (SSH_ORIGINAL_COMMAND); pure but for reading the file
    system to resolve symbolic links."""
    if command is None:
        return Decision(
            None, reason="no command: an interactive login, or sshd gave the gate nothing to check"
        )
    try:
        if config.exact and config.expect is not None and command != config.expect:
            raise GateRefusalError(
                "the command is not the exact one this key is locked to (--exact)"
            )
        root = _root_of(config)
        options, destination, slash = _meaning(command, config, root)
    except GateRefusalError as refusal:
        return Decision(command, reason=refusal.message)
    target = destination + "/" if slash and destination != "/" else destination
    munge = ("--munge-links",) if config.munge_links and "--munge-links" not in options else ()
    argv = (config.rsync, "--server", *options, *munge, *_confinement(config, root), ".", target)
    drift = _drifts(command, options, destination, config, root)
    return Decision(command, argv=argv, drift=drift)


def _confinement(config: GateConfig, root: str) -> tuple[str, ...]:
    """What the gate adds so that no push makes a device or special file, and with --confine
    (rsync 3.5+) keeps the paths rsync resolves itself (filter merge files named inside the
    protocol, which the gate never sees) in the directory.

    Added after the client's options, so they win over its -D. --drop-D keeps the file list's
    format and skips those files. An older rsync has only --no-specials and --no-devices, which
    make the receiver read the list as if the client had not sent them: harmless for specials
    (a client since rsync 3.1 sends no device number for them), not for devices, whose numbers
    it still sends, so the transfer stalls instead of making the node. Only root's rsync makes
    device nodes, so only a gate running as root adds --no-devices (the whole --no-D); as any
    other user a pushed device node is skipped like a special file.
    """
    if config.confine:
        return (f"--confine-root={root}", "--drop-D")
    return unconfined_no_specials()


def unconfined_no_specials() -> tuple[str, ...]:
    """What an unconfined gate adds against special files and devices (see _confinement)."""
    return ("--no-D",) if os.geteuid() == 0 else ("--no-specials",)


def _drifts(
    command: str, options: tuple[str, ...], destination: str, config: GateConfig, root: str
) -> bool:
    """Whether an allowed command means something else than the expected one.

    Compared on meaning, not text: the expected ``~/backups/`` and an absolute spelling of the
    same directory are no drift; another flag string or another destination is.
    """
    expected = config.expect
    if expected is None or expected == command:
        return False
    try:
        want_options, want_destination, _ = _meaning(expected, config, root)
    except GateRefusalError:
        return True
    return want_options != options or want_destination != destination


# --- the side effects: log, drift state, exec ----------------------------------------------


def client_address(environ: Mapping[str, str]) -> str:
    """The client's address from SSH_CLIENT or SSH_CONNECTION (first field), else "unknown"."""
    for name in ("SSH_CLIENT", "SSH_CONNECTION"):
        value = environ.get(name, "")
        first = value.split(" ", 1)[0]
        if first and len(first) <= 64 and all(c in "0123456789abcdefABCDEF:.%" for c in first):
            return first.removeprefix("::ffff:")
    return "unknown"


def _now() -> str:
    import time  # noqa: PLC0415 - only when a record is written

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _clip(text: str | None) -> tuple[str | None, dict[str, int]]:
    if text is None or len(text) <= LOG_COMMAND_LIMIT:
        return text, {}
    return text[:LOG_COMMAND_LIMIT], {"command_length": len(text)}


def records_for(
    decision: Decision, config: GateConfig, client: str, *, new_drift: bool
) -> list[dict[str, object]]:
    """The log records of one decision: the decision itself, then a drift record if new."""
    now = _now()
    command, extra = _clip(decision.command)
    record: dict[str, object] = {
        "time": now,
        "event": "allowed" if decision.allowed else "refused",
        "client": client,
        "dir": config.directory,
        "command": command,
        **extra,
    }
    if decision.allowed:
        record["argv"] = list(decision.argv)
    else:
        record["reason"] = decision.reason
    records = [record]
    if decision.allowed and not config.confine:
        records.append(
            {
                "time": now,
                "event": "warning",
                "client": client,
                "dir": config.directory,
                "warning": UNCONFINED_RISK,
            }
        )
    if new_drift:
        records.append(
            {
                "time": now,
                "event": "drift",
                "client": client,
                "dir": config.directory,
                "expected": config.expect,
                "received": command,
                "hint": DRIFT_HINT,
            }
        )
    return records


def _open_private(path: str, flags: int) -> int:
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, mode=0o700, exist_ok=True)
    return os.open(path, flags | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)


def append_records(path: str, records: Sequence[dict[str, object]]) -> None:
    """Append the records as JSON lines in one write to an O_APPEND file (0600, parent 0700),
    so concurrent connections never interleave within a line. ASCII-only JSON: no command
    text, however hostile, can break a line or pass for a second record."""
    import json  # noqa: PLC0415 - only when a record is written

    data = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
    fd = _open_private(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, data.encode("ascii"))
    finally:
        os.close(fd)


def drift_state_path(log: str) -> str:
    return log + ".drift"


def first_time_drift(log: str, command: str) -> bool:
    """Note ``command`` in the drift state beside the log; True when it was not there yet."""
    import hashlib  # noqa: PLC0415 - only on the drift path

    digest = hashlib.sha256(command.encode("utf-8", "surrogateescape")).hexdigest()
    path = drift_state_path(log)
    try:
        with open(path, encoding="ascii", errors="replace") as state:
            if digest in state.read().split():
                return False
    except FileNotFoundError:
        pass
    fd = _open_private(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, (digest + "\n").encode("ascii"))
    finally:
        os.close(fd)
    return True


def _say(message: str) -> None:
    os.write(2, f"keyforge gate: {message}\n".encode("utf-8", "backslashreplace"))


def decide_and_log(config: GateConfig, environ: Mapping[str, str]) -> Decision:
    """Judge SSH_ORIGINAL_COMMAND and log the decision (a log failure is said, not fatal)."""
    command = environ.get("SSH_ORIGINAL_COMMAND")
    decision = judge(command, config)
    client = client_address(environ)
    try:
        new_drift = (
            decision.allowed
            and decision.drift
            and command is not None
            and first_time_drift(config.log, command)
        )
        append_records(config.log, records_for(decision, config, client, new_drift=new_drift))
    except OSError as err:
        _say(f"warning: cannot write the log {config.log}: {err.strerror or err}")
    return decision


# --- the gate's own command line ------------------------------------------------------------


class GateOption:
    """One of the gate's own options: ``metavar`` for one that takes a value (else a flag that
    sets ``field`` to ``sets``), the GateConfig keyword it fills, where GateConfig keeps it
    (``attr``) and its default, which the renderer leaves out; ``help`` is USAGE's lines."""

    __slots__ = ("attr", "default", "field", "flag", "help", "metavar", "sets", "within")

    def __init__(
        self,
        flag: str,
        field: str,
        help: tuple[str, ...],
        *,
        metavar: str | None = None,
        attr: str | None = None,
        default: object = None,
        sets: bool = True,
        within: str | None = None,
    ) -> None:
        self.flag = flag
        self.metavar = metavar
        self.field = field
        self.attr = attr or field
        self.default = default
        self.sets = sets
        self.help = help
        self.within = within  # the option it only makes sense with, for the usage line

    def synopsis(self) -> str:
        return f"{self.flag} {self.metavar}" if self.metavar else self.flag


# The gate's own options, once: USAGE, parse_gate_args and gate_command are made from this.
GATE_OPTIONS = (
    GateOption(
        "--dir",
        "directory",
        ("the only directory pushes may write to (absolute, or relative to home)",),
        metavar="DIR",
    ),
    GateOption(
        "--expect",
        "expect",
        (
            "the command captured for this key; another command that passes the",
            "checks still runs, and the first push with each new text is logged as",
            "\"drift\" with both texts and a hint to run 'keyforge capture' again",
        ),
        metavar="COMMAND",
    ),
    GateOption(
        "--exact",
        "exact",
        ("run only the exact --expect text (the strict comparison)",),
        default=False,
        within="--expect",
    ),
    GateOption(
        "--log",
        "log",
        ("the JSON-lines log (default ~/.ssh/keyforge/gate.log, mode 0600)",),
        metavar="PATH",
        attr="log_option",
    ),
    GateOption(
        "--rsync",
        "rsync",
        ("the rsync to exec (default /usr/bin/rsync)",),
        metavar="PATH",
        default=DEFAULT_RSYNC,
    ),
    GateOption(
        "--no-munge-links",
        "munge_links",
        (
            "do not add --munge-links. By default rsync stores pushed symbolic",
            "links munged (prefixed with /rsyncd-munged/), so a link pushed by one",
            "run cannot lead a later run out of DIR; rsync --munge-links",
            "on the side sending them back (-M--munge-links when that is",
            "this host) restores them",
        ),
        default=True,
        sets=False,
    ),
    GateOption(
        "--confine",
        "confine",
        (
            "pass --confine-root=DIR and --drop-D (rsync 3.5 and later;",
            "'keyforge install --gate' adds it when this host's rsync has them):",
            "paths rsync resolves itself, such as filter merge files named",
            "inside the protocol, stay in DIR. Without it the gate passes",
            "--no-specials (and --no-devices as root: a device node in the",
            "pushed tree then stalls the push) and logs a warning line with",
            "each push: a client can make rsync read a file outside DIR as",
            "a merge file",
        ),
        default=False,
    ),
)
_BY_FLAG = {option.flag: option for option in GATE_OPTIONS}
_REQUIRED = "--dir"

_ABOUT = """\
The forced command (authorized_keys command=) for a backup key: reads SSH_ORIGINAL_COMMAND
and lets it run only as an rsync receive into DIR, through an argument list, never a shell.

Refused, logged with the client address, exit 1: a pull (--sender), a destination outside DIR
(relative paths are relative to the home, ~ is the home), a '..' component, a symbolic link
leading out, options that name files elsewhere (--files-from, --log-file), options that follow
links on this host (-K -L -k) or hide the destination (-s), and any unquoted shell syntax
(; | & $ ` < > ...). --delete is allowed: it can only delete inside DIR. The directories
--link-dest, --compare-dest, --copy-dest, --backup-dir, --partial-dir and --temp-dir name are
read as rrsync reads them, a relative path from DIR (so --link-dest=prev into DIR/cur/ is
DIR/prev), and must stay inside DIR; a --partial-dir without a '/' stays rsync's name made in
each directory (as --delay-updates needs). No device or special file is ever made.
"""


def _usage() -> str:
    """USAGE, from GATE_OPTIONS: the usage line (wrapped), what the gate does, each option."""
    parts = []
    for option in GATE_OPTIONS:
        if option.within is not None:
            continue
        inner = "".join(f" [{o.synopsis()}]" for o in GATE_OPTIONS if o.within == option.flag)
        text = option.synopsis() + inner
        parts.append(text if option.flag == _REQUIRED else f"[{text}]")
    lines, line = [], "usage: keyforge gate"
    for part in parts:
        if len(line) + 1 + len(part) > 96:
            lines.append(line)
            line = " " * 20
        line += " " + part
    lines.append(line)
    options = []
    for option in GATE_OPTIONS:
        first, *rest = option.help
        options.append(f"  {option.synopsis():<19}{first}")
        options.extend(" " * 21 + more for more in rest)
    return "\n".join(lines) + "\n\n" + _ABOUT + "\n" + "\n".join(options) + "\n"


USAGE = _usage()


def parse_gate_args(args: Sequence[str], *, home: str) -> GateConfig | None:
    """The gate's options (GATE_OPTIONS), or None for --help (a hand-written loop: argparse
    would cost start-up time on every connection)."""
    values: dict[str, object] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        name, has_value, value = arg.partition("=")
        i += 1
        option = _BY_FLAG.get(name)
        if option is not None and option.metavar is not None:
            if not has_value:
                if i >= len(args):
                    raise GateUsageError(f"{name} needs a value")
                value = args[i]
                i += 1
            values[option.field] = value
        elif option is not None and not has_value:
            values[option.field] = option.sets
        elif arg in ("-h", "--help"):
            return None
        else:
            raise GateUsageError(f"unknown argument {arg!r}")
    if not values.get("directory"):
        raise GateUsageError("--dir is required: the directory pushes may write to")
    if values.get("exact") and "expect" not in values:
        raise GateUsageError("--exact needs --expect COMMAND: the one command to allow")
    rsync = values.get("rsync", DEFAULT_RSYNC)
    if not isinstance(rsync, str) or not rsync.startswith("/"):
        raise GateUsageError("--rsync needs an absolute path")
    directory = str(values.pop("directory"))
    # each field is a GateConfig keyword, holding a str (a value option) or a bool (a flag)
    return GateConfig(directory, home=home, **values)  # type: ignore[arg-type]


def _login_home() -> str:
    import pwd  # noqa: PLC0415

    # the passwd entry, not $HOME: that is where sshd starts the command, and an environment=
    # option cannot move it
    try:
        return pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        return os.environ.get("HOME", "/")


def run(args: Sequence[str], environ: Mapping[str, str], *, home: str | None = None) -> int:
    """The gate: judge, log, then exec rsync (no return) or say why not and return 1."""
    try:
        config = parse_gate_args(args, home=home if home is not None else _login_home())
    except GateUsageError as err:
        _say(f"error: {err}")
        return err.exit_code
    if config is None:
        os.write(1, USAGE.encode())
        return 0
    decision = decide_and_log(config, environ)
    if not decision.allowed:
        _say(f"refused: {decision.reason}")
        return 1
    try:
        os.execv(decision.argv[0], decision.argv)  # noqa: S606 - an argv list, no shell
    except OSError as err:
        _say(f"error: cannot run {decision.argv[0]}: {err.strerror or err}")
        return 1
    return 1  # pragma: no cover - execv does not return


def main(args: Sequence[str] | None = None) -> int:
    """``keyforge gate ...``: called by keyforge.entry without loading the CLI."""
    return run(sys.argv[2:] if args is None else args, os.environ)


# --- installing the gate (used by 'keyforge install --gate'; never on the gate's path) -------


def gate_program(explicit: str | None = None) -> str:
    """The absolute path of the keyforge script to put in command=.

    The script beside the running Python (a venv's bin/) comes first: it does not depend on the
    PATH sshd gives the forced command.
    """
    from keyforge.infra import tools  # noqa: PLC0415 - never on the gate's path

    if explicit is not None:
        if not explicit.startswith("/"):
            raise GateUsageError(f"the keyforge program must be an absolute path, not {explicit!r}")
        return explicit
    found = tools.keyforge_program()  # the rule cron and systemd get their keyforge by
    if found is None:
        raise GateUsageError(
            "cannot find the keyforge program's absolute path; pass --gate-program PATH"
        )
    return found


def rsync_program() -> str:
    """The rsync the gate will exec: the one on this host's PATH, else /usr/bin/rsync."""
    from keyforge.infra import tools  # noqa: PLC0415 - never on the gate's path

    return tools.find_program("rsync") or DEFAULT_RSYNC


def gate_command(program: str, config: GateConfig) -> str:
    """The forced command that runs ``program``'s gate with ``config`` (what parse_gate_args
    reads back, from the same GATE_OPTIONS), each argument shell-quoted (sshd runs command=
    through the user's shell); an option at its default is left out."""
    import shlex  # noqa: PLC0415

    if config.exact and config.expect is None:
        raise GateUsageError("--exact needs the command to compare with (--command or a capture)")
    argv = [program, "gate"]
    for option in GATE_OPTIONS:
        value = getattr(config, option.attr)
        if option.metavar is not None:
            if option.flag == _REQUIRED or value != option.default:
                argv += [option.flag, value]
        elif value == option.sets and value != option.default:
            argv.append(option.flag)
    return shlex.join(argv)


def rsync_can_confine(rsync: str) -> bool:
    """Whether this rsync knows --confine-root and --drop-D (rsync 3.5 and later)."""
    from keyforge.errors import CommandError  # noqa: PLC0415 - never on the gate's path
    from keyforge.infra import runner  # noqa: PLC0415

    try:
        result = runner.run([rsync, "--help"], check=False, timeout=30)
    except CommandError:
        return False
    help_text = result.stdout.decode(errors="replace")
    return "--confine-root" in help_text and "--drop-D" in help_text


def check_setup(config: GateConfig, *, allow_unconfined: bool = False) -> list[str]:
    """Refuse a gate that could never allow anything, or an unconfined one (see UNCONFINED_RISK)
    unless ``allow_unconfined``; return notes for the admin.

    The expected command, if any, must itself pass the gate: otherwise the key could push
    nothing (with --exact) or every push would be drift.
    """
    if not config.directory.startswith("/"):
        raise GateUsageError(f"the gate directory must be absolute, not {config.directory!r}")
    try:
        root = _root_of(config)
    except GateRefusalError as err:
        raise GateUsageError(err.message.removeprefix("misconfigured gate: ")) from None
    notes = []
    if not config.confine and not allow_unconfined:
        raise GateUsageError(
            f"the gate would run {UNCONFINED_RISK}, and {config.rsync} has no --confine-root: "
            "install rsync 3.5 or later on this host, or pass --allow-unconfined to accept "
            "the weaker lock"
        )
    if not os.path.isdir(root):
        notes.append(f"{root} does not exist yet; rsync creates it on the first push")
    if config.expect is not None:
        decision = judge(config.expect, config)
        if not decision.allowed:
            raise GateUsageError(
                f"the gate would refuse the expected command itself: {decision.reason}"
            )
        notes.append("the gate will run: " + " ".join(decision.argv))
    return notes
