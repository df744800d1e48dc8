"""fcntl and flock locks through the kernel, decided by the MemFS lock table (meshfs.fuse).

Two (or three) separate processes run tests/fuse/lockhelper.py; the MemFS records every lock
request it saw, which proves the filesystem -- not the kernel -- decided.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Mounted, serve, wait_for
from memfs import MemFS

from meshfs.fuse import F_RDLCK, F_UNLCK, F_WRLCK, LOCK_END_EOF, MountOptions

pytestmark = pytest.mark.fuse

HELPER = str(Path(__file__).with_name("lockhelper.py"))


class Proc:
    def __init__(self) -> None:
        self.p = subprocess.Popen([sys.executable, HELPER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True, bufsize=1)
        self.pid = self.p.pid

    def send(self, line: str) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()

    def answer(self, timeout: float = 10.0) -> str:
        assert self.p.stdout is not None
        ready, _, _ = select.select([self.p.stdout], [], [], timeout)
        if not ready:
            raise AssertionError(f"lock helper {self.pid} gave no answer within {timeout}s")
        return self.p.stdout.readline().strip()

    def pending(self) -> bool:
        assert self.p.stdout is not None
        return not select.select([self.p.stdout], [], [], 0)[0]

    def __call__(self, line: str) -> str:
        self.send(line)
        return self.answer()

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(10)
        for s in (self.p.stdin, self.p.stdout):
            if s is not None:
                s.close()


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    ps = [Proc(), Proc(), Proc()]
    try:
        yield ps
    finally:
        for p in ps:
            p.close()


def seen(m: Mounted, op: str, outcome: str) -> list[object]:
    return m.call(lambda: [r for r in m.fs.lock_log if r.op == op and r.outcome == outcome])


def test_fcntl_conflict_and_getlk_reports_holder(mnt: Mounted, procs: list[Proc]) -> None:
    a, b, _ = procs
    f = mnt.path / "f"
    f.write_bytes(b"x" * 1000)
    assert a(f"open f {f}") == "ok" and b(f"open f {f}") == "ok"
    assert a("lk f w 0 100 0") == "ok"
    assert b("lk f w 50 10 0") == "err EAGAIN"
    assert b("lk f r 99 1 0") == "err EAGAIN"
    assert b("getlk f w 0 10") == f"getlk {F_WRLCK} 0 100 {a.pid}"
    assert b("getlk f r 100 10") == f"getlk {F_UNLCK} 100 10 0"
    assert b("lk f w 100 50 0") == "ok"  # adjacent, no overlap
    assert a("lk f r 120 1 0") == "err EAGAIN"
    granted = seen(mnt, "setlk", "granted")
    refused = seen(mnt, "setlk", "EAGAIN")
    assert len(granted) == 2 and len(refused) == 3
    assert {r.lock.pid for r in refused} == {a.pid, b.pid}  # type: ignore[attr-defined]
    assert all(not r.lock.flock for r in granted)  # type: ignore[attr-defined]
    assert seen(mnt, "getlk", "conflict") and seen(mnt, "getlk", "free")
    # unlocking part of a range splits it (POSIX semantics in the fs's table)
    assert a("lk f u 0 50 0") == "ok"
    assert b("lk f w 0 50 0") == "ok"
    assert b("lk f w 50 1 0") == "err EAGAIN"


def test_fcntl_released_when_any_fd_of_the_owner_closes(mnt: Mounted, procs: list[Proc]) -> None:
    a, b, _ = procs
    f = mnt.path / "f"
    f.write_bytes(b"")
    assert a(f"open one {f}") == "ok" and a(f"open two {f}") == "ok" and b(f"open f {f}") == "ok"
    assert a("lk one w 0 0 0") == "ok"
    assert b("lk f r 5 5 0") == "err EAGAIN"
    assert a("close two") == "ok"  # POSIX: closing any fd drops the process's locks on the file
    assert b("lk f r 5 5 0") == "ok"
    owner = seen(mnt, "setlk", "granted")[0].owner  # type: ignore[attr-defined]
    assert any(r.owner == owner for r in seen(mnt, "flush", "ok"))  # type: ignore[attr-defined]


def test_flock_shared_exclusive_nonblocking(mnt: Mounted, procs: list[Proc]) -> None:
    a, b, c = procs
    f = mnt.path / "f"
    f.write_bytes(b"")
    for p in procs:
        assert p(f"open f {f}") == "ok"
    assert a("flock f sh 0") == "ok"
    assert b("flock f sh 0") == "ok"
    assert c("flock f ex 0") == "err EAGAIN"  # EWOULDBLOCK
    assert a("flock f un 0") == "ok"
    assert b("flock f un 0") == "ok"
    assert c("flock f ex 0") == "ok"
    assert a("flock f sh 0") == "err EAGAIN"
    granted = seen(mnt, "setlk", "granted")
    assert granted and all(r.lock.flock for r in granted)  # type: ignore[attr-defined]
    assert all((r.lock.start, r.lock.end) == (0, LOCK_END_EOF) for r in granted)  # type: ignore[attr-defined]
    # closing the last fd releases the flock (RELEASE with FUSE_RELEASE_FLOCK_UNLOCK)
    assert c("close f") == "ok"
    wait_for(lambda: seen(mnt, "release", "flock_release"), what="RELEASE with flock unlock")
    assert a("flock f ex 0") == "ok"


def test_blocking_wait_released_by_unlock(mnt: Mounted, procs: list[Proc]) -> None:
    a, b, _ = procs
    f = mnt.path / "f"
    f.write_bytes(b"")
    assert a(f"open f {f}") == "ok" and b(f"open f {f}") == "ok"
    assert a("lk f w 0 0 0") == "ok"
    b.send("lk f w 10 10 1")
    wait_for(lambda: seen(mnt, "setlkw", "wait"), what="the fs to see the blocking SETLKW")
    assert b.pending()
    assert a("lk f u 0 0 0") == "ok"
    assert b.answer() == "ok"
    assert seen(mnt, "setlkw", "granted")
    # and the same for flock
    assert a("flock f ex 0") == "ok"
    b.send("flock f ex 1")
    wait_for(lambda: len(seen(mnt, "setlkw", "wait")) >= 2, what="the blocking flock")
    assert b.pending()
    assert a("flock f un 0") == "ok"
    assert b.answer() == "ok"


def test_blocking_wait_interrupted_by_signal(mnt: Mounted, procs: list[Proc]) -> None:
    a, b, _ = procs
    f = mnt.path / "f"
    f.write_bytes(b"")
    assert a(f"open f {f}") == "ok" and b(f"open f {f}") == "ok"
    assert a("flock f ex 0") == "ok"
    b.send("flock f ex 1")
    wait_for(lambda: seen(mnt, "setlkw", "wait"), what="the fs to see the blocking flock")
    os.kill(b.pid, signal.SIGUSR1)
    assert b.answer() == "err EINTR"
    wait_for(lambda: seen(mnt, "setlkw", "interrupted"), what="the handler to be cancelled")
    assert b("flock f ex 0") == "err EAGAIN"  # still held by a, nothing half-acquired
    assert a("flock f un 0") == "ok"
    assert b("flock f ex 0") == "ok"
    # fcntl SETLKW too
    assert a("lk f r 0 10 0") == "ok"
    b.send("lk f w 0 10 1")
    wait_for(lambda: len(seen(mnt, "setlkw", "wait")) >= 2, what="the blocking fcntl lock")
    os.kill(b.pid, signal.SIGUSR1)
    assert b.answer() == "err EINTR"
    wait_for(lambda: len(seen(mnt, "setlkw", "interrupted")) >= 2, what="the second cancellation")


def test_locks_switched_off_stay_in_the_kernel(tmp_path: Path, procs: list[Proc]) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    opts = MountOptions(fsname="memfs", locks=False, unmount_grace=1.0)
    with serve(mp, MemFS(), opts) as m:
        a, b, _ = procs
        f = mp / "f"
        f.write_bytes(b"")
        assert a(f"open f {f}") == "ok" and b(f"open f {f}") == "ok"
        assert a("lk f w 0 0 0") == "ok"
        assert b("lk f r 0 1 0") == "err EAGAIN"  # the kernel's local lock table decides
        assert a("flock f ex 0") == "ok"
        assert b("flock f ex 0") == "err EAGAIN"
        assert m.call(lambda: [r for r in m.fs.lock_log if r.op != "flush" and r.op != "release"]) == []
        assert F_RDLCK == 0  # the Linux value the ABI relies on


def test_ofd_locks_reach_the_fs_and_go_at_last_close(mnt: Mounted) -> None:
    import fcntl
    import struct

    f_ofd_setlk = 37
    wrlck = struct.pack("hh4xqqi4x", F_WRLCK, os.SEEK_SET, 0, 10, 0)
    f = mnt.path / "f"
    f.write_bytes(b"x" * 100)
    fd1 = os.open(f, os.O_RDWR)
    fd2 = os.open(f, os.O_RDWR)
    try:
        fcntl.fcntl(fd1, f_ofd_setlk, wrlck)
        with pytest.raises(BlockingIOError):
            fcntl.fcntl(fd2, f_ofd_setlk, wrlck)  # same process, other open file: a conflict
        assert len(seen(mnt, "setlk", "granted")) == 1 and len(seen(mnt, "setlk", "EAGAIN")) == 1
        releases = len(seen(mnt, "release", "ok"))
        os.close(fd1)
        fd1 = -1
        wait_for(lambda: len(seen(mnt, "release", "ok")) > releases, what="RELEASE of the first open file")
        fcntl.fcntl(fd2, f_ofd_setlk, wrlck)  # the fs dropped the OFD lock at RELEASE
    finally:
        for fd in (fd1, fd2):
            if fd >= 0:
                os.close(fd)
