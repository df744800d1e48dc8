"""The write-back scheduler: uploads dirty cache files to the server after a quiet period.

Owns: when and how a dirty file goes up — the delay after the last close (restarted by every new
dirtying), the worker pool, tus chunked uploads that resume from the server's offset (the tus
session is kept in the journal record, so a restarted daemon resumes it), etag preconditions
(`if_match` = the etag our copy started from), conflict copies when the server copy moved on, retries
with capped backoff for as long as it takes (the data never leaves the disk before it is durable on
the server), and the barriers `flush(key)` (fsync) and `sync(prefix)` (`meshfs sync`, umount).

Must not import: meshfs.fuse, meshfs.vfs, grpc/cs3apis/urllib3 (it talks to the server only through
meshfs.cs3's Storage and Transfer and their plain values).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from functools import partial

import trio

from meshfs.cache.store import CacheFile, CacheStore, PendingState, PendingUpload, StoreError
from meshfs.cs3 import Ref, Resource, ResourceId, Storage, Transfer, TusSession, UploadResult
from meshfs.errors import AlreadyExists, EtagMismatch, MeshError, NotFound, ServerUnavailable

log = logging.getLogger(__name__)

#: called after a file went up: (cache key, new etag, new resource id or None when unchanged)
UploadedHook = Callable[[str, str, ResourceId | None], Awaitable[None]]
#: resolves a record's mount-relative path to a reference that can be (re)created on the server
Locator = Callable[[str], Ref | None]


@dataclass(slots=True)
class Conflict:
    """A local version that could not replace the server's: it went up under `copy_name`."""

    path: str
    copy_name: str
    when: float


class _Synced:
    """The fsync of a cache file running beside its upload (`run` in a nursery, `wait` for it)."""

    def __init__(self) -> None:
        self.done = False
        self._event = trio.Event()
        self._error: StoreError | None = None

    async def run(self, cf: CacheFile) -> None:
        try:
            await trio.to_thread.run_sync(cf.sync_data)
        except StoreError as e:
            self._error = e
        finally:
            self.done = True
            self._event.set()

    async def wait(self) -> None:
        """Return once the local data is durable; raise the fsync's error."""
        await self._event.wait()
        if self._error is not None:
            raise self._error


class _Stopped(Exception):
    """A chunked upload stopped between chunks because a writer reopened the file."""


@dataclass(slots=True)
class _Progress:
    done: int = 0
    total: int = 0
    started: float = 0.0


@dataclass(slots=True)
class _Slot:
    """Scheduling state of one dirty key."""

    due: float = math.inf
    writers: int = 0
    running: trio.CancelScope | None = None
    attempt_done: trio.Event = field(default_factory=trio.Event)
    last_error: MeshError | StoreError | None = None
    stop_requested: bool = False
    holds: int = 0  # callers moving or deleting the file on the server: no attempt may start
    failures: int = 0
    progress: _Progress = field(default_factory=_Progress)


CONFLICT_NAMES = 20  # conflict copies of one file within one second before giving up for now


def conflict_name(name: str, user: str, when: float, n: int = 1) -> str:
    """`<stem>-<user>.<YYYY-mm-dd_HH_MM_SS>-conflict.<ext>` (the cs3api4lab convention); the n-th
    copy made within the same second gets `-conflict-<n>`."""
    stamp = time.strftime("%Y-%m-%d_%H_%M_%S", time.localtime(when))
    tag = "conflict" if n <= 1 else f"conflict-{n}"
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        return f"{name}-{user}.{stamp}-{tag}"
    return f"{stem}-{user}.{stamp}-{tag}.{ext}"


class WriteBack:
    """Upload queue over a CacheStore. Start `run()` in the daemon nursery.

    delay: seconds of quiet after the last close (or dirtying) before a file goes up.
    workers: concurrent uploads. chunk_size: files larger than this go up with tus in chunks.
    backoff / backoff_max: retry pauses after failures (transient or not: data is never dropped).
    """

    def __init__(
        self,
        store: CacheStore,
        storage: Storage,
        transfer: Transfer,
        *,
        user: str,
        delay: float = 1.0,
        workers: int = 2,
        chunk_size: int = 64 << 20,
        backoff: float = 0.5,
        backoff_max: float = 30.0,
        on_uploaded: UploadedHook | None = None,
        locate: Locator | None = None,
    ) -> None:
        self.store = store
        self.storage = storage
        self.transfer = transfer
        self.user = user
        self.delay = delay
        self.chunk_size = max(1 << 20, chunk_size)
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.on_uploaded = on_uploaded
        self.locate = locate
        #: called with the key before each upload attempt reads the file (the vfs takes in writes
        #: the kernel made directly into the cache file, FUSE passthrough); must not raise
        self.before_upload: Callable[[str], Awaitable[None]] | None = None
        self._limiter = trio.CapacityLimiter(max(1, workers))
        self._slots: dict[str, _Slot] = {}
        self._wake = trio.Event()
        self.conflicts: list[Conflict] = []
        #: mtimes set (utimens) on dirty files: the next upload of that key carries them
        self.mtimes: dict[str, int] = {}
        #: the CS3 lock id we currently hold on a key (the vfs's lock manager), if any
        self.lock_of: Callable[[str], str | None] = lambda key: None
        #: the local mtime of a dirty file (what stat showed), stored with the upload
        self.mtime_of: Callable[[str], int | None] = lambda key: None
        self.uploaded_bytes = 0
        self.uploads_done = 0

    # ---- what the vfs calls ------------------------------------------------------------------

    def _slot(self, key: str) -> _Slot:
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = _Slot()
        return slot

    def schedule(self, key: str, delay: float | None = None) -> None:
        """The file `key` is dirty and closed (or explicitly flushed): upload it after `delay`."""
        slot = self._slot(key)
        slot.due = trio.current_time() + (self.delay if delay is None else delay)
        self._wake.set()

    def opened_for_write(self, key: str) -> None:
        """A writer opened the file: no scheduled upload while it is open. A running chunked (tus)
        upload stops before its next chunk and is redone after the last writer closes; a running
        single PUT is left to finish (cancelling it mid-request could land it on the server without
        our knowing the new etag, which the next upload would then take for a conflict)."""
        slot = self._slot(key)
        slot.writers += 1
        slot.due = math.inf
        if slot.running is not None:
            slot.stop_requested = True

    def closed_for_write(self, key: str) -> None:
        slot = self._slots.get(key)
        if slot is None:
            return
        slot.writers = max(0, slot.writers - 1)
        if slot.writers == 0 and self.store.get_pending(key) is not None:
            self.schedule(key)

    @asynccontextmanager
    async def settled(self, *keys: str) -> AsyncIterator[None]:
        """Hold the uploads of `keys` while the caller moves or deletes them on the server: no attempt
        starts, and a running one is asked to stop between chunks and awaited, never cancelled in
        the middle of a request. A request abandoned that way can still reach the server after the
        Move or Delete, and Reva then writes a node without a parent (the whole folder stops
        listing: "Missing parent ID on node")."""
        slots = [self._slot(k) for k in keys]
        for slot in slots:
            slot.holds += 1
        try:
            for slot in slots:
                while slot.running is not None:
                    slot.stop_requested = True
                    await slot.attempt_done.wait()
            yield
        finally:
            for key, slot in zip(keys, slots, strict=True):
                slot.holds -= 1
                idle = not slot.holds and slot.running is None and not slot.writers
                if idle and self._slots.get(key) is slot and self.store.get_pending(key) is None:
                    self._slots.pop(key, None)  # nothing to upload: no empty slot left behind
            self._wake.set()

    def forget(self, key: str) -> None:
        """The file is gone locally (unlinked): stop any upload of it."""
        slot = self._slots.pop(key, None)
        if slot is not None and slot.running is not None:
            slot.running.cancel()
        if slot is not None:
            slot.attempt_done.set()

    async def flush(self, key: str) -> None:
        """Wait until the current content of `key` is durable on the server (fsync); raise its error."""
        if self.before_upload is not None:
            await self.before_upload(key)  # writes the kernel made itself (passthrough) count too
        for attempt in range(8):
            if self.store.durable(key):
                return
            slot = self._slot(key)
            done = slot.attempt_done
            slot.due = trio.current_time()
            self._wake.set()
            await done.wait()
            if self.store.durable(key):
                return
            error = slot.last_error
            if error is not None and not getattr(error, "transient", False):
                raise error
            if error is not None and attempt >= 2:
                raise error  # still failing after the retries: report it (the upload goes on)
        if not self.store.durable(key):
            raise MeshError("the file kept changing while it was being uploaded", op="fsync", path=key)

    async def sync(self, prefix: str | None = None, *, timeout: float = math.inf) -> list[str]:
        """Upload everything pending (under the path `prefix`) now; wait until each is durable or
        failed once. Returns one line per failure ("path: error")."""
        failures: list[str] = []

        def wanted(rec: PendingUpload) -> bool:
            if prefix is None or prefix in ("", "/"):
                return True
            p = prefix.strip("/")
            return rec.path.strip("/") == p or rec.path.strip("/").startswith(p + "/")

        async def one(rec: PendingUpload) -> None:
            try:
                await self.flush(rec.key)
            except (MeshError, StoreError) as e:
                failures.append(f"{rec.path}: {e}")

        with trio.move_on_after(timeout) as scope:
            async with trio.open_nursery() as nursery:  # all at once: every failure is reported
                for rec in [r for r in self.store.pending() if wanted(r)]:
                    nursery.start_soon(one, rec)
        if scope.cancelled_caught:
            failures.extend(
                f"{r.path}: not uploaded yet (timeout)" for r in self.store.pending() if wanted(r)
            )
        return failures

    def status(self) -> list[dict[str, object]]:
        """Pending uploads for `meshfs status`: path, state, bytes done/total, rate, last error."""
        now = trio.current_time()
        out: list[dict[str, object]] = []
        for rec in self.store.pending():
            if self.store.durable(rec.key):
                continue  # on the server already (kept pending while a writer has it open)
            slot = self._slots.get(rec.key)
            p = slot.progress if slot else _Progress()
            running = slot is not None and slot.running is not None
            elapsed = max(1e-6, now - p.started) if running else 0.0
            out.append(
                {
                    "path": rec.path,
                    "state": "uploading" if running else rec.state.value,
                    "size": rec.size,
                    "done": p.done if running else 0,
                    "rate": (p.done / elapsed) if running else 0.0,
                    "error": rec.error,
                    "writers": slot.writers if slot else 0,
                }
            )
        return out

    def state_of(self, key: str) -> str:
        """clean / dirty / uploading / conflict / failed for xattr user.meshfs.state."""
        rec = self.store.get_pending(key)
        if rec is None or self.store.durable(key):
            return "clean"  # (durable: on the server; pending only while a writer has it open)
        slot = self._slots.get(key)
        if slot is not None and slot.running is not None:
            return "uploading"
        return rec.state.value

    # ---- the loop ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Resume the journal, then dispatch due uploads forever (cancel to stop)."""
        for rec in self.store.pending():
            slot = self._slot(rec.key)
            slot.due = trio.current_time()
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                now = trio.current_time()
                next_due = math.inf
                for key, slot in list(self._slots.items()):
                    if slot.running is not None or slot.holds:
                        continue  # a held slot keeps its due time: it runs once released
                    if slot.due <= now:
                        slot.due = math.inf
                        slot.running = trio.CancelScope()
                        nursery.start_soon(self._attempt, key, slot)
                    else:
                        next_due = min(next_due, slot.due)
                self._wake = trio.Event()
                with trio.move_on_at(next_due):
                    await self._wake.wait()

    async def _attempt(self, key: str, slot: _Slot) -> None:
        scope = slot.running
        assert scope is not None
        error: MeshError | StoreError | None = None
        cancelled = False
        try:
            async with self._limiter:
                with scope:
                    slot.progress = _Progress(started=trio.current_time())
                    slot.stop_requested = False
                    try:
                        await self._upload(key, slot)
                    except _Stopped:
                        cancelled = True
                cancelled = cancelled or scope.cancelled_caught
        except (MeshError, StoreError) as e:
            error = e
        finally:
            slot.running = None
            slot.last_error = error
            done, slot.attempt_done = slot.attempt_done, trio.Event()
            done.set()
        rec = self.store.get_pending(key)
        if error is not None:
            slot.failures += 1
            pause = min(self.backoff_max, self.backoff * 2 ** min(slot.failures, 16))
            log.warning("upload of %s failed (%s); retrying in %.1fs", rec.path if rec else key, error, pause)
            if rec is not None:
                try:
                    await trio.to_thread.run_sync(
                        lambda: self.store.update_pending(key, state=PendingState.FAILED, error=str(error))
                    )
                except StoreError as e:
                    log.error("journal: %s", e)
            if slot.writers == 0:
                slot.due = trio.current_time() + pause
        elif rec is None:
            slot.failures = 0
            if slot.writers == 0 and not cancelled:
                self._slots.pop(key, None)
        elif self.store.durable(key):
            slot.failures = 0  # on the server; pending until its passthrough writer closes it
        else:
            # modified during the upload (or cancelled by a writer): go again after the quiet period
            slot.failures = 0
            if slot.writers == 0:
                slot.due = trio.current_time() + (0 if not cancelled else self.delay)
        self._wake.set()

    async def _upload(self, key: str, slot: _Slot) -> None:
        if self.before_upload is not None:
            await self.before_upload(key)
        rec = self.store.get_pending(key)
        if rec is not None and self.store.durable(key):
            # on the server already: pending only while a writer had it open (passthrough, or its
            # content went up as a conflict copy); a conflict whose writers are gone is settled
            if await trio.to_thread.run_sync(self.store.settle_conflict, key) and self.on_uploaded:
                await self.on_uploaded(key, "", None)  # the cache follows the server's version again
            return
        if rec is None:
            return
        cf = await trio.to_thread.run_sync(
            lambda: self.store.open_file(key, size=rec.size, etag=rec.base_etag)
        )
        try:
            await self._upload_open(rec, cf, slot)
        finally:
            await trio.to_thread.run_sync(cf.close)

    async def _fill(self, rec: PendingUpload, cf: CacheFile) -> None:
        """Fetch the parts of the base version that were never cached (random writes into a big file)."""
        missing = cf.missing(0, cf.size)
        if not missing or rec.resource_id is None:
            return
        ref = Ref.to(ResourceId.parse(rec.resource_id))
        ticket = await self.transfer.initiate_download(ref, lock_id=rec.lock_id)
        for off, length in missing:
            epoch = cf.epoch
            await self.transfer.read_range(
                ticket, cf.fd, offset=off, length=length, fd_offset=off, path=rec.path
            )
            await trio.to_thread.run_sync(partial(cf.mark_present, off, length, epoch=epoch))

    async def _upload_open(self, rec: PendingUpload, cf: CacheFile, slot: _Slot) -> None:
        await self._fill(rec, cf)
        generation = cf.generation
        size = cf.size
        rec = await trio.to_thread.run_sync(
            lambda: self.store.update_pending(rec.key, state=PendingState.UPLOADING, error=None)
        )
        slot.progress.total = size
        # The local copy is made durable (fsync) while it goes up, not before: the upload reads the
        # page cache either way. What needs the fsync waits for it: saving a tus session to the
        # journal (a resume after a power cut sends the local bytes past the server's offset) and
        # marking the file clean (a failed fsync fails the attempt, which is retried).
        synced = _Synced()
        error: Exception | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(synced.run, cf)
            try:
                await self._upload_synced(rec, cf, size, generation, synced)
            except Exception as e:  # raised after the nursery: not wrapped in an ExceptionGroup
                error = e
        if error is not None:
            raise error

    async def _upload_synced(
        self, rec: PendingUpload, cf: CacheFile, size: int, generation: int, synced: _Synced
    ) -> None:
        ref = Ref.to(ResourceId.parse(rec.resource_id)) if rec.resource_id else None
        new_id: ResourceId | None = None
        try:
            if ref is None:
                raise NotFound("not on the server yet", op="upload", path=rec.path)
            result = await self._send(
                rec, cf, ref, size, if_match=rec.base_etag, generation=generation, synced=synced
            )
        except EtagMismatch:
            await synced.wait()
            await self._conflict(rec, cf, size, generation)
            return
        except NotFound:
            # deleted on the server (or never created): recreate it where it lives locally
            target = self.locate(rec.path) if self.locate else None
            if target is None:
                raise
            try:
                result = await self._send(
                    rec, cf, target, size, if_not_exist=True, fresh=True, locked=False, synced=synced
                )
            except AlreadyExists:
                await synced.wait()
                await self._conflict(rec, cf, size, generation)
                return
            new_id = result.file_id or (await self.storage.stat(target)).id
        await synced.wait()
        etag = result.etag
        if not etag:
            # no answer to the last request (cut, timed out): the server may have received every byte
            # and still not have finished the file. Only what Stat shows counts as uploaded.
            where = Ref.to(new_id) if new_id is not None else ref
            assert where is not None
            remote = await self.storage.stat(where)
            same = remote.size == size and (
                remote.checksum is None or await self._same_content(remote, cf, size)
            )
            if not same:
                await trio.to_thread.run_sync(partial(self.store.update_pending, rec.key, upload_token=None))
                raise ServerUnavailable(
                    f"the server did not complete the upload ({remote.size} of {size} bytes there); retrying",
                    op="upload",
                    path=rec.path,
                )
            etag = remote.etag
        self.uploaded_bytes += size
        self.uploads_done += 1
        clean = await trio.to_thread.run_sync(lambda: self.store.mark_clean(rec.key, generation, etag=etag))
        if clean:
            self.mtimes.pop(rec.key, None)
        log.info("uploaded %s (%d bytes)%s", rec.path, size, "" if clean else ", changed meanwhile")
        if self.on_uploaded is not None:
            await self.on_uploaded(rec.key, etag, new_id)

    async def _send(
        self,
        rec: PendingUpload,
        cf: CacheFile,
        ref: Ref,
        size: int,
        *,
        if_match: str | None = None,
        if_not_exist: bool = False,
        fresh: bool = False,
        locked: bool = True,
        generation: int = -1,
        synced: _Synced | None = None,
    ) -> UploadResult:
        mtime_ns = self.mtimes.get(rec.key) or self.mtime_of(rec.key)
        # only the locked resource itself takes our lock id (a new conflict copy is not locked)
        lock_id = (self.lock_of(rec.key) or rec.lock_id) if locked else None
        if size <= self.chunk_size:
            return await self.transfer.upload(
                ref, cf.fd, size, if_match=if_match, if_not_exist=if_not_exist, lock_id=lock_id,
                mtime_ns=mtime_ns,
            )  # fmt: skip
        # a tus session is resumed only for the same content generation it was started for
        # (resuming it after a rewrite would splice the old prefix onto the new suffix)
        session: TusSession | None = None
        if rec.upload_token and not fresh:
            try:
                saved = json.loads(rec.upload_token)
                old = TusSession.from_json(saved["session"])
                if old.length == size and saved.get("generation") == generation:
                    session = old
            except (ValueError, KeyError, TypeError):
                session = None
        if session is not None:
            try:
                session = replace(session, offset=await self.transfer.tus_offset(session))
            except MeshError:
                session = None  # expired or gone: start over
        saved = session is not None
        if session is None:
            session = await self.transfer.start_tus(
                ref, size, if_match=if_match, if_not_exist=if_not_exist, lock_id=lock_id, mtime_ns=mtime_ns
            )
        try:
            while True:
                slot = self._slots.get(rec.key)
                if slot is not None and slot.stop_requested:
                    slot.stop_requested = False
                    raise _Stopped()
                if not saved and (synced is None or synced.done):
                    # only a session over durable local data may be resumed after a crash
                    await self._save_session(rec.key, session, generation)
                    saved = True
                # the offset is known (from the HEAD above or the last PATCH's answer): no HEAD
                out = await self.transfer.tus_upload(
                    session, cf.fd, chunk_size=self.chunk_size, max_bytes=self.chunk_size, resume=False
                )
                if isinstance(out, UploadResult):
                    if saved:
                        await trio.to_thread.run_sync(
                            partial(self.store.update_pending, rec.key, upload_token=None)
                        )
                    return out
                session = out
                if slot is not None:
                    slot.progress.done = session.offset
                # (the saved session needs no update per chunk: a resume asks the server's offset)
        except MeshError:
            # a session the server refused once (409, 500, expired) is not tried again: start over
            await trio.to_thread.run_sync(partial(self.store.update_pending, rec.key, upload_token=None))
            raise

    async def _save_session(self, key: str, session: TusSession, generation: int) -> None:
        token = json.dumps({"generation": generation, "session": session.to_json()})
        await trio.to_thread.run_sync(partial(self.store.update_pending, key, upload_token=token))

    async def _same_content(self, remote: Resource, cf: CacheFile, size: int) -> bool:
        cs = remote.checksum
        if cs is None or cs.type.lower() != "sha1" or remote.size != size:
            return False

        def digest() -> str:
            h = hashlib.sha1(usedforsecurity=False)
            off = 0
            while off < size:
                chunk = os.pread(cf.fd, min(4 << 20, size - off), off)
                if not chunk:
                    break
                h.update(chunk)
                off += len(chunk)
            return h.hexdigest()

        return (await trio.to_thread.run_sync(digest)).lower() == cs.value.lower()

    async def _conflict(self, rec: PendingUpload, cf: CacheFile, size: int, generation: int) -> None:
        """The server copy changed since ours was based on it: keep both. Ours goes up beside it as a
        conflict copy; the local cache entry then follows the server's version again (unless the
        file was written again meanwhile: then it stays dirty and conflicts again, losing nothing)."""
        if rec.resource_id is None:
            raise MeshError("conflict on a file without id", op="upload", path=rec.path)
        remote = await self.storage.stat(Ref.to(ResourceId.parse(rec.resource_id)))
        if await self._same_content(remote, cf, size):
            # the server already has exactly our bytes (an earlier upload landed but its answer was
            # lost: a crash or a cut connection): not a conflict
            clean = await trio.to_thread.run_sync(
                lambda: self.store.mark_clean(rec.key, generation, etag=remote.etag)
            )
            log.info(
                "%s: the server already had our version%s", rec.path, "" if clean else " (changed since)"
            )
            if self.on_uploaded is not None:
                await self.on_uploaded(rec.key, remote.etag, None)
            return
        if remote.parent_id is None:
            raise MeshError(
                "conflict copy: the server did not say where the file lives", op="upload", path=rec.path
            )
        when = time.time()
        for n in range(1, CONFLICT_NAMES + 1):
            name = conflict_name(remote.name, self.user, when, n)
            target = Ref.to(remote.parent_id).child(name)
            try:
                await self._send(rec, cf, target, size, if_not_exist=True, fresh=True, locked=False)
                break
            except AlreadyExists:
                if n == CONFLICT_NAMES:
                    raise  # (a retry of the whole upload comes later, in another second)
        self.conflicts.append(Conflict(rec.path, os.path.join(os.path.dirname(rec.path), name), when))
        log.warning(
            "conflict: %s changed on the server while ours was pending; ours saved as %s", rec.path, name
        )
        slot = self._slots.get(rec.key)
        if cf.generation == generation and slot is not None and slot.writers:  # (passthrough ones too)
            # a writer still has the file open and may write more: it stays pending (more writes
            # conflict again at the next upload, losing nothing); barriers need not wait for what is
            # in the copy, and without more writes the entry is dropped once the writers are gone
            self.store.mark_durable(rec.key, generation)
        elif cf.generation == generation:
            # our data now lives in the conflict copy: the cache entry goes back to the server's version
            await trio.to_thread.run_sync(lambda: self.store.forget(rec.key))
        if self.on_uploaded is not None:
            await self.on_uploaded(rec.key, remote.etag, None)
