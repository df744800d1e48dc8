"""Deterministic reproductions of what the 10-minute soak (tests/hostile/test_soak.py, issue 9) found on
the local view, through the real kernel and Reva. The timing is forced with the shared fault proxy
(tests/faultproxy.py) between the mount and the gateway: its latency delays every gRPC answer, while the
uploads' PUTs go straight to the data gateway.

1. A server answer that was already on its way when an upload landed (a listing asked just before) must
   not be recorded as the file's current state: the soak read 0 bytes from a just-uploaded file, whose
   size the kernel had been given from such an answer (READDIRPLUS of a `listdir`).
2. A node the kernel had forgotten, still held by a cached listing, must not replace the node made for
   the same inode since (see the test).
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import ProxiedMounter
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
    proxied_mount: ProxiedMounter, webdav: WebDav, tmp_path: Path
) -> None:
    name = f"soakreg-stale-{tmp_path.name[-12:]}-{os.getpid()}"
    try:
        async with proxied_mount(
            "dir_poll_interval=0",
            "upload_delay=1h",
            "attr_ttl=30s",  # the kernel keeps the directory's attributes: no GETATTR before the listing
        ) as pm:
            d = pm.path / "home" / name
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
                pm.proxy.set(latency=LATENCY)
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
                pm.proxy.set(latency=0.0)
                os.close(ffd)
                os.close(dfd)
            # the kernel's view of f right after that listing (READDIRPLUS gave it f's attributes: the
            # kernel uses them within the jiffy they arrived in even with a zero timeout)
            size = os.stat(d / "f").st_size
            assert sorted(names) == ["f", "g"]
            assert listed > 2 * LATENCY, (
                f"the listing came back after {listed:.1f} s: the timing did not hold"
            )
            # the daemon's view of f is the uploaded one, not the listing's older answer
            etag = await in_thread(server_etag, webdav, f"{name}/f")
            mine = (await in_thread(os.getxattr, d / "f", "user.meshfs.etag")).decode()
            assert (mine, size) == (etag, len(data)), "a stale listing answer replaced the uploaded state"
            assert await in_thread((d / "f").read_bytes) == data
    finally:
        try:
            await in_thread(webdav.delete, name)
        except Exception:  # best effort cleanup of the server side
            pass


def drop_kernel_caches() -> None:
    """Evict every unused dentry and inode of the machine: the kernel sends FORGET for them."""
    if os.geteuid() != 0:
        pytest.skip("needs root to write /proc/sys/vm/drop_caches (evicts inodes: FORGET to the daemon)")
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("2\n")


@contextlib.contextmanager
def listed_dir(
    mount_factory: Callable[..., Path], webdav: WebDav, tag: str, files: dict[str, bytes]
) -> Iterator[Path]:
    """A fresh mount (no directory polling, no upload before `meshfs sync`) with a new directory
    home/<tag>-... holding `files` and a non-empty subdirectory s/ (so `rmdir s` fails without
    changing the server), all uploaded and listed once: the daemon keeps that listing and a node for
    each file. Yields the directory; unmounts, then deletes it on the server (best effort)."""
    mnt = mount_factory("einstein", "dir_poll_interval=0", "upload_delay=1h")
    name = f"{tag}-{uuid.uuid4().hex[:12]}-{os.getpid()}"
    d = mnt / "home" / name
    try:
        d.mkdir()
        for file, data in files.items():
            (d / file).write_bytes(data)
        (d / "s").mkdir()
        (d / "s" / "x").write_bytes(b"x")
        done = run_meshfs("sync", os.fspath(d), "--timeout", "60")
        assert done.returncode == 0, done.stderr
        assert sorted(os.listdir(d)) == sorted([*files, "s"])  # the listing the daemon keeps (old nodes)
        yield d
    finally:
        run_meshfs("umount", os.fspath(mnt), "--timeout", "60", timeout=90)
        try:
            webdav.delete(name)
        except Exception:  # best effort cleanup of the server side
            pass


def test_a_forgotten_node_in_a_cached_listing_does_not_replace_the_live_one(
    mount_factory: Callable[..., Path], webdav: WebDav
) -> None:
    """2. After the kernel forgot a file, the daemon made a new node for its inode (a lookup asked the
    server) while the directory's cached listing still held the old one. Serving that listing later put
    the old node back in the inode table in place of the live one, which had the open handle and the
    local size and mtime: the kernel was then told the server's older mtime of a file being written,
    and a rename or unlink acted on a node without the open handle (its upload-rename would move the
    data under the writer)."""
    with listed_dir(mount_factory, webdav, "soakreg-forget", {"f": b"1"}) as d:
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)  # d itself stays known (its etag record too)
        drop_kernel_caches()  # the kernel forgets f's inode: the daemon drops its node
        time.sleep(1.5)  # past the 1 s TTLs: the listing is served only after an etag check from now on
        # (paths relative to the open d from here on: a path walk would look d up again, and the
        # answer would confirm d's etag)
        with pytest.raises(OSError) as exc:
            os.rmdir("s", dir_fd=dfd)  # a local change of d that changes nothing on the server
        assert exc.value.errno == errno.ENOTEMPTY
        time.sleep(1.5)  # the check that rmdir made is a TTL old: the listing cannot be confirmed now
        fd = os.open("f", os.O_WRONLY, dir_fd=dfd)  # the lookup asks the server: a new node for f's inode
        try:
            written = time.time()
            assert os.write(fd, b"x" * 100) == 100  # local size and mtime on the new node
            _force_stat(d)  # the daemon checks the etag of d again: unchanged
            assert sorted(os.listdir(d)) == ["f", "s"]  # the cached listing, confirmed by that check
            time.sleep(1.5)  # the kernel's attributes of f expire: the next stat asks the daemon
            st = os.stat(d / "f")
            # (the size would survive: the cache journal knows it; the write's mtime lives in the node)
            assert st.st_size == 100
            assert st.st_mtime >= written - 1.0, "the old node of f came back (the server's mtime)"
        finally:
            os.close(fd)
            os.close(dfd)
        assert (d / "f").read_bytes() == b"x" * 100


def _force_stat(d: Path) -> None:
    """A forced Stat of directory `d` by the daemon (lock state is always asked): its etag is checked."""
    try:
        os.getxattr(d, "user.meshfs.lock")
    except OSError as e:
        assert e.errno == errno.ENODATA, e


def test_a_rename_over_after_the_kernel_forgot_the_source_keeps_the_file_reachable(
    mount_factory: Callable[..., Path], webdav: WebDav
) -> None:
    """3. The soak's `write f18: FileNotFoundError`, then ENOENT on that name for ~230 s. The kernel had
    forgotten the source of a rename over an existing file (memory pressure); the daemon had made a new
    node for its inode since, while a cached listing still held the old one. The rename took the old
    node from the listing and gave it the target's resource id (rename over = upload to the target +
    delete of the source), leaving the live node with the deleted source's id: every open of the new
    name asked the server for that id (ENOENT) until the kernel forgot the inode again."""
    files = {"a": b"content of a", "b": b"content of b"}
    with listed_dir(mount_factory, webdav, "soakreg-renover", files) as d:
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)  # d stays known; paths relative to it below
        try:
            drop_kernel_caches()  # the kernel forgets a and b: the daemon drops their nodes
            time.sleep(1.5)  # past the 1 s TTLs
            with pytest.raises(OSError) as exc:
                os.rmdir("s", dir_fd=dfd)  # a local change of d that changes nothing on the server
            assert exc.value.errno == errno.ENOTEMPTY
            time.sleep(1.5)  # the listing cannot be confirmed now: a lookup of a asks the server
            assert os.stat("a", dir_fd=dfd).st_size == len(b"content of a")  # a new node for a's inode
            _force_stat(d)  # the etag of d is checked again: the old listing is confirmed
            os.rename("a", "b", src_dir_fd=dfd, dst_dir_fd=dfd)  # over an existing file
            with open(os.open("b", os.O_RDONLY, dir_fd=dfd), "rb") as f:
                assert f.read() == b"content of a"
            with open(os.open("b", os.O_WRONLY | os.O_TRUNC, dir_fd=dfd), "wb") as f:
                f.write(b"rewritten")
        finally:
            os.close(dfd)
        assert sorted(os.listdir(d)) == ["b", "s"]
        assert (d / "b").read_bytes() == b"rewritten"
        done = run_meshfs("sync", os.fspath(d), "--timeout", "60")
        assert done.returncode == 0, done.stderr
        assert webdav.get(f"{d.name}/b") == b"rewritten"
