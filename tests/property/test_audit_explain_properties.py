"""audit and explain over generated lines: never a crash, only known codes and severities."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from keyforge.errors import ParseError
from keyforge.receiver import audit, explain
from keyforge.ssh import authorized_keys as ak

DATA = Path(__file__).resolve().parent.parent / "data"
KEYS = [
    line
    for line in (DATA / "authorized_keys_fixture_keys.pub").read_text().splitlines()
    if line and not line.startswith("#")
]
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

flag = st.sampled_from(sorted(ak.FLAG_OPTIONS)).map(ak.Option)
text_value = st.text(
    st.characters(blacklist_characters='\n\r\x00"\\', blacklist_categories=("Cs",)), max_size=20
)
value_option = st.one_of(
    text_value.map(lambda v: ak.Option("command", v)),
    st.sampled_from(["192.0.2.10", "10.0.0.0/8,!10.0.0.5", "*.example.org", "!1.2.3.4"]).map(
        lambda v: ak.Option("from", v)
    ),
    st.sampled_from(["20200101", "29991231Z", "202601011200"]).map(
        lambda v: ak.Option("expiry-time", v)
    ),
    st.sampled_from(["db:5432", "*:22", "[::1]:80"]).map(lambda v: ak.Option("permitopen", v)),
    st.sampled_from(["8080", "localhost:9000"]).map(lambda v: ak.Option("permitlisten", v)),
    st.sampled_from(["A=1", "PATH=/x"]).map(lambda v: ak.Option("environment", v)),
    st.sampled_from(["0", "any"]).map(lambda v: ak.Option("tunnel", v)),
)
options = st.lists(st.one_of(flag, value_option), max_size=8)


def line_from(opts: list[ak.Option], key: str) -> str:
    prefix = ",".join(ak.format_option(o) for o in opts)
    return f"{prefix} {key}" if prefix else key


@given(options, st.sampled_from(KEYS))
def test_any_line_is_explained_or_refused_with_a_reason(opts: list[ak.Option], key: str) -> None:
    line = line_from(opts, key)
    try:
        entry = ak.parse_line(line)
    except ParseError:
        return  # e.g. two command= options: explain says why, tested elsewhere
    assert entry is not None
    explanation = explain.explain_entry(entry, now=NOW)
    assert len(explanation.effects) == len(entry.options)
    assert explanation.lines()


key_line = st.tuples(options, st.sampled_from(KEYS)).map(lambda t: line_from(*t))
any_line = st.one_of(key_line, st.text(max_size=60).filter(lambda t: "\n" not in t))


@given(st.lists(any_line, max_size=8))
def test_audit_of_any_file_gives_only_known_codes_at_real_lines(lines: list[str]) -> None:
    judged = audit.audit_text("\n".join(lines), file="f", now=NOW)
    for finding in judged.findings:
        assert finding.code in audit.CODES
        assert finding.severity in audit.SEVERITIES
        assert finding.line is not None and 1 <= finding.line <= len(lines)


@given(st.text(max_size=200))
def test_audit_and_explain_never_crash_on_arbitrary_text(text: str) -> None:
    judged = audit.audit_text(text, file="f", now=NOW)
    assert all(f.code in audit.CODES for f in judged.findings)
    for line in ak.parse(text, strict=False):
        if line.entry is not None:
            explain.explain_entry(line.entry, lineno=line.lineno, now=NOW).lines()
