"""Real database servers for the dump tests: PostgreSQL and MariaDB from Debian's packages,
each started on a private socket in a fresh temporary directory, and stopped afterwards.

Nothing is mocked: the tests write real rows, keyforge dumps them with the real pg_dump and
mariadb-dump, and the dumps are loaded back with pg_restore and mariadb. Where a server's
binaries are missing the tests are skipped, except when CI=true or KEYFORGE_REQUIRE_DOCKER=1
(tests/run.sh sets it and installs the packages): there a missing server is a failure.

Both servers refuse to run as root (PostgreSQL's initdb outright), so as root they run as the
package's own account (postgres, mysql); the temporary directory is 0755 so they can reach it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import docker_is_required

START_TIMEOUT = 60


def missing(reason: str) -> None:
    """Skip, or fail where the servers must be there (CI, tests/run.sh)."""
    if docker_is_required():
        pytest.fail(f"database servers are required here but {reason}", pytrace=False)
    pytest.skip(f"{reason}; run 'bash tests/run.sh' to install them")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_user(preferred: str) -> str:
    """Who runs a server: the package's account as root, else whoever runs the tests."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.getuid()).pw_name
    try:
        pwd.getpwnam(preferred)
    except KeyError:
        missing(f"there is no {preferred} account to run the server as")
    return preferred


def _as(user: str, argv: Sequence[str]) -> list[str]:
    if os.geteuid() != 0:
        return list(argv)
    return ["runuser", "-u", user, "--", *argv]


@contextlib.contextmanager
def _shared_tmp(prefix: str, owner: str) -> Iterator[Path]:
    """A fresh directory the server's account can reach and own (pytest's tmp is root-only)."""
    top = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        top.chmod(0o755)
        data = top / "data"
        data.mkdir()
        entry = pwd.getpwnam(owner)
        os.chown(data, entry.pw_uid, entry.pw_gid)
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _wait_for(probe: Sequence[str], what: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited at start: {_tail(log)}")
        if subprocess.run(probe, capture_output=True, check=False).returncode == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} did not start: {_tail(log)}")


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-2000:]
    except OSError as err:
        return f"(no log: {err})"


# --- PostgreSQL ------------------------------------------------------------------------------


def postgresql_bin() -> Path | None:
    """The newest installed PostgreSQL's binaries (Debian keeps each major version apart)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"),
        key=lambda p: int(Path(p).parts[4]) if Path(p).parts[4].isdigit() else 0,
    )
    return Path(found[-1]).parent if found else None


@dataclass(frozen=True)
class Postgres:
    bin: Path
    user: str  # the system account running the server, also its superuser role
    socket_dir: Path
    port: int

    def client(self, program: str, *args: str) -> list[str]:
        argv = [str(self.bin / program), f"--host={self.socket_dir}", f"--port={self.port}"]
        return _as(self.user, [*argv, f"--username={self.user}", *args])

    def psql(self, sql: str, database: str = "postgres") -> str:
        argv = self.client("psql", "--no-psqlrc", "-At", "-v", "ON_ERROR_STOP=1", "-d", database)
        done = subprocess.run(
            [*argv, "-c", sql], capture_output=True, text=True, check=False, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def dump_entry(self, name: str, databases: Sequence[str]) -> dict[str, object]:
        """The [[dumps]] table keyforge needs for this server."""
        return {
            "name": name,
            "kind": "postgresql",
            "databases": list(databases),
            "user": self.user,
            "host": str(self.socket_dir),
            "port": self.port,
        }


@contextlib.contextmanager
def postgres_server() -> Iterator[Postgres]:
    binaries = postgresql_bin()
    if binaries is None or shutil.which("pg_dump") is None:
        missing("PostgreSQL (package postgresql) is not installed")
        raise AssertionError("unreachable")
    user = _server_user("postgres")
    with _shared_tmp("keyforge-pg-", user) as top:
        data, log = top / "data", top / "data" / "server.log"
        initdb = _as(
            user,
            [str(binaries / "initdb"), "-D", str(data), "-U", user, "--auth=peer", "-E", "UTF8"],
        )
        made = subprocess.run(initdb, capture_output=True, text=True, check=False, timeout=120)
        assert made.returncode == 0, made.stderr
        port = free_port()
        server = _as(
            user,
            [
                str(binaries / "postgres"),
                "-D",
                str(data),
                "-k",
                str(data),  # the socket beside the data, in the private directory
                "-p",
                str(port),
                "-c",
                "listen_addresses=",
                "-c",
                "fsync=off",  # test data: speed over crash safety
            ],
        )
        with log.open("wb") as out:
            proc = subprocess.Popen(server, stdout=out, stderr=subprocess.STDOUT)
        pg = Postgres(binaries, user, data, port)
        try:
            ready = [str(binaries / "pg_isready"), "-h", str(data), "-p", str(port)]
            _wait_for(ready, "postgres", proc, log)
            yield pg
        finally:
            proc.terminate()  # SIGTERM: PostgreSQL's smart shutdown
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# --- MariaDB ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MariaDB:
    socket: Path

    def client(self, *args: str) -> list[str]:
        return ["mariadb", "--no-defaults", f"--socket={self.socket}", "--user=root", *args]

    def sql(self, statements: str, *, database: str | None = None) -> str:
        argv = self.client("--batch", "--skip-column-names", *([database] if database else []))
        done = subprocess.run(
            argv, input=statements, capture_output=True, text=True, check=False, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def dump_entry(self, name: str, databases: Sequence[str]) -> dict[str, object]:
        return {
            "name": name,
            "kind": "mariadb",
            "databases": list(databases),
            "user": "root",
            "socket": str(self.socket),
        }


@contextlib.contextmanager
def mariadb_server() -> Iterator[MariaDB]:
    install = shutil.which("mariadb-install-db")
    server = shutil.which("mariadbd") or (
        "/usr/sbin/mariadbd" if Path("/usr/sbin/mariadbd").exists() else None
    )
    if install is None or server is None or shutil.which("mariadb-dump") is None:
        missing("MariaDB (packages mariadb-server, mariadb-client) is not installed")
        raise AssertionError("unreachable")
    user = _server_user("mysql")
    with _shared_tmp("keyforge-maria-", user) as top:
        data, sock, log = top / "data", top / "data" / "mariadb.sock", top / "data" / "server.log"
        common = ["--no-defaults", f"--datadir={data}", f"--user={user}"]
        made = subprocess.run(
            [install, *common, "--auth-root-authentication-method=socket", "--skip-test-db"],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        assert made.returncode == 0, made.stdout + made.stderr
        argv = [
            server,
            *common,
            f"--socket={sock}",
            "--skip-networking",
            f"--pid-file={data / 'mariadb.pid'}",
            f"--log-error={log}",
            "--innodb-flush-log-at-trx-commit=0",
        ]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        db = MariaDB(sock)
        try:
            _wait_for(db.client("-e", "SELECT 1"), "mariadbd", proc, log)
            yield db
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
