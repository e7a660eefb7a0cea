"""The left-to-right reading of flags that explain and audit rely on, checked against real sshd."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from keyforge.lab import sshd
from keyforge.receiver import audit, explain
from keyforge.ssh import authorized_keys as ak

pytestmark = pytest.mark.slow


def make_client_key(directory: Path) -> Path:
    key = directory / "client"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "client", "-f", str(key)],
        check=True,
    )
    return key


def ask_for_a_terminal(server: sshd.PrivateSshd, key: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", *server.ssh_options(), "-tt", "-i", str(key), f"{server.user}@127.0.0.1", "tty"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(("options", "pty"), [("restrict,pty", True), ("pty,restrict", False)])
def test_sshd_gives_a_terminal_exactly_when_explain_and_audit_say_so(
    tmp_path: Path, options: str, pty: bool
) -> None:
    key = make_client_key(tmp_path)
    line = f"{options} {Path(f'{key}.pub').read_text().strip()}"
    entry = ak.parse_line(line)
    assert entry is not None
    assert explain.effective_permissions(entry).allows("pty") is pty
    judged = audit.audit_text(line, file="f", now=audit.dt.datetime.now(audit.dt.UTC))
    assert ("pty" in {f.code for f in judged.findings}) is pty
    with sshd.private_sshd(tmp_path) as server:
        server.authorized_keys.write_text(line + "\n")
        result = ask_for_a_terminal(server, key)
    assert result.stdout.startswith("/dev/pts/") is pty, result
    assert ("PTY allocation request failed" in result.stderr) is (not pty), result


def test_sshd_with_strictmodes_ignores_a_file_audit_reports_for_loose_modes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The private sshd keeps its files under the temporary directory, which everyone may write
    # to: with StrictModes on, sshd must ignore them, and audit must say so before anyone tries.
    render = sshd.render_config
    monkeypatch.setattr(
        sshd,
        "render_config",
        lambda **values: render(**values).replace("StrictModes no", "StrictModes yes"),
    )
    key = make_client_key(tmp_path)
    account = audit.current_account()
    with sshd.private_sshd(tmp_path) as server:
        server.authorized_keys.write_text(Path(f"{key}.pub").read_text())
        server.authorized_keys.chmod(0o600)
        findings = audit.path_findings(str(server.authorized_keys), account)
        result = subprocess.run(
            ["ssh", *server.ssh_options(), "-i", str(key), f"{server.user}@127.0.0.1", "true"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        log = server.log.read_text()
    assert result.returncode == 255, result
    loose = [f for f in findings if f.code == "loose-mode"]
    assert loose, findings
    directory = loose[0].message.split(" ")[1]
    assert f"bad ownership or modes for directory {directory}" in log
