"""Durability and data-path promises: fsync uploads, umount drains, ro mounts, mmap, partial reads.

Uses mounts of its own (upload_delay long enough that only the operation under test can have
uploaded), checking the server with WebDAV (no meshfs code involved).
"""

from __future__ import annotations

import errno
import json
import mmap
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from mounthelp import WebDav, expect_errno, run_meshfs, sha256, sha256_file, sync
from rig import free_port, requests_answered

pytestmark = [pytest.mark.reva, pytest.mark.fuse]

MiB = 1024 * 1024
SLOW_UPLOAD = "upload_delay=10m"  # nothing uploads by itself during the test


def status(mnt: Path) -> dict[str, object]:
    proc = run_meshfs("status", os.fspath(mnt), "--json", timeout=30, check=True)
    fs: dict[str, object] = json.loads(proc.stdout)["mounts"][0]["fs"]
    return fs


def test_fsync_makes_the_file_durable(mount_factory: Callable[..., Path], webdav: WebDav) -> None:
    mnt = mount_factory("einstein", SLOW_UPLOAD)
    name = f"mt-fsync-{os.getpid()}-{os.urandom(3).hex()}"
    d = mnt / "home" / name
    d.mkdir()
    try:
        data = os.urandom(300_000)
        fd = os.open(d / "f", os.O_CREAT | os.O_WRONLY, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
            assert sha256(webdav.get(f"{name}/f")) == sha256(data)  # stored before close
            os.pwrite(fd, b"second", 10)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        assert webdav.get(f"{name}/f")[10:16] == b"second"
    finally:
        webdav.delete(name)


def test_umount_finishes_pending_uploads(mount_factory: Callable[..., Path], webdav: WebDav) -> None:
    mnt = mount_factory("einstein", SLOW_UPLOAD)
    name = f"mt-drain-{os.getpid()}-{os.urandom(3).hex()}"
    d = mnt / "home" / name
    d.mkdir()
    try:
        files = {f"f{i}": os.urandom(1000 * (i + 1)) for i in range(5)}
        for n, data in files.items():
            (d / n).write_bytes(data)
        proc = run_meshfs("umount", os.fspath(mnt), "--timeout", "120", timeout=150)
        assert proc.returncode == 0, proc.stderr
        for n, data in files.items():
            assert webdav.get(f"{name}/{n}") == data, n
    finally:
        webdav.delete(name)


def test_remount_with_the_same_cache_dir_sees_its_own_data(
    mount_factory: Callable[..., Path], tmp_path: Path, webdav: WebDav
) -> None:
    cache = tmp_path / "cache"
    mnt = mount_factory("einstein", cache_dir=cache)
    name = f"mt-remount-{os.getpid()}-{os.urandom(3).hex()}"
    try:
        (mnt / "home" / name).mkdir()
        data = os.urandom(2 * MiB)
        (mnt / "home" / name / "f").write_bytes(data)
        assert sha256_file(mnt / "home" / name / "f") == sha256(data)
        assert run_meshfs("umount", os.fspath(mnt), "--timeout", "120", timeout=150).returncode == 0
        again = mount_factory("einstein", cache_dir=cache)
        assert sha256_file(again / "home" / name / "f") == sha256(data)
    finally:
        webdav.delete(name)


def test_read_only_mount(mount_factory: Callable[..., Path], webdav: WebDav) -> None:
    name = f"mt-ro-{os.getpid()}-{os.urandom(3).hex()}"
    webdav.mkcol(name)
    webdav.put(f"{name}/f", b"read me")
    try:
        mnt = mount_factory("einstein", "ro")
        d = mnt / "home" / name
        assert (d / "f").read_bytes() == b"read me"
        with expect_errno(errno.EROFS):
            os.open(d / "f", os.O_WRONLY)
        with expect_errno(errno.EROFS):
            os.open(d / "new", os.O_CREAT | os.O_WRONLY, 0o644)
        with expect_errno(errno.EROFS):
            os.mkdir(d / "sub")
        with expect_errno(errno.EROFS):
            os.unlink(d / "f")
        with expect_errno(errno.EROFS):
            os.rename(d / "f", d / "g")
        assert webdav.get(f"{name}/f") == b"read me"
    finally:
        webdav.delete(name)


def test_small_read_of_a_large_file_does_not_download_it(
    mount_factory: Callable[..., Path], webdav: WebDav
) -> None:
    name = f"mt-partial-{os.getpid()}-{os.urandom(3).hex()}"
    webdav.mkcol(name)
    data = os.urandom(64 * MiB)
    webdav.put(f"{name}/big", data)
    try:
        mnt = mount_factory("einstein")
        before = int(status(mnt)["bytes_down"])  # type: ignore[call-overload]
        with open(mnt / "home" / name / "big", "rb") as f:
            f.seek(40 * MiB)
            assert f.read(64 * 1024) == data[40 * MiB : 40 * MiB + 64 * 1024]
        down = int(status(mnt)["bytes_down"]) - before  # type: ignore[call-overload]
        # one random read may fetch a block or a first readahead window (it starts small and only
        # doubles on sequential reads), never the file
        assert 64 * 1024 <= down <= 9 * MiB, down
    finally:
        webdav.delete(name)


def test_shared_mmap_write_is_stored(work: Path, mount_factory: Callable[..., Path]) -> None:
    p = work / "mapped"
    p.write_bytes(b"\0" * 8192)
    with open(p, "r+b") as f, mmap.mmap(f.fileno(), 8192) as m:
        m[100:105] = b"hello"
        m[5000:5005] = b"world"
        m.flush()
    data = p.read_bytes()
    assert data[100:105] == b"hello" and data[5000:5005] == b"world"
    sync(work)
    other = mount_factory() / "home" / work.name / "mapped"
    got = other.read_bytes()
    assert got[100:105] == b"hello" and got[5000:5005] == b"world"
    assert len(got) == 8192




def test_kernel_writeback_cache_mode(mount_factory: Callable[..., Path], webdav: WebDav) -> None:
    """-o writeback_cache: the kernel batches writes and owns size/mtime; the results must be the same."""
    port = free_port()
    mnt = mount_factory("einstein", "writeback_cache", f"metrics_port={port}")
    name = f"mt-wbc-{os.getpid()}-{os.urandom(3).hex()}"
    d = mnt / "home" / name
    d.mkdir()
    try:
        p = d / "f"
        before = requests_answered(port, "write")
        fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
        try:
            for i in range(1000):
                os.write(fd, f"line {i}\n".encode())  # many small unbuffered writes
        finally:
            os.close(fd)
        # the kernel's page cache took them: far fewer WRITE requests than write(2) calls
        assert requests_answered(port, "write") - before < 100
        expected = b"".join(f"line {i}\n".encode() for i in range(1000))
        assert p.stat().st_size == len(expected)
        with open(p, "ab") as f:
            f.write(b"appended\n")
        expected += b"appended\n"
        os.truncate(p, len(expected) - 3)
        expected = expected[:-3]
        with open(p, "r+b") as f:
            f.seek(5)
            f.write(b"XX")
        expected = expected[:5] + b"XX" + expected[7:]
        assert p.read_bytes() == expected
        assert p.stat().st_size == len(expected)
        seen = p.stat().st_mtime_ns
        sync(d)
        assert webdav.get(f"{name}/f") == expected
        other = mount_factory() / "home" / name / "f"
        assert sha256_file(other) == sha256(expected)
        assert other.stat().st_mtime_ns == seen
    finally:
        webdav.delete(name)
