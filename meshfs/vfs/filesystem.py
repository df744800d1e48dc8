"""MeshFilesystem: everything one mount needs, assembled from a Config, with its background loops.

Owns: building the gateway session, storage/share/transfer clients, the cache store, the write-back
queue, the tree and the operations; starting their loops in the daemon's nursery (write-back workers,
remote-change poller); status, sync and drain for the daemon and the control socket.

Must not import: grpc, cs3apis, urllib3 (only meshfs.cs3's public API).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import trio

from meshfs.auth import MountCredentials, credential_source
from meshfs.cache.store import CacheStore, StoreError, checkpoint_loop
from meshfs.cache.writeback import WriteBack
from meshfs.config import Config
from meshfs.cs3 import Gateway, Ref, Shares, Storage, Transfer
from meshfs.errors import MeshError, NotFound
from meshfs.fuse import Session
from meshfs.vfs.inodes import InodeTable, Kind
from meshfs.vfs.locks import LockManager
from meshfs.vfs.ops import MeshOps
from meshfs.vfs.shares import ShareCommands
from meshfs.vfs.tree import Tree

log = logging.getLogger(__name__)


def credentials_from(config: Config) -> MountCredentials:
    """Where this mount's credentials come from (password file, token file re-read when it changes,
    WLCG token discovery, token command): meshfs.auth decides."""
    return credential_source(config)


class MeshFilesystem:
    """One mount's filesystem. `start()` in the daemon nursery, then serve `operations`."""

    def __init__(self, config: Config) -> None:
        self.config = config
        server = config.require_server()
        self.server = server
        self.credentials = credentials_from(config)
        self.gateway = Gateway(
            server.address,
            self.credentials,
            tls=config.tls,
            ca_file=str(config.ca_file) if config.ca_file else None,
            rpc_threads=max(2, config.io_threads),
            call_timeout=config.call_timeout,
            unavailable_timeout=config.unavailable_timeout,
        )
        self.storage = Storage(self.gateway)
        self.shares = Shares(self.gateway)
        self.transfer = Transfer(
            self.gateway,
            http_threads=max(2, config.io_threads),
            read_timeout=config.transfer_timeout,
            ca_file=str(config.ca_file) if config.ca_file else None,
        )
        self.inodes = InodeTable()
        self.tree = Tree(
            self.storage,
            self.shares,
            self.inodes,
            attr_ttl=config.attr_ttl,
            entry_ttl=config.entry_ttl,
            negative_ttl=config.negative_ttl,
        )
        self.share_commands = ShareCommands(
            self.tree, self.shares, lambda: self.gateway.user, lambda: self.session
        )
        self.store: CacheStore | None = None
        self._ops: MeshOps | None = None
        self.writeback: WriteBack | None = None
        self.session: Session | None = None
        self.io_limiter = trio.CapacityLimiter(max(2, config.io_threads))

    @property
    def operations(self) -> MeshOps:
        if self._ops is None:
            raise RuntimeError("MeshFilesystem.start() has not run")
        return self._ops

    async def start(self, nursery: trio.Nursery) -> None:
        """Log in, open the cache (resuming its journal), start the background loops."""
        await nursery.start(self.credentials.watch)
        await self.gateway.open()
        await self.tree.start()
        cache_dir = self.config.require_cache_dir()
        try:
            self.store = await trio.to_thread.run_sync(CacheStore, cache_dir, self.config.cache_size)
        except StoreError as e:
            raise MeshError(str(e), op="cache") from None
        self.writeback = WriteBack(
            self.store,
            self.storage,
            self.transfer,
            user=self.server.user,
            delay=self.config.upload_delay,
            workers=self.config.upload_workers,
            chunk_size=self.config.upload_chunk_size,
            locate=self._locate,
        )
        self.locks = LockManager(
            self.storage,
            lambda: self.gateway.user,
            expiry=self.config.lock_expiry,
            refresh_interval=self.config.lock_refresh_interval,
        )
        self._ops = MeshOps(
            tree=self.tree,
            storage=self.storage,
            transfer=self.transfer,
            store=self.store,
            writeback=self.writeback,
            uid=os.getuid(),
            gid=os.getgid(),
            entry_ttl=self.config.entry_ttl,
            attr_ttl=self.config.attr_ttl,
            negative_ttl=self.config.negative_ttl,
            backpressure_timeout=self.config.backpressure_timeout,
            readahead_max=self.config.readahead_max,
            io_limiter=self.io_limiter,
            read_only=self.config.ro,
            locks=self.locks,
        )
        self.writeback.on_uploaded = self._ops.uploaded
        self.writeback.before_upload = self._ops.before_upload
        self._ops.share_commands = self.share_commands
        self._ops.nursery = nursery
        if self.config.dir_poll_interval > 0:
            await nursery.start(self.share_commands.watch, self.config.dir_poll_interval)
        self.writeback.lock_of = self._ops.lock_id_for_key
        self.writeback.mtime_of = self._ops.mtime_for_upload
        self.locks.on_acquired = self._ops.lease_acquired
        self.locks.before_release = self._ops.flush_inode
        await nursery.start(self.locks.refresher)
        nursery.start_soon(checkpoint_loop, self.store)
        nursery.start_soon(self._ops.passthrough_loop)
        await nursery.start(self.writeback.run)
        if self.config.dir_poll_interval > 0:
            nursery.start_soon(self._poll_remote)
        if self.config.metrics_port is not None:
            from meshfs.metrics import serve_metrics

            await nursery.start(serve_metrics, self, self.config.metrics_port)
        pending = self.store.pending()
        if pending:
            log.info("resuming %d pending upload(s) from the journal", len(pending))

    def attach(self, session: Session) -> None:
        self.session = session
        if self._ops is not None:
            self._ops.session = session

    def _locate(self, path: str) -> Ref | None:
        """Where a journal path (mount-relative) lives on the server, for recreating a file."""
        parts = path.strip("/").split("/")
        if len(parts) >= 2 and parts[0] == "home" and self.tree.home_ref is not None:
            return Ref(path=self.tree.home_path.rstrip("/") + "/" + "/".join(parts[1:]))
        return None

    # ---- remote changes --------------------------------------------------------------------------

    async def _poll_remote(self) -> None:
        """Directory etags change when anything below changes: re-stat the directories whose
        listings are cached and drop what changed (listing, kernel entries, file attributes)."""
        while True:
            await trio.sleep(self.config.dir_poll_interval)
            for inode in self.tree.cached_listings():
                node = self.inodes.get(inode)
                if node is None or node.rid is None or node.kind is not Kind.DIR:
                    continue
                old = node.resource.etag if node.resource else None
                try:
                    res = await self.tree.stat(node, force=True)
                except NotFound:
                    self.tree.forget_listing(inode)
                    continue
                except MeshError as e:
                    log.debug("poll %s: %s", self.tree.path_of(node), e)
                    continue
                if res is not None and res.etag != old:
                    await self._refresh_dir(inode)

    async def _refresh_dir(self, inode: int) -> None:
        node = self.inodes.get(inode)
        if node is None:
            return
        before = dict(self.tree.known_listing(inode) or {})  # last listing; the etag just moved
        self.tree.forget_listing(inode)
        try:
            after = await self.tree.listing(node)
        except MeshError:
            return
        session = self.session
        if session is None:
            return
        for name, child in before.items():
            now = after.get(name)
            if now is not child:
                session.invalidate_entry(inode, name.encode())
            elif child.kind is Kind.FILE and child.local_size is None:
                session.invalidate_inode(child.inode)
        for name in after:
            if name not in before:
                session.invalidate_entry(inode, name.encode())

    # ---- daemon interface ------------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        user = self.gateway.user
        ops = self._ops
        stats = self.store.stats() if self.store is not None else None
        wb = self.writeback
        return {
            "server": str(self.server),
            "auth": self.credentials.status(),
            "user": user.username,
            "home": self.tree.home_path,
            "cache": {
                "dir": str(self.config.cache_dir),
                "limit": stats.limit if stats else 0,
                "used": stats.used if stats else 0,
                "dirty_bytes": stats.dirty_bytes if stats else 0,
                "files": stats.files if stats else 0,
                "dirty_files": stats.dirty_files if stats else 0,
            },
            "uploads": wb.status() if wb else [],
            "conflicts": [
                {"path": c.path, "copy": c.copy_name, "time": c.when} for c in (wb.conflicts if wb else [])
            ],
            "locks": self.locks.status() if self._ops else [],
            "errors": list(ops.errors[-20:]) if ops else [],
            "bytes_down": ops.bytes_down if ops else 0,
            "bytes_up": wb.uploaded_bytes if wb else 0,
            "passthrough": ops.passthrough_status() if ops else {"on": False, "why": "not mounted"},
        }

    async def sync(self, path: str | None) -> list[str]:
        if self.writeback is None:
            return []
        return await self.writeback.sync(self._relative(path))

    def _relative(self, path: str | None) -> str | None:
        if path is None:
            return None
        mp = str(self.config.mountpoint or "")
        p = os.path.abspath(path)
        if mp and (p == mp or p.startswith(mp.rstrip("/") + "/")):
            return p[len(mp) :].strip("/")
        return path.strip("/")

    async def drain(self) -> None:
        """Finish pending uploads (bounded by drain_timeout), then close the cache cleanly."""
        if self._ops is not None:
            await self.locks.release_all()
        if self.writeback is not None:
            timeout = self.config.drain_timeout if self.config.drain_timeout > 0 else math.inf
            failures = await self.writeback.sync(None, timeout=timeout)
            for line in failures:
                log.error("not uploaded at unmount (kept in the cache, resumed at next mount): %s", line)
        if self.store is not None:
            await trio.to_thread.run_sync(self.store.close)
        self.transfer.close()
        await self.gateway.aclose()

    async def command(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        if name in ("share", "users"):
            return await self.share_commands.run(name, args)
        raise MeshError(f"unknown command {name!r}", op="command")
