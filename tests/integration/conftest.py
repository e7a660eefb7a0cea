"""The Docker lab: a real OpenSSH sshd (the receiving host) and two clients on a fixed network.

docker/compose.yaml starts three containers on one network (Docker picks its subnet; each
test run is its own Compose project, so runs side by side never meet):

- ``receiver`` (the post's raspberrypi): sshd, rsync, keyforge, user ``foo``;
- ``sender`` (server1): the one address the backup key is allowed from;
- ``intruder``: the same image at another address, holding a stolen copy of the key.

Tests drive them with ``docker exec`` through the ``lab`` fixture. Docker tests carry
``@pytest.mark.docker``; ``pytest -m "not docker"`` runs without Docker. Where Docker is
missing the Docker tests are skipped, except when CI=true or KEYFORGE_REQUIRE_DOCKER=1
(tests/run.sh sets it): there a missing engine or image is a failure, never a skip.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker" / "compose.yaml"
PROJECT = f"keyforge-tests-{os.getpid()}"
IMAGES = ("keyforge/receiver:test", "keyforge/sender:test")

FOO_HOME = "/home/foo"
BACKUP_KEY = f"{FOO_HOME}/.ssh/backups"
ADMIN_KEY = f"{FOO_HOME}/.ssh/admin"
KNOWN_HOSTS = f"{FOO_HOME}/.ssh/known_hosts"
AUTHORIZED_KEYS = f"{FOO_HOME}/.ssh/authorized_keys"

EXEC_TIMEOUT = 60


def docker_is_required() -> bool:
    return os.environ.get("CI", "").lower() == "true" or os.environ.get(
        "KEYFORGE_REQUIRE_DOCKER", ""
    ) in ("1", "true", "yes")


def no_docker(reason: str) -> None:
    """Skip the Docker tests, or fail them where Docker must be there."""
    if docker_is_required():
        pytest.fail(f"Docker is required here (CI or tests/run.sh) but {reason}", pytrace=False)
    pytest.skip(f"{reason}; run 'bash tests/run.sh' to set Docker up")


def compose_argv() -> list[str] | None:
    """``docker compose`` (v2) when present, else Debian's ``docker-compose`` (v1)."""
    if shutil.which("docker"):
        probe = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, check=False, timeout=30
        )
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def ssh_options(known_hosts: str = KNOWN_HOSTS) -> list[str]:
    """Client options for every connection: no prompts, pinned host key, bounded waits."""
    return [
        "-o", "BatchMode=yes",
        "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "ConnectTimeout=10",
        "-o", "ServerAliveInterval=5",
        "-o", "ServerAliveCountMax=3",
        "-o", "IdentitiesOnly=yes",
    ]  # fmt: skip


# --- containers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Host:
    """One container of the lab, driven with ``docker exec``."""

    service: str
    container: str
    address: str

    def run(
        self,
        argv: Sequence[str],
        *,
        user: str = "root",
        input: str | bytes | None = None,
        check: bool = True,
        env: dict[str, str] | None = None,
        timeout: float = EXEC_TIMEOUT,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv in the container; text in and out; raise on failure when check."""
        cmd = ["docker", "exec", "-i", "-u", user]
        for key, value in (env or {}).items():
            cmd += ["-e", f"{key}={value}"]
        cmd += [self.container, *argv]
        data = input.decode() if isinstance(input, bytes) else input
        result = subprocess.run(
            cmd,
            input=data if data is not None else "",
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{self.service}: {shlex.join(argv)} exited {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    def sh(self, script: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        """Run a shell script in the container (the script is test code, never user data)."""
        return self.run(["sh", "-c", script], **kwargs)  # type: ignore[arg-type]

    def popen(self, argv: Sequence[str], *, user: str = "root") -> subprocess.Popen[str]:
        """Start argv in the container and return at once (stdin closed, output captured)."""
        return subprocess.Popen(
            ["docker", "exec", "-u", user, self.container, *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def write_file(self, path: str, data: str, *, user: str = "foo", mode: str = "0600") -> None:
        """Write a file as user, created with mode before any data goes in."""
        self.run(
            ["sh", "-c", 'umask 077 && cat > "$1" && chmod "$2" "$1"', "write", path, mode],
            user=user,
            input=data,
        )

    def read_file(self, path: str, *, user: str = "root") -> str:
        return self.run(["cat", path], user=user).stdout

    def exists(self, path: str) -> bool:
        return self.run(["test", "-e", path], check=False).returncode == 0

    def copy_in(self, local: Path, remote: str) -> None:
        subprocess.run(
            ["docker", "cp", str(local), f"{self.container}:{remote}"], check=True, timeout=60
        )

    def copy_out(self, remote: str, local: Path) -> None:
        subprocess.run(
            ["docker", "cp", f"{self.container}:{remote}", str(local)], check=True, timeout=60
        )

    def logs(self) -> list[str]:
        """The container's output so far (sshd logs to stderr), one line per item."""
        result = subprocess.run(
            ["docker", "logs", self.container],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        return (result.stdout + result.stderr).splitlines()


@dataclass
class SshdLog:
    """sshd's log lines written since a mark; sshd's writes reach Docker a moment later."""

    receiver: Host
    start: int = field(default=0)

    def mark(self) -> None:
        self.start = len(self.receiver.logs())

    def lines(self) -> list[str]:
        return self.receiver.logs()[self.start :]

    def wait_for(self, fragment: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines():
                if fragment in line:
                    return line
            if time.monotonic() > deadline:
                joined = "\n".join(self.lines())
                raise AssertionError(f"sshd never logged {fragment!r}; it logged:\n{joined}")
            time.sleep(0.2)


@dataclass(frozen=True)
class Lab:
    """The three containers and what tests do with them. The constants are here too, so test
    modules need nothing but this fixture."""

    receiver: Host
    sender: Host
    intruder: Host
    ssh_port_on_host: int

    @property
    def RECEIVER_IP(self) -> str:
        return self.receiver.address

    @property
    def SENDER_IP(self) -> str:
        return self.sender.address

    @property
    def INTRUDER_IP(self) -> str:
        return self.intruder.address

    FOO_HOME: ClassVar[str] = FOO_HOME
    BACKUP_KEY: ClassVar[str] = BACKUP_KEY
    ADMIN_KEY: ClassVar[str] = ADMIN_KEY
    AUTHORIZED_KEYS: ClassVar[str] = AUTHORIZED_KEYS
    BACKUP_SOURCE: ClassVar[str] = "/mnt/backups/server1"

    def sshd_log(self) -> SshdLog:
        log = SshdLog(self.receiver)
        log.mark()
        return log

    def ssh(
        self,
        client: Host,
        key: str,
        *args: str,
        input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """``ssh -i key [args] foo@receiver`` run as foo in client; never raises."""
        argv = ["ssh", *ssh_options(), "-i", key, *args]
        return client.run(argv, user="foo", input=input, check=False, env=env)

    def rsh(self, key: str) -> str:
        """The --rsh value for rsync: the post's ssh command plus the lab's client options."""
        return shlex.join(["ssh", "-p", "22", "-i", key, *ssh_options()])

    def write_authorized_keys(self, text: str) -> None:
        """Write foo's authorized_keys directly, bypassing keyforge's checks."""
        self.receiver.write_file(AUTHORIZED_KEYS, text, user="foo", mode="0600")

    def authorized_keys(self) -> str:
        return self.receiver.read_file(AUTHORIZED_KEYS, user="foo")

    def keyforge_install(
        self, public_key: str, *, command: str, extra: Sequence[str] = ()
    ) -> subprocess.CompletedProcess[str]:
        """``keyforge install`` inside the receiver, as foo, locked to the sender's address,
        the key read from stdin."""
        argv = ["keyforge", "install", "--key", "-", "--from", self.SENDER_IP, "--command", command]
        return self.receiver.run([*argv, *extra], user="foo", input=public_key)

    def keyforge_revoke(self, public_key: str) -> subprocess.CompletedProcess[str]:
        return self.receiver.run(["keyforge", "revoke", "--key", "-"], user="foo", input=public_key)

    def sender_config(
        self, *, data: str, backups: str, copy: str, key: str, sync: Sequence[str] = ()
    ) -> str:
        """A keyforge.toml for foo on the sender: back data up into backups (gzip, no archive
        test, no nice, so the lab stays quick), sync it to copy on the receiver with key."""
        return "\n".join(
            [
                "[general]",
                'host = "server1"',
                "[backup]",
                f'sources = ["{data}"]',
                f'directory = "{backups}"',
                "test_archives = false",
                'compression = "gzip"',
                'ionice = "none"',
                "nice = 0",
                "[sync]",
                *sync,
                "[[targets]]",
                'name = "pi"',
                f'host = "{self.RECEIVER_IP}"',
                'user = "foo"',
                f'key = "{key}"',
                f'remote_path = "{copy}/"',
                f'known_hosts = "{KNOWN_HOSTS}"',
                "",
            ]
        )

    def sync_server_command(self, config: str) -> str:
        """The 'rsync --server ...' line keyforge sync will send, as the sender prints it
        (keyforge sync --print-server-command), for the receiver's forced command."""
        printed = self.sender.run(
            ["keyforge", "sync", "--print-server-command", "--config", config], user="foo"
        ).stdout
        return next(line for line in printed.splitlines() if not line.startswith("#"))

    def push_argv(self, key: str, source: str, destination: str = "~/srvbackups/") -> list[str]:
        """The post's nightly push: rsync -az --delete --rsh='ssh -i KEY' SRC foo@host:DEST."""
        return [
            "rsync", "-az", "--delete", f"--rsh={self.rsh(key)}", source,
            f"foo@{self.RECEIVER_IP}:{destination}",
        ]  # fmt: skip

    @staticmethod
    def tree_hashes(host: Host, directory: str) -> dict[str, str]:
        """sha256 of every regular file under directory, by path relative to it."""
        script = 'cd "$1" && find . -type f -print0 | xargs -0 -r sha256sum'
        result = host.run(["sh", "-c", script, "hash", directory])
        hashes = {}
        for line in result.stdout.splitlines():
            digest, _, path = line.partition("  ")
            hashes[path] = digest
        return hashes

    def home_snapshot(self) -> str:
        """Every path under foo's home and /tmp with type, mode, owner, size, mtime and the
        sha256 of each file: equal snapshots mean nothing there was touched."""
        script = (
            "cd / && find /home/foo /tmp -xdev -printf '%p %y %m %u:%g %s %T@ %l\\n' | sort"
            " && find /home/foo /tmp -xdev -type f -print0 | sort -z"
            " | xargs -0 -r sha256sum"
        )
        return self.receiver.run(["sh", "-c", script]).stdout


def sshd_answers(port: int) -> bool:
    """True once the receiver's sshd sends its SSH-2.0 banner on the published port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
            conn.settimeout(2)
            return conn.recv(64).startswith(b"SSH-2.0-")
    except OSError:
        return False


# --- pytest-docker's fixtures, pointed at docker/compose.yaml ---------------------------------


@pytest.fixture(scope="session")
def docker_available() -> None:
    """Docker engine, Compose and the images are there (else skip, or fail in CI)."""
    if shutil.which("docker") is None:
        no_docker("the docker command is not installed")
    info = subprocess.run(["docker", "info"], capture_output=True, check=False, timeout=60)
    if info.returncode != 0:
        no_docker("no Docker engine answers ('docker info' failed)")
    if compose_argv() is None:
        no_docker("neither 'docker compose' nor 'docker-compose' is installed")
    for image in IMAGES:
        found = subprocess.run(
            ["docker", "image", "inspect", image], capture_output=True, check=False, timeout=60
        )
        if found.returncode != 0:
            no_docker(f"the image {image} is missing (bash docker/build.sh builds it)")


@pytest.fixture(scope="session")
def docker_compose_file() -> str:
    return str(COMPOSE_FILE)


@pytest.fixture(scope="session")
def docker_compose_command() -> str:
    return " ".join(compose_argv() or ["docker", "compose"])


@pytest.fixture(scope="session")
def docker_compose_project_name() -> str:
    return PROJECT


@pytest.fixture(scope="session")
def docker_setup() -> list[str]:
    return ["down -v --remove-orphans", "up -d"]


@pytest.fixture(scope="session")
def docker_cleanup() -> list[str]:
    return ["down -v --remove-orphans"]


def started_host(service: str) -> Host:
    """The service's one container and its address on the lab network."""
    argv = [*(compose_argv() or []), "-f", str(COMPOSE_FILE), "-p", PROJECT, "ps", "-q", service]
    result = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60)
    ids = result.stdout.split()
    assert len(ids) == 1, f"expected one {service} container, found {ids}"
    template = "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}"
    inspect = subprocess.run(
        ["docker", "inspect", "--format", template, ids[0]],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    addresses = inspect.stdout.split()
    assert len(addresses) == 1, f"expected one address for {service}, found {addresses}"
    return Host(service, ids[0], addresses[0])


@pytest.fixture(scope="session")
def lab(docker_available: None, docker_services: object) -> Iterator[Lab]:
    """The three running containers, sshd answering, foo's known_hosts pinning the receiver."""
    port = docker_services.port_for("receiver", 22)  # type: ignore[attr-defined]
    docker_services.wait_until_responsive(  # type: ignore[attr-defined]
        check=lambda: sshd_answers(port), timeout=60.0, pause=0.3
    )
    the_lab = Lab(started_host("receiver"), started_host("sender"), started_host("intruder"), port)
    host_key = the_lab.receiver.read_file("/etc/ssh/ssh_host_ed25519_key.pub").split()
    pinned = f"{the_lab.RECEIVER_IP} {host_key[0]} {host_key[1]}\n"
    for client in (the_lab.sender, the_lab.intruder):
        client.write_file(KNOWN_HOSTS, pinned, user="foo", mode="0644")
    yield the_lab


# --- keys and the forced command -----------------------------------------------------------


@dataclass(frozen=True)
class Keys:
    backup_public: str
    admin_public: str


@pytest.fixture(scope="session")
def keys(lab: Lab) -> Keys:
    """The backup key made by ``keyforge pair`` on the sender; a stolen copy on the intruder;
    an ordinary admin key beside it."""
    lab.sender.run(["keyforge", "pair", BACKUP_KEY, "--comment", "foo@server1 backups"], user="foo")
    lab.sender.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "admin", "-f", ADMIN_KEY],
        user="foo",
    )
    stolen = lab.sender.read_file(BACKUP_KEY, user="foo")
    lab.intruder.write_file(BACKUP_KEY, stolen, user="foo", mode="0600")
    return Keys(
        backup_public=lab.sender.read_file(f"{BACKUP_KEY}.pub", user="foo").strip(),
        admin_public=lab.sender.read_file(f"{ADMIN_KEY}.pub", user="foo").strip(),
    )


SAMPLE_BACKUP_SCRIPT = r"""
set -e
mkdir -p /mnt/backups/server1/etc /mnt/backups/server1/home/foo '/mnt/backups/server1/with space'
cd /mnt/backups/server1
head -c 300000 /dev/urandom > home/foo/random.bin
printf 'root:x:0:0:root:/root:/bin/bash\n' > etc/passwd
: > etc/empty
printf 'caf\303\251\n' > 'with space/caf\303\251.txt'
ln -s ../etc/passwd home/foo/link
date +%s > incremental-$(date +%Y%m%d).txt
"""


@pytest.fixture(scope="session")
def backup_source(lab: Lab) -> str:
    """The sender's local backups, as backup-manager leaves them: owned by foo."""
    lab.sender.sh(SAMPLE_BACKUP_SCRIPT)
    lab.sender.run(["chown", "-R", "foo:foo", "/mnt/backups"])
    return Lab.BACKUP_SOURCE


RECORDER = """#!/bin/sh
printf '%s\\n' "$SSH_ORIGINAL_COMMAND" > "$HOME/.ssh/original-command"
"""


@pytest.fixture(scope="session")
def rsync_server_command(lab: Lab, keys: Keys, backup_source: str) -> str:
    """What the sender's push runs on the receiver, learnt as the post does: a forced command
    that records SSH_ORIGINAL_COMMAND, then one push. It depends on rsync's version."""
    lab.receiver.write_file(f"{FOO_HOME}/.ssh/record", RECORDER, user="foo", mode="0755")
    lab.write_authorized_keys(f'command="{FOO_HOME}/.ssh/record" {keys.backup_public}\n')
    lab.sender.run(
        ["rsync", "-az", "--delete", f"--rsh={lab.rsh(BACKUP_KEY)}", backup_source,
         f"foo@{lab.RECEIVER_IP}:~/srvbackups/"],
        user="foo",
        check=False,  # the recorder speaks no rsync protocol
    )  # fmt: skip
    recorded = lab.receiver.read_file(f"{FOO_HOME}/.ssh/original-command").strip()
    lab.receiver.run(["rm", "-f", f"{FOO_HOME}/.ssh/record", f"{FOO_HOME}/.ssh/original-command"])
    assert recorded.startswith("rsync --server "), recorded
    # The forced command names the destination itself, so it needs no shell to expand "~".
    return recorded.replace(" ~/srvbackups/", f" {FOO_HOME}/srvbackups/")


@pytest.fixture
def locked(lab: Lab, keys: Keys, rsync_server_command: str) -> str:
    """foo's authorized_keys as a user would have it: the admin's own key, then the backup key
    locked by ``keyforge install``; foo's home otherwise empty. Returns the file's text."""
    lab.receiver.sh(
        f"find {FOO_HOME} -mindepth 1 -maxdepth 1 ! -name .ssh -exec rm -rf {{}} +"
        f" && find {FOO_HOME}/.ssh -mindepth 1 ! -name authorized_keys -exec rm -rf {{}} +"
    )
    lab.write_authorized_keys(f"{keys.admin_public}\n")
    lab.keyforge_install(keys.backup_public, command=rsync_server_command)
    return lab.authorized_keys()


# --- the fleet: three sending servers and the receiving host ---------------------------------

FLEET_SERVICES = ("sender", "sender2", "sender3")


@dataclass(frozen=True)
class Fleet:
    receiver: Host
    senders: tuple[Host, ...]


@pytest.fixture(scope="session")
def fleet(lab: Lab) -> Fleet:
    """The receiving host and the three sending servers of docker/compose.yaml."""
    return Fleet(lab.receiver, tuple(started_host(service) for service in FLEET_SERVICES))
