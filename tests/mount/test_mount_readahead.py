"""The kernel readahead of a real meshfs mount (`read_ahead_kb`) and what it changes: the size of the
READ requests a sequential reader causes, counted by the daemon's own metrics.

A 16 MiB file written by "someone else" (WebDAV) is read sequentially in 1 MiB blocks through a
fresh mount (nothing cached); `meshfs_requests_total{op="read"}` says how many READs that took.
With read_ahead_kb = 1024 (the default) the kernel sends 1 MiB READs; with 0 (the kernel's 128 KiB)
it sends many more, smaller ones. The data must be the same either way.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from mounthelp import WebDav, sha256
from rig import bdi_read_ahead, free_port, requests_answered

pytestmark = [pytest.mark.reva, pytest.mark.fuse]

MiB = 1024 * 1024
SIZE = 16 * MiB






def sequential_read(path: Path) -> tuple[bytes, int]:
    """Read `path` in 1 MiB blocks as dd bs=1M does; the bytes and the number of read(2) calls."""
    chunks = []
    fd = os.open(path, os.O_RDONLY)
    try:
        while block := os.read(fd, MiB):
            chunks.append(block)
    finally:
        os.close(fd)
    return b"".join(chunks), len(chunks)


@pytest.fixture(autouse=True)
def root_only() -> None:
    if os.geteuid() != 0:
        pytest.skip("SKIPPED LOUDLY: setting a bdi's read_ahead_kb needs root; run the suite as root")


def test_the_shared_mount_has_the_default_read_ahead(mount: Path) -> None:
    assert bdi_read_ahead(mount) == 1024


def test_sequential_reads_arrive_in_1mib_requests(
    work: Path, mount_factory: Callable[..., Path], webdav: WebDav
) -> None:
    data = random.Random(16).randbytes(SIZE)
    webdav.put(f"{work.name}/seq.bin", data)
    counts = {}
    for read_ahead_kb in (1024, 0):
        port = free_port()
        mnt = mount_factory("einstein", f"metrics_port={port}", f"read_ahead_kb={read_ahead_kb}")
        assert bdi_read_ahead(mnt) == (read_ahead_kb or 128)
        path = mnt / "home" / work.name / "seq.bin"
        assert path.stat().st_size == SIZE
        before = requests_answered(port, "read")
        got, calls = sequential_read(path)
        assert calls == SIZE // MiB
        assert sha256(got) == sha256(data), f"read_ahead_kb={read_ahead_kb}: the data differs"
        counts[read_ahead_kb] = requests_answered(port, "read") - before
    print(f"\nREAD requests for a 16 MiB sequential read, by read_ahead_kb: {counts}")
    # 1 MiB READs: about one per MiB (a few more when the kernel splits at its readahead marks)
    assert counts[1024] <= 2 * SIZE // MiB, counts
    # the kernel default: 128 KiB READs, at least four times as many
    assert counts[0] >= 4 * counts[1024], counts
