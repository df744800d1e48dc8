"""Session life cycle and robustness of meshfs.fuse through the real kernel: failing and hanging
handlers, interrupts, unmount with requests in flight, mountpoint errors, stale mounts,
notifications, lookup accounting."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from conftest import Mounted, is_mounted, serve, wait_for
from memfs import MemFS

from meshfs.fuse import ROOT_INODE, MountError, MountOptions, Session, abi, lazy_unmount

pytestmark = pytest.mark.fuse

DAEMON = str(Path(__file__).with_name("daemon.py"))

# a child process that stats a path; SIGUSR1 interrupts it; prints the outcome
STAT_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    class Interrupted(Exception): pass
    def on_signal(*a): raise Interrupted()
    signal.signal(signal.SIGUSR1, on_signal)
    print("started", flush=True)
    try:
        os.stat(sys.argv[1])
        print("ok", flush=True)
    except Interrupted:
        print("interrupted", flush=True)
    except OSError as e:
        print("errno", e.errno, flush=True)
    """
)


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)
            if p.stdout:
                p.stdout.close()


def stat_child(path: Path, procs: list[subprocess.Popen[str]]) -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, "-c", STAT_CHILD, str(path)], stdout=subprocess.PIPE, text=True)
    procs.append(p)
    assert p.stdout is not None and p.stdout.readline().strip() == "started"
    return p


def outcome(p: subprocess.Popen[str], timeout: float = 15.0) -> str:
    out, _ = p.communicate(timeout=timeout)
    return out.strip()


def test_handler_that_raises_is_eio_and_mount_survives(
    mnt: Mounted, caplog: pytest.LogCaptureFixture
) -> None:
    mnt.call(mnt.fs.raise_on.add, b"boom")
    with caplog.at_level(logging.ERROR, logger="meshfs.fuse"), pytest.raises(OSError) as ei:
        os.stat(mnt.path / "boom")
    assert ei.value.errno == errno.EIO
    assert any("deliberate failure" in (r.exc_text or "") for r in caplog.records)
    (mnt.path / "fine").write_bytes(b"still serving")
    assert (mnt.path / "fine").read_bytes() == b"still serving"


def test_unsupported_request_is_enosys(mnt: Mounted) -> None:
    (mnt.path / "f").write_bytes(b"")
    fd = os.open(mnt.path / "f", os.O_RDONLY)
    try:
        with pytest.raises(OSError) as ei:
            fcntl.ioctl(fd, 0x80086601, b"\0" * 8)  # FS_IOC_GETFLAGS -> IOCTL -> ENOSYS -> ENOTTY
        assert ei.value.errno == errno.ENOTTY
    finally:
        os.close(fd)


def test_hanging_handler_does_not_block_others(mnt: Mounted, children: list[subprocess.Popen[str]]) -> None:
    # the other work happens in another directory: creating entries next to the hanging lookup
    # would wait for the directory lock it holds in the kernel's VFS, whatever the fs does
    (mnt.path / "other").mkdir()
    mnt.call(mnt.fs.hang_on.add, b"slow")
    p = stat_child(mnt.path / "slow", children)
    wait_for(lambda: mnt.call(lambda: mnt.fs.hanging) == 1, what="the lookup to hang")
    for i in range(50):
        (mnt.path / "other" / f"f{i}").write_bytes(b"x" * i)
    assert len(os.listdir(mnt.path / "other")) == 50
    assert os.stat(mnt.path / "other" / "f7").st_size == 7
    assert p.poll() is None
    mnt.call(mnt.fs.release_hang.set)
    assert outcome(p) == f"errno {errno.ENOENT}"


@pytest.mark.parametrize("name", [b"slow", b"scoped"])
def test_interrupt_cancels_the_handler(
    mnt: Mounted, children: list[subprocess.Popen[str]], name: bytes
) -> None:
    mnt.call(mnt.fs.hang_on.add, name)
    p = stat_child(mnt.path / name.decode(), children)
    wait_for(lambda: mnt.call(lambda: mnt.fs.hanging) == 1, what="the lookup to hang")
    os.kill(p.pid, signal.SIGUSR1)
    assert outcome(p) == "interrupted"
    assert mnt.call(lambda: (mnt.fs.cancelled, mnt.fs.hanging)) == (1, 0)
    assert (mnt.path / "x").exists() is False  # still serving


def test_max_tasks_bounds_blocked_handlers_and_recovers(
    tmp_path: Path, children: list[subprocess.Popen[str]]
) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    with serve(mp, MemFS(), MountOptions(fsname="memfs", max_tasks=2, unmount_grace=1.0)) as m:
        (mp / "d").mkdir()
        m.call(m.fs.hang_on.update, {b"slow", b"scoped"})
        a = stat_child(mp / "slow", children)
        wait_for(lambda: m.call(lambda: m.fs.hanging) == 1, what="the first lookup to hang")
        b = stat_child(mp / "scoped", children)
        wait_for(lambda: m.call(lambda: m.fs.hanging) == 2, what="the second lookup to hang")
        # both workers are blocked: nobody reads; a third request waits (bounded by max_tasks)
        c = stat_child(mp / "d" / "none", children)  # not in the kernel's caches
        with pytest.raises(subprocess.TimeoutExpired):
            c.communicate(timeout=0.5)
        m.call(m.fs.release_hang.set)
        assert outcome(a) == outcome(b) == f"errno {errno.ENOENT}"
        assert outcome(c) == f"errno {errno.ENOENT}"
        (mp / "after").write_bytes(b"served again")
        assert (mp / "after").read_bytes() == b"served again"


def test_unmount_with_request_finishing_in_grace(
    mnt: Mounted, children: list[subprocess.Popen[str]]
) -> None:
    mnt.call(mnt.fs.hang_on.add, b"slow")
    p = stat_child(mnt.path / "slow", children)
    wait_for(lambda: mnt.call(lambda: mnt.fs.hanging) == 1, what="the lookup to hang")
    mnt.session.unmount()  # busy -> detached lazily, still served during the grace period
    assert not is_mounted(mnt.path)
    mnt.call(mnt.fs.release_hang.set)
    assert outcome(p) == f"errno {errno.ENOENT}"  # a real answer, not ENOTCONN
    mnt.thread.join(10)
    assert not mnt.thread.is_alive() and mnt.fs.destroyed and mnt.fs.cancelled == 0


def test_unmount_with_request_hanging_past_grace(
    mnt: Mounted, children: list[subprocess.Popen[str]]
) -> None:
    mnt.call(mnt.fs.hang_on.add, b"slow")
    p = stat_child(mnt.path / "slow", children)
    wait_for(lambda: mnt.call(lambda: mnt.fs.hanging) == 1, what="the lookup to hang")
    mnt.session.unmount()
    # aborted after unmount_grace (1 s here): in-flight requests end with ECONNABORTED
    assert outcome(p) in (f"errno {errno.ECONNABORTED}", f"errno {errno.ENOTCONN}")
    mnt.thread.join(10)
    assert not mnt.thread.is_alive()
    assert mnt.fs.destroyed and mnt.fs.cancelled == 1 and mnt.fs.hanging == 0


def test_mountpoint_errors(tmp_path: Path) -> None:
    s = Session(MemFS())
    with pytest.raises(MountError, match=r"^mountpoint .*/missing does not exist$"):
        s.mount(tmp_path / "missing")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(MountError, match="is not a directory"):
        s.mount(tmp_path / "file")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_bytes(b"")
    with pytest.raises(MountError, match=r"^mountpoint .*/full is not empty"):
        s.mount(tmp_path / "full")
    with pytest.raises(MountError, match="max_write"):
        s.mount(tmp_path, MountOptions(max_write=12345))
    with pytest.raises(MountError, match="fsname"):
        s.mount(tmp_path, MountOptions(fsname="a,b"))
    # nonempty=True mounts over it (and hides the content)
    with serve(tmp_path / "full", MemFS(), MountOptions(fsname="memfs", nonempty=True)) as m:
        assert os.listdir(m.path) == []
    assert (tmp_path / "full" / "x").exists()


def test_stale_mount_is_cleaned(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    r = subprocess.run([sys.executable, DAEMON, str(mp), "--die-after-init"], capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    try:
        with pytest.raises(OSError) as ei:
            os.stat(mp)
        assert ei.value.errno == errno.ENOTCONN
        with caplog.at_level(logging.WARNING, logger="meshfs.fuse"), serve(mp) as m:
            (m.path / "f").write_bytes(b"fresh")
            assert os.listdir(m.path) == ["f"]
        assert any("stale" in r.getMessage() for r in caplog.records)
    finally:
        if is_mounted(mp):
            lazy_unmount(str(mp))


def test_notifications(tmp_path: Path) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    with serve(mp, MemFS(timeout=300)) as m:
        f = mp / "n"
        f.write_bytes(b"aaaa")
        ino = f.stat().st_ino
        fd = os.open(f, os.O_RDONLY)
        try:
            assert os.pread(fd, 4, 0) == b"aaaa"

            def behind_the_back() -> None:
                m.fs.nodes[ino].data[:] = b"bbbb"

            m.call(behind_the_back)
            assert os.pread(fd, 4, 0) == b"aaaa"  # page cache

            async def inval() -> None:
                m.session.invalidate_inode(ino)
                with trio.fail_after(10):
                    await m.session.drain_notifications()

            m.acall(inval)
            assert os.pread(fd, 4, 0) == b"bbbb"

            async def store() -> None:
                m.session.store(ino, 0, b"cccc")
                with trio.fail_after(10):
                    await m.session.drain_notifications()

            m.acall(store)
            assert os.pread(fd, 4, 0) == b"cccc"  # from the kernel's cache, the fs still has bbbb
            assert m.call(lambda: bytes(m.fs.nodes[ino].data)) == b"bbbb"

            # a handler may notify about the very inode it is serving without deadlock
            def hook(fh: int, off: int, size: int) -> None:
                m.session.invalidate_inode(ino)

            m.call(setattr, m.fs, "read_hook", hook)
            m.acall(inval)
            assert os.pread(fd, 4, 0) == b"bbbb"
            m.call(setattr, m.fs, "read_hook", None)

            async def drain() -> None:
                with trio.fail_after(10):
                    await m.session.drain_notifications()

            m.acall(drain)
        finally:
            os.close(fd)

        # entries: rename behind the kernel's back, the cached dentry survives until invalidated
        (mp / "old").write_bytes(b"")
        os.stat(mp / "old")

        def rename_behind() -> int:
            root = m.fs.nodes[ROOT_INODE]
            child = root.entries.pop(b"old")
            root.entry_ids.pop(b"old")
            m.fs._link(root, b"new", m.fs.nodes[child])
            return child

        child = m.call(rename_behind)
        os.stat(mp / "old")  # still cached (entry_timeout 300 s)

        async def inval_entry() -> None:
            m.session.invalidate_entry(ROOT_INODE, b"old")
            await m.session.drain_notifications()

        m.acall(inval_entry)
        assert not (mp / "old").exists()
        assert os.stat(mp / "new").st_ino == child

        def unlink_behind() -> None:
            root = m.fs.nodes[ROOT_INODE]
            root.entries.pop(b"new")
            root.entry_ids.pop(b"new")

        m.call(unlink_behind)
        os.stat(mp / "new")

        async def delete() -> None:
            m.session.delete_entry(ROOT_INODE, child, b"new")
            await m.session.drain_notifications()

        m.acall(delete)
        assert not (mp / "new").exists()


@pytest.mark.parametrize("readdirplus", [True, False])
def test_lookup_counts_return_to_zero(tmp_path: Path, readdirplus: bool) -> None:
    if os.geteuid() != 0:
        pytest.skip("SKIPPED LOUDLY: dropping the kernel's caches (to provoke FORGET) needs root")
    mp = tmp_path / "mnt"
    mp.mkdir()
    with serve(mp, MemFS(), MountOptions(fsname="memfs", readdirplus=readdirplus)) as mnt:
        assert mnt.session.conn is not None
        assert mnt.session.conn.has(abi.DO_READDIRPLUS) == readdirplus
        _lookup_counts_return_to_zero(mnt)


def _lookup_counts_return_to_zero(mnt: Mounted) -> None:
    for i in range(300):
        (mnt.path / f"f{i}").write_bytes(b"")
    (mnt.path / "d").mkdir()
    os.symlink("f1", mnt.path / "ln")
    os.link(mnt.path / "f2", mnt.path / "hl")
    for _ in range(2):
        assert len(os.listdir(mnt.path)) == 303
        subprocess.run(["ls", "-l", str(mnt.path)], capture_output=True, check=True)
    for i in range(0, 300, 7):
        os.stat(mnt.path / f"f{i}")

    def counts() -> dict[int, int]:
        return {ino: n.lookups for ino, n in mnt.fs.nodes.items() if ino != ROOT_INODE}

    assert any(counts().values())
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2\n")
    # the kernel forgets every evicted inode; lookups handed out by readdir(plus) included
    wait_for(lambda: not any(counts().values()), what="all lookups to be forgotten")
    assert min(counts().values()) == 0


def test_mount_options_reach_the_kernel(tmp_path: Path) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    opts = MountOptions(fsname="optfs", subtype="memfs", ro=True, max_read=65536, default_permissions=True)
    with serve(mp, MemFS(), opts) as m:
        with open("/proc/self/mountinfo") as f:
            line = next(ln for ln in f if ln.split()[4] == str(mp))
        assert " ro," in line or line.split()[5].startswith("ro")
        assert "max_read=65536" in line and "default_permissions" in line
        assert "fuse.memfs optfs" in line
        with pytest.raises(OSError) as ei:
            (m.path / "f").write_bytes(b"")
        assert ei.value.errno == errno.EROFS


def test_writeback_cache(tmp_path: Path) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    with serve(mp, MemFS(), MountOptions(fsname="memfs", writeback_cache=True)) as m:
        assert m.session.conn is not None and m.session.conn.has(abi.WRITEBACK_CACHE)
        f = mp / "f"
        with open(f, "wb") as fh:
            for i in range(100):
                fh.write(bytes([i]) * 1000)
        assert f.stat().st_size == 100_000
        os.sync()
        assert f.read_bytes() == b"".join(bytes([i]) * 1000 for i in range(100))
        ino = f.stat().st_ino
        assert m.call(lambda: bytes(m.fs.nodes[ino].data[:1000])) == b"\0" * 1000


def test_export_support_lookup_of_dot_and_dotdot(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("SKIPPED LOUDLY: open_by_handle_at and dropping caches need root")
    mp = tmp_path / "mnt"
    mp.mkdir()
    with serve(mp, MemFS(), MountOptions(fsname="memfs", export_support=True)) as m:
        assert m.session.conn is not None and m.session.conn.has(abi.EXPORT_SUPPORT)
        (mp / "d").mkdir()
        (mp / "d" / "f").write_bytes(b"x")
        # a file handle survives dropping the kernel's caches (lookups of "." / ".." by the fs)
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)

        class FileHandle(ctypes.Structure):
            _fields_ = (("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                        ("f_handle", ctypes.c_ubyte * 128))

        fh = FileHandle(handle_bytes=128)
        mount_id = ctypes.c_int()
        assert libc.name_to_handle_at(-100, os.fsencode(mp / "d" / "f"), ctypes.byref(fh),
                                      ctypes.byref(mount_id), 0) == 0, os.strerror(ctypes.get_errno())
        with open("/proc/sys/vm/drop_caches", "w") as dc:
            dc.write("2\n")
        mfd = os.open(mp, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fd = libc.open_by_handle_at(mfd, ctypes.byref(fh), os.O_RDONLY)
            assert fd >= 0, os.strerror(ctypes.get_errno())
            try:
                assert os.read(fd, 10) == b"x"
            finally:
                os.close(fd)
        finally:
            os.close(mfd)
