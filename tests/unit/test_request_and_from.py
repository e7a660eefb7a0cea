"""The shapes of command= that run the client's request, and of from= that admit everyone."""

from __future__ import annotations

import pytest

from keyforge.errors import UsageError
from keyforge.receiver import explain, install
from keyforge.ssh import authorized_keys as ak

RUNS = {
    'sh -c "$SSH_ORIGINAL_COMMAND"': "to a shell (sh -c)",
    "$SSH_ORIGINAL_COMMAND": "as the command",
    "eval ${SSH_ORIGINAL_COMMAND}": "to eval",
    'bash -lc "$SSH_ORIGINAL_COMMAND"': "to a shell (bash -c)",
    'echo "$SSH_ORIGINAL_COMMAND" | sh': "on its standard input",
    'sh <<< "$SSH_ORIGINAL_COMMAND"': "on its standard input",
    "sh -c 'eval \"$SSH_ORIGINAL_COMMAND\"'": "to eval",
    'set -- $SSH_ORIGINAL_COMMAND; exec "$@"': "as the command",
    'read -r a b <<< "$SSH_ORIGINAL_COMMAND"; $a $b': "as the command",
    'eval "$(printenv SSH_ORIGINAL_COMMAND)"': "to eval",
    "printenv SSH_ORIGINAL_COMMAND | bash": "on its standard input",
    'exec "$SHELL" -c "$SSH_ORIGINAL_COMMAND"': "-c)",
    "case $SSH_ORIGINAL_COMMAND in rsync*) exec $SSH_ORIGINAL_COMMAND;; esac": "as the command",
    'export C="$SSH_ORIGINAL_COMMAND"; env -i nice -n 5 sh -c "$C"': "(sh -c)",
}
SAFE = [
    "rsync --server -logDtprze.iLsfxCIvu --delete . /home/foo/srvbackups/",
    "/home/foo/.ssh/keyforge/capture-recorder SHA256:abc",
    'logger -t keyforge "$SSH_ORIGINAL_COMMAND"; exit 1',
    "echo '$SSH_ORIGINAL_COMMAND'",
    'test -n "$SSH_ORIGINAL_COMMAND" && exit 1',
    "C=$SSH_ORIGINAL_COMMAND; C=/bin/true; $C",
    "/usr/bin/rrsync /srv/backups",
]


@pytest.mark.parametrize(("command", "how"), RUNS.items())
def test_commands_that_run_the_request(command: str, how: str) -> None:
    found = explain.runs_the_request(command)
    assert found is not None
    assert how in found


@pytest.mark.parametrize("command", SAFE)
def test_commands_that_do_not_run_the_request(command: str) -> None:
    assert explain.runs_the_request(command) is None


@pytest.mark.parametrize(
    ("patterns", "every"),
    [
        (["*"], "every IPv4 address and every IPv6 address"),
        (["0.0.0.0/0"], "every IPv4 address"),
        (["::/0"], "every IPv6 address"),
        (["0.0.0.0/1", "128.0.0.0/1"], "every IPv4 address"),
        (["192.0.2.10", "*.*.*.*", "!192.0.2.11"], "every IPv4 address"),
        (["0/0"], "every IPv4 address"),
    ],
)
def test_from_patterns_that_admit_every_address(patterns: list[str], every: str) -> None:
    assert ak.admits_every_address(patterns) == every


@pytest.mark.parametrize(
    "patterns", [["192.0.2.10"], ["10.0.0.0/8"], ["192.0.2.*"], ["!*"], ["1*"], ["0.0.0.0/1"]]
)
def test_from_patterns_that_leave_addresses_out(patterns: list[str]) -> None:
    assert ak.admits_every_address(patterns) is None


@pytest.mark.parametrize(
    ("patterns", "address", "admitted"),
    [
        (["127.0.0.0/8", "!127.0.0.2"], "127.0.0.2", False),
        (["127.0.0.0/8"], "127.0.0.2", True),
        (["192.0.2.*"], "192.0.2.9", True),
        (["192.0.2.1"], "192.0.2.10", False),
        (["2001:db8::/32"], "2001:db8::7", True),
    ],
)
def test_admits_decides_as_sshd(patterns: list[str], address: str, admitted: bool) -> None:
    assert ak.admits(patterns, address) is admitted


def test_install_refuses_a_from_that_admits_everything_without_any_source() -> None:
    with pytest.raises(UsageError, match="admits every IPv4 address"):
        install.source_patterns(["0.0.0.0/0"], any_source=False)
    assert install.source_patterns(["0.0.0.0/0"], any_source=True) == ["0.0.0.0/0"]
    with pytest.raises(UsageError, match="contradict"):
        install.source_patterns(["192.0.2.10"], any_source=True)
