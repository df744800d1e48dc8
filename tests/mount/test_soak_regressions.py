"""Deterministic reproductions of what the 10-minute soak (tests/hostile/test_soak.py, issue 9) found on
the local view, through the real kernel and Reva. The timing is forced with the shared fault proxy
(tests/faultproxy.py) between the mount and the gateway: its latency delays every gRPC answer, while the
uploads' PUTs go straight to the data gateway.

1. A server answer that was already on its way when an upload landed (a listing asked just before) must
   not be recorded as the file's current state: the soak read 0 bytes from a just-uploaded file, whose
   size the kernel had been given from such an answer (READDIRPLUS of a `listdir`).
"""

from __future__ import annotations

import os
import threading
import time
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from faultproxy import FaultProxy
from mounthelp import WebDav, run_meshfs

pytestmark = [pytest.mark.reva, pytest.mark.fuse]

LATENCY = 2.0  # s per direction: each gRPC call takes >= 2 * LATENCY


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await trio.to_thread.run_sync(lambda: fn(*args))


def server_etag(webdav: WebDav, rel: str) -> str:
    body = b'<?xml version="1.0"?><d:propfind xmlns:d="DAV:"><d:prop><d:getetag/></d:prop></d:propfind>'
    req = urllib.request.Request(
        webdav.url(rel), data=body, method="PROPFIND", headers={**webdav.headers, "Depth": "0"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        tree = ET.fromstring(resp.read())
    tag = next(tree.iter("{DAV:}getetag"))
    return (tag.text or "").strip()


async def test_a_listing_answered_before_an_upload_landed_does_not_undo_it(
    reva: Any, mount_factory: Callable[..., Path], webdav: WebDav, nursery: trio.Nursery, tmp_path: Path
) -> None:
    host, port = reva.gateway.rsplit(":", 1)
    proxy = FaultProxy(int(port), host)
    proxy_port = await nursery.start(proxy.serve)
    mnt: Path = await in_thread(
        lambda: mount_factory(
            "einstein",
            "dir_poll_interval=0",
            "upload_delay=1h",
            "attr_ttl=30s",  # the kernel keeps the directory's attributes: no GETATTR before the listing
            gateway=f"127.0.0.1:{proxy_port}",
        )
    )
    name = f"soakreg-stale-{tmp_path.name[-12:]}-{os.getpid()}"
    d = mnt / "home" / name
    try:
        await in_thread(d.mkdir)
        await in_thread((d / "f").write_bytes, b"")  # on the server at once (an empty create)
        await in_thread((d / "g").write_bytes, b"g0")
        done = await in_thread(run_meshfs, "sync", os.fspath(d), "--timeout", "60")
        assert done.returncode == 0, done.stderr
        assert sorted(await in_thread(os.listdir, d)) == ["f", "g"]  # the directory's etag is known
        data = b"x" * 70000
        await in_thread((d / "f").write_bytes, data)  # dirty, not uploaded (upload_delay=1h)
        await in_thread((d / "g").write_bytes, b"g1")
        done = await in_thread(run_meshfs, "sync", os.fspath(d / "g"), "--timeout", "60")
        assert done.returncode == 0, done.stderr  # g's upload drops the cached listing of d
        dfd = await in_thread(os.open, d, os.O_RDONLY | os.O_DIRECTORY)  # no path walk later
        ffd = await in_thread(os.open, d / "f", os.O_RDONLY)
        try:
            proxy.set(latency=LATENCY)
            # f's upload: InitiateFileUpload reaches the server after LATENCY, its answer comes back after
            # 2 * LATENCY, then the PUT (direct) lands and the daemon records it
            t0 = time.monotonic()
            uploading = threading.Thread(target=os.fsync, args=(ffd,))
            uploading.start()
            await trio.sleep(LATENCY / 2)
            # a listing asked meanwhile is answered by the server before the PUT (at 1.5 * LATENCY) and
            # reaches the daemon after the upload was recorded (at 2.5 * LATENCY)
            names = await in_thread(os.listdir, dfd)
            listed = time.monotonic() - t0
            await in_thread(uploading.join, 60)
            assert not uploading.is_alive()
        finally:
            proxy.set(latency=0.0)
            os.close(ffd)
            os.close(dfd)
        assert sorted(names) == ["f", "g"]
        assert listed > 2 * LATENCY, f"the listing came back after {listed:.1f} s: the timing did not hold"
        # the daemon's and the kernel's view of f is the uploaded one, not the listing's older answer
        etag = await in_thread(server_etag, webdav, f"{name}/f")
        mine = (await in_thread(os.getxattr, d / "f", "user.meshfs.etag")).decode()
        size = (await in_thread(os.stat, d / "f")).st_size
        assert (mine, size) == (etag, len(data)), "a stale listing answer replaced the uploaded state"
        assert await in_thread((d / "f").read_bytes) == data
    finally:
        proxy.set(latency=0.0)
        await in_thread(lambda: run_meshfs("umount", os.fspath(mnt), "--timeout", "60", timeout=90))
        try:
            await in_thread(webdav.delete, name)
        except Exception:  # best effort cleanup of the server side
            pass
