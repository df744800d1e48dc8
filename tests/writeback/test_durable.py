"""`meshfs sync` exit 0 means durable: a tus upload whose last PATCH outlives `transfer_timeout` while the
server finalises it (all bytes received, the answer still pending) must not be taken for a finished
upload. 512 MiB with transfer_timeout=1s makes Reva's finalisation of the last chunk outlast the timeout.
Also: `upload_workers` bounds the uploads in flight (watched on the server: tus uploads receiving data).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
from wbkit import MiB, Mounter, WebDav, make_data_file  # type: ignore[import-not-found]

pytestmark = [pytest.mark.reva, pytest.mark.fuse]


def test_sync_success_means_the_server_has_the_file_even_if_the_last_patch_timed_out(
    mounter: Mounter, dav: WebDav, area: str, tmp_path: Path
) -> None:
    size = 512 * MiB
    original = tmp_path / "original.bin"
    digest = make_data_file(original, size, seed=512)
    a = mounter.mount("upload_delay=0.2s", "upload_chunk_size=16M", "transfer_timeout=1s")
    shutil.copyfile(original, a.home / area / "big.bin")
    original.unlink()
    a.sync_ok(timeout=240)
    got = dav.sha256(f"{area}/big.bin")
    assert got == (digest, size), f"`meshfs sync` said durable, the server has {got[1]} of {size} bytes"
    assert sorted(dav.names(area)) == ["big.bin"]


def _growing_uploads(var_dir: Path, dirname: str, last: dict[str, int]) -> int:
    """How many tus uploads into `dirname` received bytes since the previous call (server side)."""
    active = 0
    for e in os.scandir(var_dir / "data" / "uploads"):
        if not e.name.endswith(".info"):
            continue
        try:
            info = json.loads(Path(e.path).read_text())
            if not str(info.get("MetaData", {}).get("dir", "")).endswith(dirname):
                continue
            size = os.path.getsize(e.path[: -len(".info")])
        except (OSError, ValueError):
            continue
        if size != last.get(e.name, 0) and size < int(info.get("Size", 0)):
            active += 1
        last[e.name] = size
    return active


def test_upload_workers_bound_concurrent_uploads(
    mounter: Mounter, dav: WebDav, reva: Any, area: str, tmp_path: Path
) -> None:
    """upload_workers=1: three big files closed together go up one after the other (seen server side)."""
    a = mounter.mount("upload_delay=0.2s", "upload_chunk_size=4M", "upload_workers=1")
    digests = {}
    for i in range(3):
        src = tmp_path / f"f{i}.bin"
        digests[f"f{i}.bin"] = make_data_file(src, 96 * MiB, seed=200 + i)
        shutil.copyfile(src, a.home / area / f"f{i}.bin")
    peak, last = 0, {}
    done = threading.Event()
    result: list[int] = []

    def run_sync() -> None:
        try:
            result.append(a.sync(timeout=240).returncode)
        finally:
            done.set()

    t = threading.Thread(target=run_sync, daemon=True)
    t.start()
    while not done.wait(0.02):
        peak = max(peak, _growing_uploads(reva.var_dir, area, last))
    t.join(10)
    assert result == [0]
    for name, digest in digests.items():
        assert dav.sha256(f"{area}/{name}") == (digest, 96 * MiB)
    assert peak <= 1, f"{peak} uploads received data at the same time with upload_workers=1"
