"""FUSE passthrough (FOPEN_PASSTHROUGH, protocol 7.40) through the real kernel.

Owns: `PassFS` (a MemFS whose regular files live in real backing files and whose opens are answered
with a backing id from `Session.backing_open`), and tests that the session negotiates passthrough
only when asked, that reads, writes and mmap of a passthrough open never reach the filesystem and
land in the backing file, that one backing id serves every open of an inode, and the kernel rule
the vfs layer must respect: an inode open without passthrough cannot also be opened with it.
Must not import meshfs modules other than meshfs.fuse.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Mounted, serve, wait_for
from memfs import MemFS

from meshfs.fuse import EntryAttributes, FileInfo, MountOptions, RequestContext, Session
from meshfs.fuse.abi import HANDLE_KILLPRIV_V2, PASSTHROUGH

MiB = 1 << 20

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="FUSE passthrough needs CAP_SYS_ADMIN (run as root)"
)


class PassFS(MemFS):
    """MemFS with regular-file data in backing files. Opens of inodes in `plain` are answered
    without passthrough (READ/WRITE then come here and go to the same backing file)."""

    def __init__(self, backing: str) -> None:
        super().__init__()
        self.backing = backing
        self.session: Session | None = None
        self.fds: dict[int, int] = {}
        self.ids: dict[int, list[int]] = {}  # inode -> [backing id, passthrough opens]
        self.fh_ino: dict[int, tuple[int, bool]] = {}
        self.plain: set[int] = set()
        self.reads = 0
        self.writes = 0
        self.closed_ids: list[int] = []
        self.getxattrs: list[bytes] = []

    async def getxattr(self, inode: int, name: bytes, ctx: RequestContext) -> bytes:
        self.getxattrs.append(name)
        return await super().getxattr(inode, name, ctx)

    def _fd(self, ino: int) -> int:
        fd = self.fds.get(ino)
        if fd is None:
            fd = self.fds[ino] = os.open(f"{self.backing}/{ino}", os.O_RDWR | os.O_CREAT, 0o600)
        return fd

    def attr(self, node: object) -> EntryAttributes:
        a = super().attr(node)  # type: ignore[arg-type]
        fd = self.fds.get(a.st_ino)
        if fd is None:
            return a
        size = os.fstat(fd).st_size
        return EntryAttributes(**{**{k: getattr(a, k) for k in a.__slots__}, "st_size": size})

    def _answer(self, ino: int, fh: int) -> FileInfo:
        self._fd(ino)
        if ino in self.plain:
            self.fh_ino[fh] = (ino, False)
            return FileInfo(fh=fh)
        assert self.session is not None
        slot = self.ids.get(ino)
        if slot is None:
            slot = self.ids[ino] = [self.session.backing_open(self.fds[ino]), 0]
        slot[1] += 1
        self.fh_ino[fh] = (ino, True)
        return FileInfo(fh=fh, backing_id=slot[0])

    async def open(self, inode: int, flags: int, ctx: RequestContext) -> FileInfo:
        node = self.node(inode)
        if flags & os.O_TRUNC and flags & os.O_ACCMODE != os.O_RDONLY:
            os.ftruncate(self._fd(inode), 0)
        return self._answer(node.ino, self._fh(node))

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: RequestContext
    ) -> tuple[FileInfo, EntryAttributes]:
        fi, _ = await super().create(parent_inode, name, mode, flags, ctx)
        ino = self.handles[fi.fh]
        fi = self._answer(ino, fi.fh)
        return fi, self.attr(self.node(ino))

    async def read(self, fh: int, off: int, size: int) -> bytes:
        self.reads += 1
        return os.pread(self.fds[self.handles[fh]], size, off)

    async def write(self, fh: int, off: int, buf: memoryview) -> int:
        self.writes += 1
        return os.pwrite(self.fds[self.handles[fh]], buf, off)

    async def release(self, fh: int, flags: int, lock_owner: int, flock_release: bool) -> None:
        ino, passthrough = self.fh_ino.pop(fh, (0, False))
        await super().release(fh, flags, lock_owner, flock_release)
        slot = self.ids.get(ino)
        if passthrough and slot is not None:
            slot[1] -= 1
            if slot[1] == 0:
                del self.ids[ino]
                assert self.session is not None
                self.session.backing_close(slot[0])
                self.closed_ids.append(slot[0])

    def close_all(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


@contextlib.contextmanager
def _passfs(tmp_path: Path, **kw: bool) -> Iterator[Mounted]:
    with tempfile.TemporaryDirectory(prefix="fuse-pt-") as backing:
        fs = PassFS(backing)
        mp = tmp_path / "mnt"
        mp.mkdir()
        opts = MountOptions(fsname="passfs", subtype="passfs", unmount_grace=1.0, passthrough=True, **kw)
        with serve(mp, fs, opts) as m:
            fs.session = m.session
            assert m.session.conn is not None
            if not m.session.conn.has(PASSTHROUGH):
                pytest.skip(f"the kernel ({os.uname().release}) did not negotiate FUSE passthrough")
            yield m
        fs.close_all()


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[Mounted]:
    with _passfs(tmp_path) as m:
        yield m


@pytest.mark.parametrize("killpriv_v2", [True, False])
def test_handle_killpriv_v2_spares_a_getxattr_per_write(tmp_path: Path, killpriv_v2: bool) -> None:
    """Before each write(2) the kernel asks GETXATTR("security.capability") (to clear privileges),
    also for passthrough writes, unless FUSE_HANDLE_KILLPRIV_V2 lets it mark the inode S_NOSEC after
    the first one."""
    with _passfs(tmp_path, handle_killpriv_v2=killpriv_v2) as m:
        fs: PassFS = m.fs  # type: ignore[assignment]
        with open(m.path / "w.bin", "wb") as f:
            for _ in range(16):
                f.write(bytes(MiB))
        asked = fs.getxattrs.count(b"security.capability")
        assert m.session.conn is not None
        assert m.session.conn.has(HANDLE_KILLPRIV_V2) == killpriv_v2
        if killpriv_v2:
            assert asked <= 1, asked
        else:
            assert asked >= 16, asked  # the cost this option removes (keeps the test honest)


def test_passthrough_is_negotiated_only_when_asked(tmp_path: Path) -> None:
    mp = tmp_path / "plain"
    mp.mkdir()
    with serve(mp, MemFS(), MountOptions(fsname="memfs", subtype="memfs", unmount_grace=1.0)) as m:
        assert m.session.conn is not None and not m.session.conn.has(PASSTHROUGH)
        with pytest.raises(OSError) as ei:
            m.session.backing_open(0)
        assert ei.value.errno == errno.EOPNOTSUPP


def test_writes_and_reads_go_to_the_backing_file(mounted: Mounted, tmp_path: Path) -> None:
    fs: PassFS = mounted.fs  # type: ignore[assignment]
    target = mounted.path / "big.bin"
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(8 * MiB + 123))
    subprocess.run(["dd", f"if={src}", f"of={target}", "bs=1M", "status=none"], check=True, timeout=60)
    ino = os.stat(target).st_ino
    assert Path(fs.backing, str(ino)).read_bytes() == src.read_bytes()
    assert target.stat().st_size == 8 * MiB + 123
    assert target.read_bytes() == src.read_bytes()
    with open(target, "r+b") as f:  # a rewrite in the middle and an append
        f.seek(MiB)
        f.write(b"x" * 5000)
        f.seek(0, os.SEEK_END)
        f.write(b"tail")
    want = bytearray(src.read_bytes())
    want[MiB : MiB + 5000] = b"x" * 5000
    want += b"tail"
    assert target.read_bytes() == want
    assert (fs.reads, fs.writes) == (0, 0), "a passthrough open sent READ/WRITE to the filesystem"
    # RELEASE comes after close(2) returned (the kernel sends it when the file's last reference goes)
    wait_for(lambda: fs.ids == {} and len(fs.closed_ids) >= 2, what="backing ids closed at the last release")


def test_one_backing_id_serves_every_open_of_an_inode(mounted: Mounted) -> None:
    fs: PassFS = mounted.fs  # type: ignore[assignment]
    p = mounted.path / "shared.txt"
    a = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        b = os.open(p, os.O_RDONLY)
        try:
            os.pwrite(a, b"hello passthrough", 0)
            assert os.pread(b, 100, 0) == b"hello passthrough"
            assert len(fs.ids) == 1 and next(iter(fs.ids.values()))[1] == 2
        finally:
            os.close(b)
    finally:
        os.close(a)
    wait_for(lambda: fs.ids == {}, what="the backing id closed after both opens")
    assert p.read_text() == "hello passthrough"  # a new id after the old one was closed
    assert (fs.reads, fs.writes) == (0, 0)


def test_mmap_writes_land_in_the_backing_file(mounted: Mounted) -> None:
    fs: PassFS = mounted.fs  # type: ignore[assignment]
    p = mounted.path / "mapped.bin"
    p.write_bytes(bytes(2 * 4096))
    with open(p, "r+b") as f, mmap.mmap(f.fileno(), 0) as mm:
        mm[4096:4101] = b"mmap!"
        mm.flush()
    ino = os.stat(p).st_ino
    assert Path(fs.backing, str(ino)).read_bytes()[4096:4101] == b"mmap!"
    assert p.read_bytes()[4096:4101] == b"mmap!"
    assert (fs.reads, fs.writes) == (0, 0)


def test_an_inode_open_without_passthrough_cannot_be_opened_with_it(mounted: Mounted) -> None:
    """The kernel's rule (fs/fuse/iomode.c) the vfs layer must follow: while an inode has an open
    answered without passthrough, an open answered with it fails with EIO (and the reverse)."""
    fs: PassFS = mounted.fs  # type: ignore[assignment]
    p = mounted.path / "mixed.txt"
    p.write_text("plain and passthrough")
    ino = os.stat(p).st_ino
    fs.plain.add(ino)
    plain = os.open(p, os.O_RDONLY)
    try:
        assert os.read(plain, 5) == b"plain"
        assert fs.reads >= 1  # this open is served by the filesystem
        fs.plain.discard(ino)
        with pytest.raises(OSError) as ei:
            os.open(p, os.O_RDONLY)
        assert ei.value.errno == errno.EIO
    finally:
        os.close(plain)
    wait_for(lambda: fs.ids == {}, what="the refused passthrough open released")
    assert p.read_text() == "plain and passthrough"  # no plain open left: passthrough works again


def test_backing_open_refuses_a_bad_descriptor(mounted: Mounted) -> None:
    with pytest.raises(OSError) as ei:
        mounted.session.backing_open(10_000)
    assert ei.value.errno == errno.EBADF

