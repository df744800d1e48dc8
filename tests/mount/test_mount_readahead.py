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
import re
import socket
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from mounthelp import WebDav, sha256

pytestmark = [pytest.mark.reva, pytest.mark.fuse]

MiB = 1024 * 1024
SIZE = 16 * MiB


def devno(mountpoint: Path) -> str:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        found = [line.split()[2] for line in f if line.split()[4] == os.fspath(mountpoint)]
    assert found, f"{mountpoint} is not mounted"
    return found[-1]


def bdi_read_ahead(mountpoint: Path) -> int:
    return int(Path(f"/sys/class/bdi/{devno(mountpoint)}/read_ahead_kb").read_text())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def reads_answered(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    m = re.search(r'^meshfs_requests_total\{op="read",errno="OK"\} (\S+)$', text, re.MULTILINE)
    return int(float(m.group(1))) if m else 0


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
        before = reads_answered(port)
        got, calls = sequential_read(path)
        assert calls == SIZE // MiB
        assert sha256(got) == sha256(data), f"read_ahead_kb={read_ahead_kb}: the data differs"
        counts[read_ahead_kb] = reads_answered(port) - before
    print(f"\nREAD requests for a 16 MiB sequential read, by read_ahead_kb: {counts}")
    # 1 MiB READs: about one per MiB (a few more when the kernel splits at its readahead marks)
    assert counts[1024] <= 2 * SIZE // MiB, counts
    # the kernel default: 128 KiB READs, at least four times as many
    assert counts[0] >= 4 * counts[1024], counts
