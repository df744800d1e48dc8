"""FUSE passthrough on a real meshfs mount of the dev Reva: files opened for writing that are new,
truncated or fully cached are written by the kernel straight into the cache file.

What must hold as without passthrough: the data reaches the server (also after kill -9 of the
daemon), sizes are right while the file is open, fsync is a barrier also for writes after it,
readers opened meanwhile see the data, an open without writes uploads nothing, a reader opened
first keeps the ordinary path, and no stale page of an earlier version is ever read.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rig import Mount, Mounter, WebDav, sha256, wait_for

MiB = 1 << 20

pytestmark = [
    pytest.mark.reva,
    pytest.mark.fuse,
    pytest.mark.skipif(os.geteuid() != 0, reason="FUSE passthrough needs the daemon as root (CAP_SYS_ADMIN)"),
]


@pytest.fixture
def mounter(reva: Any, tmp_path: Path) -> Iterator[Mounter]:
    m = Mounter(
        reva.gateway,
        {u.username: u.password for u in reva.users},
        tmp_path / "m",
        options=("drain_timeout=60s",),
        umount_timeout=60.0,
    )
    try:
        yield m
    finally:
        problems = m.close()
        if problems:
            print(f"\nmount cleanup had to force: {problems}")


@pytest.fixture
def node(mounter: Mounter) -> Mount:
    m: Mount = mounter.mount("einstein", "upload_delay=1s")
    pt = m.status()["fs"]["passthrough"]
    if not pt["on"]:
        pytest.skip(f"FUSE passthrough is not available here: {pt['why']}")
    return m


@pytest.fixture
def area(node: Mount) -> Iterator[str]:
    name = f"pt-{uuid.uuid4().hex[:10]}"
    (node.home / name).mkdir()
    yield name


def _opens(m: Mount) -> int:
    return int(m.status()["fs"]["passthrough"]["opens"])


@contextlib.contextmanager
def _closed_on_error(fd: int) -> Iterator[None]:
    try:
        yield
    except BaseException:
        os.close(fd)
        raise


def _kill_and_remount(mounter: Mounter, node: Mount, fd: int) -> Mount:
    """kill -9 `node`'s daemon while `fd` (on it) is open, then mount the same cache dir again and
    `meshfs sync`: what the journal held is on the server when this returns."""
    try:
        mounter.kill(node, detach=True)
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    again: Mount = mounter.mount("einstein", "upload_delay=1s", cache_dir=node.cache_dir)
    again.sync_ok()
    return again


def test_dd_goes_through_passthrough_and_reaches_the_server(
    node: Mount, area: str, webdav: WebDav, tmp_path: Path
) -> None:
    src = tmp_path / "src.bin"
    data = os.urandom(24 * MiB + 4321)
    src.write_bytes(data)
    before = _opens(node)
    target = node.home / area / "big.bin"
    with open(src, "rb") as f, open(target, "wb") as g:
        while chunk := f.read(MiB):
            g.write(chunk)
    assert _opens(node) == before + 1, "the write did not go through passthrough"
    assert target.stat().st_size == len(data)
    assert target.read_bytes() == data
    node.sync_ok()
    assert webdav.sha256(f"{area}/big.bin") == (sha256(data), len(data))
    assert node.status()["fs"]["passthrough"]["open_files"] == 0


def test_size_and_data_are_visible_while_the_writer_has_it_open(node: Mount, area: str) -> None:
    p = node.home / area / "growing.bin"
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, b"a" * (3 * MiB))
        assert os.fstat(fd).st_size == 3 * MiB
        assert os.stat(p).st_size == 3 * MiB
        with open(p, "rb") as reader:  # a reader opened meanwhile shares the passthrough file
            assert reader.read() == b"a" * (3 * MiB)
            os.write(fd, b"tail")
            assert reader.read() == b"tail"
        assert os.stat(p).st_size == 3 * MiB + 4
    finally:
        os.close(fd)
    assert p.stat().st_size == 3 * MiB + 4


def test_fsync_is_a_barrier_also_for_writes_after_it(node: Mount, area: str, webdav: WebDav) -> None:
    p = node.home / area / "journal.log"
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, b"first record\n")
        os.fsync(fd)
        assert webdav.get(f"{area}/journal.log") == b"first record\n"
        os.write(fd, b"second record\n")
        os.fsync(fd)
        assert webdav.get(f"{area}/journal.log") == b"first record\nsecond record\n"
        os.write(fd, b"third, no fsync\n")
    finally:
        os.close(fd)
    node.sync_ok()
    assert webdav.get(f"{area}/journal.log") == b"first record\nsecond record\nthird, no fsync\n"


def test_truncate_and_times_set_through_an_open_passthrough_file(
    node: Mount, area: str, webdav: WebDav
) -> None:
    p = node.home / area / "cut.txt"
    fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, b"0123456789")
        os.ftruncate(fd, 4)
        os.write(fd, b"XY")  # at offset 10: a hole from 4 to 10
        os.utime(fd, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    finally:
        os.close(fd)
    st = p.stat()
    assert (st.st_size, st.st_mtime_ns) == (12, 1_600_000_000_000_000_000)
    assert p.read_bytes() == b"0123" + bytes(6) + b"XY"
    node.sync_ok()
    assert webdav.get(f"{area}/cut.txt") == b"0123" + bytes(6) + b"XY"
    assert p.stat().st_mtime_ns == 1_600_000_000_000_000_000


def test_opens_for_writing_without_writes_upload_nothing(node: Mount, area: str) -> None:
    """A new file created and closed without writes (touch) is clean at once; an existing file
    opened read-write takes the ordinary path (passthrough only for files that start empty)."""
    p = node.home / area / "untouched.txt"
    p.write_bytes(b"stays as it is\n")
    node.sync_ok()
    assert p.read_bytes() == b"stays as it is\n"  # fully cached now
    up = int(node.status()["fs"]["bytes_up"])
    before = _opens(node)
    with open(p, "r+b") as f:
        assert f.read() == b"stays as it is\n"
    assert _opens(node) == before, "an existing file opened read-write went through passthrough"
    q = node.home / area / "new-and-empty"
    os.close(os.open(q, os.O_WRONLY | os.O_CREAT, 0o644))
    assert _opens(node) == before + 1
    wait_for(lambda: node.status()["fs"]["passthrough"]["open_files"] == 0, 10, "the release")
    assert os.getxattr(q, "user.meshfs.state") == b"clean"
    assert os.getxattr(p, "user.meshfs.state") == b"clean"
    node.sync_ok()
    assert int(node.status()["fs"]["bytes_up"]) == up


def test_a_reader_opened_first_keeps_the_ordinary_path(node: Mount, area: str, webdav: WebDav) -> None:
    p = node.home / area / "shared.txt"
    p.write_bytes(b"version one\n")
    node.sync_ok()
    before = _opens(node)
    with open(p, "rb") as reader:
        assert reader.read() == b"version one\n"
        with open(p, "wb") as writer:  # the kernel allows no mix: this open is an ordinary one
            writer.write(b"version two, longer\n")
        assert _opens(node) == before
    assert p.read_bytes() == b"version two, longer\n"
    node.sync_ok()
    assert webdav.get(f"{area}/shared.txt") == b"version two, longer\n"


def test_no_stale_page_after_a_passthrough_rewrite(node: Mount, area: str) -> None:
    """A file read through the page cache (ordinary open), then rewritten through passthrough with
    the same size: the next ordinary read must not serve the old pages."""
    p = node.home / area / "pages.bin"
    old, new = b"o" * 65536, b"n" * 65536
    p.write_bytes(old)
    node.sync_ok()
    fd = os.open(p, os.O_RDONLY)  # an ordinary open (read-only): fills the kernel's page cache
    try:
        assert os.read(fd, 65536) == old
    finally:
        os.close(fd)
    wait_for(lambda: node.status()["fs"]["passthrough"]["open_files"] == 0, 10, "the release")
    before = _opens(node)
    p.write_bytes(new)
    assert _opens(node) == before + 1
    wait_for(lambda: node.status()["fs"]["passthrough"]["open_files"] == 0, 10, "the release")
    assert p.read_bytes() == new


def test_kill_9_with_a_passthrough_file_open_loses_nothing(
    mounter: Mounter, node: Mount, area: str, webdav: WebDav
) -> None:
    data = os.urandom(16 * MiB)
    p = node.home / area / "crash.bin"
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with _closed_on_error(fd):
        os.write(fd, data)
    again = _kill_and_remount(mounter, node, fd)  # dies with the file open and nothing uploaded
    assert webdav.sha256(f"{area}/crash.bin") == (sha256(data), len(data))
    assert (again.home / area / "crash.bin").read_bytes() == data


def test_passthrough_false_keeps_every_write_on_the_ordinary_path(
    mounter: Mounter, webdav: WebDav, tmp_path: Path
) -> None:
    _writes_take_the_ordinary_path(mounter.mount("einstein", "passthrough=false"), webdav, "not negotiated")


def _writes_take_the_ordinary_path(m: Mount, webdav: WebDav, why: str) -> None:
    """`m` says passthrough is off (with `why` in the reason), and a new file written, read back and
    synced takes the ordinary path (no passthrough open) and reaches the server."""
    pt = m.status()["fs"]["passthrough"]
    assert pt["on"] is False and why in pt["why"], pt
    name = f"pt-off-{uuid.uuid4().hex[:8]}.bin"
    data = os.urandom(3 * MiB)
    (m.home / name).write_bytes(data)
    assert (m.home / name).read_bytes() == data
    m.sync_ok()
    assert webdav.sha256(name) == (sha256(data), len(data))
    assert m.status()["fs"]["passthrough"]["opens"] == 0
    webdav.delete(name)


@contextlib.contextmanager
def _overlayfs(root: Path) -> Iterator[Path]:
    for d in ("lower", "upper", "work", "merged"):
        (root / d).mkdir(parents=True)
    merged = root / "merged"
    opts = f"lowerdir={root / 'lower'},upperdir={root / 'upper'},workdir={root / 'work'}"
    proc = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, os.fspath(merged)],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    if proc.returncode != 0:
        pytest.skip(f"cannot mount an overlayfs here: {proc.stderr.strip()}")
    try:
        yield merged
    finally:
        subprocess.run(["umount", "-l", os.fspath(merged)], capture_output=True, timeout=30)


def test_a_cache_dir_on_a_stacked_filesystem_falls_back_with_a_reason(
    mounter: Mounter, webdav: WebDav, tmp_path: Path
) -> None:
    """The kernel refuses backing files on a stacked filesystem (ELOOP at depth 1): the mount says
    so in its status and every write takes the ordinary path — no open fails."""
    with _overlayfs(tmp_path / "ovl") as merged:
        m = mounter.mount("einstein", cache_dir=merged / "cache")
        try:
            _writes_take_the_ordinary_path(m, webdav, "refuses backing files")
        finally:
            assert mounter.unmount(m) == []
            mounter.mounts.remove(m)


# ---- regressions from the review of the first passthrough version (/work/notes/pt-review.md) ----


def test_kill_9_after_fsync_keeps_the_writes_made_after_it(
    mounter: Mounter, node: Mount, area: str, webdav: WebDav
) -> None:
    """An fsync's upload must not journal the file clean while the kernel can still write it."""
    a, b = b"A" * MiB, b"B" * MiB
    p = node.home / area / "after-fsync.bin"
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with _closed_on_error(fd):
        os.write(fd, a)
        os.fsync(fd)
        assert webdav.get(f"{area}/after-fsync.bin") == a
        os.pwrite(fd, b, 0)
        os.write(fd, b"tail")
    again = _kill_and_remount(mounter, node, fd)  # before anything takes those writes in
    assert webdav.get(f"{area}/after-fsync.bin") == b + b"tail"
    assert (again.home / area / "after-fsync.bin").read_bytes() == b + b"tail"


def test_meshfs_sync_after_an_fsync_includes_later_writes(node: Mount, area: str, webdav: WebDav) -> None:
    for i in range(3):
        p = node.home / area / f"sync{i}.log"
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, b"one\n")
            os.fsync(fd)
            os.write(fd, b"two\n")
            node.sync_ok()  # everything written so far is on the server, the file still open
            assert webdav.get(f"{area}/sync{i}.log") == b"one\ntwo\n", f"round {i}"
        finally:
            os.close(fd)
    node.sync_ok()
    assert webdav.get(f"{area}/sync2.log") == b"one\ntwo\n"


def test_fallocate_inside_a_passthrough_file_changes_nothing(node: Mount, area: str, webdav: WebDav) -> None:
    p = node.home / area / "falloc.bin"
    data = os.urandom(2 * MiB)
    fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.posix_fallocate(fd, 0, MiB)
        assert os.fstat(fd).st_size == 2 * MiB
        os.posix_fallocate(fd, 0, 3 * MiB)  # past the end: grows with zeros
        assert os.fstat(fd).st_size == 3 * MiB
    finally:
        os.close(fd)
    node.sync_ok()
    assert webdav.get(f"{area}/falloc.bin") == data + bytes(MiB)


def test_a_time_set_on_a_new_file_reaches_the_server(
    mounter: Mounter, node: Mount, area: str
) -> None:
    """touch -d of a new file: created through passthrough with no writes (which would otherwise turn
    it clean again at close, dropping the time set through the descriptor)."""
    p = node.home / area / "dated.txt"
    subprocess.run(["touch", "-m", "-d", "2020-01-02 03:04:05 UTC", os.fspath(p)], check=True, timeout=30)
    node.sync_ok()
    other = mounter.mount("einstein")  # another machine: what the server has
    assert (other.home / area / "dated.txt").stat().st_mtime_ns == 1577934245 * 10**9


def test_o_trunc_while_a_passthrough_writer_has_written(node: Mount, area: str, webdav: WebDav) -> None:
    """O_TRUNC must see what the kernel wrote through passthrough but nobody took in yet (found by the
    soak: the truncation was skipped when the close of the last writer was still on its way)."""
    p = node.home / area / "trunc-me.bin"
    first = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(first, b"x" * 300000)
        second = os.open(p, os.O_WRONLY | os.O_TRUNC)
        os.close(second)
        assert os.fstat(first).st_size == 0
    finally:
        os.close(first)
    assert p.read_bytes() == b""
    node.sync_ok()
    assert webdav.get(f"{area}/trunc-me.bin") == b""


@pytest.mark.parametrize("passthrough", ["true", "false"])
def test_writes_after_a_conflict_through_the_same_descriptor_are_kept(
    mounter: Mounter, webdav: WebDav, passthrough: str
) -> None:
    """A conflict found by fsync while the writer keeps the file open: ours goes up as a conflict copy,
    and what is written afterwards through the same descriptor is not lost either (it conflicts
    again at close). Without passthrough this was lost: the cache entry was dropped at the conflict."""
    m = mounter.mount("einstein", "upload_delay=1s", f"passthrough={passthrough}")
    area = f"pt-cf-{uuid.uuid4().hex[:8]}"
    (m.home / area).mkdir()
    p = m.home / area / "doc.txt"
    p.write_bytes(b"v1\n")
    m.sync_ok()
    before = _opens(m)
    fd = os.open(p, os.O_WRONLY | os.O_TRUNC)
    try:
        assert _opens(m) == before + (passthrough == "true")
        os.write(fd, b"local edit\n")
        webdav.put(f"{area}/doc.txt", b"remote edit\n")
        os.fsync(fd)  # ours goes up as a conflict copy; the file stays ours locally
        with open(p, "rb") as again:  # (with passthrough: shares the passthrough file, no EIO)
            assert again.read() == b"local edit\n"
        os.write(fd, b"after the conflict\n")
    finally:
        os.close(fd)
    m.sync_ok()
    assert webdav.get(f"{area}/doc.txt") == b"remote edit\n"
    copies = [webdav.get(f"{area}/{n}") for n in webdav.names(area) if "conflict" in n]
    assert b"local edit\n" in copies, copies
    assert b"local edit\nafter the conflict\n" in copies, copies
    assert m.status()["fs"]["uploads"] == [], "something is still pending"
    wait_for(lambda: p.read_bytes() == b"remote edit\n", 10, "the mount to show the server's version")
