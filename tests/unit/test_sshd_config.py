"""The private sshd's pure parts: its config, the known_hosts pin, version-dependent lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from keyforge.errors import UsageError
from keyforge.lab import sshd


def config_text(**overrides: object) -> str:
    values: dict[str, object] = {
        "port": 2222,
        "host_key": Path("/tmp/kf/ssh_host_ed25519_key"),
        "pid_file": Path("/tmp/kf/sshd.pid"),
        "authorized_keys": Path("/tmp/kf/home/.ssh/authorized_keys"),
        "user": "root",
    }
    values.update(overrides)
    return sshd.render_config(**values)  # type: ignore[arg-type]


def directives(text: str) -> dict[str, str]:
    pairs = [line.split(None, 1) for line in text.splitlines() if line and not line.startswith("#")]
    return {pair[0]: pair[1] for pair in pairs}


def test_config_points_every_file_into_the_directory_and_listens_on_loopback_only() -> None:
    found = directives(config_text())
    assert found["Port"] == "2222"
    assert found["ListenAddress"] == "127.0.0.1"
    assert found["HostKey"] == "/tmp/kf/ssh_host_ed25519_key"
    assert found["PidFile"] == "/tmp/kf/sshd.pid"
    assert found["AuthorizedKeysFile"] == "/tmp/kf/home/.ssh/authorized_keys"
    assert found["AllowUsers"] == "root"


def test_config_allows_keys_only_and_leaves_refusing_to_the_key_line() -> None:
    found = directives(config_text())
    for name in ("PasswordAuthentication", "KbdInteractiveAuthentication", "UsePAM"):
        assert found[name] == "no"
    assert found["StrictModes"] == "no"
    for name in ("AllowTcpForwarding", "AllowAgentForwarding", "PermitTTY", "PermitUserRC"):
        assert found[name] == "yes"


@pytest.mark.parametrize(
    "path", ["/tmp/with space/key", "/tmp/%h/key", "/tmp/~x/key", "relative/key", '/tmp/"q"/k']
)
def test_a_path_sshd_config_would_read_differently_is_refused(path: str) -> None:
    with pytest.raises(UsageError, match="cannot go into an sshd_config"):
        config_text(authorized_keys=Path(path))


def test_an_odd_user_name_is_refused() -> None:
    with pytest.raises(UsageError, match="user name"):
        config_text(user="foo bar")


def test_known_hosts_line_pins_the_key_for_the_port() -> None:
    line = sshd.known_hosts_line(40123, "ssh-ed25519 AAAAC3Nz comment here")
    assert line == "[127.0.0.1]:40123 ssh-ed25519 AAAAC3Nz\n"


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("OpenSSH_9.2, OpenSSL 3.0.19 27 Jan 2026", (9, 2)),
        ("unknown option -- V\nOpenSSH_8.4p1 Debian-5, OpenSSL 1.1.1n", (8, 4)),
        ("OpenSSH_10.0p2", (10, 0)),
        ("sshd: nothing useful", None),
    ],
)
def test_version_is_read_from_sshd_output(text: str, version: tuple[int, int] | None) -> None:
    assert sshd.parse_version(text) == version


def test_source_penalties_are_switched_off_only_where_sshd_knows_them() -> None:
    assert sshd.extra_config_lines((9, 2)) == []
    assert sshd.extra_config_lines(None) == []
    assert sshd.extra_config_lines((9, 8)) == ["PerSourcePenalties no"]
    assert "PerSourcePenalties no" in config_text(extra_lines=["PerSourcePenalties no"])


def test_a_path_or_user_ending_in_a_newline_is_refused() -> None:
    # a newline would start another sshd_config directive
    with pytest.raises(UsageError, match="cannot go into an sshd_config"):
        config_text(authorized_keys=Path("/tmp/key\n"))
    with pytest.raises(UsageError, match="user name"):
        config_text(user="foo\n")
