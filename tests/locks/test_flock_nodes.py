"""flock(2) between two mounts of the same user (two nodes) through CS3 locks, on the real dev Reva.

Covers: EWOULDBLOCK on node B while A holds LOCK_EX, the lock as other CS3 clients see it (GetLock,
app_name "meshfs", the cs3api4lab entry, user.meshfs.lock on both nodes, `meshfs status`), overwrite
protection on B, a blocking flock on B that returns right after A unlocks, SIGINT on a waiting flock,
and shared locks (local LOCK_SH pairs; across nodes the whole-file CS3 lock makes LOCK_SH exclusive).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest
from lockkit import LockProc, Mounter, Node, errno_of, run_meshfs, wait_for

from meshfs.cs3 import Ref

pytestmark = [pytest.mark.reva, pytest.mark.fuse]

OPTS = ("lock_expiry=20s", "lock_refresh_interval=5s")
PROMPT = 3.0  # "promptly": the blocking poll backs off to at most 1 s


def two_nodes(mounter: Mounter, area, *, content: bytes = b"hello\n") -> tuple[Node, Node, Path, Path, str]:  # type: ignore[no-untyped-def]
    """Nodes A and B (einstein twice), a file written on A and stored on the server; paths on A and B."""
    a = mounter.mount("einstein", *OPTS)
    b = mounter.mount("einstein", *OPTS)
    name = "data.txt"
    pa = area.on(a) / name
    pa.write_bytes(content)
    a.sync()
    pb = area.on(b) / name
    wait_for(lambda: pb.exists() and pb.read_bytes() == content, 15, "B to see A's file")
    return a, b, pa, pb, f"{area.name}/{name}"


def try_flock(path: Path, how: int) -> str | None:
    """errno name of a non-blocking flock on a fresh open of `path` (None: granted, then released)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return errno_of(lambda: fcntl.flock(fd, how | fcntl.LOCK_NB))
    finally:
        os.close(fd)


def test_flock_ex_conflicts_across_nodes_and_is_visible(mounter, area, procs, cs3) -> None:  # type: ignore[no-untyped-def]
    a, b, pa, pb, rel = two_nodes(mounter, area)
    holder: LockProc = procs()
    holder.ok("open", "f", pa, "r")
    t0 = time.time()
    holder.ok("flock", "f", "ex", "nb")

    # node B: EWOULDBLOCK for LOCK_EX and LOCK_SH, at once; fcntl locks conflict too (any range)
    assert try_flock(pb, fcntl.LOCK_EX) in ("EWOULDBLOCK", "EAGAIN")
    assert try_flock(pb, fcntl.LOCK_SH) in ("EWOULDBLOCK", "EAGAIN")
    other: LockProc = procs()
    other.ok("open", "f", pb, "r")
    assert other.err("lk", "f", "r", 1 << 30, 1, "nb") in ("EAGAIN", "EACCES")
    got = other.ok("getlk", "f", "w", 0, 0)
    assert got["type"] == "w" and got["pid"] == 0, f"F_GETLK on B must report A's lock with pid 0: {got}"
    other.ok("close", "f")

    # the CS3 lock as any other client sees it
    ref = cs3.einstein.ref(rel)
    lock = cs3.einstein.get_lock(ref)
    assert lock is not None, "flock on node A took no CS3 lock"
    assert lock.app_name == "meshfs"
    assert lock.user is not None and lock.user.opaque_id == cs3.einstein.user.id.opaque_id
    assert lock.expiration is not None and t0 + 10 < lock.expiration < time.time() + 25, lock
    leases = a.locks()
    assert [x["lock_id"] for x in leases] == [lock.lock_id], leases
    assert b.locks() == []

    # the cs3api4lab entry published while held: einstein's identity, fresh
    meta = cs3.einstein.stat(ref).metadata
    assert "cs3apis4lab_lock" in meta, sorted(meta)
    entry = json.loads(urllib.parse.unquote(meta["cs3apis4lab_lock"]))
    assert list(entry) == ["username", "idp", "opaque_id", "updated", "created"]
    assert entry["username"] == "einstein" and entry["opaque_id"] == cs3.einstein.user.id.opaque_id
    assert abs(entry["updated"] - time.time()) < 30

    # user.meshfs.lock on both nodes: holder, app, expiry
    for node_path, mine in ((pa, True), (pb, False)):
        text = subprocess.run(
            ["getfattr", "--only-values", "-n", "user.meshfs.lock", os.fspath(node_path)],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert text.returncode == 0, text.stderr
        m = re.fullmatch(r"user=(\S+) app=(\S+) expires=(\S+)( \(this mount\))?", text.stdout.strip())
        assert m, text.stdout
        assert m.group(1) == "einstein" and m.group(2) == "meshfs", text.stdout
        exp = time.mktime(time.strptime(m.group(3), "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
        assert abs(exp - lock.expiration) < 30, (text.stdout, lock.expiration)
        assert bool(m.group(4)) == mine, text.stdout

    # overwrite protection on B: open for write / truncate fail with EACCES, reading works
    assert errno_of(lambda: os.close(os.open(pb, os.O_WRONLY | os.O_TRUNC))) == "EACCES"  # overwrite
    assert errno_of(lambda: os.close(os.open(pb, os.O_RDWR | os.O_TRUNC))) == "EACCES"
    assert errno_of(lambda: os.truncate(pb, 0)) == "EACCES"
    assert pb.read_bytes() == b"hello\n"

    # A's own writes while it holds the lock reach the server (uploads carry the lock id)
    writer = os.open(pa, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(writer, b"written under the lock\n")
    finally:
        os.close(writer)
    a.sync()
    assert cs3.einstein.get_lock(ref) is not None, "closing another fd released the flock"
    wait_for(lambda: pb.read_bytes() == b"written under the lock\n", 15, "B to read A's locked write")

    # unlock: the CS3 lock and the cs3api4lab entry go
    holder.ok("flock", "f", "un", "nb")
    wait_for(lambda: cs3.einstein.get_lock(ref) is None, 10, "the CS3 lock to go after LOCK_UN")
    assert "cs3apis4lab_lock" not in cs3.einstein.stat(ref).metadata
    assert a.locks() == []
    assert try_flock(pb, fcntl.LOCK_EX) is None


def test_blocking_flock_on_b_returns_promptly_after_a_unlocks(mounter, area, procs, cs3) -> None:  # type: ignore[no-untyped-def]
    _a, b, pa, pb, rel = two_nodes(mounter, area)
    ha: LockProc = procs()
    hb: LockProc = procs()
    ha.ok("open", "f", pa, "r")
    ha.ok("flock", "f", "ex", "nb")
    hb.ok("open", "f", pb, "r")
    hb.send("flock", "f", "ex", "wait")
    hb.wait_blocked_in_fuse()
    ha.ok("flock", "f", "un", "nb")
    t0 = time.monotonic()
    got = hb.answer(PROMPT + 10)
    took = time.monotonic() - t0
    assert got["ok"], got
    assert took < PROMPT, f"the waiting flock on B returned {took:.2f} s after A unlocked"
    # B now holds it: A is refused
    assert try_flock(pa, fcntl.LOCK_EX) in ("EWOULDBLOCK", "EAGAIN")
    lock = cs3.einstein.get_lock(cs3.einstein.ref(rel))
    assert lock is not None and [x["lock_id"] for x in b.locks()] == [lock.lock_id]
    hb.ok("close", "f")  # last close releases the flock
    wait_for(lambda: cs3.einstein.get_lock(cs3.einstein.ref(rel)) is None, 10, "release on last close")


@pytest.mark.parametrize("kind", ["flock", "fcntl"])
def test_sigint_ends_a_waiting_lock_and_leaves_no_lock(mounter, area, procs, cs3, kind) -> None:  # type: ignore[no-untyped-def]
    _a, b, pa, pb, rel = two_nodes(mounter, area)
    ha: LockProc = procs()
    hb: LockProc = procs()
    ha.ok("open", "f", pa, "r")
    ha.ok("flock", "f", "ex", "nb")
    hb.ok("open", "f", pb, "r")
    if kind == "flock":
        hb.send("flock", "f", "ex", "wait")
    else:
        hb.send("lk", "f", "r", 0, 0, "wait")  # F_SETLKW (a read lock: the fd is read-only)
    hb.wait_blocked_in_fuse()
    t0 = time.monotonic()
    hb.proc.send_signal(2)  # SIGINT: its handler returns, so the call ends with EINTR
    got = hb.answer(10)
    took = time.monotonic() - t0
    assert got == {"ok": False, "errno": "EINTR"}, got
    assert took < 2.0, f"SIGINT ended the waiting flock only after {took:.2f} s"
    # the abandoned wait must not be granted later: after A unlocks, nobody holds the file
    ha.ok("flock", "f", "un", "nb")
    ref = cs3.einstein.ref(rel)
    wait_for(lambda: cs3.einstein.get_lock(ref) is None, 10, "A's lock to go")
    deadline = time.monotonic() + 3.0  # B's poll backs off to 1 s: a stale waiter would strike by then
    while time.monotonic() < deadline:
        assert cs3.einstein.get_lock(ref) is None, "an interrupted flock on B took the CS3 lock after all"
        assert b.locks() == [], b.locks()
        time.sleep(0.2)
    assert try_flock(pa, fcntl.LOCK_EX) is None
    # (close(2) does not wait for FUSE RELEASE: A's brief lock may still be on the server)
    wait_for(lambda: cs3.einstein.get_lock(ref) is None, 10, "A's probe lock to go")
    # B's process can still lock normally after the interruption
    hb.ok("flock", "f", "ex", "nb")
    hb.ok("flock", "f", "un", "nb")


def test_shared_locks_local_pair_and_across_nodes(mounter, area, procs, cs3) -> None:  # type: ignore[no-untyped-def]
    """Two LOCK_SH on one node coexist; a LOCK_EX there waits for both. CS3 has no shared locks, so a
    LOCK_SH on node B while A holds LOCK_SH conflicts (EWOULDBLOCK): documented behaviour, asserted."""
    a, _b, pa, pb, rel = two_nodes(mounter, area)
    s1: LockProc = procs()
    s2: LockProc = procs()
    s1.ok("open", "f", pa, "r")
    s2.ok("open", "f", pa, "r")
    s1.ok("flock", "f", "sh", "nb")
    s2.ok("flock", "f", "sh", "nb")
    assert len(a.locks()) == 1, "two local shared locks must share one CS3 lease"
    assert try_flock(pa, fcntl.LOCK_EX) in ("EWOULDBLOCK", "EAGAIN")
    assert try_flock(pb, fcntl.LOCK_SH) in ("EWOULDBLOCK", "EAGAIN"), "CS3 lock is whole-file exclusive"
    # one shared holder goes: the lease stays for the other
    s1.ok("flock", "f", "un", "nb")
    assert cs3.einstein.get_lock(cs3.einstein.ref(rel)) is not None
    assert try_flock(pa, fcntl.LOCK_EX) in ("EWOULDBLOCK", "EAGAIN")
    # the remaining holder upgrades to LOCK_EX (no other local holder): granted
    s2.ok("flock", "f", "ex", "nb")
    assert try_flock(pa, fcntl.LOCK_SH) in ("EWOULDBLOCK", "EAGAIN")
    # and downgrades again: a local LOCK_SH is granted, node B still conflicts
    s2.ok("flock", "f", "sh", "nb")
    assert try_flock(pa, fcntl.LOCK_SH) is None
    assert try_flock(pb, fcntl.LOCK_SH) in ("EWOULDBLOCK", "EAGAIN")
    s2.ok("close", "f")
    wait_for(
        lambda: cs3.einstein.get_lock(cs3.einstein.ref(rel)) is None, 10, "release after the last holder"
    )
    assert try_flock(pb, fcntl.LOCK_SH) is None


def test_close_then_reopen_for_write_on_the_same_node(mounter, area, cs3) -> None:  # type: ignore[no-untyped-def]
    """After close(2) the flock is gone for this node: reopening for write must not meet our own lock
    (the kernel sends RELEASE asynchronously, so the daemon may still be unlocking on the server)."""
    a = mounter.mount("einstein", *OPTS)
    p = area.on(a) / "again.txt"
    p.write_bytes(b"x")
    a.sync()
    refused = 0
    for _i in range(5):
        fd = os.open(p, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)
        got = errno_of(lambda: os.close(os.open(p, os.O_WRONLY)))
        assert got in (None, "EACCES"), got
        refused += got == "EACCES"
        wait_for(
            lambda: cs3.einstein.get_lock(cs3.einstein.ref(f"{area.name}/again.txt")) is None, 10, "unlock"
        )
    assert refused == 0, f"{refused} of 5 reopens for write were refused by our own lock being released"


@pytest.mark.parametrize("release", ["unlock", "close", "umount"])
def test_data_written_under_the_lock_is_visible_to_the_next_holder(mounter, area, procs, release) -> None:  # type: ignore[no-untyped-def]
    """A locks, writes (no fsync) and lets go (LOCK_UN, close, or `meshfs umount` of A with the file
    still open); B, taking the lock next, must read A's data: A's upload has to be on the server
    before A's CS3 lock is released."""
    a, _b, pa, pb, _rel = two_nodes(mounter, area, content=b"version 1\n")
    ha: LockProc = procs()
    hb: LockProc = procs()
    hb.ok("open", "f", pb, "r")
    ha.ok("open", "f", pa, "rw")
    ha.ok("flock", "f", "ex", "nb")
    assert ha.ok("write", "f", "version 2, written under the lock")["n"] == 33
    hb.send("flock", "f", "ex", "wait")
    hb.wait_blocked_in_fuse()
    if release == "unlock":
        ha.ok("flock", "f", "un", "nb")
    elif release == "close":
        ha.ok("close", "f")
    else:
        proc = run_meshfs("umount", os.fspath(a.mountpoint), "--timeout", "30", timeout=60)
        assert proc.returncode == 0, proc.stderr
    got = hb.answer(30)
    assert got["ok"], got
    data = hb.ok("read", "f")["data"]
    assert data == "version 2, written under the lock", f"B got the lock but read {data!r}"


def test_the_holder_may_modify_its_locked_file(mounter, area, procs, cs3) -> None:  # type: ignore[no-untyped-def]
    """While A holds the lock, A's own metadata writes, truncates and renames carry the lock id and work;
    B's are refused. The lock follows the renamed file and goes with the last unlock."""
    a, _b, pa, pb, rel = two_nodes(mounter, area)
    holder: LockProc = procs()
    holder.ok("open", "f", pa, "rw")
    holder.ok("flock", "f", "ex", "nb")
    rid = cs3.einstein.stat(cs3.einstein.ref(rel)).id
    os.setxattr(pa, "user.note", b"by the holder")
    assert errno_of(lambda: os.setxattr(pb, "user.note", b"by B")) == "EACCES"
    os.truncate(pa, 2)
    moved = pa.with_name("renamed.txt")
    os.rename(pa, moved)
    assert errno_of(lambda: os.rename(pb, pb.with_name("by-b.txt"))) in ("EACCES", "ENOENT")
    a.sync()
    res = cs3.einstein.stat(cs3.einstein.ref(f"{area.name}/renamed.txt"))
    assert res.id == rid and res.size == 2, res
    assert os.getxattr(moved, "user.note") == b"by the holder"
    lock = cs3.einstein.get_lock(Ref.to(rid))
    assert lock is not None and lock.app_name == "meshfs", "the lock must survive the holder's rename"
    holder.ok("close", "f")
    wait_for(lambda: cs3.einstein.get_lock(Ref.to(rid)) is None, 10, "the lock to go after the rename")


def test_a_write_without_the_lock_never_silently_loses_data(mounter, area, procs, cs3) -> None:  # type: ignore[no-untyped-def]
    """Between nodes a plain read-write open of a locked file is allowed (README). If B then writes
    without taking the lock while A holds it, A's version must win on the server and B's bytes must not
    vanish silently: B gets an error (write/fsync/close) or its data is kept in a conflict copy."""
    a, b, pa, pb, rel = two_nodes(mounter, area, content=b"original\n")
    ha: LockProc = procs()
    hb: LockProc = procs()
    ha.ok("open", "f", pa, "rw")
    ha.ok("flock", "f", "ex", "nb")
    hb.ok("open", "f", pb, "w")  # allowed: advisory locks between meshfs nodes
    errors = [x["errno"] for x in (hb.call("write", "f", "B-unlocked"), hb.call("fsync", "f")) if not x["ok"]]
    ha.ok("write", "f", "A-locked")
    ha.ok("fsync", "f")
    ha.ok("close", "f")  # A's data is on the server before its lock goes
    wait_for(lambda: cs3.einstein.get_lock(cs3.einstein.ref(rel)) is None, 15, "A's lock to go")
    close = hb.call("close", "f")
    if not close["ok"]:
        errors.append(close["errno"])
    b.sync()
    a.sync()
    server = (area.on(a) / "data.txt").read_bytes()
    copies = [p for p in area.on(a).iterdir() if "conflict" in p.name]
    kept = any(p.read_bytes().startswith(b"B-unlocked") for p in copies)
    assert server.startswith(b"A-locked"), f"B's unlocked write replaced A's locked version: {server!r}"
    assert errors or kept, f"B's write vanished without an error or a conflict copy (files: {copies})"
