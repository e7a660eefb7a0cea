"""The single place where keyforge starts other programs.

Only argv lists, never a shell: a path with a space or a quote is one argument and nothing
else. Long runs (tar, rsync) are wrapped in ``nice``/``ionice`` so a backup does not disturb the
server's own work. Two programs joined by a pipe (tar into zstd) are started here too, and the
exit status of *both* is reported, which a shell pipeline would hide.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import select
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import IO

from keyforge.errors import CommandError

IONICE_ARGS = {"idle": ("-c", "3"), "best-effort": ("-c", "2", "-n", "7"), "none": ()}

F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
# The buffer of each pipe between two programs of a chain: a 64 KiB pipe (the kernel's default)
# makes a compressor and the encryptor after it wake each other up for every few dozen KiB,
# which cost as much CPU as age's encryption itself; 1 MiB is the most an unprivileged process
# may ask for (fs.pipe-max-size).
PIPE_SIZE = 1 << 20


def widen_pipe(fd: int, size: int = PIPE_SIZE) -> None:
    """Ask for a ``size``-byte buffer on the pipe ``fd``; a refusal (not a pipe, over the
    system's limit) leaves it as it is: the pipe still works, with more wake-ups."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, F_SETPIPE_SZ, size)


@dataclasses.dataclass(frozen=True)
class Priority:
    """How gently a long command runs: a nice level and an I/O scheduling class."""

    nice: int = 0
    ionice: str = "none"


def wrap_priority(argv: Sequence[str], priority: Priority) -> list[str]:
    """``argv`` prefixed with ionice and nice as ``priority`` asks (pure)."""
    prefix: list[str] = []
    io_args = IONICE_ARGS[priority.ionice]
    if io_args:
        prefix += ["ionice", *io_args]
    if priority.nice:
        prefix += ["nice", "-n", str(priority.nice)]
    return [*prefix, *argv]


@dataclasses.dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: str


@dataclasses.dataclass(frozen=True)
class PipeResult:
    first: Result
    second: Result


def first_error_line(stderr: str, *, fallback: str) -> str:
    """The line of a program's stderr worth showing: its first non-empty one."""
    for line in stderr.splitlines():
        if line.strip():
            return line.strip()
    return fallback


def _program(argv: Sequence[str]) -> str | None:
    """The program argv runs, past any ionice/nice wrapping added by wrap_priority."""
    i = 0
    while i < len(argv):
        if argv[i] in ("ionice", "nice"):
            i += 1
            while i < len(argv) and argv[i].startswith("-"):
                i += 2  # every option of both takes one value
            continue
        return argv[i]
    return None


def _command_name(argv: Sequence[str]) -> str:
    program = _program(argv)
    return program.rsplit("/", 1)[-1] if program else "command"


def spawn(argv: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
    program = _program(argv)
    # nice would report a missing program in words of its own, after the pipe has started
    if program and argv and program != argv[0] and shutil.which(program) is None:
        raise CommandError(f"{_command_name(argv)}: command not found")
    try:
        return subprocess.Popen(list(argv), **kwargs)  # type: ignore[call-overload,no-any-return]
    except FileNotFoundError:
        raise CommandError(f"{_command_name(argv)}: command not found") from None
    except OSError as err:
        raise CommandError(f"cannot run {_command_name(argv)}: {err.strerror or err}") from err


def _read_back(handle: IO[bytes]) -> str:
    handle.seek(0)
    return handle.read().decode("utf-8", errors="replace")


def run(
    argv: Sequence[str],
    *,
    stdin: int | IO[bytes] | None = subprocess.DEVNULL,
    capture_stdout: bool = True,
    check: bool = True,
    pass_fds: Sequence[int] = (),
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
) -> Result:
    """Run ``argv`` to completion; with ``check`` a non-zero exit raises CommandError.

    ``pass_fds`` stay open in the program (a directory it reads as ``/proc/self/fd/N``). A
    program still running after ``timeout`` seconds is killed and is a CommandError. ``env``
    replaces the environment (None: keyforge's own).
    """
    with tempfile.TemporaryFile() as err_file:
        proc = spawn(
            argv,
            stdin=stdin,
            stdout=subprocess.PIPE if capture_stdout else subprocess.DEVNULL,
            stderr=err_file,
            pass_fds=tuple(pass_fds),
            env=None if env is None else dict(env),
        )
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise CommandError(
                f"{_command_name(argv)} did not finish within {timeout:g} s"
            ) from None
        result = Result(tuple(argv), proc.returncode, out or b"", _read_back(err_file))
    if check and result.returncode != 0:
        name = _command_name(argv)
        raise CommandError(
            f"{name} failed: "
            + first_error_line(result.stderr, fallback=f"exit status {result.returncode}")
        )
    return result


def run_streaming(argv: Sequence[str], on_stdout: Callable[[bytes], None]) -> Result:
    """Run ``argv`` to completion, handing its stdout to ``on_stdout`` as it arrives (a live
    display) and keeping all of it; never raises on the exit status."""
    chunks: list[bytes] = []
    with tempfile.TemporaryFile() as err_file:
        proc = spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err_file)
        assert proc.stdout is not None  # stdout=PIPE above
        while True:
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            chunks.append(chunk)
            on_stdout(chunk)
        proc.stdout.close()
        proc.wait()
        return Result(tuple(argv), proc.returncode, b"".join(chunks), _read_back(err_file))


def run_with_input(argv: Sequence[str], data: bytes) -> Result:
    """Run ``argv`` with ``data`` on its stdin, never raising on its exit status.

    The data goes through an unnamed temporary file rather than a pipe, so a program that
    never reads its stdin cannot block the write.
    """
    with tempfile.TemporaryFile() as feed:
        feed.write(data)
        feed.seek(0)
        return run(argv, stdin=feed, check=False)


def run_pipe(
    first: Sequence[str],
    second: Sequence[str],
    *,
    stdin: int | IO[bytes] | None = subprocess.DEVNULL,
    stdout: int | IO[bytes] | None = subprocess.DEVNULL,
    on_tick: Callable[[], None] | None = None,
    tick_seconds: float = 0.5,
) -> PipeResult:
    """Run ``first | second`` without a shell and report both exit statuses.

    ``second`` writes to ``stdout`` itself (an archive file's descriptor, say), so its output
    never passes through keyforge. The caller judges the statuses (tar's 1 is a warning, not a
    failure). ``on_tick`` is called about every ``tick_seconds`` while the pipe runs, for a
    progress display.
    """
    one, two = run_chain(
        [first, second], stdin=stdin, stdout=stdout, on_tick=on_tick, tick_seconds=tick_seconds
    )
    return PipeResult(one, two)


def run_chain(
    stages: Sequence[Sequence[str]],
    *,
    stdin: int | IO[bytes] | None = subprocess.DEVNULL,
    stdout: int | IO[bytes] | None = subprocess.DEVNULL,
    on_tick: Callable[[], None] | None = None,
    tick_seconds: float = 0.5,
) -> tuple[Result, ...]:
    """Run ``stages[0] | stages[1] | …`` without a shell; every stage's exit status, in order.

    The last stage writes to ``stdout`` itself. The caller judges the statuses.
    """
    with open_chain(stages, stdin=stdin, stdout=stdout) as chain:
        while any(p.poll() is None for p in chain.procs):
            if on_tick is not None:
                on_tick()
            _wait_any(chain.procs, tick_seconds)
        return chain.results()


@dataclasses.dataclass
class Chain:
    """Programs started by ``open_chain``: ``stdout`` is the last one's output when it was
    asked for (``stdout=subprocess.PIPE``); ``results`` waits for all of them."""

    argvs: tuple[tuple[str, ...], ...]
    procs: list[subprocess.Popen[bytes]]
    errors: list[IO[bytes]]

    @property
    def stdout(self) -> IO[bytes]:
        out = self.procs[-1].stdout
        assert out is not None, "open_chain was not asked for stdout=subprocess.PIPE"
        return out

    def finish(self) -> tuple[Result, ...]:
        """Read what the last program still writes (a reader that stopped at its format's end,
        tar's zero blocks, leaves padding), then every exit status."""
        out = self.procs[-1].stdout
        while out is not None and not out.closed and out.read(1 << 16):
            pass
        return self.results()

    def results(self) -> tuple[Result, ...]:
        for proc in self.procs:
            proc.wait()
        return tuple(
            Result(argv, proc.returncode, b"", _read_back(err))
            for argv, proc, err in zip(self.argvs, self.procs, self.errors, strict=True)
        )


@contextlib.contextmanager
def open_chain(
    stages: Sequence[Sequence[str]],
    *,
    stdin: int | IO[bytes] | None = subprocess.DEVNULL,
    stdout: int | IO[bytes] | None = subprocess.PIPE,
) -> Iterator[Chain]:
    """Start ``stages`` joined by pipes; inside the block the caller reads ``chain.stdout`` (or
    waits), and ``chain.results()`` gives every exit status. Leaving the block early (an
    exception) kills whatever still runs, so no stage outlives its reader."""
    if not stages:
        raise ValueError("a chain needs at least one program")
    with contextlib.ExitStack() as stack:
        errors: list[IO[bytes]] = [stack.enter_context(tempfile.TemporaryFile()) for _ in stages]
        procs: list[subprocess.Popen[bytes]] = []
        try:
            feed: int | IO[bytes] | None = stdin
            for index, argv in enumerate(stages):
                last = index == len(stages) - 1
                try:
                    proc = spawn(
                        argv,
                        stdin=feed,
                        stdout=stdout if last else subprocess.PIPE,
                        stderr=errors[index],
                    )
                finally:
                    # the next program holds its own copy; ours would keep the pipe open
                    if index and procs[-1].stdout is not None:
                        procs[-1].stdout.close()
                procs.append(proc)
                if proc.stdout is not None:  # a pipe: to the next program, or to the caller
                    widen_pipe(proc.stdout.fileno())
                feed = proc.stdout
            chain = Chain(tuple(tuple(a) for a in stages), procs, errors)
            yield chain
            chain.finish()
        except BaseException:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                if proc.stdout is not None:
                    proc.stdout.close()
                proc.wait()
            raise
        finally:
            last_out = procs[-1].stdout if len(procs) == len(stages) else None
            if last_out is not None:
                last_out.close()


def _wait_any(procs: Sequence[subprocess.Popen[bytes]], seconds: float) -> None:
    """Return as soon as any of ``procs`` exits, or after ``seconds``.

    A pidfd turns readable the moment its process exits, where Popen.wait(timeout=) polls with
    sleeps of up to 50 ms: that much of every archive's run time would otherwise be idle.
    """
    running = [p for p in procs if p.poll() is None]
    if not running:
        return
    try:
        fds = [os.pidfd_open(p.pid) for p in running]
    except (AttributeError, OSError):  # before Linux 5.3
        with contextlib.suppress(subprocess.TimeoutExpired):
            running[-1].wait(timeout=seconds)
        return
    try:
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        poller.poll(int(seconds * 1000))
    finally:
        for fd in fds:
            os.close(fd)
