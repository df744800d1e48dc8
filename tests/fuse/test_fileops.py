"""File and directory operations through the real kernel against the MemFS (meshfs.fuse)."""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from pathlib import Path

import pytest
from conftest import Mounted

pytestmark = pytest.mark.fuse

_libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100


def renameat2(old: Path, new: Path, flags: int) -> None:
    if _libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def errno_of(fn: object, *args: object) -> int:
    try:
        fn(*args)  # type: ignore[operator]
    except OSError as e:
        return e.errno or 0
    return 0


def test_create_read_write_truncate(mnt: Mounted) -> None:
    p = mnt.path / "f"
    p.write_bytes(b"hello world")
    assert p.read_bytes() == b"hello world"
    with open(p, "r+b") as f:
        f.seek(6)
        f.write(b"WORLD!!")
    assert p.read_bytes() == b"hello WORLD!!"
    os.truncate(p, 5)
    assert p.read_bytes() == b"hello"
    os.truncate(p, 8)
    assert p.read_bytes() == b"hello\0\0\0"
    with open(p, "wb") as f:  # O_TRUNC through open
        f.write(b"x")
    assert p.read_bytes() == b"x"
    assert p.stat().st_size == 1
    fd = os.open(mnt.path / "g", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640)
    os.close(fd)
    assert stat.S_IMODE((mnt.path / "g").stat().st_mode) == 0o640 & ~_umask()
    assert errno_of(os.open, mnt.path / "g", os.O_CREAT | os.O_EXCL | os.O_WRONLY) == errno.EEXIST
    assert errno_of(os.stat, mnt.path / "missing") == errno.ENOENT
    # sparse write beyond the end
    with open(p, "r+b") as f:
        f.seek(100)
        f.write(b"end")
    data = p.read_bytes()
    assert len(data) == 103 and data.endswith(b"end") and data[1:100] == bytes(99)


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def test_rename_variants(mnt: Mounted) -> None:
    a, b, c = mnt.path / "a", mnt.path / "b", mnt.path / "c"
    a.write_bytes(b"A")
    b.write_bytes(b"B")
    os.rename(a, c)
    assert not a.exists() and c.read_bytes() == b"A"
    os.rename(c, b)  # over an existing target
    assert b.read_bytes() == b"A" and not c.exists()
    a.write_bytes(b"new A")
    with pytest.raises(OSError) as ei:
        renameat2(a, b, 1)  # RENAME_NOREPLACE
    assert ei.value.errno == errno.EEXIST
    assert a.read_bytes() == b"new A" and b.read_bytes() == b"A"
    renameat2(a, b, 2)  # RENAME_EXCHANGE
    assert a.read_bytes() == b"A" and b.read_bytes() == b"new A"
    with pytest.raises(OSError) as ei:
        renameat2(a, mnt.path / "nope", 2)
    assert ei.value.errno == errno.ENOENT
    renameat2(a, c, 1)
    assert c.read_bytes() == b"A" and not a.exists()
    (mnt.path / "d1").mkdir()
    (mnt.path / "d2").mkdir()
    (mnt.path / "d2" / "x").write_bytes(b"")
    assert errno_of(os.rename, mnt.path / "d1", mnt.path / "d2") == errno.ENOTEMPTY
    assert errno_of(os.rename, mnt.path / "d1", mnt.path / "c") == errno.ENOTDIR
    assert errno_of(os.rename, mnt.path / "c", mnt.path / "d1") == errno.EISDIR
    os.rename(mnt.path / "c", mnt.path / "d1" / "moved")
    assert (mnt.path / "d1" / "moved").read_bytes() == b"A"
    os.rename(mnt.path / "d1", mnt.path / "d2" / "sub")
    assert (mnt.path / "d2" / "sub" / "moved").read_bytes() == b"A"
    assert (mnt.path / "d2").stat().st_nlink == 3


def test_unlink_while_open(mnt: Mounted) -> None:
    p = mnt.path / "f"
    p.write_bytes(b"still here")
    fd = os.open(p, os.O_RDWR)
    try:
        os.unlink(p)
        assert not p.exists()
        assert os.pread(fd, 100, 0) == b"still here"
        os.pwrite(fd, b"STILL", 0)
        assert os.pread(fd, 100, 0) == b"STILL here"
        assert os.fstat(fd).st_nlink == 0
    finally:
        os.close(fd)


def test_mkdir_rmdir(mnt: Mounted) -> None:
    d = mnt.path / "d"
    d.mkdir(mode=0o750)
    assert stat.S_ISDIR(d.stat().st_mode)
    assert errno_of(os.mkdir, d) == errno.EEXIST
    (d / "f").write_bytes(b"")
    assert errno_of(os.rmdir, d) == errno.ENOTEMPTY
    assert errno_of(os.rmdir, d / "f") == errno.ENOTDIR
    assert errno_of(os.unlink, d) == errno.EISDIR
    os.unlink(d / "f")
    os.rmdir(d)
    assert not d.exists()
    assert errno_of(os.rmdir, d) == errno.ENOENT


def test_symlink_readlink(mnt: Mounted) -> None:
    (mnt.path / "target").write_bytes(b"T")
    os.symlink("target", mnt.path / "ln")
    assert os.readlink(mnt.path / "ln") == "target"
    assert (mnt.path / "ln").read_bytes() == b"T"
    assert stat.S_ISLNK(os.lstat(mnt.path / "ln").st_mode)
    os.symlink("/does/not/exist/" + "x" * 200, mnt.path / "dangling")
    assert os.readlink(mnt.path / "dangling").endswith("x" * 200)
    assert errno_of(os.readlink, mnt.path / "target") == errno.EINVAL


def test_hard_links(mnt: Mounted) -> None:
    a = mnt.path / "a"
    a.write_bytes(b"shared")
    os.link(a, mnt.path / "b")
    assert a.stat().st_nlink == 2
    assert a.stat().st_ino == (mnt.path / "b").stat().st_ino
    with open(mnt.path / "b", "ab") as f:
        f.write(b"!")
    assert a.read_bytes() == b"shared!"
    os.unlink(a)
    assert (mnt.path / "b").stat().st_nlink == 1
    (mnt.path / "dir").mkdir()
    assert errno_of(os.link, mnt.path / "dir", mnt.path / "dirlink") == errno.EPERM


def test_chmod_chown_utimens(mnt: Mounted) -> None:
    p = mnt.path / "f"
    p.write_bytes(b"")
    os.chmod(p, 0o604)
    assert stat.S_IMODE(p.stat().st_mode) == 0o604
    os.chown(p, 1234, 5678)
    st = p.stat()
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    os.utime(p, ns=(1_000_000_123, 2_000_000_456))
    st = p.stat()
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_123, 2_000_000_456)
    with open(p, "r+b") as f:  # futimens through a handle + UTIME_NOW
        os.utime(f.fileno())
    assert p.stat().st_mtime_ns > 2_000_000_456


def test_xattrs(mnt: Mounted) -> None:
    p = mnt.path / "f"
    p.write_bytes(b"")
    os.setxattr(p, "user.a", b"1")
    os.setxattr(p, "user.big", b"x" * 5000)
    assert os.getxattr(p, "user.a") == b"1"
    assert os.getxattr(p, "user.big") == b"x" * 5000  # python probes with a small buffer first
    assert sorted(os.listxattr(p)) == ["user.a", "user.big"]
    with pytest.raises(OSError) as ei:
        os.setxattr(p, "user.a", b"2", os.XATTR_CREATE)
    assert ei.value.errno == errno.EEXIST
    with pytest.raises(OSError) as ei:
        os.setxattr(p, "user.none", b"2", os.XATTR_REPLACE)
    assert ei.value.errno == errno.ENODATA
    os.removexattr(p, "user.a")
    assert errno_of(os.getxattr, p, "user.a") == errno.ENODATA
    assert errno_of(os.removexattr, p, "user.a") == errno.ENODATA
    # size probes and ERANGE, at the syscall level
    libc = ctypes.CDLL(None, use_errno=True)
    libc.getxattr.restype = ctypes.c_ssize_t
    libc.listxattr.restype = ctypes.c_ssize_t
    assert libc.getxattr(os.fsencode(p), b"user.big", None, 0) == 5000
    buf = ctypes.create_string_buffer(100)
    assert libc.getxattr(os.fsencode(p), b"user.big", buf, 100) == -1
    assert ctypes.get_errno() == errno.ERANGE
    assert libc.listxattr(os.fsencode(p), None, 0) == len(b"user.big\0")
    assert libc.listxattr(os.fsencode(p), buf, 3) == -1
    assert ctypes.get_errno() == errno.ERANGE


def test_statfs(mnt: Mounted) -> None:
    st = os.statvfs(mnt.path)
    assert st.f_bsize == 4096 and st.f_blocks == 1 << 24 and st.f_namemax == 255
    assert st.f_files == 1 << 20


def test_fallocate_lseek_copy_file_range(mnt: Mounted) -> None:
    p = mnt.path / "f"
    p.write_bytes(b"0123456789")
    fd = os.open(p, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, 100)
        assert os.fstat(fd).st_size == 100
        assert os.lseek(fd, 3, os.SEEK_DATA) == 3
        assert os.lseek(fd, 3, os.SEEK_HOLE) == 100
        q = mnt.path / "g"
        q.write_bytes(b"")
        fd2 = os.open(q, os.O_RDWR)
        try:
            n = os.copy_file_range(fd, fd2, 10, 0, 0)
            assert n == 10
        finally:
            os.close(fd2)
        assert q.read_bytes() == b"0123456789"
    finally:
        os.close(fd)


def test_large_directory_stable_offsets(mnt: Mounted) -> None:
    n = 10_000

    def populate() -> None:
        fs = mnt.fs
        root = fs.nodes[1]
        ctx = __import__("meshfs.fuse", fromlist=["RequestContext"]).RequestContext()
        for i in range(n):
            node = fs._new(root, f"entry-{i:05d}".encode(), stat.S_IFREG | 0o644, ctx)
            node.lookups -= 1  # created behind the kernel's back: no lookup was handed out

    mnt.call(populate)
    names = os.listdir(mnt.path)
    assert len(names) == n and len(set(names)) == n
    # walk with small getdents64 buffers, remember each d_off, then seek back into the middle
    entries = _getdents_all(mnt.path, 1024)
    assert [e[1] for e in entries] == sorted(names, key=lambda s: int(s[6:]))
    offs = [e[0] for e in entries]
    assert len(set(offs)) == n
    k = 7_777
    again = _getdents_all(mnt.path, 4096, seek=offs[k - 1])
    assert [e[1] for e in again] == [e[1] for e in entries[k:]]
    # entries removed while a listing is in progress do not disturb the ones after them
    fd = os.open(mnt.path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        first = _getdents(fd, 2048)
        for name in [f"entry-{i:05d}" for i in range(100, 200)]:
            os.unlink(mnt.path / name)
        rest: list[tuple[int, str]] = []
        while chunk := _getdents(fd, 2048):
            rest += chunk
        seen = [e[1] for e in first + rest]
        assert len(seen) == len(set(seen))
        assert set(seen) == {f"entry-{i:05d}" for i in range(n) if not 100 <= i < 200} | {
            e[1] for e in first
        }
    finally:
        os.close(fd)


def _getdents(fd: int, size: int) -> list[tuple[int, str]]:
    buf = ctypes.create_string_buffer(size)
    n = _libc.syscall(217, fd, buf, size)  # SYS_getdents64 on x86_64
    if n < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    out = []
    pos = 0
    raw = buf.raw
    while pos < n:
        d_off = int.from_bytes(raw[pos + 8 : pos + 16], "little", signed=True)
        reclen = int.from_bytes(raw[pos + 16 : pos + 18], "little")
        name = raw[pos + 19 : pos + reclen].split(b"\0", 1)[0].decode()
        out.append((d_off, name))
        pos += reclen
    return out


def _getdents_all(path: Path, size: int, seek: int | None = None) -> list[tuple[int, str]]:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if seek is not None:
            os.lseek(fd, seek, os.SEEK_SET)
        out: list[tuple[int, str]] = []
        while chunk := _getdents(fd, size):
            out += chunk
        return out
    finally:
        os.close(fd)


@pytest.mark.long
def test_one_gib_file(mnt: Mounted) -> None:
    import hashlib

    p = mnt.path / "big"
    block = bytearray(os.urandom(1 << 20))
    h = hashlib.sha256()
    with open(p, "wb", buffering=0) as f:
        for i in range(1024):
            block[:8] = i.to_bytes(8, "little")
            f.write(block)
            h.update(block)
    assert p.stat().st_size == 1 << 30
    h2 = hashlib.sha256()
    with open(p, "rb", buffering=0) as f:
        while chunk := f.read(1 << 20):
            h2.update(chunk)
    assert h.digest() == h2.digest()
    os.unlink(p)
