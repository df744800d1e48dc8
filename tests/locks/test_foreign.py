"""Locks taken by other applications through the CS3 API stop einstein's mount, on the real dev Reva.

Covers: cs3api4lab's metadata lock (`cs3apis4lab_lock`, set by marie on einstein's file shared with
her): flock/fcntl refused, open-for-write EACCES, reading works, F_GETLK reports pid 0, xattr names
marie and cs3api4lab, an expired entry is no lock, a blocking flock is granted when the entry goes;
a real CS3 lock by marie (cs3api4lab's lock mode) and an undecodable lock of another app of einstein
himself (a web office) count as held elsewhere too.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from lockkit import Cs3, LockProc, Node, errno_of, wait_for

from meshfs.cs3 import Ref, Role

pytestmark = [pytest.mark.reva, pytest.mark.fuse]

OPTS = ("lock_expiry=20s", "lock_refresh_interval=5s")
KEY = "cs3apis4lab_lock"


def jupyter_entry(who: Cs3, updated: float) -> str:
    u = who.user
    payload = {"username": u.username, "idp": u.id.idp, "opaque_id": u.id.opaque_id, "updated": updated,
               "created": updated}  # fmt: skip
    return urllib.parse.quote(json.dumps(payload))


def xattr_lock(path: Path) -> str:
    p = subprocess.run(["getfattr", "--only-values", "-n", "user.meshfs.lock", os.fspath(path)],
                       capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    return p.stdout.strip() if p.returncode == 0 else f"<getfattr failed: {p.stderr.strip()}>"


def flock_nb(path: Path) -> str | None:
    fd = os.open(path, os.O_RDONLY)
    try:
        return errno_of(lambda: fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB))
    finally:
        os.close(fd)


@pytest.fixture
def shared_file(mounter, area, cs3) -> Iterator[tuple[Node, Path, Ref]]:  # type: ignore[no-untyped-def]
    """einstein's mount, a file on it (stored on the server), shared with marie as editor and accepted."""
    a = mounter.mount("einstein", *OPTS)
    path = area.on(a) / "notebook.ipynb"
    path.write_bytes(b'{"cells": []}\n')
    a.sync()
    rid = cs3.einstein.stat(cs3.einstein.ref(f"{area.name}/notebook.ipynb")).id
    share = cs3.einstein.call(cs3.einstein.shares.create_share, Ref.to(rid), cs3.marie.user.id, Role.EDITOR)
    try:
        cs3.marie.call(cs3.marie.shares.accept, share.id)
        yield a, path, Ref.to(rid)
    finally:
        # Reva refuses to change grants of a locked resource (LOCKED): let a probe lock lapse first
        wait_for(lambda: cs3.einstein.get_lock(Ref.to(rid)) is None, 15, "no lock before unsharing")
        cs3.einstein.call(cs3.einstein.shares.remove_share, share.id)


def test_cs3api4lab_metadata_lock_by_marie_stops_einstein(shared_file, procs, cs3) -> None:  # type: ignore[no-untyped-def]
    a, path, ref = shared_file
    marie: Cs3 = cs3.marie
    marie.call(marie.storage.set_metadata, ref, {KEY: jupyter_entry(marie, time.time())})

    assert flock_nb(path) in ("EWOULDBLOCK", "EAGAIN")
    p: LockProc = procs()
    p.ok("open", "f", path, "r")
    assert p.err("lk", "f", "r", 0, 0, "nb") in ("EAGAIN", "EACCES")
    got = p.ok("getlk", "f", "w", 0, 0)
    assert got["type"] == "w" and got["pid"] == 0, f"F_GETLK must report a remote holder (pid 0): {got}"
    assert errno_of(lambda: os.close(os.open(path, os.O_WRONLY))) == "EACCES"
    assert errno_of(lambda: os.close(os.open(path, os.O_RDWR))) == "EACCES"
    assert errno_of(lambda: os.truncate(path, 0)) == "EACCES"
    assert path.read_bytes() == b'{"cells": []}\n', "reading must still work"
    text = xattr_lock(path)
    assert text.startswith("user=marie app=cs3api4lab expires="), text
    assert a.locks() == [] and cs3.einstein.get_lock(ref) is None

    # a blocking flock waits and is granted promptly once marie's entry goes
    p.send("flock", "f", "ex", "wait")
    p.wait_blocked_in_fuse()
    marie.call(marie.storage.unset_metadata, ref, [KEY])
    t0 = time.monotonic()
    got = p.answer(15)
    assert got["ok"], got
    assert time.monotonic() - t0 < 3.0
    lock = cs3.einstein.get_lock(ref)
    assert lock is not None and lock.app_name == "meshfs"
    entry = json.loads(urllib.parse.unquote(cs3.einstein.stat(ref).metadata[KEY]))
    assert entry["username"] == "einstein", f"meshfs must publish its own cs3api4lab entry: {entry}"
    p.ok("close", "f")
    wait_for(lambda: cs3.einstein.get_lock(ref) is None, 10, "einstein's lock to go")


def test_expired_cs3api4lab_entry_is_no_lock(shared_file, cs3) -> None:  # type: ignore[no-untyped-def]
    a, path, ref = shared_file
    marie: Cs3 = cs3.marie
    marie.call(marie.storage.set_metadata, ref, {KEY: jupyter_entry(marie, time.time() - 200)})  # > 150 s old
    assert flock_nb(path) is None
    wait_for(lambda: cs3.einstein.get_lock(ref) is None, 10, "the probe lock to go")
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, b'{"cells": [1]}\n')
    finally:
        os.close(fd)
    a.sync()
    assert cs3.einstein.stat(ref).size == len(b'{"cells": [1]}\n')


def test_real_cs3_lock_by_marie_stops_einstein(shared_file, cs3) -> None:  # type: ignore[no-untyped-def]
    """cs3api4lab's lock mode: a real CS3 lock, lock_id "cs3apis4lab_lock", no app_name."""
    _a, path, ref = shared_file
    marie: Cs3 = cs3.marie
    marie.call(marie.storage.set_lock, ref, KEY, app_name="", expiration=time.time() + 150)
    try:
        assert flock_nb(path) in ("EWOULDBLOCK", "EAGAIN")
        assert errno_of(lambda: os.close(os.open(path, os.O_WRONLY))) == "EACCES"
        assert path.read_bytes() == b'{"cells": []}\n'
        text = xattr_lock(path)
        assert text.split(" ")[0] in ("user=marie", f"user={marie.user.id.opaque_id}"), text
        assert " expires=" in text and "(this mount)" not in text, text
    finally:
        marie.call(marie.storage.unlock, ref, KEY, app_name="")
    assert flock_nb(path) is None


def test_undecodable_lock_of_another_app_of_the_same_user(shared_file, cs3) -> None:  # type: ignore[no-untyped-def]
    """A web office holding einstein's file with its own lock id: einstein's mount must not write."""
    _a, path, ref = shared_file
    e: Cs3 = cs3.einstein
    e.call(e.storage.set_lock, ref, "wopi-opaque-token-1234", app_name="WOPI", expiration=time.time() + 60)
    try:
        assert flock_nb(path) in ("EWOULDBLOCK", "EAGAIN")
        assert errno_of(lambda: os.close(os.open(path, os.O_WRONLY))) == "EACCES"
        assert errno_of(lambda: path.unlink()) == "EACCES"
        assert errno_of(lambda: path.rename(path.with_name("moved.ipynb"))) == "EACCES"
        assert path.read_bytes() == b'{"cells": []}\n'
        assert xattr_lock(path).startswith("user=einstein app=WOPI expires="), xattr_lock(path)
    finally:
        e.call(e.storage.unlock, ref, "wopi-opaque-token-1234", app_name="WOPI")
    assert flock_nb(path) is None


def test_meshfs_locks_between_two_users(shared_file, mounter, procs, cs3) -> None:  # type: ignore[no-untyped-def]
    """einstein's mount and marie's mount (the file shared with her as editor): two users, two nodes."""
    _a, path, ref = shared_file
    m = mounter.mount("marie", *OPTS)
    swm = m.mountpoint / "shared-with-me"
    found = wait_for(lambda: [p for p in swm.iterdir() if p.name.startswith("notebook")], 30,
                     "the share in marie's shared-with-me/")  # fmt: skip
    assert len(found) == 1, found
    mpath = found[0]
    assert mpath.read_bytes() == b'{"cells": []}\n'
    hm: LockProc = procs()
    hm.ok("open", "f", mpath, "r")
    hm.ok("flock", "f", "ex", "nb")
    lock = cs3.einstein.get_lock(ref)
    assert lock is not None and lock.app_name == "meshfs"
    assert lock.user is not None and lock.user.opaque_id == cs3.marie.user.id.opaque_id
    assert flock_nb(path) in ("EWOULDBLOCK", "EAGAIN")
    assert errno_of(lambda: os.close(os.open(path, os.O_WRONLY | os.O_TRUNC))) == "EACCES"
    assert xattr_lock(path).split(" ")[:2] in (
        ["user=marie", "app=meshfs"],
        [f"user={cs3.marie.user.id.opaque_id}", "app=meshfs"],
    ), xattr_lock(path)
    hm.ok("close", "f")
    wait_for(lambda: cs3.einstein.get_lock(ref) is None, 10, "marie's lock to go")
    he: LockProc = procs()
    he.ok("open", "f", path, "r")
    he.ok("flock", "f", "ex", "nb")
    assert flock_nb(mpath) in ("EWOULDBLOCK", "EAGAIN")
    assert errno_of(lambda: os.close(os.open(mpath, os.O_WRONLY | os.O_TRUNC))) == "EACCES"
    assert mpath.read_bytes() == b'{"cells": []}\n'
    he.ok("close", "f")
