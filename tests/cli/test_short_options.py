"""One short option, one meaning: -c is --config and -t is --target on every command.

install's -c (for --command) and pair's -t (for --type) are the old spellings: they keep
working for one release, with a warning on stderr, and never beside their new spelling.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from keyforge.cli import app

runner = CliRunner()
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA99e4w4N2v+R70Lqw2rv2+GcJGHoCiQW3RJibF+KIVm foo@server1"
PUSH = "rsync --server -logDtprze.iLsfxCIvu --delete . srvbackups/"
# what each short option means wherever it appears
MEANING = {"-c": "--config", "-t": "--target", "-k": "--key", "-f": "--authorized-keys"}


def every_visible_option() -> list[tuple[str, list[str]]]:
    """(command path, option spellings) for every option --help shows, on every command."""
    found: list[tuple[str, list[str]]] = []

    def walk(command: object, path: str) -> None:
        for param in getattr(command, "params", []):
            if getattr(param, "hidden", False) or not param.opts[0].startswith("-"):
                continue
            found.append((path, [*param.opts, *param.secondary_opts]))
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{path} {name}".strip())

    walk(get_command(app), "")
    return found


def test_a_short_option_means_the_same_long_option_on_every_command() -> None:
    wrong = [
        f"{path}: {' '.join(spellings)}"
        for path, spellings in every_visible_option()
        for short, long in MEANING.items()
        if short in spellings and long not in spellings
    ]
    assert wrong == []
    # the check has something to check: -c and -t are in use
    spellings = {s for _, names in every_visible_option() for s in names}
    assert {"-c", "-t"} <= spellings


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "foo"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    (tmp_path / "a.pub").write_text(KEY + "\n")
    return home


def install(home: Path, *extra: str):  # type: ignore[no-untyped-def]
    keys = home / ".ssh" / "authorized_keys"
    args = ["install", "--key", str(home.parent / "a.pub"), "-f", str(keys), "--from", "192.0.2.10"]
    return runner.invoke(app, [*args, *extra])


def test_install_dash_c_still_sets_the_command_with_a_deprecation_warning(home: Path) -> None:
    result = install(home, "-c", PUSH)

    assert result.exit_code == 0, result.output
    assert f'command="{PUSH}"' in (home / ".ssh" / "authorized_keys").read_text()
    (warning,) = [line for line in result.stderr.splitlines() if "deprecated" in line]
    assert warning.startswith("warning: 'keyforge install -c' is deprecated")
    assert "write --command" in warning
    assert "-c means --config" in warning


def test_install_command_spelt_out_gets_no_warning(home: Path) -> None:
    result = install(home, "--command", PUSH)
    assert result.exit_code == 0, result.output
    assert "deprecated" not in result.stderr


def test_install_dash_c_beside_command_is_refused(home: Path) -> None:
    result = install(home, "-c", PUSH, "--command", PUSH)

    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "keyforge: error: -c and --command are the same option here; give --command"
    )
    assert not (home / ".ssh" / "authorized_keys").exists()


def test_pair_dash_t_still_sets_the_type_with_a_deprecation_warning(tmp_path: Path) -> None:
    result = runner.invoke(app, ["pair", str(tmp_path / "k"), "-t", "rsa", "--dry-run"])

    assert result.exit_code == 0, result.output
    assert "would make a 4096-bit rsa key" in result.stdout
    (warning,) = result.stderr.splitlines()
    assert warning.startswith("warning: 'keyforge pair -t' is deprecated")
    assert "write --type" in warning
    assert "-t means --target" in warning


def test_pair_dash_t_beside_type_is_refused(tmp_path: Path) -> None:
    result = runner.invoke(app, ["pair", str(tmp_path / "k"), "-t", "rsa", "--type", "rsa"])

    assert result.exit_code == 2
    assert "-t and --type are the same option here; give --type" in result.stderr
    assert not (tmp_path / "k").exists()


def test_pair_type_spelt_out_gets_no_warning(tmp_path: Path) -> None:
    result = runner.invoke(app, ["pair", str(tmp_path / "k"), "--type", "ecdsa", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "would make a 256-bit ecdsa key" in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize(("command", "old"), [("install", "-c"), ("pair", "-t")])
def test_the_old_spellings_are_not_shown_in_help(command: str, old: str) -> None:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert f"{old}," not in result.output
