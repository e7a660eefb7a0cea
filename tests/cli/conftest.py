"""Shared by the CLI tests: keyforge run as a process that file modes really apply to."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Root reads and writes any file whatever its mode; without these two capabilities it obeys
# the modes like everyone else, yet keeps its uid, so the files need no new owner.
_MODE_BYPASS = "-dac_override,-dac_read_search"

RunKeyforge = Callable[..., "subprocess.CompletedProcess[str]"]


def _bound_by_file_modes() -> list[str]:
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    assert setpriv is not None, "setpriv (util-linux) is needed to drop root's file access"
    return [setpriv, f"--bounding-set={_MODE_BYPASS}", f"--inh-caps={_MODE_BYPASS}"]


@pytest.fixture
def keyforge_bound_by_modes() -> RunKeyforge:
    """Run ``keyforge ARGS`` in a process that cannot read or write past file modes."""

    def run(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "PYTHONPATH": str(ROOT),
            "LC_ALL": "C.UTF-8",
        }
        argv = [*_bound_by_file_modes(), sys.executable, "-m", "keyforge", *args]
        return subprocess.run(argv, env=env, capture_output=True, text=True, check=False)

    return run


# --- a monitor: a real HTTP server on 127.0.0.1 that records what it is sent ----------------


class Recorder(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: list[tuple[str, str, bytes, dict[str, str]]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def paths(self) -> list[str]:
        return [path for _, path, _, _ in self.seen]


class _Handler(BaseHTTPRequestHandler):
    server: Recorder

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        self.server.seen.append((self.command, self.path, body, dict(self.headers)))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    server = Recorder()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def silent_monitor() -> Iterator[str]:
    """A monitor that accepts connections (the kernel's backlog) and never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()
