"""Barriers and visibility of the write-back cache, on a real mount of the dev Reva: a notebook saved 50
times quickly goes up once per quiet period with the last save; fsync returns only once the file is on
the server; `meshfs sync PATH` waits only for files under PATH; `meshfs umount` waits for pending
uploads; a pending upload follows a local rename and is dropped by a local delete; `user.meshfs.state`
goes dirty -> clean.

The server's view is read over WebDAV (ocdav), independent of meshfs.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from wbkit import MiB, Mounter, WebDav, make_data_file, sha256, state_of, wait_for  # type: ignore[import-not-found]

pytestmark = [pytest.mark.reva, pytest.mark.fuse]

LONG_DELAY = "upload_delay=300s"  # nothing goes up by itself during these tests


def write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def notebook(i: int) -> bytes:
    cells = [{"cell_type": "code", "source": f"x = {i}\n" * 40, "outputs": []}]
    return json.dumps({"cells": cells, "metadata": {"save": i}, "nbformat": 4}, indent=1).encode()


def test_notebook_saved_50_times_uploads_once_per_quiet_period(
    mounter: Mounter, dav: WebDav, area: str
) -> None:
    a = mounter.mount("upload_delay=3s")
    nb = a.home / area / "analysis.ipynb"
    rel = f"home/{area}/analysis.ipynb"
    for period in (1, 2):
        for i in range(50):  # jupyter_server style: open O_TRUNC, write, close
            write(nb, notebook(period * 1000 + i))
        assert state_of(nb) in ("dirty", "uploading")
        wait_for(lambda: state_of(nb) == "clean", 60, f"quiet period {period}: the notebook to be clean")
        assert dav.get(f"{area}/analysis.ipynb") == notebook(period * 1000 + 49), "the last save must win"
        assert a.uploads_logged(rel) == period, (
            f"after quiet period {period}: {a.uploads_logged(rel)} uploads logged, expected {period}"
        )
    assert a.status()["fs"]["bytes_up"] == len(notebook(1049)) + len(notebook(2049))


def test_fsync_returns_once_durable(mounter: Mounter, dav: WebDav, area: str) -> None:
    a = mounter.mount(LONG_DELAY)
    dav.put(f"{area}/existing.dat", b"old content\n")
    for name, data in (("new.dat", os.urandom(3 * MiB)), ("existing.dat", b"replaced\n" * 1000)):
        fd = os.open(a.home / area / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
            # another node reads it right after fsync (no sync, file still open)
            assert sha256(dav.get(f"{area}/{name}")) == sha256(data), f"{name}: not on the server after fsync"
            assert state_of(a.home / area / name) == "clean"
        finally:
            os.close(fd)


def test_sync_path_waits_only_for_files_under_path(mounter: Mounter, dav: WebDav, area: str) -> None:
    a = mounter.mount(LONG_DELAY)
    (a.home / area / "one").mkdir()
    (a.home / area / "two").mkdir()
    x, y = b"under the synced path\n" * 100, b"elsewhere\n" * 100
    write(a.home / area / "one" / "x.txt", x)
    write(a.home / area / "two" / "y.txt", y)
    a.sync_ok(a.home / area / "one", timeout=60)
    assert dav.get(f"{area}/one/x.txt") == x
    assert state_of(a.home / area / "two" / "y.txt") == "dirty", "sync of one/ must not upload two/y.txt"
    assert not dav.exists(f"{area}/two/y.txt") or dav.get(f"{area}/two/y.txt") != y
    a.sync_ok(timeout=60)
    assert dav.get(f"{area}/two/y.txt") == y


def test_umount_waits_for_pending_uploads(mounter: Mounter, dav: WebDav, area: str) -> None:
    a = mounter.mount(LONG_DELAY, "drain_timeout=120s", "upload_chunk_size=4M")
    big, small = os.urandom(24 * MiB), b"small\n"
    write(a.home / area / "big.bin", big)
    write(a.home / area / "small.txt", small)
    assert len(a.status()["fs"]["uploads"]) == 2
    problems = mounter.unmount(a)
    assert problems == [], problems
    assert sha256(dav.get(f"{area}/big.bin")) == sha256(big)
    assert dav.get(f"{area}/small.txt") == small


def test_pending_upload_follows_local_rename(mounter: Mounter, dav: WebDav, area: str) -> None:
    a = mounter.mount(LONG_DELAY)
    d = a.home / area
    (d / "sub").mkdir()
    dav.put(f"{area}/existing.txt", b"v0\n")
    fresh, edited = b"a new file\n" * 50, b"v1 edited locally\n" * 50
    write(d / "draft.txt", fresh)
    write(d / "existing.txt", edited)
    os.rename(d / "draft.txt", d / "final.txt")
    os.rename(d / "existing.txt", d / "sub" / "moved.txt")
    assert (d / "final.txt").read_bytes() == fresh
    a.sync_ok(timeout=60)
    assert dav.get(f"{area}/final.txt") == fresh
    assert dav.get(f"{area}/sub/moved.txt") == edited
    assert not dav.exists(f"{area}/draft.txt")
    assert not dav.exists(f"{area}/existing.txt")
    assert sorted(dav.names(area)) == ["final.txt", "sub"], "no conflict copies or leftovers"
    assert dav.names(f"{area}/sub") == ["moved.txt"]
    assert a.status()["fs"]["conflicts"] == []


def test_pending_upload_of_deleted_file_does_not_land(mounter: Mounter, dav: WebDav, area: str) -> None:
    a = mounter.mount(LONG_DELAY)
    d = a.home / area
    dav.put(f"{area}/existing.txt", b"v0\n")
    write(d / "scratch.txt", b"never meant to stay\n")
    write(d / "existing.txt", b"v1, then deleted\n")
    os.unlink(d / "scratch.txt")
    os.unlink(d / "existing.txt")
    assert a.status()["fs"]["uploads"] == [], "a deleted file must not stay pending"
    a.sync_ok(timeout=60)
    assert dav.names(area) == [], f"deleted files landed on the server: {dav.names(area)}"
    assert a.status()["fs"]["conflicts"] == []


def test_state_xattr_goes_dirty_then_clean(mounter: Mounter, dav: WebDav, area: str) -> None:
    a = mounter.mount("upload_delay=2s")
    f = a.home / area / "state.txt"
    data = b"watch my state\n" * 10
    write(f, data)
    assert state_of(f) == "dirty"
    wait_for(lambda: state_of(f) == "clean", 60, "user.meshfs.state to become clean")
    assert dav.get(f"{area}/state.txt") == data


def test_writer_reopening_during_upload_cancels_and_redoes_it(
    mounter: Mounter, dav: WebDav, area: str, tmp_path: Path
) -> None:
    size = 256 * MiB
    original = tmp_path / "original.bin"
    make_data_file(original, size, seed=9)
    a = mounter.mount("upload_delay=0.2s", "upload_chunk_size=16M")
    f = a.home / area / "big.bin"
    shutil.copyfile(original, f)

    def uploading() -> dict[str, object] | None:
        for u in a.status()["fs"]["uploads"]:
            if u["path"] == f"home/{area}/big.bin" and u["state"] == "uploading" and int(u["done"]) > 0:
                return dict(u)
        return None

    progress = wait_for(uploading, 60, "the upload to be running with progress in `meshfs status`")
    assert progress is not None
    assert progress["size"] == size and 0 < int(str(progress["done"])) <= size, progress
    patch = b"rewritten while the upload ran\n" * 64
    with open(f, "r+b") as w:  # a writer reopens: the running upload is cancelled, redone after close
        w.seek(0)
        w.write(patch)
    a.sync_ok(timeout=240)
    data = bytearray(original.read_bytes())
    data[: len(patch)] = patch
    assert dav.sha256(f"{area}/big.bin") == (sha256(bytes(data)), size)
    assert sorted(dav.names(area)) == ["big.bin"], "a cancelled upload must not turn into a conflict copy"
    assert a.status()["fs"]["conflicts"] == []
