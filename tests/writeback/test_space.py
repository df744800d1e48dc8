"""Cache space: a cache limit smaller than the data written makes writers wait (nothing lost, the limit
holds); a full cache disk (a small tmpfs as the cache dir) gives the writer ENOSPC while the files
written earlier stay intact and reach the server.
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
from pathlib import Path

import pytest
from wbkit import MiB, Mounter, WebDav, errno_name, make_data_file, tmpfs  # type: ignore[import-not-found]

pytestmark = [pytest.mark.reva, pytest.mark.fuse]


def _data_bytes(cache: Path) -> int:
    """Disk space the cache's data files take (allocated blocks: the cache files are sparse)."""
    total = 0
    for root, _dirs, files in os.walk(cache):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def test_cache_limit_smaller_than_data_writers_wait(
    mounter: Mounter, dav: WebDav, area: str, tmp_path: Path
) -> None:
    limit, n, size = 64 * MiB, 8, 32 * MiB  # 256 MiB through a 64 MiB cache
    cache = tmp_path / "cache"
    a = mounter.mount("cache_size=64M", "upload_delay=1s", "backpressure_timeout=120s", cache_dir=cache)
    src = tmp_path / "src"
    src.mkdir()
    digests = {f"f{i}.bin": make_data_file(src / f"f{i}.bin", size, seed=100 + i) for i in range(n)}

    peak = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _data_bytes(cache / "data"))
            stop.wait(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        for name in digests:
            shutil.copyfile(src / name, a.home / area / name)  # blocks while the cache is full of dirty data
        a.sync_ok(timeout=240)
    finally:
        stop.set()
        watcher.join(10)
    for name, digest in digests.items():
        assert dav.sha256(f"{area}/{name}") == (digest, size), f"{name} differs on the server"
    fs = a.status()["fs"]
    assert fs["cache"]["used"] <= limit, fs["cache"]
    print(f"cache data peak {peak / MiB:.1f} MiB (limit {limit / MiB:.0f} MiB), status {fs['cache']}")
    slack = 2 * MiB  # a write in flight may overshoot by one request's worth
    assert peak <= limit + slack, f"cache data reached {peak / MiB:.1f} MiB with a 64 MiB limit"


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs as the cache dir needs root")
def test_full_cache_disk_gives_enospc_and_keeps_earlier_data(
    mounter: Mounter, dav: WebDav, area: str, tmp_path: Path
) -> None:
    with tmpfs(tmp_path / "cachefs", "32m") as fs_root:
        a = mounter.mount(
            "cache_size=1G", "upload_delay=600s", "backpressure_timeout=5s", cache_dir=fs_root / "cache"
        )
        d = a.home / area
        early = {"a.bin": os.urandom(6 * MiB), "b.bin": os.urandom(6 * MiB)}
        for name, data in early.items():
            (d / name).write_bytes(data)

        got: OSError | None = None
        fd = os.open(d / "c.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            block = os.urandom(MiB)
            for _ in range(64):  # twice the disk
                os.write(fd, block)
        except OSError as e:
            got = e
        finally:
            try:
                os.close(fd)
            except OSError as e:
                got = got or e
        assert got is not None, "64 MiB went into a 32 MiB cache disk without an error"
        assert got.errno == errno.ENOSPC, f"expected ENOSPC, got {errno_name(got)}: {got}"

        # earlier data intact, locally and once synced on the server; the mount still works
        for name, data in early.items():
            assert (d / name).read_bytes() == data
            a.sync_ok(d / name, timeout=60)
            assert dav.get(f"{area}/{name}") == data, f"{name} damaged by the full cache disk"
        assert sorted(os.listdir(d)) == ["a.bin", "b.bin", "c.bin"]
        os.unlink(d / "c.bin")
        (d / "after.txt").write_bytes(b"space again\n")
        a.sync_ok(timeout=60)
        assert dav.get(f"{area}/after.txt") == b"space again\n"
        assert mounter.unmount(a) == []
