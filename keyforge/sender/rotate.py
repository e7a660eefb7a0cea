"""keyforge rotate: replace the backup key with a new pair while every backup keeps working.

The steps, each safe to stop after:

1. a new pair ``KEY.next`` / ``KEY.next.pub`` beside the old one (0600 from the first byte);
2. the new key installed on the receiving host right after the old key's line, with exactly
   that line's options (``keyforge install --like``); both keys now work;
3. a real push of the target with the new key, as ``keyforge sync`` runs it;
4. the files swapped under the backup directory's lock, so a sync reads either the old pair
   or the new one, never a mix: the old pair is kept as ``KEY.old``;
5. the old key revoked on the receiving host;
6. the old private key deleted.

Where a run stopped is read back from the key files alone, so running rotate again continues
from there: a leftover ``KEY.next`` is checked and reused, never overwritten. The core takes a
``Receiver`` (the receiving host's authorized_keys, reached over ssh with an admin key or on
this machine) and a push callable, so the order of the steps is tested without ssh.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import shlex
import stat
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

from keyforge.config import Config
from keyforge.errors import (
    CommandError,
    FileError,
    KeyforgeError,
    KeyMaterialError,
    UsageError,
)
from keyforge.infra import fsutil, runner
from keyforge.layout import lock_path
from keyforge.sender import sync
from keyforge.ssh import client, keys

STEPS: dict[int, str] = {
    1: "make the new key pair",
    2: "install the new key beside the old one on the receiving host",
    3: "test push with the new key",
    4: "put the new key pair in place of the old one",
    5: "revoke the old key on the receiving host",
    6: "delete the old private key",
}
DONE = 7  # the step after the last: nothing left to do

_KEY_TYPES = {"ssh-ed25519": "ed25519", "ssh-rsa": "rsa"}


# --- the key files and where a run stopped (pure) ---------------------------------------------


@dataclasses.dataclass(frozen=True)
class KeyFiles:
    """The backup key's files: the pair in use, the next one, and the old one kept for revoke."""

    key: Path

    @property
    def pub(self) -> Path:
        return keys.public_path_for(self.key)

    @property
    def next(self) -> Path:
        return self.key.with_name(self.key.name + ".next")

    @property
    def next_pub(self) -> Path:
        return keys.public_path_for(self.next)

    @property
    def old(self) -> Path:
        return self.key.with_name(self.key.name + ".old")

    @property
    def old_pub(self) -> Path:
        return keys.public_path_for(self.old)

    @property
    def lock(self) -> Path:
        return self.key.with_name(f".{self.key.name}.rotate.lock")

    def present(self) -> frozenset[str]:
        """Which of next, next_pub, old, old_pub exist (a dangling name counts as there)."""
        names = ("next", "next_pub", "old", "old_pub")
        return frozenset(n for n in names if os.path.lexists(getattr(self, n)))


def first_step(present: Collection[str]) -> int:
    """The step a run continues from, given which of next/next_pub/old/old_pub exist.

    The files appear and go in one order (next, next_pub; old_pub, old; next and next_pub
    renamed over the pair in use; old, old_pub deleted), so each set names one moment.
    """
    if "old" in present:
        return 4 if "next" in present or "next_pub" in present else 5
    if "old_pub" in present:
        return 4 if "next" in present else 5
    if "next" in present:
        return 2
    return 1


def state_after_failure(step: int, files: KeyFiles) -> str:
    """What a failed step leaves behind, in words a user can act on."""
    again = "rerun 'keyforge rotate' to continue"
    if step == 1:
        return f"the old key {files.key} is unchanged and still in use; {again}"
    if step == 2:
        return (
            f"the new pair {files.next} is kept; the old key still works and stays in use; "
            f"{again} (it reuses {files.next})"
        )
    if step == 3:
        return (
            "the new key is installed beside the old one on the receiving host; the old key "
            f"still works and stays in use; {again}"
        )
    if step == 4:
        return (
            f"both keys are installed on the receiving host and {files.key} holds one whole "
            f"pair, so syncs keep working; {again}"
        )
    if step == 5:
        return (
            f"{files.key} holds the new key and syncs use it; the old key (kept as "
            f"{files.old}) is still accepted by the receiving host; rerun 'keyforge rotate' to "
            "revoke it"
        )
    return (
        f"the old key is revoked on the receiving host; its private key {files.old} is still "
        "here; rerun 'keyforge rotate' to delete it"
    )


def plan_lines(files: KeyFiles, start: int, receiver: str) -> list[str]:
    """What a run would do from step ``start``: one line per step."""
    what = {
        1: f"make a new key pair {files.next} (0600) and {files.next_pub}",
        2: f"install {files.next_pub} right after the old key's line on {receiver}, with "
        "exactly its options (the old line stays)",
        3: f"push the backup directory to the target with {files.next}, as keyforge sync does",
        4: f"under the backup lock: keep the old pair as {files.old}, then rename "
        f"{files.next} to {files.key} and {files.next_pub} to {files.pub}",
        5: f"revoke the old key ({files.old_pub}) on {receiver}",
        6: f"delete {files.old} and {files.old_pub}",
    }
    lines = [f"{n}. {what[n]}" for n in range(start, DONE)]
    if start > 1:
        lines.insert(0, f"continuing an earlier run from step {start} ({STEPS[start]})")
    return lines


# --- reading keys ------------------------------------------------------------------------------


def public_line_of_private(path: Path, *, comment: str = "") -> str:
    """The OpenSSH public key line of the unencrypted private key at ``path``."""
    from cryptography.exceptions import UnsupportedAlgorithm  # noqa: PLC0415 - heavy
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    try:
        data = path.read_bytes()
    except OSError as err:
        raise FileError.from_os_error("read", path, err) from err
    try:
        private = serialization.load_ssh_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyMaterialError(
            f"{path} is not an unencrypted OpenSSH private key keyforge can read"
        ) from None
    public = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return public.decode("ascii") + (f" {comment}" if comment else "")


def _comment_of(pub: Path) -> str:
    with contextlib.suppress(OSError, UnicodeDecodeError, KeyforgeError):
        return keys.parse_public_line(pub.read_text("utf-8")).comment
    return ""


def _refuse_loose_private(path: Path) -> None:
    try:
        mode = stat.S_IMODE(path.lstat().st_mode)
    except OSError as err:
        raise FileError.from_os_error("read", path, err) from err
    if not path.is_file() or path.is_symlink():
        raise FileError(f"{path} is not a regular file; remove it and rerun keyforge rotate")
    if mode & 0o077:
        raise KeyMaterialError(
            f"{path} is readable by others (mode {mode:04o}), so it may have leaked: remove it "
            f"and {path.name}.pub, then rerun keyforge rotate to make a fresh pair"
        )


def checked_next_pair(files: KeyFiles) -> str:
    """The public line of a leftover ``KEY.next``; its .pub is restored when missing.

    A .pub that belongs to another key is refused rather than overwritten: the user decides.
    """
    _refuse_loose_private(files.next)
    if not os.path.lexists(files.next_pub):
        line = public_line_of_private(files.next, comment=_comment_of(files.pub))
        fsutil.atomic_write(
            files.next_pub, (line + "\n").encode(), mode=keys.PUBLIC_FILE_MODE, exclusive=True
        )
        return line
    derived = public_line_of_private(files.next)
    try:
        written = files.next_pub.read_text("utf-8").strip()
        public = keys.parse_public_line(written)
    except (OSError, UnicodeDecodeError, KeyforgeError):
        raise KeyMaterialError(
            f"{files.next_pub} is not a public key; remove {files.next} and {files.next_pub} "
            "and rerun keyforge rotate"
        ) from None
    if public.blob != keys.parse_public_line(derived).blob:
        raise KeyMaterialError(
            f"{files.next_pub} does not belong to {files.next}; keyforge will not guess which "
            "one to keep: remove both and rerun keyforge rotate"
        )
    return written


def old_public_line(files: KeyFiles) -> str:
    """The key being replaced: the pair in use until step 4, the kept old pair afterwards."""
    if os.path.lexists(files.old_pub):
        return files.old_pub.read_text("utf-8").strip()
    if os.path.lexists(files.old):
        return public_line_of_private(files.old)
    return public_line_of_private(files.key, comment=_comment_of(files.pub))


def new_pair_settings(
    old_public: str, key_type: str | None, bits: int | None
) -> tuple[str, int | None]:
    """The new key's type and size: as asked, else the old key's (RSA at least 3072 bits)."""
    if key_type is not None:
        return key_type, bits
    old = keys.parse_public_line(old_public)
    if old.algorithm in _KEY_TYPES:
        kind = _KEY_TYPES[old.algorithm]
        if kind == "rsa":
            return kind, bits if bits is not None else max(old.bits, keys.MIN_RSA_BITS)
        return kind, bits
    if old.algorithm.startswith("ecdsa-sha2-"):
        return "ecdsa", bits if bits is not None else old.bits
    return keys.DEFAULT_KEY_TYPE, bits


# --- the receiving host ------------------------------------------------------------------------


class Receiver(Protocol):
    """The receiving host's authorized_keys, as rotate changes it."""

    @property
    def where(self) -> str: ...

    def install_like(self, old_public: str, new_public: str) -> str:
        """Install ``new_public`` beside ``old_public`` with its options; return a note."""
        ...

    def revoke(self, old_public: str) -> str:
        """Remove every line holding ``old_public``; return a note."""
        ...


@dataclasses.dataclass(frozen=True)
class LocalReceiver:
    """An authorized_keys file on this machine (a receiving host that is also the sender)."""

    path: Path

    @property
    def where(self) -> str:
        return str(self.path)

    def install_like(self, old_public: str, new_public: str) -> str:
        from keyforge.receiver import install  # noqa: PLC0415 - jinja2 only when a line is written

        old = install.public_key_from_text(old_public, source="the old key")
        new = install.public_key_from_text(new_public, source="the new key")
        result = install.install_key_like(self.path, new, old)
        return _note(result.action, new.fingerprint(), self.path, result.plan.linenos)

    def revoke(self, old_public: str) -> str:
        from keyforge.receiver import install  # noqa: PLC0415

        old = install.public_key_from_text(old_public, source="the old key")
        result = install.revoke_key(self.path, old)
        return _note(result.action, old.fingerprint(), self.path, result.plan.linenos)


def _note(action: str, fingerprint: str, path: Path, linenos: Sequence[int]) -> str:
    where = f" (line {', '.join(map(str, linenos))})" if linenos else ""
    return f"{action}: key {fingerprint} in {path}{where}"


@dataclasses.dataclass(frozen=True)
class SshReceiver:
    """keyforge on the receiving host, run over ssh as an admin (the backup key cannot).

    The admin key goes through the target's pinned known_hosts, like the sync itself; the
    public keys travel on stdin, so nothing but fixed words and a fingerprint is on the
    remote command line.
    """

    ssh: str
    user: str
    host: str
    port: int
    identity: Path
    known_hosts: Path
    authorized_keys: str | None = None
    keyforge: str = "keyforge"
    connect_timeout: int = client.CONNECT_TIMEOUT
    run: Callable[[Sequence[str], bytes], runner.Result] = runner.run_with_input

    @property
    def where(self) -> str:
        login = f"{self.user}@{self.host}"
        target = f" ({self.authorized_keys})" if self.authorized_keys else ""
        return f"{login}{target}"

    def argv(self, remote: Sequence[str]) -> list[str]:
        """The ssh command running ``remote`` there; ssh hands the words to a shell, so quoted."""
        ssh = client.ssh_argv(
            self.ssh,
            self.port,
            self.identity,
            self.known_hosts,
            connect_timeout=self.connect_timeout,
        )
        return [*ssh, "-l", self.user, "--", self.host, shlex.join(remote)]

    def _file_option(self) -> list[str]:
        return ["--authorized-keys", self.authorized_keys] if self.authorized_keys else []

    def install_like(self, old_public: str, new_public: str) -> str:
        like = keys.parse_public_line(old_public).sha256
        remote = [self.keyforge, "install", "--key", "-", "--like", like, *self._file_option()]
        return self._call(remote, new_public, "keyforge install --like")

    def revoke(self, old_public: str) -> str:
        remote = [self.keyforge, "revoke", "--key", "-", *self._file_option()]
        return self._call(remote, old_public, "keyforge revoke")

    def _call(self, remote: Sequence[str], public_line: str, what: str) -> str:
        result = self.run(self.argv(remote), (public_line.strip() + "\n").encode())
        if result.returncode == 0:
            lines = result.stdout.decode("utf-8", "replace").splitlines()
            return lines[0] if lines else f"{what} done on {self.where}"
        raise CommandError(f"{what} on {self.where} failed: {_remote_error(result)}")


def _remote_error(result: runner.Result) -> str:
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("keyforge: error: "):
            return line.removeprefix("keyforge: error: ")
    if result.returncode == 255:
        return "ssh: " + (lines[-1] if lines else "could not connect")
    return lines[0] if lines else f"exit status {result.returncode}"


def parse_admin(spec: str, default_host: str) -> tuple[str, str]:
    """``--admin USER[@HOST]`` as (user, host); the host defaults to the target's."""
    user, _, host = spec.partition("@")
    host = host or default_host
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not client.is_login_name(user):
        raise UsageError(f"--admin needs USER or USER@HOST with a login name, got {spec!r}")
    if not client.is_host(host):
        raise UsageError(f"--admin host must be a host name or an IP address, got {host!r}")
    return user, host


# --- the rotation ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Outcome:
    started_at: int  # the first step this run did (1 unless it continued an earlier run)
    old_fingerprint: str
    new_fingerprint: str


@dataclasses.dataclass(frozen=True)
class Rotation:
    """Everything a rotation touches, so tests can replace each part."""

    files: KeyFiles
    receiver: Receiver
    push: Callable[[Path], None]  # a real push with the given private key; raises on failure
    swap_lock: Callable[[], AbstractContextManager[None]]  # the lock syncs take
    make_pair: Callable[[str], keys.KeyPair]  # the new pair, given the old public key line
    say: Callable[[str], None] = lambda message: None


@contextlib.contextmanager
def _step(number: int, files: KeyFiles) -> Iterator[None]:
    """Turn any failure inside step ``number`` into one line: the step, the cause, the state."""
    try:
        yield
    except KeyforgeError as err:
        raise _failed(number, files, str(err), err.exit_code) from err
    except OSError as err:
        cause = FileError.from_os_error("change", err.filename or "a key file", err)
        raise _failed(number, files, str(cause), cause.exit_code) from err


def _failed(number: int, files: KeyFiles, cause: str, exit_code: int) -> KeyforgeError:
    error = KeyforgeError(
        f"rotate step {number} ({STEPS[number]}) failed: {cause}. "
        f"{state_after_failure(number, files)}"
    )
    error.exit_code = exit_code
    return error


def _make_next_pair(rotation: Rotation, old_public: str) -> str:
    files = rotation.files
    if os.path.lexists(files.next_pub) and not os.path.lexists(files.next):
        # a .pub without its private key is of no use and would block the new pair
        files.next_pub.unlink()
    pair = rotation.make_pair(old_public)
    keys.write_pair(files.next, pair, force=False)
    return pair.public_line


def keep_old_pair(files: KeyFiles, old_public: str) -> None:
    """Step 4's first half: the pair in use, kept whole as ``KEY.old`` (public half first)."""
    if os.path.lexists(files.old):
        return
    fsutil.atomic_write(files.old_pub, (old_public + "\n").encode(), mode=keys.PUBLIC_FILE_MODE)
    try:
        os.link(files.key, files.old)
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.EXDEV, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        fsutil.atomic_write(
            files.old, files.key.read_bytes(), mode=fsutil.PRIVATE_FILE, exclusive=True
        )
    fsutil.fsync_dir(files.key.parent)


def put_next_in_place(files: KeyFiles) -> None:
    """Step 4's second half: at every moment KEY is one whole private key, and KEY.pub is
    either its public half or absent (ssh then derives the public key from the private)."""
    if os.path.lexists(files.next):
        files.pub.unlink(missing_ok=True)
        files.next.replace(files.key)
    if os.path.lexists(files.next_pub):
        files.next_pub.replace(files.pub)
    fsutil.fsync_dir(files.key.parent)


def _delete_old_pair(files: KeyFiles) -> None:
    files.old.unlink(missing_ok=True)  # the secret first
    files.old_pub.unlink(missing_ok=True)
    fsutil.fsync_dir(files.key.parent)


def rotate(rotation: Rotation) -> Outcome:
    """Run the rotation from wherever an earlier run stopped; return the two fingerprints.

    Two rotations of one key never run at once: the second is refused at the start.
    """
    with fsutil.locked(rotation.files.lock, wait=False):
        return _rotate(rotation)


def _rotate(rotation: Rotation) -> Outcome:
    files, say = rotation.files, rotation.say
    start = first_step(files.present())
    if start > 1:
        say(f"continuing an earlier rotation from step {start} ({STEPS[start]})")
    old_public = old_public_line(files)
    old_fingerprint = keys.parse_public_line(old_public).sha256
    new_public = ""
    if start <= 2:
        with _step(1, files):
            if start == 1:
                new_public = _make_next_pair(rotation, old_public)
                say(f"1/6 made the new key pair {files.next}")
            else:
                new_public = checked_next_pair(files)
                say(f"1/6 reusing the new key pair {files.next} from the earlier run")
        with _step(2, files):
            note = rotation.receiver.install_like(old_public, new_public)
            say(f"2/6 new key installed beside the old one on {rotation.receiver.where}: {note}")
        with _step(3, files):
            rotation.push(files.next)
            say("3/6 test push with the new key: ok")
    if start <= 4:
        with _step(4, files):
            if not new_public:
                new_public = _pending_new_public(files)
            with rotation.swap_lock():
                keep_old_pair(files, old_public)
                put_next_in_place(files)
            say(f"4/6 {files.key} now holds the new key; the old pair is kept as {files.old}")
    with _step(5, files):
        note = rotation.receiver.revoke(old_public)
        say(f"5/6 revoked the old key on {rotation.receiver.where}: {note}")
    with _step(6, files):
        _delete_old_pair(files)
        say(f"6/6 deleted the old private key {files.old}")
    if not new_public:
        new_public = public_line_of_private(files.key)
    return Outcome(start, old_fingerprint, keys.parse_public_line(new_public).sha256)


def _pending_new_public(files: KeyFiles) -> str:
    if os.path.lexists(files.next):
        return public_line_of_private(files.next)
    return public_line_of_private(files.key)


# --- from the config (side effects) -------------------------------------------------------------


def remote_target(config: Config, target_name: str | None) -> sync.RemoteTarget:
    """The [[targets]] entry whose key rotates: the one named, or the only one."""
    every = sync.select_targets(config.targets, None)
    if target_name is None and len(every) > 1:
        names = ", ".join(t.name for t in every)
        raise UsageError(f"several [[targets]] are configured ({names}); choose one with --target")
    [target] = sync.select_targets(config.targets, target_name)
    if not isinstance(target, sync.RemoteTarget):
        raise UsageError(f"target {target.name} is a local drive: it has no key to rotate")
    sharing = [
        t.name
        for t in every
        if isinstance(t, sync.RemoteTarget) and t.name != target.name and t.key == target.key
    ]
    if sharing:
        raise UsageError(
            f"the key {target.key} is also used by target(s) {', '.join(sharing)}: after the "
            "rotation they would refuse it; give each target its own key first"
        )
    return target


def sync_push(
    config: Config, target: sync.RemoteTarget, notify: Callable[[str], None]
) -> Callable[[Path], None]:
    """The test push: ``keyforge sync`` of ``target`` with another private key, as is."""
    names = [t.name for t in sync.select_targets(config.targets, None)]
    index = names.index(target.name)

    def push(key: Path) -> None:
        targets = list(config.targets)
        targets[index] = dataclasses.replace(targets[index], key=str(key))
        with_key = dataclasses.replace(config, targets=tuple(targets))
        effects = sync.Effects(notify=notify)
        reports = sync.sync(with_key, target.name, wait=True, effects=effects)
        failed = [report for report in reports if not report.ok]
        if failed or not reports:
            raise CommandError(sync.summary(failed[0]) if failed else "nothing was pushed")

    return push


def backup_lock(config: Config) -> Callable[[], AbstractContextManager[None]]:
    """The lock keyforge sync and keyforge backup hold: a sync never sees half a swap."""
    lock = lock_path(sync.source_dir(config))
    return lambda: fsutil.locked(lock, wait=True)


def pair_maker(
    key_type: str | None, bits: int | None, comment: str | None
) -> Callable[[str], keys.KeyPair]:
    """Make the new pair like the old one: same type (and size), same comment, unless asked."""
    if key_type is not None:
        keys.resolve_bits(key_type, bits)  # refuse a bad request before anything happens
    if comment is not None:
        keys.check_comment(comment)

    def make(old_public: str) -> keys.KeyPair:
        kind, size = new_pair_settings(old_public, key_type, bits)
        text = comment
        if text is None:
            text = keys.parse_public_line(old_public).comment or keys.default_comment()
        return keys.generate(kind, size, comment=keys.check_comment(text))

    return make


def receiver_for(
    target: sync.RemoteTarget,
    *,
    admin: str | None,
    admin_key: Path | None,
    authorized_keys: str | None,
    remote_keyforge: str = "keyforge",
) -> Receiver:
    """The receiving host as the options name it: over ssh as an admin, or a local file."""
    if admin is None:
        if admin_key is not None:
            raise UsageError("--admin-key goes with --admin")
        if authorized_keys is None:
            raise UsageError(
                "say how to reach the receiving host's authorized_keys: --admin USER@HOST "
                "--admin-key PATH (over ssh), or --authorized-keys PATH (on this machine)"
            )
        return LocalReceiver(Path(authorized_keys))
    if admin_key is None:
        raise UsageError("--admin needs --admin-key: the admin's private key for ssh")
    if not admin_key.is_file():
        raise FileError(f"the admin key {admin_key} does not exist or is not a file")
    user, host = parse_admin(admin, target.host)
    return SshReceiver(
        ssh=sync.find_tools().ssh,
        user=user,
        host=host,
        port=target.port,
        identity=admin_key.absolute(),
        known_hosts=target.known_hosts,
        authorized_keys=authorized_keys,
        keyforge=remote_keyforge,
    )
