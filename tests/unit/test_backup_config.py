"""keyforge.toml parsing: defaults, and an error naming the key for every wrong one."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from keyforge import config
from keyforge.errors import ConfigError
from keyforge.sender import sync


def test_an_empty_file_gives_the_posts_defaults() -> None:
    cfg = config.parse({})
    assert cfg.backup.sources == ("/etc", "/home", "/var", "/boot", "/root")
    assert cfg.backup.retention_days == 14
    assert cfg.backup.compression == "zstd"
    assert cfg.backup.full_every == "sunday"
    assert cfg.backup_dir == Path(f"/mnt/backups/{cfg.host}")


def test_the_backup_directory_defaults_to_mnt_backups_host() -> None:
    cfg = config.parse({"general": {"host": "server1"}})
    assert cfg.backup.directory == "/mnt/backups/server1"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (
            {"backup": {"retention_days": "x"}},
            "keyforge.toml: [backup] retention_days must be an integer, got 'x'",
        ),
        ({"backup": {"retention_days": True}}, "[backup] retention_days must be an integer"),
        ({"backup": {"retention_dayz": 3}}, "[backup] unknown key 'retention_dayz'"),
        ({"backup": {"sources": "/etc"}}, "[backup] sources must be a list of strings"),
        ({"backup": {"sources": ["etc"]}}, "[backup] sources must hold absolute paths"),
        ({"backup": {"compression": "xz"}}, "[backup] compression must be one of"),
        ({"backup": {"full_every": "someday"}}, "[backup] full_every must be a weekday name"),
        ({"backup": {"full_every": 0}}, "[backup] full_every must be a weekday name or a number"),
        ({"backup": {"retention_days": 0}}, "[backup] retention_days must be >= 1"),
        ({"general": {"host": "bad host"}}, "[general] host must be a host name"),
        ({"backups": {}}, "unknown section or key 'backups'"),
        ({"backup": 3}, "backup must be a table"),
        ({"targets": [{"port": "22"}]}, "[[targets]] #1 port must be an integer, got '22'"),
        ({"sync": {"retries": -1}}, "[sync] retries must be >= 0"),
        ({"sync": {"source": "backups"}}, "[sync] source must hold absolute paths"),
        ({"targets": [{"name": "off site"}]}, "[[targets]] #1 name must be a short name"),
        ({"targets": [{}, {"path": "mnt/x"}]}, "[[targets]] #2 path must hold absolute paths"),
        ({"targets": [{"key": "backups"}]}, "[[targets]] #1 key must hold absolute paths"),
        ({"targets": [{"known_hosts": "kh"}]}, "[[targets]] #1 known_hosts must hold absolute"),
        ({"targets": [{"hots": "pi"}]}, "[[targets]] #1 unknown key 'hots'"),
        ({"schedule": {"backup_at": "1:15"}}, "[schedule] backup_at must be a time of day"),
        ({"schedule": {"sync_at": "25:00"}}, "[schedule] sync_at must be a time of day"),
        ({"schedule": {"user": "Root Admin"}}, "[schedule] user must be a system user name"),
        ({"schedule": {"randomized_delay": 721}}, "[schedule] randomized_delay must be between"),
    ],
)
def test_a_wrong_key_or_type_is_an_error_naming_it(
    document: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        config.parse(document)
    assert message in str(caught.value)


def test_full_every_takes_a_weekday_in_any_case_or_a_number_of_days() -> None:
    assert config.parse({"backup": {"full_every": "Monday"}}).backup.full_every == "monday"
    assert config.parse({"backup": {"full_every": 7}}).backup.full_every == 7


def test_load_names_the_file_in_a_toml_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "keyforge.toml"
    path.write_text("[backup\n")
    with pytest.raises(ConfigError, match=r"keyforge.toml: invalid TOML"):
        config.load(path)


def test_a_missing_config_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="keyforge init"):
        config.load(tmp_path / "nope.toml")


def test_config_path_comes_from_option_then_environment_then_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(config.CONFIG_ENV, raising=False)
    assert config.resolve_path(None) == Path("/etc/keyforge/keyforge.toml")
    monkeypatch.setenv(config.CONFIG_ENV, "/srv/k.toml")
    assert config.resolve_path(None) == Path("/srv/k.toml")
    assert config.resolve_path(Path("/x.toml")) == Path("/x.toml")


def test_the_default_template_parses_to_the_defaults() -> None:
    text = config.render_default("server1")
    cfg = config.parse(tomllib.loads(text))
    assert cfg.host == "server1"
    assert cfg.backup == config.parse({"general": {"host": "server1"}}).backup
    # every default is shown, commented where it need not be set
    for key in ("retention_days", "full_every", "compression", "exclude", "nice", "ionice"):
        assert f"#{key} = " in text


def test_the_rendered_default_config_parses_to_exactly_the_default_config() -> None:
    """Template and dataclasses agree: every section, not only [backup]."""
    rendered = config.parse(tomllib.loads(config.render_default("server1")))
    assert rendered == config.parse({"general": {"host": "server1"}})
    assert rendered.sync == config.SyncConfig()
    assert rendered.schedule == config.ScheduleConfig()
    assert rendered.targets == ()


def _uncomment_every_setting(text: str) -> str:
    setting = re.compile(r"^#(\[\[targets\]\]|\[snapshot\]|[a-z_]+ = .*)$")
    return "\n".join(line[1:] if setting.match(line) else line for line in text.splitlines())


def test_uncommenting_every_shown_default_changes_nothing_but_the_examples() -> None:
    text = _uncomment_every_setting(config.render_default("server1"))
    cfg = config.parse(tomllib.loads(text))
    defaults = config.parse({"general": {"host": "server1"}})
    # the only values shown that are not defaults are the examples: exclude, allow_empty, sync
    # source, the two [[targets]] tables, snapshot_at (its default's value for the default
    # sync_at) and the snapshot source
    assert cfg.backup == dataclasses.replace(
        defaults.backup,
        exclude=("/var/cache", "/var/tmp", "lost+found"),
        allow_empty=("/srv/spool",),
    )
    assert cfg.sync == dataclasses.replace(defaults.sync, source="/home/foo/srvbackups")
    assert cfg.schedule == dataclasses.replace(defaults.schedule, snapshot_at="05:30")
    assert cfg.snapshot == dataclasses.replace(defaults.snapshot, source="/home/foo/srvbackups")
    assert len(cfg.targets) == 2


def test_the_example_targets_in_the_default_config_are_complete_and_valid() -> None:
    text = _uncomment_every_setting(config.render_default("server1"))
    offsite, external = sync.select_targets(config.parse(tomllib.loads(text)).targets, None)
    assert isinstance(offsite, sync.RemoteTarget)
    assert offsite.destination == "foo@raspberrypi:srvbackups/"
    assert isinstance(external, sync.LocalTarget)
    assert external.require_mountpoint


def test_every_uncommented_backup_line_still_parses() -> None:
    text = config.render_default("server1")
    section = "[backup]" + text.split("[backup]", 1)[1].split("\n[", 1)[0]
    uncommented = "\n".join(
        line[1:] if line.startswith("#") and " = " in line else line
        for line in section.splitlines()
    )
    cfg = config.parse(tomllib.loads(uncommented))
    assert cfg.backup.exclude == ("/var/cache", "/var/tmp", "lost+found")


@pytest.mark.parametrize(
    "document",
    [
        {"general": {"host": "server1\n"}},
        {"schedule": {"backup_at": "01:15\n"}},
        {"sync": {"bwlimit": "2m\n"}},
        {"schedule": {"user": "root\n"}},
        {"schedule": {"mailto": "root\n"}},
    ],
)
def test_a_value_ending_in_a_newline_is_refused(document: dict[str, object]) -> None:
    # '$' in a regular expression also matches before a final newline; the checks must not
    with pytest.raises(ConfigError):
        config.parse(document)


def test_the_template_shows_encrypt_to_only_as_its_empty_default() -> None:
    """No recipient-looking value a user could uncomment and get encryption to a stranger's
    key (or a parse error): the one assignment is the default, the example is prose."""
    text = config.render_default("server1")
    assignments = [ln for ln in text.splitlines() if re.match(r"^#?\s*encrypt_to\s*=", ln)]
    assert assignments == ["#encrypt_to = []"]
    assert "keyforge keygen-age" in text


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (["age1qqqq"], "entry 1: 'age1qqqq' is not a valid age recipient"),
        (["ecdsa-sha2-nistp256 AAAA"], "ssh-ed25519 and ssh-rsa keys only"),
        (["hello"], "is not an age recipient"),
    ],
)
def test_an_encrypt_to_entry_that_is_no_recipient_is_a_config_error(
    value: list[str], reason: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(reason)) as caught:
        config.parse({"backup": {"encrypt_to": value}})
    assert str(caught.value).startswith("keyforge.toml: [backup] encrypt_to ")
