"""What one authorized_keys line lets its key do, in plain words.

Pure: a parsed line in, sentences out. sshd reads the options left to right and a later flag
overrides an earlier one (``pty,restrict`` has no terminal; ``restrict,pty`` has one), so the
effect of each option is told in the order it appears, then the sum of them.

The same reading of the flags (:func:`effective_permissions`) is what ``keyforge audit`` judges.
"""

from __future__ import annotations

import datetime as dt
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from keyforge.errors import FileError, ParseError, UsageError
from keyforge.receiver import gate, install
from keyforge.ssh import authorized_keys as ak
from keyforge.ssh import keys, rsync_server, wire
from keyforge.ssh.authorized_keys import Permissions, effective_permissions, flag_change

# Each of sshd's per-key permission flags (ak.PERMISSION_FLAGS), named in a sentence.
PERMISSION_FLAGS = {
    "port-forwarding": "port forwarding",
    "agent-forwarding": "agent forwarding",
    "x11-forwarding": "X11 forwarding",
    "pty": "a terminal (pty)",
    "user-rc": "running ~/.ssh/rc",
}

# --- the key ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyFacts:
    """What identifies a key to a reader: as ``ssh-keygen -lf`` shows it."""

    keytype: str
    bits: int | None
    fingerprint: str
    comment: str

    @property
    def plain_type(self) -> str:
        return ak.CERT_KEY_TYPES.get(self.keytype, self.keytype)

    def label(self) -> str:
        size = f"{self.bits}-bit " if self.bits else ""
        comment = f" ({self.comment})" if self.comment else ""
        return f"{size}{self.keytype} key {self.fingerprint}{comment}"


def key_facts(entry: ak.Entry) -> KeyFacts:
    """Type, size and SHA256 fingerprint; a certificate is shown by the key it certifies."""
    try:
        plain, wire_form = entry.plain_key()
        reader = wire.WireReader(wire_form)
        reader.string()
        bits = keys.key_bits(plain, reader)
    except ValueError:
        # a line the parser accepted always decodes; this keeps a hand-built Entry readable
        return KeyFacts(entry.keytype, None, f"...{entry.blob[-12:]}", entry.comment)
    return KeyFacts(entry.keytype, bits, wire.fingerprint(wire_form), entry.comment)


# --- the forced command -----------------------------------------------------------------------


def _gate_arguments(command: str) -> list[str] | None:
    """The words after ``gate`` when ``command`` may run keyforge's gate, else None."""
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    if "gate" not in words:
        return None
    return words[words.index("gate") + 1 :]


def gate_directory(command: str) -> str | None:
    """DIR when ``command`` runs keyforge's gate (``... gate --dir DIR ...``), else None."""
    rest = _gate_arguments(command) or []
    for index, word in enumerate(rest):
        if word == "--dir" and index + 1 < len(rest):
            return rest[index + 1]
        if word.startswith("--dir="):
            return word.removeprefix("--dir=")
    return None


def gate_unconfined(command: str | None) -> bool:
    """Whether ``command`` runs keyforge's gate without ``--confine``: a weaker lock."""
    if command is None or gate_directory(command) is None:
        return False
    return "--confine" not in (_gate_arguments(command) or [])


def _plain_words(command: str) -> list[str]:
    """The command's words through the one reader of ``rsync --server`` (rsync_server), or none
    when the shell would do more than run one program: such a command is no mere rsync server."""
    try:
        return [word.text for word in rsync_server.split_words(command, globs=True)]
    except rsync_server.CommandSyntaxError:
        return []


def describe_command(command: str | None) -> str:
    if command is None:
        return (
            "any command, including a shell: no command= forces one, so the key logs in like "
            "its user"
        )
    request = runs_the_request(command)
    if request is not None:
        return (
            f"any command, including a shell: {command!r} {request}, so the key runs whatever "
            "the client asks for, as if there were no command="
        )
    directory = gate_directory(command)
    if directory is not None:
        exact = (
            " (and only the exact captured rsync command, --exact)" if "--exact" in command else ""
        )
        text = (
            f"only keyforge's gate, confined to {directory}: it lets an rsync push into that "
            f"directory through and refuses everything else{exact}; whatever the client asks "
            "for is only read from SSH_ORIGINAL_COMMAND"
        )
        if gate_unconfined(command):
            text += f"; a weaker lock, {gate.UNCONFINED_RISK}"
        return text
    words = _plain_words(command)
    if words and words[0].rsplit("/", 1)[-1] == "rsync" and "--server" in words:
        way = (
            "sends files to the client (--sender: the client can read them)"
            if "--sender" in words
            else "receives files from the client"
        )
        return (
            f"only {command!r}, an rsync server that {way}; whatever the client asks for is "
            "ignored (it is in SSH_ORIGINAL_COMMAND)"
        )
    return (
        f"only {command!r}, whatever the client asks for (the request is in "
        "SSH_ORIGINAL_COMMAND, which this command may read)"
    )


# --- does the forced command run what the client asks for? ----------------------------------
# sshd runs command= with the user's shell (``$SHELL -c COMMAND``) and puts the client's request
# in SSH_ORIGINAL_COMMAND. A command that runs that request (directly, through eval, or through
# another shell) lets the key run anything, exactly like a key without command=. The reader
# below follows the shell far enough to see that whatever the variables are called and however
# the words are quoted: quote removal, $NAME and ${NAME...}, $(...) and `...`, assignments
# (also through export, read and set --), pipes and here-strings into a shell, sh -c and eval
# of literal text (read again, recursively), and the wrappers (exec, env, nice...) before it.

REQUEST_VARIABLE = "SSH_ORIGINAL_COMMAND"
_SHELLS = frozenset(
    [
        "sh",
        "bash",
        "dash",
        "ash",
        "ksh",
        "ksh93",
        "mksh",
        "pdksh",
        "oksh",
        "zsh",
        "yash",
        "posh",
        "rbash",
        "busybox",
        "csh",
        "tcsh",
        "fish",
        "su",
    ]
)
_WRAPPERS = frozenset(
    [
        "exec",
        "command",
        "builtin",
        "env",
        "nohup",
        "nice",
        "setsid",
        "sudo",
        "doas",
        "stdbuf",
        "ionice",
        "timeout",
        "time",
        "chronic",
        "unbuffer",
    ]
)
_KEYWORDS = frozenset(["if", "then", "else", "elif", "do", "while", "until", "!", "{", "(", "time"])
_NOT_RUN = frozenset(
    ["case", "for", "select", "function", "[[", "[", "test", "}", "fi", "done", "esac"]
)
_DECLARATIONS = frozenset(["export", "local", "readonly", "declare", "typeset"])
_ASSIGNMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:\[[^]]*\])?\+?=")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9@*#?$!-]")
_NAMES_IN = re.compile(r"\$\{?[#!]?([A-Za-z_][A-Za-z0-9_]*|[0-9@*])")
_MAX_DEPTH = 8  # sh -c 'eval "sh -c ..."' nests; deeper than this is judged as running it


@dataclass
class _Word:
    raw: str = ""
    text: str = ""  # after quote removal; an expansion stands as NUL
    names: set[str] = field(default_factory=set)
    subs: list[str] = field(default_factory=list)
    quoted_start: bool = False

    @property
    def literal(self) -> bool:
        return not self.names and not self.subs


def _closing(text: str, start: int, opening: str, closing: str) -> int:
    """Index just past the ``closing`` that balances the ``opening`` before ``start``."""
    depth, i, quote = 1, start, ""
    while i < len(text):
        char = text[i]
        if quote:
            if char == "\\" and quote == '"':
                i += 1
            elif char == quote:
                quote = ""
        elif char == "\\":
            i += 1
        elif char in "'\"":
            quote = char
        elif char == opening:
            depth += 1
        elif char == closing:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return len(text)


def _expansion(text: str, i: int, word: _Word) -> int:
    """Read the expansion at ``text[i] == '$'`` into ``word``; return the index after it."""
    rest = text[i + 1 : i + 2]
    if text.startswith("$((", i):
        end = _closing(text, i + 3, "(", ")")
        word.names.update(_NAMES_IN.findall(text[i:end]))
        word.names.update(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text[i + 3 : end]))
    elif rest == "(":
        end = _closing(text, i + 2, "(", ")")
        word.subs.append(text[i + 2 : end - 1])
    elif rest == "{":
        end = _closing(text, i + 2, "{", "}")
        inner = text[i + 2 : end - 1].lstrip("#!")
        match = _NAME.match(inner)
        if match is not None:
            word.names.add(match.group())
        word.names.update(_NAMES_IN.findall(inner))
    else:
        match = _NAME.match(text, i + 1)
        if match is None:
            word.text += "$"
            return i + 1
        word.names.add(match.group())
        end = match.end()
    word.text += "\0"
    return end


def _lex(script: str) -> list[_Word | str]:  # noqa: PLR0912, PLR0915 - one pass, one state
    """Words and operators (``;`` ``|`` ``<<<`` ``<`` ``>``...) of a shell script."""
    tokens: list[_Word | str] = []
    word: _Word | None = None
    i, n = 0, len(script)

    def finish() -> None:
        nonlocal word
        if word is not None:
            tokens.append(word)
            word = None

    while i < n:
        char = script[i]
        if char in " \t":
            finish()
            i += 1
            continue
        if char == "#" and word is None:
            while i < n and script[i] != "\n":
                i += 1
            continue
        if char in "\n;&|()":
            finish()
            operator = "|" if char == "|" and script[i + 1 : i + 2] not in ("|",) else ";"
            tokens.append(operator)
            i += 2 if script[i : i + 2] in ("&&", "||", ";;", "|&") else 1
            continue
        if char in "<>":
            if word is not None and word.raw.isdigit():
                word = None  # a file descriptor number: 2>/dev/null
            finish()
            match = re.match(r"<<<|<<-?|<>|>>|>&|<&|>\||<|>", script[i:])
            assert match is not None
            tokens.append("<<<" if match.group() == "<<<" else "redirect")
            i += match.end()
            continue
        if word is None:
            word = _Word(quoted_start=char in "'\"\\")
        start = i
        if char == "\\":
            word.text += script[i + 1 : i + 2].replace("\n", "")
            i += 2
        elif char == "'":
            end = script.find("'", i + 1)
            end = n if end < 0 else end
            word.text += script[i + 1 : end]
            i = end + 1
        elif char == '"':
            i += 1
            while i < n and script[i] != '"':
                if script[i] == "\\" and script[i + 1 : i + 2] in ('"', "\\", "$", "`", "\n"):
                    word.text += script[i + 1].replace("\n", "")
                    i += 2
                elif script[i] == "$":
                    i = _expansion(script, i, word)
                elif script[i] == "`":
                    end = script.find("`", i + 1)
                    end = n if end < 0 else end
                    word.subs.append(script[i + 1 : end])
                    word.text += "\0"
                    i = end + 1
                else:
                    word.text += script[i]
                    i += 1
            i += 1
        elif char == "$":
            i = _expansion(script, i, word)
        elif char == "`":
            end = script.find("`", i + 1)
            end = n if end < 0 else end
            word.subs.append(script[i + 1 : end])
            word.text += "\0"
            i = end + 1
        else:
            word.text += char
            i += 1
        word.raw += script[start:i]
    finish()
    return tokens


@dataclass
class _Simple:
    words: list[_Word] = field(default_factory=list)
    here_strings: list[_Word] = field(default_factory=list)


def _pipelines(tokens: list[_Word | str]) -> list[list[_Simple]]:
    pipelines: list[list[_Simple]] = [[_Simple()]]
    pending = ""
    for item in tokens:
        if isinstance(item, str):
            if item == ";":
                pipelines.append([_Simple()])
            elif item == "|":
                pipelines[-1].append(_Simple())
            pending = item if item in ("<<<", "redirect") else ""
            continue
        current = pipelines[-1][-1]
        if pending == "<<<":
            current.here_strings.append(item)
        elif pending != "redirect":
            current.words.append(item)
        pending = ""
    return [[s for s in pipeline if s.words or s.here_strings] for pipeline in pipelines]


@dataclass
class _Reader:
    """What the script has seen so far: which variables hold the client's request."""

    tainted: set[str]
    depth: int = 0

    def carries(self, word: _Word) -> bool:
        if word.names & self.tainted:
            return True
        return any(self.nested(sub)[1] for sub in word.subs)

    def nested(self, script: str) -> tuple[str | None, bool]:
        if self.depth >= _MAX_DEPTH:
            return f"nests shells deeper than {_MAX_DEPTH} levels around ${REQUEST_VARIABLE}", True
        return _Reader(set(self.tainted), self.depth + 1).script(script)

    def script(self, script: str) -> tuple[str | None, bool]:
        """(how the script runs the request, or None; whether its output carries the request)"""
        output = False
        for pipeline in _pipelines(_lex(script)):
            fed = False
            for simple in pipeline:
                verdict, fed = self.simple(simple, fed)
                if verdict is not None:
                    return verdict, True
            output = fed
        return None, output

    def _assign(self, word: _Word) -> bool:
        match = _ASSIGNMENT.match(word.raw)
        if match is None or word.quoted_start:
            return False
        if self.carries(word):
            self.tainted.add(match.group(1))
        else:
            self.tainted.discard(match.group(1))
        return True

    def simple(  # noqa: PLR0911, PLR0912 - one branch for each builtin that moves the request
        self, simple: _Simple, fed: bool
    ) -> tuple[str | None, bool]:
        for word in (*simple.words, *simple.here_strings):
            for sub in word.subs:
                verdict, _ = self.nested(sub)
                if verdict is not None:
                    return verdict, True
        fed = fed or any(self.carries(word) for word in simple.here_strings)
        words = list(simple.words)
        while words and self._assign(words[0]):
            words.pop(0)
        while words and words[0].literal and words[0].text in _KEYWORDS | _WRAPPERS:
            wrapper = words.pop(0).text in _WRAPPERS
            while (
                wrapper
                and words
                and (
                    words[0].text.startswith("-")
                    or words[0].text.isdigit()
                    or (words[0].literal and _ASSIGNMENT.match(words[0].raw) is not None)
                )
            ):
                words.pop(0)
        carried = fed or any(self.carries(word) for word in words)
        if not words:
            return None, carried
        first, args = words[0], words[1:]
        if self.carries(first):
            return f"runs ${REQUEST_VARIABLE} as the command", True
        name = first.text.rsplit("/", 1)[-1] if first.literal else ""
        if name in _NOT_RUN:
            return None, False
        if name in _DECLARATIONS:
            for word in args:
                self._assign(word)
            return None, False
        if name == "read":
            if fed:
                self.tainted.update(w.text for w in args if not w.text.startswith("-"))
            return None, False
        if name == "set":
            if any(self.carries(word) for word in args):
                self.tainted.update("@*123456789")
            return None, False
        if name == "printenv":
            return None, fed or not args or any(w.text == REQUEST_VARIABLE for w in args)
        if name == "eval":
            if any(self.carries(word) for word in args):
                return f"hands ${REQUEST_VARIABLE} to eval", True
            return self.nested(" ".join(word.text for word in args))[0], carried
        if name in _SHELLS or not first.literal:
            return self._shell(name or first.raw, args, fed), carried
        return None, carried

    def _shell(self, name: str, args: list[_Word], fed: bool) -> str | None:
        if name == "busybox" and args:
            name, args = args[0].text, args[1:]
        options = [w for w in args if w.literal and w.text.startswith("-") and len(w.text) > 1]
        operands = [w for w in args if w not in options]
        has_c = any(not o.text.startswith("--") and "c" in o.text.lstrip("-+") for o in options)
        if has_c and operands:
            script = operands[0]
            if self.carries(script):
                return f"hands ${REQUEST_VARIABLE} to a shell ({name} -c)"
            return self.nested(script.text)[0]
        if operands and self.carries(operands[0]):
            return f"hands ${REQUEST_VARIABLE} to a shell ({name}) as its script"
        if fed and (not operands or any(o.text == "-s" for o in options)):
            return f"feeds ${REQUEST_VARIABLE} to a shell ({name}) on its standard input"
        return None


def runs_the_request(command: str) -> str | None:
    """How the forced ``command`` runs the client's own request (``$SSH_ORIGINAL_COMMAND``),
    or None when it does not: "hands $SSH_ORIGINAL_COMMAND to a shell (sh -c)", for one.

    Such a command lets the key run anything the client asks for, a shell included.
    """
    if "$" not in command and "printenv" not in command:
        return None  # no expansion, no way to reach the variable: the common case, quickly
    return _Reader({REQUEST_VARIABLE}).script(command)[0]


# --- from= and expiry-time --------------------------------------------------------------------


def describe_from(values: list[str]) -> str:
    if not values:
        return "anywhere: no from= limits the source address"
    patterns = [p for value in values for p in value.split(",")]
    allowed = [p for p in patterns if not p.startswith("!")]
    refused = [p.removeprefix("!") for p in patterns if p.startswith("!")]
    if not allowed:
        return "nowhere: from= holds only negated patterns, which can refuse but never admit"
    everywhere = ak.admits_every_address(patterns)
    if everywhere is not None:
        text = (
            f"anywhere: from= admits {everywhere} ({', '.join(allowed)}), as if it were not there"
        )
        if refused:
            text += f"; it refuses only {', '.join(refused)}"
        return text
    text = f"only {', '.join(allowed)}"
    if refused:
        text += f", except {', '.join(refused)} (a negated match refuses even if another admits)"
    names = install.hostname_patterns(patterns)
    if names:
        text += (
            f"; {', '.join(names)} name hosts, which match only with 'UseDNS yes' in "
            "sshd_config (the default 'no' knows the client by its address only)"
        )
    return text


def describe_expiry(values: list[str], now: dt.datetime) -> str:
    if not values:
        return "never: no expiry-time"
    # sshd keeps the earliest of several expiry-time options
    dated = [(ak.expiry_datetime(v), v) for v in values]
    known = [(moment, v) for moment, v in dated if moment is not None]
    moment, value = min(known) if known else (None, values[0])
    zone = "UTC" if value[-1:].lower() == "z" or value.lower().endswith("utc") else "local time"
    if moment is not None and moment <= now:
        return f"expired at {value} ({zone}): sshd refuses the key now"
    text = f"at {value} ({zone}); sshd refuses the key after that"
    if len(values) > 1:
        text += " (the earliest of its expiry-time options)"
    return text


# --- each option in turn ---------------------------------------------------------------------


def _flag_effect(name: str, on: bool, restricted_before: bool) -> str:
    what = PERMISSION_FLAGS[name]
    if on:
        again = " again, overriding the earlier restrict" if restricted_before else ""
        return f"allows {what}{again}"
    return f"refuses {what}"


def _touch_effect(name: str, fido: bool) -> str:
    effects = {
        "no-touch-required": "lets the FIDO key sign without a touch (user presence)",
        "touch-required": "requires a touch on the FIDO key (the default)",
        "verify-required": "requires the FIDO key to verify its user (PIN or biometrics)",
        "no-verify-required": "does not require user verification on the FIDO key (the default)",
    }
    text = effects[name]
    return text if fido else f"{text}; no effect here: this is not a FIDO (sk-) key"


def option_effect(
    option: ak.Option, *, enabled_so_far: set[str], restricted_before: bool, fido: bool
) -> str:
    """One sentence for one option, given what the options before it did."""
    name, value = option.name, option.value or ""
    change = flag_change(name)
    if name == "restrict":
        text = (
            "turns off port, agent and X11 forwarding, the terminal (pty) and ~/.ssh/rc, and "
            "any restriction later sshd versions add"
        )
        undone = [flag for flag in PERMISSION_FLAGS if flag in enabled_so_far]
        if undone:
            text += f", undoing the earlier {', '.join(undone)}"
        return text
    if change is not None:
        return _flag_effect(change[0], change[1], restricted_before)
    if name in ("touch-required", "no-touch-required", "verify-required", "no-verify-required"):
        return _touch_effect(name, fido)
    effects: dict[str, str] = {
        "command": f"forces the command: {describe_command(value)}",
        "from": f"admits the key from {describe_from([value])}",
        "expiry-time": f"sshd refuses the key after {value}",
        "permitopen": f"limits local forwarding (ssh -L) to {value}",
        "permitlisten": f"limits remote forwarding (ssh -R) to listening on {value}",
        "environment": (
            f"sets {value.partition('=')[0]} for the session, only with "
            "'PermitUserEnvironment yes' in sshd_config"
        ),
        "principals": f"accepts only certificates naming one of: {value}",
        "cert-authority": (
            "makes this key a certificate authority: it admits user certificates it signed, "
            "and cannot log in itself"
        ),
        "tunnel": f"forces tun device {value} for tunnel forwarding (needs PermitTunnel)",
    }
    return effects.get(name, "unknown to keyforge")


# --- the whole line ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Explanation:
    key: KeyFacts
    lineno: int | None
    effects: tuple[tuple[str, str], ...]  # (option as written, its effect), in file order
    summary: tuple[tuple[str, str], ...]  # (heading, sentence)

    def lines(self) -> list[str]:
        where = f"line {self.lineno}: " if self.lineno is not None else ""
        out = [f"{where}{self.key.label()}"]
        if self.effects:
            out.append("options, in the order sshd reads them:")
            out.extend(f"  {option}: {effect}" for option, effect in self.effects)
        else:
            out.append("no options: sshd applies none of its per-key restrictions")
        out.append("in effect:")
        width = max(len(heading) for heading, _ in self.summary)
        out.extend(f"  {heading + ':':<{width + 1}} {text}" for heading, text in self.summary)
        return out


def _effects(entry: ak.Entry) -> list[tuple[str, str]]:
    effects = []
    enabled: set[str] = set()
    restricted = False
    fido = "sk-" in entry.keytype
    for option in entry.options:
        effect = option_effect(
            option, enabled_so_far=enabled, restricted_before=restricted, fido=fido
        )
        effects.append((ak.format_option(option), effect))
        change = flag_change(option.name)
        if option.name == "restrict":
            restricted = True
            enabled.clear()
        elif change is not None:
            if change[1]:
                enabled.add(change[0])
            else:
                enabled.discard(change[0])
    return effects


def _forwarding_limits(entry: ak.Entry, permissions: Permissions) -> list[str]:
    limits = []
    forwarding = permissions.allows("port-forwarding")
    limited = entry.has("permitopen") or entry.has("permitlisten")
    for name, what in (("permitopen", "ssh -L"), ("permitlisten", "ssh -R")):
        values = entry.values(name)
        if values and forwarding:
            where = "to" if name == "permitopen" else "listening on"
            limits.append(f"{what} only {where} {', '.join(values)}")
        elif values:
            limits.append(f"{name}= has no effect: port forwarding is off")
        elif forwarding and limited:
            limits.append(f"{what} not limited (no {name}=)")
    return limits


def _summary(entry: ak.Entry, now: dt.datetime) -> list[tuple[str, str]]:
    permissions = effective_permissions(entry)
    commands = entry.values("command")
    summary = [
        ("runs", describe_command(commands[0] if commands else None)),
        ("from", describe_from(entry.values("from"))),
        ("expires", describe_expiry(entry.values("expiry-time"), now)),
    ]
    allowed = [what for flag, what in PERMISSION_FLAGS.items() if permissions.allows(flag)]
    refused = [what for flag, what in PERMISSION_FLAGS.items() if not permissions.allows(flag)]
    limits = _forwarding_limits(entry, permissions)
    beyond = "nothing beyond the command"
    if commands and runs_the_request(commands[0]) is not None:
        beyond = "any command the client asks for: the forced command runs it"
    summary.append(("allowed", ", ".join(allowed) if allowed else beyond))
    summary.append(("refused", ", ".join(refused) if refused else "nothing"))
    if limits:
        summary.append(("limits", "; ".join(limits)))
    env = [value.partition("=")[0] for value in entry.values("environment")]
    if env:
        summary.append(("environment", f"{', '.join(env)} (needs PermitUserEnvironment yes)"))
    if entry.has("cert-authority"):
        principals = entry.values("principals")
        who = f" naming one of: {principals[0]}" if principals else ""
        summary.append(("certificates", f"admits user certificates signed by this key{who}"))
    if "sk-" in entry.keytype:
        touch = "a touch" if permissions.touch_required else "no touch"
        verify = " and user verification" if permissions.verify_required else ""
        summary.append(("fido", f"each login needs {touch}{verify} on the security key"))
    if not permissions.restricted:
        summary.append(
            ("note", "no restrict: restrictions that later sshd versions add will not apply")
        )
    return summary


def explain_entry(
    entry: ak.Entry, *, lineno: int | None = None, now: dt.datetime | None = None
) -> Explanation:
    moment = now if now is not None else dt.datetime.now(dt.UTC)
    return Explanation(
        key=key_facts(entry),
        lineno=lineno,
        effects=tuple(_effects(entry)),
        summary=tuple(_summary(entry, moment)),
    )


def explain_line(
    text: str,
    *,
    lineno: int | None = None,
    source: str | None = None,
    now: dt.datetime | None = None,
) -> Explanation:
    """Explain one authorized_keys line; a line sshd would refuse is a ParseError saying so."""
    try:
        entry = ak.parse_line(text.rstrip("\r\n"), lineno=lineno or 1, source=source)
    except ParseError as err:
        raise ParseError(
            f"sshd ignores this line: {err.reason}", lineno=lineno, source=source
        ) from None
    if entry is None:
        raise UsageError("the line is blank or a # comment: it holds no key to explain")
    return explain_entry(entry, lineno=lineno, now=now)


@dataclass(frozen=True)
class KeyLine:
    """A line of a file that holds the wanted key: its explanation, or why sshd ignores it."""

    lineno: int
    explanation: Explanation | None
    ignored_because: str | None = None


def explain_key_in(text: str, key: ak.Entry, *, now: dt.datetime | None = None) -> list[KeyLine]:
    """Every line of an authorized_keys text holding ``key``, explained, in file order.

    A line sshd refuses is matched by the key's base64 text, since it never parsed to a key.
    """
    found = []
    for line in ak.parse(text, strict=False):
        if line.entry is not None and line.entry.same_key(key):
            found.append(
                KeyLine(line.lineno, explain_entry(line.entry, lineno=line.lineno, now=now))
            )
        elif line.error is not None and key.blob in line.raw:
            found.append(KeyLine(line.lineno, None, line.error.reason))
    return found


def explain_key_in_file(path: Path, key: ak.Entry) -> list[KeyLine]:
    """``explain_key_in`` on an authorized_keys file, read as sshd reads it (bytes as they are)."""
    try:
        text = path.read_bytes().decode("utf-8", errors="surrogateescape")
    except OSError as err:
        raise FileError.from_os_error("read", path, err) from err
    return explain_key_in(text, key)
