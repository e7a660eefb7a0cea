"""The one place keyforge speaks HTTP: monitors' pings and webhooks, standard library only.

A monitor is a bystander: whatever it does (down, slow, refusing), the job it watches must not
fail or wait for it longer than the budget it was given. So every request here runs against one
deadline shared by all requests and retries of a batch, never raises, and reports what went
wrong as text for the run's log.

``urllib.request`` (with http.client, email and ssl behind it) is imported only when a request
is sent: every backup and sync run loads this module, most with no monitor configured, and
that import alone cost them about 15 ms before their first program started.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

from keyforge import __version__

USER_AGENT = f"keyforge/{__version__}"
RETRY_PAUSE = 0.5  # seconds between two tries of one request, taken from the same budget


@dataclasses.dataclass(frozen=True)
class Request:
    """One HTTP request a monitor should receive (built by a pure planner)."""

    method: str
    url: str
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    # how the request is named in the log: the URL is a secret (whoever has it can ping)
    label: str = ""


@dataclasses.dataclass(frozen=True)
class Outcome:
    request: Request
    status: int | None
    attempts: int
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None


def _send_once(request: Request, timeout: float) -> int:
    import urllib.request  # noqa: PLC0415 - see the module's docstring

    handle = urllib.request.Request(  # noqa: S310 - the URL's scheme is checked by config
        request.url,
        data=request.body if request.method != "GET" else None,
        method=request.method,
        headers={"User-Agent": USER_AGENT, **dict(request.headers)},
    )
    with urllib.request.urlopen(handle, timeout=timeout) as response:  # noqa: S310
        response.read(4096)
        return int(response.status)


def send_all(
    requests: Sequence[Request],
    *,
    deadline: float,
    retries: int,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Outcome]:
    """Send ``requests`` in order, each tried up to ``retries`` more times, all before the
    monotonic ``deadline``. Never raises: a request that could not be sent has an error."""
    if not requests:
        return []
    import urllib.error  # noqa: PLC0415 - see the module's docstring

    outcomes = []
    for request in requests:
        attempts = 0
        error: str | None = "no time left before the deadline"
        status: int | None = None
        while attempts <= retries:
            remaining = deadline - clock()
            if remaining <= 0.05:
                break
            attempts += 1
            try:
                status = _send_once(request, remaining)
                error = None
                break
            except urllib.error.HTTPError as err:
                status, error = err.code, f"HTTP {err.code}"
                if err.code < 500:
                    break  # the monitor refused the request; the same request will not pass
            except (urllib.error.URLError, OSError, ValueError) as err:
                reason = getattr(err, "reason", err)
                error = f"{type(reason).__name__}: {reason}" if str(reason) else type(err).__name__
            if attempts <= retries:
                sleep(max(0.0, min(RETRY_PAUSE, deadline - clock() - 0.05)))
        outcomes.append(Outcome(request, status, attempts, error))
    return outcomes
