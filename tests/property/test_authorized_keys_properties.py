"""Properties of keyforge.ssh.authorized_keys over generated input."""

from __future__ import annotations

import contextlib
import ipaddress
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyforge.errors import ParseError
from keyforge.ssh import authorized_keys as ak

DATA = Path(__file__).resolve().parent.parent / "data"
KEYS = [
    tuple(line.split()[:2])
    for line in (DATA / "authorized_keys_fixture_keys.pub").read_text().splitlines()
    if line and not line.startswith("#")
]

# any text sshd could carry in a value: no newline, CR or NUL, and no final backslash
value_text = st.text(
    st.characters(blacklist_characters="\n\r\x00", blacklist_categories=("Cs",)), max_size=40
).filter(lambda v: not v.endswith("\\"))
env_name = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
ipv4 = st.ip_addresses(v=4).map(str)
cidr = st.builds(
    str,
    st.ip_addresses(v=4).flatmap(
        lambda a: st.integers(0, 32).map(lambda m: ipaddress.ip_network(f"{a}/{m}", strict=False))
    ),
)
port = st.integers(1, 65535).map(str)

value_options = st.one_of(
    value_text.map(lambda v: ak.Option("command", v)),
    st.builds(lambda n, v: ak.Option("environment", f"{n}={v}"), env_name, value_text),
    st.lists(st.one_of(ipv4, cidr, st.just("*.example.org")), min_size=1, max_size=3).map(
        lambda xs: ak.Option("from", ",".join(xs))
    ),
    st.builds(
        lambda h, p: ak.Option("permitopen", f"{h}:{p}"), st.sampled_from(["h", "[::1]"]), port
    ),
    port.map(lambda p: ak.Option("permitlisten", p)),
    st.sampled_from(["20991231", "209912312359Z", "20991231235959"]).map(
        lambda v: ak.Option("expiry-time", v)
    ),
    st.one_of(st.just("any"), st.integers(0, 1000).map(str)).map(lambda v: ak.Option("tunnel", v)),
)
flag_options = st.sampled_from(sorted(ak.FLAG_OPTIONS - {"cert-authority"})).map(ak.Option)


def one_of_each_single(options: list[ak.Option]) -> tuple[ak.Option, ...]:
    seen: set[str] = set()
    kept = []
    for option in options:
        if option.name in ak.SINGLE_OPTIONS and option.name in seen:
            continue
        seen.add(option.name)
        kept.append(option)
    return tuple(kept)


comments = st.text(
    st.characters(blacklist_characters="\n\r\x00", blacklist_categories=("Cs",)), max_size=30
).map(lambda c: c.strip(" \t"))

entries = st.builds(
    lambda key, options, comment: ak.Entry(key[0], key[1], comment, options),
    st.sampled_from(KEYS),
    st.lists(st.one_of(value_options, flag_options), max_size=6).map(one_of_each_single),
    comments,
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(entries)
def test_parse_of_render_gives_back_the_entry(entry: ak.Entry) -> None:
    assert ak.parse_line(ak.render(entry)) == entry


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(entries, max_size=4), st.sampled_from(["\n", "\r\n"]))
def test_a_rendered_file_parses_back_line_by_line(wanted: list[ak.Entry], newline: str) -> None:
    text = "".join(ak.render(e) + newline for e in wanted)
    assert [line.entry for line in ak.parse(text)] == wanted


line_pieces = st.sampled_from(
    ['command="', '"', "\\", ",", " ", "\t", "=", "#", "restrict", "from=", "no-pty",
     "ssh-ed25519", "AAAA", "\r", "\n", "!", "/", ":", "*", "\x00", "é"]
)  # fmt: skip
noisy_text = st.one_of(
    st.text(max_size=200),
    st.lists(st.one_of(line_pieces, st.sampled_from([k[1] for k in KEYS])), max_size=30).map(
        "".join
    ),
)


@settings(max_examples=300)
@given(noisy_text)
def test_parse_raises_nothing_but_parse_error_on_any_text(text: str) -> None:
    try:
        lines = ak.parse(text)
    except ParseError:
        lines = ak.parse(text, strict=False)
    assert "".join(ak.split_lines(text)) == text
    assert len(lines) == len(ak.split_lines(text))


@settings(max_examples=300)
@given(noisy_text)
def test_bare_option_parsing_raises_nothing_but_parse_error(text: str) -> None:
    with contextlib.suppress(ParseError):
        ak.parse_options(text)
