"""`meshfs sync` exit 0 means durable: a tus upload whose last PATCH outlives `transfer_timeout` while the
server finalises it (all bytes received, the answer still pending) must not be taken for a finished
upload. 512 MiB with transfer_timeout=1s makes Reva's finalisation of the last chunk outlast the timeout.
"""

from __future__ import annotations

import shutil
from pathlib import Path

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
