"""The keyforge.offsite collection: it builds, its docs show, ansible-test sanity passes, and its
modules, run by ansible itself, do what keyforge install, revoke and pair do."""

from __future__ import annotations

import os
import re
import shutil
import stat
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible_lab import (
    COLLECTION_SOURCE,
    collection_tree,
    environment,
    program,
    run,
    run_module,
    sanity,
)

import keyforge
from keyforge.ssh import keys

COMMAND = "rsync --server -logDtprze.iLsfxCIvu --delete . /home/foo/offsite/server1/"
# the sanity tests that must run (and pass) on the modules; ansible-test lists them as it goes
SANITY_TESTS = ("validate-modules", "ansible-doc", "pylint", "pep8", "import", "compile")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("collections")
    collection_tree(base)
    return base


@pytest.fixture
def key_line(tmp_path: Path) -> str:
    pair = keys.generate("ed25519", comment="root@server1")
    return pair.public_line


def _other_key() -> str:
    return keys.generate("ed25519", comment="admin").public_line


# --- the collection as a whole -----------------------------------------------------------------


def test_galaxy_build_makes_the_collection_with_both_modules_and_the_role(tmp_path: Path) -> None:
    env = environment(tmp_path)
    argv = [program("ansible-galaxy"), "collection", "build", str(COLLECTION_SOURCE)]
    run([*argv, "--output-path", str(tmp_path)], env=env)
    [built] = tmp_path.glob("keyforge-offsite-*.tar.gz")
    with tarfile.open(built) as archive:
        names = set(archive.getnames())
    for path in (
        "galaxy.yml" if "galaxy.yml" in names else "MANIFEST.json",
        "plugins/modules/authorized_key.py",
        "plugins/modules/pair.py",
        "roles/offsite/tasks/main.yml",
        "playbooks/offsite.yml",
    ):
        assert path in names, sorted(names)


def test_the_collection_version_is_keyforges() -> None:
    galaxy = yaml.safe_load((COLLECTION_SOURCE / "galaxy.yml").read_text())
    assert (galaxy["namespace"], galaxy["name"]) == ("keyforge", "offsite")
    assert galaxy["version"] == keyforge.__version__


@pytest.mark.parametrize(
    ("module", "expected"),
    [("authorized_key", ("from", "command", "gate", "expiry_time")), ("pair", ("comment",))],
)
def test_ansible_doc_shows_each_modules_documentation(
    root: Path, module: str, expected: tuple[str, ...]
) -> None:
    result = run([program("ansible-doc"), f"keyforge.offsite.{module}"], env=environment(root))
    assert f"keyforge.offsite.{module}" in result.stdout
    assert "check_mode" in result.stdout
    for option in expected:
        assert re.search(rf"^\s*[-=] {option}\b", result.stdout, re.MULTILINE), result.stdout


def test_ansible_test_sanity_passes_on_the_collection(root: Path) -> None:
    result = sanity(root / "ansible_collections" / "keyforge" / "offsite")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    ran = set(re.findall(r'Running sanity test "([a-z0-9-]+)"', result.stdout + result.stderr))
    assert set(SANITY_TESTS) <= ran, sorted(ran)


def test_ansible_test_sanity_fails_an_option_the_docs_do_not_describe(tmp_path: Path) -> None:
    collection = collection_tree(tmp_path)
    module = collection / "plugins" / "modules" / "authorized_key.py"
    text = module.read_text()
    spec = '    "any_source": dict(type="bool", default=False),\n'
    assert spec in text
    module.write_text(text.replace(spec, spec + '    "undocumented": dict(type="str"),\n'))
    result = sanity(collection, "validate-modules")
    assert result.returncode != 0
    assert "undocumented-parameter" in result.stdout + result.stderr


# --- authorized_key ------------------------------------------------------------------------


def _install(root: Path, path: Path, key: str, **options: Any) -> dict[str, Any]:
    check = options.pop("check", False)
    diff = options.pop("diff", False)
    args = {"path": str(path), "key": key, **options}
    return run_module(root, "authorized_key", args, check=check, diff=diff)


def test_authorized_key_installs_the_locked_line_then_reports_no_change(
    root: Path, tmp_path: Path, key_line: str
) -> None:
    path = tmp_path / ".ssh" / "authorized_keys"
    first = _install(root, path, key_line, **{"from": ["192.0.2.5"], "command": COMMAND})
    assert first["changed"] is True, first
    assert first["plan"] == "added"
    text = path.read_text()
    assert text == first["line"] + "\n"
    assert text.startswith("restrict,no-port-forwarding,")
    assert f'from="192.0.2.5",command="{COMMAND}" {key_line}' in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = _install(root, path, key_line, **{"from": ["192.0.2.5"], "command": COMMAND})
    assert again["changed"] is False
    assert again["plan"] == "unchanged"


def test_check_mode_with_diff_shows_the_change_and_writes_nothing(
    root: Path, tmp_path: Path, key_line: str
) -> None:
    path = tmp_path / "authorized_keys"
    admin = _other_key()
    original = f"# admin\r\n{admin}\r\n\n"
    path.write_bytes(original.encode())
    result = _install(
        root, path, key_line, check=True, diff=True, **{"from": ["192.0.2.5"], "command": COMMAND}
    )
    assert result["changed"] is True
    assert result["diff"]["before"] == original
    assert result["diff"]["after"].startswith(original)
    assert COMMAND in result["diff"]["after"]
    assert path.read_bytes() == original.encode()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["authorized_keys"]


def test_other_lines_stay_byte_for_byte_and_the_same_key_elsewhere_is_not_merged(
    root: Path, tmp_path: Path, key_line: str
) -> None:
    """Another user's line of another key with its own from= stays as it was: ansible.posix
    collapses lines of one key, keyforge replaces only this key's line, where it stands."""
    path = tmp_path / "authorized_keys"
    admin = _other_key()
    before = f'from="198.51.100.7" {admin}  \n# keep me\n{key_line}\n'
    path.write_text(before)
    result = _install(root, path, key_line, **{"from": ["192.0.2.5"], "command": COMMAND})
    assert result["plan"] == "replaced"
    lines = path.read_text().splitlines(keepends=True)
    assert lines[:2] == [f'from="198.51.100.7" {admin}  \n', "# keep me\n"]
    assert lines[2] == result["line"] + "\n"
    assert (tmp_path / "authorized_keys.keyforge-bak").read_text() == before
    assert result["backup_file"] == str(tmp_path / "authorized_keys.keyforge-bak")


def test_a_symbolic_link_is_refused_and_its_target_untouched(
    root: Path, tmp_path: Path, key_line: str
) -> None:
    target = tmp_path / "shadow"
    target.write_text("root:x:0:0\n")
    link = tmp_path / "authorized_keys"
    link.symlink_to(target)
    result = _install(root, link, key_line, **{"from": ["192.0.2.5"], "command": COMMAND})
    assert result.get("failed") is True
    assert "is a symbolic link" in result["msg"]
    assert result["exit_code"] == 4
    assert target.read_text() == "root:x:0:0\n"


def test_a_missing_from_and_a_bad_command_are_refused_with_keyforges_reasons(
    root: Path, tmp_path: Path, key_line: str
) -> None:
    path = tmp_path / "authorized_keys"
    no_from = _install(root, path, key_line, command=COMMAND)
    assert no_from.get("failed") is True
    assert "--from" in no_from["msg"]
    newline = _install(root, path, key_line, **{"from": ["192.0.2.5"], "command": "a\nb"})
    assert newline.get("failed") is True
    assert not path.exists()


def test_expiry_and_gate_are_structured_options(root: Path, tmp_path: Path, key_line: str) -> None:
    home = tmp_path / "home"
    (home / "copy").mkdir(parents=True)
    path = home / ".ssh" / "authorized_keys"
    result = _install(
        root,
        path,
        key_line,
        **{
            "from": ["192.0.2.5"],
            "gate": str(home / "copy"),
            "allow_unconfined": True,
            "expiry_time": "20991231",
        },
    )
    assert result["changed"] is True, result
    assert 'expiry-time="20991231"' in result["line"]
    assert " gate " in result["line"]
    assert str(home / "copy") in result["line"]


def test_state_absent_revokes_every_line_of_the_key(
    root: Path, tmp_path: Path, key_line: str
) -> None:
    path = tmp_path / "authorized_keys"
    admin = _other_key()
    path.write_text(f'{key_line}\n{admin}\nfrom="192.0.2.9" {key_line}\n')
    result = _install(root, path, key_line, state="absent", diff=True)
    assert result["changed"] is True
    assert path.read_text() == f"{admin}\n"
    assert _install(root, path, key_line, state="absent")["changed"] is False


def test_without_keyforge_the_module_says_so(root: Path, tmp_path: Path, key_line: str) -> None:
    bare = tmp_path / "bare"
    python = shutil.which("python3", path="/usr/bin") or "/usr/bin/python3"
    venv = run([python, "-m", "venv", "--without-pip", str(bare)], env=dict(os.environ))
    assert venv.returncode == 0
    args = {"path": str(tmp_path / "ak"), "key": key_line, "command": COMMAND}
    result = run_module(root, "authorized_key", args, python=str(bare / "bin" / "python"))
    assert result.get("failed") is True
    assert "keyforge" in result["msg"]
    assert "ansible_python_interpreter" in result["msg"]


# --- pair ------------------------------------------------------------------------------------


def test_pair_makes_the_key_once_and_returns_only_the_public_half(
    root: Path, tmp_path: Path
) -> None:
    private = tmp_path / "ssh" / "backups"
    private.parent.mkdir()
    args = {"path": str(private), "comment": "root@server1"}
    checked = run_module(root, "pair", args, check=True)
    assert checked["changed"] is True
    assert not private.exists()
    made = run_module(root, "pair", args)
    assert made["changed"] is True
    secret = private.read_text()
    assert "OPENSSH PRIVATE KEY" in secret
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    public = Path(f"{private}.pub").read_text().strip()
    assert made["public_key"] == public
    assert made["fingerprint"] == keys.fingerprint(public)
    body = "".join(secret.splitlines()[1:-1])
    assert body[:40] not in repr(made)
    again = run_module(root, "pair", args)
    assert again["changed"] is False
    assert again["public_key"] == public
    assert private.read_text() == secret


def test_pair_refuses_weak_keys_and_a_half_pair(root: Path, tmp_path: Path) -> None:
    weak = run_module(root, "pair", {"path": str(tmp_path / "k"), "type": "rsa", "bits": 2048})
    assert weak.get("failed") is True
    assert "too weak" in weak["msg"]
    (tmp_path / "half").write_text("not a key")
    half = run_module(root, "pair", {"path": str(tmp_path / "half")})
    assert half.get("failed") is True
    assert "incomplete" in half["msg"]


def test_the_readmes_playbook_is_the_collections_and_runs_by_its_name(root: Path) -> None:
    readme = (COLLECTION_SOURCE.parent / "README.md").read_text()
    playbook = (COLLECTION_SOURCE / "playbooks" / "offsite.yml").read_text()
    assert f"```yaml\n{playbook}```" in readme
    argv = [program("ansible-playbook"), "-i", "localhost,", "--syntax-check"]
    result = run([*argv, "keyforge.offsite.offsite"], env=environment(root))
    found = "ansible_collections/keyforge/offsite/playbooks/offsite.yml"
    assert f"playbook: {root / found}" in result.stdout
