"""A keyforge.toml for the dump and hook tests, written from plain Python values."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from keyforge import signing
from keyforge.ssh import keys


def _value(value: Any) -> str:
    # JSON's strings, integers, booleans and arrays of them are TOML too
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def _table(values: Mapping[str, Any]) -> str:
    return "".join(f"{key} = {_value(value)}\n" for key, value in values.items())


def write_config(
    tmp_path: Path,
    sources: Sequence[Path],
    *,
    dumps: Sequence[Mapping[str, Any]] = (),
    hooks: Mapping[str, Any] | None = None,
    backup: Mapping[str, Any] | None = None,
    signed: bool = True,
) -> Path:
    """server1's config: ``sources`` into tmp_path/backups, state in tmp_path/state; its
    manifests signed with a key of its own (``signed``), which restore and verify check."""
    text = "[general]\n" + _table({"host": "server1", "state_dir": f"{tmp_path}/state"})
    settings: dict[str, Any] = {
        "sources": [str(s) for s in sources],
        "directory": f"{tmp_path}/backups",
        "full_every": 7,
        "nice": 0,
        "ionice": "none",
    }
    if signed:
        key = tmp_path / "manifest-signing-key"
        if not key.exists():
            keys.write_pair(key, signing.make_key("server1"), force=False)
        settings["signing_key"] = str(key)
    settings.update(backup or {})
    text += "[backup]\n" + _table(settings)
    if hooks:
        text += "[hooks]\n" + _table(hooks)
    for entry in dumps:
        text += "[[dumps]]\n" + _table(entry)
    path = tmp_path / "keyforge.toml"
    path.write_text(text)
    return path
