"""The gate against the attacks rsync's own rrsync tests make, through a real sshd on 127.0.0.1
and the real rsync client, with the gate confined (``--confine``: rsync 3.5's --confine-root and
--drop-D) and unconfined (what a host with an older rsync gets).

Each case is a push the client may try: special files and device nodes, filter merge files
outside the directory (named with '..', through a planted symbolic link, or from a destination
spelled through a link to itself), option paths beside the destination (the rotating cur/prev
layout), -M--log-file, and the --partial-dir/--delay-updates shape keyforge sync pushes.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from keyforge.lab import sshd
from keyforge.receiver import gate, install
from keyforge.ssh import authorized_keys, keys

pytestmark = [
    pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed"),
    pytest.mark.slow,
]

ROOT = Path(__file__).resolve().parents[2]
RSYNC = gate.rsync_program()
CONFINED = "confined"
UNCONFINED = "unconfined"
# confined mode needs an rsync with --confine-root and --drop-D on this host (3.5 and later)
MODES = [
    pytest.param(
        CONFINED,
        marks=pytest.mark.skipif(
            not gate.rsync_can_confine(RSYNC), reason=f"{RSYNC} has no --confine-root"
        ),
    ),
    UNCONFINED,
]


class Server:
    """A private sshd for the whole module and a backup key the tests lock to a gate."""

    def __init__(self, root: Path, server: sshd.PrivateSshd) -> None:
        self.server = server
        self.key = root / "backup-key"
        pair = keys.generate("ed25519", comment="keyforge-gate-test")
        self.key.write_bytes(pair.private_pem)
        self.key.chmod(0o600)
        self.public = pair.public_line
        self.program = root / "keyforge"
        # sshd clears the environment: the script brings this checkout along itself
        self.program.write_text(
            f"#!/bin/sh\nPYTHONPATH={shlex.quote(str(ROOT))} exec {shlex.quote(sys.executable)}"
            " -c 'from keyforge.entry import main; main()' \"$@\"\n"
        )
        self.program.chmod(0o755)

    def rsh(self) -> str:
        return shlex.join(["ssh", "-i", str(self.key), *self.server.ssh_options()])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("gate-sshd")
    root.chmod(0o700)
    (root / "sshd").mkdir(mode=0o700)
    with sshd.private_sshd(root / "sshd") as running:
        yield Server(root, running)


class Host:
    """One test's receiving side: DIR, what lies beside it, and the key locked to its gate."""

    def __init__(self, server: Server, root: Path, mode: str) -> None:
        self.server = server
        self.root = root
        self.directory = root / "srvbackups"
        self.directory.mkdir()
        self.log = root / "gate.log"
        self.confined = mode == CONFINED
        config = gate.GateConfig(
            str(self.directory),
            home=str(Path.home()),
            log=str(self.log),
            rsync=RSYNC,
            confine=self.confined,
        )
        gate.check_setup(config, allow_unconfined=not self.confined)
        entry = install.locked_entry(
            install.public_key_from_text(server.public, source="backup-key.pub"),
            from_patterns=[sshd.LOOPBACK],
            command=gate.gate_command(str(server.program), config),
        )
        server.server.authorized_keys.write_text(authorized_keys.render(entry) + "\n")
        server.server.authorized_keys.chmod(0o600)

    def push(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``rsync ARGS`` with the key; a '@DIR' prefix in an argument is the remote DIR."""
        spec = f"{self.server.server.user}@{sshd.LOOPBACK}:{self.directory}"
        argv = ["rsync", f"--rsh={self.server.rsh()}", *(a.replace("@DIR", spec) for a in args)]
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def records(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def events(self) -> list[object]:
        return [record["event"] for record in self.records()]


@pytest.fixture(params=MODES)
def host(server: Server, tmp_path: Path, request: pytest.FixtureRequest) -> Host:
    return Host(server, tmp_path, request.param)


def source(root: Path, files: dict[str, str]) -> Path:
    top = root / "src"
    top.mkdir(exist_ok=True)
    for name, text in files.items():
        (top / name).parent.mkdir(parents=True, exist_ok=True)
        (top / name).write_text(text)
    return top


def assert_pushed_and_judged(host: Host, result: subprocess.CompletedProcess[str]) -> None:
    """The push went through, and the gate said whether it ran confined."""
    assert result.returncode == 0, result.stderr
    events = host.events()
    if host.confined:
        assert events == ["allowed"]
    else:
        # the weaker lock says so, each push
        assert events == ["allowed", "warning"]
        assert host.records()[1]["warning"] == gate.UNCONFINED_RISK


# --- special files and device nodes ---------------------------------------------------------


def test_a_fifo_is_never_made_in_the_directory(host: Host) -> None:
    top = source(host.root, {"data": "kept\n"})
    os.mkfifo(top / "fifo")
    result = host.push("-a", f"{top}/", "@DIR/")
    assert_pushed_and_judged(host, result)
    assert (host.directory / "data").read_text() == "kept\n"
    assert not (host.directory / "fifo").exists()
    argv = host.records()[0]["argv"]
    assert isinstance(argv, list)
    assert ("--drop-D" if host.confined else gate.unconfined_no_specials()[0]) in argv


# as root: the sshd runs as the test's user, and only root's rsync makes device nodes
@pytest.mark.skipif(os.geteuid() != 0, reason="mknod of a device needs root on both sides")
def test_a_device_node_is_never_made_in_the_directory(host: Host) -> None:
    top = source(host.root, {"data": "kept\n"})
    os.mknod(top / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    try:
        result = host.push("-a", f"{top}/", "@DIR/", timeout=20)
    except subprocess.TimeoutExpired:
        result = subprocess.CompletedProcess([], -9, "", "stalled")
    assert not (host.directory / "null").exists()
    if host.confined:
        # --drop-D skips it and the rest arrives
        assert result.returncode == 0, result.stderr
        assert (host.directory / "data").read_text() == "kept\n"
    else:
        # the gate runs as root, so --no-D: the receiver reads the file list without the
        # device number the client sends, and the push stalls instead of making the node
        assert result.returncode != 0


def test_a_server_command_asking_for_devices_gets_them_turned_off(host: Host) -> None:
    # what the client's shell would run, sent by hand: -D and --specials come before the gate's
    command = f"rsync --server -D --specials . {host.directory}/"
    ssh = ["ssh", "-i", str(host.server.key), *host.server.server.ssh_options()]
    spec = f"{host.server.server.user}@{sshd.LOOPBACK}"
    subprocess.run([*ssh, spec, command], capture_output=True, timeout=60, check=False)
    argv = host.records()[0]["argv"]
    assert isinstance(argv, list)
    # the last word before '. DIR/' wins over the client's -D
    added = ["--drop-D"] if host.confined else list(gate.unconfined_no_specials())
    assert argv[-2 - len(added) :] == [*added, ".", f"{host.directory}/"]
    assert argv.index("-D") < argv.index("--specials") < len(argv) - 3


# --- filter merge files outside the directory -----------------------------------------------


def plant_secret(host: Host) -> None:
    """Two files in DIR, and a file beside DIR naming one of them: read as a merge file, it
    would keep that one from --delete, which tells the client what the file holds."""
    (host.root / "outside-secret").write_text("alpha\n")
    (host.directory / "alpha").write_text("a\n")
    (host.directory / "beta").write_text("b\n")


def merge_file_push(host: Host, rule: str, destination: str = "@DIR/") -> None:
    empty = host.root / "empty"
    empty.mkdir()
    result = host.push("-rv", "--delete", f"--filter={rule}", f"{empty}/", destination)
    assert_pushed_and_judged(host, result)
    assert (host.root / "outside-secret").read_text() == "alpha\n"
    assert not (host.directory / "beta").exists()
    if host.confined:
        # rsync never read the file: nothing protected alpha from --delete
        assert not (host.directory / "alpha").exists()


def test_a_merge_file_named_with_dotdot(host: Host) -> None:
    plant_secret(host)
    merge_file_push(host, ":- ../outside-secret")


def test_a_merge_file_through_a_planted_symlink(host: Host) -> None:
    plant_secret(host)
    (host.directory / "outside-link").symlink_to("../outside-secret")
    merge_file_push(host, ":- outside-link")


def test_a_merge_file_from_a_destination_spelt_through_a_self_alias(host: Host) -> None:
    plant_secret(host)
    (host.directory / "self-alias").symlink_to(".")
    merge_file_push(host, ":- ../outside-secret", "@DIR/self-alias/")


# --- option paths beside the destination ----------------------------------------------------


def rotate_layout(host: Host) -> Path:
    """DIR/prev holds yesterday's copy; today's push goes to DIR/cur/."""
    top = source(host.root, {"same": "unchanged since yesterday\n", "new": "today\n"})
    prev = host.directory / "prev"
    prev.mkdir()
    shutil.copy2(top / "same", prev / "same")
    return top


@pytest.mark.parametrize("option", ["--link-dest", "--copy-dest"])
def test_the_rotating_layout_builds_cur_against_prev(host: Host, option: str) -> None:
    top = rotate_layout(host)
    result = host.push("-a", "--stats", f"{option}=prev", f"{top}/", "@DIR/cur/")
    assert_pushed_and_judged(host, result)
    same, basis = host.directory / "cur" / "same", host.directory / "prev" / "same"
    assert same.read_text() == "unchanged since yesterday\n"
    assert (host.directory / "cur" / "new").read_text() == "today\n"
    # --link-dest hard-links the unchanged file; --copy-dest copies it from prev locally
    assert os.path.samefile(same, basis) == (option == "--link-dest")
    # either way only the new file crossed the wire
    assert "Literal data: 6 bytes" in result.stdout  # len("today\n")
    assert not (host.directory / "cur" / "prev").exists()


def test_compare_dest_beside_the_destination_skips_what_prev_holds(host: Host) -> None:
    top = rotate_layout(host)
    result = host.push("-a", "--compare-dest=prev", f"{top}/", "@DIR/cur/")
    assert_pushed_and_judged(host, result)
    assert not (host.directory / "cur" / "same").exists()
    assert (host.directory / "cur" / "new").read_text() == "today\n"


def test_backup_dir_beside_the_destination_keeps_the_replaced_file(host: Host) -> None:
    top = source(host.root, {"file": "the new version\n"})
    (host.directory / "cur").mkdir()
    (host.directory / "cur" / "file").write_text("old\n")
    result = host.push("-a", "-b", "--backup-dir=old", f"{top}/", "@DIR/cur/")
    assert_pushed_and_judged(host, result)
    assert (host.directory / "cur" / "file").read_text() == "the new version\n"
    assert (host.directory / "old" / "file").read_text() == "old\n"


def test_temp_dir_and_partial_dir_paths_beside_the_destination(host: Host) -> None:
    top = source(host.root, {"file": "data\n"})
    (host.directory / "tmp").mkdir()
    result = host.push("-a", "--temp-dir=tmp", "--partial-dir=partials/cur", f"{top}/", "@DIR/cur/")
    assert_pushed_and_judged(host, result)
    assert (host.directory / "cur" / "file").read_text() == "data\n"
    argv = host.records()[0]["argv"]
    assert isinstance(argv, list)
    # the client sends each as two words; the gate resolved the value in place
    assert argv[argv.index("--temp-dir") + 1] == f"{host.directory}/tmp"
    assert argv[argv.index("--partial-dir") + 1] == f"{host.directory}/partials/cur"


def test_an_option_path_through_a_symlink_out_is_refused(host: Host) -> None:
    top = rotate_layout(host)
    outside = host.root / "outside"
    outside.mkdir()
    (host.directory / "prev" / "out").symlink_to(outside)
    result = host.push("-a", "-b", "--backup-dir=prev/out", f"{top}/", "@DIR/cur/")
    assert result.returncode != 0
    assert "through a symbolic link" in result.stderr
    assert list(outside.iterdir()) == []
    assert not (host.directory / "cur").exists()
    assert host.events() == ["refused"]


# --- what stays as it is --------------------------------------------------------------------


def test_a_log_file_asked_for_with_dash_m_is_refused(host: Host) -> None:
    top = source(host.root, {"file": "data\n"})
    result = host.push("-a", f"-M--log-file={host.directory}/rsync.log", f"{top}/", "@DIR/")
    assert result.returncode != 0
    assert "--log-file writes to a path the client chooses" in result.stderr
    assert list(host.directory.iterdir()) == []


def test_delete_partial_dir_and_delay_updates_push_every_file(host: Host) -> None:
    # the shape keyforge sync pushes: rrsync -wo discards every file of it
    top = source(host.root, {"a": "1\n", "sub/b": "2\n"})
    (host.directory / "stale").write_text("deleted\n")
    args = ("-a", "--delete", "--partial-dir=.rsync-partial", "--delay-updates")
    result = host.push(*args, f"{top}/", "@DIR/")
    assert_pushed_and_judged(host, result)
    assert (host.directory / "a").read_text() == "1\n"
    assert (host.directory / "sub" / "b").read_text() == "2\n"
    assert not (host.directory / "stale").exists()
    assert not (host.directory / ".rsync-partial").exists()
