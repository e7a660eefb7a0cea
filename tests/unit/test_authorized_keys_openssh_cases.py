"""OpenSSH's own option-parsing regression cases (regress/unittests/authopt/tests.c).

Those feed sshd's option parser a bare option string, so these tests use parse_options, the
bare-string parser: a whole line can differ (see test_authorized_keys_sshd_verdicts.py).
"""

from __future__ import annotations

import pytest

from keyforge.errors import ParseError
from keyforge.ssh import authorized_keys as ak

FLAGS = [
    "cert-authority",
    "port-forwarding",
    "agent-forwarding",
    "x11-forwarding",
    "pty",
    "user-rc",
    "no-port-forwarding",
    "no-agent-forwarding",
    "no-x11-forwarding",
    "no-pty",
    "no-user-rc",
]

ACCEPTED = [
    ("", ()),
    (" ", ()),
    ("restrict", (ak.Option("restrict"),)),
    ('tunnel="1"', (ak.Option("tunnel", "1"),)),
    ('tunnel="any"', (ak.Option("tunnel", "any"),)),
    *[(flag, (ak.Option(flag),)) for flag in FLAGS],
    *[(f"restrict,{flag}", (ak.Option("restrict"), ak.Option(flag))) for flag in FLAGS],
    *[
        (f'{name}="{value}"', (ak.Option(name, value),))
        for name, value in [
            ("command", "/bin/true"),
            ("principals", "gregor,josef,K"),
            ("from", "127.0.0.0/8"),
        ]
    ],
    *[
        (
            f'restrict,{name}="{value}",restrict',
            (ak.Option("restrict"), ak.Option(name, value), ak.Option("restrict")),
        )
        for name, value in [
            ("command", "/bin/true"),
            ("principals", "gregor,josef,K"),
            ("from", "127.0.0.0/8"),
        ]
    ],
    (
        'environment="foo=1",environment="bar=2"',
        (ak.Option("environment", "foo=1"), ak.Option("environment", "bar=2")),
    ),
    (
        'environment="foo=1",environment="foo=2"',
        (ak.Option("environment", "foo=1"), ak.Option("environment", "foo=2")),
    ),
    (
        'permitopen="foo:123",permitopen="bar:*"',
        (ak.Option("permitopen", "foo:123"), ak.Option("permitopen", "bar:*")),
    ),
]

REFUSED = [
    "restrict,",  # trailing comma
    ",",  # bare comma
    "BLAH",  # unknown option
    "BLAH,",
    "BLAH ",
    'tunnel="blah"',
    "no-cert-authority",
    "command=oops",  # unquoted values
    "principals=estragon",
    "from=127.0.0.1",
    'environment=",=bah"',
    "foo:bar",  # tests.c's "permitopen" failures are bare strings, i.e. unknown options
    "foo:",
    "foo",
    "[:",
]


@pytest.mark.parametrize(("text", "expected"), ACCEPTED, ids=[c[0] or "empty" for c in ACCEPTED])
def test_openssh_accepted_option_strings_parse_to_the_same_options(
    text: str, expected: tuple[ak.Option, ...]
) -> None:
    assert ak.parse_options(text) == expected


@pytest.mark.parametrize("text", REFUSED)
def test_openssh_refused_option_strings_are_refused(text: str) -> None:
    with pytest.raises(ParseError):
        ak.parse_options(text)
