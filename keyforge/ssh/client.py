"""The SSH client as keyforge runs it: host and login-name checks, and the ssh argv.

Pure: every keyforge login (sync's --rsh, check's probes, rotate's admin session, the private
sshd's clients) builds its ssh command here, so they all pin the same options.
"""

from __future__ import annotations

import re
from pathlib import Path

CONNECT_TIMEOUT = 30  # seconds
# DNS's limit for a whole name; a name that must fit inside a file name asks for less
HOST_NAME_MAX = 253

# a host name: letters, digits, '.' and '-', never a leading '-' that ssh would read as an option
_HOST_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]*\Z")
_IPV6_RE = re.compile(r"^[0-9A-Fa-f:.]+\Z")
# a login name sshd, cron.d and useradd all take as it is (at most 32 characters)
_LOGIN_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}\Z")


def is_host_name(value: str, *, max_length: int = HOST_NAME_MAX) -> bool:
    """A host name of at most ``max_length`` characters (no IP address syntax beyond IPv4's)."""
    return len(value) <= max_length and _HOST_NAME_RE.match(value) is not None


def is_host(value: str) -> bool:
    """A host name or an IP address (no leading '-' that ssh would read as an option)."""
    return is_host_name(value) or bool(":" in value and _IPV6_RE.match(value))


def is_login_name(value: str) -> bool:
    return _LOGIN_NAME_RE.match(value) is not None


def pinned_client_options(known_hosts: Path, *, connect_timeout: int) -> list[str]:
    """ssh client options: the given identity only, this host key only, never a prompt."""
    return [
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        # the pin is the one file: a key in /etc/ssh/ssh_known_hosts must not vouch for the host
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        f"ConnectTimeout={connect_timeout}",
    ]


def ssh_argv(
    ssh: str, port: int, identity: Path, known_hosts: Path, *, connect_timeout: int
) -> list[str]:
    """ssh as every keyforge login runs it: this key only, this host key only, never a prompt."""
    return [
        ssh,
        "-p",
        str(port),
        "-i",
        str(identity),
        *pinned_client_options(known_hosts, connect_timeout=connect_timeout),
    ]
