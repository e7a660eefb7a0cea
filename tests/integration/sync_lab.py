"""A sending server and a receiving host on one machine: a private sshd with a locked key.

``locked_receiver`` starts keyforge's private sshd on 127.0.0.1, makes a backup key, captures
the exact ``rsync --server`` line keyforge sync sends and installs the key locked to it (from=,
command=, restrict). Sync tests, the check tests and the benchmark share it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from keyforge.config import Config, parse
from keyforge.lab import sshd
from keyforge.receiver import install
from keyforge.sender import capture_local, sync
from keyforge.ssh import authorized_keys, keys


@dataclasses.dataclass(frozen=True)
class Lab:
    root: Path
    source: Path
    copy: Path
    key: Path
    log: Path
    server: sshd.PrivateSshd
    forced_command: str

    def config(self, **sync_values: object) -> Config:
        return parse(
            {
                "general": {"host": "server1"},
                "backup": {"directory": str(self.source)},
                "sync": {"log": str(self.log), "retry_delay": 0, **sync_values},
                "targets": [
                    {
                        "name": "offsite",
                        "host": sshd.LOOPBACK,
                        "port": self.server.port,
                        "user": self.server.user,
                        "key": str(self.key),
                        "remote_path": f"{self.copy}/",
                        "known_hosts": str(self.server.known_hosts),
                    }
                ],
            }
        )

    def write_config(self, **sync_values: object) -> Path:
        """The same settings as a keyforge.toml, for runs through the command line."""
        config = self.config(**sync_values)
        target = config.targets[0]
        lines = [
            "[general]",
            'host = "server1"',
            "[backup]",
            f"directory = {json.dumps(str(self.source))}",
            "[sync]",
            *(f"{k} = {json.dumps(v)}" for k, v in {"log": str(self.log), **sync_values}.items()),
            "[[targets]]",
            *(
                f"{k} = {json.dumps(getattr(target, k))}"
                for k in ("name", "host", "port", "user", "key", "remote_path", "known_hosts")
            ),
        ]
        path = self.root / "keyforge.toml"
        path.write_text("\n".join(lines) + "\n")
        return path


def make_backup_dir(source: Path, files: int = 20, size: int = 4096) -> None:
    """A directory holding what keyforge backup leaves: archives and a manifest."""
    source.mkdir(parents=True, exist_ok=True)
    archives = []
    for i in range(files):
        name = f"server1-etc.2026010{i % 9 + 1}-{i:06d}.master.tar.zst"
        data = os.urandom(size)
        (source / name).write_bytes(data)
        archives.append({"name": name, "source": "/etc", "size": size})
    (source / "server1.20260101.manifest.json").write_text(
        json.dumps({"format": 1, "host": "server1", "archives": archives})
    )


def tree(directory: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file, leaving out what sync never sends."""
    result = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and path.name != ".keyforge.lock":
            result[str(path.relative_to(directory))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return result


def run_keyforge(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m keyforge ARGS`` in its own process, as cron would run it; text output."""
    return subprocess.run(
        [sys.executable, "-m", "keyforge", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def locked_key_line(public: str, command: str) -> str:
    entry = install.locked_entry(
        install.public_key_from_text(public, source="backups.pub"),
        from_patterns=[sshd.LOOPBACK],
        command=command,
    )
    return authorized_keys.render(entry)


@contextlib.contextmanager
def locked_receiver(root: Path, *, max_delete: int | None = None) -> Iterator[Lab]:
    """Start the lab; the key may run the captured rsync server command and nothing else."""
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)
    server_dir = root / "sshd"
    server_dir.mkdir(mode=0o700)
    source = root / "backups"
    make_backup_dir(source)
    copy = root / "copy"
    key = root / "backups-key"
    pair = keys.generate("ed25519", comment="keyforge-test")
    key.write_bytes(pair.private_pem)
    key.chmod(0o600)
    with sshd.private_sshd(server_dir) as server:
        lab = Lab(root, source, copy, key, root / "sync.log", server, "")
        settings = {} if max_delete is None else {"max_delete": max_delete}
        config = lab.config(**settings)
        [target] = sync.select_targets(config.targets, None)
        argv = sync.rsync_argv(sync.find_tools(), source, target, config.sync)
        forced = capture_local.capture_local(argv).command
        server.authorized_keys.write_text(locked_key_line(pair.public_line, forced) + "\n")
        server.authorized_keys.chmod(0o600)
        yield dataclasses.replace(lab, forced_command=forced)
