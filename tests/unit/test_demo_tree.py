"""The demo's tree comparison, which decides whether the restore from the offsite copy is right."""

from __future__ import annotations

from pathlib import Path

from keyforge.lab import demo


def test_trees_that_differ_are_told_apart() -> None:
    expected = {"a": ("file", 0o644, "x"), "l": ("symlink", 0, "a"), "d": ("dir", 0o755, "")}
    actual = {"a": ("file", 0o600, "x"), "l": ("symlink", 0, "b"), "e": ("file", 0o644, "y")}
    assert demo.tree_differences(expected, actual) == [
        "d: missing",
        "e: unexpected",
        "a: mode 0600, expected 0644",
        "l: target differs",
    ]
    assert demo.tree_differences(expected, dict(expected)) == []


def test_the_sample_tree_snapshot_sees_content_modes_and_links(tmp_path: Path) -> None:
    demo.make_sample_tree(tmp_path)
    before = demo.tree_snapshot(tmp_path)
    assert before["home/foo/hostname"] == ("symlink", 0, "../../etc/hostname")
    assert before["etc/app/app.conf"][:2] == ("file", 0o600)
    demo.change_sample_tree(tmp_path)
    after = demo.tree_snapshot(tmp_path)
    assert demo.tree_differences(before, after) == [
        "var/log/empty.log: missing",
        "home/foo/todo.txt: unexpected",
        "etc/hostname: content differs",
    ]
