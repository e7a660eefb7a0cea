"""keyforge rotate's core with a fake receiving host and a fake push: step order, failures
at every step, and a rerun that continues where the failed run stopped."""

from __future__ import annotations

import contextlib
import dataclasses
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from keyforge import config
from keyforge.errors import CommandError, FileError, KeyforgeError, LockedError, UsageError
from keyforge.infra import fsutil, runner
from keyforge.receiver import install
from keyforge.sender import rotate
from keyforge.ssh import authorized_keys as ak
from keyforge.ssh import keys

OPTIONS = 'restrict,from="203.0.113.7",command="rsync --server -logDtprze.iLsfxCIvu . srv/"'


def blob(public_line: str) -> str:
    return public_line.split()[1]


def key_in(path: Path) -> str:
    """The blob of the private key at path."""
    return blob(rotate.public_line_of_private(path))


class FakeReceiver:
    """authorized_keys in memory, changed by the real planning code; fails when told to."""

    where = "foo@receiver"

    def __init__(self, text: str) -> None:
        self.text = text
        self.calls: list[str] = []
        self.fail: str | None = None

    def _entry(self, line: str) -> ak.Entry:
        return install.public_key_from_text(line, source="test")

    def install_like(self, old_public: str, new_public: str) -> str:
        self.calls.append("install_like")
        if self.fail == "install_like":
            raise CommandError("ssh: connection refused")
        plan = install.plan_install_like(
            self.text, self._entry(new_public), self._entry(old_public)
        )
        self.text = plan.new_text or ""
        return plan.action

    def revoke(self, old_public: str) -> str:
        self.calls.append("revoke")
        if self.fail == "revoke":
            raise CommandError("ssh: connection refused")
        plan = install.plan_revoke(self.text, self._entry(old_public))
        self.text = plan.new_text or ""
        return plan.action

    def accepts(self, path: Path) -> bool:
        """Would sshd let the private key at path in?"""
        wanted = key_in(path)
        return any(
            line.entry is not None and line.entry.blob == wanted for line in ak.parse(self.text)
        )

    def options_of(self, path: Path) -> tuple[ak.Option, ...]:
        wanted = key_in(path)
        [entry] = [e for line in ak.parse(self.text) if (e := line.entry) and e.blob == wanted]
        return entry.options


@dataclasses.dataclass
class Bench:
    files: rotate.KeyFiles
    receiver: FakeReceiver
    log: list[str]
    fail_push: bool = False
    fail_lock: bool = False
    made: int = 0

    def push(self, key: Path) -> None:
        self.log.append(f"push {key.name}")
        assert self.receiver.accepts(key), "the test push must use an installed key"
        if self.fail_push:
            raise CommandError("sync pi: FAILED after 1 attempt(s): rsync exit 12")

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        if self.fail_lock:
            raise LockedError("another keyforge run holds the lock; try again later")
        self.log.append("lock")
        yield
        self.log.append("unlock")
        # whatever a sync reads after the lock is released is one whole pair, accepted there
        assert self.receiver.accepts(self.files.key)
        assert key_in(self.files.key) == blob(self.files.pub.read_text())

    def make_pair(self, old_public: str) -> keys.KeyPair:
        self.made += 1
        return keys.generate("ed25519", comment=keys.parse_public_line(old_public).comment)

    def rotation(self) -> rotate.Rotation:
        return rotate.Rotation(
            files=self.files,
            receiver=self.receiver,
            push=self.push,
            swap_lock=self.lock,
            make_pair=self.make_pair,
            say=self.log.append,
        )


@pytest.fixture
def bench(tmp_path: Path) -> Bench:
    ssh = tmp_path / ".ssh"
    ssh.mkdir(mode=0o700)
    key = ssh / "backups"
    pair = keys.generate("ed25519", comment="root@server1")
    keys.write_pair(key, pair, force=False)
    text = (
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB2Ws2Wcm6yJ9qkF9bt5vXbqZ0kNbJXt6Yz8Z4Lhmq0Z admin\n"
    )
    text += f"{OPTIONS} {pair.public_line}\n"
    return Bench(rotate.KeyFiles(key), FakeReceiver(text), [])


def leftovers(files: rotate.KeyFiles) -> set[str]:
    return {p.name for p in files.key.parent.iterdir()} - {"backups", "backups.pub"}


def test_a_rotation_runs_the_six_steps_in_order_and_leaves_only_the_new_pair(
    bench: Bench,
) -> None:
    old = key_in(bench.files.key)
    old_options = bench.receiver.options_of(bench.files.key)

    outcome = rotate.rotate(bench.rotation())

    steps = [m[:3] for m in bench.log if m[1:3] == "/6"]
    assert steps == ["1/6", "2/6", "3/6", "4/6", "5/6", "6/6"]
    assert [m for m in bench.log if m[1:3] != "/6"] == ["push backups.next", "lock", "unlock"]
    assert bench.receiver.calls == ["install_like", "revoke"]
    new = key_in(bench.files.key)
    assert new != old
    assert blob(bench.files.pub.read_text()) == new
    assert bench.receiver.options_of(bench.files.key) == old_options
    assert old not in bench.receiver.text
    assert "admin" in bench.receiver.text
    assert leftovers(bench.files) == {".backups.rotate.lock"}
    assert stat.S_IMODE(bench.files.key.stat().st_mode) == 0o600
    assert outcome.started_at == 1
    assert outcome.old_fingerprint != outcome.new_fingerprint
    assert keys.parse_public_line(bench.files.pub.read_text()).comment == "root@server1"


@pytest.mark.parametrize(
    ("step", "state"),
    [
        (1, "is unchanged and still in use"),
        (2, "the old key still works and stays in use"),
        (3, "the new key is installed beside the old one"),
        (4, "both keys are installed"),
        (5, "is still accepted by the receiving host"),
        (6, "its private key"),
    ],
)
def test_a_failure_at_each_step_says_which_and_what_is_left_and_a_rerun_finishes(
    bench: Bench, monkeypatch: pytest.MonkeyPatch, step: int, state: str
) -> None:
    old_key = bench.files.key.read_bytes()
    real_delete = rotate._delete_old_pair

    def broken_pair(old_public: str) -> keys.KeyPair:
        raise FileError("cannot write in /root/.ssh: No space left on device")

    def broken_delete(files: rotate.KeyFiles) -> None:
        raise PermissionError(13, "Permission denied", str(files.old))

    good_make = bench.make_pair
    if step == 1:
        monkeypatch.setattr(bench, "make_pair", broken_pair)
    bench.receiver.fail = {2: "install_like", 5: "revoke"}.get(step)
    bench.fail_push = step == 3
    bench.fail_lock = step == 4
    if step == 6:
        monkeypatch.setattr(rotate, "_delete_old_pair", broken_delete)

    with pytest.raises(KeyforgeError) as failed:
        rotate.rotate(bench.rotation())

    message = str(failed.value)
    assert message.startswith(f"rotate step {step} ({rotate.STEPS[step]}) failed: ")
    assert state in message
    assert "\n" not in message
    # every moment: the key a sync would use now is accepted by the receiving host
    assert bench.receiver.accepts(bench.files.key)
    if step <= 4:
        assert bench.files.key.read_bytes() == old_key
    else:
        assert bench.files.key.read_bytes() != old_key

    monkeypatch.setattr(bench, "make_pair", good_make)
    monkeypatch.setattr(rotate, "_delete_old_pair", real_delete)
    bench.receiver.fail = None
    bench.fail_push = bench.fail_lock = False
    outcome = rotate.rotate(bench.rotation())

    # the files alone tell where to go on: before the swap, step 2 is repeated (it is
    # idempotent on the receiving host), after it, step 5
    assert outcome.started_at == {1: 1, 2: 2, 3: 2, 4: 2, 5: 5, 6: 5}[step]
    assert bench.made == 1  # a leftover KEY.next was reused, never made again
    assert leftovers(bench.files) == {".backups.rotate.lock"}
    assert bench.receiver.accepts(bench.files.key)
    assert bench.files.key.read_bytes() != old_key
    assert key_in(bench.files.key) == blob(bench.files.pub.read_text())
    assert len([ln for ln in bench.receiver.text.splitlines() if OPTIONS in ln]) == 1


def test_a_failed_step_keeps_the_exit_code_of_its_cause(bench: Bench) -> None:
    bench.fail_lock = True
    with pytest.raises(KeyforgeError) as failed:
        rotate.rotate(bench.rotation())
    assert failed.value.exit_code == LockedError.exit_code


def test_every_moment_of_the_swap_leaves_one_whole_pair(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between any two file operations of step 4 the key is a private key whose .pub is its
    own or absent: ssh never pairs one key's private half with the other's public half."""
    files = bench.files
    bench.make_pair(keys.generate("ed25519", comment="x").public_line)
    keys.write_pair(files.next, keys.generate("ed25519", comment="next"), force=False)
    moments: list[str] = []

    def check() -> None:
        private = key_in(files.key)
        if files.pub.exists():
            assert blob(files.pub.read_text()) == private
        moments.append(private)

    real_replace, real_unlink = Path.replace, Path.unlink

    def replace(self: Path, target: Path) -> Path:
        result = real_replace(self, target)
        check()
        return result

    def unlink(self: Path, missing_ok: bool = False) -> None:
        real_unlink(self, missing_ok=missing_ok)
        check()

    monkeypatch.setattr(Path, "replace", replace)
    monkeypatch.setattr(Path, "unlink", unlink)
    rotate.keep_old_pair(files, rotate.public_line_of_private(files.key, comment="c"))
    rotate.put_next_in_place(files)

    assert len(set(moments)) == 2  # the old pair, then the new one
    assert key_in(files.old) == moments[0]


@pytest.mark.parametrize(
    ("present", "step"),
    [
        (set(), 1),
        ({"next_pub"}, 1),
        ({"next"}, 2),
        ({"next", "next_pub"}, 2),
        ({"next", "next_pub", "old_pub"}, 4),
        ({"next", "next_pub", "old_pub", "old"}, 4),
        ({"next_pub", "old_pub", "old"}, 4),
        ({"old_pub", "old"}, 5),
        ({"old_pub"}, 5),
        ({"old"}, 5),
    ],
)
def test_where_a_run_stopped_is_read_from_the_files(present: set[str], step: int) -> None:
    assert rotate.first_step(present) == step


def test_a_rerun_after_a_crash_in_the_middle_of_the_swap_finishes_it(bench: Bench) -> None:
    files = bench.files
    old = key_in(files.key)
    new_pair = keys.generate("ed25519", comment="next")
    keys.write_pair(files.next, new_pair, force=False)
    bench.receiver.install_like(files.pub.read_text(), new_pair.public_line)
    rotate.keep_old_pair(files, files.pub.read_text().strip())
    files.pub.unlink()  # killed right here, between two renames

    outcome = rotate.rotate(bench.rotation())

    assert outcome.started_at == 4
    assert key_in(files.key) == blob(new_pair.public_line)
    assert old not in bench.receiver.text
    assert leftovers(files) == {".backups.rotate.lock"}


def test_a_leftover_next_key_whose_pub_belongs_to_another_key_is_refused_and_kept(
    bench: Bench,
) -> None:
    files = bench.files
    keys.write_pair(files.next, keys.generate("ed25519", comment="next"), force=False)
    stranger = keys.generate("ed25519", comment="stranger").public_line + "\n"
    files.next_pub.write_text(stranger)
    private = files.next.read_bytes()

    with pytest.raises(KeyforgeError, match=r"does not belong to .* remove both"):
        rotate.rotate(bench.rotation())

    assert files.next.read_bytes() == private
    assert files.next_pub.read_text() == stranger
    assert bench.receiver.calls == []


def test_a_leftover_next_key_readable_by_others_is_refused(bench: Bench) -> None:
    keys.write_pair(bench.files.next, keys.generate("ed25519", comment="n"), force=False)
    bench.files.next.chmod(0o644)
    with pytest.raises(KeyforgeError, match="readable by others"):
        rotate.rotate(bench.rotation())
    assert bench.receiver.calls == []


def test_a_leftover_next_key_without_its_pub_gets_it_back(bench: Bench) -> None:
    files = bench.files
    pair = keys.generate("ed25519", comment="next")
    keys.write_pair(files.next, pair, force=False)
    files.next_pub.unlink()

    rotate.rotate(bench.rotation())

    assert key_in(files.key) == blob(pair.public_line)
    assert bench.made == 0


def test_a_second_rotation_of_the_same_key_is_refused_while_one_runs(bench: Bench) -> None:
    with fsutil.locked(bench.files.lock), pytest.raises(LockedError):
        rotate.rotate(bench.rotation())
    assert bench.receiver.calls == []


def test_the_plan_lists_the_remaining_steps(bench: Bench) -> None:
    fresh = rotate.plan_lines(bench.files, 1, "foo@pi")
    assert [line[:2] for line in fresh] == ["1.", "2.", "3.", "4.", "5.", "6."]
    later = rotate.plan_lines(bench.files, 5, "foo@pi")
    assert later[0].startswith("continuing an earlier run from step 5")
    assert [line[:2] for line in later[1:]] == ["5.", "6."]


# --- settings, the admin channel, the target ---------------------------------------------------


def test_the_new_key_has_the_old_keys_type_and_a_strong_enough_size() -> None:
    rsa2048 = "ssh-rsa " + _rsa_blob(2048)
    assert rotate.new_pair_settings(rsa2048, None, None) == ("rsa", 3072)
    ed = keys.generate("ed25519", comment="x").public_line
    assert rotate.new_pair_settings(ed, None, None) == ("ed25519", None)
    ecdsa = keys.generate("ecdsa", 384, comment="x").public_line
    assert rotate.new_pair_settings(ecdsa, None, None) == ("ecdsa", 384)
    assert rotate.new_pair_settings(ed, "rsa", 4096) == ("rsa", 4096)


def _rsa_blob(bits: int) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits).public_key()
    raw = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return raw.decode().split()[1]


def test_a_bad_key_type_is_refused_before_anything_happens() -> None:
    with pytest.raises(KeyforgeError, match="DSA"):
        rotate.pair_maker("dsa", None, None)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("root", ("root", "192.0.2.10")),
        ("admin@pi.example", ("admin", "pi.example")),
        ("admin@[2001:db8::1]", ("admin", "2001:db8::1")),
    ],
)
def test_admin_names_a_user_and_optionally_a_host(spec: str, expected: tuple[str, str]) -> None:
    assert rotate.parse_admin(spec, "192.0.2.10") == expected


@pytest.mark.parametrize("spec", ["-oProxyCommand=x", "root@-x", "a b@host", "@host"])
def test_admin_refuses_what_ssh_would_read_as_an_option_or_split(spec: str) -> None:
    with pytest.raises(UsageError):
        rotate.parse_admin(spec, "192.0.2.10")


def _receiver(**overrides: object) -> rotate.SshReceiver:
    values: dict[str, object] = {
        "ssh": "/usr/bin/ssh",
        "user": "root",
        "host": "192.0.2.10",
        "port": 2222,
        "identity": Path("/root/.ssh/admin"),
        "known_hosts": Path("/etc/keyforge/known_hosts"),
    }
    values.update(overrides)
    return rotate.SshReceiver(**values)  # type: ignore[arg-type]


def test_the_admin_channel_uses_the_pinned_host_key_and_sends_keys_on_stdin() -> None:
    seen: list[tuple[list[str], bytes]] = []

    def run(argv: object, data: bytes) -> runner.Result:
        seen.append((list(argv), data))  # type: ignore[call-overload]
        return runner.Result(tuple(argv), 0, b"added key SHA256:x to f (line 3)\n", "")  # type: ignore[arg-type]

    old = keys.generate("ed25519", comment="old").public_line
    new = keys.generate("ed25519", comment="new").public_line
    receiver = _receiver(run=run, authorized_keys="/home/foo/.ssh/authorized_keys")

    note = receiver.install_like(old, new)
    receiver.revoke(old)

    argv, data = seen[0]
    assert argv[:5] == ["/usr/bin/ssh", "-p", "2222", "-i", "/root/.ssh/admin"]
    assert "UserKnownHostsFile=/etc/keyforge/known_hosts" in argv
    assert "StrictHostKeyChecking=yes" in argv
    assert "IdentitiesOnly=yes" in argv
    assert argv[-4:-1] == ["root", "--", "192.0.2.10"]
    fingerprint = keys.parse_public_line(old).sha256
    assert argv[-1] == (
        f"keyforge install --key - --like {fingerprint} "
        "--authorized-keys /home/foo/.ssh/authorized_keys"
    )
    assert data == (new + "\n").encode()
    assert note == "added key SHA256:x to f (line 3)"
    revoke_argv, revoke_data = seen[1]
    assert (
        revoke_argv[-1]
        == "keyforge revoke --key - --authorized-keys /home/foo/.ssh/authorized_keys"
    )
    assert revoke_data == (old + "\n").encode()


def test_a_refusal_on_the_receiving_host_is_reported_in_its_own_words() -> None:
    def run(argv: object, data: bytes) -> runner.Result:
        stderr = (
            "keyforge: error: the old key SHA256:abc is not in /home/foo/.ssh/authorized_keys\n"
        )
        return runner.Result((), 1, b"", stderr)

    old = keys.generate("ed25519", comment="old").public_line
    with pytest.raises(CommandError, match=r"install --like on root@192\.0\.2\.10 failed: the old"):
        _receiver(run=run).install_like(old, old)


def test_an_unreachable_receiving_host_is_reported_as_ssh() -> None:
    def run(argv: object, data: bytes) -> runner.Result:
        return runner.Result((), 255, b"", "ssh: connect to host 192.0.2.10 port 2222: refused\n")

    old = keys.generate("ed25519", comment="old").public_line
    with pytest.raises(CommandError, match="failed: ssh: ssh: connect to host"):
        _receiver(run=run).revoke(old)


def _config(*targets: dict[str, object]) -> config.Config:
    return config.parse({"targets": list(targets)})


def _remote(name: str, key: str = "/root/.ssh/backups") -> dict[str, object]:
    return {
        "name": name,
        "host": "192.0.2.10",
        "user": "foo",
        "key": key,
        "remote_path": "srv/",
        "known_hosts": "/etc/keyforge/known_hosts",
    }


def test_the_only_target_is_the_default_and_several_need_a_name() -> None:
    assert rotate.remote_target(_config(_remote("pi")), None).name == "pi"
    two = _config(_remote("pi"), _remote("nas", key="/root/.ssh/nas"))
    with pytest.raises(UsageError, match="choose one with --target"):
        rotate.remote_target(two, None)
    assert rotate.remote_target(two, "nas").key == Path("/root/.ssh/nas")


def test_a_key_shared_by_two_targets_is_refused() -> None:
    shared = _config(_remote("pi"), _remote("nas"))
    with pytest.raises(UsageError, match=r"also used by target.*nas"):
        rotate.remote_target(shared, "pi")


def test_a_local_drive_has_no_key_to_rotate() -> None:
    with pytest.raises(UsageError, match="local drive"):
        rotate.remote_target(_config({"name": "usb", "path": "/mnt/usb"}), None)


def test_the_receiver_options_must_say_how_to_reach_the_receiving_host() -> None:
    target = rotate.remote_target(_config(_remote("pi")), None)
    with pytest.raises(UsageError, match="--admin USER@HOST"):
        rotate.receiver_for(target, admin=None, admin_key=None, authorized_keys=None)
    with pytest.raises(UsageError, match="--admin needs --admin-key"):
        rotate.receiver_for(target, admin="root", admin_key=None, authorized_keys=None)
    local = rotate.receiver_for(target, admin=None, admin_key=None, authorized_keys="/x/ak")
    assert local.where == "/x/ak"
