"""A fake MeshFilesystem for the daemon/CLI tests (not a product): same shape, no server.

Owns: `FakeFilesystem` (start/operations/attach/status/sync/drain/command) serving a read-only tree
with one file, `/hello`, through the real meshfs.fuse Session. The daemon runs in a subprocess, so
behaviour is steered by environment variables and every call is appended to an event file:

  FAKEFS_EVENTS=PATH         append one line per call ("start", "attach", "drain-begin", "drain-end",
                             "sync PATH", "command NAME ARGS-JSON", "status", "destroy")
  FAKEFS_START_ERROR=TEXT    start() raises MeshError(TEXT) (a refused login, a dead server)
  FAKEFS_START_BLOCK=1       start() waits forever (a server that does not answer)
  FAKEFS_START_SECONDS=S     start() takes S seconds (a slow login / journal replay)
  FAKEFS_DRAIN_SECONDS=S     drain() takes S seconds (pending uploads), on trio's clock
  FAKEFS_DRAIN_ERROR=TEXT    drain() fails with MeshError(TEXT) (the server went away meanwhile)
  FAKEFS_SYNC_FAILURES=A;B   sync() reports these failures
  FAKEFS_SYNC_SECONDS=S      sync() takes S seconds
Must not import: meshfs.vfs, meshfs.cs3 (it replaces them).
"""

from __future__ import annotations

import errno
import json
import os
import stat
import time
from typing import Any

import trio

from meshfs.errors import MeshError, Unauthenticated
from meshfs.fuse import (
    ROOT_INODE,
    EntryAttributes,
    FileInfo,
    FUSEError,
    Operations,
    ReaddirToken,
    RequestContext,
    readdir_reply,
)

HELLO = b"hello from the fake filesystem\n"
HELLO_INODE = 2


def event(line: str) -> None:
    path = os.environ.get("FAKEFS_EVENTS")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


class FakeOperations(Operations):
    def __init__(self) -> None:
        self.now = time.time_ns()

    def _attr(self, inode: int) -> EntryAttributes:
        if inode == ROOT_INODE:
            return EntryAttributes(
                st_ino=ROOT_INODE,
                st_mode=stat.S_IFDIR | 0o755,
                st_nlink=2,
                st_uid=os.getuid(),
                st_gid=os.getgid(),
                st_mtime_ns=self.now,
                st_ctime_ns=self.now,
                st_atime_ns=self.now,
                entry_timeout=1,
                attr_timeout=1,
            )
        if inode == HELLO_INODE:
            return EntryAttributes(
                st_ino=HELLO_INODE,
                st_mode=stat.S_IFREG | 0o644,
                st_size=len(HELLO),
                st_blocks=1,
                st_uid=os.getuid(),
                st_gid=os.getgid(),
                st_mtime_ns=self.now,
                st_ctime_ns=self.now,
                st_atime_ns=self.now,
                entry_timeout=1,
                attr_timeout=1,
            )
        raise FUSEError(errno.ENOENT)

    async def lookup(self, parent_inode: int, name: bytes, ctx: RequestContext) -> EntryAttributes:
        if parent_inode == ROOT_INODE and name == b"hello":
            return self._attr(HELLO_INODE)
        raise FUSEError(errno.ENOENT)

    async def getattr(self, inode: int, ctx: RequestContext) -> EntryAttributes:
        return self._attr(inode)

    async def opendir(self, inode: int, ctx: RequestContext) -> int:
        if inode != ROOT_INODE:
            raise FUSEError(errno.ENOTDIR)
        return 0

    async def readdir(self, fh: int, start_id: int, token: ReaddirToken) -> None:
        if start_id == 0:
            readdir_reply(token, b"hello", self._attr(HELLO_INODE), 1)

    async def open(self, inode: int, flags: int, ctx: RequestContext) -> FileInfo:
        if inode != HELLO_INODE:
            raise FUSEError(errno.EISDIR)
        if flags & os.O_ACCMODE != os.O_RDONLY:
            raise FUSEError(errno.EROFS)
        return FileInfo(fh=1)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return HELLO[off : off + size]

    async def destroy(self) -> None:
        event("destroy")


class FakeFilesystem:
    """The MeshFilesystem interface the daemon uses, with no server behind it."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.operations = FakeOperations()
        self.session: Any = None

    async def start(self, nursery: trio.Nursery) -> None:
        event("start")
        if os.environ.get("FAKEFS_START_BLOCK"):
            await trio.sleep_forever()
        await trio.sleep(float(os.environ.get("FAKEFS_START_SECONDS", "0")))
        error = os.environ.get("FAKEFS_START_ERROR")
        if error:
            raise Unauthenticated(error, op="authenticate")

    def attach(self, session: Any) -> None:
        event("attach")
        self.session = session

    async def status(self) -> dict[str, object]:
        event("status")
        return {
            "server": str(self.config.server),
            "user": self.config.server.user,
            "uploads": 0,
            "locks": [],
            "errors": [],
        }

    async def sync(self, path: str | None) -> list[str]:
        event(f"sync {path}")
        await trio.sleep(float(os.environ.get("FAKEFS_SYNC_SECONDS", "0")))
        failures = os.environ.get("FAKEFS_SYNC_FAILURES")
        return failures.split(";") if failures else []

    async def drain(self) -> None:
        event("drain-begin")
        await trio.sleep(float(os.environ.get("FAKEFS_DRAIN_SECONDS", "0")))
        if error := os.environ.get("FAKEFS_DRAIN_ERROR"):
            raise MeshError(error, op="drain")
        event("drain-end")

    async def command(self, name: str, args: dict[str, object]) -> dict[str, object]:
        event(f"command {name} {json.dumps(args, sort_keys=True)}")
        if name == "fail":
            raise MeshError("the fake refuses", op=name)
        if name == "share":
            return {"shares": []}
        if name == "users":
            return {"users": []}
        return {"name": name, "args": args}
