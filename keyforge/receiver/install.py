"""Install or revoke one locked-down key in an authorized_keys file, on the receiving host.

Three layers, each usable alone:

* ``locked_entry`` builds the restricted line (``restrict``, the ``no-*`` flags, ``from=``,
  ``command=``) from validated values;
* ``plan_install`` / ``plan_revoke`` are pure: current text in, new text out, every other line
  byte-identical and in place, and a result that does not parse back is refused;
* ``install_key`` / ``revoke_key`` do the side effects under a lock: backup, atomic write,
  modes, and warnings about anything that would make sshd ignore the file or widen a key.

On top of them, ``InstallRequest`` and ``perform_install`` compose the line the four ways
'keyforge install' can (plain, ``--from-capture``, ``--gate``, ``--like``) and check which
options go together, so the library can do every install the command line can.
"""

from __future__ import annotations

import datetime as dt
import difflib
import glob
import ipaddress
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from keyforge.errors import (
    FileError,
    KeyforgeError,
    KeyMaterialError,
    ParseError,
    RenderError,
    UsageError,
)
from keyforge.infra import fsutil
from keyforge.ssh import authorized_keys as ak

Action = Literal["added", "replaced", "unchanged", "removed", "absent"]

# Spelled lowercase: sshd and Dropbear both match option names case-insensitively.
LOCKDOWN_FLAGS = (
    "no-port-forwarding",
    "no-x11-forwarding",
    "no-agent-forwarding",
    "no-pty",
    "no-user-rc",
)
# Dropbear refuses the whole line on an option it does not know, so these must not appear.
DROPBEAR_UNKNOWN = frozenset({"restrict", "no-user-rc", "from", "expiry-time", "environment"})
BACKUP_SUFFIX = ".keyforge-bak"

_IPV4_WILDCARD = re.compile(r"[0-9.*?]+")
_IPV6_WILDCARD = re.compile(r"[0-9A-Fa-f:.*?]+")
_FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")


# --- validating values ----------------------------------------------------------------------
# What sshd itself would refuse is checked by the authorized_keys model (one handler per option);
# here only what keyforge refuses on top of that: values that parse but cannot be what was meant.


def _sshd_option(name: str, value: str) -> ak.Option:
    """``name="value"``, proven writable and acceptable to sshd by the authorized_keys model."""
    option = ak.Option(name, value)
    try:
        ak.parse_options(ak.format_option(option))
    except (ParseError, RenderError) as err:
        raise UsageError(str(err)) from None
    return option


def check_command(command: str, *, dropbear: bool = False) -> ak.Option:
    """The ``command=`` option; refuses what cannot be written into it and read back."""
    if not command.strip():
        raise UsageError("the forced command is empty")
    if dropbear and '"' in command:
        # Dropbear keeps \" literally where sshd unescapes it: the two would run different commands
        raise UsageError("Dropbear cannot take a double quote in the forced command")
    return _sshd_option("command", command)


def _is_ip_like(pattern: str) -> bool:
    """An address, CIDR or wildcard address pattern: matched against the client's IP."""
    if "/" in pattern:
        return True
    if _IPV4_WILDCARD.fullmatch(pattern) and any(c.isdigit() or c in "*?" for c in pattern):
        return True
    return ":" in pattern and _IPV6_WILDCARD.fullmatch(pattern) is not None


def _host_bits_hint(patterns: Sequence[str]) -> str:
    for pattern in patterns:
        bare = pattern.removeprefix("!")
        try:
            ipaddress.ip_network(bare, strict=True)
        except ValueError:
            try:
                network = ipaddress.ip_network(bare, strict=False)
            except ValueError:
                continue
            return f"; did you mean {network.with_prefixlen}?"
    return ""


def check_from_patterns(patterns: Sequence[str]) -> ak.Option:
    """The ``from=`` option for sshd patterns (each optionally negated with ``!``)."""
    if not patterns:
        raise UsageError("no from pattern given")
    for pattern in patterns:
        if not pattern:
            raise UsageError("empty from pattern (a doubled or trailing comma?)")
        if any(c in pattern for c in "\",'") or any(c.isspace() for c in pattern):
            raise UsageError(
                f"from pattern {pattern!r} holds a quote, comma or whitespace; give one "
                "address, CIDR block or wildcard pattern per entry"
            )
        bare = pattern.removeprefix("!")
        if "/" in bare and any(c in bare for c in "*?"):
            # sshd would fall back to a plain wildcard match that no address ever satisfies
            raise UsageError(f"from pattern {pattern!r}: a CIDR block cannot hold wildcards")
    try:
        return _sshd_option("from", ",".join(patterns))
    except UsageError as err:
        raise UsageError(f"{err}{_host_bits_hint(patterns)}") from None


def source_patterns(patterns: Sequence[str] | None, *, any_source: bool) -> list[str] | None:
    """The from= patterns to write (None: no from=), from --from and --any-source.

    Leaving from= out must be asked for, and so must a from= that admits every address, which
    limits no more than none (``*``, ``0.0.0.0/0``, ``::/0``...).
    """
    everywhere = ak.admits_every_address(patterns) if patterns else None
    if any_source and patterns and everywhere is None:
        raise UsageError("--from and --any-source contradict each other; give one")
    if any_source:
        return list(patterns) if patterns else None
    if not patterns:
        raise UsageError(
            "--from is required: the address(es) the sending server connects from; "
            "pass --any-source to allow the key from anywhere"
        )
    if everywhere is not None:
        raise UsageError(
            f"--from {','.join(patterns)} admits {everywhere}, which limits the source address "
            "no more than leaving from= out; give the sending server's address, or add "
            "--any-source to allow the key from anywhere"
        )
    return list(patterns)


def hostname_patterns(patterns: Sequence[str]) -> list[str]:
    """The patterns that name hosts rather than addresses."""
    return [p for p in patterns if not _is_ip_like(p.removeprefix("!"))]


def check_expiry_time(value: str) -> ak.Option:
    """sshd's ``expiry-time``: YYYYMMDD[HHMM[SS]], local time, or UTC with a trailing Z."""
    return _sshd_option("expiry-time", value)


def check_environment(assignment: str) -> ak.Option:
    """An ``environment="NAME=VALUE"`` option."""
    return _sshd_option("environment", assignment)


# --- the locked-down line -------------------------------------------------------------------


def _refuse_for_dropbear(
    from_patterns: Sequence[str] | None, expiry_time: str | None, environment: Sequence[str]
) -> None:
    if from_patterns is not None:
        raise UsageError(
            "Dropbear has no from= option and rejects a key line that carries one; limit the "
            "source address with a firewall and pass --any-source"
        )
    if expiry_time is not None:
        raise UsageError("Dropbear has no expiry-time= option and would reject the key line")
    if environment:
        raise UsageError("Dropbear has no environment= option and would reject the key line")


def locked_entry(
    key: ak.Entry,
    *,
    from_patterns: Sequence[str] | None,
    command: str,
    restrict: bool = True,
    dropbear: bool = False,
    expiry_time: str | None = None,
    environment: Sequence[str] = (),
) -> ak.Entry:
    """The key, allowed to run ``command`` only, from ``from_patterns`` only (None: anywhere).

    ``restrict`` (OpenSSH 7.2+) also covers restrictions future sshd versions add; the explicit
    ``no-*`` flags keep the line tight on servers that predate it (``restrict=False``).
    ``dropbear`` writes only options Dropbear accepts: it rejects the whole line otherwise.
    """
    forced = check_command(command, dropbear=dropbear)
    if dropbear:
        _refuse_for_dropbear(from_patterns, expiry_time, environment)
    options: list[ak.Option] = []
    if restrict and not dropbear:
        options.append(ak.Option("restrict"))
    options.extend(
        ak.Option(flag) for flag in LOCKDOWN_FLAGS if not (dropbear and flag in DROPBEAR_UNKNOWN)
    )
    if from_patterns is not None:
        options.append(check_from_patterns(from_patterns))
    options.append(forced)
    if expiry_time is not None:
        options.append(check_expiry_time(expiry_time))
    options.extend(check_environment(item) for item in environment)
    return ak.Entry(keytype=key.keytype, blob=key.blob, comment=key.comment, options=tuple(options))


def entry_warnings(entry: ak.Entry, *, now: dt.datetime | None = None) -> list[str]:
    """What an admin should know about a line keyforge is about to write."""
    warnings: list[str] = []
    names = hostname_patterns(ak.from_patterns(entry))
    if names:
        warnings.append(
            f"from= names hosts ({', '.join(names)}): with sshd's default 'UseDNS no' the "
            "client is known by its address only, so these never match; use IP addresses"
        )
    if not entry.has("from"):
        warnings.append("no from= restriction: the key works from any source address")
    if entry.has("environment"):
        warnings.append(
            "environment= only takes effect with 'PermitUserEnvironment yes' in sshd_config"
        )
    for value in entry.values("expiry-time"):
        moment = now if now is not None else dt.datetime.now(dt.UTC)
        expires = ak.expiry_datetime(value)
        if expires is not None and expires <= moment:
            warnings.append(f"expiry-time {value} is already past: sshd will refuse the key")
    return warnings


def render_line(entry: ak.Entry) -> str:
    """The entry as one authorized_keys line, proven to parse back to the same entry."""
    line = ak.render(entry).removesuffix("\n")
    if "\n" in line or "\r" in line:
        raise RenderError("the rendered authorized_keys line spans several lines")
    try:
        parsed = ak.parse_line(line)
    except ParseError as err:
        raise RenderError(f"the rendered line does not parse back: {err.reason}") from None
    if parsed != entry:
        raise RenderError("the rendered line does not read back as the same options and key")
    return line


# --- widening ---------------------------------------------------------------------------------


def _from_widening(old: ak.Entry, new: ak.Entry) -> list[str]:
    old_patterns, new_patterns = ak.from_patterns(old), ak.from_patterns(new)
    if not old_patterns:
        return []
    if not new_patterns:
        return [
            f'the existing line only allowed from="{",".join(old_patterns)}"; '
            "the new line allows any source address"
        ]
    gained = [p for p in new_patterns if not p.startswith("!") and p not in old_patterns]
    gained += [p for p in old_patterns if p.startswith("!") and p not in new_patterns]
    if gained:
        return [f'from= now also allows {", ".join(gained)} (was "{",".join(old_patterns)}")']
    return []


def widening_warnings(old: ak.Entry, new: ak.Entry) -> list[str]:
    """Every way the new line lets the key do more than the line it replaces."""
    warnings: list[str] = []
    if old.has("restrict") and not new.has("restrict"):
        warnings.append(
            "the existing line has 'restrict' and the new one drops it (restrictions added "
            "by future sshd versions will not apply)"
        )
    # sshd reads the options left to right and the last one wins: "pty,restrict" gives no
    # terminal, "restrict,pty" gives one, so comparing sets of option names would misjudge
    regained = ak.effective_permissions(new).allowed - ak.effective_permissions(old).allowed
    lost = sorted(f"no-{flag}" for flag in regained)
    if lost:
        warnings.append(f"the new line no longer has {', '.join(lost)}")
    old_cmd, new_cmd = old.values("command"), new.values("command")
    if old_cmd and not new_cmd:
        warnings.append(
            f"the existing line forced command={old_cmd[0]!r}; the new line lets the key run "
            "any command"
        )
    elif old_cmd and old_cmd != new_cmd:
        warnings.append(f"the forced command changes from {old_cmd[0]!r} to {new_cmd[0]!r}")
    warnings.extend(_from_widening(old, new))
    old_expiry, new_expiry = old.values("expiry-time"), new.values("expiry-time")
    if old_expiry and old_expiry != new_expiry:
        after = new_expiry[0] if new_expiry else "never"
        warnings.append(f"the key's expiry changes from {old_expiry[0]} to {after}")
    for name in ("permitopen", "permitlisten"):
        if old.has(name) and not new.has(name) and not new.has("no-port-forwarding"):
            warnings.append(f"the new line drops {name}= and does not forbid port forwarding")
    return [f"{new.keytype} key {new.comment or new.blob[-12:]}: {w}" for w in warnings]


# --- planning (pure) --------------------------------------------------------------------------


def _body(line: str) -> str:
    return line.removesuffix("\n").removesuffix("\r")


def _ending(line: str) -> str:
    return line[len(_body(line)) :]


@dataclass(frozen=True)
class Plan:
    """What an install or revoke would do to one authorized_keys text; pure data."""

    action: Action
    old_text: str | None
    new_text: str | None
    line: str | None = None
    linenos: tuple[int, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return self.new_text != self.old_text

    def diff(self, label: str = "authorized_keys") -> str:
        """A unified diff from the current text to the new one ("" when nothing changes)."""
        if not self.changed:
            return ""
        old = ak.split_lines(self.old_text or "")
        new = ak.split_lines(self.new_text or "")
        out: list[str] = []
        for row in difflib.unified_diff(old, new, f"{label} (current)", f"{label} (new)"):
            out.append(row if row.endswith("\n") else row + "\n\\ No newline at end of file\n")
        return "".join(out)


@dataclass(frozen=True)
class _Scan:
    entries: list[ak.Entry | None]
    matches: list[int]
    errors: int
    warnings: list[str] = field(default_factory=list)


def _scan(parsed: list[ak.Line], lines: list[str], key: ak.Entry, source: str | None) -> _Scan:
    """Find the key in the parsed lines; refuse when an unparseable line seems to hold it."""
    if len(parsed) != len(lines):
        raise RenderError(
            "refusing to write: the authorized_keys model splits the file differently"
        )
    entries: list[ak.Entry | None] = []
    matches: list[int] = []
    warnings: list[str] = []
    errors = 0
    for index, line in enumerate(parsed):
        entries.append(line.entry)
        if line.error is not None:
            errors += 1
            if key.blob in line.raw:
                raise ParseError(
                    f"this key stands on a line keyforge cannot parse ({line.error.reason}); "
                    "fix or remove that line by hand first",
                    lineno=line.lineno,
                    source=source,
                )
            warnings.append(f"{line.error}; kept as it is")
        elif line.entry is not None and line.entry.same_key(key):
            matches.append(index)
    return _Scan(entries, matches, errors, warnings)


def _newline_style(lines: list[str]) -> str:
    terminated = [line for line in lines if line.endswith("\n")]
    return "\r\n" if terminated and terminated[-1].endswith("\r\n") else "\n"


def _verify(
    new_text: str,
    expected: list[str],
    scan: _Scan,
    *,
    touched: int | None,
    entry: ak.Entry | None,
    entry_delta: int,
) -> None:
    """Refuse a new text that does not read back exactly as planned."""
    if ak.split_lines(new_text) != expected:
        raise RenderError("refusing to write: the new file does not split into the planned lines")
    if touched is not None and entry is not None:
        try:
            parsed = ak.parse_line(_body(expected[touched]), lineno=touched + 1)
        except ParseError as err:
            raise RenderError(f"refusing to write: the new line does not parse: {err}") from None
        if parsed != entry:
            raise RenderError("refusing to write: the new line does not read back as planned")
    reread = ak.parse(new_text, strict=False)
    errors = sum(1 for line in reread if line.error is not None)
    found = sum(1 for line in reread if line.entry is not None)
    wanted = sum(1 for e in scan.entries if e is not None) + entry_delta
    if errors != scan.errors or found != wanted:
        raise RenderError(
            f"refusing to write: the new file reads back with {found} keys and {errors} bad "
            f"lines, expected {wanted} and {scan.errors}"
        )


def _refuse_duplicates(scan: _Scan, source: str | None) -> None:
    if len(scan.matches) > 1:
        where = ", ".join(str(i + 1) for i in scan.matches)
        label = source or "authorized_keys"
        raise KeyforgeError(
            f"the key stands on several lines of {label} ({where}) and keyforge will not guess "
            "which one sshd should use; remove all but one, then run install again "
            "(or 'keyforge revoke' to remove them all)"
        )


def plan_install(current_text: str | None, entry: ak.Entry, *, source: str | None = None) -> Plan:
    """Put ``entry`` in the text: replace the key's line where it stands, else append it."""
    line = render_line(entry)
    text = current_text or ""
    lines = ak.split_lines(text)
    scan = _scan(ak.parse(text, source=source, strict=False), lines, entry, source)
    _refuse_duplicates(scan, source)
    warnings = [*scan.warnings, *entry_warnings(entry), *ak.parse(line)[0].warnings]
    new_lines = list(lines)
    if scan.matches:
        index = scan.matches[0]
        if _body(lines[index]) == line:
            return Plan(
                "unchanged", current_text, current_text, line, (index + 1,), tuple(warnings)
            )
        old_entry = scan.entries[index]
        assert old_entry is not None  # a match is always a parsed entry
        warnings.extend(widening_warnings(old_entry, entry))
        new_lines[index] = line + _ending(lines[index])
        action: Action = "replaced"
        delta = 0
    else:
        newline = _newline_style(lines)
        if new_lines and not new_lines[-1].endswith("\n"):
            new_lines[-1] += newline
        new_lines.append(line + newline)
        index = len(new_lines) - 1
        action = "added"
        delta = 1
    new_text = "".join(new_lines)
    _verify(new_text, new_lines, scan, touched=index, entry=entry, entry_delta=delta)
    return Plan(action, current_text, new_text, line, (index + 1,), tuple(warnings))


def plan_revoke(current_text: str | None, key: ak.Entry, *, source: str | None = None) -> Plan:
    """Remove every line holding ``key`` (all of them: one left behind would still let it in)."""
    text = current_text or ""
    lines = ak.split_lines(text)
    scan = _scan(ak.parse(text, source=source, strict=False), lines, key, source)
    if not scan.matches:
        return Plan("absent", current_text, current_text, warnings=tuple(scan.warnings))
    doomed = set(scan.matches)
    new_lines = [line for i, line in enumerate(lines) if i not in doomed]
    new_text = "".join(new_lines)
    _verify(new_text, new_lines, scan, touched=None, entry=None, entry_delta=-len(doomed))
    linenos = tuple(i + 1 for i in scan.matches)
    return Plan("removed", current_text, new_text, linenos=linenos, warnings=tuple(scan.warnings))


# --- applying (side effects) -----------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    """What ``install_key`` / ``revoke_key`` did (or, with dry_run, would do)."""

    path: Path
    plan: Plan
    written: bool
    backup: Path | None = None
    created_dir: bool = False
    warnings: tuple[str, ...] = ()

    @property
    def action(self) -> Action:
        return self.plan.action


def default_authorized_keys() -> Path:
    return Path.home() / ".ssh" / "authorized_keys"


def lock_path_for(path: Path) -> Path:
    """The lock file beside ``path``: every keyforge writer of that file takes it first."""
    return path.with_name(f".{path.name}.lock")


def backup_path_for(path: Path) -> Path:
    return path.with_name(path.name + BACKUP_SUFFIX)


def _refuse_symlink(path: Path) -> None:
    # Following a link as root could rewrite any file on the system; replacing it would
    # silently detach whatever manages the real file. Neither is what the admin asked for.
    if path.is_symlink():
        raise FileError(
            f"{path} is a symbolic link; keyforge will not follow or replace it: "
            "pass the real file with --authorized-keys"
        )


def _hand_over(path: Path, reference: Path) -> None:
    """When root creates a file for a user, give it to that user so sshd can read it."""
    if os.geteuid() != 0:
        return
    try:
        owner = reference.stat()
        if path.stat().st_uid != owner.st_uid:
            os.chown(path, owner.st_uid, owner.st_gid)
    except OSError as err:
        raise FileError.from_os_error("set the owner of", path, err) from err


def _prepare_lock(lock: Path) -> None:
    # a lock file left root-owned 0600 would lock the user out of their own later runs
    if os.geteuid() == 0 and not lock.exists():
        try:
            os.close(os.open(lock, os.O_WRONLY | os.O_CREAT, fsutil.PRIVATE_FILE))
        except OSError as err:
            raise FileError.from_os_error("create lock file", lock, err) from err
        _hand_over(lock, lock.parent)


def _write_with_backup(path: Path, plan: Plan) -> Path | None:
    assert plan.new_text is not None
    backup = None
    if plan.old_text is not None:
        backup = backup_path_for(path)
        _refuse_symlink(backup)
        old_bytes = plan.old_text.encode("utf-8", "surrogateescape")
        fsutil.atomic_write(backup, old_bytes, mode=fsutil.PRIVATE_FILE)
        _hand_over(backup, path)
    fsutil.atomic_write(path, plan.new_text.encode("utf-8", "surrogateescape"))
    if plan.old_text is None:
        _hand_over(path, path.parent)
    return backup


def _sweep_stale_temporaries(path: Path) -> list[str]:
    """Remove temporary files a killed keyforge run left beside ``path``.

    Only called under the lock, so no live keyforge writer owns them; the names are the ones
    fsutil.atomic_write gives (``.<name>.<random>.tmp``), which nothing else creates.
    """
    notes = []
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        try:
            stale.unlink()
        except OSError as err:
            raise FileError.from_os_error("remove the leftover", stale, err) from err
        notes.append(f"removed {stale}, left over by an interrupted run")
    return notes


def _mode_warnings(path: Path) -> list[str]:
    return fsutil.loose_mode_warnings(path.parent.parent, path.parent, path)


def _refuse_missing_grandparent(directory: Path) -> None:
    # Only the last directory (~/.ssh) is made: a mistyped home such as /home/fooo must not
    # turn into a root-owned tree of new directories that sshd would never look at.
    if not directory.is_dir() and not directory.parent.is_dir():
        raise FileError(
            f"directory {directory.parent} does not exist; check the path (keyforge creates "
            f"only {directory.name}/ itself, with mode 0700)"
        )


def _apply(
    path: Path, make_plan: Callable[[str | None], Plan], *, dry_run: bool, create_dir: bool
) -> Result:
    _refuse_symlink(path)
    directory = path.parent
    if create_dir:
        _refuse_missing_grandparent(directory)
    if dry_run or (not create_dir and not directory.is_dir()):
        plan = make_plan(fsutil.read_text_if_exists(path))
        return Result(path, plan, False, warnings=(*plan.warnings, *_mode_warnings(path)))
    created = fsutil.ensure_private_dir(directory)
    if created:
        _hand_over(directory, directory.parent)
    lock = lock_path_for(path)
    _prepare_lock(lock)
    backup = None
    with fsutil.locked(lock):
        _refuse_symlink(path)
        swept = _sweep_stale_temporaries(path)
        plan = make_plan(fsutil.read_text_if_exists(path))
        if plan.changed:
            backup = _write_with_backup(path, plan)
    warnings = (*plan.warnings, *swept, *_mode_warnings(path))
    return Result(path, plan, plan.changed, backup, created, warnings)


def install_key(path: Path, entry: ak.Entry, *, dry_run: bool = False) -> Result:
    """Install ``entry`` in the authorized_keys file ``path`` (created 0600 in a 0700 dir)."""
    return _apply(
        path,
        lambda text: plan_install(text, entry, source=str(path)),
        dry_run=dry_run,
        create_dir=True,
    )


def revoke_key(path: Path, key: ak.Entry, *, dry_run: bool = False) -> Result:
    """Remove every line of ``path`` that holds ``key``; a missing file means nothing to do."""
    return _apply(
        path,
        lambda text: plan_revoke(text, key, source=str(path)),
        dry_run=dry_run,
        create_dir=False,
    )


def public_key_from_text(text: str, *, source: str) -> ak.Entry:
    """The one public key in ``text``; a private key is refused without echoing any of it."""
    if "PRIVATE KEY" in text:
        raise KeyMaterialError(
            f"{source} is a private key; give the public key (the .pub file) instead"
        )
    if not text.strip():
        raise KeyMaterialError(f"{source} is empty; expected one public key line")
    return ak.parse_public_key(text, source=source)


def read_public_key(path: Path) -> ak.Entry:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise FileError.from_os_error("read", path, err) from err
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise KeyMaterialError(f"{path} is not a text public key file") from None
    return public_key_from_text(text, source=str(path))


# --- installing a new key like an old one (rotation) -------------------------------------------
# The old key is named by its public key or by its SHA256 fingerprint, so a sender can ask for
# the install over an admin channel without the old public key file at hand on the receiver.

OldKey = ak.Entry | str  # a public key, or "SHA256:<base64>" as ssh-keygen -l prints it


def parse_old_key(spec: str, *, read_file: Callable[[Path], ak.Entry] | None = None) -> OldKey:
    """``--like``'s value: a SHA256 fingerprint as is, anything else a public key file."""
    if spec.startswith("SHA256:"):
        if not _FINGERPRINT.fullmatch(spec):
            raise UsageError(
                f"{spec!r} is not a SHA256 fingerprint (SHA256: and 43 base64 characters, as "
                "ssh-keygen -lf prints it)"
            )
        return spec
    return (read_file or read_public_key)(Path(spec))


def _old_label(old: OldKey) -> str:
    return old if isinstance(old, str) else old.fingerprint()


def _holds_old(entry: ak.Entry, old: OldKey) -> bool:
    if isinstance(old, str):
        return entry.fingerprint() == old
    return entry.same_key(old)


def _old_key_lines(
    parsed: list[ak.Line], old: OldKey, source: str | None
) -> list[tuple[int, ak.Entry]]:
    """Every (index, entry) holding the old key; refused when a bad line seems to hold it."""
    holders: list[tuple[int, ak.Entry]] = []
    for index, line in enumerate(parsed):
        if line.entry is not None and _holds_old(line.entry, old):
            holders.append((index, line.entry))
        elif line.error is not None and isinstance(old, ak.Entry) and old.blob in line.raw:
            raise ParseError(
                f"the old key stands on a line keyforge cannot parse ({line.error.reason}); "
                "fix that line by hand first",
                lineno=line.lineno,
                source=source,
            )
    return holders


def _the_old_line(parsed: list[ak.Line], old: OldKey, source: str | None) -> tuple[int, ak.Entry]:
    """The line whose options the new key copies; refused when absent or ambiguous."""
    label = source or "authorized_keys"
    holders = _old_key_lines(parsed, old, source)
    if not holders:
        raise KeyforgeError(
            f"the old key {_old_label(old)} is not in {label}, so there is no line to copy the "
            "options from; install the new key with its own options instead"
        )
    if len({entry.options for _, entry in holders}) > 1:
        where = ", ".join(str(index + 1) for index, _ in holders)
        raise KeyforgeError(
            f"the old key {_old_label(old)} stands on lines {where} of {label} with different "
            "options, and keyforge will not guess which ones the new key should get; leave "
            "one line for it, then run install again"
        )
    return holders[0]


def plan_install_like(
    current_text: str | None, new_key: ak.Entry, old: OldKey, *, source: str | None = None
) -> Plan:
    """Put ``new_key`` right after the old key's line, with exactly that line's options.

    The old line stays, so both keys work until the old one is revoked. A new key already in
    the file is handled as ``plan_install`` does: unchanged when its line is already what it
    should be, else replaced where it stands (with a warning for anything that widens it).
    """
    text = current_text or ""
    parsed = ak.parse(text, source=source, strict=False)
    index, old_entry = _the_old_line(parsed, old, source)
    if old_entry.same_key(new_key):
        raise UsageError("the new key is the old key; make a new key pair first")
    entry = ak.Entry(new_key.keytype, new_key.blob, new_key.comment, old_entry.options)
    lines = ak.split_lines(text)
    scan = _scan(parsed, lines, entry, source)
    if scan.matches:
        return plan_install(current_text, entry, source=source)
    line = render_line(entry)
    new_lines = list(lines)
    newline = _newline_style(lines)
    if not new_lines[index].endswith("\n"):
        new_lines[index] += newline
    new_lines.insert(index + 1, line + newline)
    new_text = "".join(new_lines)
    _verify(new_text, new_lines, scan, touched=index + 1, entry=entry, entry_delta=1)
    warnings = [*scan.warnings, *entry_warnings(entry), *ak.parse(line)[0].warnings]
    return Plan("added", current_text, new_text, line, (index + 2,), tuple(warnings))


def install_key_like(
    path: Path, new_key: ak.Entry, old: OldKey, *, dry_run: bool = False
) -> Result:
    """Install ``new_key`` beside the old key in ``path``, with the old line's options."""
    return _apply(
        path,
        lambda text: plan_install_like(text, new_key, old, source=str(path)),
        dry_run=dry_run,
        create_dir=False,
    )


# --- one install request: the four ways to compose the line -----------------------------------
# A plain install names its command; --from-capture takes it from the capture log; --gate locks
# the key to 'keyforge gate' (a named or captured command becomes its --expect); --like copies an
# old line's options. Which options go together is decided here, so the library refuses exactly
# what the command line refuses and can do every install it can. Errors name the options as
# 'keyforge install' spells them.


@dataclass(frozen=True)
class InstallRequest:
    """Everything 'keyforge install' can be asked, one field per option.

    ``key`` is the public key, or the .pub file to read it from (read only once the options
    are known to go together). ``authorized_keys`` None is the caller's own file.
    """

    key: ak.Entry | Path
    authorized_keys: Path | None = None
    from_patterns: Sequence[str] | None = None
    any_source: bool = False
    command: str | None = None
    restrict: bool = True
    dropbear: bool = False
    expiry_time: str | None = None
    environment: Sequence[str] = ()
    from_capture: bool = False
    from_captured_address: bool = False
    allow_any_command: bool = False
    keep_tilde: bool = False
    capture_log: Path | None = None
    record: int | None = None
    like: str | None = None  # OLD: a .pub file or a SHA256:... fingerprint
    gate: Path | None = None
    exact: bool = False
    gate_log: Path | None = None
    gate_program: str | None = None
    allow_unconfined: bool = False


# Each option that shapes the line, as the CLI spells it, and whether a request gives it; the
# order is the order the errors list them in.
_SHAPING: tuple[tuple[str, Callable[[InstallRequest], bool]], ...] = (
    ("--from", lambda r: bool(r.from_patterns)),
    ("--any-source", lambda r: r.any_source),
    ("--command", lambda r: r.command is not None),
    ("--no-restrict", lambda r: not r.restrict),
    ("--dropbear", lambda r: r.dropbear),
    ("--expiry-time", lambda r: r.expiry_time is not None),
    ("--environment", lambda r: bool(r.environment)),
    ("--from-capture", lambda r: r.from_capture),
    ("--from-captured-address", lambda r: r.from_captured_address),
    ("--allow-any-command", lambda r: r.allow_any_command),
    ("--keep-tilde", lambda r: r.keep_tilde),
    ("--capture-log", lambda r: r.capture_log is not None),
    ("--record", lambda r: r.record is not None),
    ("--gate", lambda r: r.gate is not None),
    ("--exact", lambda r: r.exact),
    ("--gate-log", lambda r: r.gate_log is not None),
    ("--gate-program", lambda r: r.gate_program is not None),
    ("--allow-unconfined", lambda r: r.allow_unconfined),
)
_CAPTURE_ONLY = (
    "--from-captured-address",
    "--allow-any-command",
    "--keep-tilde",
    "--capture-log",
    "--record",
)
_GATE_ONLY = ("--exact", "--gate-log", "--gate-program", "--allow-unconfined")


def _given(request: InstallRequest, names: Sequence[str]) -> list[str]:
    return [name for name, given in _SHAPING if name in names and given(request)]


def check_request(request: InstallRequest) -> None:
    """Refuse options that do not go together, before anything is read."""
    if request.like is not None:
        used = _given(request, [name for name, _ in _SHAPING])
        if used:
            raise UsageError(
                f"--like copies the old line's options; {', '.join(used)} cannot be given with it"
            )
        return
    if not request.from_capture:
        used = _given(request, _CAPTURE_ONLY)
        if used:
            raise UsageError(f"{', '.join(used)} only make sense with --from-capture")
    elif request.command is not None:
        raise UsageError("--command and --from-capture contradict each other; give one")
    elif request.from_captured_address and (request.from_patterns or request.any_source):
        raise UsageError("--from-captured-address replaces --from and --any-source; give one")
    if request.gate is None:
        used = _given(request, _GATE_ONLY)
        if used:
            raise UsageError(f"{', '.join(used)} only make sense with --gate")


@dataclass(frozen=True)
class Note:
    """Something the admin should read about an install: a note, or a warning."""

    text: str
    warning: bool = False


@dataclass(frozen=True)
class Installed:
    """What ``perform_install`` did (or, with dry_run, would do), and what it had to say."""

    result: Result
    key: ak.Entry  # the key as it stands on the line
    notes: tuple[Note, ...]


def _required_command(command: str | None) -> str:
    if command is None:
        raise UsageError("--command is required: the one command this key may run")
    return command


def perform_install(
    request: InstallRequest,
    *,
    dry_run: bool = False,
    tell: Callable[[Note], None] | None = None,
) -> Installed:
    """Compose the line ``request`` asks for, check it, and install it (nothing with dry_run).

    Each note is also given to ``tell`` the moment it arises, so a caller printing them shows
    what was learnt (a captured command, say) even when a later step refuses the install.
    """
    notes: list[Note] = []

    def note(item: Note) -> None:
        notes.append(item)
        if tell is not None:
            tell(item)

    check_request(request)
    path = request.authorized_keys or default_authorized_keys()
    if request.like is not None:
        old = parse_old_key(request.like)
        new_key = _request_key(request)
        return Installed(install_key_like(path, new_key, old, dry_run=dry_run), new_key, ())
    if request.from_captured_address:
        patterns = None
    else:
        patterns = source_patterns(request.from_patterns, any_source=request.any_source)
    plain = not request.from_capture and request.gate is None
    forced = _required_command(request.command) if plain else None
    key = _request_key(request)
    if request.from_capture:
        forced, patterns = _from_capture(request, key, path, patterns, note)
    elif forced is not None:
        _warn_forbidden_destinations(forced, path, note)
    if request.gate is not None:
        expect = forced if request.from_capture else request.command
        forced = _gate_command(request, request.gate, path, expect, note)
    entry = locked_entry(
        key,
        from_patterns=patterns,
        command=_required_command(forced),
        restrict=request.restrict,
        dropbear=request.dropbear,
        expiry_time=request.expiry_time,
        environment=request.environment,
    )
    return Installed(install_key(path, entry, dry_run=dry_run), entry, tuple(notes))


def _request_key(request: InstallRequest) -> ak.Entry:
    key = request.key
    return key if isinstance(key, ak.Entry) else read_public_key(key)


def _warn_forbidden_destinations(command: str, path: Path, note: Callable[[Note], None]) -> None:
    """A plain --command: the same destinations --from-capture refuses, said out loud."""
    from keyforge.receiver import capture  # noqa: PLC0415 - capture imports this module

    home = capture.home_for(path)
    for reason in capture.forbidden_destinations(command, home=home, authorized_keys=path):
        note(
            Note(
                f"the command's path {reason}: whoever holds the key could write what sshd or "
                "the login shell reads there (or read the keys kept there) and get a shell; "
                "lock it to a directory of its own",
                warning=True,
            )
        )


def _from_capture(
    request: InstallRequest,
    key: ak.Entry,
    path: Path,
    patterns: list[str] | None,
    note: Callable[[Note], None],
) -> tuple[str, list[str] | None]:
    """--from-capture: the forced command, and the from= patterns to use.

    With --gate the command is kept exactly as captured (the gate's --expect, compared with
    what the client sends), not rewritten for use as command=.
    """
    from keyforge.receiver import capture  # noqa: PLC0415 - capture imports this module

    plan = capture.install_plan_from_capture(
        path,
        key,
        log=request.capture_log,
        allow_any_command=request.allow_any_command,
        keep_tilde=request.keep_tilde,
        record_number=request.record,
    )
    record = plan.record
    raw = request.gate is not None
    note(Note(f"captured at {record.time} from {record.client}: {record.command or ''}"))
    for line in plan.captured.notes:
        if not (raw and line.startswith("rewrote ")):
            note(Note(line))
    if request.from_captured_address:
        patterns = capture.captured_address(plan)
    if raw and record.command is not None:
        return record.command, patterns
    return plan.captured.command, patterns


def _gate_command(
    request: InstallRequest,
    directory: Path,
    path: Path,
    expect: str | None,
    note: Callable[[Note], None],
) -> str:
    """--gate: the forced command running 'keyforge gate', its setup checked first."""
    # capture imports this module; the gate is needed by --gate only
    from keyforge.receiver import capture, gate  # noqa: PLC0415

    config = gate.GateConfig(
        str(directory.absolute()),
        home=str(capture.home_for(path)),
        expect=expect,
        exact=request.exact,
        log=str(request.gate_log.absolute()) if request.gate_log is not None else None,
        rsync=gate.rsync_program(),
    )
    config.confine = gate.rsync_can_confine(config.rsync)
    setup_notes = gate.check_setup(config, allow_unconfined=request.allow_unconfined)
    if not config.confine:
        note(Note(f"the gate will run {gate.UNCONFINED_RISK}", warning=True))
    for line in setup_notes:
        note(Note(line))
    return gate.gate_command(gate.gate_program(request.gate_program), config)
