"""keyforge rotate end to end over a real sshd on 127.0.0.1 (no Docker), with syncs running
in a loop the whole time: every one of them must succeed."""

from __future__ import annotations

import dataclasses
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sync_lab import Lab, locked_receiver, run_keyforge, tree

from keyforge.sender import rotate, sync
from keyforge.ssh import authorized_keys as ak

pytestmark = pytest.mark.slow


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with locked_receiver(tmp_path / "lab") as running:
        yield running


class SyncLoop:
    """``keyforge sync --wait`` again and again, as cron would, until stopped."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.results: list[subprocess.CompletedProcess[str]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            self.results.append(run_keyforge("sync", "--wait", "--config", str(self.config)))

    def __enter__(self) -> SyncLoop:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=300)


def _options_of(text: str, blob: str) -> list[tuple[ak.Option, ...]]:
    return [line.entry.options for line in ak.parse(text) if line.entry and line.entry.blob == blob]


def test_rotation_with_syncs_running_throughout(lab: Lab, tmp_path: Path) -> None:
    config = lab.write_config()
    old_public = _keyforge_public(lab.key)
    old_private = tmp_path / "stolen-old-key"
    old_private.write_bytes(lab.key.read_bytes())
    old_private.chmod(0o600)
    before = lab.server.authorized_keys.read_text()
    [old_options] = _options_of(before, old_public.split()[1])
    first = run_keyforge("sync", "--config", str(config))
    assert first.returncode == 0, first.stderr

    with SyncLoop(config) as loop:
        rotated = run_keyforge(
            "rotate", "--config", str(config), "--authorized-keys", str(lab.server.authorized_keys)
        )
        while len(loop.results) < 2:  # at least one sync after the rotation, too
            loop.stop.wait(0.1)

    assert rotated.returncode == 0, rotated.stderr
    steps = [line[:3] for line in rotated.stdout.splitlines() if line[1:3] == "/6"]
    assert steps == ["1/6", "2/6", "3/6", "4/6", "5/6", "6/6"]
    failed = [r for r in loop.results if r.returncode != 0]
    assert not failed, [r.stderr for r in failed]
    assert len(loop.results) >= 2

    new_public = _keyforge_public(lab.key)
    assert new_public.split()[1] != old_public.split()[1]
    after = lab.server.authorized_keys.read_text()
    assert old_public.split()[1] not in after
    assert _options_of(after, new_public.split()[1]) == [old_options]
    assert sorted(p.name for p in lab.key.parent.glob(f"{lab.key.name}*")) == [
        lab.key.name,
        f"{lab.key.name}.pub",
    ]

    # the old key is refused; the new one pushes
    with_old = lab.config()
    with_old = dataclasses.replace(
        with_old, targets=(dataclasses.replace(with_old.targets[0], key=str(old_private)),)
    )
    [refused] = sync.sync(with_old, None)
    assert not refused.ok
    assert "refused the key" in refused.message
    [pushed] = sync.sync(lab.config(), None)
    assert pushed.ok, pushed.message
    assert tree(lab.copy) == tree(lab.source)


def _keyforge_public(key: Path) -> str:
    return rotate.public_line_of_private(key)


def test_a_failed_test_push_stops_with_both_keys_working_and_a_rerun_finishes(lab: Lab) -> None:
    config = lab.write_config()
    old_blob = _keyforge_public(lab.key).split()[1]
    [manifest] = lab.source.glob("*.manifest.json")
    hidden = manifest.with_name("hidden.json")
    manifest.rename(hidden)  # an unmounted backup disk, say: the push must not run
    args = ["rotate", "--config", str(config), "--authorized-keys", str(lab.server.authorized_keys)]

    stopped = run_keyforge(*args)

    assert stopped.returncode == 1
    [message] = stopped.stderr.splitlines()
    assert message.startswith(
        "keyforge: error: rotate step 3 (test push with the new key) failed: refusing to sync"
    )
    assert message.endswith(
        "the new key is installed beside the old one on the receiving host; the old key still "
        "works and stays in use; rerun 'keyforge rotate' to continue"
    )
    text = lab.server.authorized_keys.read_text()
    next_blob = _keyforge_public(lab.key.with_name(lab.key.name + ".next")).split()[1]
    assert old_blob in text
    assert next_blob in text
    assert _keyforge_public(lab.key).split()[1] == old_blob

    hidden.rename(manifest)
    finished = run_keyforge(*args)

    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.startswith("continuing an earlier rotation from step 2")
    assert "reusing the new key pair" in finished.stdout
    assert _keyforge_public(lab.key).split()[1] == next_blob
    text = lab.server.authorized_keys.read_text()
    assert old_blob not in text
    assert next_blob in text
    [pushed] = sync.sync(lab.config(), None)
    assert pushed.ok, pushed.message
