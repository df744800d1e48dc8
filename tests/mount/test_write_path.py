"""The write path of a real meshfs mount: dd in several block sizes at random offsets, unaligned
pwrites, O_DIRECT, and the same with the kernel's writeback cache; what reads back through the mount,
through a second mount with its own cache and over WebDAV must be the bytes written.

Large WRITEs reach the daemon spliced through a pipe when the filesystem takes `WritePayload`s
(meshfs.fuse `write_buf`) and as memory otherwise; both must land identically, so these tests hold
for either. Imports nothing from meshfs: the product is driven through the CLI and the kernel.
"""

from __future__ import annotations

import mmap
import os
import random
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from mounthelp import WebDav, sha256, sha256_file, sync

pytestmark = [pytest.mark.reva, pytest.mark.fuse]

KiB = 1024
MiB = 1024 * KiB
PAGE = 4096


def _dd(src: Path, dst: Path, bs: int, count: int, skip: int, seek: int) -> None:
    subprocess.run(
        ["dd", f"if={src}", f"of={dst}", f"bs={bs}", f"count={count}", f"skip={skip}", f"seek={seek}",
         "conv=notrunc", "status=none"],
        check=True, timeout=120,
    )  # fmt: skip


def _pattern(target: Path, scratch: Path, seed: int) -> bytes:
    """dd at random block offsets in 4 block sizes (one of them not a multiple of the page size),
    then unaligned pwrites of random sizes; returns what `target` must hold."""
    rng = random.Random(seed)
    size = 6 * MiB
    src = scratch / f"src-{seed}.bin"
    src.write_bytes(rng.randbytes(size))
    source = src.read_bytes()
    model = bytearray()

    def put(off: int, data: bytes) -> None:
        if off > len(model):
            model.extend(bytes(off - len(model)))
        model[off : off + len(data)] = data

    target.touch()
    for bs in (4 * KiB, 64 * KiB, 128 * KiB + 4 * KiB + 1, MiB):
        count = rng.randint(1, 3)
        skip = rng.randrange(0, size // bs - count + 1)
        seek = rng.randrange(0, (8 * MiB) // bs)
        _dd(src, target, bs, count, skip, seek)
        put(seek * bs, source[skip * bs : (skip + count) * bs])
    fd = os.open(target, os.O_WRONLY)
    try:
        for _ in range(10):
            n = rng.choice((1, PAGE - 1, PAGE + 1, 3 * PAGE + 7, 200 * KiB + 3, MiB - 1, MiB + 5))
            off = rng.randrange(0, 9 * MiB)
            data = rng.randbytes(n)
            assert os.pwrite(fd, data, off) == n
            put(off, data)
    finally:
        os.close(fd)
    return bytes(model)


def _check_everywhere(
    path: Path, want: bytes, work: Path, mount_factory: Callable[..., Path], webdav: WebDav
) -> None:
    assert sha256_file(path) == sha256(want), "the mount reads back other bytes than were written"
    sync(path)
    rel = f"{work.name}/{path.name}"
    assert webdav.sha256(rel) == (sha256(want), len(want)), "the server holds other bytes"
    other = mount_factory()  # another node: own cache, cold
    assert sha256_file(other / "home" / work.name / path.name) == sha256(want)


def test_dd_block_sizes_and_random_offsets_read_back_identical(
    work: Path, mount_factory: Callable[..., Path], webdav: WebDav, tmp_path: Path
) -> None:
    f = work / "pattern.bin"
    want = _pattern(f, tmp_path, seed=1)
    _check_everywhere(f, want, work, mount_factory, webdav)


def test_sequential_dd_of_many_megabytes(
    work: Path, mount_factory: Callable[..., Path], webdav: WebDav, tmp_path: Path
) -> None:
    """The benchmark's shape (dd bs=1M of fresh data), long enough for splicing to switch on."""
    src = tmp_path / "seq.bin"
    src.write_bytes(random.Random(2).randbytes(48 * MiB + 12345))
    f = work / "seq.bin"
    subprocess.run(["dd", f"if={src}", f"of={f}", "bs=1M", "status=none"], check=True, timeout=120)
    _check_everywhere(f, src.read_bytes(), work, mount_factory, webdav)


def test_o_direct_writes(work: Path, mount_factory: Callable[..., Path], webdav: WebDav) -> None:
    f = work / "direct.bin"
    f.touch()
    rng = random.Random(3)
    buf = mmap.mmap(-1, MiB)  # page aligned, as O_DIRECT needs
    want = bytearray(4 * MiB)
    fd = os.open(f, os.O_WRONLY | os.O_DIRECT)
    try:
        for i in (2, 0, 3, 1):
            data = rng.randbytes(MiB)
            buf[:] = data
            assert os.pwritev(fd, [buf], i * MiB) == MiB
            want[i * MiB : (i + 1) * MiB] = data
    finally:
        os.close(fd)
    _check_everywhere(f, bytes(want), work, mount_factory, webdav)


def test_with_the_kernel_writeback_cache(
    mount_factory: Callable[..., Path], webdav: WebDav, tmp_path: Path
) -> None:
    mp = mount_factory("einstein", "writeback_cache=true")
    work = mp / "home" / f"mt-wbc-{os.getpid()}-{random.randrange(1 << 30):x}"
    work.mkdir()
    try:
        f = work / "pattern.bin"
        want = _pattern(f, tmp_path, seed=4)
        _check_everywhere(f, want, work, mount_factory, webdav)
    finally:
        subprocess.run(["rm", "-rf", str(work)], check=False, timeout=60)
