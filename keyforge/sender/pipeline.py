"""The archive pipelines: one function writes an archive, one reads it back.

Every archive keyforge makes (a source's tarball; a database dump) is written by
``write_archive``, and every reader (restore, verify, a dump's restore, a listing) goes through
``read_archive``, so compression, encryption, hashing and the failure messages are the same
everywhere:

* write: ``producer | compressor [| age --encrypt -r …] > .NAME.partial``. The last program
  writes the file itself; a thread follows the file as it grows and hashes every byte (the
  ciphertext, when encrypted), so no archive byte crosses a pipe into keyforge and no
  plaintext byte is ever written to disk, temporary files included. With ``test`` the
  compressed stream is read back by ``zstd -t`` / ``gzip -t`` as it is made: from the file when
  plaintext, from a copy of the pipe into age when encrypted (tee(2), zero-copy). The file
  gets its final name only once every program, the check and the fsync succeeded.
* read: ``[age --decrypt -i IDENTITY] FILE | decompressor | consumer``, where the consumer is a
  program (tar -x, psql) or a Python function reading the stream (tarfile). A failure names the
  archive: a wrong identity, a truncated or corrupted ciphertext, a damaged compressed stream.

Only recipients (public keys) reach the sending server's argv; an identity is given to age as
a file name, never its content.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import os
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, TypeVar, overload

from keyforge import age
from keyforge.errors import CommandError, FileError, KeyMaterialError
from keyforge.infra import fsutil, runner
from keyforge.layout import (
    ARCHIVE_HASH,
    ARCHIVE_HASHES,
    ENCRYPTED_SUFFIX,
    PARTIAL_SUFFIX,
    is_encrypted_name,
    partial_name,
)

T = TypeVar("T")


# --- argv (pure) -----------------------------------------------------------------------------


def compress_argv(compression: str, level: int) -> list[str]:
    if compression == "zstd":
        return ["zstd", "-T0", f"-{level}", "-q", "-c"]
    return [compression, f"-{level}", "-c"]


def decompressor_of(archive: Path) -> str:
    name = archive.name.removesuffix(PARTIAL_SUFFIX).removesuffix(ENCRYPTED_SUFFIX)
    return "zstd" if name.endswith(".zst") else "gzip"


def decompress_argv(archive: Path | None, *, of: Path | None = None) -> list[str]:
    """The decompressor for ``archive`` reading that file, or (``archive`` None) reading stdin
    for the archive ``of``."""
    named = archive if archive is not None else of
    assert named is not None
    argv = [decompressor_of(named), "-d", "-c", "-q"]
    return [*argv, str(archive)] if archive is not None else argv


def test_stdin_argv(compression: str) -> list[str]:
    """Test a compressed stream arriving on stdin (pigz output is plain gzip)."""
    if compression == "zstd":
        return ["zstd", "-t", "-q", "-"]
    return ["gzip", "-t", "-q", "-"]


def read_argvs(archive: Path, identity: Path | None) -> list[list[str]]:
    """The programs that turn ``archive`` into its tar (or dump) stream on stdout."""
    if not is_encrypted_name(archive.name):
        return [decompress_argv(archive)]
    assert identity is not None
    return [
        ["age", "--decrypt", "--identity", str(identity), str(archive)],
        decompress_argv(None, of=archive),
    ]


# --- identities --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Identity:
    """An identity file given with --identity: its path and the recipients it decrypts for
    (public halves only; the secret stays in the file, which age reads itself)."""

    path: Path
    recipients: tuple[age.Recipient, ...]
    warnings: tuple[str, ...] = ()

    @property
    def fingerprints(self) -> frozenset[str]:
        return frozenset(r.fingerprint for r in self.recipients)


def load_identity(path: Path) -> Identity:
    """Read ``path`` as an age identity file (or an OpenSSH private key); KeyMaterialError
    naming it when it is none. A file others may read is warned about, not refused: a restore
    from a USB stick whose filesystem has no modes must still work."""
    try:
        st = path.stat()
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeyMaterialError(f"identity {path} does not exist") from None
    except IsADirectoryError:
        raise KeyMaterialError(f"identity {path} is a directory") from None
    except OSError as err:
        raise KeyMaterialError(f"cannot read identity {path}: {err.strerror or err}") from err
    try:
        recipients = age.identity_recipients(data)
    except KeyMaterialError as err:
        raise KeyMaterialError(f"identity {path}: {err}") from None
    warnings: tuple[str, ...] = ()
    if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
        warnings = (
            f"identity {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}); "
            "chmod 600 it, and keep it off the servers whose archives it opens",
        )
    return Identity(path, recipients, warnings)


def check_identity(archive: str, encrypted_to: Sequence[str], identity: Identity | None) -> None:
    """Refuse, naming the archive, an encrypted archive without an identity or with one that
    is not among its recipients (as its manifest records them), before age runs."""
    listed = ", ".join(encrypted_to) or "recipients the manifest does not list"
    if identity is None:
        raise KeyMaterialError(
            f"{archive} is encrypted (to {listed}); give --identity FILE with one of its keys"
        )
    if encrypted_to and not identity.fingerprints & set(encrypted_to):
        mine = ", ".join(sorted(identity.fingerprints))
        raise KeyMaterialError(
            f"identity {identity.path} ({mine}) cannot decrypt {archive}: it is encrypted to "
            f"{listed}"
        )


# --- writing -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Written:
    """An archive ``write_archive`` committed: its size and digest are those of the file."""

    path: Path
    size: int
    digest: str  # by layout.ARCHIVE_HASH
    producer: runner.Result
    encrypted_to: tuple[str, ...]


def _default_judge(result: runner.Result) -> None:
    if result.returncode != 0:
        name = result.argv[0] if result.argv else "the producer"
        raise CommandError(
            f"{name} failed: "
            + runner.first_error_line(result.stderr, fallback=f"exit status {result.returncode}")
        )


def write_archive(
    final: Path,
    producer: Sequence[str],
    *,
    compression: str,
    level: int,
    recipients: Sequence[age.Recipient] = (),
    test: bool = True,
    priority: runner.Priority | None = None,
    judge_producer: Callable[[runner.Result], None] = _default_judge,
    on_progress: Callable[[int], None] | None = None,
    what: str = "",
) -> Written:
    """Write ``producer``'s output, compressed and (with ``recipients``) encrypted, as ``final``.

    One pass: ``producer | compressor [| age] > .final.partial``, hashed as it is written. The
    partial file is renamed to ``final`` only after every program succeeded (``judge_producer``
    raises for a producer's failure; tar's exit 1 is its warning), the ``test`` read-back passed
    and the file was fsynced; on any failure it is removed. ``final``'s name must end in
    ``.age`` exactly when ``recipients`` are given. ``on_progress`` gets the bytes written so
    far, about twice a second. ``what`` names the archive in messages (default its name).

    Returns the committed archive's size and digest (of the ciphertext when encrypted), the
    producer's result (its warnings) and the recipients' fingerprints for the manifest.
    """
    if bool(recipients) != is_encrypted_name(final.name):
        raise ValueError(f"{final.name}: an encrypted archive's name ends in .age, no other's")
    what = what or final.name
    directory = final.parent
    partial = directory / partial_name(final.name)
    priority = priority or runner.Priority()
    try:
        # read-write: the last program writes through it (its stdout), the follower preads it
        fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_EXCL, fsutil.PRIVATE_FILE)
    except OSError as err:
        raise FileError.from_os_error("write in", directory, err) from err
    try:
        with os.fdopen(fd, "rb", buffering=0) as out:
            job = _WriteJob(out.fileno(), producer, compression, level, recipients, test, priority)
            produced, size, digest = job.run(judge_producer, on_progress, what)
        partial.replace(final)
        fsutil.fsync_dir(directory)
    except BaseException as err:
        with contextlib.suppress(OSError):
            partial.unlink()
        if isinstance(err, OSError):
            raise FileError.from_os_error("write", partial, err) from err
        raise
    return Written(final, size, digest, produced, age.fingerprints(recipients))


@dataclasses.dataclass
class _WriteJob:
    fd: int
    producer: Sequence[str]
    compression: str
    level: int
    recipients: Sequence[age.Recipient]
    test: bool
    priority: runner.Priority

    def run(
        self,
        judge_producer: Callable[[runner.Result], None],
        on_progress: Callable[[int], None] | None,
        what: str,
    ) -> tuple[runner.Result, int, str]:
        wrap = runner.wrap_priority
        checker = wrap(test_stdin_argv(self.compression), self.priority) if self.test else None
        stages = [wrap(self.producer, self.priority)]
        stages.append(wrap(compress_argv(self.compression, self.level), self.priority))
        encrypt = wrap(age.age_encrypt_argv(self.recipients), self.priority)
        encrypted = bool(self.recipients)

        def tick() -> None:
            if on_progress is not None:
                on_progress(os.fstat(self.fd).st_size)

        with contextlib.ExitStack() as stack:
            # plaintext: the check reads the file beside the hash; encrypted: it reads the
            # compressed stream on its way to age (_tee_into)
            follower = stack.enter_context(
                _ArchiveFollower(self.fd, None if encrypted else checker)
            )
            if not follower.writes_back:
                stack.enter_context(_flushing(self.fd))
            side_result: runner.Result | None = None
            if encrypted and checker is not None:
                results, side_result = self._teed(stages, encrypt, checker, tick)
            else:
                results = runner.run_chain(
                    [*stages, encrypt] if encrypted else stages,
                    stdout=self.fd,
                    on_tick=tick if on_progress is not None else None,
                )
            self._judge(results, side_result, judge_producer, what)
            check = follower.finish()
            check = side_result if check is None else check
            if check is not None and check.returncode != 0:
                raise CommandError(
                    f"{what} does not decompress: "
                    + runner.first_error_line(check.stderr, fallback="test failed")
                )
            size = os.fstat(self.fd).st_size
            if follower.size != size:
                raise CommandError(
                    f"{what} changed while it was hashed ({follower.size} of {size} bytes)"
                )
            os.fsync(self.fd)
        return results[0], size, follower.digest.hexdigest()

    def _teed(
        self,
        stages: Sequence[Sequence[str]],
        encrypt: Sequence[str],
        checker: Sequence[str],
        tick: Callable[[], None],
    ) -> tuple[tuple[runner.Result, ...], runner.Result]:
        """``producer | compressor``, its output copied to the checker and into age, which
        writes the file: the check sees the compressed stream before it is encrypted."""
        with (
            _SideChecker(checker) as side,
            runner.open_chain([encrypt], stdin=subprocess.PIPE, stdout=self.fd) as sink,
            runner.open_chain(stages) as source,
        ):
            encryptor = sink.procs[0].stdin
            assert encryptor is not None and side.stdin is not None
            for pipe in (encryptor, side.stdin):  # open_chain widened source.stdout
                runner.widen_pipe(pipe.fileno(), _TEE_CHUNK)
            _tee_into(source.stdout.fileno(), encryptor.fileno(), side.stdin.fileno(), tick)
            encryptor.close()
            side.stdin.close()
            results = (*source.finish(), *sink.results())
            return results, side.finish()

    def _judge(
        self,
        results: Sequence[runner.Result],
        check: runner.Result | None,
        judge_producer: Callable[[runner.Result], None],
        what: str,
    ) -> None:
        """The most telling failure first: a check that stopped early makes tee, and then the
        compressor, die of a broken pipe; age failing says more than the compressor it
        stopped; the compressor's failure more than tar's broken pipe."""
        producer, compressor, *rest = results
        if check is not None and check.returncode != 0:
            raise CommandError(
                f"{what} does not decompress: "
                + runner.first_error_line(check.stderr, fallback="test failed")
            )
        if self.recipients:
            encryptor = rest[-1]
            if encryptor.returncode != 0:
                raise CommandError(
                    f"age failed encrypting {what}: "
                    + runner.first_error_line(
                        encryptor.stderr, fallback=f"exit status {encryptor.returncode}"
                    )
                )
        for result in [compressor, *rest[:-1]] if self.recipients else [compressor]:
            if result.returncode != 0:
                name = self.compression if result is compressor else "tee"
                raise CommandError(
                    f"{name} failed on {what}: "
                    + runner.first_error_line(
                        result.stderr, fallback=f"exit status {result.returncode}"
                    )
                )
        judge_producer(producer)


class _SideChecker:
    """``zstd -t`` (or ``gzip -t``) reading what ``_tee_into`` copies to its stdin."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.argv = tuple(argv)
        self.err: IO[bytes] | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def stdin(self) -> IO[bytes] | None:
        return self.proc.stdin if self.proc is not None else None

    def __enter__(self) -> _SideChecker:
        self.err = tempfile.TemporaryFile()
        self.proc = runner.spawn(
            self.argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self.err
        )
        return self

    def finish(self) -> runner.Result:
        assert self.proc is not None and self.err is not None
        self.proc.wait()
        self.err.seek(0)
        stderr = self.err.read().decode("utf-8", errors="replace")
        return runner.Result(self.argv, self.proc.returncode, b"", stderr)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            if exc[0] is not None and self.proc.poll() is None:
                self.proc.kill()
            if self.proc.stdin is not None:
                with contextlib.suppress(OSError):
                    self.proc.stdin.close()
            self.proc.wait()
        if self.err is not None:
            self.err.close()


_TEE_CHUNK = 1 << 20


def _libc_function(name: str, restype: type, *argtypes: type) -> Callable[..., int] | None:
    """The C library's ``name``, typed, with errno kept for ctypes.get_errno(); None where it
    cannot be had (not Linux, no such call)."""
    try:
        function = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    function.restype = restype
    function.argtypes = list(argtypes)
    return function  # type: ignore[no-any-return]


# tee(2) duplicates a pipe's pages into another pipe without copying them (else: a buffer)
_TEE = _libc_function(
    "tee", ctypes.c_ssize_t, ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_uint
)
# sync_file_range(2) starts the writeback of a range without waiting for it (nor for a journal
# commit)
_SYNC_FILE_RANGE = _libc_function(
    "sync_file_range", ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint
)
_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writeback of dirty pages, do not wait


def _tee_into(source: int, sink: int, side: int, tick: Callable[[], None]) -> None:
    """Move everything from the pipe ``source`` into the pipe ``sink`` and a copy into the pipe
    ``side``, until ``source`` ends. The kernel moves the pages (tee(2), splice(2)) where it
    can, else a buffer does; either way the stream never reaches the disk. A side that stopped
    reading (the check failed) is dropped, so the sink still gets every byte and the check's
    own status tells; a sink that stopped (age failed) ends the copy: its status tells."""
    ticker = _Ticker(tick)
    try:
        # tee(2) refused (not a pipe, an old kernel) is known before any byte moved
        if _TEE is None or not _splice_into(source, sink, side, ticker):
            _copy_into(source, sink, side, ticker)
    except BrokenPipeError:
        return


class _Ticker:
    def __init__(self, tick: Callable[[], None]) -> None:
        self.tick = tick
        self.last = time.monotonic()

    def __call__(self) -> None:
        now = time.monotonic()
        if now - self.last >= 0.5:
            self.last = now
            self.tick()


def _splice_into(source: int, sink: int, side: int, ticker: _Ticker) -> bool:
    """The zero-copy tee; False when the kernel refuses tee(2) here (nothing moved then)."""
    copy_side = True
    while True:
        ticker()
        count: int | None = -1
        if copy_side:
            try:
                count = _duplicate(source, side)
            except BrokenPipeError:
                copy_side = False
        if count is None:
            return False
        if count == 0:
            return True
        moved = os.splice(source, sink, count if count > 0 else _TEE_CHUNK)
        if moved == 0:
            return True
        while 0 < moved < count:
            moved += os.splice(source, sink, count - moved)


def _copy_into(source: int, sink: int, side: int, ticker: _Ticker) -> None:
    copy_side = True
    while chunk := os.read(source, _TEE_CHUNK):
        ticker()
        if copy_side:
            try:
                _write_all(side, chunk)
            except BrokenPipeError:
                copy_side = False
        _write_all(sink, chunk)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _duplicate(source: int, side: int) -> int | None:
    """Copy up to _TEE_CHUNK bytes waiting in ``source`` into ``side``, leaving them in
    ``source``; 0 at its end, None when tee(2) is refused here."""
    assert _TEE is not None
    count = _TEE(source, side, _TEE_CHUNK, 0)
    if count >= 0:
        return count
    error = ctypes.get_errno()
    if error == errno.EPIPE:
        raise BrokenPipeError(error, os.strerror(error))
    if error in (errno.EINVAL, errno.ENOSYS):
        return None
    raise OSError(error, os.strerror(error))


class _ArchiveFollower:
    """Reads the archive file while another process appends to it: one thread hashes and
    counts every byte; with a ``checker`` argv (``zstd -t -``) another sends the same bytes to
    the checker's stdin straight from the page cache (sendfile), so the check never waits on
    the hash nor the hash on the check.

    hashlib, os.pread and os.sendfile release the GIL, so both threads run beside the
    compressor. ``finish`` is called once the writer has exited: the threads read up to the
    end of the file, and it returns the checker's result.
    """

    CHUNK = 1 << 20
    POLL_SECONDS = 0.02
    WRITEBACK_BYTES = 8 << 20

    def __init__(self, fd: int, checker: Sequence[str] | None) -> None:
        self.fd = fd
        self.size = 0
        # the hash trails the writer by a chunk or two: behind it, the kernel is asked to start
        # writing what was hashed, so the fsync before the rename has only the tail left
        self.writes_back = _SYNC_FILE_RANGE is not None
        self._written_back = 0
        self.digest = ARCHIVE_HASHES[ARCHIVE_HASH]()
        # one buffer read into again and again: a fresh 1 MiB bytes object per read is a fresh
        # mapping of memory, and faulting its pages in costs as much as the copy
        self._chunk = bytearray(self.CHUNK)
        self._checker_argv = tuple(checker) if checker is not None else None
        self._checker: subprocess.Popen[bytes] | None = None
        self._checker_err: IO[bytes] | None = None
        self._written = threading.Event()
        self._errors: list[BaseException] = []
        self._threads = [threading.Thread(target=self._run, args=(self._hash_from,), daemon=True)]

    def __enter__(self) -> _ArchiveFollower:
        if self._checker_argv is not None:
            self._checker_err = tempfile.TemporaryFile()
            try:
                self._checker = runner.spawn(
                    self._checker_argv,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=self._checker_err,
                )
            except BaseException:
                self._checker_err.close()
                raise
            assert self._checker.stdin is not None
            runner.widen_pipe(self._checker.stdin.fileno(), self.CHUNK)  # fewer wake-ups
            self._threads.append(
                threading.Thread(target=self._run, args=(self._feed_from,), daemon=True)
            )
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._written.set()
        if self._checker is not None and exc[0] is not None:
            with contextlib.suppress(OSError):
                self._checker.kill()  # a failed run: the feeder must not block on its pipe
        for thread in self._threads:
            thread.join()
        if self._checker is not None:
            self._checker.wait()
        if self._checker_err is not None:
            self._checker_err.close()

    def finish(self) -> runner.Result | None:
        """Read what is left once the writer exited; the checker's result (None without one)."""
        self._written.set()
        for thread in self._threads:
            thread.join()
        if self._errors:
            raise self._errors[0]
        if self._checker is None or self._checker_err is None:
            return None
        self._checker.wait()
        self._checker_err.seek(0)
        stderr = self._checker_err.read().decode("utf-8", errors="replace")
        return runner.Result(self._checker_argv or (), self._checker.returncode, b"", stderr)

    def _run(self, step: Callable[[int], int]) -> None:
        """Apply ``step`` at growing offsets until the end of the finished file."""
        offset = 0
        try:
            while True:
                # checked before reading: once set, everything ever written is already readable
                written = self._written.is_set()
                done = step(offset)
                if done:
                    offset += done
                elif written:
                    return
                else:
                    self._written.wait(self.POLL_SECONDS)
        except BrokenPipeError:
            return  # the checker gave up: its exit status says why
        except BaseException as err:  # re-raised by finish in the main thread
            self._errors.append(err)
        finally:
            if step == self._feed_from and self._checker and self._checker.stdin:
                with contextlib.suppress(OSError):
                    self._checker.stdin.close()

    def _hash_from(self, offset: int) -> int:
        count = os.preadv(self.fd, [self._chunk], offset)
        self.digest.update(memoryview(self._chunk)[:count])
        self.size += count
        if self.writes_back and self.size - self._written_back >= self.WRITEBACK_BYTES:
            self._write_back()
        return count

    def _write_back(self) -> None:
        if _SYNC_FILE_RANGE is None:
            return
        length = self.size - self._written_back
        # a refusal (EINVAL on a filesystem without it) only leaves it all to the last fsync
        if _SYNC_FILE_RANGE(self.fd, self._written_back, length, _SYNC_FILE_RANGE_WRITE) != 0:
            self.writes_back = False
        self._written_back = self.size

    def _feed_from(self, offset: int) -> int:
        assert self._checker is not None and self._checker.stdin is not None
        return os.sendfile(self._checker.stdin.fileno(), self.fd, offset, self.CHUNK)


@contextlib.contextmanager
def _flushing(fd: int, every: float = 1.0) -> Iterator[None]:
    """Flush the archive to disk in the background while it is written, so the final fsync
    (which makes the rename safe) has little left to do and the run does not wait for it."""
    stop = threading.Event()

    def flush() -> None:
        while not stop.wait(every):
            with contextlib.suppress(OSError):
                os.fdatasync(fd)

    thread = threading.Thread(target=flush, name="keyforge-flush", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


# --- reading -----------------------------------------------------------------------------------


@overload
def read_archive(
    archive: Path,
    consumer: Sequence[str],
    *,
    identity: Identity | None = None,
    encrypted_to: Sequence[str] = (),
    priority: runner.Priority | None = None,
) -> runner.Result: ...


@overload
def read_archive(
    archive: Path,
    consumer: Callable[[IO[bytes]], T],
    *,
    identity: Identity | None = None,
    encrypted_to: Sequence[str] = (),
    priority: runner.Priority | None = None,
) -> T: ...


def read_archive(
    archive: Path,
    consumer: Sequence[str] | Callable[[IO[bytes]], T],
    *,
    identity: Identity | None = None,
    encrypted_to: Sequence[str] = (),
    priority: runner.Priority | None = None,
) -> runner.Result | T:
    """Feed ``archive``'s plaintext stream (decrypted, decompressed) to ``consumer``.

    ``consumer`` is a program's argv (``tar --extract --file=-``, ``psql``), run at the end of
    ``[age --decrypt -i IDENTITY] FILE | decompressor | consumer``: its result is returned for
    the caller to judge. Or it is a function reading the stream (``tarfile.open(fileobj=…,
    mode="r|")``): its return value is returned. Either way the stages before the consumer are
    judged here, and a failure raises naming the archive: KeyMaterialError for an encrypted
    archive without ``identity``, or one whose keys are not among ``encrypted_to`` (the
    manifest's fingerprints, checked before age runs when known) or that age finds no stanza
    for; CommandError for a ciphertext that is truncated or corrupted, or a damaged compressed
    stream.
    """
    encrypted = is_encrypted_name(archive.name)
    if encrypted:
        check_identity(archive.name, encrypted_to, identity)
    stages: list[list[str]] = read_argvs(archive, identity.path if identity else None)
    if priority is not None:
        stages = [runner.wrap_priority(s, priority) for s in stages]
    if callable(consumer):
        with runner.open_chain(stages) as chain:
            try:
                value = consumer(chain.stdout)
            except Exception:
                # a consumer that failed on a stream cut short: the stage that cut it says why;
                # the others end on the closed pipe (SIGPIPE), which is no failure of theirs
                chain.stdout.close()
                _judge_read(archive, chain.results(), encrypted, identity, stopped=True)
                raise
            _judge_read(archive, chain.finish(), encrypted, identity)
        return value
    results = runner.run_chain([*stages, list(consumer)])
    _judge_read(archive, results[:-1], encrypted, identity)
    return results[-1]


# age's words when none of the identities opens any stanza of the header
_NO_MATCH = "no identity matched"


def _judge_read(
    archive: Path,
    results: Sequence[runner.Result],
    encrypted: bool,
    identity: Identity | None,
    *,
    stopped: bool = False,
) -> None:
    """Raise for the first stage that failed; with ``stopped`` (the reader stopped early) a
    stage ended by the broken pipe did not."""
    ok = (0, -signal.SIGPIPE) if stopped else (0,)
    if encrypted:
        decrypt = results[0]
        if decrypt.returncode not in ok:
            line = runner.first_error_line(decrypt.stderr, fallback=f"exit {decrypt.returncode}")
            if _NO_MATCH in decrypt.stderr and identity is not None:
                raise KeyMaterialError(
                    f"identity {identity.path} cannot decrypt {archive.name}: {line}"
                )
            raise CommandError(
                f"cannot decrypt {archive.name}: {line} (the archive is truncated or corrupted)"
            )
    decompress = results[-1]
    if decompress.returncode not in ok:
        raise CommandError(
            f"cannot read {archive.name}: "
            + runner.first_error_line(decompress.stderr, fallback=f"exit {decompress.returncode}")
        )
