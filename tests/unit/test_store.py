"""Unit tests of meshfs.cache.store: RangeSet, cache files, journal, eviction, backpressure, crash safety.

Real files in tmp dirs (and a real tiny tmpfs for ENOSPC); no server, no FUSE. The crash test runs
this very file as a child process (`python test_store.py crash-child ...`) and SIGKILLs it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from meshfs.cache.store import (
    CacheStore,
    DiskFull,
    NotPresent,
    PendingState,
    RangeSet,
    SpaceWaiter,
    StoreError,
    StoreLocked,
    WriteToCleanFile,
    checkpoint_loop,
)

MiB = 1 << 20


# --------------------------------------------------------------------------------------------------
# RangeSet


def _model_intervals(model: set[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for x in sorted(model):
        if out and out[-1][1] == x:
            out[-1] = (out[-1][0], x + 1)
        else:
            out.append((x, x + 1))
    return out


_op = st.tuples(st.sampled_from(["add", "sub"]), st.integers(0, 120), st.integers(-3, 40))


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(_op, max_size=30), probe=st.tuples(st.integers(0, 130), st.integers(-2, 60)))
def test_rangeset_matches_a_set_of_offsets(ops: list[tuple[str, int, int]], probe: tuple[int, int]) -> None:
    rs = RangeSet()
    model: set[int] = set()
    for kind, off, length in ops:
        span = set(range(off, off + max(length, 0)))
        if kind == "add":
            rs = rs.add(off, length)
            model |= span
        else:
            rs = rs.subtract(off, length)
            model -= span
        # invariant: sorted, merged (no overlap, no adjacency), non-empty intervals
        assert rs.intervals() == _model_intervals(model)
    assert rs.total == len(model)
    off, length = probe
    want = set(range(off, off + max(length, 0)))
    assert rs.contains(off, length) == want.issubset(model)
    missing = rs.missing(off, length)
    assert _model_intervals(want - model) == [(o, o + n) for o, n in missing]
    assert RangeSet.from_json(rs.to_json()) == rs
    assert RangeSet.of(rs.intervals()) == rs


@settings(max_examples=150, deadline=None)
@given(
    a=st.lists(st.tuples(st.integers(0, 100), st.integers(0, 30)), max_size=8),
    b=st.lists(st.tuples(st.integers(0, 100), st.integers(0, 30)), max_size=8),
    size=st.integers(0, 140),
)
def test_rangeset_union_difference_clip(
    a: list[tuple[int, int]], b: list[tuple[int, int]], size: int
) -> None:
    ra = RangeSet.of((o, o + n) for o, n in a)
    rb = RangeSet.of((o, o + n) for o, n in b)
    ma = {x for o, n in a for x in range(o, o + n)}
    mb = {x for o, n in b for x in range(o, o + n)}
    assert ra.union(rb).intervals() == _model_intervals(ma | mb)
    assert ra.difference(rb).intervals() == _model_intervals(ma - mb)
    assert ra.clip(size).intervals() == _model_intervals({x for x in ma if x < size})


def test_rangeset_edges() -> None:
    rs = RangeSet().add(10, 10).add(20, 5)  # adjacent intervals merge
    assert rs.intervals() == [(10, 25)]
    assert rs.contains(10, 15) and not rs.contains(9, 2) and rs.contains(50, 0)
    assert rs.subtract(12, 3).intervals() == [(10, 12), (15, 25)]
    assert rs.missing(0, 30) == [(0, 10), (25, 5)]
    assert RangeSet.full(0) == RangeSet() and not RangeSet()
    with pytest.raises(ValueError):
        RangeSet.from_json([[1]])


# --------------------------------------------------------------------------------------------------
# Cache files


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@contextlib.contextmanager
def opened(path: Path, limit: int = 64 * MiB) -> Iterator[CacheStore]:
    store = CacheStore(path, limit)
    try:
        yield store
    finally:
        store.close()


def remote(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def fill(f, content: bytes, off: int, length: int) -> None:  # type: ignore[no-untyped-def]
    """What cs3.transfer does: write fetched bytes at their offset into the fd, then record them."""
    epoch = f.epoch
    os.pwrite(f.fd, content[off : off + length], off)
    assert f.mark_present(off, length, epoch=epoch)


def test_read_missing_fill_and_invalidate(cache_dir: Path) -> None:
    content = remote(300_000)
    with opened(cache_dir) as store:
        f = store.open_file("rid-a", size=len(content), etag='"e1"', mtime=5.0)
        assert f.missing(0, 10**9) == [(0, 300_000)]  # clipped to the file size
        with pytest.raises(NotPresent):
            f.read(0, 10)
        fill(f, content, 1000, 5000)
        assert f.read(1000, 5000) == content[1000:6000]
        assert f.missing(0, 10_000) == [(0, 1000), (6000, 4000)]
        with pytest.raises(NotPresent):
            f.read(299_990, 100)
        fill(f, content, 299_000, 1000)
        assert f.read(299_990, 100) == content[299_990:]  # short at EOF
        assert f.read(400_000, 10) == b""
        # a fill that raced with an invalidation is ignored
        stale = f.epoch
        f.invalidate(size=10, etag='"e2"')
        assert not f.mark_present(0, 10, epoch=stale)
        assert f.missing(0, 100) == [(0, 10)] and f.etag == '"e2"' and f.size == 10
        assert store.stats().used == 0
        f.close()
    mode = cache_dir.stat().st_mode & 0o777
    assert mode == 0o700


def test_warm_cache_survives_reopen_and_changed_etag_drops_it(cache_dir: Path) -> None:
    content = remote(100_000)
    with opened(cache_dir) as store:
        with store.open_file("k", size=len(content), etag="e1") as f:
            fill(f, content, 0, 50_000)
        with store.open_file("k2", size=10, etag="x") as f:
            fill(f, b"0123456789", 0, 10)
    with opened(cache_dir) as store:
        with store.open_file("k", size=len(content), etag="e1") as f:
            assert f.missing(0, len(content)) == [(50_000, 50_000)]
            assert f.read(0, 50_000) == content[:50_000]
        with store.open_file("k2", size=12, etag="y") as f:  # remote changed
            assert f.missing(0, 12) == [(0, 12)]
        assert store.stats().used == 50_000


def _crashed_copy(src: Path, dst: Path, *, same_boot: bool) -> Path:
    """The cache dir as a crash would leave it: the files as they are now, no clean close."""
    shutil.copytree(src, dst)
    (dst / "CLEAN").unlink(missing_ok=True)
    if not same_boot:
        (dst / "LOCK").write_text("pid 1\nanother-boot\n")
    return dst


@pytest.mark.parametrize("same_boot", [True, False])
def test_unclean_stop_keeps_pending_and_trusts_ranges_only_in_the_same_boot(
    tmp_path: Path, same_boot: bool
) -> None:
    content = remote(100_000)
    store = CacheStore(tmp_path / "live", 64 * MiB)
    try:
        with store.open_file("clean", size=len(content), etag="e1") as f:
            fill(f, content, 0, 60_000)
        d = store.open_file("dirty", size=0, etag=None)
        store.mark_dirty("dirty", path="/home/new.txt", resource_id=None, base_etag=None)
        d.write(0, b"precious")
        store.checkpoint()
        crashed = _crashed_copy(tmp_path / "live", tmp_path / "crashed", same_boot=same_boot)
        d.close()
    finally:
        store.close()
    with opened(crashed) as again:
        assert [p.path for p in again.pending()] == ["/home/new.txt"]
        with again.open_file("dirty", size=0, etag=None) as f:
            assert f.read(0, 100) == b"precious"
        with again.open_file("clean", size=len(content), etag="e1") as f:
            if same_boot:
                assert f.read(0, 60_000) == content[:60_000]
            else:
                assert f.missing(0, len(content)) == [(0, len(content))]


def test_second_store_on_same_dir_refuses(cache_dir: Path) -> None:
    with opened(cache_dir), pytest.raises(StoreLocked, match="in use by another meshfs"):
        CacheStore(cache_dir, MiB)
    with opened(cache_dir):
        pass


def test_writes_need_journal_and_follow_posix(cache_dir: Path) -> None:
    with opened(cache_dir) as store:
        f = store.open_file("new:1", size=0, etag=None)
        with pytest.raises(WriteToCleanFile):
            f.write(0, b"x")
        rec = store.mark_dirty("new:1", path="/home/a.txt", resource_id=None, base_etag=None)
        assert rec.state is PendingState.DIRTY and rec.resource_id is None
        f.write(0, b"hello")
        assert f.write(100, b"") == 0 and f.size == 5  # a zero-length write does not extend
        f.write(10, b"world")  # leaves a hole that reads as zeros
        assert f.size == 15 and f.read(0, 100) == b"hello\0\0\0\0\0world"
        f.truncate(3)
        assert f.read(0, 100) == b"hel"
        f.truncate(6)
        assert f.read(0, 100) == b"hel\0\0\0"
        assert store.pending()[0].size == 6
        assert store.stats().dirty_bytes == 6
        f.close()


def test_partial_dirty_file_keeps_exact_ranges(cache_dir: Path) -> None:
    content = remote(1_000_000)
    with opened(cache_dir) as store:
        f = store.open_file("rid", size=len(content), etag="e1")
        fill(f, content, 0, 4096)
        store.mark_dirty("rid", path="/home/big.root", resource_id="rid", base_etag="e1")
        f.write(500_000, b"ours")
        assert f.missing(0, len(content)) == [(4096, 500_000 - 4096), (500_004, 1_000_000 - 500_004)]
        f.close()
    with opened(cache_dir) as store:
        (p,) = store.pending()
        assert p.path == "/home/big.root" and p.base_etag == "e1"
        f = store.open_file("rid", size=2, etag="e-remote-changed")  # dirty: local content kept
        assert f.size == len(content)
        assert f.missing(0, len(content)) == [(4096, 500_000 - 4096), (500_004, 1_000_000 - 500_004)]
        assert f.read(500_000, 4) == b"ours" and f.read(0, 4096) == content[:4096]
        # the write-back fills the rest, then uploads
        for off, length in f.missing(0, f.size):
            fill(f, content, off, length)
        assert f.covers(0, f.size)
        f.close()


def test_mark_clean_only_for_the_uploaded_generation(cache_dir: Path) -> None:
    with opened(cache_dir) as store:
        f = store.open_file("k", size=0, etag=None)
        store.mark_dirty("k", path="/home/k", resource_id=None, base_etag=None)
        f.write(0, b"v1")
        gen = store.get_pending("k").generation  # type: ignore[union-attr]
        f.write(0, b"v2")  # written while "uploading" v1
        assert not store.mark_clean("k", gen, etag="E1", resource_id="rid-k")
        p = store.get_pending("k")
        assert p is not None and p.base_etag == "E1" and p.resource_id == "rid-k"
        assert store.mark_clean("k", p.generation, etag="E2")
        assert store.pending() == [] and not f.dirty and f.etag == "E2"
        assert f.read(0, 2) == b"v2"
        with pytest.raises(StoreError):
            store.update_pending("k", state=PendingState.UPLOADING)
        f.close()
    with opened(cache_dir) as store:
        assert store.pending() == []
        with store.open_file("k", size=2, etag="E2") as f:
            assert f.read(0, 2) == b"v2"


def test_rename_forget_rekey_follow_pending(cache_dir: Path) -> None:
    with opened(cache_dir) as store:
        for key, path in [("a", "/home/d/x"), ("b", "/home/d/sub/y"), ("c", "/home/dd")]:
            with store.open_file(key, size=0, etag=None) as f:
                store.mark_dirty(key, path=path, resource_id=None, base_etag=None)
                f.write(0, key.encode())
        moved = store.rename_path("/home/d", "/home/e")
        assert sorted(p.path for p in moved) == ["/home/e/sub/y", "/home/e/x"]
        store.update_pending("c", lock_id="L1", state=PendingState.CONFLICT, upload_token="tus://1")
        store.forget("b")
        store.rekey("a", "rid-a")
    with opened(cache_dir) as store:
        by_key = {p.key: p for p in store.pending()}
        assert set(by_key) == {"rid-a", "c"}
        assert by_key["rid-a"].path == "/home/e/x"
        c = by_key["c"]
        assert (c.lock_id, c.state, c.upload_token) == ("L1", PendingState.CONFLICT, "tus://1")
        with store.open_file("rid-a", size=0, etag=None) as f:
            assert f.read(0, 10) == b"a"
        assert store.lookup("b") is None


def test_forget_keeps_open_handle_readable(cache_dir: Path) -> None:
    with opened(cache_dir) as store:
        f = store.open_file("k", size=0, etag=None)
        store.mark_dirty("k", path="/home/k", resource_id=None, base_etag=None)
        f.write(0, b"still here")
        store.forget("k")
        assert f.read(0, 100) == b"still here"
        f.write(10, b"!")  # unlinked but open: still writable, never journaled again
        assert f.read(0, 100) == b"still here!"
        assert store.pending() == [] and store.lookup("k") is None
        f.close()
        assert list((cache_dir / "data").iterdir()) == []
        assert list((cache_dir / "meta").iterdir()) == []


# --------------------------------------------------------------------------------------------------
# Eviction and backpressure


def test_eviction_is_lru_and_never_touches_dirty(cache_dir: Path) -> None:
    with opened(cache_dir, limit=3 * MiB) as store:
        data = remote(MiB)
        for key in ("old", "mid", "new"):
            with store.open_file(key, size=MiB, etag="e") as f:
                fill(f, data, 0, MiB)
        with store.open_file("old", size=MiB, etag="e") as f:  # touch: now most recent
            f.read(0, 1)
        assert store.ensure_space(MiB)
        assert store.lookup("mid") is None and store.lookup("old") is not None
        # dirty data fills the cache: clean data goes, dirty stays, writers must wait
        d = store.open_file("dirty", size=0, etag=None)
        store.mark_dirty("dirty", path="/home/d", resource_id=None, base_etag=None)
        d.write(0, remote(3 * MiB))
        assert not store.ensure_space(MiB)
        assert store.lookup("old") is None and store.lookup("new") is None
        assert store.lookup("dirty") is not None and store.stats().used == 3 * MiB
        assert d.read(0, 3 * MiB) == remote(3 * MiB)
        d.close()


def test_eviction_of_an_open_file_keeps_the_part_being_read(cache_dir: Path) -> None:
    size = 64 * MiB
    with opened(cache_dir, limit=48 * MiB) as store:
        f = store.open_file("big", size=size, etag="e")
        chunk = b"\1" * MiB
        for off in range(0, 40 * MiB, MiB):
            os.pwrite(f.fd, chunk, off)
            f.mark_present(off, MiB)
            f.read(off, 1)  # a sequential reader at `off`
        assert store.ensure_space(16 * MiB)
        # the oldest (lowest) ranges went, the region around the last read stayed
        assert f.covers(39 * MiB, MiB) and f.covers(24 * MiB, 16 * MiB)
        assert not f.covers(0, MiB)
        with pytest.raises(NotPresent):
            f.read(0, 10)
        assert store.stats().used <= 32 * MiB
        f.close()


async def test_space_waiter_wakes_when_an_upload_frees_space(cache_dir: Path) -> None:
    with opened(cache_dir, limit=2 * MiB) as store:
        f = store.open_file("d", size=0, etag=None)
        store.mark_dirty("d", path="/home/d", resource_id=None, base_etag=None)
        f.write(0, remote(2 * MiB))
        waiter = SpaceWaiter(store)
        done = trio.Event()

        async def writer() -> None:
            await waiter.reserve(MiB, timeout=60)
            done.set()

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer)
                await trio.testing.wait_all_tasks_blocked()
                assert not done.is_set()
                gen = store.get_pending("d").generation  # type: ignore[union-attr]
                await trio.to_thread.run_sync(lambda: store.mark_clean("d", gen, etag="E"))
                await done.wait()
        waiter.close()
        f.close()


async def test_space_waiter_times_out_with_enospc(cache_dir: Path) -> None:
    with opened(cache_dir, limit=MiB) as store:
        f = store.open_file("d", size=0, etag=None)
        store.mark_dirty("d", path="/home/d", resource_id=None, base_etag=None)
        f.write(0, remote(MiB))
        waiter = SpaceWaiter(store)
        start = trio.current_time()
        with trio.fail_after(30), pytest.raises(DiskFull) as info:
            await waiter.reserve(1, timeout=0.2)
        assert info.value.errno == errno.ENOSPC
        assert trio.current_time() - start >= 0.2
        with pytest.raises(DiskFull, match="can never fit"):
            await waiter.reserve(2 * MiB, timeout=1000)
        waiter.close()
        f.close()


# --------------------------------------------------------------------------------------------------
# Disk full (a real tiny tmpfs)


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("SKIPPED LOUDLY: mounting a tmpfs for the ENOSPC test needs root")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if res.returncode != 0:
        pytest.skip(f"SKIPPED LOUDLY: cannot mount a tmpfs: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        r = subprocess.run(["umount", str(mnt)], capture_output=True, timeout=30)
        if r.returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def test_disk_full_surfaces_and_keeps_earlier_data(tiny_tmpfs: Path) -> None:
    cache = tiny_tmpfs / "cache"
    first = remote(200_000, seed=7)
    with opened(cache, limit=1 << 40) as store:
        f = store.open_file("k", size=0, etag=None)
        store.mark_dirty("k", path="/home/out.root", resource_id=None, base_etag=None)
        f.write(0, first)
        with pytest.raises(DiskFull) as info:
            f.write(len(first), b"\2" * (2 * MiB))
        assert info.value.errno == errno.ENOSPC and "no space left" in str(info.value)
        assert f.size == len(first) and os.fstat(f.fd).st_size == len(first)
        assert f.read(0, len(first)) == first
        # the disk is still full: a new dirty file fails cleanly, nothing half-recorded
        filler = tiny_tmpfs / "filler"
        with contextlib.suppress(OSError), open(filler, "wb") as out:
            out.write(b"\3" * (2 * MiB))
        g = store.open_file("k2", size=0, etag=None)
        with pytest.raises(DiskFull):
            store.mark_dirty("k2", path="/home/other", resource_id=None, base_etag=None)
        assert [p.key for p in store.pending()] == ["k"]
        g.close()
        filler.unlink()
        f.close()
    with opened(cache, limit=1 << 40) as store:
        assert [p.path for p in store.pending()] == ["/home/out.root"]
        with store.open_file("k", size=0, etag=None) as f:
            assert f.read(0, 10**6) == first


def test_disk_full_below_the_limit_evicts_clean_data_and_retries(tiny_tmpfs: Path) -> None:
    cache = tiny_tmpfs / "cache"
    with opened(cache, limit=1 << 40) as store:  # the limit is not what stops us: the disk is
        old = remote(700_000, seed=3)
        with store.open_file("clean-old", size=len(old), etag="e") as f:
            fill(f, old, 0, len(old))
        w = store.open_file("w", size=0, etag=None)
        store.mark_dirty("w", path="/home/w", resource_id=None, base_etag=None)
        data = remote(500_000, seed=4)
        w.write(0, data)  # does not fit next to the clean file: it is evicted, the write retried
        assert store.lookup("clean-old") is None
        assert w.read(0, len(data)) == data
        w.close()


# --------------------------------------------------------------------------------------------------
# Crash safety: a child process works on a store and is SIGKILLed at random points


@dataclass
class _FileModel:
    key: str
    path: str
    remote: bytes
    size: int
    content: bytearray
    present: RangeSet
    dirty: bool = False
    etag: str | None = "e0"
    base_etag: str | None = None
    resource_id: str | None = None


@dataclass
class _Model:
    files: dict[str, _FileModel] = field(default_factory=dict)

    def snapshot(self) -> dict[str, tuple[object, ...]]:
        return {
            k: (
                f.path if f.dirty else None,
                f.dirty,
                f.size if f.dirty else None,
                bytes(f.content[: f.size]),
                f.present,
                f.base_etag if f.dirty else None,
                f.etag,
            )
            for k, f in self.files.items()
        }


def _ops(seed: int, nops: int) -> Iterator[tuple[object, ...]]:
    rng = random.Random(seed)
    for i in range(nops):
        key = f"f{rng.randrange(6)}"
        kind = rng.choice(
            ["fill", "fill", "write", "write", "write", "truncate", "clean", "rename", "forget"]
        )
        if kind == "fill":
            yield ("fill", key, rng.randrange(0, 300_000), rng.randrange(1, 60_000))
        elif kind == "write":
            yield ("write", key, rng.randrange(0, 320_000), rng.randbytes(rng.randrange(1, 40_000)))
        elif kind == "truncate":
            yield ("truncate", key, rng.randrange(0, 330_000))
        elif kind == "clean":
            yield ("clean", key, f"E{i}")
        elif kind == "forget":
            yield ("forget", key, None)
        else:
            yield ("rename", key, f"/home/r{i}")


def _apply(model: _Model, op: tuple[object, ...], store: CacheStore | None, handles: dict) -> None:  # type: ignore[type-arg]
    kind, key = op[0], op[1]
    assert isinstance(key, str)
    m = model.files.get(key)
    if m is None:
        idx = int(key[1:])
        rsize = 0 if idx % 3 == 0 else 250_000 + idx * 1000  # some new files, some remote ones
        rdata = remote(rsize, seed=idx)
        m = _FileModel(
            key,
            f"/home/{key}",
            rdata,
            rsize,
            bytearray(rdata),
            RangeSet(),
            etag=None if rsize == 0 else "e0",
            resource_id=None if rsize == 0 else f"rid-{key}",
        )
        model.files[key] = m
    f = handles.get(key)
    if store is not None and f is None:
        f = handles[key] = store.open_file(key, size=m.size, etag=m.etag)
    if kind == "fill":
        off, length = op[2], op[3]
        assert isinstance(off, int) and isinstance(length, int)
        # fetch only what is missing (never over local writes), clipped to the remote size; one
        # piece per op so that an op is one store call (a crash is before or after it)
        end = min(off + length, m.size, len(m.remote))
        for o, n in m.present.missing(off, max(0, end - off))[:1]:
            if store is not None:
                epoch = f.epoch
                os.pwrite(f.fd, m.remote[o : o + n], o)
                f.mark_present(o, n, epoch=epoch)
            m.present = m.present.add(o, n)
        return
    if kind in ("write", "truncate") and not m.dirty:
        # the first modification of a clean file only journals it (one store call per op)
        if store is not None:
            store.mark_dirty(key, path=m.path, resource_id=m.resource_id, base_etag=m.etag)
        m.dirty, m.base_etag = True, m.etag
        return
    if kind == "write":
        off, data = op[2], op[3]
        assert isinstance(off, int) and isinstance(data, bytes)
        if store is not None:
            f.write(off, data)
        end = off + len(data)
        if end > len(m.content):
            m.content.extend(b"\0" * (end - len(m.content)))
        if off > m.size:
            m.present = m.present.add(m.size, off - m.size)
            m.content[m.size : off] = b"\0" * (off - m.size)
        m.content[off:end] = data
        m.present = m.present.add(off, len(data))
        m.size = max(m.size, end)
    elif kind == "truncate":
        size = op[2]
        assert isinstance(size, int)
        if store is not None:
            f.truncate(size)
        if size < m.size:
            m.present = m.present.clip(size)
            del m.content[size:]
        else:
            m.content[m.size :] = b"\0" * (size - m.size)
            m.present = m.present.add(m.size, size - m.size)
        m.size = size
    elif kind == "clean":
        if not m.dirty or not m.present.contains(0, m.size):
            return  # only a fully present file can have been uploaded
        etag = op[2]
        assert isinstance(etag, str)
        if store is not None:
            gen = store.get_pending(key).generation  # type: ignore[union-attr]
            assert store.mark_clean(key, gen, etag=etag)
        m.dirty, m.etag, m.base_etag = False, etag, None
        m.remote = bytes(m.content[: m.size])
    elif kind == "rename":
        new = op[2]
        assert isinstance(new, str)
        if store is not None:
            store.rename_path(m.path, new)
        m.path = new
    elif kind == "forget":  # deleted locally: must never come back
        if store is not None:
            store.forget(key)
            handles.pop(key).close()
        del model.files[key]


def _crash_child(directory: str, seed: int, nops: int, ack: str, sync_journal: bool) -> None:
    store = CacheStore(directory, 1 << 40, sync_journal=sync_journal)
    handles: dict = {}  # type: ignore[type-arg]
    model = _Model()
    fd = os.open(ack, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    for i, op in enumerate(_ops(seed, nops)):
        _apply(model, op, store, handles)
        os.write(fd, f"{i}\n".encode())
    os.write(fd, b"done\n")
    time.sleep(60)  # wait to be killed (the parent always kills)


def _check_reopened(directory: Path, seed: int, acked: int) -> None:
    """The reopened store must equal the model after op `acked` or (op in flight) after acked+1.

    Bytes inside the range of an in-flight write may be old or new (a torn, unacknowledged write, as
    on any filesystem); everything else must match one of the two states exactly."""
    ops = list(_ops(seed, acked + 2))
    before = _Model()
    for op in ops[: acked + 1]:
        _apply(before, op, None, {})
    after = _Model()
    for op in ops[: acked + 2]:
        _apply(after, op, None, {})
    states = [before.snapshot(), after.snapshot()]
    flight = ops[acked + 1] if len(ops) > acked + 1 else None
    torn: tuple[str, int, int] | None = None
    if flight is not None and flight[0] == "write":
        key, off, data = flight[1], flight[2], flight[3]
        assert isinstance(key, str) and isinstance(off, int) and isinstance(data, bytes)
        torn = (key, off, off + len(data))

    def same(key: str, got: bytes, start: int, options: list[bytes]) -> bool:
        if any(got == o[start : start + len(got)] for o in options):
            return True
        if torn is None or torn[0] != key:
            return False
        lo, hi = torn[1], torn[2]
        for i, b in enumerate(got):
            pos = start + i
            allowed = {o[pos] for o in options if pos < len(o)}
            if lo <= pos < hi:
                allowed |= {0}
            if b not in allowed:
                return False
        return True

    with opened(directory, limit=1 << 40) as store:
        pending = {p.key: p for p in store.pending()}
        known = set(states[0]) | set(states[1])
        ghosts = {k for k in pending if k not in known} | {
            k for k in store._entries if k not in known and store._entries[k].present
        }
        assert not ghosts, f"seed {seed} acked {acked}: forgotten files came back: {ghosts}"
        for key in known:
            options = [s[key] for s in states if key in s]
            if key not in states[0] or key not in states[1]:
                # created or forgotten by the op in flight: may not exist at all
                options.append((None, False, None, b"", RangeSet(), None, None))
            contents = [bytes(o[3]) for o in options]  # type: ignore[arg-type]
            p = pending.get(key)
            m = after.files.get(key) or before.files[key]
            f = store.open_file(key, size=0 if m.dirty else m.size, etag=m.etag)
            try:
                got_ranges = f.present
                ok = False
                for path, dirty, size, content, present, base_etag, _etag in options:
                    if dirty != (p is not None):
                        continue
                    if dirty:
                        assert p is not None
                        if (p.path, p.base_etag) != (path, base_etag):
                            continue
                        assert isinstance(present, RangeSet) and isinstance(size, int)
                        if (f.size, got_ranges) != (size, present):
                            # a torn extending write to a fully cached file: the size may end
                            # anywhere inside the unacknowledged write, all of it present
                            tearable = torn is not None and torn[0] == key and size <= f.size <= torn[2]
                            full = present == RangeSet.full(size) and got_ranges == RangeSet.full(f.size)
                            if not (tearable and full):
                                continue
                    assert isinstance(content, bytes)
                    # every byte we claim to have must be right
                    if all(
                        same(key, os.pread(f.fd, e - s, s), s, [content, *contents]) for s, e in got_ranges
                    ):
                        ok = True
                        break
                brief = None if flight is None else (flight[0], flight[1], flight[2])
                assert ok, f"seed {seed} acked {acked} in flight {brief}: {key} matches neither state: {p}"
            finally:
                f.close()


@pytest.mark.parametrize(
    ("seed", "sync_journal"), [(1, False), (2, False), (3, False), (4, False), (5, True), (6, True)]
)
def test_journal_survives_sigkill_at_random_points(tmp_path: Path, seed: int, sync_journal: bool) -> None:
    rng = random.Random(seed * 7919)
    directory = tmp_path / "cache"
    ack = tmp_path / "ack"
    nops = 400
    target = rng.randrange(5, nops)
    child = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "crash-child",
            str(directory),
            str(seed),
            str(nops),
            str(ack),
            str(int(sync_journal)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while True:  # wait (bounded) until the child has acknowledged `target` operations
            lines = ack.read_text().split() if ack.exists() else []
            if len(lines) >= target or child.poll() is not None:
                break
            assert time.monotonic() < deadline, "crash child made no progress"
            time.sleep(0.001)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL, child.stderr.read() if child.stderr else ""
    lines = [x for x in ack.read_text().split() if x != "done"]
    acked = int(lines[-1]) if lines else -1
    _check_reopened(directory, seed, acked)


if __name__ == "__main__" and len(sys.argv) == 7 and sys.argv[1] == "crash-child":
    _crash_child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6] == "1")


def test_concurrent_threads_keep_the_accounting_consistent(cache_dir: Path) -> None:
    """Readers, fillers, writers, evictions and uploads from several threads at once: no deadlock, no
    wrong byte served, and the byte accounting matches the range maps afterwards."""
    import threading

    content = {f"c{i}": remote(2 * MiB, seed=100 + i) for i in range(4)}
    errors: list[BaseException] = []
    stop = time.monotonic() + 2.0

    with opened(cache_dir, limit=5 * MiB) as store:

        def reader(key: str, seed: int) -> None:
            rng = random.Random(seed)
            data = content[key]
            while time.monotonic() < stop:
                f = store.open_file(key, size=len(data), etag="e")
                try:
                    for _ in range(20):
                        off = rng.randrange(0, len(data) - 65536)
                        for moff, mlen in f.missing(off, 65536):
                            epoch = f.epoch
                            os.pwrite(f.fd, data[moff : moff + mlen], moff)
                            f.mark_present(moff, mlen, epoch=epoch)
                        try:
                            assert f.read(off, 65536) == data[off : off + 65536]
                        except NotPresent:
                            pass  # evicted between fill and read: the caller refetches
                        store.ensure_space(65536)
                finally:
                    f.close()

        def writer(key: str, seed: int) -> None:
            rng = random.Random(seed)
            while time.monotonic() < stop:
                with store.open_file(key, size=0, etag=None) as f:
                    store.mark_dirty(key, path=f"/home/{key}", resource_id=None, base_etag=None)
                    mine = rng.randbytes(rng.randrange(1, 300_000))
                    f.truncate(0)
                    f.write(0, mine)
                    gen = f.generation
                    assert f.read(0, len(mine)) == mine
                    store.mark_clean(key, gen, etag=f"E{rng.random()}")

        def guard(fn, *args):  # type: ignore[no-untyped-def]
            try:
                fn(*args)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=guard, args=(reader, f"c{i % 4}", i)) for i in range(6)]
        threads += [threading.Thread(target=guard, args=(writer, f"w{i}", 50 + i)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads), "a store thread hung (deadlock?)"
        assert not errors, errors
        with store._lock:
            assert store._used == sum(e.present.total for e in store._entries.values())
        assert store.stats().used <= 5 * MiB + 6 * 65536


async def test_checkpoint_loop_writes_clean_state_on_trios_clock(
    cache_dir: Path, autojump_clock: object
) -> None:
    content = remote(10_000)
    store = CacheStore(cache_dir, 64 * MiB)
    try:
        f = store.open_file("k", size=len(content), etag="e")  # stays open: nothing written yet
        fill(f, content, 0, 4096)
        meta = cache_dir / "meta"
        assert list(meta.iterdir()) == []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: checkpoint_loop(store, interval=5.0))
            await trio.sleep(5.5)
            nursery.cancel_scope.cancel()
        (record,) = list(meta.iterdir())
        assert b'"ranges":[[0,4096]]' in record.read_bytes()
        f.close()
    finally:
        store.close()


def test_try_write_is_write_for_the_event_loop_or_declines(cache_dir: Path) -> None:
    """try_write: the effect of `write` on a dirty, fully cached, idle file; None (use `write` in a
    worker thread) for a clean, partly cached or busy file, with nothing changed."""
    content = remote(100_000)
    with opened(cache_dir) as store:
        f = store.open_file("new:tw", size=0, etag=None)
        assert f.try_write(0, b"x") is None  # not dirty: no journal record yet
        store.mark_dirty("new:tw", path="/home/tw", resource_id=None, base_etag=None)
        gen = f._entry.generation
        assert f.try_write(0, b"hello") == 5
        assert f._entry.generation == gen + 1  # the write-back sees a new generation to upload
        assert f.try_write(10, memoryview(b"world")) == 5  # past the end: a hole of zeros
        assert f.size == 15 and f.read(0, 100) == b"hello\0\0\0\0\0world"
        assert f.missing(0, f.size) == []  # the whole [0, size) is present
        assert f.try_write(3, b"") == 0 and f.size == 15
        assert store.stats().dirty_bytes == 15
        with f._entry.mutex:  # busy (an upload's fsync, a truncate): declines instead of waiting
            assert f.try_write(0, b"zz") is None
        assert f.read(0, 2) == b"he"
        f.close()

        g = store.open_file("rid-part", size=len(content), etag="e1")
        fill(g, content, 0, 4096)
        store.mark_dirty("rid-part", path="/home/part", resource_id="rid-part", base_etag="e1")
        assert g.try_write(0, b"ours") is None  # partly cached: its range map is journaled per write
        assert g.write(0, b"ours") == 4 and g.read(0, 4) == b"ours"
        g.close()


def test_try_read_serves_page_cached_data_or_declines(cache_dir: Path) -> None:
    content = remote(200_000)
    with opened(cache_dir) as store:
        f = store.open_file("rid-tr", size=len(content), etag="e1")
        assert f.try_read(0, 10) is None  # not cached at all
        fill(f, content, 0, 100_000)
        got = f.try_read(1000, 5000)  # just written: in the page cache
        assert got is not None and bytes(got) == content[1000:6000]
        assert f.try_read(99_000, 2000) is None  # partly outside the cached range
        assert f.try_read(300_000, 10) == b""  # at/after EOF: empty, as `read`
        f.close()
