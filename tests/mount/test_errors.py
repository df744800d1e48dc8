"""Errors: a gateway that is not there at mount time, and one that goes away under an established mount.

The outage is made by the shared fault proxy (tests/faultproxy.py) between the mount and the gateway
(metadata only: the data gateway URL comes from the server and is reached directly; tests/hostile puts a
second proxy in front of it). Modes used here: "blackhole" (connections stay open, nothing passes) and
"reset" (every connection is reset, RST, and so is every new one).
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import ProxiedMounter
from mounthelp import WebDav, run_meshfs
from rig import free_port, one_line

pytestmark = [pytest.mark.reva, pytest.mark.fuse]

CALL_TIMEOUT = 2.0
UNAVAILABLE_TIMEOUT = 4.0
# an operation on a dead server must fail within unavailable_timeout (+ the call running when it expires)
EIO_BOUND = UNAVAILABLE_TIMEOUT + CALL_TIMEOUT + 3.0
OUTAGE_OPTIONS = (
    f"call_timeout={CALL_TIMEOUT:g}s",
    f"unavailable_timeout={UNAVAILABLE_TIMEOUT:g}s",
    "transfer_timeout=5s",
    "dir_poll_interval=0",
)


def test_mount_with_nothing_listening_fails_with_one_line(reva: Any, tmp_path: Path) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    pw = tmp_path / "pw"
    pw.write_text(reva.einstein.password)
    pw.chmod(0o600)
    port = free_port()
    t0 = time.monotonic()
    proc = run_meshfs(
        "mount", f"cs3://einstein@127.0.0.1:{port}", os.fspath(mp), "--password-file", os.fspath(pw),
        "--cache-dir", os.fspath(tmp_path / "cache"), "-o", f"tls=false,call_timeout={CALL_TIMEOUT:g}s",
        timeout=120,
    )  # fmt: skip
    elapsed = time.monotonic() - t0
    assert proc.returncode != 0
    line = one_line(proc.stderr)
    assert f"127.0.0.1:{port}" in line, line
    assert elapsed < 60, f"took {elapsed:.1f} s"
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        assert os.fspath(mp) not in f.read()


def test_mount_with_a_wrong_password_fails_with_one_line(reva: Any, tmp_path: Path) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    pw = tmp_path / "pw"
    pw.write_text("not-the-password")
    pw.chmod(0o600)
    proc = run_meshfs(
        "mount", f"cs3://einstein@{reva.gateway}", os.fspath(mp), "--password-file", os.fspath(pw),
        "--cache-dir", os.fspath(tmp_path / "cache"), "-o", "tls=false", timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    one_line(proc.stderr)
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        assert os.fspath(mp) not in f.read()


async def in_thread(fn: Callable[..., Any], *args: Any, limit: float = 120.0) -> Any:
    """Run a blocking call (file system, CLI) off the trio loop that runs the proxy; bounded."""
    with trio.fail_after(limit):
        return await trio.to_thread.run_sync(lambda: fn(*args), abandon_on_cancel=True)


async def timed_errno(fn: Callable[..., Any], *args: Any) -> tuple[int | None, float]:
    t0 = time.monotonic()
    try:
        await in_thread(fn, *args, limit=EIO_BOUND + 60)
    except OSError as e:
        return e.errno, time.monotonic() - t0
    return None, time.monotonic() - t0


async def wait_listdir_ok(path: Path, timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result: list[str] = await in_thread(os.listdir, path, limit=timeout)
            return result
        except OSError as e:
            last = e
            await trio.sleep(0.2)
    raise AssertionError(f"{path} still failing {timeout:g} s after the server came back: {last!r}")


@pytest.mark.parametrize("outage", ["blackhole", "reset"])
async def test_ls_on_a_dead_gateway_is_eio_in_bounded_time_and_the_mount_recovers(
    outage: str,
    proxied_mount: ProxiedMounter,
    webdav: WebDav,
    tmp_path: Path,
) -> None:
    name = f"mt-outage-{outage}-{tmp_path.name[-12:]}-{os.getpid()}"
    try:
        async with proxied_mount(*OUTAGE_OPTIONS) as pm:
            mnt, proxy = pm.path, pm.proxy
            await in_thread(webdav.mkcol, name)
            await in_thread(webdav.put, f"{name}/f", b"x")
            proxy.set(outage)  # type: ignore[arg-type]
            # never listed by the mount: the listing needs the server
            code, elapsed = await timed_errno(os.listdir, mnt / "home" / name)
            assert code == errno.EIO, (
                f"expected EIO, got {errno.errorcode.get(code or 0, code)} after {elapsed:.1f} s"
            )
            # the daemon itself stays responsive
            status = await in_thread(run_meshfs, "status", os.fspath(mnt), "--json", limit=30)
            assert status.returncode == 0, status.stderr
            proxy.set("forward")
            assert await wait_listdir_ok(mnt / "home" / name, 30) == ["f"]
            assert await in_thread((mnt / "home" / name / "f").read_bytes) == b"x"
            # new work after the outage
            await in_thread((mnt / "home" / name / "g").write_bytes, b"after")
            await in_thread(run_meshfs, "sync", os.fspath(mnt / "home" / name), "--timeout", "60", limit=90)
            assert await in_thread(webdav.get, f"{name}/g") == b"after"
            # checked last so that a slow EIO does not hide whether the mount survives and recovers
            assert elapsed <= EIO_BOUND, f"EIO only after {elapsed:.1f} s (bound {EIO_BOUND:g} s)"
    finally:
        try:
            await in_thread(webdav.delete, name)
        except Exception:  # best effort cleanup of the server side
            pass


async def test_writes_during_an_outage_are_uploaded_when_the_server_is_back(
    proxied_mount: ProxiedMounter, webdav: WebDav, tmp_path: Path
) -> None:
    """Nothing is lost: data written and closed while the gateway is unreachable reaches it afterwards."""
    name = f"mt-outage-write-{tmp_path.name[-12:]}-{os.getpid()}"
    try:
        async with proxied_mount(*OUTAGE_OPTIONS, "upload_delay=0") as pm:
            mnt, proxy = pm.path, pm.proxy
            await in_thread(webdav.mkcol, name)
            await in_thread(webdav.put, f"{name}/f", b"before the outage")
            f = mnt / "home" / name / "f"
            assert await in_thread(f.read_bytes) == b"before the outage"
            fd = await in_thread(os.open, f, os.O_RDWR)
            proxy.set("reset")
            try:
                await in_thread(os.pwrite, fd, b"DURING", 0)
            finally:
                await in_thread(os.close, fd)
            assert await in_thread(f.read_bytes) == b"DURING the outage"
            proxy.set("forward")
            done = await in_thread(
                run_meshfs, "sync", os.fspath(mnt / "home" / name), "--timeout", "90", limit=120
            )
            assert done.returncode == 0, done.stderr
            assert await in_thread(webdav.get, f"{name}/f") == b"DURING the outage"
    finally:
        try:
            await in_thread(webdav.delete, name)
        except Exception:  # best effort cleanup of the server side
            pass


def test_second_daemon_on_the_same_cache_dir_is_refused(
    reva: Any, mount_factory: Callable[..., Path], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    first = mount_factory("einstein", cache_dir=cache)
    mp = tmp_path / "second"
    mp.mkdir()
    pw = tmp_path / "pw"
    pw.write_text(reva.einstein.password)
    pw.chmod(0o600)
    proc = run_meshfs(
        "mount", f"cs3://einstein@{reva.gateway}", os.fspath(mp), "--password-file", os.fspath(pw),
        "--cache-dir", os.fspath(cache), "-o", "tls=false", timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    one_line(proc.stderr)
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        assert os.fspath(mp) not in f.read()
    assert "home" in os.listdir(first)  # the first one is untouched
