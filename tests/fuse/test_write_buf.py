"""WRITE through `Operations.write_buf`: payloads spliced from /dev/fuse into files, and the fallbacks.

Owns: `FileFS` (a MemFS whose write_buf stores data in real backing files with
`WritePayload.write_to` and reads it back), unit tests of `WritePayload` on real pipes, and tests
through the real kernel: dd in several block sizes and random (also unaligned) offsets reads back
identical with splicing on, off, and when no pipe is to be had; a handler that refuses or only
half-takes a spliced payload leaves the next request intact; O_DIRECT and writeback_cache writes.
Must not import meshfs modules other than meshfs.fuse.
"""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
import trio
from conftest import Mounted, serve
from filecheck import write_pattern
from memfs import MemFS

import meshfs.fuse.session as session_mod
from meshfs.fuse import FUSEError, MountOptions, WritePayload
from meshfs.fuse.operations import _read_exactly

MiB = 1 << 20
PAGE = 4096


def _pipe_max() -> int:
    try:
        return int(Path("/proc/sys/fs/pipe-max-size").read_text())
    except OSError:
        return MiB


def splice_max_write() -> int:
    """The largest max_write this process can splice (a pipe of max_write + 2 pages), computed
    here independently of the session's own probe."""
    r, w = os.pipe()
    try:
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, MiB + 2 * PAGE)
        return MiB  # CAP_SYS_RESOURCE or a large fs.pipe-max-size
    except OSError:
        return max(PAGE, min(MiB, (_pipe_max() - 2 * PAGE) // PAGE * PAGE))
    finally:
        os.close(r)
        os.close(w)


class FileFS(MemFS):
    """MemFS whose file data goes through real files: `write_buf` writes the payload into a
    backing file and copies what landed there back into the node (so reads through the mount
    show exactly what `write_to` wrote, at the offsets it wrote them)."""

    def __init__(self, backing: str, *, in_thread: bool = False) -> None:
        super().__init__()
        self.backing = backing
        self.in_thread = in_thread
        self.fds: dict[int, int] = {}
        self.refuse: set[int] = set()  # inodes whose writes fail with ENOSPC before taking data
        self.half: set[int] = set()  # inodes whose writes take half the payload and answer that
        self.use_view: set[int] = set()  # inodes whose writes take the data with view()
        self.seen_in_kernel = 0  # payloads that arrived still in the pipe

    def _fd(self, ino: int) -> int:
        fd = self.fds.get(ino)
        if fd is None:
            fd = self.fds[ino] = os.open(f"{self.backing}/{ino}", os.O_RDWR | os.O_CREAT, 0o600)
        return fd

    async def write_buf(self, fh: int, off: int, data: WritePayload) -> int:
        node = self._handle(fh)
        if node.ino in self.refuse:
            raise FUSEError(errno.ENOSPC)
        if data.in_kernel:
            self.seen_in_kernel += 1
        if node.ino in self.use_view:
            return await self.write(fh, off, data.view())
        fd = self._fd(node.ino)
        if node.ino in self.half:
            want = max(1, len(data) // 2)
            while data.consumed < want:
                data.write_to(fd, off, want - data.consumed)
            n = data.consumed
        elif self.in_thread:
            n = await trio.to_thread.run_sync(data.write_all_to, fd, off)
        else:
            n = data.write_all_to(fd, off)
        landed = os.pread(fd, n, off)
        d = node.data
        if off > len(d):
            d.extend(bytes(off - len(d)))
        d[off : off + n] = landed
        return n

    def close_all(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


@pytest.fixture
def backing() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="fuse-backing-") as d:
        yield d


def _mount(tmp_path: Path, fs: FileFS, **kw: object) -> AbstractContextManager[Mounted]:
    mp = tmp_path / "mnt"
    mp.mkdir(exist_ok=True)
    opts = MountOptions(fsname="filefs", subtype="filefs", unmount_grace=1.0, **kw)  # type: ignore[arg-type]
    return serve(mp, fs, opts)


def _write_pattern(m: Mounted, tmp_path: Path, seed: int) -> tuple[bytes, bytes]:
    """filecheck's pattern (dd at random block offsets, unaligned pwrites) into f.bin of the mount;
    returns (what the file should hold, what it holds)."""
    target = m.path / "f.bin"
    want = write_pattern(target, tmp_path, seed)
    return want, target.read_bytes()


# ------------------------------------------------------------------ WritePayload without FUSE
def test_memory_payload_writes_itself_at_the_offset(tmp_path: Path) -> None:
    data = os.urandom(3 * PAGE + 5)
    p = WritePayload(memoryview(bytearray(data)))
    assert len(p) == p.remaining == len(data) and p.consumed == 0 and not p.in_kernel
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        assert p.write_all_to(fd, 1000) == len(data)
        assert p.remaining == 0 and p.write_to(fd, 1000) == 0
        assert os.pread(fd, len(data) + 1000, 0) == bytes(1000) + data
        assert bytes(p.view()) == data
    finally:
        os.close(fd)


def test_pipe_payload_splices_into_a_file_and_discards_the_rest(tmp_path: Path) -> None:
    r, w = os.pipe()
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        first, second = os.urandom(2 * PAGE), os.urandom(PAGE + 3)
        os.write(w, first + second)
        p = WritePayload(memoryview(bytearray(len(first))), r)
        assert p.in_kernel and p.remaining == 2 * PAGE
        assert p.write_all_to(fd, PAGE + 1) == 2 * PAGE
        assert os.pread(fd, 3 * PAGE + 1, 0) == bytes(PAGE + 1) + first
        with pytest.raises(ValueError):
            p.view()  # the bytes left the pipe for the file
        # a payload the handler never touched is drained, and the pipe holds the next bytes
        q = WritePayload(memoryview(bytearray(PAGE)), r)
        q._discard()
        assert q.remaining == 0
        rest = bytearray(3)
        _read_exactly(r, memoryview(rest))
        assert bytes(rest) == second[PAGE:]
    finally:
        for x in (r, w, fd):
            os.close(x)


def test_pipe_payload_view_reads_it_into_memory() -> None:
    r, w = os.pipe()
    try:
        data = os.urandom(PAGE + 9)
        os.write(w, data)
        p = WritePayload(memoryview(bytearray(len(data))), r)
        assert bytes(p.view()) == data and not p.in_kernel
        p._discard()  # nothing left to drain: must not block
    finally:
        os.close(r)
        os.close(w)


def test_a_failed_splice_keeps_what_was_written(tmp_path: Path) -> None:
    r, w = os.pipe()
    ro = os.open(tmp_path / "ro", os.O_RDONLY | os.O_CREAT)
    try:
        os.write(w, b"x" * PAGE)
        p = WritePayload(memoryview(bytearray(PAGE)), r)
        with pytest.raises(OSError):
            p.write_to(ro, 0)  # EBADF: not open for writing
        assert p.consumed == 0 and p.remaining == PAGE
        p._discard()
    finally:
        for x in (r, w, ro):
            os.close(x)


# ------------------------------------------------------------------ through the kernel
@pytest.mark.parametrize("in_thread", [False, True], ids=["inline", "worker-thread"])
def test_spliced_writes_read_back_identical(tmp_path: Path, backing: str, in_thread: bool) -> None:
    mw = splice_max_write()
    fs = FileFS(backing, in_thread=in_thread)
    with _mount(tmp_path, fs, max_write=mw) as m:
        want, got = _write_pattern(m, tmp_path, seed=7 + in_thread)
        assert got == want
        s = m.session
        assert s.spliced_writes > 0, "no WRITE was spliced although the pipe could hold max_write"
        assert fs.seen_in_kernel == s.spliced_writes
        assert s.memory_writes > 0  # the small ones, and the first large one (before splicing starts)
    fs.close_all()


def test_without_splicing_the_same_writes_go_through_memory(tmp_path: Path, backing: str) -> None:
    fs = FileFS(backing)
    with _mount(tmp_path, fs, splice_write=False) as m:
        want, got = _write_pattern(m, tmp_path, seed=11)
        assert got == want
        assert m.session.spliced_writes == 0 and fs.seen_in_kernel == 0
        assert m.session.memory_writes > 0
    fs.close_all()


def test_no_pipe_to_be_had_falls_back_to_memory(
    tmp_path: Path, backing: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """F_SETPIPE_SZ refused (an unprivileged user beyond fs.pipe-max-size): WRITEs are read the
    ordinary way and still land right."""

    class NoBigPipes:
        F_SETPIPE_SZ = fcntl.F_SETPIPE_SZ

        @staticmethod
        def fcntl(fd: int, cmd: int, arg: int = 0) -> int:
            if cmd == fcntl.F_SETPIPE_SZ:
                raise PermissionError(errno.EPERM, "Operation not permitted")
            return fcntl.fcntl(fd, cmd, arg)

    monkeypatch.setattr(session_mod, "fcntl", NoBigPipes)
    fs = FileFS(backing)
    with _mount(tmp_path, fs, max_write=splice_max_write()) as m:
        want, got = _write_pattern(m, tmp_path, seed=13)
        assert got == want
        assert m.session.spliced_writes == 0 and m.session.memory_writes > 0
    fs.close_all()


def test_default_max_write_is_lowered_to_fit_a_pipe_and_spliced(tmp_path: Path, backing: str) -> None:
    fs = FileFS(backing)
    with _mount(tmp_path, fs) as m:
        assert m.session.options.max_write == splice_max_write()
        want, got = _write_pattern(m, tmp_path, seed=17)
        assert got == want
        assert m.session.spliced_writes > 0
    fs.close_all()


def test_max_write_stays_without_write_buf_or_splicing(tmp_path: Path, backing: str) -> None:
    (tmp_path / "a").mkdir()
    with serve(tmp_path / "a", MemFS(), MountOptions(fsname="m", subtype="m")) as m:
        assert m.session.options.max_write == MiB  # write() only: nothing to splice into
    with _mount(tmp_path, FileFS(backing), splice_write=False) as m:
        assert m.session.options.max_write == MiB


def test_refused_and_half_taken_payloads_leave_the_next_request_intact(tmp_path: Path, backing: str) -> None:
    mw = splice_max_write()
    fs = FileFS(backing)
    with _mount(tmp_path, fs, max_write=mw) as m:
        good, bad, half, view = (m.path / n for n in ("good", "bad", "half", "view"))
        for p in (good, bad, half, view):
            p.touch()
        fs.refuse.add(bad.stat().st_ino)
        fs.half.add(half.stat().st_ino)
        fs.use_view.add(view.stat().st_ino)
        block = os.urandom(mw)
        with open(good, "r+b", buffering=0) as f:
            f.write(block)  # turns splicing on
        for _ in range(3):
            with open(bad, "r+b", buffering=0) as f, pytest.raises(OSError) as ei:
                f.write(block)
            assert ei.value.errno == errno.ENOSPC
            with open(good, "r+b", buffering=0) as f:
                f.seek(0, os.SEEK_END)
                f.write(block)  # must not see the refused payload's leftovers
        fd = os.open(half, os.O_WRONLY)
        try:
            assert os.write(fd, block) == len(block) // 2  # the daemon took half; write(2) says so
            done = len(block) // 2
            while done < len(block):  # each rest is spliced again (and again half taken)
                n = os.write(fd, block[done:])
                assert 0 < n <= len(block) - done
                done += n
        finally:
            os.close(fd)
        with open(view, "r+b", buffering=0) as f:
            assert f.write(block) == len(block)
        assert good.read_bytes() == block * 4
        assert half.read_bytes() == block
        assert view.read_bytes() == block
        assert m.session.spliced_writes > 0
    fs.close_all()


def test_splicing_turns_off_after_other_requests_and_on_again(tmp_path: Path, backing: str) -> None:
    mw = splice_max_write()
    fs = FileFS(backing)
    with _mount(tmp_path, fs, max_write=mw) as m:
        f = m.path / "f"
        block = os.urandom(mw)
        f.write_bytes(block)
        assert m.session._splice_mode
        for i in range(session_mod.SPLICE_LEAVE + 8):
            (m.path / f"n{i}").touch()  # LOOKUP, CREATE, ... : no WRITE
        assert not m.session._splice_mode
        before = m.session.spliced_writes
        with open(f, "r+b", buffering=0) as fh:
            fh.write(block)
            fh.write(block)
        assert m.session.spliced_writes > before
        assert f.read_bytes() == block * 2
    fs.close_all()


def test_o_direct_writes_are_spliced_right(tmp_path: Path, backing: str) -> None:
    """O_DIRECT: the kernel copies the user's pages into the pipe instead of lending page cache
    pages; the data must land the same."""
    import mmap

    mw = splice_max_write()
    fs = FileFS(backing)
    with _mount(tmp_path, fs, max_write=mw) as m:
        f = m.path / "direct"
        f.touch()
        buf = mmap.mmap(-1, mw)  # page aligned
        data = os.urandom(mw)
        buf[:] = data
        fd = os.open(f, os.O_WRONLY | os.O_DIRECT)
        try:
            for i in range(3):
                assert os.pwritev(fd, [buf], i * mw) == mw
        finally:
            os.close(fd)
        assert f.read_bytes() == data * 3
    fs.close_all()


def test_writeback_cache_writes_are_spliced_right(tmp_path: Path, backing: str) -> None:
    mw = splice_max_write()
    fs = FileFS(backing)
    with _mount(tmp_path, fs, max_write=mw, writeback_cache=True) as m:
        src = tmp_path / "src"
        data = os.urandom(5 * MiB + 123)
        src.write_bytes(data)
        dst = m.path / "wb"
        subprocess.run(["dd", f"if={src}", f"of={dst}", "bs=256k", "status=none"], check=True, timeout=60)
        # close flushed the dirty pages; drop the kernel's copy so the read comes from the fs
        fd = os.open(dst, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        assert dst.read_bytes() == data
        assert fs.seen_in_kernel == m.session.spliced_writes
    fs.close_all()


@pytest.mark.parametrize("writeback", [False, True], ids=["write-through", "writeback_cache"])
def test_what_the_kernel_shows_after_a_remote_growth(tmp_path: Path, writeback: bool) -> None:
    """Why writeback_cache stays off for a network filesystem: with it the kernel keeps a regular
    file's size (and mtime/ctime) from its own inode and ignores the filesystem's answer, also after
    an invalidation (fs/fuse/inode.c fuse_get_cache_mask); a change made elsewhere stays invisible.
    Without it the new size shows at once. (Fails when a kernel changes this: then revisit.)"""
    mp = tmp_path / "mnt"
    mp.mkdir()
    opts = MountOptions(fsname="m", subtype="m", writeback_cache=writeback, unmount_grace=1.0)
    with serve(mp, MemFS(timeout=0.0), opts) as m:
        f = mp / "f"
        f.write_bytes(b"abc")
        ino = f.stat().st_ino

        def grow_elsewhere() -> None:
            node = m.fs.nodes[ino]
            node.data.extend(b"-grown-remotely")
            node.mtime_ns += 1_000_000_000

        m.call(grow_elsewhere)
        m.call(m.session.invalidate_inode, ino, 0, 0)
        m.acall(m.session.drain_notifications)
        if writeback:
            assert f.stat().st_size == 3 and f.read_bytes() == b"abc"
        else:
            assert f.stat().st_size == 18 and f.read_bytes() == b"abc-grown-remotely"
