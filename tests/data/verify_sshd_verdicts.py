"""Check sshd_line_verdicts.json against a real sshd: run by hand as root, not by pytest.

    sudo python3 tests/data/verify_sshd_verdicts.py [--sshd /usr/sbin/sshd]

Starts a private sshd on 127.0.0.1 (own host key, own config, AuthorizedKeysFile pointing at a
temporary file), then for every case writes "<options> <test key>" as the only authorized_keys
line and logs in as root running "echo kf-ok". A case counts as accepted when the login succeeds
and prints kf-ok (cases with their own command= echo kf-ok too). Prints one line per case and
exits non-zero if any verdict differs from the table. The sshd is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TABLE = Path(__file__).with_name("sshd_line_verdicts.json")
MARK = "kf-ok"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kf-test", "-f", str(path)],
        check=True,
    )


def start_sshd(sshd: str, work: Path, port: int) -> subprocess.Popen[bytes]:
    # sshd refuses to start without its privilege separation directory
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    keygen(work / "host_key")
    config = work / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {work / 'host_key'}\n"
        f"AuthorizedKeysFile {work / 'authorized_keys'}\nStrictModes no\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "PermitRootLogin prohibit-password\nLogLevel DEBUG3\nPidFile none\n"
    )
    log = (work / "sshd.log").open("wb")
    proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stderr=log, stdout=log)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("sshd did not start:\n" + (work / "sshd.log").read_text()[-2000:])


def logs_in(work: Path, port: int) -> bool:
    result = subprocess.run(
        [
            "ssh",
            "-n",
            "-i",
            str(work / "client_key"),
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "LogLevel=ERROR",
            "-p",
            str(port),
            "root@127.0.0.1",
            f"echo {MARK}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return result.returncode == 0 and MARK in result.stdout


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sshd", default="/usr/sbin/sshd")
    parser.add_argument("--table", type=Path, default=TABLE)
    args = parser.parse_args()
    cases = json.loads(args.table.read_text())
    failures = 0
    with tempfile.TemporaryDirectory(prefix="kf-sshd-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o700)
        keygen(work / "client_key")
        key_line = (work / "client_key.pub").read_text().strip()
        port = free_port()
        proc = start_sshd(args.sshd, work, port)
        try:
            for case in cases:
                options = case["options"]
                line = f"{options} {key_line}" if options else key_line
                (work / "authorized_keys").write_text(line + "\n")
                verdict = logs_in(work, port)
                ok = verdict == case["accepted"]
                failures += not ok
                shown = "accepted" if verdict else "refused"
                print(f"{'ok  ' if ok else 'DIFF'} sshd {shown:8} {options!r}")
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        if failures:
            print((work / "sshd.log").read_text()[-4000:], file=sys.stderr)
    print(f"{len(cases) - failures}/{len(cases)} verdicts match sshd")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
