"""A server outage during a large upload, on a private Reva stack of our own (revactl instance `wb`):
the upload retries, reads of cached data keep working, reads of uncached data fail with EIO after the
(short) timeouts, `meshfs sync` reports the pending file while the server is away, and after the
restart `meshfs sync` succeeds with the server's sha256 equal to the original.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from wbkit import (  # type: ignore[import-not-found]
    MiB,
    Mounter,
    PrivateStack,
    WebDav,
    errno_name,
    is_mounted,
    make_data_file,
    sha256,
    wait_for,
)

pytestmark = [pytest.mark.reva, pytest.mark.fuse]

TIMEOUTS = ("call_timeout=2s", "transfer_timeout=3s", "unavailable_timeout=3s")
EIO_BOUND = 30.0  # seconds an uncached read may take to fail during the outage


def _upload_started(var_dir: Path, since: float) -> bool:
    uploads = var_dir / "data" / "uploads"
    try:
        return any(
            e.name.endswith(".info") and e.stat().st_mtime >= since
            and os.path.getsize(e.path[: -len(".info")]) > 0
            for e in os.scandir(uploads)
        )  # fmt: skip
    except FileNotFoundError:
        return False


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("size_mib", [256, pytest.param(2048, marks=pytest.mark.long)])
def test_server_outage_during_upload(
    private_reva: PrivateStack, private_mounter: Mounter, reva: Any, tmp_path: Path, size_mib: int
) -> None:
    u = reva.einstein
    dav = WebDav(private_reva.http_url, u.username, u.password)
    area = f"wb-outage-{uuid.uuid4().hex[:8]}"
    dav.mkcol(area)
    cached, uncached = os.urandom(4 * MiB), os.urandom(4 * MiB)
    edit = b"edited during the outage\n" * 10
    cached_after = edit + cached[len(edit) :]
    dav.put(f"{area}/cached.bin", cached)
    dav.put(f"{area}/uncached.bin", uncached)
    size = size_mib * MiB
    original = tmp_path / "original.bin"
    digest = make_data_file(original, size, seed=size_mib)

    a = private_mounter.mount("upload_delay=0.2s", "upload_chunk_size=16M", "drain_timeout=300s", *TIMEOUTS)
    d = a.home / area
    assert (d / "cached.bin").read_bytes() == cached  # now in the cache
    since = time.time() - 1
    shutil.copyfile(original, d / "big.bin")
    var_dir = Path(private_reva.env_vars["REVA_VAR_DIR"])
    wait_for(lambda: _upload_started(var_dir, since), 60, "the upload to reach the server")
    private_reva.down()
    problems: list[str] = []  # soft checks, reported at the end so the resume is checked too
    edited = False
    try:
        # cached data keeps working
        for name, want in (("cached.bin", sha256(cached)), ("big.bin", digest)):  # before the edit below
            t0 = time.monotonic()
            try:
                if sha256((d / name).read_bytes()) != want:
                    problems.append(f"outage: cached {name} reads wrong data")
            except OSError as e:
                took = time.monotonic() - t0
                problems.append(f"outage: reading cached {name} failed after {took:.1f} s: {errno_name(e)}")
        # uncached data: EIO after the timeout, not a hang
        t0 = time.monotonic()
        try:
            (d / "uncached.bin").read_bytes()
            problems.append("outage: reading uncached data succeeded")
        except OSError as e:
            took = time.monotonic() - t0
            if e.errno != errno.EIO:
                problems.append(f"outage: uncached read gave {errno_name(e)}, expected EIO")
            if took > EIO_BOUND:
                problems.append(f"outage: the uncached read took {took:.1f} s to fail")
        # fsync while the server is away returns the error (not success, not a hang)
        t0 = time.monotonic()
        try:
            with open(d / "cached.bin", "r+b") as w:
                w.write(edit)
                w.flush()
                edited = True
                try:
                    os.fsync(w.fileno())
                    problems.append("outage: fsync reported success while the server was down")
                except OSError as e:
                    if e.errno != errno.EIO:
                        problems.append(f"outage: fsync gave {errno_name(e)}, expected EIO")
        except OSError as e:
            problems.append(f"outage: writing cached.bin failed: {errno_name(e)}")
        took = time.monotonic() - t0
        if took > EIO_BOUND:
            problems.append(f"outage: the failing fsync took {took:.1f} s")
        # sync while the server is away: exit != 0 naming the file
        proc = a.sync(timeout=8)
        assert proc.returncode != 0, "meshfs sync succeeded while the server was down"
        assert f"{area}/big.bin" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
        uploads = a.status()["fs"]["uploads"]
        assert f"home/{area}/big.bin" in [x["path"] for x in uploads], uploads
    finally:
        private_reva.up()
    a.sync_ok(timeout=240)
    got = dav.sha256(f"{area}/big.bin")
    assert got == (digest, size), (
        f"after the restart and a successful sync the server has {got[1]} bytes; {problems}"
    )
    if edited:
        assert dav.get(f"{area}/cached.bin") == cached_after, (
            f"the edit made during the outage is lost; {problems}"
        )
    assert sorted(dav.names(area)) == ["big.bin", "cached.bin", "uncached.bin"]
    assert a.status()["fs"]["conflicts"] == []
    assert (d / "uncached.bin").read_bytes() == uncached  # and the mount works again
    assert sha256((d / "big.bin").read_bytes()) == digest
    assert not problems, problems


def test_umount_during_outage_keeps_pending_data_for_the_next_mount(
    private_reva: PrivateStack, private_mounter: Mounter, reva: Any, tmp_path: Path
) -> None:
    """`meshfs umount` while the server is away gives up after drain_timeout, and the next mount with
    the same cache dir uploads what was left once the server is back: nothing is lost."""
    u = reva.einstein
    dav = WebDav(private_reva.http_url, u.username, u.password)
    area = f"wb-drain-{uuid.uuid4().hex[:8]}"
    dav.mkcol(area)
    cache = tmp_path / "cache"
    a = private_mounter.mount("upload_delay=300s", "drain_timeout=3s", *TIMEOUTS, cache_dir=cache)
    data = os.urandom(5 * MiB)
    (a.home / area / "pending.bin").write_bytes(data)
    private_reva.down()
    try:
        t0 = time.monotonic()
        private_mounter.unmount(a)  # what had to be forced is not the point here: the data is
        took = time.monotonic() - t0
        assert not is_mounted(a.mountpoint)
        assert took < 90, f"umount during the outage took {took:.0f} s with drain_timeout=3s"
    finally:
        private_reva.up()
    assert not dav.exists(f"{area}/pending.bin") or dav.get(f"{area}/pending.bin") != data
    b = private_mounter.mount(*TIMEOUTS, cache_dir=cache)
    b.sync_ok(timeout=120)
    assert dav.get(f"{area}/pending.bin") == data
    assert (b.home / area / "pending.bin").read_bytes() == data


def _server_bytes(var_dir: Path, since: float) -> int:
    """The most bytes any tus upload started since `since` holds on the private stack."""
    best = 0
    try:
        for e in os.scandir(var_dir / "data" / "uploads"):
            if e.name.endswith(".info") and e.stat().st_mtime >= since:
                try:
                    best = max(best, os.path.getsize(e.path[: -len(".info")]))
                except OSError:
                    pass
    except FileNotFoundError:
        pass
    return best


@pytest.mark.parametrize("stop_at", ["last-chunk"])
def test_server_stopped_at_a_chunk_boundary_then_restarted(
    private_reva: PrivateStack, private_mounter: Mounter, reva: Any, tmp_path: Path, stop_at: str
) -> None:
    """The server goes down while it receives the middle / the last chunk of a tus upload. After the
    restart `meshfs sync` must only succeed once the server really has the file (an upload whose
    bytes all arrived but was never finished by the server is not an upload)."""
    u = reva.einstein
    dav = WebDav(private_reva.http_url, u.username, u.password)
    area = f"wb-stop-{uuid.uuid4().hex[:8]}"
    dav.mkcol(area)
    size, chunk = 64 * MiB, 16 * MiB
    original = tmp_path / "original.bin"
    digest = make_data_file(original, size, seed=64)
    a = private_mounter.mount("upload_delay=0.2s", "upload_chunk_size=16M", "drain_timeout=300s", *TIMEOUTS)
    var_dir = Path(private_reva.env_vars["REVA_VAR_DIR"])
    since = time.time() - 1
    shutil.copyfile(original, a.home / area / "big.bin")
    want = size // 2 if stop_at == "half" else size - chunk + 1
    wait_for(lambda: _server_bytes(var_dir, since) >= want, 60, f"the server to hold {want} bytes")
    private_reva.down()
    private_reva.up()
    a.sync_ok(timeout=240)
    got = dav.sha256(f"{area}/big.bin")
    assert got == (digest, size), (
        f"server stopped at {stop_at}: after a successful sync it has {got[1]} bytes"
    )
    assert sorted(dav.names(area)) == ["big.bin"]
    assert a.status()["fs"]["conflicts"] == []
