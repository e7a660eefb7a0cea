"""Audit authorized_keys files: what each key may do, and whether sshd reads the file at all.

The judging is pure (text, stat values and a clock in; findings out); only the ``audit_*``
functions at the end touch the file system.

Severities, from what a stolen private key (or another local user) gains:

* ``critical`` a key with neither ``command=`` nor ``from=``: whoever holds it has a shell
  from anywhere. A ``command=`` that runs the client's request (``$SSH_ORIGINAL_COMMAND`` handed
  to a shell or ``eval``, or run as the command) counts as no ``command=``, and a ``from=`` that
  admits every address (``*``, ``0.0.0.0/0``, ``::/0``...) as no ``from=``, at every level;
* ``high`` a shell from the ``from=`` addresses, or any key's command from anywhere when it also
  has no ``command=``; a DSA or sub-2048-bit RSA key; a file sshd ignores under StrictModes
  (owned by another user, writable by group or others, not a regular file): its keys do not
  work, and with StrictModes off anyone who can write it can add a key;
* ``medium`` the forced command from anywhere (no ``from=``); port forwarding (a tunnel into the
  network behind the host); a 2048-bit RSA key; a line sshd refuses; the same key on several
  lines with different options (a later, looser line may still let it in); a file that
  cannot be read;
* ``low`` agent or X11 forwarding, a terminal, ``~/.ssh/rc``; an expired key; a duplicate line;
  keyforge's gate without ``--confine`` (filter merge files can be read outside its directory);
  a key shared by several users; ``from=`` host names that never match; parser warnings;
* ``info`` facts that change nothing by themselves (a symbolic link, ``environment=``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pwd
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from keyforge.errors import AUDIT_EXIT_CODES, FileError
from keyforge.receiver import explain, gate, install
from keyforge.ssh import authorized_keys as ak

SCHEMA = "keyforge-audit/1"
SEVERITIES = ("info", "low", "medium", "high", "critical")
# keyforge's other exit codes are 1-5 and 75; these leave them all distinguishable
EXIT_CODES = AUDIT_EXIT_CODES  # the one table lives in errors.py

# Every code a finding can carry, with what it means: the JSON schema's vocabulary.
CODES: dict[str, str] = {
    "no-command": "no command=: the key may run any command, including a shell",
    "no-from": "no from=: the key works from any source address",
    "command-runs-request": "command= runs the client's request ($SSH_ORIGINAL_COMMAND) through "
    "a shell, eval or as the command: as if there were no command=",
    "from-admits-all": "from= admits every address (*, 0.0.0.0/0, ::/0...): as if there were no "
    "from=",
    "from-hostname": "from= names hosts, which never match under sshd's default UseDNS no",
    "port-forwarding": "port forwarding is allowed",
    "agent-forwarding": "agent forwarding is allowed",
    "x11-forwarding": "X11 forwarding is allowed",
    "pty": "a terminal (pty) is allowed",
    "user-rc": "~/.ssh/rc runs at login",
    "weak-key": "a DSA key, or an RSA key under 3072 bits",
    "unconfined-gate": "keyforge's gate without --confine: filter merge files escape it",
    "expired": "expiry-time is past: sshd refuses the key",
    "environment": "environment= takes effect only with PermitUserEnvironment",
    "duplicate-key": "the same key stands on an earlier line of the file",
    "shared-key": "the same key is authorized for several users",
    "refused-line": "sshd refuses (ignores) the line",
    "line-warning": "sshd accepts the line, with a caveat",
    "not-regular-file": "the path is not a regular file: sshd ignores it",
    "bad-owner": "owned by someone other than root or the user: StrictModes ignores the file",
    "loose-mode": "writable by group or others: StrictModes ignores the file",
    "symlink": "the file is a symbolic link; its target is what sshd checks",
    "unreadable": "the file cannot be read; nothing in it was checked",
}

Severity = Literal["info", "low", "medium", "high", "critical"]
Status = Literal["checked", "absent", "unreadable"]


@dataclass(frozen=True)
class Finding:
    severity: Severity
    code: str
    message: str
    file: str
    line: int | None = None
    key: explain.KeyFacts | None = None
    user: str | None = None

    def as_json(self) -> dict[str, Any]:
        key = None
        if self.key is not None:
            key = {
                "type": self.key.keytype,
                "bits": self.key.bits,
                "fingerprint": self.key.fingerprint,
                "comment": self.key.comment,
            }
        return {
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
            "file": self.file,
            "line": self.line,
            "user": self.user,
            "key": key,
        }


@dataclass(frozen=True)
class Account:
    """The user sshd checks a file for: ownership must be root or ``uid``; the walk ends at home."""

    name: str
    uid: int
    home: str


@dataclass(frozen=True)
class FileReport:
    path: str
    user: str | None
    status: Status
    keys: int = 0
    findings: tuple[Finding, ...] = ()
    key_ids: tuple[tuple[int, tuple[str, bytes], explain.KeyFacts], ...] = field(
        default=(), repr=False
    )


@dataclass(frozen=True)
class Report:
    files: tuple[FileReport, ...]
    findings: tuple[Finding, ...]

    @property
    def worst(self) -> Severity | None:
        return worst_severity(self.findings)

    @property
    def exit_code(self) -> int:
        worst = self.worst
        return 0 if worst is None else EXIT_CODES[worst]


def worst_severity(findings: Iterable[Finding]) -> Severity | None:
    ranks = [SEVERITIES.index(f.severity) for f in findings]
    return SEVERITIES[max(ranks)] if ranks else None  # type: ignore[return-value]


# --- one key -----------------------------------------------------------------------------------


def _key_strength(facts: explain.KeyFacts) -> tuple[Severity, str] | None:
    plain = facts.plain_type
    if plain == "ssh-dss":
        return "high", (
            f"DSA key ({facts.bits or '?'} bits): weak, and OpenSSH has not accepted DSA by "
            "default since 7.0; replace it with an ed25519 key"
        )
    if plain == "ssh-rsa" and facts.bits is not None and facts.bits < 3072:
        severity: Severity = "high" if facts.bits < 2048 else "medium"
        return severity, (
            f"RSA key of {facts.bits} bits, under 3072; replace it with an ed25519 key "
            "(or RSA of 3072 bits or more)"
        )
    return None


def _access_findings(entry: ak.Entry) -> list[tuple[Severity, str, str]]:
    # A command= that runs the client's own request limits nothing, nor does a from= that
    # admits every address: each is judged exactly as if it were not there.
    commands, patterns = entry.values("command"), ak.from_patterns(entry)
    request = explain.runs_the_request(commands[0]) if commands else None
    everywhere = ak.admits_every_address(patterns) if patterns else None
    has_command = bool(commands) and request is None
    has_from = entry.has("from") and everywhere is None
    found: list[tuple[Severity, str, str]] = []
    if not has_command:
        where = "from anywhere" if not has_from else "from the from= addresses"
        severity: Severity = "critical" if not has_from else "high"
        if request is not None:
            text = f"command= {request}: the key may run any command, including a shell, {where}"
            found.append((severity, "command-runs-request", text))
        else:
            text = f"no command=: the key may run any command, including a shell, {where}"
            found.append((severity, "no-command", text))
    if not has_from:
        severity = "high" if not has_command else "medium"
        if everywhere is not None:
            text = (
                f'from="{",".join(patterns)}" admits {everywhere}: no limit on the source '
                "address, so a stolen copy works anywhere"
            )
            found.append((severity, "from-admits-all", text))
        else:
            text = (
                "no from=: the key works from any source address, so a stolen copy works anywhere"
            )
            found.append((severity, "no-from", text))
    names = install.hostname_patterns(ak.from_patterns(entry))
    if names:
        found.append(
            (
                "low",
                "from-hostname",
                f"from= names hosts ({', '.join(names)}): under sshd's default 'UseDNS no' "
                "they never match; use addresses",
            )
        )
    return found


def _gate_findings(entry: ak.Entry) -> list[tuple[Severity, str, str]]:
    """A gate line without --confine rates one level below a confined one (which adds nothing)."""
    commands = entry.values("command")
    if not commands or not explain.gate_unconfined(commands[0]):
        return []
    return [
        (
            "low",
            "unconfined-gate",
            f"the gate runs {gate.UNCONFINED_RISK}; with rsync 3.5 or later on this host, "
            "run 'keyforge install --gate' again to add --confine",
        )
    ]


def _how_allowed(flag: str, restricted: bool) -> str:
    if restricted:
        return f"'{flag}' re-enables it after restrict"
    return f"neither restrict nor no-{flag}"


def _flag_findings(entry: ak.Entry) -> list[tuple[Severity, str, str]]:
    permissions = ak.effective_permissions(entry)
    found: list[tuple[Severity, str, str]] = []
    restricted = permissions.restricted
    if permissions.allows("port-forwarding"):
        limits = [f"{n}={v}" for n in ("permitopen", "permitlisten") for v in entry.values(n)]
        both = entry.has("permitopen") and entry.has("permitlisten")
        text = f"port forwarding is allowed ({_how_allowed('port-forwarding', restricted)})"
        if limits:
            text += f", limited to {', '.join(limits)}"
        else:
            text += ": a tunnel into any network the host reaches"
        found.append(("low" if both else "medium", "port-forwarding", text))
    for flag, text in (
        ("agent-forwarding", "agent forwarding is allowed"),
        ("x11-forwarding", "X11 forwarding is allowed"),
        ("pty", "a terminal (pty) is allowed"),
        ("user-rc", "~/.ssh/rc runs at each login"),
    ):
        if permissions.allows(flag):
            found.append(("low", flag, f"{text} ({_how_allowed(flag, restricted)})"))
    return found


def _expiry_findings(entry: ak.Entry, now: dt.datetime) -> list[tuple[Severity, str, str]]:
    found: list[tuple[Severity, str, str]] = []
    for value in entry.values("expiry-time"):
        moment = ak.expiry_datetime(value)
        if moment is not None and moment <= now:
            found.append(
                (
                    "low",
                    "expired",
                    f"expiry-time {value} is past: sshd refuses the key; remove the line",
                )
            )
            break
    if entry.has("environment"):
        names = ", ".join(v.partition("=")[0] for v in entry.values("environment"))
        found.append(
            (
                "info",
                "environment",
                f"environment= ({names}) takes effect only with 'PermitUserEnvironment yes'",
            )
        )
    return found


def entry_findings(
    entry: ak.Entry,
    facts: explain.KeyFacts,
    *,
    file: str,
    line: int | None,
    now: dt.datetime,
    user: str | None = None,
) -> list[Finding]:
    """Everything worth saying about one accepted line (``facts``: its key), most severe first."""
    raw: list[tuple[Severity, str, str]] = _access_findings(entry)
    strength = _key_strength(facts)
    if strength is not None:
        raw.append((strength[0], "weak-key", strength[1]))
    raw += _gate_findings(entry)
    raw += _flag_findings(entry)
    raw += _expiry_findings(entry, now)
    return [Finding(sev, code, text, file, line, facts, user) for sev, code, text in raw]


# --- one file's text ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TextAudit:
    keys: int
    findings: tuple[Finding, ...]
    key_ids: tuple[tuple[int, tuple[str, bytes], explain.KeyFacts], ...]


def audit_text(text: str, *, file: str, now: dt.datetime, user: str | None = None) -> TextAudit:
    """Judge every line of one authorized_keys text, in file order."""
    findings: list[Finding] = []
    first_line: dict[tuple[str, bytes], tuple[int, ak.Entry]] = {}
    key_ids: list[tuple[int, tuple[str, bytes], explain.KeyFacts]] = []
    for line in ak.parse(text, source=file, strict=False):
        if line.error is not None:
            findings.append(
                Finding(
                    "medium",
                    "refused-line",
                    f"sshd ignores this line: {line.error.reason}",
                    file,
                    line.lineno,
                    user=user,
                )
            )
        for warning in line.warnings:
            findings.append(Finding("low", "line-warning", warning, file, line.lineno, user=user))
        entry = line.entry
        if entry is None:
            continue
        identity = entry.key_id()
        facts = explain.key_facts(entry)
        key_ids.append((line.lineno, identity, facts))
        earlier = first_line.get(identity)
        if earlier is not None:
            findings.append(_duplicate(earlier, entry, file, line.lineno, facts, user))
        else:
            first_line[identity] = (line.lineno, entry)
        findings += entry_findings(entry, facts, file=file, line=line.lineno, now=now, user=user)
    return TextAudit(len(key_ids), tuple(findings), tuple(key_ids))


def _duplicate(  # noqa: PLR0917 - one line's facts, all needed for the message
    earlier: tuple[int, ak.Entry],
    entry: ak.Entry,
    file: str,
    lineno: int,
    facts: explain.KeyFacts,
    user: str | None,
) -> Finding:
    first, first_entry = earlier
    same = first_entry.options == entry.options
    if not (first_entry.has("from") or first_entry.has("expiry-time")):
        return Finding(
            "low",
            "duplicate-key",
            f"the same key as line {first}, which admits it from anywhere at any time, so sshd "
            "never reaches this line: remove it",
            file,
            lineno,
            facts,
            user,
        )
    text = (
        f"the same key as line {first}; sshd uses the first line whose from= and expiry-time "
        "admit the connection"
    )
    text += (
        ", and this one has the same options: remove it"
        if same
        else (
            ", and this one has other options, which apply whenever the earlier line does not "
            "admit the connection"
        )
    )
    return Finding("low" if same else "medium", "duplicate-key", text, file, lineno, facts, user)


def shared_key_findings(reports: Sequence[FileReport]) -> list[Finding]:
    """The same key authorized for several users: one finding at each of its lines."""
    holders: dict[tuple[str, bytes], list[tuple[FileReport, int, explain.KeyFacts]]] = {}
    for report in reports:
        for lineno, identity, facts in report.key_ids:
            holders.setdefault(identity, []).append((report, lineno, facts))
    findings = []
    for places in holders.values():
        users = sorted({r.user for r, _, _ in places if r.user is not None})
        if len(users) < 2:
            continue
        for report, lineno, facts in places:
            others = ", ".join(u for u in users if u != report.user)
            findings.append(
                Finding(
                    "low",
                    "shared-key",
                    f"the same key is also authorized for {others}: whoever holds it is them all",
                    report.path,
                    lineno,
                    facts,
                    report.user,
                )
            )
    return findings


# --- file modes, as sshd's StrictModes judges them ---------------------------------------------


def stat_problems(
    kind: Literal["file", "directory"], path: str, st_uid: int, st_mode: int, uid: int
) -> list[tuple[str, str]]:
    """(code, message) for each reason sshd's StrictModes ignores the file over this path.

    Ownership must be root or the user; group and others must not be able to write.
    """
    problems = []
    ignored = "sshd (StrictModes) ignores every key in the file"
    if st_uid not in (0, uid):
        problems.append(
            (
                "bad-owner",
                f"{kind} {path} is owned by uid {st_uid}, not root or the user (uid {uid}): "
                f"{ignored}",
            )
        )
    if st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        who = " and ".join(
            w for bit, w in ((stat.S_IWGRP, "group"), (stat.S_IWOTH, "others")) if st_mode & bit
        )
        problems.append(
            (
                "loose-mode",
                f"{kind} {path} is writable by {who} (mode {stat.S_IMODE(st_mode):04o}): "
                f"{ignored}; chmod go-w {path}",
            )
        )
    return problems


StatFn = Callable[[str], os.stat_result]


def path_findings(
    path: str,
    account: Account,
    *,
    lstat: StatFn = os.lstat,
    stat_fn: StatFn = os.stat,
    realpath: Callable[[str], str] = os.path.realpath,
) -> list[Finding]:
    """sshd's walk: the real file, then each directory up to the user's home (or to /)."""
    found: list[Finding] = []

    def add(severity: Severity, code: str, message: str) -> None:
        found.append(Finding(severity, code, message, path, None, None, account.name))

    try:
        if stat.S_ISLNK(lstat(path).st_mode):
            add(
                "info",
                "symlink",
                f"{path} is a symbolic link to {realpath(path)}; sshd checks that file and "
                "its directories",
            )
        real = realpath(path)
        st = stat_fn(real)
    except OSError:
        return found  # a file that vanished or cannot be reached is reported by the read
    if not stat.S_ISREG(st.st_mode):
        add("high", "not-regular-file", f"{real} is not a regular file: sshd ignores it")
        return found
    for code, message in stat_problems("file", real, st.st_uid, st.st_mode, account.uid):
        add("high", code, message)
    # sshd stops at the home only when it resolves; otherwise it walks on up to /
    home = realpath(account.home) if account.home else "/"
    current = real
    while True:
        parent = str(Path(current).parent)
        if parent == current:
            break
        current = parent
        try:
            dir_stat = stat_fn(current)
        except OSError as err:
            add(
                "high",
                "bad-owner",
                f"directory {current} cannot be checked ({err.strerror}): sshd ignores the file",
            )
            break
        for code, message in stat_problems(
            "directory", current, dir_stat.st_uid, dir_stat.st_mode, account.uid
        ):
            add("high", code, message)
        if current in (home, "/"):
            break
    return found


# --- reading files (the edge) ------------------------------------------------------------------


def current_account() -> Account:
    uid = os.getuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    return Account(name, uid, str(Path.home()))


def _passwd_accounts() -> list[Account]:
    return [Account(p.pw_name, p.pw_uid, p.pw_dir) for p in pwd.getpwall()]


def account_for(path: Path, accounts: Sequence[Account] | None = None) -> Account:
    """The user whose home holds ``path`` (the deepest such home), else the current user."""
    real = os.path.realpath(path)
    best: Account | None = None
    for account in accounts if accounts is not None else _passwd_accounts():
        home = os.path.realpath(account.home) if account.home else ""
        if home in ("", "/") or not (real == home or real.startswith(home.rstrip("/") + "/")):
            continue
        if best is None or len(home) > len(os.path.realpath(best.home)):
            best = account
    return best if best is not None else current_account()


def default_paths(home: str) -> list[Path]:
    """sshd's default AuthorizedKeysFile: .ssh/authorized_keys and .ssh/authorized_keys2."""
    ssh = Path(home) / ".ssh"
    return [ssh / "authorized_keys", ssh / "authorized_keys2"]


def _unreadable(name: str, account: Account, err: OSError, modes: Sequence[Finding]) -> FileReport:
    finding = Finding(
        "medium",
        "unreadable",
        f"cannot read {name}: {err.strerror or err}; nothing in it was checked "
        f"(run as root or as {account.name})",
        name,
        None,
        None,
        account.name,
    )
    return FileReport(name, account.name, "unreadable", 0, (*modes, finding))


def audit_file(path: Path, account: Account, *, now: dt.datetime, must_exist: bool) -> FileReport:
    """Read and judge one file; an unreadable file is a finding, a missing one an error if asked."""
    name = str(path)
    try:
        os.lstat(path)
        missing = path.is_symlink() and not path.exists()  # a link to nothing: sshd finds no file
    except (FileNotFoundError, NotADirectoryError):
        missing = True
    except OSError as err:  # a private directory on the way: whether the file exists is unknown
        return _unreadable(name, account, err, ())
    if missing:
        if must_exist:
            raise FileError(f"cannot read {name}: No such file or directory")
        return FileReport(name, account.name, "absent")
    modes = path_findings(name, account)
    if any(f.code == "not-regular-file" for f in modes):
        return FileReport(name, account.name, "unreadable", 0, tuple(modes))
    try:
        text = path.read_bytes().decode("utf-8", errors="surrogateescape")
    except OSError as err:
        return _unreadable(name, account, err, modes)
    judged = audit_text(text, file=name, now=now, user=account.name)
    return FileReport(
        name, account.name, "checked", judged.keys, (*modes, *judged.findings), judged.key_ids
    )


def _targets(paths: Sequence[Path], all_users: bool) -> list[tuple[Path, Account, bool]]:
    targets: list[tuple[Path, Account, bool]] = []
    if paths:
        accounts = _passwd_accounts()
        targets += [(p, account_for(p, accounts), True) for p in paths]
    if all_users:
        for account in _passwd_accounts():
            if account.home and Path(account.home).is_dir():
                targets += [(p, account, False) for p in default_paths(account.home)]
    if not paths and not all_users:
        account = current_account()
        first, second = default_paths(account.home)
        targets.append((first, account, False))
        if os.path.lexists(second):
            targets.append((second, account, False))
    return targets


def run_audit(
    paths: Sequence[Path], *, all_users: bool = False, now: dt.datetime | None = None
) -> Report:
    """Audit the given files, every user's default files, or the current user's."""
    moment = now if now is not None else dt.datetime.now(dt.UTC)
    reports: list[FileReport] = []
    seen: set[tuple[str, str]] = set()
    for path, account, must_exist in _targets(paths, all_users):
        marker = (os.path.realpath(path), account.name)
        if marker in seen:
            continue
        seen.add(marker)
        report = audit_file(path, account, now=moment, must_exist=must_exist)
        if report.status == "absent" and not must_exist and all_users:
            continue  # most accounts have no key file; listing them all would bury the rest
        reports.append(report)
    findings = [f for r in reports for f in r.findings] + shared_key_findings(reports)
    return Report(tuple(reports), tuple(findings))


# --- output ------------------------------------------------------------------------------------


def as_json(report: Report) -> str:
    by_severity = {s: sum(1 for f in report.findings if f.severity == s) for s in SEVERITIES}
    document = {
        "schema": SCHEMA,
        "files": [
            {"path": r.path, "user": r.user, "status": r.status, "keys": r.keys}
            for r in report.files
        ],
        "findings": [f.as_json() for f in report.findings],
        "summary": {
            "files": len(report.files),
            "keys": sum(r.keys for r in report.files),
            "findings": len(report.findings),
            "by_severity": by_severity,
            "worst": report.worst,
            "exit_code": report.exit_code,
        },
    }
    return json.dumps(document, indent=2)


def _file_heading(file: FileReport) -> str:
    owner = f" (user {file.user})" if file.user else ""
    if file.status == "absent":
        return f"{file.path}{owner}: absent, so no key logs in through it"
    count = f"{file.keys} key{'s' if file.keys != 1 else ''}"
    return f"{file.path}{owner}: {count}"


def human_lines(report: Report) -> list[str]:
    """Grouped by file, then line; one line per finding; a clean file says so."""
    out: list[str] = []
    if not report.files:
        out.append("no authorized_keys file found")
    for file in report.files:
        mine = [f for f in report.findings if f.file == file.path and f.user == file.user]
        out.append(_file_heading(file))
        if file.status == "checked" and not [f for f in mine if f.severity != "info"]:
            out.append("  clean: nothing above info")
        by_line: dict[int | None, list[Finding]] = {}
        for finding in mine:
            by_line.setdefault(finding.line, []).append(finding)
        for lineno in sorted(by_line, key=lambda n: -1 if n is None else n):
            group = by_line[lineno]
            key = next((f.key for f in group if f.key is not None), None)
            where = "file" if lineno is None else f"line {lineno}"
            out.append(f"  {where}" + (f": {key.label()}" if key is not None else ""))
            for finding in sorted(group, key=lambda f: -SEVERITIES.index(f.severity)):
                out.append(f"    {finding.severity:<8} {finding.code}: {finding.message}")
    out.append(_summary_line(report))
    return out


def _summary_line(report: Report) -> str:
    counts = [
        f"{n} {s}"
        for s in reversed(SEVERITIES)
        if (n := sum(1 for f in report.findings if f.severity == s))
    ]
    keys = sum(r.keys for r in report.files)
    found = ", ".join(counts) if counts else "no findings"
    return f"{len(report.files)} file(s), {keys} key(s): {found} (exit {report.exit_code})"
