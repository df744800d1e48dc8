"""POSIX behaviour of the mount, modelled on pjdfstest's groups, with the errnos ext4 gives.

Each test works in its own fresh directory (`work`) on the shared einstein mount; what must be seen by
another node is checked through a second mount (own cache dir) after `meshfs sync`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from mounthelp import expect_errno, sync, wait_for

pytestmark = [pytest.mark.reva, pytest.mark.fuse]


def write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def read(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# ---------------------------------------------------------------------------------------------- open


def test_open_creat_makes_an_empty_file(work: Path) -> None:
    p = work / "new"
    fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)
    os.close(fd)
    st = p.stat()
    assert stat.S_ISREG(st.st_mode)
    assert st.st_size == 0
    assert os.listdir(work) == ["new"]


def test_open_creat_excl_on_existing_is_eexist(work: Path) -> None:
    p = work / "f"
    write(p, b"keep")
    with expect_errno(errno.EEXIST):
        os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    assert read(p) == b"keep"
    fd = os.open(work / "g", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    os.close(fd)
    assert (work / "g").exists()


def test_open_trunc_empties_the_file(work: Path) -> None:
    p = work / "f"
    write(p, b"0123456789")
    fd = os.open(p, os.O_WRONLY | os.O_TRUNC)
    assert os.fstat(fd).st_size == 0
    os.write(fd, b"ab")
    os.close(fd)
    assert read(p) == b"ab"
    assert p.stat().st_size == 2


def test_open_append_writes_at_the_end(work: Path) -> None:
    p = work / "f"
    write(p, b"abc")
    fd = os.open(p, os.O_WRONLY | os.O_APPEND)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, b"def")
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, b"gh")
    os.close(fd)
    assert read(p) == b"abcdefgh"


def test_write_on_rdonly_fd_is_ebadf_and_read_on_wronly_too(work: Path) -> None:
    p = work / "f"
    write(p, b"abc")
    fd = os.open(p, os.O_RDONLY)
    try:
        with expect_errno(errno.EBADF):
            os.write(fd, b"x")
    finally:
        os.close(fd)
    fd = os.open(p, os.O_WRONLY)
    try:
        with expect_errno(errno.EBADF):
            os.read(fd, 1)
    finally:
        os.close(fd)
    assert read(p) == b"abc"


def test_open_missing_is_enoent(work: Path) -> None:
    with expect_errno(errno.ENOENT):
        os.open(work / "nope", os.O_RDONLY)
    with expect_errno(errno.ENOENT):
        os.open(work / "nodir" / "f", os.O_CREAT | os.O_WRONLY, 0o644)


def test_open_directory_for_writing_is_eisdir(work: Path) -> None:
    (work / "d").mkdir()
    with expect_errno(errno.EISDIR):
        os.open(work / "d", os.O_WRONLY)
    with expect_errno(errno.EISDIR):
        os.open(work / "d", os.O_RDWR | os.O_CREAT, 0o644)


def test_path_through_a_file_is_enotdir(work: Path) -> None:
    write(work / "f", b"x")
    with expect_errno(errno.ENOTDIR):
        os.open(work / "f" / "x", os.O_RDONLY)
    with expect_errno(errno.ENOTDIR):
        os.open(work / "f" / "x", os.O_CREAT | os.O_WRONLY, 0o644)
    with expect_errno(errno.ENOTDIR):
        os.mkdir(work / "f" / "d")


def test_o_directory_on_a_file_is_enotdir(work: Path) -> None:
    write(work / "f", b"x")
    with expect_errno(errno.ENOTDIR):
        os.open(work / "f", os.O_RDONLY | os.O_DIRECTORY)


# -------------------------------------------------------------------------------------------- create


def test_create_shows_in_listing_stat_and_read(work: Path) -> None:
    names = [f"f{i}" for i in range(5)]
    for n in names:
        write(work / n, n.encode() * 3)
    assert sorted(os.listdir(work)) == names
    for n in names:
        assert (work / n).stat().st_size == 6
        assert read(work / n) == n.encode() * 3


def test_created_file_owner_is_the_mounting_user(work: Path) -> None:
    write(work / "f", b"x")
    st = (work / "f").stat()
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())


# -------------------------------------------------------------------------------------------- rename


def test_rename_file(work: Path) -> None:
    write(work / "a", b"content")
    os.rename(work / "a", work / "b")
    assert not (work / "a").exists()
    assert read(work / "b") == b"content"
    assert os.listdir(work) == ["b"]


def test_rename_directory_with_contents(work: Path) -> None:
    (work / "d").mkdir()
    write(work / "d" / "f", b"inside")
    (work / "d" / "sub").mkdir()
    os.rename(work / "d", work / "e")
    assert not (work / "d").exists()
    assert read(work / "e" / "f") == b"inside"
    assert (work / "e" / "sub").is_dir()


def test_rename_across_directories(work: Path) -> None:
    (work / "x").mkdir()
    (work / "y").mkdir()
    write(work / "x" / "f", b"moved")
    os.rename(work / "x" / "f", work / "y" / "g")
    assert os.listdir(work / "x") == []
    assert os.listdir(work / "y") == ["g"]
    assert read(work / "y" / "g") == b"moved"


def test_rename_over_an_existing_file_replaces_it(work: Path) -> None:
    write(work / "src", b"new content")
    write(work / "dst", b"old")
    os.rename(work / "src", work / "dst")
    assert os.listdir(work) == ["dst"]
    assert read(work / "dst") == b"new content"
    assert (work / "dst").stat().st_size == 11


def test_rename_over_an_existing_file_is_stored_on_the_server(
    work: Path, mount_factory: Callable[..., Path]
) -> None:
    write(work / "dst", b"old")
    sync(work)
    write(work / "src", b"replaced")
    os.rename(work / "src", work / "dst")
    sync(work)
    other = mount_factory() / "home" / work.name
    assert sorted(os.listdir(other)) == ["dst"]
    assert read(other / "dst") == b"replaced"


def test_rename_dir_over_empty_dir(work: Path) -> None:
    (work / "a").mkdir()
    write(work / "a" / "f", b"1")
    (work / "b").mkdir()
    os.rename(work / "a", work / "b")
    assert os.listdir(work) == ["b"]
    assert read(work / "b" / "f") == b"1"


def test_rename_dir_over_nonempty_dir_is_enotempty(work: Path) -> None:
    (work / "a").mkdir()
    (work / "b").mkdir()
    write(work / "b" / "keep", b"k")
    with expect_errno(errno.ENOTEMPTY, errno.EEXIST):
        os.rename(work / "a", work / "b")
    assert (work / "a").is_dir()
    assert read(work / "b" / "keep") == b"k"


def test_rename_file_over_dir_is_eisdir_and_dir_over_file_enotdir(work: Path) -> None:
    write(work / "f", b"1")
    (work / "d").mkdir()
    with expect_errno(errno.EISDIR):
        os.rename(work / "f", work / "d")
    with expect_errno(errno.ENOTDIR):
        os.rename(work / "d", work / "f")
    assert read(work / "f") == b"1"
    assert (work / "d").is_dir()


def test_rename_missing_source_is_enoent(work: Path) -> None:
    with expect_errno(errno.ENOENT):
        os.rename(work / "nope", work / "x")
    write(work / "f", b"1")
    with expect_errno(errno.ENOENT):
        os.rename(work / "f", work / "nodir" / "x")


def test_rename_dir_into_itself_is_einval(work: Path) -> None:
    (work / "d").mkdir()
    with expect_errno(errno.EINVAL):
        os.rename(work / "d", work / "d" / "sub")


RENAME_NOREPLACE = 1
AT_FDCWD = -100


def renameat2(src: Path, dst: Path, flags: int) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    rc = libc.renameat2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), ctypes.c_uint(flags))
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def test_rename_noreplace(work: Path) -> None:
    write(work / "a", b"a")
    write(work / "b", b"b")
    with expect_errno(errno.EEXIST):
        renameat2(work / "a", work / "b", RENAME_NOREPLACE)
    assert read(work / "a") == b"a"
    assert read(work / "b") == b"b"
    renameat2(work / "a", work / "c", RENAME_NOREPLACE)
    assert sorted(os.listdir(work)) == ["b", "c"]
    assert read(work / "c") == b"a"


def test_rename_of_an_open_file_keeps_the_fd_working(work: Path, mount_factory: Callable[..., Path]) -> None:
    write(work / "a", b"hello")
    fd = os.open(work / "a", os.O_RDWR)
    try:
        os.rename(work / "a", work / "b")
        assert os.pread(fd, 5, 0) == b"hello"
        os.pwrite(fd, b" world", 5)
        assert os.pread(fd, 100, 0) == b"hello world"
    finally:
        os.close(fd)
    assert os.listdir(work) == ["b"]
    assert read(work / "b") == b"hello world"
    sync(work)
    other = mount_factory() / "home" / work.name
    assert os.listdir(other) == ["b"]
    assert read(other / "b") == b"hello world"


# -------------------------------------------------------------------------------------------- unlink


def test_unlink(work: Path) -> None:
    write(work / "f", b"x")
    os.unlink(work / "f")
    assert not (work / "f").exists()
    assert os.listdir(work) == []
    with expect_errno(errno.ENOENT):
        os.unlink(work / "f")


def test_unlink_directory_is_eisdir(work: Path) -> None:
    (work / "d").mkdir()
    with expect_errno(errno.EISDIR, errno.EPERM):
        os.unlink(work / "d")
    assert (work / "d").is_dir()


def test_unlinked_open_file_still_reads_through_its_fd(work: Path) -> None:
    data = os.urandom(300_000)
    write(work / "f", data)
    sync(work)
    fd = os.open(work / "f", os.O_RDONLY)
    try:
        assert os.pread(fd, 10, 0) == data[:10]
        os.unlink(work / "f")
        assert not (work / "f").exists()
        assert os.pread(fd, len(data), 0) == data
        assert os.fstat(fd).st_size == len(data)
    finally:
        os.close(fd)
    assert os.listdir(work) == []


def test_unlinked_open_file_is_not_recreated_by_its_writer(work: Path) -> None:
    fd = os.open(work / "f", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, b"abc")
        os.unlink(work / "f")
        os.write(fd, b"def")
        assert os.pread(fd, 10, 0) == b"abcdef"
    finally:
        os.close(fd)
    sync(work)
    assert os.listdir(work) == []


def test_ftruncate_of_a_file_unlinked_or_renamed_over_while_open(work: Path) -> None:
    """ftruncate through the fd of a file that is gone from the tree (unlinked, or replaced by a
    rename over its name) changes the open file only, as on ext4; it once answered ENOENT because
    the truncate asked the server about a resource that no longer exists (found by the long
    random-ops test)."""
    write(work / "a", b"old content")
    write(work / "b", b"new")
    sync(work)
    fa = os.open(work / "a", os.O_RDWR)
    fu = os.open(work / "u", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.rename(work / "b", work / "a")  # fa's file is replaced
        os.ftruncate(fa, 3)
        assert os.pread(fa, 100, 0) == b"old"
        os.ftruncate(fa, 5000)
        assert os.fstat(fa).st_size == 5000
        os.write(fu, b"0123456789")
        os.unlink(work / "u")
        os.ftruncate(fu, 4)
        assert os.pread(fu, 100, 0) == b"0123"
    finally:
        os.close(fa)
        os.close(fu)
    assert (work / "a").read_bytes() == b"new"
    sync(work)
    assert sorted(os.listdir(work)) == ["a"]
    assert (work / "a").read_bytes() == b"new"


# ---------------------------------------------------------------------------------------- mkdir/rmdir


def test_mkdir_and_rmdir(work: Path) -> None:
    os.mkdir(work / "d")
    assert (work / "d").is_dir()
    assert os.listdir(work / "d") == []
    os.rmdir(work / "d")
    assert not (work / "d").exists()


def test_mkdir_existing_is_eexist(work: Path) -> None:
    os.mkdir(work / "d")
    write(work / "f", b"")
    with expect_errno(errno.EEXIST):
        os.mkdir(work / "d")
    with expect_errno(errno.EEXIST):
        os.mkdir(work / "f")
    with expect_errno(errno.ENOENT):
        os.mkdir(work / "missing" / "d")


def test_rmdir_errors(work: Path) -> None:
    os.mkdir(work / "d")
    write(work / "d" / "f", b"x")
    with expect_errno(errno.ENOTEMPTY):
        os.rmdir(work / "d")
    assert read(work / "d" / "f") == b"x"
    with expect_errno(errno.ENOTDIR):
        os.rmdir(work / "d" / "f")
    with expect_errno(errno.ENOENT):
        os.rmdir(work / "nope")


# ----------------------------------------------------------------------------------- truncate/ftruncate


def test_truncate_shrink_and_grow_with_zeros(work: Path) -> None:
    p = work / "f"
    write(p, b"0123456789")
    os.truncate(p, 4)
    assert p.stat().st_size == 4
    assert read(p) == b"0123"
    os.truncate(p, 8)
    assert p.stat().st_size == 8
    assert read(p) == b"0123\0\0\0\0"


def test_ftruncate_through_an_open_fd(work: Path, mount_factory: Callable[..., Path]) -> None:
    p = work / "f"
    write(p, b"abcdefgh")
    fd = os.open(p, os.O_RDWR)
    try:
        os.ftruncate(fd, 3)
        assert os.fstat(fd).st_size == 3
        os.ftruncate(fd, 6)
        os.pwrite(fd, b"Z", 5)
        assert os.pread(fd, 100, 0) == b"abc\0\0Z"
    finally:
        os.close(fd)
    sync(work)
    other = mount_factory() / "home" / work.name
    assert read(other / "f") == b"abc\0\0Z"


def test_truncate_of_a_file_larger_than_cached(work: Path, mount_factory: Callable[..., Path]) -> None:
    """A file written by another node (never read here) is truncated: the kept head must be the server's."""
    data = os.urandom(3 * 1024 * 1024 + 17)
    other = mount_factory() / "home" / work.name
    write(other / "big", data)
    sync(other)
    p = work / "big"
    wait_for(lambda: p.exists() and p.stat().st_size == len(data), 15, "the other node's file")
    os.truncate(p, 1_000_000)
    assert p.stat().st_size == 1_000_000
    assert read(p) == data[:1_000_000]
    os.truncate(p, 1_000_010)
    assert read(p) == data[:1_000_000] + b"\0" * 10
    sync(work)
    third = mount_factory() / "home" / work.name
    assert read(third / "big") == data[:1_000_000] + b"\0" * 10


def test_truncate_errors(work: Path) -> None:
    (work / "d").mkdir()
    with expect_errno(errno.ENOENT):
        os.truncate(work / "nope", 0)
    with expect_errno(errno.EISDIR):
        os.truncate(work / "d", 0)
    write(work / "f", b"x")
    with expect_errno(errno.EINVAL):
        os.truncate(work / "f", -1)


# --------------------------------------------------------------------------------------------- chmod


def test_chmod_mode_bits_round_trip(work: Path, mount_factory: Callable[..., Path]) -> None:
    write(work / "script", b"#!/bin/sh\necho hi\n")
    write(work / "plain", b"x")
    os.chmod(work / "script", 0o755)
    os.chmod(work / "plain", 0o600)
    assert stat.S_IMODE((work / "script").stat().st_mode) == 0o755
    assert stat.S_IMODE((work / "plain").stat().st_mode) == 0o600
    sync(work)
    other = mount_factory() / "home" / work.name
    assert stat.S_IMODE((other / "script").stat().st_mode) == 0o755
    assert stat.S_IMODE((other / "plain").stat().st_mode) == 0o600
    os.chmod(work / "script", 0o644)
    assert stat.S_IMODE((work / "script").stat().st_mode) == 0o644


def test_chmod_of_a_directory(work: Path) -> None:
    (work / "d").mkdir()
    os.chmod(work / "d", 0o700)
    assert stat.S_IMODE((work / "d").stat().st_mode) == 0o700
    os.chmod(work / "d", 0o755)
    assert stat.S_IMODE((work / "d").stat().st_mode) == 0o755


# ----------------------------------------------------------------------------------------- utimensat


def test_utimens_round_trips_also_after_a_fresh_mount(work: Path, mount_factory: Callable[..., Path]) -> None:
    p = work / "f"
    write(p, b"x")
    mtime_ns = 1_600_000_000_123_456_789
    os.utime(p, ns=(mtime_ns, mtime_ns))
    assert p.stat().st_mtime_ns == mtime_ns
    (work / "d").mkdir()
    os.utime(work / "d", ns=(mtime_ns, mtime_ns))
    assert (work / "d").stat().st_mtime_ns == mtime_ns
    sync(work)
    other = mount_factory() / "home" / work.name
    assert (other / "f").stat().st_mtime_ns == mtime_ns
    assert (other / "d").stat().st_mtime_ns == mtime_ns


def test_write_moves_mtime_forward(work: Path) -> None:
    p = work / "f"
    write(p, b"x")
    os.utime(p, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    with open(p, "ab") as f:
        f.write(b"y")
    assert p.stat().st_mtime > 1_600_000_000


# -------------------------------------------------------------------------------------------- xattrs


def test_user_xattrs_set_get_list_remove(work: Path, mount_factory: Callable[..., Path]) -> None:
    p = work / "f"
    write(p, b"x")
    os.setxattr(p, "user.color", b"blue")
    os.setxattr(p, "user.text", "é ✓ 日本".encode())
    assert os.getxattr(p, "user.color") == b"blue"
    assert os.getxattr(p, "user.text") == "é ✓ 日本".encode()
    names = os.listxattr(p)
    assert {"user.color", "user.text"} <= set(names)
    os.setxattr(p, "user.color", b"red")
    assert os.getxattr(p, "user.color") == b"red"
    sync(work)
    other = mount_factory() / "home" / work.name
    assert os.getxattr(other / "f", "user.color") == b"red"
    assert os.getxattr(other / "f", "user.text") == "é ✓ 日本".encode()
    os.removexattr(p, "user.color")
    with expect_errno(errno.ENODATA):
        os.getxattr(p, "user.color")
    assert "user.color" not in os.listxattr(p)


def test_user_xattr_binary_value_round_trips(work: Path, mount_factory: Callable[..., Path]) -> None:
    """xattr values are arbitrary bytes on Linux (ext4 stores any of them), not only UTF-8 text."""
    p = work / "f"
    write(p, b"x")
    value = bytes(range(256))
    os.setxattr(p, "user.bin", value)
    assert os.getxattr(p, "user.bin") == value
    sync(work)
    other = mount_factory() / "home" / work.name
    assert os.getxattr(other / "f", "user.bin") == value


def test_xattr_errors(work: Path) -> None:
    p = work / "f"
    write(p, b"x")
    with expect_errno(errno.ENODATA):
        os.getxattr(p, "user.missing")
    with expect_errno(errno.ENODATA):
        os.removexattr(p, "user.missing")
    with expect_errno(errno.ENODATA):
        os.setxattr(p, "user.a", b"1", os.XATTR_REPLACE)
    os.setxattr(p, "user.a", b"1", os.XATTR_CREATE)
    with expect_errno(errno.EEXIST):
        os.setxattr(p, "user.a", b"2", os.XATTR_CREATE)
    os.setxattr(p, "user.a", b"3", os.XATTR_REPLACE)
    assert os.getxattr(p, "user.a") == b"3"


def test_meshfs_xattrs_are_read_only(work: Path) -> None:
    p = work / "f"
    write(p, b"x")
    sync(work)
    for name in ("user.meshfs.etag", "user.meshfs.fileid", "user.meshfs.state"):
        assert os.getxattr(p, name), name
        with expect_errno(errno.EPERM):
            os.setxattr(p, name, b"forged")
        with expect_errno(errno.EPERM):
            os.removexattr(p, name)
    listed = set(os.listxattr(p))
    assert {"user.meshfs.etag", "user.meshfs.fileid", "user.meshfs.state"} <= listed


def test_etag_xattr_changes_with_content(work: Path) -> None:
    p = work / "f"
    write(p, b"one")
    sync(work)
    before = os.getxattr(p, "user.meshfs.etag")
    write(p, b"two")
    sync(work)
    assert os.getxattr(p, "user.meshfs.etag") != before


# --------------------------------------------------------------------------------- statfs, links, names


def test_statfs(work: Path) -> None:
    st = os.statvfs(work)
    assert st.f_bsize > 0
    assert st.f_frsize > 0
    assert st.f_namemax == 255
    assert st.f_blocks >= st.f_bfree >= 0
    assert st.f_bavail <= st.f_bfree
    df = subprocess.run(["df", "-k", os.fspath(work)], capture_output=True, text=True, timeout=30)
    assert df.returncode == 0, df.stderr


def test_symlink_and_hard_link_are_eperm(work: Path) -> None:
    write(work / "f", b"x")
    with expect_errno(errno.EPERM):
        os.symlink("f", work / "s")
    with expect_errno(errno.EPERM):
        os.link(work / "f", work / "h")
    assert os.listdir(work) == ["f"]


def test_utf8_names_with_spaces_and_accents(work: Path, mount_factory: Callable[..., Path]) -> None:
    names = [
        "with space.txt",
        "Übergrößenträger é à ñ.md",
        "日本語のファイル",
        "emoji 🚀 x",
        "a'b\"c",
        "tab\there",
    ]
    for n in names:
        write(work / n, n.encode())
    (work / "dir é").mkdir()
    write(work / "dir é" / "ç", b"c")
    assert sorted(os.listdir(work)) == sorted([*names, "dir é"])
    for n in names:
        assert read(work / n) == n.encode()
    sync(work)
    other = mount_factory() / "home" / work.name
    assert sorted(os.listdir(other)) == sorted([*names, "dir é"])
    assert read(other / "dir é" / "ç") == b"c"


def test_non_utf8_name_is_eilseq(work: Path) -> None:
    with expect_errno(errno.EILSEQ):
        os.open(os.fsencode(work) + b"/bad\xff\xfename", os.O_CREAT | os.O_WRONLY, 0o644)
    with expect_errno(errno.EILSEQ):
        os.mkdir(os.fsencode(work) + b"/bad\xffdir")
    assert os.listdir(work) == []


def test_name_length_limits(work: Path) -> None:
    ok = "n" * 255
    write(work / ok, b"x")
    assert os.listdir(work) == [ok]
    with expect_errno(errno.ENAMETOOLONG):
        os.open(work / ("n" * 256), os.O_CREAT | os.O_WRONLY, 0o644)
    long_utf8 = "é" * 128  # 256 bytes
    with expect_errno(errno.ENAMETOOLONG):
        os.mkdir(work / long_utf8)


def test_names_with_url_and_shell_special_characters(work: Path, mount_factory: Callable[..., Path]) -> None:
    names = ["100%.txt", "%41%2F", "a#b", "what?", "star*", "co:lon", "back\\slash", " lead", "trail ",
             "...", "-dash", "semi;colon", "amp&er", "plus+sign", "quote'd", "[brackets]", "{braces}",
             "~tilde"]  # fmt: skip
    for n in names:
        write(work / n, n.encode())
    assert sorted(os.listdir(work)) == sorted(names)
    for n in names:
        assert read(work / n) == n.encode(), n
    sync(work)
    other = mount_factory() / "home" / work.name
    assert sorted(os.listdir(other)) == sorted(names)
    for n in names:
        assert read(other / n) == n.encode(), n


def test_names_are_case_sensitive(work: Path) -> None:
    write(work / "README", b"upper")
    write(work / "readme", b"lower")
    (work / "Dir").mkdir()
    (work / "dir").mkdir()
    assert sorted(os.listdir(work)) == ["Dir", "README", "dir", "readme"]
    assert read(work / "README") == b"upper"
    assert read(work / "readme") == b"lower"
    os.unlink(work / "README")
    assert read(work / "readme") == b"lower"
    with expect_errno(errno.ENOENT):
        os.stat(work / "README")


def test_xattrs_on_a_directory(work: Path) -> None:
    (work / "d").mkdir()
    os.setxattr(work / "d", "user.tag", b"project-x")
    assert os.getxattr(work / "d", "user.tag") == b"project-x"
    assert "user.tag" in os.listxattr(work / "d")
    os.removexattr(work / "d", "user.tag")
    with expect_errno(errno.ENODATA):
        os.getxattr(work / "d", "user.tag")


def test_many_entries_in_one_directory(work: Path, mount_factory: Callable[..., Path]) -> None:
    names = {f"file-{i:04d}" for i in range(200)}
    for n in names:
        fd = os.open(work / n, os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, n.encode())
        os.close(fd)
    assert set(os.listdir(work)) == names
    sync(work)
    other = mount_factory() / "home" / work.name
    entries = {e.name: e.stat().st_size for e in os.scandir(other)}
    assert entries == {n: len(n) for n in names}


def test_unicode_normalization_forms_are_kept_apart(work: Path, mount_factory: Callable[..., Path]) -> None:
    """Linux names are bytes: NFC "café" and NFD "café" are two files, each listed exactly as created."""
    nfc, nfd = "caf\u00e9", "cafe\u0301"
    write(work / nfc, b"nfc")
    write(work / nfd, b"nfd")
    assert sorted(os.listdir(work)) == sorted([nfc, nfd])
    assert read(work / nfc) == b"nfc"
    assert read(work / nfd) == b"nfd"
    sync(work)
    other = mount_factory() / "home" / work.name
    assert sorted(os.listdir(other)) == sorted([nfc, nfd])
    assert read(other / nfd) == b"nfd"


def test_rm_rf_of_a_directory_with_many_entries(work: Path) -> None:
    """rm (fts) unlinks while it reads the directory: readdir offsets must survive the deletions."""
    d = work / "big"
    d.mkdir()
    (d / "sub").mkdir()
    for i in range(150):
        os.close(os.open(d / f"e{i:03d}", os.O_CREAT | os.O_WRONLY, 0o644))
        if i % 10 == 0:
            os.close(os.open(d / "sub" / f"s{i:03d}", os.O_CREAT | os.O_WRONLY, 0o644))
    proc = subprocess.run(["rm", "-rf", os.fspath(d)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert os.listdir(work) == []


def test_find_walks_nested_directories(work: Path) -> None:
    """find must not skip subdirectories (st_nlink of directories must not claim "no subdirs")."""
    expected = set()
    for a in ("a", "b"):
        for b in ("x", "y"):
            (work / a / b / "deep").mkdir(parents=True)
            write(work / a / b / "deep" / "f", b"1")
            expected.add(f"{a}/{b}/deep/f")
    proc = subprocess.run(
        ["find", ".", "-type", "f"], cwd=work, capture_output=True, text=True, timeout=60, check=True
    )
    assert {line[2:] for line in proc.stdout.split()} == expected
    for a in ("a", "b"):
        st = (work / a).stat()
        assert st.st_nlink in (1, 4), f"a directory with 2 subdirectories reports st_nlink={st.st_nlink}"


def test_concurrent_o_append_writers(work: Path) -> None:
    import threading

    p = work / "log"
    write(p, b"")
    lines_per_writer = 200

    def writer(tag: str) -> None:
        fd = os.open(p, os.O_WRONLY | os.O_APPEND)
        try:
            for i in range(lines_per_writer):
                os.write(fd, f"{tag}{i:05d}\n".encode())
        finally:
            os.close(fd)

    threads = [threading.Thread(target=writer, args=(t,)) for t in "AB"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    lines = read(p).decode().splitlines()
    assert len(lines) == 2 * lines_per_writer
    assert sorted(lines) == sorted(f"{t}{i:05d}" for t in "AB" for i in range(lines_per_writer))


def test_posix_fallocate_and_touch(work: Path) -> None:
    p = work / "f"
    write(p, b"abc")
    fd = os.open(p, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, 100_000)
        assert os.fstat(fd).st_size == 100_000
        assert os.pread(fd, 5, 0) == b"abc\0\0"
    finally:
        os.close(fd)
    old = 1_000_000_000 * 10**9
    os.utime(p, ns=(old, old))
    before = time.time_ns()
    os.utime(p)  # touch: UTIME_NOW
    assert p.stat().st_mtime_ns >= before - 2 * 10**9
    subprocess.run(["touch", "-d", "2001-02-03 04:05:06 UTC", os.fspath(p)], check=True, timeout=30)
    assert p.stat().st_mtime == 981173106


def test_virtual_directories_refuse_changes_without_losing_data(work: Path, mount: Path) -> None:
    """The mount root and projects/ are virtual: creating or moving things there fails, nothing is lost."""
    write(work / "f", b"keep me")
    refused = (errno.EACCES, errno.EPERM, errno.EROFS, errno.EXDEV)
    with expect_errno(*refused):
        os.rename(work / "f", mount / f"{work.name}-f")
    with expect_errno(*refused):
        os.open(mount / f"{work.name}-new", os.O_CREAT | os.O_WRONLY, 0o644)
    with expect_errno(*refused):
        os.mkdir(mount / f"{work.name}-dir")
    with expect_errno(*refused):
        os.rename(work / "f", mount / "projects" / "f")
    with expect_errno(*refused, errno.EBUSY):
        os.rmdir(mount / "projects")
    assert read(work / "f") == b"keep me"
    assert sorted(os.listdir(mount)) == ["home", "projects", "shared-by-me", "shared-with-me"]


def test_inode_numbers_unique_stable_and_matching_readdir(work: Path) -> None:
    """tar/du/find detect hard links by (st_dev, st_ino): distinct files need distinct numbers."""
    (work / "d").mkdir()
    for i in range(40):
        write(work / ("d" if i % 2 else ".") / f"f{i}", b"x")
    stats = {}
    for dirpath, dirnames, filenames in os.walk(work):
        for n in [*dirnames, *filenames]:
            stats[os.path.join(dirpath, n)] = os.stat(os.path.join(dirpath, n)).st_ino
    assert len(set(stats.values())) == len(stats), "two entries share an inode number"
    for e in os.scandir(work / "d"):
        assert e.inode() == e.stat().st_ino, e.name
    ino = (work / "f0").stat().st_ino
    os.rename(work / "f0", work / "d" / "moved")
    assert (work / "d" / "moved").stat().st_ino == ino
    fd = os.open(work / "d" / "moved", os.O_RDONLY)
    try:
        assert os.fstat(fd).st_ino == ino
    finally:
        os.close(fd)
