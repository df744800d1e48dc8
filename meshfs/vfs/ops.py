"""meshfs's filesystem operations: fuse.Operations on top of the tree, the data cache and the uploader.

Owns: POSIX semantics (attributes, open/read/write/close, create, mkdir, unlink, rename incl.
replacing a target, truncate, utimens, chmod as metadata, user.* xattrs ↔ CS3 arbitrary metadata,
read-only user.meshfs.* xattrs, statfs from the quota), file handles, and being THE errno boundary:
MeshError/StoreError → FUSEError happens here and nowhere else; every failure is logged once, with
its path.

Must not import: grpc, cs3apis, urllib3 (the server is reached through meshfs.cs3's plain API).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import logging
import os
import secrets
import stat
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TypeVar

import trio

from meshfs.cache.readahead import Readahead, ReadaheadPolicy
from meshfs.cache.store import (
    CacheFile,
    CacheStore,
    NotPresent,
    SpaceWaiter,
    StoreError,
    WriteToCleanFile,
)
from meshfs.cache.writeback import WriteBack
from meshfs.cs3 import APP_NAME, DownloadTicket, Ref, Resource, ResourceId, Storage, Transfer
from meshfs.errors import AlreadyExists, MeshError, NotFound
from meshfs.fuse import (
    F_UNLCK,
    F_WRLCK,
    LOCK_END_EOF,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    ROOT_INODE,
    EntryAttributes,
    FileInfo,
    FUSEError,
    Operations,
    ReaddirToken,
    RequestContext,
    Session,
    SetattrFields,
    StatvfsData,
    WritePayload,
    readdir_reply,
)
from meshfs.fuse import Lock as FLock
from meshfs.fuse.abi import PASSTHROUGH, WRITEBACK_CACHE
from meshfs.vfs.inodes import InodeTable, Kind, Node
from meshfs.vfs.locks import Conflict, LockManager
from meshfs.vfs.shares import GRANTEES_XATTR, ShareCommands
from meshfs.vfs.tree import Tree

log = logging.getLogger(__name__)

MODE_KEY = "meshfs.mode"
# setuid/setgid bits are not kept (the mount is nosuid): the kernel can then be told that nothing
# needs clearing on write (FUSE_HANDLE_KILLPRIV_V2), which spares a GETXATTR round trip per write
MODE_KEPT = 0o1777
DIR_MTIME_KEY = "meshfs.dirmtime"  # a directory mtime set with utimens (ns)
XATTR_PREFIX = "xattr."  # user.NAME ↔ metadata key "xattr.user.NAME"
RO_XATTRS = (b"user.meshfs.etag", b"user.meshfs.fileid", b"user.meshfs.checksum", b"user.meshfs.state")
B64_TAG = "b64:"
T = TypeVar("T")
REPLACE_BY_UPLOAD_MAX = 64 << 20  # rename-over by uploading a new version of the target
BIG_QUOTA = 1 << 50  # what statfs reports as the size of a space without a quota
# Writes of up to INLINE_WRITE_MAX bytes are done on the event loop's thread (measured on the dev
# machine under load ~12: dd bs=4k 1.4x and bs=32k 1.1-3x faster inline; bs=128k and bs=1M 1.2-2x
# faster in a worker thread, whose hop costs less than running a long pwrite on the loop's thread).
INLINE_WRITE_MAX = 32 << 10
INLINE_WRITE_SLOW = 0.02  # s: an inline write slower than this (dirty throttling) ...
INLINE_WRITE_BACKOFF = 1.0  # s: ... sends writes to worker threads for this long
# A writable open gets FUSE passthrough (the kernel writes the cache file itself, past the cache
# limit's backpressure) only while this much of the cache is free of dirty data, and of its disk too
PASSTHROUGH_MIN_FREE = 256 << 20
PASSTHROUGH_SYNC_INTERVAL = 1.0  # s: how often writes through passthrough are taken into account


def encode_xattr(value: bytes) -> str:
    """CS3 metadata values are strings: UTF-8 text without NUL is stored as is, anything else (and
    text that would look encoded) as "b64:" + base64, so every byte string round-trips."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or "\0" in text or text.startswith(B64_TAG):
        return B64_TAG + base64.b64encode(value).decode("ascii")
    return text


def decode_xattr(value: str) -> bytes:
    if value.startswith(B64_TAG):
        try:
            return base64.b64decode(value[len(B64_TAG) :], validate=True)
        except ValueError:
            pass
    return value.encode("utf-8", "surrogateescape")


@dataclass(slots=True, eq=False)
class Handle:
    """One open file."""

    fh: int
    node: Node
    cache: CacheFile
    writable: bool
    append: bool = False
    readahead: Readahead = field(default_factory=Readahead)
    ticket: DownloadTicket | None = None
    prefetching: bool = False
    closed: bool = False
    lock_owners: set[int] = field(default_factory=set)
    passthrough: bool = False  # the kernel reads and writes the cache file itself (no READ/WRITE here)


@dataclass(slots=True, eq=False)
class _Backing:
    """The passthrough state of one inode while the kernel has it open that way: every open of the
    inode uses this backing id (the kernel allows no other), the cache file's disk stamp when its
    writes were last taken in, and whether closing the last open may turn the file clean again
    (it was clean before the first open and nothing changed since)."""

    backing_id: int
    handles: list[Handle] = field(default_factory=list)
    lock: trio.Lock = field(default_factory=trio.Lock)  # one taking-in or close at a time
    stamp: tuple[int, int, int] = (0, 0, 0)
    clean_at_open: bool = False
    generation: int = 0


@dataclass(slots=True, eq=False)
class _Flight:
    """A byte range [start, end) being fetched by some task; `done` fires when it finished."""

    start: int
    end: int
    done: trio.Event = field(default_factory=trio.Event)


@dataclass(slots=True, eq=False)
class DirHandle:
    fh: int
    node: Node
    entries: list[tuple[str, Node]] | None = None


class MeshOps(Operations):
    """The filesystem served through meshfs.fuse. Built by vfs.filesystem.MeshFilesystem."""

    def __init__(
        self,
        *,
        tree: Tree,
        storage: Storage,
        transfer: Transfer,
        store: CacheStore,
        writeback: WriteBack,
        uid: int,
        gid: int,
        entry_ttl: float,
        attr_ttl: float,
        negative_ttl: float,
        backpressure_timeout: float,
        readahead_max: int,
        io_limiter: trio.CapacityLimiter,
        locks: LockManager,
        read_only: bool = False,
    ) -> None:
        self.tree = tree
        self.inodes: InodeTable = tree.inodes
        self.storage = storage
        self.transfer = transfer
        self.store = store
        self.writeback = writeback
        self.uid, self.gid = uid, gid
        self.entry_ttl, self.attr_ttl, self.negative_ttl = entry_ttl, attr_ttl, negative_ttl
        self.backpressure_timeout = backpressure_timeout
        self.space = SpaceWaiter(store, limiter=io_limiter)
        self.io = io_limiter
        self.read_only = read_only
        self.locks = locks
        self.share_commands: ShareCommands | None = None  # set by MeshFilesystem.start
        # a window is reserved in the cache as one piece: keep it well inside the cache's limit
        # (a window larger than the whole cache could never be reserved and would fail the read)
        self.policy = ReadaheadPolicy(max_window=max(min(readahead_max, store.limit // 4), 128 * 1024))
        self.session: Session | None = None
        self._handles: dict[int, Handle] = {}
        self._dirs: dict[int, DirHandle] = {}
        # directories whose mtime changed locally (a create, unlink, rename in them) and is not
        # stored on the server yet: stored (DIR_MTIME_KEY) when the next upload below them lands
        self._dir_mtimes_unsaved: set[int] = set()
        self._next_fh = 1
        self._inflight: dict[int, list[_Flight]] = {}
        self.nursery: trio.Nursery | None = None  # for prefetches; set by MeshFilesystem.start
        self.errors: list[str] = []  # recent failures for `meshfs status`
        #: metrics hook: called once per request with (op, errno or 0, seconds)
        self.observe: Callable[[str, int, float], None] | None = None
        self.bytes_down = 0
        self._inline_writes_after = 0.0  # trio time before which writes use worker threads
        self._backing: dict[int, _Backing] = {}  # inode -> its passthrough state
        self._passthrough_off: str | None = None  # why passthrough is not used (after a refusal)
        self._passthrough_probed = False
        self._room_checked_at, self._room_ok = -float("inf"), False
        self._after_passthrough: set[int] = set()  # inodes whose kernel page cache predates it
        self.passthrough_opens = 0

    # ---- the errno boundary ----------------------------------------------------------------------

    @asynccontextmanager
    async def _op(self, op: str, what: str | Node) -> AsyncIterator[None]:
        start = trio.current_time()
        code = 0
        try:
            yield
        except FUSEError as e:
            code = e.errno
            raise
        except (MeshError, StoreError) as e:
            path = self.tree.path_of(what) if isinstance(what, Node) else what
            code = getattr(e, "errno", errno.EIO) or errno.EIO
            if code not in (errno.ENOENT,):
                line = f"{op} {path}: {e}"
                log.warning("%s", line)
                self.errors.append(line)
                del self.errors[:-50]
            else:
                log.debug("%s %s: %s", op, path, e)
            raise FUSEError(code) from None
        except BaseException:
            code = errno.EIO
            raise
        finally:
            if self.observe is not None:
                self.observe(op, code, trio.current_time() - start)

    def _node(self, inode: int) -> Node:
        node = self.inodes.get(inode)
        if node is None:
            raise FUSEError(errno.ESTALE)
        return node

    @staticmethod
    def _name(name: bytes) -> str:
        try:
            text = name.decode("utf-8")
        except UnicodeDecodeError:
            raise FUSEError(errno.EILSEQ) from None
        if len(name) > 255:
            raise FUSEError(errno.ENAMETOOLONG)
        return text

    def _child_path(self, parent: Node, name: str) -> str:
        base = self.tree.path_of(parent)
        return f"{base}/{name}" if base else name

    # ---- attributes ------------------------------------------------------------------------------

    def _attr(self, node: Node) -> EntryAttributes:
        # a node invalidated by a local change (an upload landed) and not asked again yet: what is
        # recorded predates the change, and the kernel must ask for the attributes before using them
        stale = node.rid is not None and node.fetched < 0 and node.local_size is None
        a = EntryAttributes(
            st_ino=node.inode,
            entry_timeout=self.entry_ttl,
            attr_timeout=0.0 if stale else self.attr_ttl,
            st_uid=self.uid,
            st_gid=self.gid,
            st_blksize=128 * 1024,
        )
        res = node.resource
        writable = self.tree.writable(node) and not self.read_only
        if node.kind is Kind.DIR:
            mode = 0o755 if writable else 0o555
            a.st_mode = stat.S_IFDIR | self._mode_bits(res, mode, writable)
            a.st_nlink = 1  # unknown subdirectory count: 1 tells find & co. not to trust it (as btrfs)
            a.st_size = 4096 if res is None else res.size
            a.st_blocks = 8
        else:
            if node.local_size is None and node.rid is not None:
                info = self.store.lookup(str(node.rid))
                if info is not None and info.dirty:  # e.g. pending from before a restart
                    node.local_size = info.size
            mode = 0o644 if writable else 0o444
            a.st_mode = stat.S_IFREG | self._mode_bits(res, mode, writable)
            b = self._backing.get(node.inode)
            if b is not None and b.handles:  # the kernel writes it itself: the data file has the size
                with contextlib.suppress(OSError, StoreError):
                    node.local_size = b.handles[0].cache.disk_stamp()[0]
            size = node.local_size if node.local_size is not None else (res.size if res else 0)
            a.st_size = size
            a.st_blocks = (size + 511) // 512
        mtime = node.local_mtime_ns if node.local_mtime_ns is not None else (res.mtime_ns if res else 0)
        if (
            node.kind is Kind.DIR
            and node.local_mtime_ns is None
            and res is not None
            and DIR_MTIME_KEY in res.metadata
        ):
            try:
                mtime = int(res.metadata[DIR_MTIME_KEY])
            except ValueError:
                pass
        if res is None and mtime == 0:
            mtime = int(time.time() * 1e9) if node.inode == ROOT_INODE else 0
        a.st_mtime_ns = a.st_ctime_ns = a.st_atime_ns = mtime
        return a

    @staticmethod
    def _mode_bits(res: Resource | None, default: int, writable: bool) -> int:
        mode = default
        if res is not None:
            raw = res.metadata.get(MODE_KEY)
            if raw:
                try:
                    mode = int(raw, 8) & MODE_KEPT
                except ValueError:
                    pass
        if not writable:
            mode &= ~0o222
        return mode

    async def _entry(self, node: Node) -> EntryAttributes:
        node = self.inodes.ensure(node)
        node.lookups += 1
        return self._attr(node)

    # ---- names -----------------------------------------------------------------------------------

    async def lookup(self, parent_inode: int, name: bytes, ctx: RequestContext) -> EntryAttributes:
        parent = self._node(parent_inode)
        text = self._name(name)
        async with self._op("lookup", self._child_path(parent, text)):
            try:
                node = await self.tree.lookup(parent, text)
            except NotFound:
                if self.negative_ttl > 0 and parent.virtual is None:
                    return EntryAttributes(st_ino=0, entry_timeout=self.negative_ttl)
                raise
            return await self._entry(node)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for inode, n in inode_list:
            self.inodes.forget(inode, n)

    async def getattr(self, inode: int, ctx: RequestContext) -> EntryAttributes:
        node = self._node(inode)
        async with self._op("getattr", node):
            await self._take_passthrough_writes(node)
            if node.rid is not None and node.local_size is None and not node.unlinked:
                try:
                    await self.tree.stat(node)
                except NotFound:
                    if node.open_count == 0:
                        raise
            return self._attr(node)

    async def setattr(
        self, inode: int, attr: EntryAttributes, fields: SetattrFields, fh: int | None, ctx: RequestContext
    ) -> EntryAttributes:
        node = self._node(inode)
        async with self._op("setattr", node):
            if node.rid is None:
                raise FUSEError(errno.EPERM)
            await self._take_passthrough_writes(node)  # before: a time set now must not be undone
            chown = (fields.update_uid and attr.st_uid != self.uid) or (
                fields.update_gid and attr.st_gid != self.gid
            )
            if chown:
                raise FUSEError(errno.EPERM)
            if fields.update_size:
                if node.kind is Kind.DIR:
                    raise FUSEError(errno.EISDIR)
                if node.unlinked:
                    # ftruncate through a handle of a file unlinked (or renamed over) while open: only
                    # the open file's own copy changes, as on a local disk; nothing on the server is
                    # left to protect or to ask
                    if fh is None or fh not in self._handles:
                        raise FUSEError(errno.ENOENT)
                else:
                    self._check_writable(node)
                    # lock state moves no etag: ask the server (a cached resource may predate the lock)
                    current = await self.tree.stat(node, force=True)
                    if self.locks.foreign_holder(node.inode, current) is not None:
                        raise FUSEError(errno.EACCES)  # a file locked elsewhere: overwrite protection
                await self._truncate(node, attr.st_size, fh)
            meta: dict[str, str] = {}
            if fields.update_mode:
                self._check_writable(node)
                meta[MODE_KEY] = f"{attr.st_mode & MODE_KEPT:o}"
            if fields.update_mtime:
                if node.local_size is not None:
                    # not on the server yet: the upload carries it (X-OC-Mtime)
                    node.local_mtime_ns = attr.st_mtime_ns
                    self.writeback.mtimes[str(node.rid)] = attr.st_mtime_ns
                else:
                    meta["mtime"] = (
                        f"{attr.st_mtime_ns // 1_000_000_000}.{attr.st_mtime_ns % 1_000_000_000:09d}"
                    )
                    if node.kind is Kind.DIR:
                        # Reva reports a directory's tree time (bumped by later uploads of children):
                        # the time the user set is kept beside it until the directory changes locally
                        meta[DIR_MTIME_KEY] = str(attr.st_mtime_ns)
                        node.local_mtime_ns = None
                        self._dir_mtimes_unsaved.discard(node.inode)
            if meta:
                assert node.rid is not None
                await self.storage.set_metadata(Ref.to(node.rid), meta, lock_id=self._lid(node))
                await self.tree.stat(node, force=True)
            return self._attr(node)

    def _lid(self, node: Node) -> str | None:
        """The CS3 lock id our mutating calls on this node must carry (None when we hold none)."""
        return self.locks.lock_id_of(node.inode)

    def lock_id_for_key(self, key: str) -> str | None:
        nodes = self.inodes_by_key(key)
        return self.locks.lock_id_of(nodes[0].inode) if nodes else None

    def _check_writable(self, node: Node) -> None:
        if self.read_only:
            raise FUSEError(errno.EROFS)
        if node.virtual is not None:
            raise FUSEError(errno.EPERM)
        if not self.tree.writable(node):
            raise FUSEError(errno.EACCES)

    def _check_dir_writable(self, parent: Node) -> None:
        if self.read_only:
            raise FUSEError(errno.EROFS)
        if parent.virtual is not None or parent.rid is None:
            raise FUSEError(errno.EPERM)
        if not self.tree.writable(parent):
            raise FUSEError(errno.EACCES)

    def _writer_of(self, node: Node) -> Handle | None:
        for h in self._handles.values():
            if h.node is node and h.writable:
                return h
        return None

    # ---- directories -----------------------------------------------------------------------------

    async def opendir(self, inode: int, ctx: RequestContext) -> int:
        node = self._node(inode)
        if node.kind is not Kind.DIR:
            raise FUSEError(errno.ENOTDIR)
        fh = self._new_fh()
        self._dirs[fh] = DirHandle(fh, node)
        return fh

    async def readdir(self, fh: int, start_id: int, token: ReaddirToken) -> None:
        dh = self._dirs.get(fh)
        if dh is None:
            raise FUSEError(errno.EBADF)
        async with self._op("readdir", dh.node):
            if dh.entries is None or start_id == 0:
                listing = await self.tree.listing(dh.node)
                dh.entries = sorted(listing.items())
            entries = dh.entries
            i = start_id
            if i == 0:
                if not readdir_reply(token, b".", self._attr(dh.node), 1):
                    return
                i = 1
            if i == 1:
                parent = self.inodes.get(dh.node.parent) or dh.node
                if not readdir_reply(token, b"..", self._attr(parent), 2):
                    return
                i = 2
            for idx in range(i - 2, len(entries)):
                name, node = entries[idx]
                node = self.inodes.live(node)  # a forgotten node's inode may have a newer node
                if not readdir_reply(token, name.encode("utf-8"), self._attr(node), idx + 3):
                    return
                node = self.inodes.ensure(node)
                node.lookups += 1

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: RequestContext) -> EntryAttributes:
        parent = self._node(parent_inode)
        text = self._name(name)
        async with self._op("mkdir", self._child_path(parent, text)), self.tree.changing(parent):
            self._check_dir_writable(parent)
            ref = self.tree.child_ref(parent, text)
            await self.storage.create_container(ref)
            res = await self.storage.stat(ref)
            node = self.inodes.node_for(res.id, Kind.DIR, text, parent.inode)
            node.resource, node.fetched, node.readonly = res, trio.current_time(), parent.readonly
            if mode & 0o7777 not in (0o755, 0o777 & ~0o022):
                await self._store_mode(node, mode)
            await self._changed(parent, text, node)
            return await self._entry(node)

    async def _store_mode(self, node: Node, mode: int) -> None:
        assert node.rid is not None
        await self.storage.set_metadata(
            Ref.to(node.rid), {MODE_KEY: f"{mode & MODE_KEPT:o}"}, lock_id=self._lid(node)
        )
        await self.tree.stat(node, force=True)

    async def _changed(self, parent: Node, name: str, node: Node | None) -> None:
        """A local namespace change: keep the listing cache exact and the parent's attrs fresh. The
        directory's mtime becomes the time of this change, as on a local disk: a time set earlier
        (utimens) gives way to it, and the uploads that land later do not move it (Reva reports a
        directory's tree time, which every upload below bumps): kept here, and stored with the
        directory when the next upload below it lands (`uploaded`)."""
        if node is None:
            self.tree.remove_from_listing(parent, name)
        else:
            self.tree.add_to_listing(parent, name, node)
        self.tree.invalidate(parent)
        parent.local_mtime_ns = time.time_ns()
        self._dir_mtimes_unsaved.add(parent.inode)
        res = parent.resource
        if res is not None and DIR_MTIME_KEY in res.metadata and parent.rid is not None:
            try:
                await self.storage.unset_metadata(
                    Ref.to(parent.rid), [DIR_MTIME_KEY], lock_id=self._lid(parent)
                )
            except MeshError as e:
                log.debug("dropping the set mtime of %s: %s", self.tree.path_of(parent), e)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: RequestContext) -> None:
        parent = self._node(parent_inode)
        text = self._name(name)
        async with self._op("rmdir", self._child_path(parent, text)), self.tree.changing(parent):
            self._check_dir_writable(parent)
            node = await self.tree.lookup(parent, text)
            if node.kind is not Kind.DIR:
                raise FUSEError(errno.ENOTDIR)
            # Delete removes a whole tree on Reva: check emptiness on the server, not in a listing
            # that may predate another node's create there
            self.tree.forget_listing(node)
            if await self.tree.listing(node):
                raise FUSEError(errno.ENOTEMPTY)
            assert node.rid is not None
            await self.storage.delete(Ref.to(node.rid), lock_id=self._lid(node))
            node.unlinked = True
            self.tree.forget_listing(node)
            await self._changed(parent, text, None)

    async def unlink(self, parent_inode: int, name: bytes, ctx: RequestContext) -> None:
        parent = self._node(parent_inode)
        text = self._name(name)
        async with self._op("unlink", self._child_path(parent, text)), self.tree.changing(parent):
            self._check_dir_writable(parent)
            node = await self.tree.lookup(parent, text)
            if node.kind is Kind.DIR:
                raise FUSEError(errno.EISDIR)
            assert node.rid is not None
            key = str(node.rid)
            if node.open_count > 0:
                await self._pin_content(node)
            async with self.writeback.settled(key):  # no upload of it in flight during the Delete
                await self.storage.delete(Ref.to(node.rid), lock_id=self._lid(node))
                node.unlinked = True
                self.writeback.forget(key)
            if node.open_count == 0:
                await trio.to_thread.run_sync(self.store.forget, key, limiter=self.io)
            await self._changed(parent, text, None)

    async def _pin_content(self, node: Node) -> None:
        """An open file is about to be unlinked: make sure its data is all in the cache so the open
        handles can keep reading it (POSIX semantics of unlink while open)."""
        h = next((h for h in self._handles.values() if h.node is node), None)
        if h is not None:
            await self._fill(h, 0, h.cache.size)  # a file unlinked while open stays readable

    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: RequestContext,
    ) -> None:
        old_parent = self._node(parent_inode_old)
        new_parent = self._node(parent_inode_new)
        old_name, new_name = self._name(name_old), self._name(name_new)
        what = f"{self._child_path(old_parent, old_name)} -> {self._child_path(new_parent, new_name)}"
        async with self._op("rename", what), self.tree.changing(old_parent, new_parent):
            if old_parent.virtual is not None or new_parent.virtual is not None:
                if self.read_only:
                    raise FUSEError(errno.EROFS)
                if self.share_commands is None or flags:
                    raise FUSEError(errno.EPERM)
                # mv shared-with-me/.pending/X shared-with-me/[Y] accepts the share (as Y);
                # every other rename from/into a virtual dir is EPERM
                await self.share_commands.accept_by_rename(old_parent, old_name, new_parent, new_name)
                return
            self._check_dir_writable(old_parent)
            self._check_dir_writable(new_parent)
            if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE):
                raise FUSEError(errno.EINVAL)
            node = await self.tree.lookup(old_parent, old_name)
            assert node.rid is not None
            await self._take_passthrough_writes(node)  # its content may go up as the target's
            try:
                target: Node | None = await self.tree.lookup(new_parent, new_name)
            except NotFound:
                target = None
            if target is node:
                return
            if flags & RENAME_EXCHANGE:
                if target is None:
                    raise FUSEError(errno.ENOENT)
                async with self.writeback.settled(str(node.rid), str(target.rid)):
                    await self._exchange(old_parent, old_name, node, new_parent, new_name, target)
                return
            dst = self.tree.child_ref(new_parent, new_name)
            old_path = self._child_path(old_parent, old_name)
            new_path = self._child_path(new_parent, new_name)
            if target is not None and flags & RENAME_NOREPLACE:
                raise FUSEError(errno.EEXIST)
            keys = [str(node.rid)] + ([str(target.rid)] if target is not None and target.rid else [])
            # no upload of either file in flight while they move or go on the server, and none
            # starting before the pending record follows the new path
            async with self.writeback.settled(*keys):
                if target is None:
                    await self.storage.move(Ref.to(node.rid), dst, lock_id=self._lid(node))
                elif not await self._replace_by_upload(node, target):
                    await self._replace(node, target, new_parent, new_name)
                node.name, node.parent = new_name, new_parent.inode
                await trio.to_thread.run_sync(self.store.rename_path, old_path, new_path, limiter=self.io)
            await self._changed(old_parent, old_name, None)
            await self._changed(new_parent, new_name, node)
            self.tree.invalidate(node)

    async def _replace_by_upload(self, node: Node, target: Node) -> bool:
        """The usual editor save (a closed temp file renamed over the document): upload the temp's
        content as a new version of the target, then delete the temp. The target keeps its name all
        along, its file id, its shares and its version history. False when it does not apply (then
        the move-aside path runs): open files, directories, big or uncached sources."""
        if node.kind is not Kind.FILE or target.kind is not Kind.FILE or node.open_count or target.open_count:
            return False
        assert node.rid is not None and target.rid is not None
        key, tkey = str(node.rid), str(target.rid)
        info = self.store.lookup(key)
        res = node.resource
        # the cache's own entry knows the size of what it holds (dirty, or clean at info.etag); the
        # node's resource may predate the last upload (a create's TouchFile saw 0 bytes), and opening
        # the entry with another size would drop the cached data and upload an empty file
        size = info.size if info is not None else (res.size if res else -1)
        if size < 0 or size > REPLACE_BY_UPLOAD_MAX:
            return False
        if info is None or not (info.dirty or info.present_bytes >= size):
            return False  # not all here: downloading it only to upload it again is not worth it
        if self.store.get_pending(tkey) is not None or self.locks.lock_id_of(node.inode):
            return False
        etag = info.etag if info.etag is not None else (res.etag if res else None)
        cf = await trio.to_thread.run_sync(
            lambda: self.store.open_file(key, size=size, etag=etag), limiter=self.io
        )
        try:
            generation = cf.generation
            result = await self.transfer.upload(
                Ref.to(target.rid), cf.fd, cf.size, lock_id=self._lid(target), mtime_ns=node.local_mtime_ns
            )
        finally:
            await trio.to_thread.run_sync(cf.close, limiter=self.io)
        self.writeback.forget(key)
        try:
            await self.storage.delete(Ref.to(node.rid), lock_id=self._lid(node))
        except MeshError as e:
            log.warning("rename: %s replaced, but its source could not be deleted (%s)", target.name, e)
        new_rid = target.rid
        await trio.to_thread.run_sync(self.store.forget, tkey, limiter=self.io)
        await trio.to_thread.run_sync(self.store.rekey, key, tkey, limiter=self.io)
        now = await self.storage.stat(Ref.to(new_rid))
        if self.store.get_pending(tkey) is not None:
            await trio.to_thread.run_sync(
                lambda: self.store.mark_clean(tkey, generation, etag=result.etag or now.etag), limiter=self.io
            )
        target.unlinked = True
        self.inodes.rekey(node, new_rid)
        node.local_size = node.local_mtime_ns = None
        node.resource, node.fetched = now, trio.current_time()
        if self.session is not None:
            self.session.invalidate_inode(target.inode)
        return True

    async def _replace(self, node: Node, target: Node, new_parent: Node, new_name: str) -> None:
        """rename over an existing target. Reva's Move refuses existing targets, so the target is moved
        aside to a hidden name first and deleted (to the trash) only once the source is in place; if
        the second step fails the target is put back: at no point is the target's data lost."""
        if target.kind is Kind.DIR and node.kind is not Kind.DIR:
            raise FUSEError(errno.EISDIR)
        if node.kind is Kind.DIR and target.kind is not Kind.DIR:
            raise FUSEError(errno.ENOTDIR)
        if target.kind is Kind.DIR:
            self.tree.forget_listing(target)  # emptiness from the server (the target goes to the trash)
            if await self.tree.listing(target):
                raise FUSEError(errno.ENOTEMPTY)
        assert node.rid is not None and target.rid is not None
        aside = self.tree.child_ref(new_parent, f".meshfs-replaced-{secrets.token_hex(6)}")
        await self.storage.move(Ref.to(target.rid), aside, lock_id=self._lid(target))
        try:
            await self.storage.move(
                Ref.to(node.rid), self.tree.child_ref(new_parent, new_name), lock_id=self._lid(node)
            )
        except BaseException:
            with trio.CancelScope(shield=True):
                try:
                    await self.storage.move(
                        Ref.to(target.rid),
                        self.tree.child_ref(new_parent, new_name),
                        lock_id=self._lid(target),
                    )
                except MeshError as e:
                    log.error("rename: could not put %s back (%s); it is at %s", new_name, e, aside)
            raise
        key = str(target.rid)
        try:
            await self.storage.delete(Ref.to(target.rid), lock_id=self._lid(target))
        except MeshError as e:
            log.warning("rename: replaced %s but could not delete its old version (%s)", new_name, e)
        target.unlinked = True
        self.writeback.forget(key)
        if target.open_count == 0:
            await trio.to_thread.run_sync(self.store.forget, key, limiter=self.io)
        if self.session is not None:
            self.session.invalidate_inode(target.inode)

    async def _exchange(self, pa: Node, na: str, a: Node, pb: Node, nb: str, b: Node) -> None:
        assert a.rid is not None and b.rid is not None
        aside = self.tree.child_ref(pb, f".meshfs-exchange-{secrets.token_hex(6)}")
        await self.storage.move(Ref.to(b.rid), aside)
        await self.storage.move(Ref.to(a.rid), self.tree.child_ref(pb, nb))
        await self.storage.move(Ref.to(b.rid), self.tree.child_ref(pa, na))
        a.name, a.parent, b.name, b.parent = nb, pb.inode, na, pa.inode
        await self._changed(pa, na, b)
        await self._changed(pb, nb, a)

    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: RequestContext
    ) -> EntryAttributes:
        log.debug("symlink refused: CS3 storage has no symlinks")
        raise FUSEError(errno.EPERM)

    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: RequestContext
    ) -> EntryAttributes:
        log.debug("link refused: CS3 storage has no hard links")
        raise FUSEError(errno.EPERM)

    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: RequestContext
    ) -> EntryAttributes:
        if not stat.S_ISREG(mode):
            raise FUSEError(errno.EPERM)
        fi, attr = await self.create(parent_inode, name, mode, os.O_WRONLY, ctx)
        await self.release(fi.fh, os.O_WRONLY, 0, False)
        return attr

    # ---- files -----------------------------------------------------------------------------------

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: RequestContext
    ) -> tuple[FileInfo, EntryAttributes]:
        parent = self._node(parent_inode)
        text = self._name(name)
        async with self._op("create", self._child_path(parent, text)), self.tree.changing(parent):
            self._check_dir_writable(parent)
            ref = self.tree.child_ref(parent, text)
            try:
                await self.storage.touch_file(ref)
            except AlreadyExists:
                if flags & os.O_EXCL:
                    raise
                node = await self.tree.lookup(parent, text)
                fi = await self.open(node.inode, flags | os.O_TRUNC, ctx)
                return fi, await self._entry(node)
            res = await self.storage.stat(ref)
            node = self.inodes.node_for(res.id, Kind.FILE, text, parent.inode)
            node.resource, node.fetched, node.readonly, node.unlinked = res, trio.current_time(), False, False
            if mode & 0o7777 != 0o644 and mode & 0o7777 != 0o666 & ~0o022:
                await self._store_mode(node, mode)
            await self._changed(parent, text, node)
            fi = await self._open_node(node, flags, fresh=res)
            return fi, await self._entry(node)

    async def open(self, inode: int, flags: int, ctx: RequestContext) -> FileInfo:
        node = self._node(inode)
        async with self._op("open", node):
            if node.kind is Kind.DIR:
                raise FUSEError(errno.EISDIR)
            return await self._open_node(node, flags)

    async def _open_node(
        self, node: Node, flags: int, fresh: Resource | None = None, *, kernel: bool = True
    ) -> FileInfo:
        """Open `node` for the kernel (or, with kernel=False, for a change made here: no
        passthrough, the handle never reaches the kernel)."""
        acc = flags & os.O_ACCMODE
        writable = acc in (os.O_WRONLY, os.O_RDWR)
        if writable or flags & os.O_TRUNC:
            self._check_writable(node)
        assert node.rid is not None
        key = str(node.rid)
        # a passthrough writer's close may not have been processed yet (RELEASE comes after close(2)
        # returned): what it wrote must count, e.g. for O_TRUNC below, which looks at the size
        await self._take_passthrough_writes(node)
        for attempt in range(3):
            pending = self.store.get_pending(key)
            res = await self._remote_state(node, pending is None, fresh)
            if writable or flags & os.O_TRUNC:
                holder = self.locks.foreign_holder(node.inode, res)
                # overwrite protection: a file locked elsewhere cannot be truncated; a lock of another
                # application (JupyterLab, web office) forbids writing at all. Between meshfs nodes a
                # plain read-write open stays allowed, as on a local disk (sqlite opens, then locks)
                if holder is not None and (holder.app != APP_NAME or flags & os.O_TRUNC):
                    log.info(
                        "open for write refused: %s is locked by %s",
                        self.tree.path_of(node),
                        holder.describe(),
                    )
                    raise FUSEError(errno.EACCES)
            self.locks.reopened(node.inode)
            before = self.store.lookup(key)
            cf = await trio.to_thread.run_sync(
                partial(self.store.open_file, key, size=res.size, etag=res.etag, mtime=res.mtime_ns / 1e9),
                limiter=self.io,
            )
            if pending is None or fresh is not None or cf.dirty or cf.etag != res.etag or attempt == 2:
                break
            # The file was dirty, so the node's last known resource was passed instead of the server's
            # state, and its upload landed in between: the store took that older resource for the
            # remote version and reset the entry to it (a read saw its old size, 0 bytes; a write took
            # its etag as base and the next upload was a false conflict). Ask the server, open again.
            log.debug("open %s: its upload landed meanwhile; opening again", self.tree.path_of(node))
            await trio.to_thread.run_sync(cf.close, limiter=self.io)
            self.tree.invalidate(node)
        keep = before is not None and (before.dirty or before.etag == res.etag)
        append = bool(flags & os.O_APPEND) and not self._kernel_appends()
        h = Handle(self._new_fh(), node, cf, writable, append, Readahead(self.policy))
        self._handles[h.fh] = h
        node.open_count += 1
        if writable:
            self.writeback.opened_for_write(key)
        try:
            # (a file create() just made is empty on the server already: O_TRUNC changes nothing
            # there, and dirtying it would upload it once more at close)
            if flags & os.O_TRUNC and (cf.size > 0 or (pending is None and fresh is None)):
                await self._dirty(h)
                await self._modify(h, cf.truncate, 0)
                node.local_size = 0
                node.local_mtime_ns = time.time_ns()
        except BaseException:
            await self._close_handle(h)
            raise
        if cf.dirty:
            node.local_size = cf.size
        if kernel:
            try:
                backing_id = await self._passthrough(h)
            except BaseException:
                await self._close_handle(h)
                raise
            if backing_id:
                return FileInfo(fh=h.fh, backing_id=backing_id)
            if node.inode in self._after_passthrough:
                # the kernel's page cache of this inode predates what passthrough wrote
                self._after_passthrough.discard(node.inode)
                keep = False
        return FileInfo(fh=h.fh, keep_cache=keep)

    # ---- FUSE passthrough ------------------------------------------------------------------------

    def _passthrough_wanted(self, h: Handle) -> bool:
        """A new passthrough for a writable open: the kernel agreed, nobody else has the inode
        open (the kernel allows no mix), the file is new or truncated (its cache file is then
        complete: the kernel reads it as the file), and there is room: writes through passthrough
        cannot be held back by the cache limit, so it is used only while plenty of the cache and of
        its disk is free."""
        if not self._passthrough_usable():
            return False
        node, cf = h.node, h.cache
        # only files that start empty (new or O_TRUNC): an open for writing of existing content that
        # writes nothing would otherwise keep the file pending (no revalidation, an upload at fsync)
        if not h.writable or node.open_count != 1 or node.unlinked or cf.size != 0:
            return False
        return self._room_for_passthrough()

    def _room_for_passthrough(self) -> bool:
        """Half the cache and PASSTHROUGH_MIN_FREE of its disk free of dirty data. store.stats() walks
        every entry: answered at most once per PASSTHROUGH_SYNC_INTERVAL (creates come in bursts)."""
        now = trio.current_time()
        if now - self._room_checked_at < PASSTHROUGH_SYNC_INTERVAL:
            return self._room_ok
        st = self.store.stats()
        ok = st.limit - st.dirty_bytes >= max(st.limit // 2, PASSTHROUGH_MIN_FREE)
        if ok:
            try:
                vfs = os.statvfs(self.store.directory)
                ok = vfs.f_bavail * vfs.f_frsize >= PASSTHROUGH_MIN_FREE
            except OSError:
                ok = False
        self._room_checked_at, self._room_ok = now, ok
        return ok

    def _passthrough_usable(self) -> bool:
        """The kernel agreed to passthrough and takes our backing files. Whether it takes them
        (CAP_SYS_ADMIN, a cache dir not on a stacked filesystem) is probed once, with the cache
        directory itself, so that `meshfs status` can tell before the first write."""
        conn = self.session.conn if self.session is not None else None
        if conn is None or not conn.has(PASSTHROUGH) or self._passthrough_off is not None:
            return False
        if not self._passthrough_probed:
            assert self.session is not None
            self._passthrough_probed = True
            try:
                probe = os.open(self.store.directory / "LOCK", os.O_PATH | os.O_CLOEXEC)
                try:
                    self.session.backing_close(self.session.backing_open(probe))
                finally:
                    os.close(probe)
            except OSError as e:
                self._passthrough_off = f"the kernel refuses backing files from the cache dir: {e.strerror}"
                log.info("FUSE passthrough is not used on this mount: %s", self._passthrough_off)
                return False
        return True

    async def _passthrough(self, h: Handle) -> int:
        """The backing id to answer this open with (0: an ordinary open). An inode the kernel has
        open with passthrough must be opened the same way, with the same id."""
        node, cf = h.node, h.cache
        b = self._backing.get(node.inode)
        if b is None:
            if not self._passthrough_wanted(h):
                return 0
            assert self.session is not None
            try:
                backing_id = self.session.backing_open(cf.fd)
            except OSError as e:
                if e.errno in (errno.EPERM, errno.ELOOP, errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL):
                    self._passthrough_off = f"the kernel refused a backing file: {e.strerror}"
                    log.info("FUSE passthrough is not used on this mount: %s", self._passthrough_off)
                else:  # e.g. out of descriptors: this open goes the ordinary way
                    log.debug("passthrough for %s: %s", self.tree.path_of(node), e.strerror)
                return 0
            b = _Backing(backing_id)
            try:
                cf.begin_passthrough(writable=h.writable)
            except StoreError:
                self.session.backing_close(backing_id)
                return 0
            b.handles.append(h)
            h.passthrough = True
            self._backing[node.inode] = b
            async with b.lock:
                try:
                    b.clean_at_open = not cf.dirty
                    await self._dirty(h)  # before the kernel writes: journaled, never reset or evicted
                    b.generation = cf.generation
                    b.stamp = cf.disk_stamp()
                except BaseException:
                    await self._end_passthrough(h)
                    raise
        else:
            try:
                cf.begin_passthrough(writable=h.writable)
            except StoreError as e:
                raise MeshError(f"cannot share the passthrough file: {e}", op="open") from e
            b.handles.append(h)
            h.passthrough = True
        self.passthrough_opens += 1
        return b.backing_id

    async def _take_passthrough_writes(self, node: Node) -> None:
        """Take what the kernel wrote through passthrough into the cache's accounting: size, used
        space, the file dirty (again, after an fsync's upload) with a new generation."""
        b = self._backing.get(node.inode)
        if b is None:
            return
        async with b.lock:
            if self._backing.get(node.inode) is b:
                await self._take_locked(node, b)

    async def _take_locked(self, node: Node, b: _Backing) -> None:
        if not b.handles:
            return
        h = next((x for x in b.handles if x.writable), b.handles[0])
        cf = h.cache
        try:
            stamp = cf.disk_stamp()
        except (OSError, StoreError):
            return
        if stamp == b.stamp:
            return
        await self._dirty(h)
        size = await trio.to_thread.run_sync(cf.adopt_disk, limiter=self.io)
        b.stamp = stamp  # a write after that fstat shows as a new stamp next time
        node.local_size = size
        node.local_mtime_ns = stamp[1]

    async def _end_passthrough(self, h: Handle) -> None:
        """`h` closes. The last passthrough open of an inode drops the backing id; a file created by
        this open and never changed is clean again (no upload for `touch`); a file an upload landed
        for while the kernel could write it unseen goes up once more."""
        node, cf = h.node, h.cache
        b = self._backing.get(node.inode)
        h.passthrough = False
        again = cf.end_passthrough(writable=h.writable)
        last = False
        if b is not None and h in b.handles:
            b.handles.remove(h)
            if not b.handles:
                last = True
                del self._backing[node.inode]
                self._after_passthrough.add(node.inode)
                if self.session is not None:
                    self.session.backing_close(b.backing_id)
        if again:
            # what went up may be older than the file: a store through a shared mmap into a page
            # already dirty moves no timestamp
            await trio.to_thread.run_sync(cf.adopt_disk, limiter=self.io)
        assert node.rid is not None
        key = str(node.rid)
        if (
            last
            and b is not None
            and b.clean_at_open
            and cf.dirty
            and cf.generation == b.generation
            and key not in self.writeback.mtimes
        ):
            await trio.to_thread.run_sync(
                partial(self.store.mark_clean, key, b.generation, etag=cf.etag), limiter=self.io
            )
            if not cf.dirty:
                node.local_size = node.local_mtime_ns = None

    def passthrough_status(self) -> dict[str, object]:
        """For `meshfs status`: whether passthrough is in use, why not, opens so far, open now."""
        conn = self.session.conn if self.session is not None else None
        self._passthrough_usable()
        why = self._passthrough_off
        if why is None and (conn is None or not conn.has(PASSTHROUGH)):
            why = "not negotiated with the kernel (needs kernel >= 6.9 and passthrough = true)"
        opens, now = self.passthrough_opens, len(self._backing)
        return {"on": why is None, "why": why, "opens": opens, "open_files": now}

    async def _take_logged(self, node: Node) -> None:
        """_take_passthrough_writes for callers that are not a request: a failure is logged (the file
        stays pending and is taken in again at the next chance)."""
        try:
            await self._take_passthrough_writes(node)
        except (MeshError, StoreError, FUSEError) as e:
            log.warning("%s: taking in passthrough writes: %s", self.tree.path_of(node), e)

    async def before_upload(self, key: str) -> None:
        """Write-back hook: take in passthrough writes before an upload reads the file."""
        for node in self.inodes_by_key(key):
            await self._take_logged(node)

    async def passthrough_loop(self) -> None:
        """Background: account writes through passthrough every PASSTHROUGH_SYNC_INTERVAL (the
        cache's use stays current in `meshfs status`; clean data is evicted to make room)."""
        while True:
            await trio.sleep(PASSTHROUGH_SYNC_INTERVAL)
            if not self._backing:
                continue
            for inode in list(self._backing):
                node = self.inodes.get(inode)
                if node is not None:
                    await self._take_logged(node)
            await trio.to_thread.run_sync(self.store.ensure_space, 0, limiter=self.io)

    async def _remote_state(self, node: Node, clean: bool, fresh: Resource | None) -> Resource:
        """The remote version an open revalidates the cache against: `fresh` (just created), the
        server's current one for a clean file (close-to-open consistency), else the last known one
        (a dirty file keeps its local content whatever the server says)."""
        res = fresh
        shown = node.resource  # what the kernel may have cached (size, mtime)
        if res is None and clean:
            res = await self.tree.stat(node, force=True)
            if shown is not None and res is not None and res.etag != shown.etag and self.session is not None:
                # the kernel still believes the old size (a read past it would end at the old EOF):
                # drop its attributes and pages before this open is answered
                self.session.invalidate_inode(node.inode)
                with trio.move_on_after(2):
                    await self.session.drain_notifications()
        if res is None:
            res = node.resource
        assert res is not None
        return res

    async def _dirty(self, h: Handle) -> None:
        """Journal the file as dirty before its first modification."""
        if h.cache.dirty:
            return
        node = h.node
        assert node.rid is not None
        res = node.resource
        path = self.tree.path_of(node)
        base = h.cache.etag if h.cache.etag is not None else (res.etag if res else None)
        await trio.to_thread.run_sync(
            lambda: self.store.mark_dirty(
                str(node.rid), path=path, resource_id=str(node.rid), base_etag=base, lock_id=None
            ),
            limiter=self.io,
        )
        node.local_size = h.cache.size

    def _kernel_appends(self) -> bool:
        """With FUSE_WRITEBACK_CACHE the kernel resolves O_APPEND itself and writes dirty pages back
        at their own offsets, through any writable handle: honouring O_APPEND here would move each
        written-back page to the end of the file (libfuse's passthrough_ll drops O_APPEND too)."""
        conn = self.session.conn if self.session is not None else None
        return conn is not None and conn.has(WRITEBACK_CACHE)

    def _handle(self, fh: int) -> Handle:
        h = self._handles.get(fh)
        if h is None:
            raise FUSEError(errno.EBADF)
        return h

    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        h = self._handle(fh)
        async with self._op("read", h.node):
            cf = h.cache
            file_size = cf.size
            if off >= file_size or size <= 0:
                return b""
            size = min(size, file_size - off)
            plan = h.readahead.plan(off, size, file_size)
            if plan.sequential:
                # keep a window of data ahead of a sequential reader, fetched in window-sized pieces
                # (one GET each) as soon as less than half a window is left ahead
                window = max(plan.fetch_len, h.readahead.window)
                if not cf.covers(off, size):
                    await self._fill(h, plan.need_off, min(window, file_size - plan.need_off))
                self._read_ahead(h, off, window, file_size)
            elif not cf.covers(off, size):
                await self._fill(h, plan.fetch_off, plan.fetch_len)
            # a cached range in the page cache is read right here: a hop to a worker thread would
            # cost more than the read (F5: 4 KiB reads); anything that would wait for the disk
            # goes to a thread
            inline = cf.try_read(off, size)
            if inline is not None:
                return inline
            for _ in range(3):
                try:
                    data = await trio.to_thread.run_sync(cf.read, off, size, limiter=self.io)
                    return data
                except NotPresent:  # evicted or invalidated between the fill and the read
                    await self._fill(h, off, size)
            raise FUSEError(errno.EIO)

    def _read_ahead(self, h: Handle, off: int, window: int, file_size: int) -> None:
        end = min(file_size, off + window)
        missing = h.cache.missing(off, end - off)
        if missing and missing[0][0] - off <= window // 2:
            first = missing[0][0]
            self._prefetch(h, first, min(window, file_size - first))

    def _prefetch(self, h: Handle, off: int, length: int) -> None:
        if self.nursery is None or h.prefetching or length <= 0:
            return
        h.prefetching = True

        async def run() -> None:
            try:
                await self._fill(h, off, length)
            except (MeshError, StoreError, FUSEError) as e:
                log.debug("prefetch of %s failed: %s", self.tree.path_of(h.node), e)
            finally:
                h.prefetching = False

        self.nursery.start_soon(run)

    async def _fill(self, h: Handle, off: int, length: int) -> None:
        """Make [off, off+length) of the remote version present in the cache file. Pieces another
        task is already fetching are waited for, not fetched twice; the rest is fetched here."""
        node = h.node
        if node.rid is None or h.closed:
            return
        cf = h.cache
        flights = self._inflight.setdefault(node.inode, [])
        for _ in range(8):
            missing = cf.missing(off, length)
            if not missing:
                return
            waits = [f for f in flights if any(f.start < m + n and m < f.end for m, n in missing)]
            mine: list[tuple[int, int]] = []
            for m, n in missing:
                pieces = [(m, m + n)]
                for f in waits:
                    pieces = [
                        part
                        for a, b in pieces
                        for part in ((a, min(b, f.start)), (max(a, f.end), b))
                        if part[0] < part[1]
                    ]
                mine.extend((a, b - a) for a, b in pieces)
            if mine:
                own = [_Flight(m, m + n) for m, n in mine]
                flights.extend(own)
                try:
                    await self._fetch(h, mine)
                finally:
                    for f in own:
                        flights.remove(f)
                        f.done.set()
            for f in waits:
                await f.done.wait()
        if cf.missing(off, length):
            raise MeshError("data kept changing while it was read", op="read", path=self.tree.path_of(node))

    async def _fetch(self, h: Handle, pieces: list[tuple[int, int]]) -> None:
        node, cf = h.node, h.cache
        assert node.rid is not None
        await self.space.reserve(sum(n for _, n in pieces), timeout=self.backpressure_timeout)
        if h.ticket is None:
            h.ticket = await self.transfer.initiate_download(Ref.to(node.rid))
        for moff, mlen in pieces:
            epoch = cf.epoch
            got = await self.transfer.read_range(
                h.ticket, cf.fd, offset=moff, length=mlen, fd_offset=moff, path=self.tree.path_of(node)
            )
            self.bytes_down += got
            await trio.to_thread.run_sync(partial(cf.mark_present, moff, got, epoch=epoch), limiter=self.io)

    async def write_buf(self, fh: int, off: int, buf: WritePayload) -> int:
        h = self._handle(fh)
        async with self._op("write", h.node):
            if not h.writable:
                raise FUSEError(errno.EBADF)
            if h.node.unlinked is False and h.node.readonly:
                raise FUSEError(errno.EACCES)
            if self.locks.lost(h.node.inode):
                raise FUSEError(errno.EIO)  # never write without the lock we think we hold
            await self._dirty(h)
            cf = h.cache
            if h.append:
                off = cf.size
            # `buf` stays valid until we answer; it writes itself into the cache file (spliced
            # from the kernel when it is still in the session's pipe): no copy through Python
            grow = max(0, off + len(buf) - cf.size)
            if grow:
                await self.space.reserve(grow, timeout=self.backpressure_timeout)
            n = self._write_inline(cf, off, buf)
            if n is None:
                n = await self._modify(h, cf.write, off, buf)
            h.node.local_size = cf.size
            h.node.local_mtime_ns = time.time_ns()
            return n

    async def _modify(self, h: Handle, fn: Callable[..., T], *args: object) -> T:
        """A change of the cache file (write, truncate) in a worker thread. A file dirty when the
        request began can turn clean under it: an upload already running when it was opened for
        writing finishes and marks it clean. It is then marked dirty again and the change retried
        (no new upload starts while a writer has the file open)."""
        try:
            return await trio.to_thread.run_sync(fn, *args, limiter=self.io)
        except WriteToCleanFile:
            await self._dirty(h)
            return await trio.to_thread.run_sync(fn, *args, limiter=self.io)

    def _write_inline(self, cf: CacheFile, off: int, buf: WritePayload) -> int | None:
        """pwrite a small write into the cache file on the event loop's thread: a few KiB into the
        page cache cost microseconds, less than handing them to a worker thread (see
        INLINE_WRITE_MAX). The kernel may still stall a writer (dirty-page throttling when the disk
        falls behind): a write that took longer than INLINE_WRITE_SLOW sends the writes of the next
        INLINE_WRITE_BACKOFF seconds to worker threads, so the loop (every other request of the
        mount) stalls once, briefly. A payload still in the kernel (spliced) is written inline at
        any size: splice(2) moves it pipe -> page cache without Python, cheaper than the hop.
        None: the caller uses a worker thread."""
        if len(buf) > INLINE_WRITE_MAX and not buf.in_kernel:
            return None
        now = trio.current_time()
        if now < self._inline_writes_after:
            return None
        n = cf.try_write(off, buf)
        took = trio.current_time() - now
        if took > INLINE_WRITE_SLOW:
            self._inline_writes_after = now + took + INLINE_WRITE_BACKOFF
            log.debug("write: an inline write took %.1f ms; using worker threads for a while", took * 1e3)
        return n

    async def _truncate(self, node: Node, size: int, fh: int | None) -> None:
        """(Callers take in passthrough writes first: the sizes below must be current.)"""
        h = self._handles.get(fh) if fh is not None else None
        temp = None
        if h is None:
            h = self._writer_of(node)
        if h is None:
            fi = await self._open_node(node, os.O_WRONLY, kernel=False)
            temp = self._handles[fi.fh]
            h = temp
        try:
            await self._dirty(h)
            grow = max(0, size - h.cache.size)
            if grow:
                await self.space.reserve(grow, timeout=self.backpressure_timeout)
            await self._modify(h, h.cache.truncate, size)
            node.local_size = size
            node.local_mtime_ns = time.time_ns()
        finally:
            if temp is not None:
                await self.release(temp.fh, os.O_WRONLY, 0, False)

    async def flush(self, fh: int, lock_owner: int) -> None:
        h = self._handles.get(fh)
        if h is not None:
            async with self._op("flush", h.node):
                await self.locks.release_owner(h.node.inode, lock_owner)
                if h.passthrough and h.writable and self.locks.lost(h.node.inode):
                    # writes through passthrough are not checked one by one: close reports it
                    raise FUSEError(errno.EIO)

    async def release(self, fh: int, flags: int, lock_owner: int, flock_release: bool) -> None:
        h = self._handles.get(fh)
        if h is None:
            return
        async with self._op("release", h.node):
            await self._close_handle(h)  # first: the data is then scheduled, and flushed on unlock
            if flock_release:
                await self.locks.release_flock(h.node.inode, lock_owner)
            for owner in h.lock_owners:  # OFD locks; POSIX ones of a process went at its FLUSH
                await self.locks.release_owner(h.node.inode, owner)

    async def _close_handle(self, h: Handle) -> None:
        b = self._backing.get(h.node.inode)
        try:
            if h.passthrough and b is not None:
                async with b.lock:
                    try:
                        await self._take_locked(h.node, b)
                    finally:
                        await self._end_passthrough(h)
            elif h.passthrough:
                await self._end_passthrough(h)
        except (MeshError, StoreError) as e:
            # the file stays pending (it was marked dirty at open): it goes up at the next chance
            log.error("%s: taking in what the kernel wrote at close: %s", self.tree.path_of(h.node), e)
        self._handles.pop(h.fh, None)
        h.closed = True
        node = h.node
        key = str(node.rid)
        dirty = h.cache.dirty
        try:
            await trio.to_thread.run_sync(h.cache.close, limiter=self.io)
        finally:  # whatever failed above, the handle is gone: its counts must not stay up
            self.inodes.release_open(node)
            if h.writable:
                self.writeback.closed_for_write(key)
            elif dirty and not any(x.node is node and x.writable for x in self._handles.values()):
                self.writeback.schedule(key)
        if node.unlinked and node.open_count == 0:
            self.writeback.forget(key)
            await trio.to_thread.run_sync(self.store.forget, key, limiter=self.io)
            node.local_size = node.local_mtime_ns = None

    async def fsync(self, fh: int, datasync: bool) -> None:
        h = self._handle(fh)
        async with self._op("fsync", h.node):
            # (a file a passthrough writer has open is never clean; writeback.flush takes its writes in)
            if not h.cache.dirty or h.node.unlinked:
                return
            await trio.to_thread.run_sync(h.cache.sync_data, limiter=self.io)
            await self.writeback.flush(str(h.node.rid))

    async def fallocate(self, fh: int, off: int, length: int, mode: int) -> None:
        h = self._handle(fh)
        async with self._op("fallocate", h.node):
            await self._take_passthrough_writes(h.node)  # the size compared below must be current
            if mode & ~1:  # only plain allocation and KEEP_SIZE
                raise FUSEError(errno.EOPNOTSUPP)
            if not mode & 1 and off + length > h.cache.size:
                await self._truncate(h.node, off + length, fh)

    async def uploaded(self, key: str, etag: str, new_id: object) -> None:
        """Write-back hook: a file went up (or its conflict copy did); refresh what the kernel sees.
        The upload moved the parent's tree time on the server: a local mtime of the parent not
        stored yet is stored now, so other nodes and later mounts see that one too."""
        for node in list(self.inodes_by_key(key)):
            if self.store.get_pending(key) is None:
                info = self.store.lookup(key)
                res = node.resource
                if (
                    res is not None
                    and info is not None
                    and info.etag == etag
                    and info.size == node.local_size
                ):
                    # our version is the server's now (not a conflict, where the cache follows the
                    # server's): until the next Stat, show the size and mtime it went up with, not
                    # the resource from before it (an answer that crossed the upload is not recorded,
                    # and the kernel may use attributes within the jiffy they came in, timeout or not)
                    mtime = node.local_mtime_ns if node.local_mtime_ns is not None else res.mtime_ns
                    node.resource = replace(res, size=info.size, mtime_ns=mtime, etag=etag)
                node.local_size = node.local_mtime_ns = None
            self.tree.invalidate(node)
            parent = self.inodes.get(node.parent)
            if parent is not None:
                self.tree.invalidate(parent)
                self.tree.forget_listing(parent)
                await self._save_dir_mtime(parent)

    async def _save_dir_mtime(self, d: Node) -> None:
        mtime = d.local_mtime_ns
        if d.inode not in self._dir_mtimes_unsaved or mtime is None or d.rid is None:
            return
        self._dir_mtimes_unsaved.discard(d.inode)
        try:
            await self.storage.set_metadata(Ref.to(d.rid), {DIR_MTIME_KEY: str(mtime)}, lock_id=self._lid(d))
        except MeshError as e:
            log.debug("storing the mtime of %s: %s", self.tree.path_of(d), e)

    async def lease_acquired(self, inode: int, res: Resource) -> None:
        """Lock hook: a lease was taken; if the server has a newer version than our clean cache,
        drop the cached data and the kernel's pages (a lock holder must see the last holder's data)."""
        node = self.inodes.get(inode)
        if node is None or node.rid is None:
            return
        key = str(node.rid)
        info = self.store.lookup(key)
        node.resource, node.fetched = res, trio.current_time()
        if info is None or info.dirty or info.etag == res.etag:
            return
        cf = await trio.to_thread.run_sync(
            lambda: self.store.open_file(key, size=res.size, etag=res.etag, mtime=res.mtime_ns / 1e9),
            limiter=self.io,
        )
        await trio.to_thread.run_sync(cf.close, limiter=self.io)
        for h in self._handles.values():
            if h.node is node:
                h.ticket = None
        if self.session is not None:
            self.session.invalidate_inode(inode)

    async def flush_inode(self, inode: int) -> None:
        """Lock hook: upload this file's pending data now (before its lock is released)."""
        node = self.inodes.get(inode)
        if node is None or node.rid is None or node.unlinked:
            return
        if self.store.get_pending(str(node.rid)) is not None:
            await self.writeback.flush(str(node.rid))

    def mtime_for_upload(self, key: str) -> int | None:
        """The mtime the user saw for a dirty file: the upload stores exactly that (X-OC-Mtime)."""
        nodes = self.inodes_by_key(key)
        return nodes[0].local_mtime_ns if nodes else None

    def inodes_by_key(self, key: str) -> list[Node]:
        try:
            node = self.inodes.by_rid(ResourceId.parse(key))
        except ValueError:
            return []
        return [] if node is None else [node]

    # ---- locks -----------------------------------------------------------------------------------

    async def getlk(self, inode: int, fh: int, owner: int, lock: FLock, ctx: RequestContext) -> FLock:
        node = self._node(inode)
        async with self._op("getlk", node):
            c = self.locks.local_conflict(inode, owner, lock.start, lock.end, lock.type, lock.flock)
            if c is not None:
                return FLock(c[1], c[2], c[0], c[3], lock.flock)
            if self.locks.lock_id_of(inode) is None and node.rid is not None:
                res = await self.tree.stat(node, force=True)
                if self.locks.foreign_holder(inode, res) is not None:
                    return FLock(0, LOCK_END_EOF, F_WRLCK, 0, lock.flock)  # held on another node: pid 0
            return FLock(lock.start, lock.end, F_UNLCK, 0, lock.flock)

    async def setlk(
        self, inode: int, fh: int, owner: int, lock: FLock, sleep: bool, ctx: RequestContext
    ) -> None:
        node = self._node(inode)
        async with self._op("setlk", node):
            if node.rid is None:
                raise FUSEError(errno.EINVAL)  # virtual directories cannot be locked
            if not lock.flock and lock.type != F_UNLCK:
                # OFD locks (owner = the open file) get no unlock at close: remember the owners
                # that locked through this handle and drop them at its RELEASE
                h = self._handles.get(fh)
                if h is not None:
                    h.lock_owners.add(owner)
            try:
                await self.locks.acquire(
                    inode, node.rid, self.tree.path_of(node), owner, lock.start, lock.end, lock.type,
                    lock.pid, flock=lock.flock, sleep=sleep,
                )  # fmt: skip
            except Conflict:
                raise FUSEError(errno.EAGAIN) from None

    # ---- misc ------------------------------------------------------------------------------------

    async def statfs(self, ctx: RequestContext) -> StatvfsData:
        async with self._op("statfs", "/"):
            home = self.tree.home_ref
            if home is None:
                raise FUSEError(errno.EIO)
            q = await self.storage.get_quota(home)
            bs = 4096
            total = q.total if q.total > 0 else max(BIG_QUOTA, q.used * 2)
            free = max(0, total - q.used)
            return StatvfsData(
                f_bsize=bs, f_frsize=bs, f_blocks=total // bs, f_bfree=free // bs, f_bavail=free // bs,
                f_files=1 << 32, f_ffree=1 << 31, f_favail=1 << 31, f_namemax=255,
            )  # fmt: skip

    async def access(self, inode: int, mode: int, ctx: RequestContext) -> bool | None:
        node = self._node(inode)
        return not (mode & os.W_OK and (self.read_only or not self.tree.writable(node)))

    # ---- xattrs ----------------------------------------------------------------------------------

    async def getxattr(self, inode: int, name: bytes, ctx: RequestContext) -> bytes:
        node = self._node(inode)
        async with self._op("getxattr", node):
            res = await self.tree.stat(node) if node.rid is not None else None
            if res is None:
                raise FUSEError(errno.ENODATA)
            if name == b"user.meshfs.etag":
                return res.etag.encode()
            if name == b"user.meshfs.fileid":
                return str(res.id).encode()
            if name == b"user.meshfs.checksum":
                if res.checksum is None:
                    raise FUSEError(errno.ENODATA)
                return f"{res.checksum.type}:{res.checksum.value}".encode()
            if name == b"user.meshfs.lock":
                text = self.locks.holder_text(node.inode, await self.tree.stat(node, force=True))
                if text is None:
                    raise FUSEError(errno.ENODATA)
                return text.encode()
            if name == b"user.meshfs.state":
                return self.writeback.state_of(str(node.rid)).encode()
            if name == GRANTEES_XATTR and self.share_commands is not None:
                return await self.share_commands.grantees(node)
            key = self._xattr_key(name)
            value = res.metadata.get(key)
            if value is None:
                raise FUSEError(errno.ENODATA)
            return decode_xattr(value)

    @staticmethod
    def _xattr_key(name: bytes) -> str:
        if not name.startswith(b"user."):
            raise FUSEError(
                errno.ENODATA
                if not name.startswith((b"trusted.", b"security.", b"system."))
                else errno.EOPNOTSUPP
            )
        try:
            return XATTR_PREFIX + name.decode("utf-8")
        except UnicodeDecodeError:
            raise FUSEError(errno.EINVAL) from None

    async def listxattr(self, inode: int, ctx: RequestContext) -> Sequence[bytes]:
        node = self._node(inode)
        async with self._op("listxattr", node):
            res = await self.tree.stat(node) if node.rid is not None else None
            if res is None:
                return []
            names = [k[len(XATTR_PREFIX) :].encode() for k in res.metadata if k.startswith(XATTR_PREFIX)]
            ro = [n for n in RO_XATTRS if n != b"user.meshfs.checksum" or res.checksum is not None]
            extra = [GRANTEES_XATTR] if self.share_commands is not None else []
            return names + ro + extra

    async def setxattr(self, inode: int, name: bytes, value: bytes, flags: int, ctx: RequestContext) -> None:
        node = self._node(inode)
        async with self._op("setxattr", node):
            if name.startswith(b"user.meshfs."):
                raise FUSEError(errno.EPERM)
            key = self._xattr_key(name)
            if not name.startswith(b"user."):
                raise FUSEError(errno.EOPNOTSUPP)
            self._check_writable(node)
            res = await self.tree.stat(node, force=True)
            assert res is not None and node.rid is not None
            if flags & 1 and key in res.metadata:
                raise FUSEError(errno.EEXIST)
            if flags & 2 and key not in res.metadata:
                raise FUSEError(errno.ENODATA)
            if len(value) > 64 * 1024:
                raise FUSEError(errno.E2BIG)
            text = encode_xattr(value)
            await self.storage.set_metadata(Ref.to(node.rid), {key: text}, lock_id=self._lid(node))
            await self.tree.stat(node, force=True)

    async def removexattr(self, inode: int, name: bytes, ctx: RequestContext) -> None:
        node = self._node(inode)
        async with self._op("removexattr", node):
            if name.startswith(b"user.meshfs."):
                raise FUSEError(errno.EPERM)
            key = self._xattr_key(name)
            self._check_writable(node)
            res = await self.tree.stat(node, force=True)
            assert res is not None and node.rid is not None
            if key not in res.metadata:
                raise FUSEError(errno.ENODATA)
            await self.storage.unset_metadata(Ref.to(node.rid), [key], lock_id=self._lid(node))
            await self.tree.stat(node, force=True)
