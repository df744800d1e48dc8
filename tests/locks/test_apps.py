"""Applications that lock through the mount: sqlite3 from two nodes on one database, HDF5/h5py.

sqlite takes fcntl locks at fixed offsets; meshfs turns the first of them into a whole-file CS3 lock,
which serialises the two nodes. For the database to stay whole, a node that gets the lock must see
every transaction the other node committed before it let go of the lock (its data uploaded first).
HDF5 ≥ 1.10 flocks the file on open (exclusive for writing, shared for reading).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from lockkit import errno_of, wait_for

pytestmark = [pytest.mark.reva, pytest.mark.fuse]

OPTS = ("lock_expiry=20s", "lock_refresh_interval=5s")
TXNS = 15  # per writer; every transaction is a lock/unlock cycle on the server

WRITER = r"""
import sqlite3, sys, time
path, who, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
con = sqlite3.connect(path, timeout=60, isolation_level=None)
done = 0
for i in range(n):
    con.execute("BEGIN IMMEDIATE")
    con.execute("INSERT INTO t(who, seq, at) VALUES (?, ?, ?)", (who, i, time.time()))
    con.execute("COMMIT")
    done += 1
    print(done, flush=True)
con.close()
"""


def rows(path: Path) -> tuple[dict[str, list[int]], str]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        check = con.execute("PRAGMA integrity_check").fetchone()[0]
        got: dict[str, list[int]] = {}
        for who, seq in con.execute("SELECT who, seq FROM t ORDER BY who, seq"):
            got.setdefault(who, []).append(seq)
        return got, check
    finally:
        con.close()


def test_sqlite_two_nodes_concurrent_writers(mounter, area) -> None:  # type: ignore[no-untyped-def]
    a = mounter.mount("einstein", *OPTS)
    b = mounter.mount("einstein", *OPTS)
    db_a = area.on(a) / "shared.db"
    con = sqlite3.connect(db_a)
    con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, who TEXT NOT NULL, seq INTEGER NOT NULL, at REAL)")
    con.commit()
    con.close()
    a.sync()
    db_b = area.on(b) / "shared.db"
    wait_for(
        lambda: db_b.exists() and db_b.stat().st_size == db_a.stat().st_size, 15, "B to see the database"
    )

    writers = {
        who: subprocess.Popen(
            [sys.executable, "-c", WRITER, os.fspath(db), who, str(TXNS)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for who, db in (("A", db_a), ("B", db_b))
    }
    results: dict[str, tuple[int, str, str]] = {}
    try:
        for who, p in writers.items():
            out, err = p.communicate(timeout=150)
            results[who] = (p.returncode, out, err)
    finally:
        for p in writers.values():
            if p.poll() is None:
                p.kill()
                p.wait(10)
    committed = {who: len(out.split()) for who, (_, out, _) in results.items()}
    failures = {who: err.strip().splitlines()[-1:] for who, (rc, _, err) in results.items() if rc != 0}
    # every committed transaction must be in the database, as both nodes and the server see it
    a.sync()
    b.sync()
    for node_db in (db_a, db_b):
        got, check = rows(node_db)
        assert check == "ok", f"integrity_check on {node_db}: {check}"
        for who, n in committed.items():
            assert got.get(who, []) == list(range(n)), (
                f"{node_db}: rows of writer {who} {got.get(who)} != its {n} committed transactions"
            )
    c = mounter.mount("einstein", *OPTS)  # a fresh node: what the server stores
    got, check = rows(area.on(c) / "shared.db")
    assert check == "ok", check
    assert {w: len(s) for w, s in got.items() if s} == {w: n for w, n in committed.items() if n}, failures
    assert not failures, f"writers failed: {failures} (committed {committed})"
    assert committed == {"A": TXNS, "B": TXNS}


def test_sqlite_lock_handover_shows_committed_data(mounter, area) -> None:  # type: ignore[no-untyped-def]
    """The core of the sqlite case without concurrency: A commits and lets go; B, locking next, must
    read A's commit (A uploaded its data before it released the CS3 lock)."""
    a = mounter.mount("einstein", *OPTS)
    b = mounter.mount("einstein", *OPTS)
    db_a, db_b = area.on(a) / "handover.db", area.on(b) / "handover.db"
    con = sqlite3.connect(db_a)
    con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, who TEXT, seq INTEGER, at REAL)")
    con.commit()
    con.close()
    a.sync()
    wait_for(lambda: db_b.exists(), 15, "B to see the database")
    con_a = sqlite3.connect(db_a, timeout=30, isolation_level=None)
    con_b = sqlite3.connect(db_b, timeout=30, isolation_level=None)
    try:
        for i in range(3):
            con_a.execute("BEGIN IMMEDIATE")
            con_a.execute("INSERT INTO t(who, seq, at) VALUES ('A', ?, ?)", (i, time.time()))
            con_a.execute("COMMIT")
            seen = con_b.execute("SELECT seq FROM t WHERE who = 'A' ORDER BY seq").fetchall()
            assert [s for (s,) in seen] == list(range(i + 1)), f"B after A's commit {i}: {seen}"
            con_b.execute("BEGIN IMMEDIATE")
            con_b.execute("INSERT INTO t(who, seq, at) VALUES ('B', ?, ?)", (i, time.time()))
            con_b.execute("COMMIT")
            seen = con_a.execute("SELECT seq FROM t WHERE who = 'B' ORDER BY seq").fetchall()
            assert [s for (s,) in seen] == list(range(i + 1)), f"A after B's commit {i}: {seen}"
    finally:
        con_a.close()
        con_b.close()
    got, check = rows(db_a)
    assert check == "ok" and got == {"A": [0, 1, 2], "B": [0, 1, 2]}, (check, got)


def test_sqlite_connect_while_the_other_node_is_in_a_transaction(mounter, area) -> None:  # type: ignore[no-untyped-def]
    """sqlite opens the database read-write whenever it connects, without a lock: a connect on B during
    A's transaction must give a writable connection whose write waits (busy timeout) for A's commit."""
    a = mounter.mount("einstein", *OPTS)
    b = mounter.mount("einstein", *OPTS)
    db_a, db_b = area.on(a) / "busy.db", area.on(b) / "busy.db"
    con = sqlite3.connect(db_a)
    con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, who TEXT, seq INTEGER, at REAL)")
    con.commit()
    con.close()
    a.sync()
    wait_for(lambda: db_b.exists(), 15, "B to see the database")
    con_a = sqlite3.connect(db_a, timeout=30, isolation_level=None, check_same_thread=False)
    con_a.execute("BEGIN IMMEDIATE")  # A holds its lock (and the CS3 lease) from here to COMMIT
    con_a.execute("INSERT INTO t(who, seq, at) VALUES ('A', 0, 0)")
    # A commits a little later, while B is already connected and waiting in its busy handler
    timer = threading.Timer(1.5, lambda: con_a.execute("COMMIT"))
    con_b = sqlite3.connect(db_b, timeout=30, isolation_level=None)
    try:
        timer.start()
        con_b.execute("INSERT INTO t(who, seq, at) VALUES ('B', 0, 0)")
    finally:
        timer.join(30)
        con_b.close()
        con_a.close()
    got, check = rows(db_a)
    assert check == "ok" and got == {"A": [0], "B": [0]}, (check, got)


def test_hdf5_file_open_for_writing_on_a_refuses_on_b(mounter, area) -> None:  # type: ignore[no-untyped-def]
    h5py = pytest.importorskip("h5py", reason="h5py is not installed in this venv (pip install h5py)")
    a = mounter.mount("einstein", *OPTS)
    b = mounter.mount("einstein", *OPTS)
    pa, pb = area.on(a) / "data.h5", area.on(b) / "data.h5"
    with h5py.File(pa, "w") as f:
        f["x"] = list(range(10))
    a.sync()
    wait_for(lambda: pb.exists(), 15, "B to see the HDF5 file")
    writer = h5py.File(pa, "r+")  # HDF5 flocks it exclusively while open
    try:
        with pytest.raises(OSError, match=r"(?i)lock"):
            h5py.File(pb, "r")
        with pytest.raises(OSError):
            h5py.File(pb, "r+")
        # between meshfs nodes locks are advisory (README, Semantics, Locks): the lock, not open(),
        # is what stops B
        fd = os.open(pb, os.O_RDONLY)
        try:
            got = errno_of(lambda: fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB))
            assert got in ("EWOULDBLOCK", "EAGAIN")
        finally:
            os.close(fd)
        writer["y"] = [1, 2, 3]
    finally:
        writer.close()
    a.sync()

    # A let go: B opens it (for reading, then for writing) and sees A's dataset
    def readable() -> bool:
        try:
            with h5py.File(pb, "r") as f:
                return list(f["y"][()]) == [1, 2, 3]
        except (OSError, KeyError):
            return False

    wait_for(readable, 20, "B to open the HDF5 file after A closed it and see A's data")
    with h5py.File(pb, "r+") as f:
        f["z"] = [4]
