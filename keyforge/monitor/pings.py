"""Which requests which monitor gets for a run (pure): Healthchecks-style pings and a webhook.

Each ``[monitor] *_ping`` URL is one check, used as Healthchecks.io reads it: ``URL/start``
when the job starts, ``URL`` on success, ``URL/<exit code>`` on failure, each with ``?rid=`` (the
run's id, so the service pairs start and end and measures the duration) and, at the end, the
last lines of the run's log as the body. The webhook gets the run's JSON (``keyforge-run/1``);
ntfy takes the same POST, with the ``Title``, ``Priority`` and ``Tags`` headers it reads.

Nothing secret leaves in a body: the log tail is scrubbed of private key blocks, age
identities, passwords in URLs and ``key=value`` secrets, and of the monitor URLs themselves
(whoever knows a ping URL can fake a success).
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Iterable, Sequence

from keyforge.config import MonitorConfig
from keyforge.infra.http import Request
from keyforge.monitor.runs import RunRecord

TAIL_LINES = 20
TAIL_BYTES = 10_000  # Healthchecks keeps 100 kB of a ping's body; a tail needs far less
REDACTED = "[redacted]"

_SECRET_PATTERNS = (
    # PEM and OpenSSH private keys, whole blocks
    re.compile(
        r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.S
    ),
    # age identities (and plugin identities)
    re.compile(r"AGE-(?:PLUGIN-[A-Z0-9]+-)?SECRET-KEY-[0-9A-Z]+"),
    # user:password@ in a URL
    re.compile(r"(?<=://)[^/\s:@]+:[^/\s@]+(?=@)"),
    # password=…, token: …, secret=… (keys and values as tools print them)
    re.compile(
        r"(?i)([A-Za-z0-9_-]*(?:pass(?:word|phrase)?|token|secret|api[_-]?key|auth)"
        r"[A-Za-z0-9_-]*[\"']?\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|\S+)"
    ),
)


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without anything that looks like a secret, nor any of ``secrets``."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    for index, pattern in enumerate(_SECRET_PATTERNS):
        if index == len(_SECRET_PATTERNS) - 1:
            text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
        else:
            text = pattern.sub(REDACTED, text)
    return text


def tail(lines: Sequence[str], secrets: Iterable[str] = ()) -> str:
    """The last lines of a run's log, scrubbed, within TAIL_BYTES."""
    text = scrub("\n".join(lines[-TAIL_LINES:]), secrets)
    data = text.encode("utf-8", "replace")
    if len(data) > TAIL_BYTES:
        text = data[-TAIL_BYTES:].decode("utf-8", "ignore")
    return text


def monitor_secrets(monitor: MonitorConfig) -> list[str]:
    """The URLs of every monitor: secrets of their own, never sent in a body."""
    urls = [monitor.ping_url(job) for job in ("backup", "sync", "snapshot", "drill", "freshness")]
    return [url for url in [*urls, monitor.webhook] if url]


def _ping_url(base: str, suffix: str, run_id: str) -> str:
    parts = urllib.parse.urlsplit(base)
    path = parts.path.rstrip("/") + (f"/{suffix}" if suffix else "")
    query = "&".join(q for q in (parts.query, f"rid={urllib.parse.quote(run_id)}") if q)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, query, ""))


def start_requests(monitor: MonitorConfig, job: str, run_id: str) -> list[Request]:
    """What the job's start sends: ``/start`` to its ping URL, if it has one."""
    base = monitor.ping_url(job)
    if not base:
        return []
    return [Request("POST", _ping_url(base, "start", run_id), label=f"{job}_ping start")]


def finish_requests(monitor: MonitorConfig, record: RunRecord) -> list[Request]:
    """What the job's end sends: success or its exit code to its ping, the JSON to the
    webhook (always, or only on failure)."""
    requests = []
    base = monitor.ping_url(record.job)
    body = record.log_tail.encode("utf-8", "replace")
    if base:
        suffix = "" if record.ok else str(record.exit_code)
        label = f"{record.job}_ping {'success' if record.ok else f'exit {record.exit_code}'}"
        requests.append(
            Request(
                "POST",
                _ping_url(base, suffix, record.run_id),
                body,
                (("Content-Type", "text/plain; charset=utf-8"),),
                label,
            )
        )
    if monitor.webhook and (monitor.webhook_on == "always" or not record.ok):
        requests.append(webhook_request(monitor.webhook, record))
    return requests


def webhook_request(url: str, record: RunRecord) -> Request:
    state = "ok" if record.ok else "failed"
    headers = (
        ("Content-Type", "application/json"),
        # ntfy reads these; any other receiver ignores them
        ("Title", f"keyforge {record.job} on {record.host}: {state}"),
        ("Priority", "default" if record.ok else "high"),
        ("Tags", "white_check_mark" if record.ok else "warning"),
    )
    body = json.dumps(record.to_json(), sort_keys=True).encode()
    return Request("POST", url, body, headers, "webhook")
