"""tar's verbose listing, read back: rendered lines round-trip, real tar agrees, and no line
makes the reader do anything but return a member or refuse."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyforge.errors import CommandError
from keyforge.sender import listing

# tar's C-style quoting, as tests/data would hold it: the reader must invert exactly this
_C_ESCAPES = {7: "\\a", 8: "\\b", 12: "\\f", 10: "\\n", 13: "\\r", 9: "\\t", 11: "\\v"}


def c_quote(raw: bytes) -> str:
    out = []
    for byte in raw:
        if byte in _C_ESCAPES:
            out.append(_C_ESCAPES[byte])
        elif byte in (ord("\\"), ord('"')):
            out.append("\\" + chr(byte))
        elif 32 <= byte < 127:
            out.append(chr(byte))
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def mode_text(kind: str, mode: int) -> str:
    letters = "rwxrwxrwx"
    chars = [letters[i] if mode & (1 << (8 - i)) else "-" for i in range(9)]
    for index, bit, lower, upper in (
        (2, 0o4000, "s", "S"),
        (5, 0o2000, "s", "S"),
        (8, 0o1000, "t", "T"),
    ):
        if mode & bit:
            chars[index] = lower if chars[index] != "-" else upper
    kind_char = {v: k for k, v in listing.KINDS.items()}[kind]
    return kind_char + "".join(chars)


names = st.lists(
    st.binary(min_size=1, max_size=12).filter(
        lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b"..")
    ),
    min_size=1,
    max_size=3,
).map(b"/".join)


@st.composite
def members(draw: st.DrawFn) -> listing.Member:
    kind = draw(st.sampled_from(["file", "dir", "symlink", "hardlink", "fifo"]))
    target = b""
    if kind == "symlink":
        target = draw(st.binary(min_size=1, max_size=20).filter(lambda b: b"\0" not in b))
    elif kind == "hardlink":
        target = draw(names)
    return listing.Member(
        path=draw(names),
        kind=kind,
        mode=draw(st.integers(0, 0o7777)),
        uid=draw(st.integers(0, 2**32 - 1)),
        gid=draw(st.integers(0, 2**32 - 1)),
        size=draw(st.integers(0, 2**40)) if kind == "file" else 0,
        mtime_ns=draw(st.integers(0, 4102444799)) * 1_000_000_000,
        target=target,
    )


def render(member: listing.Member, *, fraction: str = "") -> bytes:
    when = dt.datetime.fromtimestamp(member.mtime, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    name = c_quote(b"./" + member.path + (b"/" if member.kind == "dir" else b""))
    owner = f"{member.uid}/{member.gid}"
    mode = mode_text(member.kind, member.mode)
    line = f"{mode} {owner} {member.size:>15} {when}{fraction} {name}"
    if member.kind == "symlink":
        line += " -> " + c_quote(member.target)
    elif member.kind == "hardlink":
        line += " link to " + c_quote(b"./" + member.target)
    return line.encode()


@given(st.lists(members(), max_size=8))
def test_a_rendered_listing_reads_back_exactly(entries: list[listing.Member]) -> None:
    text = b"\n".join(render(m) for m in entries) + b"\n"
    assert listing.parse_listing(text) == entries


@given(members(), st.integers(1, 999999999))
def test_a_fraction_of_a_second_is_kept(member: listing.Member, nanos: int) -> None:
    parsed = listing.parse_line(render(member, fraction=f".{nanos:09d}"))
    assert parsed.mtime_ns == member.mtime_ns + nanos
    assert parsed.mtime == member.mtime


@given(st.binary(max_size=200))
def test_any_bytes_are_a_member_or_a_refusal(data: bytes) -> None:
    try:
        found = listing.parse_listing(data)
    except CommandError as err:
        assert (
            "listing" in str(err)
            or "name" in str(err)
            or "escape" in str(err)
            or "permission" in str(err)
        )
    else:
        assert all(isinstance(m, listing.Member) for m in found)


@given(members())
def test_a_name_with_a_spoofed_arrow_stays_one_name(member: listing.Member) -> None:
    spoofed = listing.Member(
        **{**member.__dict__, "path": member.path + b'" -> "x', "kind": "file", "target": b""}
    )
    assert listing.parse_line(render(spoofed)).path == spoofed.path


def test_a_line_tar_never_prints_is_refused() -> None:
    with pytest.raises(CommandError, match="cannot read tar's listing line"):
        listing.parse_line(b"-rw-r--r-- root/root 3 2026-12-02 06:38 ./a")  # names, no quotes
    with pytest.raises(CommandError, match="unterminated"):
        listing.parse_line(b'-rw-r--r-- 0/0 3 2026-12-02 06:38:00 "./a')


# --- against GNU tar itself --------------------------------------------------------------------

real_names = st.binary(min_size=1, max_size=16).filter(
    lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b"..")
)


@pytest.mark.skipif(shutil.which("tar") is None, reason="needs GNU tar")
@settings(max_examples=30)
@given(
    st.lists(
        st.tuples(real_names, st.integers(0, 0o777), st.binary(max_size=64)),
        min_size=1,
        max_size=5,
        unique_by=lambda t: t[0],
    ),
    st.integers(0, 2**31 - 1),
)
def test_real_tar_listings_read_back_as_the_files_are(
    files: list[tuple[bytes, int, bytes]], mtime: int
) -> None:
    with tempfile.TemporaryDirectory() as top:
        src = os.fsencode(Path(top) / "src")
        os.mkdir(src)
        for name, mode, data in files:
            path = src + b"/" + name
            with open(path, "wb") as handle:
                handle.write(data)
            os.chmod(path, mode)
            os.utime(path, (mtime, mtime))
        os.symlink(files[0][0], src + b"/link-" + str(len(files)).encode())
        archive = Path(top) / "a.tar"
        subprocess.run(
            [
                "tar",
                "--create",
                "--xattrs",
                f"--file={archive}",
                f"--directory={os.fsdecode(src)}",
                ".",
            ],
            check=True,
        )
        out = subprocess.run(
            ["tar", *[o for o in listing.LIST_OPTIONS if o != "--file=-"], f"--file={archive}"],
            check=True,
            capture_output=True,
            env={**os.environ, **listing.LIST_ENV},
        ).stdout
    parsed = {m.path: m for m in listing.parse_listing(out)}
    assert parsed[b""].kind == "dir"
    for name, mode, data in files:
        member = parsed[name]
        assert (member.kind, member.mode, member.size, member.mtime) == (
            "file",
            mode,
            len(data),
            mtime,
        )
    link = parsed[b"link-" + str(len(files)).encode()]
    assert (link.kind, link.target) == ("symlink", files[0][0])
