"""Hypothesis: the Prometheus renderer as Prometheus's own parser reads it, rsync's progress2
lines as the parser reads them, journald's datagram read back, and scrubbing that never lets
a secret through whatever surrounds it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from keyforge.infra import journal
from keyforge.monitor import pings, prometheus, runs
from keyforge.sender import progress

labels = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
START = datetime(2026, 1, 1, tzinfo=UTC)


@st.composite
def records(draw: st.DrawFn) -> runs.RunRecord:
    start = START + timedelta(seconds=draw(st.integers(0, 10**8)))
    targets = draw(
        st.lists(
            st.builds(
                runs.TargetResult,
                target=labels,
                ok=st.booleans(),
                bytes=st.none() | st.integers(0, 2**50),
                archives=st.none() | st.integers(0, 10**5),
            ),
            max_size=3,
            unique_by=lambda t: t.target,
        )
    )
    return runs.RunRecord(
        job=draw(st.sampled_from(["backup", "sync", "snapshot", "drill"]) | labels),
        host="server1",
        run_id="r",
        start=start,
        end=start + timedelta(seconds=draw(st.integers(0, 10**5))),
        exit_code=draw(st.sampled_from([0, 1, 5, 75])),
        targets=tuple(targets),
    )


@given(st.lists(records(), max_size=6))
def test_prometheus_reads_every_series_the_renderer_writes(found: list[runs.RunRecord]) -> None:
    text = prometheus.render(found)
    parsed = {
        (sample.name, sample.labels["job"], sample.labels["target"], sample.labels.get("result"))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    for (job, target), series in prometheus.series(found).items():
        assert ("keyforge_last_start_timestamp_seconds", job, target, None) in parsed
        assert ("keyforge_last_exit_code", job, target, None) in parsed
        total = ("keyforge_runs_total", job, target, "success")
        assert total in parsed
        assert (series.success is not None) == (
            ("keyforge_last_success_timestamp_seconds", job, target, None) in parsed
        )


@given(
    st.integers(0, 10**13),
    st.integers(0, 100),
    st.floats(0, 999, allow_nan=False).map(lambda f: round(f, 2)),
    st.sampled_from(["B", "kB", "MB", "GB"]),
    st.integers(0, 99),
    st.integers(0, 59),
)
def test_progress2_lines_read_back(
    nbytes: int, percent: int, rate: float, unit: str, minutes: int, seconds: int
) -> None:
    line = (
        f"{nbytes:>15,} {percent:>3}% {rate:>7.2f}{unit}/s {minutes // 60}:{minutes % 60:02d}:"
        f"{seconds:02d} (xfr#3, to-chk=1/9)"
    )
    found = progress.parse_progress2(line)
    assert found is not None
    assert found.bytes == nbytes
    assert found.percent == percent
    assert abs(found.rate - float(f"{rate:.2f}") * progress._UNITS[unit]) < 1e-6 * (1 + found.rate)


def _read_datagram(data: bytes) -> dict[str, str]:
    fields, i = {}, 0
    while i < len(data):
        end = data.index(b"\n", i)
        head = data[i:end]
        if b"=" in head:
            name, value = head.split(b"=", 1)
            i = end + 1
        else:
            size = int.from_bytes(data[end + 1 : end + 9], "little")
            name, value = head, data[end + 9 : end + 9 + size]
            i = end + 9 + size + 1
        fields[name.decode()] = value.decode()
    return fields


@given(
    st.text(), st.dictionaries(st.from_regex(r"[A-Z][A-Z0-9_]{0,10}", fullmatch=True), st.text())
)
def test_the_journal_datagram_reads_back(message: str, fields: dict[str, str]) -> None:
    clean = {k: v.encode("utf-8", "replace").decode() for k, v in fields.items()}
    data = journal.native_datagram(message, journal.ERR, clean)
    back = _read_datagram(data)
    assert back["MESSAGE"] == message.encode("utf-8", "replace").decode("utf-8", "replace")
    assert back["PRIORITY"] == "3"
    for name, value in clean.items():
        if name not in ("MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER"):
            assert back[name] == value


@given(
    st.text(max_size=200), st.text(max_size=200), st.from_regex(r"[0-9A-Z]{20,60}", fullmatch=True)
)
def test_an_age_identity_never_survives_scrubbing(before: str, after: str, key: str) -> None:
    secret = f"AGE-SECRET-KEY-1{key}"
    assert secret not in pings.tail([before + secret + after])


@given(st.text(max_size=200), st.text(max_size=200))
def test_a_private_key_block_never_survives_scrubbing(before: str, after: str) -> None:
    block = "-----BEGIN OPENSSH PRIVATE KEY-----\nQUJDREVGR0g=\n-----END OPENSSH PRIVATE KEY-----"
    assert "QUJDREVGR0g=" not in pings.scrub(before + "\n" + block + "\n" + after)
