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
from filecheck import write_pattern
from mounthelp import WebDav, sha256, sha256_file, sync

pytestmark = [pytest.mark.reva, pytest.mark.fuse]

MiB = 1 << 20


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
    want = write_pattern(f, tmp_path, seed=1)
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
        want = write_pattern(f, tmp_path, seed=4)
        _check_everywhere(f, want, work, mount_factory, webdav)
    finally:
        subprocess.run(["rm", "-rf", str(work)], check=False, timeout=60)
