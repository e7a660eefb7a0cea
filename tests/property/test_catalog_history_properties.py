"""The tree of every run, as list and find rebuild it from tar's listings, equals the tree that
was backed up: random changes (files written, deleted, directories renamed and made) between
real keyforge backups, each checked against what the source held at that run."""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from keyforge import config, layout
from keyforge.sender import backup, catalog

DAY1 = dt.datetime(2026, 11, 23, 1, 15)

NAMES = st.sampled_from(["a", "b", "c", "f.conf", "g", "with space", "x\ny"])
ACTIONS = st.one_of(
    st.tuples(st.just("write"), st.integers(0, 9), NAMES, st.binary(max_size=30)),
    st.tuples(st.just("delete"), st.integers(0, 99), NAMES, st.just(b"")),
    st.tuples(st.just("rename"), st.integers(0, 99), NAMES, st.just(b"")),
    st.tuples(st.just("mkdir"), st.integers(0, 9), NAMES, st.just(b"")),
)


def _tree(top: Path) -> dict[bytes, tuple[str, int]]:
    base = os.fsencode(top)
    found: dict[bytes, tuple[str, int]] = {b"": ("dir", 0)}
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames:
            found[os.path.relpath(dirpath + b"/" + name, base)] = ("dir", 0)
        for name in filenames:
            full = dirpath + b"/" + name
            found[os.path.relpath(full, base)] = ("file", os.lstat(full).st_size)
    return found


def _dirs(top: Path) -> list[Path]:
    return sorted([top, *(p for p in top.rglob("*") if p.is_dir())])


def _apply(top: Path, action: tuple[str, int, str, bytes]) -> None:
    kind, index, name, data = action
    dirs = _dirs(top)
    files = sorted(p for p in top.rglob("*") if p.is_file())
    if kind == "write":
        parent = dirs[index % len(dirs)]
        if not (parent / name).is_dir():
            (parent / name).write_bytes(data)
    elif kind == "delete" and files:
        files[index % len(files)].unlink()
    elif kind == "rename" and len(dirs) > 1:
        old = dirs[1 + index % (len(dirs) - 1)]
        if not (old.parent / name).exists():
            old.rename(old.parent / name)
    elif kind == "mkdir":
        parent = dirs[index % len(dirs)]
        if not (parent / name).exists():
            (parent / name).mkdir()


@settings(max_examples=15)
@given(st.lists(st.lists(ACTIONS, max_size=5), min_size=1, max_size=4))
def test_every_runs_rebuilt_tree_is_the_tree_backed_up(
    steps: list[list[tuple[str, int, str, bytes]]],
) -> None:
    with tempfile.TemporaryDirectory() as top:
        src = Path(top) / "src"
        (src / "d").mkdir(parents=True)
        (src / "d" / "f.conf").write_bytes(b"first\n")
        cfg = config.parse(
            {
                "general": {"host": "server1"},
                "backup": {
                    "sources": [str(src)],
                    "directory": str(Path(top) / "backups"),
                    "full_every": 7,
                    "nice": 0,
                    "ionice": "none",
                    "shrink_warn_percent": 0,
                },
            }
        )
        expected = []
        for day, actions in enumerate([[], *steps]):
            for action in actions:
                _apply(src, action)
            backup.run_backup(cfg, now=DAY1 + dt.timedelta(days=day), allow_empty=True)
            expected.append(_tree(src))
        runs = catalog.history(cfg, layout.source_slug(str(src)))
        assert len(runs) == len(expected)
        for run, want in zip(runs, expected, strict=True):
            got = {
                path: (held.member.kind, held.member.size if held.member.kind == "file" else 0)
                for path, held in run.state.items()
            }
            assert got == want, run.record.name
