"""The library does every install 'keyforge install' does: keyforge.receiver.install's
InstallRequest and perform_install write the same authorized_keys file, with the same notes, as
the command line given the same options, in each of the four ways (plain, --from-capture,
--gate, --like), and refuse the same combinations with the same words."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from keyforge.cli import app
from keyforge.errors import UsageError
from keyforge.receiver import capture, install
from keyforge.ssh import authorized_keys as ak

runner = CliRunner()
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA99e4w4N2v+R70Lqw2rv2+GcJGHoCiQW3RJibF+KIVm foo@server1"
OLD = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOfJd1ZKjYUhRaG0Ywy/oFMDHBdRJH+nWVFAIkqUM4Zf foo@old"
PUSH = "rsync --server -logDtprze.iLsfxCIvu --delete . ~/srvbackups/"
PROGRAM = "/opt/keyforge/bin/keyforge"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "foo"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    (home / "srvbackups").mkdir()
    monkeypatch.setenv("HOME", str(home))
    (tmp_path / "a.pub").write_text(KEY + "\n")
    (tmp_path / "old.pub").write_text(OLD + "\n")
    return home


def keys_file(home: Path) -> Path:
    return home / ".ssh" / "authorized_keys"


def captured_push(home: Path) -> None:
    """capture start, then one push through the recorder as sshd would run it."""
    capture.start(keys_file(home), ak.parse_public_key(KEY), from_patterns=["192.0.2.0/24"])
    (line,) = ak.parse(keys_file(home).read_text())
    assert line.entry is not None
    (recorder,) = line.entry.values("command")
    env = {"PATH": "/usr/bin:/bin", "SSH_CLIENT": "192.0.2.10 5 22", "SSH_ORIGINAL_COMMAND": PUSH}
    subprocess.run(["/bin/sh", "-c", recorder], env=env, capture_output=True, check=False)


def with_old_key(home: Path) -> None:
    keys_file(home).write_text(f'restrict,from="192.0.2.10",command="{PUSH}" {OLD}\n')
    keys_file(home).chmod(0o600)


# (set-up, the command line's options, the same request's fields)
MODES: dict[str, tuple[Any, list[str], dict[str, Any]]] = {
    "plain": (
        None,
        ["--from", "192.0.2.10,198.51.100.0/24", "--command", PUSH, "--expiry-time", "20991231"],
        {
            "from_patterns": ["192.0.2.10", "198.51.100.0/24"],
            "command": PUSH,
            "expiry_time": "20991231",
        },
    ),
    "plain, a warned path": (
        None,
        ["--any-source", "--command", "rsync --server -a . ./", "--no-restrict"],
        {"any_source": True, "command": "rsync --server -a . ./", "restrict": False},
    ),
    "from-capture": (
        captured_push,
        ["--from-capture", "--from-captured-address"],
        {"from_capture": True, "from_captured_address": True},
    ),
    "gate": (
        None,
        ["--from", "192.0.2.10", "--gate", "{home}/srvbackups", "--command", PUSH, "--exact"],
        {"from_patterns": ["192.0.2.10"], "gate": "{home}/srvbackups", "command": PUSH},
    ),
    "gate from capture": (
        captured_push,
        ["--from", "192.0.2.10", "--gate", "{home}/srvbackups", "--from-capture"],
        {"from_patterns": ["192.0.2.10"], "gate": "{home}/srvbackups", "from_capture": True},
    ),
    "like": (with_old_key, ["--like", "{tmp}/old.pub"], {"like": "{tmp}/old.pub"}),
}
GATE_EXTRAS = (["--gate-program", PROGRAM, "--allow-unconfined"], {"gate_program": PROGRAM})


def expand(value: Any, home: Path) -> Any:
    if isinstance(value, str):
        return value.replace("{home}", str(home)).replace("{tmp}", str(home.parent))
    return value


def cli_args(mode: str, home: Path) -> list[str]:
    _, args, fields = MODES[mode]
    args = [expand(a, home) for a in args]
    if "gate" in fields:
        args += GATE_EXTRAS[0]
    keys = ["--key", str(home.parent / "a.pub"), "-f", str(keys_file(home))]
    return ["install", *keys, *args]


def request_for(mode: str, home: Path) -> install.InstallRequest:
    _, args, fields = MODES[mode]
    values = {name: expand(value, home) for name, value in fields.items()}
    if "gate" in values:
        values = {**values, **GATE_EXTRAS[1], "allow_unconfined": True}
        values["gate"] = Path(values["gate"])
        values["exact"] = "--exact" in args
    if "like" in values:
        values["like"] = str(values["like"])
    return install.InstallRequest(
        key=home.parent / "a.pub", authorized_keys=keys_file(home), **values
    )


@pytest.mark.parametrize("mode", MODES)
def test_the_library_installs_what_the_command_line_installs(mode: str, home: Path) -> None:
    setup = MODES[mode][0]
    if setup is not None:
        setup(home)
    before = keys_file(home).read_bytes() if keys_file(home).exists() else None
    told: list[install.Note] = []

    done = install.perform_install(request_for(mode, home), tell=told.append)
    by_library = keys_file(home).read_bytes()
    if before is None:
        keys_file(home).unlink()
    else:
        keys_file(home).write_bytes(before)
    result = runner.invoke(app, cli_args(mode, home))

    assert result.exit_code == 0, result.output
    assert keys_file(home).read_bytes() == by_library
    assert done.result.written
    assert list(done.notes) == told
    # each note, in order, is what the command line printed before its report
    printed = {False: result.stdout.splitlines(), True: result.stderr.splitlines()}
    for warning in (False, True):
        texts = [n.text for n in done.notes if n.warning is warning]
        shown = [line.removeprefix("warning: ") for line in printed[warning]][: len(texts)]
        assert shown == texts
    if "gate" not in mode:  # a gate on an rsync without --confine-root warns too
        assert any(n.warning for n in done.notes) == (mode == "plain, a warned path")


REFUSED = [
    (["--like", "{tmp}/old.pub", "--from", "192.0.2.1"], {"like": "{tmp}/old.pub"}),
    (["--keep-tilde", "--command", PUSH], {"keep_tilde": True, "command": PUSH}),
    (["--from-capture", "--command", PUSH], {"from_capture": True, "command": PUSH}),
    (
        ["--from-capture", "--from-captured-address", "--any-source"],
        {"from_capture": True, "from_captured_address": True, "any_source": True},
    ),
    (["--exact", "--gate-log", "/tmp/g.log", "--command", PUSH], {"exact": True}),
    (["--command", PUSH], {"command": PUSH}),
    (["--from", "192.0.2.1"], {}),
]


@pytest.mark.parametrize(("args", "fields"), REFUSED, ids=lambda v: " ".join(v) if v else "")
def test_the_library_refuses_what_the_command_line_refuses(
    args: list[str], fields: dict[str, Any], home: Path
) -> None:
    fields = {name: expand(value, home) for name, value in fields.items()}
    args = [expand(a, home) for a in args]
    if "--from" in args:
        fields["from_patterns"] = [args[args.index("--from") + 1]]
    if "--gate-log" in args:
        fields["gate_log"] = Path(args[args.index("--gate-log") + 1])
    request = install.InstallRequest(
        key=home.parent / "a.pub", authorized_keys=keys_file(home), **fields
    )

    with pytest.raises(UsageError) as refused:
        install.perform_install(request)
    result = runner.invoke(app, ["install", "--key", str(home.parent / "a.pub"), *args])

    assert result.exit_code == 2
    assert result.stderr == f"keyforge: error: {refused.value}\n"
    assert not keys_file(home).exists()


def test_options_are_checked_before_the_key_is_read(home: Path) -> None:
    request = install.InstallRequest(key=home / "missing.pub", keep_tilde=True, command=PUSH)
    with pytest.raises(UsageError, match="only make sense with --from-capture"):
        install.perform_install(request)


def test_a_note_is_told_before_a_later_step_refuses(home: Path) -> None:
    """What was learnt from the capture reaches the admin even when the line is refused."""
    captured_push(home)
    told: list[install.Note] = []
    request = install.InstallRequest(
        key=ak.parse_public_key(KEY),
        authorized_keys=keys_file(home),
        from_capture=True,
        any_source=True,
        dropbear=True,
        expiry_time="20991231",  # Dropbear has no expiry-time=: refused after the capture
    )

    with pytest.raises(UsageError):
        install.perform_install(request, tell=told.append)

    assert told[0].text == f"captured at {told[0].text.split()[2]} from 192.0.2.10: {PUSH}"
    result = runner.invoke(app, ["install", "--key", str(home.parent / "a.pub"),
                                 "--from-capture", "--any-source", "--dropbear",
                                 "--expiry-time", "20991231"])  # fmt: skip
    assert result.exit_code == 2
    assert result.stdout.splitlines()[0] == told[0].text


def test_a_request_is_a_frozen_value() -> None:
    request = install.InstallRequest(key=Path("a.pub"), command=PUSH)
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.command = "true"  # type: ignore[misc]
