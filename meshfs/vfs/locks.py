"""Advisory locks: the local lock table (POSIX byte ranges + flock) and the CS3 lock leases behind it.

Owns: exact local semantics between processes of this node (owners, ranges, merge/split, upgrade and
downgrade, F_GETLK answers, release of an owner's POSIX locks on close and of a flock on last close),
and the lease: the first local lock on a file takes a whole-file CS3 lock (lock id unique per mount
and file, app_name "meshfs", an expiration), a refresher keeps it alive, the last unlock releases it.
While held, meshfs also publishes the cs3api4lab metadata entry so JupyterLab users see the holder.
A lock held elsewhere — another node, another user, an unexpired cs3api4lab entry, a web office lock —
is a conflict: non-blocking requests get `Conflict`, blocking ones poll with backoff (10 ms → 1 s)
until granted or cancelled (FUSE INTERRUPT cancels the handler task).

Must not import: grpc, cs3apis, urllib3, meshfs.fuse (ops.py translates Conflict/LeaseLost to errnos).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from meshfs.cs3 import Lock as CS3Lock
from meshfs.cs3 import Ref, Resource, ResourceId, Storage, User
from meshfs.errors import Aborted, FailedPrecondition, Locked, MeshError, NotFound

log = logging.getLogger(__name__)

RDLCK, WRLCK, UNLCK = 0, 1, 2
EOF = 0x7FFF_FFFF_FFFF_FFFF
JUPYTER_KEY = "cs3apis4lab_lock"
JUPYTER_EXPIRY = 150.0


class Conflict(Exception):
    """The lock cannot be granted now (EAGAIN for non-blocking requests)."""


class LeaseLost(MeshError):
    """The CS3 lock behind our local locks is gone: writes are refused until the file is reopened."""


@dataclass(frozen=True, slots=True)
class Range:
    owner: int
    start: int
    end: int  # inclusive
    type: int
    pid: int


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds a lock, for F_GETLK and the user.meshfs.lock xattr."""

    user: str
    app: str
    expiration: float | None
    local: bool
    lock_id: str = ""

    def describe(self) -> str:
        exp = (
            "never"
            if self.expiration is None
            else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.expiration))
        )
        return f"user={self.user} app={self.app or '?'} expires={exp}" + (
            " (this mount)" if self.local else ""
        )


@dataclass(slots=True)
class FileLocks:
    """Local locks of one file."""

    posix: list[Range] = field(default_factory=list)
    flock: dict[int, tuple[int, int]] = field(default_factory=dict)  # owner -> (type, pid)
    changed: trio.Event = field(default_factory=trio.Event)

    def empty(self) -> bool:
        return not self.posix and not self.flock

    def notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def posix_conflict(self, owner: int, start: int, end: int, type_: int) -> Range | None:
        for r in self.posix:
            if r.owner != owner and r.start <= end and start <= r.end and WRLCK in (r.type, type_):
                return r
        return None

    def flock_conflict(self, owner: int, type_: int) -> tuple[int, int] | None:
        for o, (t, pid) in self.flock.items():
            if o != owner and WRLCK in (t, type_):
                return (t, pid)
        return None

    def set_posix(self, owner: int, start: int, end: int, type_: int, pid: int) -> None:
        """Apply a lock/unlock of [start, end] for `owner` with POSIX semantics: the new range replaces
        whatever the owner had there (splitting ranges it cuts), then touching ranges of the same type
        merge. Other owners' ranges are untouched (conflicts were checked before)."""
        mine: list[Range] = []
        others: list[Range] = []
        for r in self.posix:
            if r.owner != owner:
                others.append(r)
            elif r.end < start or r.start > end:
                mine.append(r)
            else:
                if r.start < start:
                    mine.append(Range(owner, r.start, start - 1, r.type, r.pid))
                if r.end > end:
                    mine.append(Range(owner, end + 1, r.end, r.type, r.pid))
        if type_ != UNLCK:
            mine.append(Range(owner, start, end, type_, pid))
        mine.sort(key=lambda r: r.start)
        merged: list[Range] = []
        for r in mine:
            last = merged[-1] if merged else None
            if last is not None and last.type == r.type and last.end + 1 >= r.start:
                merged[-1] = Range(owner, last.start, max(last.end, r.end), r.type, r.pid)
            else:
                merged.append(r)
        self.posix = others + merged


@dataclass(slots=True)
class Lease:
    """Our CS3 lock on one file."""

    rid: ResourceId
    lock_id: str
    path: str
    expiration: float
    lost: bool = False
    created: float = field(default_factory=time.time)


class LockManager:
    """Local lock tables per inode + CS3 leases per file. One per mount."""

    def __init__(
        self,
        storage: Storage,
        user: Callable[[], User],
        *,
        expiry: float = 120.0,
        refresh_interval: float = 30.0,
        publish_jupyter: bool = True,
    ) -> None:
        self.storage = storage
        self._user = user
        self.expiry = max(2.0, expiry)
        self.refresh_interval = max(0.5, min(refresh_interval, self.expiry / 3))
        self.publish_jupyter = publish_jupyter
        self.mount_tag = secrets.token_hex(6)
        self.tables: dict[int, FileLocks] = {}
        #: hooks of the vfs: revalidate the cached data once a lease is taken; flush before unlock
        self.on_acquired: Callable[[int, Resource], Awaitable[None]] | None = None
        self.before_release: Callable[[int], Awaitable[None]] | None = None
        self.flush_timeout = 300.0
        self.leases: dict[int, Lease] = {}
        self._lease_locks: dict[int, trio.Lock] = {}

    # ---- queries ----------------------------------------------------------------------------------

    def table(self, inode: int) -> FileLocks:
        t = self.tables.get(inode)
        if t is None:
            t = self.tables[inode] = FileLocks()
        return t

    def lock_id_of(self, inode: int) -> str | None:
        lease = self.leases.get(inode)
        return None if lease is None or lease.lost else lease.lock_id

    def lost(self, inode: int) -> bool:
        lease = self.leases.get(inode)
        return lease is not None and lease.lost

    def foreign_holder(self, inode: int, res: Resource | None) -> Holder | None:
        """A lock on the file that is not ours (CS3 lock or unexpired cs3api4lab entry), or None."""
        if res is None:
            return None
        ours = self.lock_id_of(inode)
        mine = f"meshfs-{self.mount_tag}-"  # also ours while its release is still in flight
        if res.lock is not None and res.lock.lock_id != ours and not res.lock.lock_id.startswith(mine):
            exp = res.lock.expiration
            if exp is None or exp > time.time():
                return self._holder(res.lock)
        raw = res.metadata.get(JUPYTER_KEY)
        if raw and ours is None:
            entry = parse_jupyter_entry(raw)
            me = self._user()
            if (
                entry is not None
                and entry.get("opaque_id") == me.id.opaque_id
                and entry.get("idp") == me.id.idp
            ):
                entry = None  # the cs3api4lab convention: an entry of our own user is "mine"
            if entry is not None and time.time() - float(entry.get("updated", 0)) <= JUPYTER_EXPIRY:
                return Holder(
                    str(entry.get("username", "?")),
                    "cs3api4lab",
                    float(entry.get("updated", 0)) + JUPYTER_EXPIRY,
                    False,
                )
        return None

    def _holder(self, lock: CS3Lock) -> Holder:
        user = lock.user.opaque_id if lock.user is not None else "?"
        me = self._user()
        if lock.user is not None and lock.user.opaque_id == me.id.opaque_id:
            user = me.username
        return Holder(user, lock.app_name, lock.expiration, False, lock.lock_id)

    def holder_text(self, inode: int, res: Resource | None) -> str | None:
        lease = self.leases.get(inode)
        if lease is not None and not lease.lost:
            return Holder(self._user().username, "meshfs", lease.expiration, True, lease.lock_id).describe()
        h = self.foreign_holder(inode, res)
        return None if h is None else h.describe()

    # ---- local + remote acquisition ------------------------------------------------------------------

    def local_conflict(
        self, inode: int, owner: int, start: int, end: int, type_: int, flock: bool
    ) -> tuple[int, int, int, int] | None:
        """(type, start, end, pid) of a conflicting local lock, or None."""
        t = self.tables.get(inode)
        if t is None:
            return None
        if flock:
            c = t.flock_conflict(owner, type_)
            return None if c is None else (c[0], 0, EOF, c[1])
        r = t.posix_conflict(owner, start, end, type_)
        return None if r is None else (r.type, r.start, r.end, r.pid)

    async def acquire(
        self,
        inode: int,
        rid: ResourceId,
        path: str,
        owner: int,
        start: int,
        end: int,
        type_: int,
        pid: int,
        *,
        flock: bool,
        sleep: bool,
    ) -> None:
        """Grant a lock (or unlock) for `owner`; Conflict when not possible and not sleeping."""
        t = self.table(inode)
        if type_ == UNLCK:
            if flock:
                t.flock.pop(owner, None)
            else:
                t.set_posix(owner, start, end, UNLCK, pid)
            t.notify()
            await self._maybe_release(inode)
            return
        delay = 0.01
        while True:
            if self.local_conflict(inode, owner, start, end, type_, flock) is None:
                try:
                    await self._ensure_lease(inode, rid, path)
                except Conflict:
                    if not sleep:
                        raise
                else:
                    # the lease await may have let another local owner in: check again; and the
                    # table may have been dropped and recreated meanwhile: use the current one
                    t = self.table(inode)
                    if self.local_conflict(inode, owner, start, end, type_, flock) is None:
                        if flock:
                            t.flock[owner] = (type_, pid)
                        else:
                            t.set_posix(owner, start, end, type_, pid)
                        t.notify()
                        return
            elif not sleep:
                raise Conflict()
            # wait for a local change or poll the server again (backoff 10 ms -> 1 s)
            t = self.table(inode)
            with trio.move_on_after(delay):
                await t.changed.wait()
            delay = min(1.0, delay * 2)

    async def _ensure_lease(self, inode: int, rid: ResourceId, path: str) -> None:
        lock = self._lease_locks.setdefault(inode, trio.Lock())
        async with lock:
            lease = self.leases.get(inode)
            if lease is not None and not lease.lost:
                return
            if lease is not None and lease.lost:
                raise Conflict()  # lost: refuse new locks through the stale lease until reopened
            ref = Ref.to(rid)
            try:
                res = await self.storage.stat(ref)
            except NotFound:
                raise
            if self.foreign_holder(inode, res) is not None:
                raise Conflict()
            lock_id = f"meshfs-{self.mount_tag}-{inode}-{secrets.token_hex(4)}"
            expiration = time.time() + self.expiry
            try:
                await self.storage.set_lock(ref, lock_id, expiration=expiration)
            except (FailedPrecondition, Locked, Aborted):
                raise Conflict() from None
            self.leases[inode] = Lease(rid, lock_id, path, expiration)
            log.info("locked %s on the server (%s)", path, lock_id)
            if self.on_acquired is not None:
                # the server's version may be newer than ours: the lock holder must read it
                await self.on_acquired(inode, res)
            if self.publish_jupyter:
                try:
                    await self.storage.set_metadata(
                        ref, {JUPYTER_KEY: self._jupyter_entry(created=time.time())}, lock_id=lock_id
                    )
                except MeshError as e:
                    log.debug("could not publish the cs3api4lab entry on %s: %s", path, e)

    def _jupyter_entry(self, created: float) -> str:
        me = self._user()
        now = time.time()
        payload = {
            "username": me.username,
            "idp": me.id.idp,
            "opaque_id": me.id.opaque_id,
            "updated": now,
            "created": created,
        }
        return urllib.parse.quote(json.dumps(payload))

    async def _maybe_release(self, inode: int) -> None:
        t = self.tables.get(inode)
        if t is not None and not t.empty():
            return
        self.tables.pop(inode, None)
        await self.release_lease(inode)

    async def release_lease(self, inode: int) -> None:
        lock = self._lease_locks.setdefault(inode, trio.Lock())
        async with lock:
            lease = self.leases.get(inode)
            if lease is None or lease.lost:
                self.leases.pop(inode, None)
                return
            if self.before_release is not None:
                # what was written under the lock reaches the server before the lock goes (and
                # carries the lock id): the next holder reads it (NFS's flush on unlock)
                try:
                    with trio.fail_after(self.flush_timeout):
                        await self.before_release(inode)
                except (MeshError, trio.TooSlowError) as e:
                    log.error(
                        "unlocking %s before its data is on the server (%s); it goes up later", lease.path, e
                    )
            self.leases.pop(inode, None)
            ref = Ref.to(lease.rid)
            with trio.CancelScope(shield=True):
                if self.publish_jupyter:
                    try:
                        await self.storage.unset_metadata(ref, [JUPYTER_KEY], lock_id=lease.lock_id)
                    except MeshError as e:
                        log.debug("could not remove the cs3api4lab entry of %s: %s", lease.path, e)
                try:
                    await self.storage.unlock(ref, lease.lock_id)
                    log.info("unlocked %s on the server", lease.path)
                except MeshError as e:
                    log.warning("unlock %s: %s (the lock expires by itself)", lease.path, e)

    # ---- close semantics ---------------------------------------------------------------------------

    async def release_owner(self, inode: int, owner: int) -> None:
        """close(2) of any fd of a process: its POSIX locks on the file go."""
        t = self.tables.get(inode)
        if t is None or not any(r.owner == owner for r in t.posix):
            return
        t.posix = [r for r in t.posix if r.owner != owner]
        t.notify()
        await self._maybe_release(inode)

    async def release_flock(self, inode: int, owner: int) -> None:
        t = self.tables.get(inode)
        if t is None or owner not in t.flock:
            return
        del t.flock[owner]
        t.notify()
        await self._maybe_release(inode)

    async def release_all(self) -> None:
        """umount: every lease goes."""
        for inode in list(self.leases):
            self.tables.pop(inode, None)
            await self.release_lease(inode)

    def reopened(self, inode: int) -> None:
        """A fresh open of a file whose lease was lost: forget the lost lease."""
        lease = self.leases.get(inode)
        if (
            lease is not None
            and lease.lost
            and (self.tables.get(inode) is None or self.tables[inode].empty())
        ):
            del self.leases[inode]

    # ---- the refresher -----------------------------------------------------------------------------

    async def refresher(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(self.refresh_interval)
            for inode, lease in list(self.leases.items()):
                if lease.lost:
                    continue
                await self._refresh(inode, lease)

    async def _refresh(self, inode: int, lease: Lease) -> None:
        expiration = time.time() + self.expiry
        ref = Ref.to(lease.rid)
        for attempt in range(3):
            try:
                await self.storage.refresh_lock(ref, lease.lock_id, expiration=expiration)
                lease.expiration = expiration
                if self.publish_jupyter:
                    try:
                        await self.storage.set_metadata(
                            ref, {JUPYTER_KEY: self._jupyter_entry(lease.created)}, lock_id=lease.lock_id
                        )
                    except MeshError:
                        pass
                return
            except (Aborted, FailedPrecondition, Locked, NotFound) as e:
                # the server says our lock is gone or someone else's: never take it back silently
                # (someone may have written meanwhile); writes through its open files fail from now
                lease.lost = True
                log.error(
                    "lock on %s lost (%s): writes through its open files now fail with EIO", lease.path, e
                )
                return
            except MeshError as e:
                if time.time() + 1 >= lease.expiration:
                    break
                log.warning("refreshing the lock on %s failed (%s); retrying", lease.path, e)
                await trio.sleep(min(2.0**attempt, max(0.1, (lease.expiration - time.time()) / 4)))
        if time.time() >= lease.expiration:
            lease.lost = True
            log.error("lock on %s expired before it could be refreshed: writes now fail with EIO", lease.path)

    def status(self) -> list[dict[str, object]]:
        return [
            {"path": lease.path, "lock_id": lease.lock_id, "expires": lease.expiration, "lost": lease.lost}
            for lease in self.leases.values()
        ]


def parse_jupyter_entry(raw: str) -> dict[str, Any] | None:
    try:
        value = json.loads(urllib.parse.unquote(raw))
    except (ValueError, TypeError):
        return None
    return value if isinstance(value, dict) else None
