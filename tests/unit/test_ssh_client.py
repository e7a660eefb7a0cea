"""One rule per fact: host names, login names and target names are each checked in one place."""

from __future__ import annotations

from pathlib import Path

import pytest

from keyforge import config
from keyforge.errors import ConfigError, UsageError
from keyforge.lab import sshd
from keyforge.sender import rotate, sync
from keyforge.ssh import client

TARGET = {
    "name": "offsite",
    "host": "raspberrypi",
    "user": "foo",
    "key": "/root/.ssh/keyforge_backup",
    "remote_path": "~/srvbackups/",
    "known_hosts": "/root/.ssh/known_hosts",
}


def target(**changes: str) -> sync.Target:
    cfg = config.parse({"targets": [{**TARGET, **changes}]})
    return sync.target_from_config(cfg.targets[0], 0)


@pytest.mark.parametrize("name", ["raspberrypi", "pi.lan", "a" * 63, "10.0.0.2"])
def test_a_host_name_is_one_rule_for_the_config_and_the_target(name: str) -> None:
    assert config.parse({"general": {"host": name}}).host == name
    assert isinstance(target(host=name), sync.RemoteTarget)
    assert rotate.parse_admin(f"root@{name}", "x") == ("root", name)


@pytest.mark.parametrize("name", ["-oProxyCommand=x", "bad host", "a/b", "pi;id"])
def test_what_is_not_a_host_name_is_refused_everywhere(name: str) -> None:
    assert not client.is_host(name)
    with pytest.raises(ConfigError, match="host must be a host name"):
        config.parse({"general": {"host": name}})
    with pytest.raises(ConfigError, match="host must be a host name"):
        target(host=name)


def test_only_the_archive_host_is_short_and_it_says_why() -> None:
    # [general] host starts every archive's file name; a target's host is a DNS name
    long_name = "a" * 64
    assert isinstance(target(host=long_name), sync.RemoteTarget)
    with pytest.raises(ConfigError, match="host must be a host name"):
        config.parse({"general": {"host": long_name}})
    assert not client.is_host_name("a" * (client.HOST_NAME_MAX + 1))


@pytest.mark.parametrize("user", ["foo", "backup.admin", "Foo", "_svc", "a" * 32])
def test_a_login_name_is_one_rule_for_cron_the_target_rotate_and_sshd(user: str) -> None:
    # cron's user was checked by a third, narrower rule ([a-z_][a-z0-9_-]*) before
    assert config.parse({"schedule": {"user": user}}).schedule.user == user
    assert target(user=user).user == user  # type: ignore[union-attr]
    assert rotate.parse_admin(f"{user}@pi", "x")[0] == user
    sshd.render_config(
        port=2222, host_key=Path("/k"), pid_file=Path("/p"), authorized_keys=Path("/a"), user=user
    )


@pytest.mark.parametrize("user", ["-f", "a b", "a" * 33, "1abc", "root:x", ""])
def test_what_is_not_a_login_name_is_refused_everywhere(user: str) -> None:
    with pytest.raises(ConfigError, match="user must be a system user name"):
        config.parse({"schedule": {"user": user}})
    if user:
        with pytest.raises(ConfigError, match="user must be a login name"):
            target(user=user)
    with pytest.raises(UsageError, match=r"login name"):
        rotate.parse_admin(f"{user}@pi", "x")
    with pytest.raises(UsageError, match="user name"):
        sshd.render_config(
            port=2222, host_key=Path("/k"), pid_file=Path("/p"), authorized_keys=Path("/a"),
            user=user,
        )  # fmt: skip


@pytest.mark.parametrize(("name", "ok"), [("offsite", True), ("usb-2", True), ("-x", False)])
def test_a_target_name_is_one_rule(name: str, ok: bool) -> None:
    assert config.is_target_name(name) is ok
    if not ok:
        with pytest.raises(ConfigError, match="name must be a short name"):
            config.parse({"targets": [{**TARGET, "name": name}]})


def test_every_login_pins_the_same_client_options() -> None:
    pinned = client.pinned_client_options(Path("/kh"), connect_timeout=7)
    argv = client.ssh_argv("/usr/bin/ssh", 22, Path("/id"), Path("/kh"), connect_timeout=7)
    assert argv[-len(pinned) :] == pinned
    assert "StrictHostKeyChecking=yes" in pinned
    assert "GlobalKnownHostsFile=/dev/null" in pinned
