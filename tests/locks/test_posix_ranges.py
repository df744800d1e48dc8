"""fcntl byte-range locks between local processes of one mount, and close semantics, on the real dev Reva.

Covers the local lock table behind the CS3 lease: conflicting / overlapping / disjoint ranges, merge
and split of one owner's ranges, F_GETLK naming the holder's pid and range, release of all POSIX
locks of a process on close of ANY of its fds, flock surviving a dup'ed fd until the last close, and
the whole-file CS3 lease that exists exactly while any local lock does.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable

import pytest
from lockkit import LockProc, wait_for

pytestmark = [pytest.mark.reva, pytest.mark.fuse]

OPTS = ("lock_expiry=20s", "lock_refresh_interval=5s")


def test_fcntl_ranges_between_local_processes(mounter, area, procs: Callable[[], LockProc], cs3) -> None:  # type: ignore[no-untyped-def]
    a = mounter.mount("einstein", *OPTS)
    path = area.on(a) / "ranges.bin"
    path.write_bytes(bytes(100))
    a.sync()
    ref = cs3.einstein.ref(f"{area.name}/ranges.bin")
    p1, p2, p3 = procs(), procs(), procs()
    for p in (p1, p2, p3):
        p.ok("open", "f", path, "rw")

    p1.ok("lk", "f", "w", 0, 10, "nb")  # P1 writes [0,10)
    lock = cs3.einstein.get_lock(ref)
    assert lock is not None and lock.app_name == "meshfs", "the first local lock takes the CS3 lock"
    assert p2.err("lk", "f", "w", 5, 10, "nb") in ("EAGAIN", "EACCES")  # overlapping: conflict
    assert p2.err("lk", "f", "r", 9, 1, "nb") in ("EAGAIN", "EACCES")  # read vs write: conflict
    p2.ok("lk", "f", "w", 10, 10, "nb")  # adjacent/disjoint [10,20): granted
    assert cs3.einstein.get_lock(ref) == lock, "more local locks share the one CS3 lease"

    # F_GETLK names the holder's pid and exact range
    assert p3.ok("getlk", "f", "w", 0, 5) == {"ok": True, "type": "w", "start": 0, "len": 10, "pid": p1.pid}
    assert p3.ok("getlk", "f", "r", 15, 100) == {
        "ok": True,
        "type": "w",
        "start": 10,
        "len": 10,
        "pid": p2.pid,
    }
    assert p3.ok("getlk", "f", "w", 20, 50)["type"] == "u"
    assert p1.ok("getlk", "f", "w", 0, 10)["type"] == "u", "own locks never conflict"

    # read locks share; merge and split of one owner's ranges
    p1.ok("lk", "f", "r", 30, 10, "nb")
    p1.ok("lk", "f", "r", 40, 10, "nb")  # touches [30,40): merges to [30,50)
    p3.ok("lk", "f", "r", 35, 10, "nb")  # another reader inside: fine
    assert p2.ok("getlk", "f", "w", 45, 1) == {"ok": True, "type": "r", "start": 30, "len": 20, "pid": p1.pid}
    p3.ok("lk", "f", "u", 35, 10, "nb")
    p1.ok("lk", "f", "u", 38, 4, "nb")  # split: [30,38) and [42,50)
    p2.ok("lk", "f", "w", 38, 4, "nb")  # the hole is free for a writer
    assert p2.err("lk", "f", "w", 37, 1, "nb") in ("EAGAIN", "EACCES")
    assert p2.err("lk", "f", "w", 42, 1, "nb") in ("EAGAIN", "EACCES")
    assert p3.ok("getlk", "f", "w", 42, 8) == {"ok": True, "type": "r", "start": 42, "len": 8, "pid": p1.pid}
    # upgrade inside an owner's own range: [0,10) write -> [0,5) read + [5,10) write
    p1.ok("lk", "f", "r", 0, 5, "nb")
    p3.ok("lk", "f", "r", 0, 5, "nb")
    assert p3.err("lk", "f", "r", 5, 1, "nb") in ("EAGAIN", "EACCES")
    p3.ok("lk", "f", "u", 0, 5, "nb")

    # a blocking F_SETLKW waits for the holder, granted when it unlocks
    p3.send("lk", "f", "w", 0, 1, "wait")
    p3.wait_blocked_in_fuse()
    # close of ANY fd of P1 drops all of P1's POSIX locks (here: a second, unrelated fd)
    p1.ok("open", "other", path, "r")
    p1.ok("close", "other")
    got = p3.answer(5)
    assert got["ok"], got
    assert p2.ok("getlk", "f", "w", 0, 50) == {"ok": True, "type": "w", "start": 0, "len": 1, "pid": p3.pid}
    p3.ok("close", "f")
    p2.ok("lk", "f", "w", 0, 10, "nb")  # P1's and P3's locks are gone
    assert cs3.einstein.get_lock(ref) == lock, "the lease stays while any local lock is held"

    # the last local lock gone -> the CS3 lock goes
    p2.ok("lk", "f", "u", 0, 0, "nb")  # len 0 = to EOF: everything of P2
    wait_for(lambda: cs3.einstein.get_lock(ref) is None, 10, "the CS3 lock to go with the last local lock")
    assert a.locks() == []


def test_flock_released_on_last_close_only(mounter, area, procs: Callable[[], LockProc], cs3) -> None:  # type: ignore[no-untyped-def]
    a = mounter.mount("einstein", *OPTS)
    path = area.on(a) / "flock.bin"
    path.write_bytes(b"abc")
    a.sync()
    ref = cs3.einstein.ref(f"{area.name}/flock.bin")
    holder, other = procs(), procs()
    holder.ok("open", "f", path, "r")
    holder.ok("flock", "f", "ex", "nb")
    holder.ok("dup", "f", "g")
    holder.ok("close", "f")  # the open file description lives on in "g"
    other.ok("open", "f", path, "r")
    assert other.err("flock", "f", "ex", "nb") in ("EWOULDBLOCK", "EAGAIN")
    assert cs3.einstein.get_lock(ref) is not None
    # the fcntl and flock worlds are separate on Linux: a POSIX lock by another process is still granted
    other.ok("lk", "f", "r", 0, 1, "nb")
    other.ok("lk", "f", "u", 0, 1, "nb")
    other.send("flock", "f", "ex", "wait")  # waits in the daemon for the holder
    other.wait_blocked_in_fuse()
    holder.ok("close", "g")  # last close: the flock goes, the waiter gets it
    got = other.answer(10)
    assert got["ok"], got
    lock = cs3.einstein.get_lock(ref)
    assert lock is not None and [x["lock_id"] for x in a.locks()] == [lock.lock_id]
    other.ok("close", "f")
    wait_for(lambda: cs3.einstein.get_lock(ref) is None, 10, "the CS3 lock to go after the last close")
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


def test_ofd_locks_belong_to_the_open_file(mounter, area, procs: Callable[[], LockProc], cs3) -> None:  # type: ignore[no-untyped-def]
    """F_OFD_SETLK: two open files of ONE process conflict; closing another fd of the process does not
    drop the lock (unlike POSIX locks); the last close of that open file does, and the lease goes."""
    a = mounter.mount("einstein", *OPTS)
    path = area.on(a) / "ofd.bin"
    path.write_bytes(bytes(64))
    a.sync()
    ref = cs3.einstein.ref(f"{area.name}/ofd.bin")
    p = procs()
    p.ok("open", "x", path, "rw")
    p.ok("open", "y", path, "rw")
    p.ok("ofd", "x", "w", 0, 10, "nb")
    assert p.err("ofd", "y", "w", 5, 10, "nb") in ("EAGAIN", "EACCES"), "OFD locks of two open files conflict"
    p.ok("ofd", "y", "w", 10, 10, "nb")  # disjoint: fine
    assert cs3.einstein.get_lock(ref) is not None
    p.ok("open", "z", path, "r")
    p.ok("close", "z")  # a POSIX lock of p would go here; OFD locks stay
    assert p.err("ofd", "y", "w", 0, 1, "nb") in ("EAGAIN", "EACCES")
    p.ok("dup", "x", "x2")
    p.ok("close", "x")  # the open file lives on in x2
    assert p.err("ofd", "y", "w", 0, 1, "nb") in ("EAGAIN", "EACCES")
    p.ok("close", "x2")  # last close of the open file: its OFD locks go
    # the kernel sends RELEASE after close(2) has returned: the lock goes shortly after, not at once
    wait_for(lambda: p.call("ofd", "y", "w", 0, 10, "nb")["ok"], 10, "the OFD lock to go at the last close")
    p.ok("close", "y")
    wait_for(lambda: cs3.einstein.get_lock(ref) is None, 10, "the lease to go with the last OFD lock")
