"""The package's import rules, read from the AST of every module.

* ``sender`` and ``receiver`` never import each other: the two hosts share only ``ssh``,
  ``infra``, ``layout``, ``config`` and ``errors``. rotate's lazy use of the receiver's install
  (a local receiving host's authorized_keys) is the one documented exception.
* ``ssh``, ``infra``, ``layout``, ``config``, ``errors`` (and ``schedule``) import neither
  host, nor the lab, nor the CLI. ``lab`` may import both hosts: the demo runs both.
* every program starts through ``infra.runner`` (the gate's exec of rsync is its start-up
  path, standard library only).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "keyforge"
HOSTS = ("keyforge.sender", "keyforge.receiver")
SHARED = ("ssh", "infra", "layout", "config", "errors", "schedule", "age")
NEVER_FROM_SHARED = ("keyforge.sender", "keyforge.receiver", "keyforge.lab", "keyforge.cli")
# (importing module, imported module): the documented exceptions, each for a reason
EXCEPTIONS = {
    # rotate --local writes this host's authorized_keys with the receiver's install
    ("keyforge.sender.rotate", "keyforge.receiver.install"),
}
# the one module that starts programs, and the gate's exec (its start-up path)
STARTS_PROGRAMS = {"keyforge.infra.runner"}
EXEC_ALLOWED = {"keyforge.receiver.gate"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or lazily inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # 'from keyforge.receiver import install' imports keyforge.receiver.install; its
            # package's __init__ holds a docstring only
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & set(MODULES)
            found.update(submodules or {node.module})
    return {name for name in found if name == "keyforge" or name.startswith("keyforge.")}


def under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def violations(importer: str, imported: set[str]) -> list[str]:
    wrong: list[str] = []
    for target in sorted(imported):
        if (importer, target) in EXCEPTIONS or target not in MODULES:
            continue
        for host, other in (HOSTS, HOSTS[::-1]):
            if under(importer, host) and under(target, other):
                wrong.append(f"{importer} imports {target}: the two hosts never import each other")
        if any(under(importer, f"keyforge.{s}") for s in SHARED) and any(
            under(target, p) for p in NEVER_FROM_SHARED
        ):
            wrong.append(f"{importer} imports {target}: shared code imports no host")
    return wrong


def test_the_package_keeps_its_import_rules() -> None:
    wrong = [v for name, path in MODULES.items() for v in violations(name, imports_of(path))]
    assert wrong == []


def test_every_exception_is_still_used() -> None:
    # an exception left behind after its import went away would hide a new violation
    for importer, target in EXCEPTIONS:
        assert target in imports_of(MODULES[importer]), (importer, target)


@pytest.mark.parametrize(
    ("importer", "imported", "broken"),
    [
        ("keyforge.sender.status", {"keyforge.receiver.snapshot"}, True),
        ("keyforge.receiver.snapshot", {"keyforge.sender.backup"}, True),
        ("keyforge.layout", {"keyforge.sender"}, True),
        ("keyforge.ssh.client", {"keyforge.cli"}, True),
        ("keyforge.config", {"keyforge.lab.sshd"}, True),
        ("keyforge.lab.demo", {"keyforge.sender.backup", "keyforge.receiver.install"}, False),
        ("keyforge.sender.rotate", {"keyforge.receiver.install"}, False),
        ("keyforge.sender.sync", {"keyforge.layout", "keyforge.ssh.client"}, False),
    ],
)
def test_the_rule_sees_a_violation(importer: str, imported: set[str], broken: bool) -> None:
    assert bool(violations(importer, imported)) is broken


def starts_programs(path: Path) -> list[str]:
    """subprocess and os.exec*/spawn*/system calls in ``path``."""
    calls: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            if isinstance(owner, ast.Name) and (
                (owner.id == "subprocess" and node.func.attr[0].islower())
                or (owner.id == "os" and node.func.attr.startswith(("exec", "spawn", "system")))
                or (owner.id == "os" and node.func.attr in ("popen", "posix_spawn", "fork"))
            ):
                calls.append(f"{owner.id}.{node.func.attr} (line {node.lineno})")
    return calls


def test_every_program_starts_through_the_runner() -> None:
    found = {
        name: starts_programs(path)
        for name, path in MODULES.items()
        if name not in STARTS_PROGRAMS and starts_programs(path)
    }
    assert set(found) <= EXEC_ALLOWED, found
    assert all(call.startswith("os.execv ") for calls in found.values() for call in calls)
