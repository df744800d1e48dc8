"""Consistency between two nodes (two mounts of einstein with their own cache dirs) and within one.

Close-to-open: after write + close + `meshfs sync` on A, the next open on B sees the new content at
once. Listings: B's poller (dir_poll_interval=1s) plus the TTLs bound how long B may show the old tree.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from mounthelp import sync, wait_for

pytestmark = [pytest.mark.reva, pytest.mark.fuse]

POLL = 1.0  # dir_poll_interval of mount B
TTL = 1.0  # default entry/attr/negative TTL
BOUND = POLL + 2 * TTL + 3.0  # + slack for a loaded 2-core machine


def write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def read(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture
def node_b(work: Path, mount_factory: Callable[..., Path]) -> Path:
    """The test's work directory as seen by a second node (mount B, own cache dir, fast poller)."""
    return mount_factory("einstein", f"dir_poll_interval={POLL:g}s") / "home" / work.name


def test_close_to_open_same_size(work: Path, node_b: Path) -> None:
    write(work / "f", b"version-1")
    sync(work)
    assert read(node_b / "f") == b"version-1"  # now cached on B
    write(work / "f", b"version-2")
    sync(work)
    assert read(node_b / "f") == b"version-2"


def test_close_to_open_other_size_and_open_fd_on_b(work: Path, node_b: Path) -> None:
    write(work / "f", b"short")
    sync(work)
    with open(node_b / "f", "rb") as f:
        assert f.read() == b"short"
    data = os.urandom(200_000)
    write(work / "f", data)
    sync(work)
    with open(node_b / "f", "rb") as f:
        assert f.read() == data
    assert (node_b / "f").stat().st_size == len(data)


def test_close_to_open_after_b_saw_the_file_empty(work: Path, node_b: Path) -> None:
    """B has looked at the file while it was empty (stat + read); A's content must show on B's next open."""
    write(work / "f", b"")
    sync(work)
    assert (node_b / "f").stat().st_size == 0
    assert read(node_b / "f") == b""
    write(work / "f", b"hello")
    sync(work)
    assert read(node_b / "f") == b"hello"
    assert (node_b / "f").stat().st_size == 5


def test_write_on_b_seen_by_a(work: Path, node_b: Path) -> None:
    write(work / "f", b"from A")
    sync(work)
    assert read(node_b / "f") == b"from A"
    assert read(work / "f") == b"from A"
    write(node_b / "f", b"from B, longer")
    sync(node_b)
    assert read(work / "f") == b"from B, longer"


def test_file_created_on_a_appears_in_b_listing(work: Path, node_b: Path) -> None:
    assert os.listdir(node_b) == []  # B has listed (and cached) the empty directory
    write(work / "new", b"hello")
    (work / "newdir").mkdir()
    sync(work)
    t0 = time.monotonic()
    wait_for(
        lambda: sorted(os.listdir(node_b)) == ["new", "newdir"], BOUND, "B's listing to show the new entries"
    )
    assert time.monotonic() - t0 <= BOUND
    assert read(node_b / "new") == b"hello"


def test_lookup_of_a_name_b_found_missing(work: Path, node_b: Path) -> None:
    """A negative lookup cached on B must expire: the file created on A becomes visible by name."""
    assert not (node_b / "later").exists()
    write(work / "later", b"x")
    sync(work)
    wait_for(lambda: (node_b / "later").exists(), BOUND, "B to find the new file by name")
    assert read(node_b / "later") == b"x"


def test_file_deleted_on_a_disappears_on_b(work: Path, node_b: Path) -> None:
    write(work / "gone", b"bye")
    write(work / "stays", b"s")
    sync(work)
    assert sorted(os.listdir(node_b)) == ["gone", "stays"]
    assert read(node_b / "gone") == b"bye"
    os.unlink(work / "gone")
    sync(work)
    wait_for(lambda: os.listdir(node_b) == ["stays"], BOUND, "B's listing to drop the deleted file")
    wait_for(lambda: not (node_b / "gone").exists(), BOUND, "B's lookup to drop the deleted file")
    with pytest.raises(FileNotFoundError):
        read(node_b / "gone")


def test_rename_on_a_seen_on_b(work: Path, node_b: Path) -> None:
    write(work / "old", b"content")
    sync(work)
    assert os.listdir(node_b) == ["old"]
    os.rename(work / "old", work / "new")
    sync(work)
    wait_for(lambda: os.listdir(node_b) == ["new"], BOUND, "B's listing to show the rename")
    assert read(node_b / "new") == b"content"


def test_no_stale_stat_after_own_write(work: Path) -> None:
    p = work / "f"
    write(p, b"abc")
    st1 = p.stat()
    assert st1.st_size == 3
    fd = os.open(p, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"defg")
        assert p.stat().st_size == 7  # while still open
        assert os.fstat(fd).st_size == 7
    finally:
        os.close(fd)
    st2 = p.stat()
    assert st2.st_size == 7
    assert st2.st_mtime_ns >= st1.st_mtime_ns
    entries = {e.name: e.stat().st_size for e in os.scandir(work)}
    assert entries == {"f": 7}
    os.truncate(p, 2)
    assert p.stat().st_size == 2
    assert {e.name: e.stat().st_size for e in os.scandir(work)} == {"f": 2}
    sync(work)
    assert p.stat().st_size == 2
    assert read(p) == b"ab"


def test_no_stale_stat_after_own_overwrite_of_a_listed_file(work: Path) -> None:
    p = work / "f"
    write(p, b"1" * 10)
    sync(work)
    os.listdir(work)
    old_mtime = p.stat().st_mtime_ns
    os.utime(p, ns=(old_mtime - 10**10, old_mtime - 10**10))
    write(p, b"2" * 25)
    st = p.stat()
    assert st.st_size == 25
    assert st.st_mtime_ns > old_mtime - 10**10
    assert read(p) == b"2" * 25


def test_mtime_seen_at_close_is_the_one_stored(work: Path, mount_factory: Callable[..., Path]) -> None:
    """The mtime a writer sees after close must not jump when the upload lands (make, vim, rsync)."""
    p = work / "f"
    write(p, b"data")
    seen = p.stat().st_mtime_ns
    sync(work)
    other = mount_factory() / "home" / work.name / "f"
    assert other.stat().st_mtime_ns == seen
    assert p.stat().st_mtime_ns == seen


def test_dir_mtime_set_after_writing_children_survives_their_upload(
    work: Path, mount_factory: Callable[..., Path]
) -> None:
    """rsync/tar/cp -a: write the children, then set the directory's mtime; the later uploads keep it."""
    d = work / "d"
    d.mkdir()
    for name in ("a", "b"):
        write(d / name, name.encode() * 100)
    stamp = 1_500_000_000_000_000_000
    os.utime(d, ns=(stamp, stamp))
    assert d.stat().st_mtime_ns == stamp
    sync(work)
    assert d.stat().st_mtime_ns == stamp
    other = mount_factory() / "home" / work.name / "d"
    assert other.stat().st_mtime_ns == stamp


def test_other_users_mount_their_own_home(work: Path, mount_factory: Callable[..., Path]) -> None:
    write(work / "private", b"einstein only")
    sync(work)
    marie = mount_factory("marie")
    assert (marie / "home").is_dir()
    assert work.name not in os.listdir(marie / "home")
    assert not (marie / "home" / work.name).exists()
    mine = marie / "home" / f"marie-{work.name}"
    mine.mkdir()
    try:
        write(mine / "f", b"marie's")
        sync(mine)
        assert read(mine / "f") == b"marie's"
        assert not (work.parent / mine.name).exists()
    finally:
        os.unlink(mine / "f")
        os.rmdir(mine)


def test_dir_mtime_set_while_a_child_is_open_for_writing(work: Path) -> None:
    """utimens on a directory must show at once, even while a new child in it is still being written."""
    d = work / "d"
    d.mkdir()
    stamp = 1_819_586_351_331_216_480
    fd = os.open(d / "f", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.pwrite(fd, b"x" * 5000, 0)
        os.utime(d, ns=(stamp, stamp))
        assert d.stat().st_mtime_ns == stamp
        os.pwrite(fd, b"y", 5000)
    finally:
        os.close(fd)
    assert d.stat().st_mtime_ns == stamp
