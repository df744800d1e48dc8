"""Write-back races the 10-minute soak (tests/hostile/test_soak.py, issue 9) found, reproduced exactly.

The filesystem runs in this process (MeshFilesystem against the dev Reva: real server, real cache store,
real write-back; no kernel), so that a race the soak hit once in ~100,000 operations can be forced: the
store is wrapped to let a pending upload land at the one moment that matters.

1. An open of a dirty file passes the node's last known resource to the cache store instead of the
   server's state (a dirty file keeps its local content). When the file's upload landed between that
   decision and the store's open, the store took the older resource for a new remote version and reset
   the entry to it: a read saw its old size (the soak read 0 bytes), and a write took its etag as base,
   so the next upload was refused and went up as a false conflict copy.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from meshfs.config import load_config
from meshfs.fuse import RequestContext, WritePayload
from meshfs.vfs.filesystem import MeshFilesystem
from meshfs.vfs.tree import HOME_INODE

pytestmark = [pytest.mark.reva]

CTX = RequestContext(uid=os.getuid(), gid=os.getgid(), pid=os.getpid())


@pytest.fixture
async def fs(reva: Any, tmp_path: Path) -> AsyncIterator[MeshFilesystem]:
    """einstein's filesystem in this process (uploads only when asked: upload_delay=1h)."""
    pw = tmp_path / "password"
    pw.write_text(reva.einstein.password + "\n")
    pw.chmod(0o600)
    config = load_config(
        options="tls=false,upload_delay=1h,dir_poll_interval=0",
        flags={
            "source": f"cs3://einstein@{reva.gateway}",
            "password_file": os.fspath(pw),
            "cache_dir": os.fspath(tmp_path / "cache"),
        },
        require=("source",),
    )
    mesh = MeshFilesystem(config)
    async with trio.open_nursery() as nursery:
        await mesh.start(nursery)
        try:
            yield mesh
        finally:
            with trio.move_on_after(60):
                await mesh.drain()
            nursery.cancel_scope.cancel()


async def write_file(fs: MeshFilesystem, parent: int, name: str, data: bytes) -> int:
    """create + write + release, as `open(O_CREAT|O_TRUNC|O_WRONLY)`, write, close do; the inode."""
    ops = fs.operations
    fi, attr = await ops.create(parent, name.encode(), 0o100644, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, CTX)
    assert await ops.write_buf(fi.fh, 0, WritePayload(memoryview(data))) == len(data)
    await ops.release(fi.fh, os.O_WRONLY, 0, False)
    return attr.st_ino


async def read_file(fs: MeshFilesystem, inode: int, size: int) -> bytes:
    ops = fs.operations
    fi = await ops.open(inode, os.O_RDONLY, CTX)
    try:
        return bytes(await ops.read(fi.fh, 0, size))
    finally:
        await ops.release(fi.fh, os.O_RDONLY, 0, False)


def land_upload_before_next_open(fs: MeshFilesystem, key: str) -> Callable[[], bool]:
    """Wrap the store so that the next open of `key` first waits for the file's pending upload to land
    (it runs in a worker thread: the upload runs on the trio loop meanwhile). Returns `fired()`."""
    store = fs.store
    assert store is not None and fs.writeback is not None
    real = store.open_file
    wb = fs.writeback
    fired: list[bool] = []

    def open_file(k: str, **kw: Any) -> Any:
        if k == key and not fired:
            fired.append(True)
            assert store.get_pending(k) is not None, "the file should still be dirty here"
            trio.from_thread.run(wb.flush, k)  # the upload lands now, between check and open
            assert store.get_pending(k) is None
        return real(k, **kw)

    store.open_file = open_file  # type: ignore[method-assign]
    return lambda: bool(fired)


async def make_dir(fs: MeshFilesystem) -> int:
    attr = await fs.operations.mkdir(HOME_INODE, f"wbsoakreg-{uuid.uuid4().hex[:10]}".encode(), 0o755, CTX)
    return attr.st_ino


async def test_read_of_a_file_whose_upload_lands_during_the_open(fs: MeshFilesystem) -> None:
    d = await make_dir(fs)
    data = os.urandom(70000)
    ino = await write_file(fs, d, "f", data)  # created empty on the server, dirty here
    node = fs.inodes.get(ino)
    assert node is not None and node.rid is not None
    fired = land_upload_before_next_open(fs, str(node.rid))
    got = await read_file(fs, ino, len(data) + 10)
    assert fired()
    assert len(got) == len(data) and got == data, f"read {len(got)} bytes of {len(data)}"


async def test_rewrite_of_a_file_whose_upload_lands_during_the_open_is_no_conflict(
    fs: MeshFilesystem, reva: Any
) -> None:
    d = await make_dir(fs)
    ops = fs.operations
    ino = await write_file(fs, d, "f", b"first version")
    node = fs.inodes.get(ino)
    assert node is not None and node.rid is not None
    key = str(node.rid)
    fired = land_upload_before_next_open(fs, key)
    # rewrite (open O_TRUNC of the existing file) while its first version goes up
    fi = await ops.open(ino, os.O_WRONLY | os.O_TRUNC, CTX)
    assert fired()
    assert await ops.write_buf(fi.fh, 0, WritePayload(memoryview(b"second version"))) == 14
    await ops.release(fi.fh, os.O_WRONLY, 0, False)
    assert fs.writeback is not None
    await fs.writeback.flush(key)
    assert fs.writeback.conflicts == [], f"false conflict: {fs.writeback.conflicts}"
    entries = await fs.tree.listing(fs.inodes.get(d))  # type: ignore[arg-type]
    assert sorted(entries) == ["f"]
    fs.tree.invalidate(node)
    assert await read_file(fs, ino, 100) == b"second version"
    res = await fs.tree.stat(node, force=True)
    assert res is not None and res.size == len(b"second version")
