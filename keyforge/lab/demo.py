"""keyforge demo: the whole system on one machine, in a temporary directory.

The sending server ("server1") and the receiving host ("raspberrypi") both live in one
directory made with ``tempfile.mkdtemp`` (mode 0700). The receiving host is a private sshd on
127.0.0.1 (``keyforge.lab.sshd``). Every step calls the library, exactly as the commands do:

pair -> start the receiver -> backup -> capture start -> one push (recorded, refused) ->
capture show -> install the locked key from the capture -> sync -> verify from the offsite copy
-> show the final authorized_keys line and what the key can no longer do.

The directory is removed at the end (unless ``keep``) and sshd is stopped whatever happens, so
no process is left running. Nothing outside the directory is touched, except that an empty
/run/sshd is created when root's sshd needs it and the system lacks it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from keyforge import config, layout, signing
from keyforge.errors import DemoError, KeyforgeError
from keyforge.infra import fsutil, runner, tools
from keyforge.infra.templating import render
from keyforge.lab.sshd import LOOPBACK, PrivateSshd, is_running, private_sshd, stop_stragglers
from keyforge.receiver import capture, install
from keyforge.sender import backup, check, restore, sync
from keyforge.ssh import allowed_signers, keys
from keyforge.ssh import authorized_keys as ak

STEPS = 10
HOST = "server1"
TARGET = "offsite"
# another loopback address: a connection from it is "another machine" as far as from= goes
OTHER_ADDRESS = "127.0.0.2"

Say = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class DemoResult:
    """What a finished demo did; the tests check it."""

    directory: Path
    kept: bool
    sshd_pid: int
    port: int
    forced_command: str
    authorized_keys_line: str
    seconds: float


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where each part of the demo lives inside its directory."""

    root: Path

    @property
    def sender(self) -> Path:
        return self.root / "sender"

    @property
    def key(self) -> Path:
        return self.sender / ".ssh" / "backups"

    @property
    def signing_key(self) -> Path:
        return self.sender / "manifest-signing-key"

    @property
    def allowed_signers(self) -> Path:
        """The sending server's signing key, pinned on the receiving host."""
        return self.receiver / "allowed_signers"

    @property
    def sample(self) -> Path:
        return self.sender / "data"

    @property
    def backups(self) -> Path:
        return self.sender / "backups"

    @property
    def config(self) -> Path:
        return self.sender / "keyforge.toml"

    @property
    def sync_log(self) -> Path:
        return self.sender / "sync.log"

    @property
    def receiver(self) -> Path:
        """The receiving user's home: its .ssh/authorized_keys is the one sshd reads."""
        return self.root / "receiver"

    @property
    def authorized_keys(self) -> Path:
        return self.receiver / ".ssh" / "authorized_keys"

    @property
    def offsite(self) -> Path:
        return self.receiver / "srvbackups"

    @property
    def restored(self) -> Path:
        return self.receiver / "restored"

    @property
    def sshd(self) -> Path:
        return self.root / "sshd"


# --- the sample tree --------------------------------------------------------------------------

SAMPLE_FILES: dict[str, tuple[bytes, int]] = {
    "etc/hostname": (b"server1\n", 0o644),
    "etc/app/app.conf": (b"[app]\nlisten = 127.0.0.1:8080\npassword = demo-only\n", 0o600),
    "home/foo/notes.txt": ("Backups are real once restored. \u2013 foo\n".encode(), 0o644),
    "home/foo/with space/caf\u00e9.txt": ("caf\u00e9 cr\u00e8me\n".encode(), 0o644),
    "usr/local/bin/hello": (b"#!/bin/sh\necho hello\n", 0o755),
    "var/log/empty.log": (b"", 0o640),
}
SAMPLE_LINKS = {"home/foo/hostname": "../../etc/hostname"}
RANDOM_FILE = "var/lib/app/data.bin"
RANDOM_SIZE = 256 * 1024


def make_sample_tree(root: Path) -> None:
    """Files of several modes, an empty one, a name with a space and an accent, a symlink,
    nested directories and some incompressible data."""
    for name, (data, mode) in SAMPLE_FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(mode)
    for name, target in SAMPLE_LINKS.items():
        (root / name).symlink_to(target)
    data_file = root / RANDOM_FILE
    data_file.parent.mkdir(parents=True, exist_ok=True)
    data_file.write_bytes(os.urandom(RANDOM_SIZE))


def change_sample_tree(root: Path) -> list[str]:
    """A day's changes before the incremental: one file edited, one added, one removed."""
    (root / "etc/hostname").write_bytes(b"server1.example.org\n")
    (root / "home/foo/todo.txt").write_bytes(b"restore test: done\n")
    (root / "var/log/empty.log").unlink()
    return ["edited etc/hostname", "added home/foo/todo.txt", "removed var/log/empty.log"]


Snapshot = dict[str, tuple[str, int, str]]


def tree_snapshot(root: Path) -> Snapshot:
    """Each entry under ``root``: type, permission bits, and content digest or link target."""
    entries: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            st = path.lstat()
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                entries[rel] = ("symlink", 0, str(path.readlink()))
            elif stat.S_ISDIR(st.st_mode):
                entries[rel] = ("dir", mode, "")
            elif stat.S_ISREG(st.st_mode):
                entries[rel] = ("file", mode, hashlib.sha256(path.read_bytes()).hexdigest())
            else:
                entries[rel] = ("other", mode, "")
    return entries


def tree_differences(expected: Snapshot, actual: Snapshot) -> list[str]:
    """Every way ``actual`` differs from ``expected``, one line each (pure)."""
    problems = [f"{name}: missing" for name in sorted(expected.keys() - actual.keys())]
    problems += [f"{name}: unexpected" for name in sorted(actual.keys() - expected.keys())]
    for name in sorted(expected.keys() & actual.keys()):
        want, got = expected[name], actual[name]
        if want[0] != got[0]:
            problems.append(f"{name}: is a {got[0]}, expected a {want[0]}")
        elif want[1] != got[1]:
            problems.append(f"{name}: mode {got[1]:04o}, expected {want[1]:04o}")
        elif want[2] != got[2]:
            problems.append(f"{name}: {'target' if want[0] == 'symlink' else 'content'} differs")
    return problems


def describe_tree(snapshot: Snapshot) -> str:
    kinds = [kind for kind, _, _ in snapshot.values()]
    return (
        f"{kinds.count('file')} files, {kinds.count('symlink')} symlink, "
        f"{kinds.count('dir')} directories"
    )


# --- steps ------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Run:
    layout: Layout
    say: Say
    server: PrivateSshd | None = None
    public_key: ak.Entry | None = None
    signer_line: str = ""
    cfg: config.Config | None = None
    forced_command: str = ""
    line: str = ""
    log_offset: int = 0

    def detail(self, text: str) -> None:
        for line in text.splitlines() or [""]:
            self.say(f"      {line}")

    def need_server(self) -> PrivateSshd:
        assert self.server is not None
        return self.server

    def need_key(self) -> ak.Entry:
        assert self.public_key is not None
        return self.public_key

    def need_config(self) -> config.Config:
        assert self.cfg is not None
        return self.cfg

    def new_sshd_lines(self) -> list[str]:
        """What sshd logged since the last call (it logs each session before it starts)."""
        text = self.need_server().log.read_text(errors="replace")
        fresh = text[self.log_offset :]
        self.log_offset = len(text)
        return fresh.splitlines()


@contextlib.contextmanager
def _step(run: _Run, number: int, title: str) -> Iterator[None]:
    run.say(f"[{number}/{STEPS}] {title}")
    try:
        yield
    except KeyforgeError as err:
        name = title.partition(":")[0]
        raise DemoError(f"step {number}/{STEPS} ({name}) failed: {err}") from err


def step_pair(run: _Run) -> None:
    pair = keys.generate("ed25519", comment=f"backups@{HOST}")
    fsutil.ensure_private_dir(run.layout.key.parent)
    written = keys.write_pair(run.layout.key, pair, force=False)
    run.public_key = install.public_key_from_text(pair.public_line, source=str(written.public_path))
    run.detail(f"{written.private_path} (0600, no passphrase) and {written.public_path.name}")
    run.detail(pair.fingerprint)
    signer = signing.make_key(f"keyforge-manifests@{HOST}")
    keys.write_pair(run.layout.signing_key, signer, force=False)
    run.signer_line = signing.signer_line(signer.public_line, HOST)
    run.detail(f"manifest-signing key {run.layout.signing_key} (0600): {signer.fingerprint}")


def step_receiver(run: _Run, server: PrivateSshd) -> None:
    run.detail(f"sshd pid {server.pid} on {LOOPBACK}:{server.port}, config {server.config}")
    run.detail(f"known_hosts: {server.known_hosts.read_text().strip()}")
    if server.created_privsep_dir:
        run.detail("created /run/sshd, which root's sshd needs and the system lacked; it stays")
    step_config(run, server)
    run.detail(f"the sending server's config: {run.layout.config}")


def step_config(run: _Run, server: PrivateSshd) -> None:
    layout = run.layout
    has_zstd = tools.find_program("zstd") is not None
    text = render(
        "demo_keyforge.toml.j2",
        host=config.toml_string(HOST),
        source=config.toml_string(str(layout.sample)),
        directory=config.toml_string(str(layout.backups)),
        compression=config.toml_string("zstd" if has_zstd else "gzip"),
        sync_log=config.toml_string(str(layout.sync_log)),
        state_dir=config.toml_string(str(layout.config.parent / "state")),
        port=server.port,
        user=config.toml_string(server.user),
        key=config.toml_string(str(layout.key)),
        signing_key=config.toml_string(str(layout.signing_key)),
        remote_path=config.toml_string(f"{layout.offsite}/"),
        known_hosts=config.toml_string(str(server.known_hosts)),
    )
    fsutil.atomic_write(layout.config, text.encode(), mode=fsutil.PRIVATE_FILE)
    run.cfg = config.load(layout.config)


def step_backup(run: _Run) -> None:
    cfg = run.need_config()
    make_sample_tree(run.layout.sample)
    run.detail(
        f"sample tree {run.layout.sample}: {describe_tree(tree_snapshot(run.layout.sample))}"
    )
    first = backup.run_backup(cfg, force_full=True)
    for entry in first.entries:
        run.detail(f"{entry.kind:<11} {entry.name} ({backup.human_size(entry.size)})")
    run.detail("then: " + ", ".join(change_sample_tree(run.layout.sample)))
    second = backup.run_backup(cfg)
    for entry in second.entries:
        run.detail(f"{entry.kind:<11} {entry.name} ({backup.human_size(entry.size)})")
    if [e.kind for e in (*first.entries, *second.entries)] != [layout.MASTER, layout.INCREMENTAL]:
        raise DemoError("the two backup runs did not make a master and an incremental")


def _quiet_effects() -> sync.Effects:
    # the demo's runs stay out of the system log; they are printed instead
    return sync.Effects(syslog=lambda report: None)


def step_capture_start(run: _Run) -> None:
    started = capture.start(run.layout.authorized_keys, run.need_key(), from_patterns=[LOOPBACK])
    run.detail(f"recorder {started.recorder.script}")
    run.detail(f"records go to {started.recorder.log}")
    run.detail(f"{started.result.action} in {started.result.path}:")
    run.detail(f"  {started.result.plan.line}")


def step_push(run: _Run) -> None:
    cfg = run.need_config()
    [report] = sync.sync(cfg, TARGET, effects=_quiet_effects())
    run.detail(sync.display(report.argv))
    if report.ok:
        raise DemoError("the push went through although only the recorder was allowed")
    run.detail(f"refused, as expected: {report.message}")


def step_capture_show(run: _Run) -> None:
    key_id = capture.key_id(run.need_key().blob)
    log = capture.read_log(capture.default_log_path(run.layout.receiver))
    record = capture.latest_record(log, key_id)
    if record.command is None:
        raise DemoError("the recorder logged a login without a command")
    run.detail(f"recorded {record.time} from {record.client}, key {record.key}:")
    run.detail(f"  {record.command}")


def step_install(run: _Run) -> None:
    key = run.need_key()
    plan = capture.install_plan_from_capture(run.layout.authorized_keys, key)
    run.forced_command = plan.captured.command
    run.detail("what that command asks for, in words:")
    for note in plan.captured.notes:
        run.detail(f"  {note}")
    entry = install.locked_entry(key, from_patterns=[LOOPBACK], command=run.forced_command)
    result = install.install_key(run.layout.authorized_keys, entry)
    assert result.plan.line is not None
    run.line = result.plan.line
    run.detail(f"{result.action} the recorder line in {result.path} with the locked one")
    for warning in result.warnings:
        # keyforge install says the forced command changes; here that is the point of the step
        if "forced command changes" not in warning:
            run.detail(f"note: {warning}")


def step_sync(run: _Run) -> None:
    cfg = run.need_config()
    [report] = sync.sync(cfg, TARGET, effects=_quiet_effects())
    if not report.ok:
        raise DemoError(f"{sync.summary(report)} (sshd's log: {run.need_server().log})")
    run.detail(sync.summary(report))
    copies = sorted(run.layout.offsite.glob("*.tar.*"))
    run.detail(f"{len(copies)} archives and their manifests are now in {run.layout.offsite}")


def step_verify(run: _Run) -> None:
    cfg = run.need_config()
    offsite_backup = dataclasses.replace(cfg.backup, directory=str(run.layout.offsite))
    offsite = dataclasses.replace(cfg, backup=offsite_backup)
    pinned = run.layout.allowed_signers
    fsutil.atomic_write(pinned, (run.signer_line + "\n").encode(), mode=fsutil.PRIVATE_FILE)
    trust = signing.Trust(allowed_signers.load(pinned))
    report = restore.run_verify(offsite, trust=trust)
    problems = [*report.problems, *(p for s in report.sources for p in s.problems)]
    if problems:
        raise DemoError(f"the offsite copy does not verify: {restore.summarize_problems(problems)}")
    run.detail(
        f"{report.checked_archives} archives match the hash in their manifests, each signed "
        f"by {HOST}'s key ({pinned.name})"
    )
    source = cfg.backup.sources[0]
    archives = restore.run_restore(offsite, source, run.layout.restored, trust=trust)
    run.detail(f"restored {' + '.join(a.kind for a in archives)} into {run.layout.restored}")
    expected = tree_snapshot(run.layout.sample)
    differences = tree_differences(expected, tree_snapshot(run.layout.restored))
    if differences:
        raise DemoError(
            "the tree restored from the offsite copy differs from the sample: "
            + restore.summarize_problems(differences)
        )
    run.detail(f"identical to the sample tree ({describe_tree(expected)}, modes, symlink)")


def _ssh(run: _Run, extra: Sequence[str], command: Sequence[str]) -> runner.Result:
    server = run.need_server()
    argv = [
        sync.find_tools().ssh,
        *server.ssh_options(),
        "-i",
        str(run.layout.key),
        *extra,
        f"{server.user}@{server.host}",
        *command,
    ]
    return runner.run(argv, check=False)


def _sshd_said(lines: Sequence[str], *fragments: str) -> str | None:
    for line in lines:
        if any(fragment in line for fragment in fragments):
            return line.strip()
    return None


def _ran_forced_command(run: _Run, result: runner.Result, what: str) -> str:
    """Check that sshd ran the forced command for this attempt and nothing came back."""
    said = _sshd_said(run.new_sshd_lines(), "forced-command")
    if said is None:
        raise DemoError(f"{what}: sshd did not log running the forced command")
    # the command itself was shown just above; its first words are enough here
    said = re.sub(r"'(rsync --server \S+) [^']*'", r"'\1 ...'", said)
    # a real answer would be the file; rsync's protocol greeting is 4 bytes
    if b"root:" in result.stdout or len(result.stdout) > 16:
        raise DemoError(f"{what}: the key printed {len(result.stdout)} bytes; expected none")
    return said


def step_locked(run: _Run) -> None:
    run.detail("the final authorized_keys line:")
    run.detail(f"  {run.line}")
    before = tree_snapshot(run.layout.offsite)
    run.new_sshd_lines()

    result = _ssh(run, [], ["cat", "/etc/shadow"])
    said = _ran_forced_command(run, result, "cat /etc/shadow")
    run.detail("ssh ... 'cat /etc/shadow': not run; sshd ran the forced rsync instead")
    run.detail(f"  sshd: {said}")
    greeting = (
        f"{len(result.stdout)} bytes (rsync's protocol greeting)" if result.stdout else "nothing"
    )
    run.detail(f"  the client got {greeting}, no file; exit status {result.returncode}")

    run.detail("keyforge check, the probes a sending server runs against its own key:")
    for findings in check.run_checks(run.need_config(), TARGET).values():
        for finding in findings:
            if not finding.ok:
                raise DemoError(f"keyforge check: {finding.probe}: {finding.saw}")
            run.detail(f"  {finding.probe}: {finding.saw}")
    run.new_sshd_lines()

    result = _ssh(run, ["-b", OTHER_ADDRESS], ["true"])
    refused = _sshd_said(run.new_sshd_lines(), "not from a permitted host")
    if refused is None and "bind" in result.stderr and result.returncode == 255:
        # a system without the whole 127/8 on its loopback cannot play the other machine
        run.detail(f"(no connection from {OTHER_ADDRESS} possible here; from= not shown)")
    elif result.returncode != 255 or refused is None:
        raise DemoError(f"the key was not refused from {OTHER_ADDRESS} (exit {result.returncode})")
    else:
        refusal = runner.first_error_line(result.stderr, fallback="refused")
        run.detail(f"the same key from {OTHER_ADDRESS}, another machine as far as from= goes:")
        run.detail(f"  {refusal}")
        run.detail(f"  sshd: {refused}")

    if tree_snapshot(run.layout.offsite) != before:
        raise DemoError("the offsite copy changed during the refused attempts")
    run.detail("the offsite copy is unchanged")


# --- the whole run ----------------------------------------------------------------------------


def run_demo(*, keep: bool = False, say: Say = print, parent: Path | None = None) -> DemoResult:
    """Run every step; raise DemoError naming the step that failed. See the module docstring."""
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="keyforge-demo-", dir=parent))
    root.chmod(0o700)
    layout = Layout(root)
    run = _Run(layout, say)
    say(f"keyforge demo in {root} ({'kept' if keep else 'removed'} at the end)")
    say(f"  sending server '{HOST}': {layout.sender}")
    say(f"  receiving host: a private sshd on {LOOPBACK}, its user's files in {layout.receiver}")
    sshd_pid = port = 0
    try:
        # the stack stops sshd before the directory goes, whichever step fails
        with contextlib.ExitStack() as stack:
            for directory in (layout.sender, layout.receiver, layout.sshd):
                directory.mkdir(mode=0o700)
            with _step(run, 1, "pair: the backup key, made on the sending server"):
                step_pair(run)
            with _step(run, 2, "receiver: a private sshd, its host key pinned"):
                server = stack.enter_context(
                    private_sshd(layout.sshd, authorized_keys=layout.authorized_keys)
                )
                run.server = server
                sshd_pid, port = server.pid, server.port
                step_receiver(run, server)
            with _step(run, 3, "backup: a full backup, a change, an incremental"):
                step_backup(run)
            with _step(run, 4, "capture start: the key may run only the recorder"):
                step_capture_start(run)
            with _step(run, 5, "push: keyforge sync with the key, recorded and refused"):
                step_push(run)
            with _step(run, 6, "capture show: the command rsync asked the receiver to run"):
                step_capture_show(run)
            with _step(run, 7, f"install --from-capture: the key locked to it, from {LOOPBACK}"):
                step_install(run)
            with _step(run, 8, "sync: the nightly push, with the locked key"):
                step_sync(run)
            with _step(run, 9, "verify: restore from the offsite copy"):
                step_verify(run)
            with _step(run, 10, "locked: what the key can no longer do"):
                step_locked(run)
    finally:
        # every process of the demo names its unique directory: none may outlive it
        stop_stragglers(str(root))
        if keep:
            say(f"kept {root} (sshd's log: {layout.sshd / 'sshd.log'})")
        else:
            shutil.rmtree(root, ignore_errors=True)
    if sshd_pid and is_running(sshd_pid):
        raise DemoError(f"sshd (pid {sshd_pid}) is still running after the demo")
    seconds = time.monotonic() - started
    say(f"cleanup: sshd stopped, no process left{'' if keep else f'; removed {root}'}")
    say(f"demo passed in {seconds:.1f} s")
    return DemoResult(root, keep, sshd_pid, port, run.forced_command, run.line, seconds)
