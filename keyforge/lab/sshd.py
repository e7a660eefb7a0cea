"""A private sshd on 127.0.0.1, in a directory of its own, for the demo and the tests.

``private_sshd(directory)`` makes an ed25519 host key, writes an sshd_config that points every
file into ``directory``, checks it with ``sshd -t``, starts ``sshd -D -e`` on a free port and
waits until it sends its banner. It also writes a ``known_hosts`` file pinning the host key, so
clients connect with ``StrictHostKeyChecking=yes`` and never trust on first use. Leaving the
block (normally, on an exception or on Ctrl-C) stops the server and its session processes; no
process is left behind.

Nothing outside ``directory`` is touched, with one exception: sshd started as root insists on
its privilege separation directory (/run/sshd), which the openssh-server package normally
creates. When it is missing it is created (empty, root's, 0755, as the package makes it) and
left in place: removing it could break a system sshd started in the meantime.

Run as root the server lets root log in (with a key only); run as another user it runs as that
user and only that user can log in.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pwd
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from keyforge.errors import CommandError, SshdError, UsageError
from keyforge.infra import fsutil, runner, tools
from keyforge.infra.templating import render
from keyforge.ssh import keys
from keyforge.ssh.client import is_login_name, pinned_client_options

LOOPBACK = "127.0.0.1"
PRIVSEP_DIR = Path("/run/sshd")
HOST_KEY_NAME = "ssh_host_ed25519_key"
CONFIG_NAME = "sshd_config"
PID_NAME = "sshd.pid"
LOG_NAME = "sshd.log"
KNOWN_HOSTS_NAME = "known_hosts"
AUTHORIZED_KEYS_NAME = "authorized_keys"
START_ATTEMPTS = 3
STOP_TIMEOUT = 5.0
CONNECT_TIMEOUT = 10  # seconds; the server is on this machine

# sshd_config splits on whitespace, and AuthorizedKeysFile expands % and ~: paths written into it
# keep to characters that mean nothing to either
_CONFIG_SAFE = re.compile(r"^/[A-Za-z0-9._/+@,=:-]*\Z")
_VERSION = re.compile(r"OpenSSH_(\d+)\.(\d+)")
# OpenSSH 9.8 penalises a source address that connects without logging in; the banner probe
# does exactly that, and every client here comes from 127.0.0.1
_PENALTIES_SINCE = (9, 8)


@dataclasses.dataclass(frozen=True)
class PrivateSshd:
    """A running private sshd and the files a client needs to reach it."""

    directory: Path
    port: int
    pid: int
    user: str
    sshd: str
    config: Path
    log: Path
    pid_file: Path
    authorized_keys: Path
    known_hosts: Path
    host_key_line: str  # "ssh-ed25519 AAAA..." as pinned in known_hosts
    created_privsep_dir: bool = False  # /run/sshd was missing and has been created

    @property
    def host(self) -> str:
        return LOOPBACK

    def ssh_options(self) -> list[str]:
        """Client options: this host key only, no prompts, no user or system ssh_config."""
        return [
            "-F",
            "/dev/null",
            "-p",
            str(self.port),
            *pinned_client_options(self.known_hosts, connect_timeout=CONNECT_TIMEOUT),
        ]


# --- pure parts ------------------------------------------------------------------------------


def config_path_value(path: Path, what: str) -> str:
    """``path`` as an sshd_config value, or a UsageError when sshd would read it differently."""
    text = str(path)
    if not _CONFIG_SAFE.match(text):
        raise UsageError(
            f"the {what} path {text!r} cannot go into an sshd_config as it is (only letters, "
            "digits and ._/+@,=:- are safe there); set TMPDIR to a plain directory such as /tmp"
        )
    return text


def render_config(
    *,
    port: int,
    host_key: Path,
    pid_file: Path,
    authorized_keys: Path,
    user: str,
    extra_lines: Sequence[str] = (),
) -> str:
    """The private sshd's configuration (pure)."""
    if not is_login_name(user):
        raise UsageError(f"cannot run a private sshd for the user name {user!r}")
    if not 0 < port < 65536:
        raise UsageError(f"not a TCP port: {port}")
    return render(
        "sshd_config.j2",
        port=port,
        host_key=config_path_value(host_key, "host key"),
        pid_file=config_path_value(pid_file, "pid file"),
        authorized_keys=config_path_value(authorized_keys, "authorized_keys"),
        user=user,
        extra_lines=list(extra_lines),
    )


def known_hosts_line(port: int, host_key_line: str) -> str:
    """The known_hosts line pinning the host key for 127.0.0.1 on ``port``."""
    keytype, blob = host_key_line.split()[:2]
    return f"[{LOOPBACK}]:{port} {keytype} {blob}\n"


def parse_version(text: str) -> tuple[int, int] | None:
    """(major, minor) from the first ``OpenSSH_X.Y`` in ``text``."""
    match = _VERSION.search(text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def extra_config_lines(version: tuple[int, int] | None) -> list[str]:
    """Lines only some sshd versions know: sshd -t refuses an option it does not know."""
    if version is not None and version >= _PENALTIES_SINCE:
        return ["PerSourcePenalties no"]
    return []


def log_tail(text: str, lines: int = 8) -> str:
    kept = [line for line in text.splitlines() if line.strip()][-lines:]
    return "; ".join(kept) if kept else "(sshd wrote nothing)"


# --- finding things --------------------------------------------------------------------------


def find_sshd() -> str:
    """sshd's absolute path: on PATH, else in the sbin directories root's PATH may lack."""
    found = tools.find_program("sshd")
    if found is None:
        raise CommandError(
            "sshd not found (looked on PATH and in /usr/sbin); install the openssh-server package"
        )
    return found


def sshd_version(sshd: str) -> tuple[int, int] | None:
    # -V is new in 9.x; older versions print their version in the usage text instead
    result = runner.run([sshd, "-V"], check=False, timeout=10)
    return parse_version(result.stdout.decode(errors="replace") + result.stderr)


def current_user() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


# --- processes -------------------------------------------------------------------------------


def _parent_pids() -> dict[int, int]:
    """pid -> parent pid of every process (Linux /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None and len(fields) > 1:
            parents[int(entry.name)] = int(fields[1])
    return parents


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``: sshd's per-connection children run in their own sessions."""
    children: dict[int, list[int]] = {}
    for child, parent in _parent_pids().items():
        children.setdefault(parent, []).append(child)
    found: list[int] = []
    queue = list(children.get(pid, []))
    while queue:
        current = queue.pop()
        found.append(current)
        queue.extend(children.get(current, []))
    return found


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name (which may hold spaces): state is field 0."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def is_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie waiting to be reaped."""
    fields = _stat_fields(pid)
    return fields is not None and fields[:1] != ["Z"]


def _start_time(pid: int) -> str | None:
    fields = _stat_fields(pid)
    return fields[19] if fields is not None and len(fields) > 19 else None


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


class _Processes:
    """Processes named by pid and start time, so a pid reused later is never signalled."""

    def __init__(self, pids: list[int]) -> None:
        self.started = {pid: _start_time(pid) for pid in pids}

    def alive(self) -> list[int]:
        return [
            pid for pid, at in self.started.items() if is_running(pid) and _start_time(pid) == at
        ]

    def terminate(self) -> None:
        for pid in self.alive():
            _signal(pid, signal.SIGTERM)

    def wait_or_kill(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                for pid in self.alive():
                    _signal(pid, signal.SIGKILL)
                return
            time.sleep(0.02)


def stop_process_tree(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """Stop the listener and every session process under it; wait until all are gone."""
    children = _Processes(descendants(proc.pid) if proc.poll() is None else [])
    proc.terminate()
    children.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    children.wait_or_kill(timeout)


def processes_mentioning(text: str) -> list[int]:
    """Live processes (zombies excluded), other than this one, whose command line holds ``text``."""
    found: list[int] = []
    needle = os.fsencode(text)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline and is_running(int(entry.name)):
            found.append(int(entry.name))
    return found


def stop_stragglers(text: str, timeout: float = STOP_TIMEOUT) -> list[int]:
    """Stop processes whose command line holds ``text`` (a unique temporary directory).

    A session process whose per-connection sshd has already exited is reparented to init, so
    it is no longer below the listener that ``stop_process_tree`` walks: a forced rsync that has
    not yet noticed its client is gone, say. Naming the directory finds it all the same.
    """
    found = processes_mentioning(text)
    stragglers = _Processes(found)
    stragglers.terminate()
    stragglers.wait_or_kill(timeout)
    return found


def read_banner(port: int, timeout: float = 1.0) -> str | None:
    """The server's identification line, or None when nothing answers yet."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as conn:
            conn.settimeout(timeout)
            data = conn.recv(256)
    except OSError:
        return None
    line = data.split(b"\r\n", 1)[0].decode("ascii", errors="replace")
    return line if line.startswith("SSH-") else None


# --- the context manager ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Files:
    config: Path
    host_key: Path
    pid_file: Path
    log: Path
    known_hosts: Path
    authorized_keys: Path


def _write_host_key(host_key: Path) -> str:
    pair = keys.generate("ed25519", comment="keyforge private sshd")
    keys.write_pair(host_key, pair, force=True)
    return pair.public_line


def check_config(sshd: str, config: Path) -> None:
    """``sshd -t``: an SshdError quoting sshd's own complaint when the config is refused."""
    result = runner.run([sshd, "-t", "-f", str(config)], check=False, timeout=30)
    if result.returncode != 0:
        why = log_tail(result.stderr, lines=4)
        raise SshdError(f"sshd -t refused {config}: {why}")


def _ensure_privsep_dir() -> bool:
    """Create /run/sshd when root's sshd needs it; True when this run created it."""
    if os.geteuid() != 0 or PRIVSEP_DIR.is_dir():
        return False
    try:
        PRIVSEP_DIR.mkdir(mode=0o755)
    except FileExistsError:
        return False
    except OSError as err:
        raise SshdError(
            f"cannot create sshd's privilege separation directory {PRIVSEP_DIR}: {err}"
        ) from err
    return True


def _start(
    sshd: str, files: _Files, port: int, *, timeout: float
) -> tuple[subprocess.Popen[bytes], str]:
    """Start sshd and wait for its banner; the Popen and the banner, or an SshdError."""
    with files.log.open("ab") as log:
        proc = runner.spawn(
            [sshd, "-D", "-e", "-f", str(files.config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            # its own session: Ctrl-C reaches keyforge, which then stops sshd in order
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise SshdError(
                    f"sshd exited with status {proc.returncode} at start: "
                    f"{log_tail(files.log.read_text(errors='replace'))}"
                )
            banner = read_banner(port)
            if banner is not None:
                return proc, banner
            if time.monotonic() > deadline:
                raise SshdError(
                    f"sshd did not answer on {LOOPBACK}:{port} within {timeout:g} s: "
                    f"{log_tail(files.log.read_text(errors='replace'))}"
                )
            time.sleep(0.05)
    except BaseException:
        stop_process_tree(proc)
        raise


def _address_in_use(log: Path) -> bool:
    text = log.read_text(errors="replace")
    return "Address already in use" in text or "Cannot bind any address" in text


@contextlib.contextmanager
def private_sshd(
    directory: Path,
    *,
    authorized_keys: Path | None = None,
    sshd: str | None = None,
    timeout: float = 10.0,
) -> Iterator[PrivateSshd]:
    """Run a private sshd for the duration of the block (see the module's docstring).

    ``directory`` must exist and should be 0700; ``authorized_keys`` defaults to
    ``directory/authorized_keys`` and need not exist yet.
    """
    program = sshd or find_sshd()
    user = current_user()
    files = _Files(
        config=directory / CONFIG_NAME,
        host_key=directory / HOST_KEY_NAME,
        pid_file=directory / PID_NAME,
        log=directory / LOG_NAME,
        known_hosts=directory / KNOWN_HOSTS_NAME,
        authorized_keys=authorized_keys or directory / AUTHORIZED_KEYS_NAME,
    )
    # refuse a path sshd_config cannot hold before anything is written or started
    for path, what in (
        (files.host_key, "host key"),
        (files.pid_file, "pid file"),
        (files.authorized_keys, "authorized_keys"),
    ):
        config_path_value(path, what)
    host_key_line = _write_host_key(files.host_key)
    extra = extra_config_lines(sshd_version(program))
    made_privsep = _ensure_privsep_dir()
    proc: subprocess.Popen[bytes] | None = None
    port = 0
    for attempt in range(1, START_ATTEMPTS + 1):
        port = free_port()
        text = render_config(
            port=port,
            host_key=files.host_key,
            pid_file=files.pid_file,
            authorized_keys=files.authorized_keys,
            user=user,
            extra_lines=extra,
        )
        fsutil.atomic_write(files.config, text.encode(), mode=fsutil.PRIVATE_FILE)
        check_config(program, files.config)
        files.log.write_bytes(b"")
        try:
            proc, _ = _start(program, files, port, timeout=timeout)
            break
        except SshdError:
            # another program took the free port between the probe and sshd's bind
            if attempt == START_ATTEMPTS or not _address_in_use(files.log):
                raise
    assert proc is not None
    try:
        fsutil.atomic_write(
            files.known_hosts, known_hosts_line(port, host_key_line).encode(), mode=0o644
        )
        yield PrivateSshd(
            directory=directory,
            port=port,
            pid=proc.pid,
            user=user,
            sshd=program,
            config=files.config,
            log=files.log,
            pid_file=files.pid_file,
            authorized_keys=files.authorized_keys,
            known_hosts=files.known_hosts,
            host_key_line=host_key_line,
            created_privsep_dir=made_privsep,
        )
    finally:
        stop_process_tree(proc)
