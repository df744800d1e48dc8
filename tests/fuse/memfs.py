"""In-memory filesystem for the meshfs.fuse tests and benchmark (not a product).

Owns: `MemFS` (an `Operations` with inodes, hard links, xattrs, a lock table that decides
fcntl/flock conflicts and records every lock request it saw) plus test hooks (a handler that
raises, a handler that hangs).
Must not import: meshfs modules other than meshfs.fuse.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import trio

from meshfs.fuse import (
    F_RDLCK,
    F_UNLCK,
    F_WRLCK,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    ROOT_INODE,
    EntryAttributes,
    FileInfo,
    FUSEError,
    Lock,
    Operations,
    ReaddirToken,
    RequestContext,
    SetattrFields,
    StatvfsData,
    readdir_reply,
)

XATTR_CREATE = 1
XATTR_REPLACE = 2


@dataclass(slots=True)
class Node:
    ino: int
    mode: int
    uid: int = 0
    gid: int = 0
    nlink: int = 1
    rdev: int = 0
    data: bytearray = field(default_factory=bytearray)
    target: bytes = b""
    #: name -> inode (directories); insertion ordered, with a stable id per name for readdir
    entries: dict[bytes, int] = field(default_factory=dict)
    entry_ids: dict[bytes, int] = field(default_factory=dict)
    next_id: int = 1
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    atime_ns: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    lookups: int = 0
    opens: int = 0
    parent: int = 0


@dataclass(frozen=True, slots=True)
class HeldLock:
    owner: int
    start: int
    end: int
    type: int
    pid: int
    flock: bool
    fh: int = 0


@dataclass(frozen=True, slots=True)
class LockRequest:
    """What the memfs saw: op is 'getlk', 'setlk', 'setlkw', 'flush' or 'release'."""

    op: str
    inode: int
    owner: int
    lock: Lock | None
    outcome: str


class MemFS(Operations):
    """A complete in-memory filesystem. Knobs for tests: `hang_on` (names whose lookup hangs until
    `release_hang` is set; names starting with b"scoped" wait inside a cancel scope of their own),
    `raise_on` (names whose lookup raises RuntimeError)."""

    def __init__(self, *, timeout: float = 1.0) -> None:
        self.timeout = timeout
        now = time.time_ns()
        root = Node(ROOT_INODE, stat.S_IFDIR | 0o755, nlink=2, atime_ns=now, mtime_ns=now, ctime_ns=now)
        root.parent = ROOT_INODE
        self.nodes: dict[int, Node] = {ROOT_INODE: root}
        self.next_ino = 2
        self.handles: dict[int, int] = {}  # fh -> inode
        self.next_fh = 1
        self.locks: dict[int, list[HeldLock]] = {}
        self.lock_log: list[LockRequest] = []
        self.lock_changed = trio.Event()
        self.hang_on: set[bytes] = set()
        self.raise_on: set[bytes] = set()
        self.release_hang = trio.Event()
        self.hanging = 0
        self.cancelled = 0
        self.forgotten: int = 0
        self.destroyed = False
        #: called (in the trio thread) at the start of every read: hook(fh, off, size)
        self.read_hook: Callable[[int, int, int], None] | None = None

    async def destroy(self) -> None:
        self.destroyed = True

    # ------------------------------------------------------------------ helpers
    def attr(self, node: Node) -> EntryAttributes:
        return EntryAttributes(
            st_ino=node.ino, entry_timeout=self.timeout, attr_timeout=self.timeout, st_mode=node.mode,
            st_nlink=node.nlink, st_uid=node.uid, st_gid=node.gid, st_rdev=node.rdev,
            st_size=len(node.target) if stat.S_ISLNK(node.mode) else len(node.data),
            st_blocks=(len(node.data) + 511) // 512, st_atime_ns=node.atime_ns, st_mtime_ns=node.mtime_ns,
            st_ctime_ns=node.ctime_ns,
        )  # fmt: skip

    def node(self, ino: int) -> Node:
        try:
            return self.nodes[ino]
        except KeyError:
            raise FUSEError(errno.ENOENT) from None

    def dir(self, ino: int) -> Node:
        n = self.node(ino)
        if not stat.S_ISDIR(n.mode):
            raise FUSEError(errno.ENOTDIR)
        return n

    def _new(self, parent: Node, name: bytes, mode: int, ctx: RequestContext) -> Node:
        if name in parent.entries:
            raise FUSEError(errno.EEXIST)
        if len(name) > 255:
            raise FUSEError(errno.ENAMETOOLONG)
        now = time.time_ns()
        node = Node(self.next_ino, mode, uid=ctx.uid, gid=ctx.gid, atime_ns=now, mtime_ns=now, ctime_ns=now)
        self.next_ino += 1
        self.nodes[node.ino] = node
        if stat.S_ISDIR(mode):
            node.nlink = 2
            node.parent = parent.ino
            parent.nlink += 1
        self._link(parent, name, node)
        node.lookups += 1
        return node

    def _link(self, parent: Node, name: bytes, node: Node) -> None:
        parent.entries[name] = node.ino
        parent.entry_ids[name] = parent.next_id
        parent.next_id += 1
        parent.mtime_ns = parent.ctime_ns = time.time_ns()

    def _unlink(self, parent: Node, name: bytes) -> Node:
        ino = parent.entries.pop(name)
        parent.entry_ids.pop(name)
        parent.mtime_ns = parent.ctime_ns = time.time_ns()
        node = self.nodes[ino]
        node.ctime_ns = parent.mtime_ns
        if stat.S_ISDIR(node.mode):
            node.nlink = 0
            parent.nlink -= 1
        else:
            node.nlink -= 1
        self._maybe_free(node)
        return node

    def _maybe_free(self, node: Node) -> None:
        if node.nlink == 0 and node.lookups <= 0 and node.opens <= 0 and node.ino != ROOT_INODE:
            self.nodes.pop(node.ino, None)
            self.locks.pop(node.ino, None)

    # ------------------------------------------------------------------ names
    async def lookup(self, parent_inode: int, name: bytes, ctx: RequestContext) -> EntryAttributes:
        if name in self.raise_on:
            raise RuntimeError(f"memfs: deliberate failure looking up {name!r}")
        if name in self.hang_on:
            self.hanging += 1
            try:
                if name.startswith(b"scoped"):
                    # block first inside a cancel scope of the handler's own
                    with trio.move_on_after(3600):
                        await self.release_hang.wait()
                else:
                    await self.release_hang.wait()
            except trio.Cancelled:
                self.cancelled += 1
                raise
            finally:
                self.hanging -= 1
        if name == b".":  # export support: the kernel looks up "." of any inode by number
            node = self.node(parent_inode)
            node.lookups += 1
            return self.attr(node)
        parent = self.dir(parent_inode)
        if name == b"..":
            node = self.node(parent.parent)
        else:
            ino = parent.entries.get(name)
            if ino is None:
                raise FUSEError(errno.ENOENT)
            node = self.nodes[ino]
        node.lookups += 1
        return self.attr(node)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, n in inode_list:
            self.forgotten += n
            node = self.nodes.get(ino)
            if node is not None:
                node.lookups -= n
                self._maybe_free(node)

    async def getattr(self, inode: int, ctx: RequestContext) -> EntryAttributes:
        return self.attr(self.node(inode))

    async def setattr(
        self, inode: int, attr: EntryAttributes, fields: SetattrFields, fh: int | None, ctx: RequestContext
    ) -> EntryAttributes:
        node = self.node(inode)
        if fields.update_size:
            if stat.S_ISDIR(node.mode):
                raise FUSEError(errno.EISDIR)
            size = attr.st_size
            if size < len(node.data):
                del node.data[size:]
            else:
                node.data.extend(bytes(size - len(node.data)))
            node.mtime_ns = time.time_ns()
        if fields.update_mode:
            node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(attr.st_mode)
        if fields.update_uid:
            node.uid = attr.st_uid
        if fields.update_gid:
            node.gid = attr.st_gid
        if fields.update_atime:
            node.atime_ns = attr.st_atime_ns
        if fields.update_mtime:
            node.mtime_ns = attr.st_mtime_ns
        node.ctime_ns = attr.st_ctime_ns if fields.update_ctime else time.time_ns()
        return self.attr(node)

    async def readlink(self, inode: int, ctx: RequestContext) -> bytes:
        node = self.node(inode)
        if not stat.S_ISLNK(node.mode):
            raise FUSEError(errno.EINVAL)
        return node.target

    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: RequestContext
    ) -> EntryAttributes:
        node = self._new(self.dir(parent_inode), name, mode, ctx)
        node.rdev = rdev
        return self.attr(node)

    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: RequestContext) -> EntryAttributes:
        return self.attr(self._new(self.dir(parent_inode), name, stat.S_IFDIR | stat.S_IMODE(mode), ctx))

    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: RequestContext
    ) -> EntryAttributes:
        node = self._new(self.dir(parent_inode), name, stat.S_IFLNK | 0o777, ctx)
        node.target = target
        return self.attr(node)

    async def unlink(self, parent_inode: int, name: bytes, ctx: RequestContext) -> None:
        parent = self.dir(parent_inode)
        ino = parent.entries.get(name)
        if ino is None:
            raise FUSEError(errno.ENOENT)
        if stat.S_ISDIR(self.nodes[ino].mode):
            raise FUSEError(errno.EISDIR)
        self._unlink(parent, name)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: RequestContext) -> None:
        parent = self.dir(parent_inode)
        ino = parent.entries.get(name)
        if ino is None:
            raise FUSEError(errno.ENOENT)
        node = self.nodes[ino]
        if not stat.S_ISDIR(node.mode):
            raise FUSEError(errno.ENOTDIR)
        if node.entries:
            raise FUSEError(errno.ENOTEMPTY)
        self._unlink(parent, name)

    async def rename(
        self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes, flags: int,
        ctx: RequestContext,
    ) -> None:  # fmt: skip
        old_dir = self.dir(parent_inode_old)
        new_dir = self.dir(parent_inode_new)
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE):
            raise FUSEError(errno.EINVAL)
        ino = old_dir.entries.get(name_old)
        if ino is None:
            raise FUSEError(errno.ENOENT)
        node = self.nodes[ino]
        target_ino = new_dir.entries.get(name_new)
        if flags & RENAME_EXCHANGE:
            if target_ino is None:
                raise FUSEError(errno.ENOENT)
            other = self.nodes[target_ino]
            old_dir.entries[name_old] = target_ino
            new_dir.entries[name_new] = ino
            for n, d in ((node, new_dir), (other, old_dir)):
                if stat.S_ISDIR(n.mode) and old_dir is not new_dir:
                    self.nodes[n.parent].nlink -= 1
                    n.parent = d.ino
                    d.nlink += 1
            now = time.time_ns()
            node.ctime_ns = other.ctime_ns = old_dir.mtime_ns = new_dir.mtime_ns = now
            return
        if target_ino is not None:
            if flags & RENAME_NOREPLACE:
                raise FUSEError(errno.EEXIST)
            if target_ino == ino:
                return
            target = self.nodes[target_ino]
            if stat.S_ISDIR(node.mode):
                if not stat.S_ISDIR(target.mode):
                    raise FUSEError(errno.ENOTDIR)
                if target.entries:
                    raise FUSEError(errno.ENOTEMPTY)
            elif stat.S_ISDIR(target.mode):
                raise FUSEError(errno.EISDIR)
            self._unlink(new_dir, name_new)
        if stat.S_ISDIR(node.mode):
            # no moving a directory into itself
            p = new_dir
            while True:
                if p.ino == ino:
                    raise FUSEError(errno.EINVAL)
                if p.ino == ROOT_INODE:
                    break
                p = self.nodes[p.parent]
        old_dir.entries.pop(name_old)
        old_dir.entry_ids.pop(name_old)
        old_dir.mtime_ns = old_dir.ctime_ns = time.time_ns()
        self._link(new_dir, name_new, node)
        if stat.S_ISDIR(node.mode) and old_dir is not new_dir:
            old_dir.nlink -= 1
            new_dir.nlink += 1
            node.parent = new_dir.ino
        node.ctime_ns = time.time_ns()

    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: RequestContext
    ) -> EntryAttributes:
        node = self.node(inode)
        if stat.S_ISDIR(node.mode):
            raise FUSEError(errno.EPERM)
        parent = self.dir(new_parent_inode)
        if new_name in parent.entries:
            raise FUSEError(errno.EEXIST)
        self._link(parent, new_name, node)
        node.nlink += 1
        node.ctime_ns = time.time_ns()
        node.lookups += 1
        return self.attr(node)

    # ------------------------------------------------------------------ files
    def _fh(self, node: Node) -> int:
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = node.ino
        node.opens += 1
        return fh

    def _handle(self, fh: int) -> Node:
        try:
            return self.nodes[self.handles[fh]]
        except KeyError:
            raise FUSEError(errno.EBADF) from None

    async def open(self, inode: int, flags: int, ctx: RequestContext) -> FileInfo:
        node = self.node(inode)
        if flags & os.O_TRUNC and flags & os.O_ACCMODE != os.O_RDONLY:
            del node.data[:]
            node.mtime_ns = node.ctime_ns = time.time_ns()
        return FileInfo(fh=self._fh(node))

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: RequestContext
    ) -> tuple[FileInfo, EntryAttributes]:
        node = self._new(self.dir(parent_inode), name, stat.S_IFREG | stat.S_IMODE(mode), ctx)
        return FileInfo(fh=self._fh(node)), self.attr(node)

    async def read(self, fh: int, off: int, size: int) -> bytes | bytearray | memoryview:
        if self.read_hook is not None:
            self.read_hook(fh, off, size)
        node = self._handle(fh)
        return memoryview(node.data)[off : off + size]

    async def write(self, fh: int, off: int, buf: memoryview) -> int:
        node = self._handle(fh)
        data = node.data
        end = off + len(buf)
        if off > len(data):
            data.extend(bytes(off - len(data)))
        data[off:end] = buf
        node.mtime_ns = node.ctime_ns = time.time_ns()
        return len(buf)

    async def flush(self, fh: int, lock_owner: int) -> None:
        node = self._handle(fh)
        self._drop_locks(node.ino, lock_owner, flock=False)
        self.lock_log.append(LockRequest("flush", node.ino, lock_owner, None, "ok"))

    async def release(self, fh: int, flags: int, lock_owner: int, flock_release: bool) -> None:
        ino = self.handles.pop(fh, None)
        if ino is None:
            return
        self.lock_log.append(LockRequest("release", ino, lock_owner, None,
                                         "flock_release" if flock_release else "ok"))
        if flock_release:
            self._drop_locks(ino, lock_owner, flock=True)
        # OFD locks (owner = the open file) get no unlock from the kernel at close: drop the
        # fcntl locks still held through this handle (classic POSIX ones went at FLUSH already)
        held = self.locks.get(ino)
        if held and any(h.fh == fh and not h.flock for h in held):
            self.locks[ino] = [h for h in held if h.flock or h.fh != fh]
            self._wake()
        node = self.nodes.get(ino)
        if node is not None:
            node.opens -= 1
            self._maybe_free(node)

    async def fallocate(self, fh: int, off: int, length: int, mode: int) -> None:
        if mode != 0:
            raise FUSEError(errno.EOPNOTSUPP)
        node = self._handle(fh)
        if off + length > len(node.data):
            node.data.extend(bytes(off + length - len(node.data)))

    async def lseek(self, fh: int, off: int, whence: int) -> int:
        node = self._handle(fh)
        if off >= len(node.data):
            raise FUSEError(errno.ENXIO)
        return off if whence == os.SEEK_DATA else len(node.data)

    async def copy_file_range(
        self, fh_in: int, off_in: int, fh_out: int, off_out: int, length: int, flags: int
    ) -> int:
        src = self._handle(fh_in)
        chunk = bytes(src.data[off_in : off_in + length])
        return await self.write(fh_out, off_out, memoryview(chunk))

    # ------------------------------------------------------------------ locks
    def _drop_locks(self, ino: int, owner: int, *, flock: bool) -> None:
        held = self.locks.get(ino)
        if held:
            new = [h for h in held if not (h.owner == owner and h.flock == flock)]
            if len(new) != len(held):
                self.locks[ino] = new
                self._wake()

    def _wake(self) -> None:
        self.lock_changed.set()
        self.lock_changed = trio.Event()

    def _conflict(self, ino: int, owner: int, lock: Lock) -> HeldLock | None:
        for h in self.locks.get(ino, ()):
            if h.owner == owner or h.flock != lock.flock:
                continue
            if h.start <= lock.end and lock.start <= h.end and (h.type == F_WRLCK or lock.type == F_WRLCK):
                return h
        return None

    def _apply(self, ino: int, owner: int, lock: Lock, fh: int) -> None:
        held = self.locks.setdefault(ino, [])
        keep: list[HeldLock] = []
        for h in held:
            if h.owner != owner or h.flock != lock.flock or h.end < lock.start or h.start > lock.end:
                keep.append(h)
                continue
            # split the part of our own lock outside the new range (POSIX semantics)
            if h.start < lock.start:
                keep.append(HeldLock(owner, h.start, lock.start - 1, h.type, h.pid, h.flock, h.fh))
            if h.end > lock.end:
                keep.append(HeldLock(owner, lock.end + 1, h.end, h.type, h.pid, h.flock, h.fh))
        if lock.type != F_UNLCK:
            keep.append(HeldLock(owner, lock.start, lock.end, lock.type, lock.pid, lock.flock, fh))
        self.locks[ino] = keep
        self._wake()

    async def getlk(self, inode: int, fh: int, owner: int, lock: Lock, ctx: RequestContext) -> Lock:
        h = self._conflict(inode, owner, lock)
        self.lock_log.append(LockRequest("getlk", inode, owner, lock, "conflict" if h else "free"))
        if h is None:
            return Lock(0, 0, F_UNLCK, 0)
        return Lock(h.start, h.end, h.type, h.pid, h.flock)

    async def setlk(
        self, inode: int, fh: int, owner: int, lock: Lock, sleep: bool, ctx: RequestContext
    ) -> None:
        op = "setlkw" if sleep else "setlk"
        if lock.type not in (F_RDLCK, F_WRLCK, F_UNLCK):
            raise FUSEError(errno.EINVAL)
        while lock.type != F_UNLCK and self._conflict(inode, owner, lock) is not None:
            if not sleep:
                self.lock_log.append(LockRequest(op, inode, owner, lock, "EAGAIN"))
                raise FUSEError(errno.EAGAIN)
            self.lock_log.append(LockRequest(op, inode, owner, lock, "wait"))
            try:
                await self.lock_changed.wait()
            except trio.Cancelled:
                self.lock_log.append(LockRequest(op, inode, owner, lock, "interrupted"))
                raise
        self._apply(inode, owner, lock, fh)
        self.lock_log.append(LockRequest(op, inode, owner, lock, "granted"))

    # ------------------------------------------------------------------ directories
    async def opendir(self, inode: int, ctx: RequestContext) -> int:
        return self._fh(self.dir(inode))

    async def readdir(self, fh: int, start_id: int, token: ReaddirToken) -> None:
        node = self._handle(fh)
        # entry ids grow with insertion order, so "after start_id" is stable under changes
        for name, eid in node.entry_ids.items():
            if eid <= start_id:
                continue
            child = self.nodes.get(node.entries[name])
            if child is None:
                continue
            if not readdir_reply(token, name, self.attr(child), eid):
                return
            child.lookups += 1

    async def releasedir(self, fh: int) -> None:
        ino = self.handles.pop(fh, None)
        node = self.nodes.get(ino) if ino is not None else None
        if node is not None:
            node.opens -= 1
            self._maybe_free(node)

    # ------------------------------------------------------------------ misc
    async def statfs(self, ctx: RequestContext) -> StatvfsData:
        used = sum(len(n.data) for n in self.nodes.values()) // 4096
        return StatvfsData(f_bsize=4096, f_frsize=4096, f_blocks=1 << 24, f_bfree=(1 << 24) - used,
                           f_bavail=(1 << 24) - used, f_files=1 << 20, f_ffree=(1 << 20) - len(self.nodes),
                           f_favail=(1 << 20) - len(self.nodes), f_namemax=255)

    async def access(self, inode: int, mode: int, ctx: RequestContext) -> bool | None:
        self.node(inode)
        return True

    async def setxattr(self, inode: int, name: bytes, value: bytes, flags: int, ctx: RequestContext) -> None:
        node = self.node(inode)
        if flags & XATTR_CREATE and name in node.xattrs:
            raise FUSEError(errno.EEXIST)
        if flags & XATTR_REPLACE and name not in node.xattrs:
            raise FUSEError(errno.ENODATA)
        node.xattrs[name] = value
        node.ctime_ns = time.time_ns()

    async def getxattr(self, inode: int, name: bytes, ctx: RequestContext) -> bytes:
        try:
            return self.node(inode).xattrs[name]
        except KeyError:
            raise FUSEError(errno.ENODATA) from None

    async def listxattr(self, inode: int, ctx: RequestContext) -> Sequence[bytes]:
        return list(self.node(inode).xattrs)

    async def removexattr(self, inode: int, name: bytes, ctx: RequestContext) -> None:
        try:
            del self.node(inode).xattrs[name]
        except KeyError:
            raise FUSEError(errno.ENODATA) from None
