"""The CS3 lease behind local locks: crash, outages, loss, unmount — on the real dev Reva.

Covers: kill -9 of the holder's daemon (the lock lapses after its expiry, then node B takes it), a
short gateway outage (a pausable proxy between mount and gateway, stopped for less than the expiry:
the lock stays ours and writes work), a lost lease (our lock replaced or removed through the CS3 API,
or expired while the proxy was down: writes through the open fd fail with EIO, a reopen works), and
umount releasing every lock.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import pytest
from lockkit import Cs3, LockProc, Mounter, Node, PausableProxy, errno_of, run_meshfs, wait_for

from meshfs.cs3 import Ref

pytestmark = [pytest.mark.reva, pytest.mark.fuse]

OPTS = ("lock_expiry=20s", "lock_refresh_interval=5s")
FAST = ("lock_expiry=6s", "lock_refresh_interval=2s")


def flock_nb(path: Path) -> str | None:
    fd = os.open(path, os.O_RDONLY)
    try:
        return errno_of(lambda: fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB))
    finally:
        os.close(fd)


def make_file(node: Node, area, name: str, content: bytes = b"v1") -> Path:  # type: ignore[no-untyped-def]
    path: Path = area.on(node) / name
    path.write_bytes(content)
    node.sync()
    return path


def hold(proc: LockProc, path: Path) -> None:
    """open rw + flock LOCK_EX in the child process."""
    proc.ok("open", "f", path, "rw")
    proc.ok("flock", "f", "ex", "nb")


def write_errno(proc: LockProc, text: str, fd: str = "f") -> str | None:
    """errno of writing `text` through the child's fd `fd` and fsyncing it (None: both worked)."""
    a = proc.call("write", fd, text)
    if not a["ok"]:
        return str(a["errno"])
    a = proc.call("fsync", fd)
    return None if a["ok"] else str(a["errno"])


@pytest.mark.long
def test_kill9_of_the_holder_lock_lapses_after_expiry(mounter: Mounter, area, procs, cs3) -> None:  # type: ignore[no-untyped-def]
    a = mounter.mount("einstein", *FAST)
    b = mounter.mount("einstein", *OPTS)
    pa = make_file(a, area, "crash.txt")
    pb = area.on(b) / "crash.txt"
    wait_for(pb.exists, 15, "B to see the file")
    ref = cs3.einstein.ref(f"{area.name}/crash.txt")
    holder: LockProc = procs()
    hold(holder, pa)
    lock = cs3.einstein.get_lock(ref)
    assert lock is not None and lock.expiration is not None
    mounter.kill(a)
    killed = time.time()
    assert flock_nb(pb) in ("EWOULDBLOCK", "EAGAIN"), (
        "the crashed holder's lock must persist until it expires"
    )
    wait_for(lambda: flock_nb(pb) is None, 6 + 10, "B to get the lock after the dead holder's lock expired")
    took = time.time() - killed
    assert took <= 6 + 4, f"the dead holder's lock lapsed only {took:.1f} s after the crash (expiry 6 s)"
    # B really holds it now, visibly
    hb: LockProc = procs()
    hb.ok("open", "f", pb, "rw")
    hb.ok("flock", "f", "ex", "nb")
    now = cs3.einstein.get_lock(ref)
    assert (
        now is not None and now.lock_id != lock.lock_id and [x["lock_id"] for x in b.locks()] == [now.lock_id]
    )
    assert write_errno(hb, "B writes") is None
    hb.ok("close", "f")
    holder.proc.kill()  # its fd points into the dead mount


def test_lock_survives_a_short_gateway_outage(  # type: ignore[no-untyped-def]
    proxy: PausableProxy, mounter: Mounter, area, procs, cs3
) -> None:
    a = mounter.mount("einstein", "lock_expiry=10s", "lock_refresh_interval=2s", gateway=proxy.address)
    path = make_file(a, area, "outage.txt")
    ref = cs3.einstein.ref(f"{area.name}/outage.txt")
    holder: LockProc = procs()
    hold(holder, path)
    lock = cs3.einstein.get_lock(ref)
    assert lock is not None and lock.expiration is not None
    before = proxy.connections
    proxy.pause()
    try:
        # the outage itself (not a synchronisation): at least two refresh periods, well below the expiry
        time.sleep(5.0)
        assert cs3.einstein.get_lock(ref) is not None, "the lock expired during a 5 s outage (expiry 10 s)"
    finally:
        proxy.resume()
    resumed = time.time()
    # a refresh after the outage pushes the expiration beyond what it was before
    wait_for(
        lambda: (lk := cs3.einstein.get_lock(ref)) is not None and (lk.expiration or 0) > resumed + 5,
        10, "a successful refresh after the outage",
    )  # fmt: skip
    assert proxy.connections > before, "the mount never reconnected: the outage did not reach it"
    now = cs3.einstein.get_lock(ref)
    assert now is not None and now.lock_id == lock.lock_id, "the lock must still be ours (same lock id)"
    assert [(x["lock_id"], x["lost"]) for x in a.locks()] == [(lock.lock_id, False)]
    assert write_errno(holder, "written after the outage") is None
    holder.ok("close", "f")
    a.sync()
    assert path.read_bytes() == b"written after the outage"
    wait_for(lambda: cs3.einstein.get_lock(ref) is None, 10, "unlock after close")


def _lost_then_reopen(a: Node, path: Path, holder: LockProc, ref: Ref, cs3) -> None:  # type: ignore[no-untyped-def]
    """Common tail: the lease is reported lost, writes through the old fd fail with EIO, a reopen works."""
    wait_for(lambda: [x["lost"] for x in a.locks()] == [True], 15, "the mount to notice the lost lease")
    assert write_errno(holder, "must not be written") == "EIO"
    holder.ok("close", "f")
    wait_for(lambda: cs3.einstein.get_lock(ref) is None, 15, "the file to be free")
    holder.ok("open", "g", path, "rw")
    holder.ok("flock", "g", "ex", "nb")
    lock = cs3.einstein.get_lock(ref)
    assert lock is not None and lock.app_name == "meshfs"
    assert write_errno(holder, "after reopen", "g") is None
    holder.ok("close", "g")
    a.sync()
    data = path.read_bytes()
    assert data.startswith(b"after reopen") and b"must not" not in data, data


def test_lost_lease_replaced_through_cs3_gives_eio(mounter: Mounter, area, procs, cs3) -> None:  # type: ignore[no-untyped-def]
    a = mounter.mount("einstein", "lock_expiry=10s", "lock_refresh_interval=2s")
    path = make_file(a, area, "stolen.txt")
    ref = cs3.einstein.ref(f"{area.name}/stolen.txt")
    holder: LockProc = procs()
    hold(holder, path)
    assert write_errno(holder, "v2") is None
    ours = cs3.einstein.get_lock(ref)
    assert ours is not None
    e: Cs3 = cs3.einstein
    e.call(e.storage.refresh_lock, ref, "intruder", app_name="meshfs", expiration=time.time() + 60,
           existing_lock_id=ours.lock_id)  # fmt: skip
    try:
        wait_for(lambda: [x["lost"] for x in a.locks()] == [True], 15, "the mount to notice the lost lease")
        assert write_errno(holder, "must not be written") == "EIO"
        lk = e.get_lock(ref)
        assert lk is not None and lk.lock_id == "intruder", "meshfs must not take the lock back"
    finally:
        e.call(e.storage.unlock, ref, "intruder", app_name="meshfs")
    _lost_then_reopen(a, path, holder, ref, cs3)


def test_lost_lease_force_unlocked_through_cs3_gives_eio(mounter: Mounter, area, procs, cs3) -> None:  # type: ignore[no-untyped-def]
    """Someone unlocks our lock with our lock id: the file may have changed since; never carry on writing."""
    a = mounter.mount("einstein", "lock_expiry=10s", "lock_refresh_interval=2s")
    path = make_file(a, area, "unlocked.txt")
    ref = cs3.einstein.ref(f"{area.name}/unlocked.txt")
    holder: LockProc = procs()
    hold(holder, path)
    ours = cs3.einstein.get_lock(ref)
    assert ours is not None
    cs3.einstein.call(cs3.einstein.storage.unlock, ref, ours.lock_id)
    _lost_then_reopen(a, path, holder, ref, cs3)


@pytest.mark.long
def test_lease_expired_during_a_long_outage_gives_eio(  # type: ignore[no-untyped-def]
    proxy: PausableProxy, mounter: Mounter, area, procs, cs3
) -> None:
    a = mounter.mount("einstein", *FAST, gateway=proxy.address)
    path = make_file(a, area, "expired.txt")
    ref = cs3.einstein.ref(f"{area.name}/expired.txt")
    holder: LockProc = procs()
    hold(holder, path)
    assert write_errno(holder, "v2") is None
    proxy.pause()
    try:
        wait_for(lambda: cs3.einstein.get_lock(ref) is None, 6 + 10, "our lock to expire on the server")
        wait_for(lambda: [x["lost"] for x in a.locks()] == [True], 10, "the mount to declare the lease lost")
    finally:
        proxy.resume()
    _lost_then_reopen(a, path, holder, ref, cs3)


def test_umount_releases_every_lock(mounter: Mounter, area, procs, cs3) -> None:  # type: ignore[no-untyped-def]
    a = mounter.mount("einstein", *OPTS)
    p1 = make_file(a, area, "one.txt")
    p2 = make_file(a, area, "two.txt")
    refs = [cs3.einstein.ref(f"{area.name}/{n}") for n in ("one.txt", "two.txt")]
    h1, h2 = procs(), procs()
    h1.ok("open", "f", p1, "r")
    h1.ok("flock", "f", "ex", "nb")
    h2.ok("open", "f", p2, "rw")
    h2.ok("lk", "f", "w", 0, 0, "nb")
    assert all(cs3.einstein.get_lock(r) is not None for r in refs)
    assert len(a.locks()) == 2
    proc = run_meshfs("umount", os.fspath(a.mountpoint), "--timeout", "30", timeout=60)
    assert proc.returncode == 0, proc.stderr
    for r in refs:
        assert cs3.einstein.get_lock(r) is None, f"{r.path} still locked after umount"
        assert "cs3apis4lab_lock" not in cs3.einstein.stat(r).metadata
    h1.proc.kill()
    h2.proc.kill()
