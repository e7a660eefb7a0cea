"""What one authorized_keys line lets its key do, in plain words.

Pure: a parsed line in, sentences out. sshd reads the options left to right and a later flag
overrides an earlier one (``pty,restrict`` has no terminal; ``restrict,pty`` has one), so the
effect of each option is told in the order it appears, then the sum of them.

The same reading of the flags (:func:`effective_permissions`) is what ``keyforge audit`` judges.
"""

from __future__ import annotations

import datetime as dt
import shlex
from dataclasses import dataclass
from pathlib import Path

from keyforge import authorized_keys as ak
from keyforge import gate, install, keys, wire
from keyforge.authorized_keys import Permissions, effective_permissions, flag_change
from keyforge.errors import FileError, ParseError, UsageError

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


def describe_command(command: str | None) -> str:
    if command is None:
        return (
            "any command, including a shell: no command= forces one, so the key logs in like "
            "its user"
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
    words = command.split()
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


# --- from= and expiry-time --------------------------------------------------------------------


def describe_from(values: list[str]) -> str:
    if not values:
        return "anywhere: no from= limits the source address"
    patterns = [p for value in values for p in value.split(",")]
    allowed = [p for p in patterns if not p.startswith("!")]
    refused = [p.removeprefix("!") for p in patterns if p.startswith("!")]
    if not allowed:
        return "nowhere: from= holds only negated patterns, which can refuse but never admit"
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
    summary.append(("allowed", ", ".join(allowed) if allowed else "nothing beyond the command"))
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
