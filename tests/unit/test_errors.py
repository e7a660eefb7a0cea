"""Every exception lives in errors.py with one exit code per meaning, and the README says so."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from pathlib import Path

import keyforge
from keyforge import errors
from keyforge.receiver import audit

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
# a wrapper that re-raises with its first failed source's own code and carries the backup's
# report, a sender type errors.py must not import: it adds no meaning of its own
WRAPPERS = {"keyforge.sender.backup.SourcesFailedError"}


def keyforge_modules() -> list[str]:
    return [
        info.name
        for info in pkgutil.walk_packages(keyforge.__path__, "keyforge.")
        # the CLI defines no exceptions (the AST test below checks every file), and __main__ runs it
        if not info.name.startswith(("keyforge.cli", "keyforge.__main__"))
    ]


def error_classes() -> list[type[errors.KeyforgeError]]:
    for name in keyforge_modules():
        importlib.import_module(name)
    found: list[type[errors.KeyforgeError]] = []
    todo = [errors.KeyforgeError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return [c for c in found if f"{c.__module__}.{c.__qualname__}" not in WRAPPERS]


def readme_rows() -> dict[int, tuple[str, str]]:
    section = README.split("### Exit codes", 1)[1].split("\n#", 1)[0]
    rows: dict[int, tuple[str, str]] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].isdigit():
            assert int(cells[0]) not in rows, f"README lists exit {cells[0]} twice"
            rows[int(cells[0])] = (cells[1], cells[2])
    return rows


def classes_for(code: int) -> str:
    names = sorted(c.__name__ for c in error_classes() if c.exit_code == code)
    return ", ".join(f"`{name}`" for name in names)


def test_every_exception_class_is_defined_in_errors() -> None:
    elsewhere = [
        f"{c.__module__}.{c.__qualname__}"
        for c in error_classes()
        if c.__module__ != errors.__name__
    ]
    assert elsewhere == []


def test_no_module_defines_an_exception_outside_errors() -> None:
    # also the ones that are not KeyforgeErrors: the pure readers' own ValueErrors (wire's, and
    # rsync_server's, which capture and the gate each turn into their own refusal)
    allowed = {
        "keyforge/ssh/wire.py": {"WireError"},
        "keyforge/ssh/rsync_server.py": {"CommandSyntaxError"},
        "keyforge/ssh/authorized_keys.py": {"_Invalid"},
    }
    allowed["keyforge/sender/backup.py"] = {"SourcesFailedError"}
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "keyforge").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel == "keyforge/errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and any(
                isinstance(base, ast.Name) and re.search(r"(Error|Exception)$", base.id)
                for base in node.bases
            ):
                found.setdefault(rel, set()).add(node.name)
    assert found == allowed


def test_each_exit_code_has_one_meaning() -> None:
    codes = [code for code, _ in errors.EXIT_CODES]
    assert len(codes) == len(set(codes))
    meanings = [meaning for _, meaning in errors.EXIT_CODES]
    assert len(meanings) == len(set(meanings))


def test_every_class_exit_code_is_in_the_table() -> None:
    table = dict(errors.EXIT_CODES)
    missing = {c.__name__: c.exit_code for c in error_classes() if c.exit_code not in table}
    assert missing == {}


def test_the_codes_users_rely_on_keep_their_meaning() -> None:
    assert errors.KeyforgeError.exit_code == 1  # a check found a problem
    assert errors.GateRefusalError.exit_code == 1  # the gate's refusal, as the client sees it
    assert errors.UsageError.exit_code == 2  # as Typer's own usage errors
    assert errors.ParseError.exit_code == 3
    assert errors.FileError.exit_code == 4
    assert errors.CommandError.exit_code == 5
    assert errors.LockedError.exit_code == 75
    assert audit.EXIT_CODES == {"info": 0, "low": 10, "medium": 11, "high": 12, "critical": 13}


def test_codes_that_meant_two_things_now_mean_one() -> None:
    # 2, 3, 4 and 5 each meant two or three things; each meaning has a code of its own now
    by_code: dict[int, set[str]] = {}
    for cls in error_classes():
        by_code.setdefault(cls.exit_code, set()).add(cls.__name__)
    assert by_code[2] == {
        "UsageError", "GateUsageError", "NotRsyncServerError", "ForbiddenDestinationError"
    }  # fmt: skip
    assert by_code[3] == {"ParseError"}
    assert by_code[4] == {"FileError"}
    assert by_code[5] == {"CommandError"}


def test_audit_codes_are_rows_of_the_table() -> None:
    table = dict(errors.EXIT_CODES)
    for severity, code in audit.EXIT_CODES.items():
        if code:
            assert table[code] == f"audit: the worst finding is {severity}"


def test_the_readme_table_is_the_errors_table() -> None:
    expected = {code: (meaning, classes_for(code)) for code, meaning in errors.EXIT_CODES}
    assert readme_rows() == expected


def test_errors_imports_only_the_standard_library() -> None:
    # the gate's start-up path imports errors: it must stay cheap
    tree = ast.parse((ROOT / "keyforge" / "errors.py").read_text(encoding="utf-8"))
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"__future__", "os"}
