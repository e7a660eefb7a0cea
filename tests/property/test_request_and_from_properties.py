"""Renaming a variable or adding quotes never hides a forced command that runs the client's
request, and a from= that admits every address is found however it is spelled."""

from __future__ import annotations

import datetime as dt

from hypothesis import given, settings
from hypothesis import strategies as st

from keyforge.receiver import audit, explain
from keyforge.ssh import authorized_keys as ak

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True).filter(
    lambda n: n != explain.REQUEST_VARIABLE
)
REFERENCES = st.sampled_from(["$%s", "${%s}", '"$%s"', '"${%s}"', "\"$%s\"''"])
SHELL_NAMES = st.sampled_from(
    ["sh", "'sh'", '"sh"', "s'h'", "/bin/sh", '"/bin/"sh', "bash", "\\sh"]
)
WRAPPERS = st.sampled_from(["", "exec ", "command ", "env ", "nice "])
EVALS = st.sampled_from(["eval", 'ev"a"l', "'eval'"])


@st.composite
def request_runners(draw: st.DrawFn) -> str:
    """A command that hands the request on, through a chain of renamed variables."""
    chain = draw(st.lists(NAMES, min_size=0, max_size=3, unique=True))
    reference = draw(REFERENCES)
    steps = []
    current = explain.REQUEST_VARIABLE
    for name in chain:
        steps.append(f"{name}={reference % current}")
        current = name
    value = reference % current
    how = draw(st.sampled_from(["shell", "eval", "direct", "pipe"]))
    wrapper = draw(WRAPPERS)
    if how == "shell":
        last = f"{wrapper}{draw(SHELL_NAMES)} -c {value}"
    elif how == "eval":
        last = f"{draw(EVALS)} {value}"
    elif how == "direct":
        last = f"{wrapper}{value}"
    else:
        last = f"printf '%s' {value} | {wrapper}{draw(SHELL_NAMES)}"
    return "; ".join([*steps, last])


@settings(max_examples=300, deadline=None)
@given(request_runners())
def test_renaming_and_quoting_never_hide_a_command_that_runs_the_request(command: str) -> None:
    assert explain.runs_the_request(command) is not None, command
    line = f'restrict,from="192.0.2.10",{ak.format_option(ak.Option("command", command))} {KEY}'
    judged = audit.audit_text(line, file="f", now=dt.datetime.now(dt.UTC))
    assert {f.code: f.severity for f in judged.findings}["command-runs-request"] == "high"
    assert "runs whatever the client asks for" in "\n".join(explain.explain_line(line).lines())


@settings(max_examples=200, deadline=None)
@given(NAMES, st.sampled_from(["logger -t kf {v}", "echo {v} >> log", "test -n {v}"]))
def test_a_command_that_only_reads_the_request_is_not_flagged(name: str, shape: str) -> None:
    command = f"{name}=$SSH_ORIGINAL_COMMAND; " + shape.format(v=f'"${name}"') + "; exit 1"
    assert explain.runs_the_request(command) is None, command
    # single quotes keep the text literal: nothing is expanded, nothing run
    assert explain.runs_the_request("sh -c 'echo $SSH_ORIGINAL_COMMAND' > /dev/null") is None


EVERYTHING = st.sampled_from(["*", "0.0.0.0/0", "::/0", "*.*.*.*", "0/0", "**", "*:*"])
SOME = st.sampled_from(
    ["192.0.2.10", "10.0.0.0/8", "2001:db8::/32", "192.0.2.*", "1*", "h.example"]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(SOME, max_size=3), EVERYTHING, st.lists(SOME, max_size=3))
def test_a_list_whose_positives_admit_everything_is_no_limit(
    before: list[str], everything: str, negated: list[str]
) -> None:
    patterns = [*before, everything, *(f"!{p}" for p in negated)]
    assert ak.admits_every_address(patterns) is not None, patterns
    line = f'restrict,from="{",".join(patterns)}",command="/bin/true" {KEY}'
    codes = {f.code for f in audit.audit_text(line, file="f", now=dt.datetime.now(dt.UTC)).findings}
    assert "from-admits-all" in codes


@settings(max_examples=300, deadline=None)
@given(st.lists(SOME, min_size=1, max_size=4))
def test_lists_of_limited_patterns_are_a_limit(patterns: list[str]) -> None:
    assert ak.admits_every_address(patterns) is None, patterns
