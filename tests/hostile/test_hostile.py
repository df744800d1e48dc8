"""Hostile input through the real mount (issue 9): each gets a clear errno and corrupts nothing."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

pytestmark = [pytest.mark.reva, pytest.mark.fuse]


def expect_errno(code: int, fn, *args) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(OSError) as info:
        fn(*args)
    assert info.value.errno == code, f"{fn.__name__}{args}: {info.value}"


def test_names_too_long_non_utf8_and_dots(work: Path) -> None:
    expect_errno(errno.ENAMETOOLONG, os.open, os.fspath(work / ("x" * 256)), os.O_CREAT | os.O_WRONLY)
    expect_errno(errno.EILSEQ, os.open, os.fsencode(work) + b"/bad\xff\xfename", os.O_CREAT | os.O_WRONLY)
    expect_errno(errno.EILSEQ, os.mkdir, os.fsencode(work) + b"/dir\xc3")
    (work / ("y" * 255)).write_bytes(b"ok")  # the longest legal name works
    assert (work / ("y" * 255)).read_bytes() == b"ok"
    assert sorted(os.listdir(work)) == ["y" * 255]


def test_newlines_and_odd_characters_in_names(work: Path) -> None:
    names = ["line\nbreak", "tab\there", "back\\slash", " lead space", "ünï cödé ☃", "semi;colon", "quote\"'"]
    for n in names:
        (work / n).write_text(n)
    for n in names:
        assert (work / n).read_text() == n
    assert sorted(os.listdir(work)) == sorted(names)


def test_huge_xattrs_are_refused_cleanly(work: Path) -> None:
    f = work / "x"
    f.write_text("data")
    expect_errno(errno.E2BIG, os.setxattr, f, "user.big", b"v" * (64 * 1024 + 1))
    os.setxattr(f, "user.ok", b"v" * 1000)
    assert os.getxattr(f, "user.ok") == b"v" * 1000
    expect_errno(errno.EPERM, os.setxattr, f, "user.meshfs.etag", b"forged")
    assert f.read_text() == "data"


def test_write_past_4gib_and_huge_truncate(work: Path, mount) -> None:  # type: ignore[no-untyped-def]
    f = work / "sparse.bin"
    with open(f, "wb") as fh:
        fh.seek(4 * 1024**3 + 7)
        fh.write(b"tail")
    assert f.stat().st_size == 4 * 1024**3 + 11
    with open(f, "rb") as fh:
        fh.seek(4 * 1024**3 + 7)
        assert fh.read() == b"tail"
        fh.seek(12345)
        assert fh.read(16) == bytes(16)  # the hole reads as zeros
    f.unlink()  # nothing of the 4 GiB goes to the server
    g = work / "huge-truncate"
    g.write_bytes(b"abc")
    # a size the cache can never hold (default cache_size 10G): refused at once, nothing changed
    expect_errno(errno.ENOSPC, os.truncate, g, 1 << 40)
    assert g.stat().st_size == 3
    assert g.read_bytes() == b"abc"


def test_deep_tree(work: Path) -> None:
    d = work
    for i in range(40):
        d = d / f"d{i}"
    d.mkdir(parents=True)
    (d / "leaf").write_text("deep")
    assert (d / "leaf").read_text() == "deep"
    walked = [p for p, _, files in os.walk(work) if "leaf" in files]
    assert walked == [os.fspath(d)]


def test_dot_dot_and_absolute_tricks_stay_inside(work: Path, mount) -> None:  # type: ignore[no-untyped-def]
    (work / "a").mkdir()
    (work / "a" / "f").write_text("in")
    assert (work / "a" / ".." / "a" / "f").read_text() == "in"
    # the virtual root refuses to create anything
    expect_errno(errno.EPERM, os.mkdir, mount.mp / "shared-with-me" / "new")
    expect_errno(errno.EPERM, os.open, os.fspath(mount.mp / "projects" / "f"), os.O_CREAT | os.O_WRONLY)
    expect_errno(errno.EPERM, os.symlink, "target", work / "link")
    expect_errno(errno.EPERM, os.link, work / "a" / "f", work / "hard")


def test_many_small_files_then_verify_content(work: Path) -> None:
    want = {}
    for i in range(200):
        data = os.urandom(i * 37 % 4096)
        (work / f"f{i:03d}").write_bytes(data)
        want[f"f{i:03d}"] = hashlib.sha256(data).hexdigest()
    got = {n: hashlib.sha256((work / n).read_bytes()).hexdigest() for n in os.listdir(work)}
    assert got == want
