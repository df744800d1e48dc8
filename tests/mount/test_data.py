"""Data round trips through the mount: sizes, random writes into uncached files, sparse files, st_blocks.

"The server" is checked two ways: a second mount with its own cache dir (another node) after
`meshfs sync`, and a plain WebDAV GET (no meshfs code at all).
"""

from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from mounthelp import WebDav, sha256, sha256_file, sync

pytestmark = [pytest.mark.reva, pytest.mark.fuse]

MiB = 1024 * 1024


def server_rel(work: Path, *parts: str) -> str:
    return "/".join([work.name, *parts])


@pytest.mark.parametrize("size", [0, 1, 10 * MiB], ids=["0B", "1B", "10MiB"])
def test_round_trip_sizes(work: Path, mount_factory: Callable[..., Path], webdav: WebDav, size: int) -> None:
    data = random.Random(size).randbytes(size)
    p = work / f"f-{size}"
    with open(p, "wb") as f:
        f.write(data)
    assert p.stat().st_size == size
    assert sha256_file(p) == sha256(data)
    sync(work)
    assert sha256(webdav.get(server_rel(work, p.name))) == sha256(data)
    other = mount_factory() / "home" / work.name / p.name
    assert other.stat().st_size == size
    assert sha256_file(other) == sha256(data)


def test_random_writes_into_an_uncached_20mib_file(
    work: Path, mount_factory: Callable[..., Path], webdav: WebDav
) -> None:
    rng = random.Random(20)
    data = bytearray(rng.randbytes(20 * MiB))
    webdav.put(server_rel(work, "big"), bytes(data))  # written by "someone else": nothing cached here
    p = work / "big"
    assert p.stat().st_size == len(data)
    fd = os.open(p, os.O_RDWR)
    try:
        for _ in range(12):
            off = rng.randrange(0, len(data) - 70_000)
            chunk = rng.randbytes(rng.randrange(1, 70_000))
            assert os.pwrite(fd, chunk, off) == len(chunk)
            data[off : off + len(chunk)] = chunk
        # one write straddling the end grows the file
        tail = rng.randbytes(5000)
        os.pwrite(fd, tail, len(data) - 1000)
        data[len(data) - 1000 :] = tail
        assert os.pread(fd, 64, 4 * MiB) == bytes(data[4 * MiB : 4 * MiB + 64])
    finally:
        os.close(fd)
    assert p.stat().st_size == len(data)
    sync(work)
    fresh = mount_factory() / "home" / work.name / "big"
    assert fresh.stat().st_size == len(data)
    assert sha256_file(fresh) == sha256(bytes(data))
    assert sha256(webdav.get(server_rel(work, "big"))) == sha256(bytes(data))


def test_sparse_file_reads_zeros_in_the_hole(work: Path, mount_factory: Callable[..., Path]) -> None:
    p = work / "sparse"
    hole = 5 * MiB + 123
    with open(p, "wb") as f:
        f.write(b"head")
        f.seek(hole)
        f.write(b"tail")
    assert p.stat().st_size == hole + 4
    with open(p, "rb") as f:
        f.seek(4)
        assert f.read(hole - 4) == b"\0" * (hole - 4)
        assert f.read() == b"tail"
    sync(work)
    other = mount_factory() / "home" / work.name / "sparse"
    expected = b"head" + b"\0" * (hole - 4) + b"tail"
    assert sha256_file(other) == sha256(expected)


def test_st_blocks_and_du(work: Path) -> None:
    (work / "d").mkdir()
    with open(work / "d" / "one", "wb") as f:
        f.write(os.urandom(MiB))
    with open(work / "d" / "two", "wb") as f:
        f.write(os.urandom(3 * MiB + 1))
    sync(work)
    for name, size in (("one", MiB), ("two", 3 * MiB + 1)):
        st = (work / "d" / name).stat()
        assert size <= st.st_blocks * 512 < size + 64 * 1024, (name, st.st_blocks)
    du = subprocess.run(["du", "-s", "-k", os.fspath(work / "d")], capture_output=True, text=True, timeout=60)
    assert du.returncode == 0, du.stderr
    kib = int(du.stdout.split()[0])
    assert 4 * 1024 <= kib < 4 * 1024 + 256, du.stdout
    du_apparent = subprocess.run(
        ["du", "-s", "-b", os.fspath(work / "d")], capture_output=True, text=True, timeout=60
    )
    assert int(du_apparent.stdout.split()[0]) >= 4 * MiB + 1
