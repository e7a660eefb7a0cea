"""keyforge check: prove from the sending server that the backup key is locked down.

Each probe logs in with the backup key exactly as the sync does (pinned host key, this key
only) and asks for something the lock must refuse: a command of its own, an interactive shell,
a terminal, a port forward. A locked key answers every one with its forced command, an rsync
server, which greets with its protocol version and stops at the first byte it cannot read, so
no probe ever reaches its file list, let alone --delete. What the probes saw is reported; any
sign that the key can do more than run its command is a failure.

Reading the answers is pure; only ``run_checks`` connects.
"""

from __future__ import annotations

import dataclasses
import secrets
import struct
from collections.abc import Callable, Sequence

from keyforge.config import Config, SyncConfig
from keyforge.errors import CommandError, KeyforgeError
from keyforge.infra import runner
from keyforge.sender import sync
from keyforge.ssh import client

# rsync's protocol numbers in use since 2.6 (29) to today (32), with room for what comes next
_RSYNC_PROTOCOLS = range(20, 60)
_CLOSED_PORT = "127.0.0.1:1"  # a forward there fails at once when forwarding is allowed
NOT_PROBED = (
    "from= (the probes come from the allowed address; try the key from another host)",
    "agent and X11 forwarding (they need a local agent or display to offer)",
)


@dataclasses.dataclass(frozen=True)
class Finding:
    probe: str
    ok: bool
    saw: str


def rsync_greeting(stdout: bytes) -> int | None:
    """The protocol version an rsync server sends first (a little-endian int32), if it is one."""
    if len(stdout) < 4:
        return None
    (version,) = struct.unpack("<i", stdout[:4])
    return version if version in _RSYNC_PROTOCOLS else None


def _shown(data: bytes) -> str:
    text = data[:60].decode("utf-8", errors="replace").replace("\n", "\\n")
    return repr(text) if text else "nothing"


def read_command_probe(probe: str, result: runner.Result, token: str) -> Finding:
    """A command (or a shell fed a command) must get the forced rsync server instead."""
    if token.encode() in result.stdout:
        return Finding(probe, False, f"it ran what was asked: the output holds {token}")
    version = rsync_greeting(result.stdout)
    if version is None:
        return Finding(
            probe,
            False,
            f"no rsync server answered (output {_shown(result.stdout)}, exit "
            f"{result.returncode}); the forced command is not rsync --server",
        )
    return Finding(probe, True, f"refused: the forced rsync server answered (protocol {version})")


def read_pty_probe(result: runner.Result) -> Finding:
    if "PTY allocation request failed" in result.stderr:
        return Finding("terminal", True, "refused: PTY allocation request failed")
    return Finding("terminal", False, "sshd allocated a terminal (no no-pty or restrict)")


def read_forward_probe(result: runner.Result) -> Finding:
    if "administratively prohibited" in result.stderr:
        return Finding("port forwarding", True, "refused: administratively prohibited")
    line = runner.first_error_line(result.stderr, fallback=f"exit {result.returncode}")
    return Finding(
        "port forwarding",
        False,
        f"sshd opened the forwarding channel ({line}); no no-port-forwarding or restrict",
    )


def connection_problem(result: runner.Result) -> str | None:
    """Why the key could not log in at all, when that is what happened."""
    if result.returncode != 255 or result.stdout:
        return None
    verdict = sync.judge(255, result.stderr, SyncConfig())
    if not verdict.retry:
        return verdict.message
    return "ssh could not connect: " + runner.first_error_line(result.stderr, fallback="exit 255")


def probe_argv(
    ssh: Sequence[str], target: sync.RemoteTarget, extra: Sequence[str], command: str | None = None
) -> list[str]:
    return [*ssh, "-l", target.user, *extra, "--", target.host, *([command] if command else [])]


Run = Callable[[Sequence[str], bytes], runner.Result]


def check_target(
    target: sync.RemoteTarget, tools: sync.Tools, timeout: int, run: Run = runner.run_with_input
) -> list[Finding]:
    """Every probe against one target; a CommandError when the key cannot log in at all."""
    ssh = client.ssh_argv(
        tools.ssh, target.port, target.key, target.known_hosts, connect_timeout=timeout
    )
    token = f"keyforge-probe-{secrets.token_hex(8)}"
    command = run(probe_argv(ssh, target, ["-T"], f"echo {token}"), b"")
    problem = connection_problem(command)
    if problem is not None:
        raise CommandError(f"check {target.name}: {problem}")
    shell = run(probe_argv(ssh, target, ["-T"]), f"echo {token}\n".encode())
    pty = run(probe_argv(ssh, target, ["-tt"], "true"), b"")
    forward = run(
        probe_argv(ssh, target, ["-o", "ExitOnForwardFailure=yes", "-W", _CLOSED_PORT]), b""
    )
    return [
        read_command_probe("a command of its own", command, token),
        read_command_probe("an interactive shell", shell, token),
        read_pty_probe(pty),
        read_forward_probe(forward),
    ]


def run_checks(
    config: Config, target_name: str | None, run: Run = runner.run_with_input
) -> dict[str, list[Finding]]:
    """Findings per remote target; local targets have no key to check."""
    targets = [
        t
        for t in sync.select_targets(config.targets, target_name)
        if isinstance(t, sync.RemoteTarget)
    ]
    if not targets:
        raise KeyforgeError("no remote [[targets]] to check (local ones have no key)")
    tools = sync.find_tools()
    findings = {}
    for target in targets:
        sync.check_target(sync.source_dir(config), target)
        findings[target.name] = check_target(
            target, tools, min(config.sync.timeout, client.CONNECT_TIMEOUT), run
        )
    return findings
