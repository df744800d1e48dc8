"""The on-disk data cache: sparse cache files, present-range maps and the crash-safe journal of dirty files.

Owns the cache directory (mode 0700) and everything in it. Pure local-disk code: it imports nothing
from meshfs.cs3, meshfs.fuse or meshfs.vfs (and never grpc/urllib3); trio only for the backpressure
helper `SpaceWaiter`.

Layout of a cache directory::

    LOCK              flock'ed while a store is open (one daemon per cache dir); holds pid + boot id
    CLEAN             present only after a clean close (all data fsynced, all state written)
    data/<name>       one sparse file per cached remote file; its st_size is the file's logical size
    meta/<name>.json  that file's state: key, size, etag, mtime, present ranges, LRU stamp and, while
                      the file is dirty, its pending-upload record (the "journal")

`<name>` is the first 32 hex digits of sha256(key); the caller's key (e.g. a CS3 resource id string)
is stored inside the meta file, so any string is a valid key.

Journal design (why per-record files, not an append-only log): every file has its own small JSON
record, replaced atomically by write-temp + rename (+ fsync of the file and the directory when
durability is asked for). After `kill -9` or a power cut each record is the old or the new version,
never torn; records of different files share no bytes, so there is no compaction, no torn tail to
repair and no replay order. Records are written only on state transitions (clean→dirty, rename, lock
change, upload state, dirty→clean) — never per write(2) of a fully cached file.

Durability (the ext4 model: a process crash loses nothing, a power cut loses at most the last few
seconds unless fsync was called):
  * Crash of the daemon (`kill -9`, OOM): nothing acknowledged is lost. Every record is renamed into
    place before the call that changes it returns (`mark_dirty` before the first byte is modified),
    and written data is in the kernel page cache. No fsync is needed for this.
  * Power cut / kernel crash: a record or data is durable after `CacheFile.sync_data()` (fsync(2) of
    the user; the write-back calls it before uploading) and after `checkpoint()`, which the daemon
    calls every few seconds (one syncfs for everything). `sync_journal=True` fsyncs every record at
    every transition instead (2 fsyncs, ~5 ms each on this machine: 177 creates/s against thousands).
  * A dirty file whose remote content is only partly cached (random writes into a big remote file)
    has its range map recorded after every change, its data fsynced first, so after any crash the
    missing ranges fetched from the server never overwrite our writes and ranges never written are
    never uploaded as zeros. (Costs an fdatasync per write that covers missing bytes or extends
    the file; rewrites of cached bytes cost nothing. A vfs may prefer to fetch a small file whole
    before writing to it.) A fully cached dirty file needs no per-write record: its
    present set is [0, st_size) by definition, and its size is the data file's.
  * Clean files' range maps are written lazily (`checkpoint()`, last close of a file, `close()`):
    additions may be lost, which only costs a re-fetch. Removals (eviction, invalidate) are recorded
    before the data is dropped, so a record never claims data that is gone. After an unclean stop in
    the same boot (page cache intact) the recorded ranges are trusted; after a reboot without a clean
    close they are dropped (that data may not have reached the disk).

Threading: all methods are synchronous. One store-wide `threading.Lock` guards the entry table, range
maps, sizes, accounting and journal writes; data I/O (pread/pwrite) runs outside it on a positional fd
shared by all handles of a file; a per-file lock orders mutations (write/truncate/invalidate/evict) of
one file. Safe to call from several worker threads at once. Methods that may block on disk (anything
that reads/writes data, fsyncs or unlinks: `open_file`, `mark_dirty`, `mark_clean`, `update_pending`,
`rename_path`, `forget`, `rekey`, `ensure_space`, `release`, `checkpoint`, `close`, and
`CacheFile.read/write/truncate/invalidate/sync_data/mark_present/close`) should be run in a worker
thread by trio code; `pending`, `get_pending`, `stats`, `lookup`, `CacheFile.missing/covers/size/
etag/generation/epoch` are in-memory and cheap.

Errors: every failure is a `StoreError` with an `errno` attribute; ENOSPC from the OS becomes
`DiskFull` and leaves the previous state intact (records are replaced atomically; a failed write
leaves the file's size and range map unchanged).
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import ctypes.util
import enum
import errno
import fcntl
import hashlib
import itertools
import json
import logging
import math
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import trio

log = logging.getLogger(__name__)

_RWF_NOWAIT: int = getattr(os, "RWF_NOWAIT", 0)  # 0: preadv may wait (only where Linux lacks it)

__all__ = [
    "CacheFile",
    "CacheStore",
    "DiskFull",
    "EntryInfo",
    "NotPresent",
    "PendingState",
    "PendingUpload",
    "RangeSet",
    "SpaceWaiter",
    "StoreError",
    "StoreLocked",
    "StoreStats",
    "WriteToCleanFile",
    "checkpoint_loop",
]


# --------------------------------------------------------------------------------------------------
# Errors


class StoreError(Exception):
    """Base class of cache-store errors; `errno` is what a filesystem operation should answer."""

    errno: int = errno.EIO


class DiskFull(StoreError):
    """The cache directory's filesystem is full (ENOSPC from the OS) or writers waited too long for
    space (backpressure timeout). Nothing already stored was damaged."""

    errno = errno.ENOSPC


class NotPresent(StoreError):
    """A read touched bytes that are not (or no longer: evicted/invalidated meanwhile) in the cache.
    The caller fetches the missing ranges and retries."""

    errno = errno.EIO


class StoreLocked(StoreError):
    """Another process has this cache directory open."""

    errno = errno.EBUSY


class WriteToCleanFile(StoreError):
    """write/truncate on a file that is not dirty: call `CacheStore.mark_dirty` first (a bug)."""

    errno = errno.EIO


def _wrap_os_error(exc: OSError, what: str) -> StoreError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        err: StoreError = DiskFull(f"cache: no space left on the cache disk while {what}")
    else:
        err = StoreError(f"cache: {what}: {exc.strerror or exc}")
        err.errno = exc.errno or errno.EIO
    return err


# --------------------------------------------------------------------------------------------------
# RangeSet


@dataclass(frozen=True, slots=True)
class RangeSet:
    """An immutable set of byte offsets stored as sorted, merged, half-open intervals [start, end).

    Adjacent or overlapping intervals are always merged, so two equal sets compare equal. Operations
    return new sets; lookups are O(log n), updates O(n) in the number of intervals.
    """

    starts: tuple[int, ...] = ()
    ends: tuple[int, ...] = ()

    @classmethod
    def of(cls, intervals: Iterable[tuple[int, int]]) -> RangeSet:
        """Build from (start, end) pairs in any order; empty pairs are ignored. O(n log n)."""
        starts: list[int] = []
        ends: list[int] = []
        for start, end in sorted((s, e) for s, e in intervals if e > s):
            if ends and start <= ends[-1]:
                ends[-1] = max(ends[-1], end)
            else:
                starts.append(start)
                ends.append(end)
        return cls(tuple(starts), tuple(ends))

    @classmethod
    def full(cls, size: int) -> RangeSet:
        """[0, size) (empty for size 0)."""
        return cls((0,), (size,)) if size > 0 else cls()

    def intervals(self) -> list[tuple[int, int]]:
        """The (start, end) pairs, sorted."""
        return list(zip(self.starts, self.ends, strict=True))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return zip(self.starts, self.ends, strict=True)

    def __len__(self) -> int:
        """Number of intervals."""
        return len(self.starts)

    def __bool__(self) -> bool:
        return bool(self.starts)

    @property
    def total(self) -> int:
        """Number of bytes in the set."""
        return sum(self.ends) - sum(self.starts)

    def add(self, off: int, length: int) -> RangeSet:
        """The set with [off, off+length) added."""
        if length <= 0:
            return self
        start, end = off, off + length
        i = bisect.bisect_left(self.ends, start)  # first interval that ends at/after start: merges
        j = bisect.bisect_right(self.starts, end)  # intervals starting at/before end merge
        if i < j:
            start = min(start, self.starts[i])
            end = max(end, self.ends[j - 1])
        return RangeSet(
            (*self.starts[:i], start, *self.starts[j:]),
            (*self.ends[:i], end, *self.ends[j:]),
        )

    def subtract(self, off: int, length: int) -> RangeSet:
        """The set with [off, off+length) removed."""
        if length <= 0 or not self.starts:
            return self
        start, end = off, off + length
        i = bisect.bisect_right(self.ends, start)  # first interval ending after start
        j = bisect.bisect_left(self.starts, end)  # intervals starting before end overlap
        if i >= j:
            return self
        mid_s: list[int] = []
        mid_e: list[int] = []
        if self.starts[i] < start:
            mid_s.append(self.starts[i])
            mid_e.append(start)
        if self.ends[j - 1] > end:
            mid_s.append(end)
            mid_e.append(self.ends[j - 1])
        return RangeSet(
            self.starts[:i] + tuple(mid_s) + self.starts[j:],
            self.ends[:i] + tuple(mid_e) + self.ends[j:],
        )

    def union(self, other: RangeSet) -> RangeSet:
        return RangeSet.of([*self, *other])

    def difference(self, other: RangeSet) -> RangeSet:
        result = self
        for s, e in other:
            result = result.subtract(s, e - s)
        return result

    def clip(self, size: int) -> RangeSet:
        """The part below `size`."""
        if not self.ends or self.ends[-1] <= size:
            return self
        return self.subtract(size, self.ends[-1] - size)

    def contains(self, off: int, length: int) -> bool:
        """True if every byte of [off, off+length) is in the set (an empty range always is)."""
        if length <= 0:
            return True
        i = bisect.bisect_right(self.starts, off) - 1
        return i >= 0 and self.ends[i] >= off + length

    def missing(self, off: int, length: int) -> list[tuple[int, int]]:
        """The (offset, length) pieces of [off, off+length) that are not in the set, in order."""
        if length <= 0:
            return []
        start, end = off, off + length
        out: list[tuple[int, int]] = []
        i = bisect.bisect_right(self.ends, start)
        pos = start
        while i < len(self.starts) and self.starts[i] < end:
            if self.starts[i] > pos:
                out.append((pos, self.starts[i] - pos))
            pos = max(pos, self.ends[i])
            i += 1
        if pos < end:
            out.append((pos, end - pos))
        return out

    def to_json(self) -> list[list[int]]:
        return [[s, e] for s, e in self]

    @classmethod
    def from_json(cls, value: Any) -> RangeSet:
        if not isinstance(value, list):
            raise ValueError("ranges must be a list")
        pairs = []
        for item in value:
            if (
                not isinstance(item, list)
                or len(item) != 2
                or not all(isinstance(x, int) and x >= 0 for x in item)
            ):
                raise ValueError(f"bad range {item!r}")
            pairs.append((item[0], item[1]))
        return cls.of(pairs)


# --------------------------------------------------------------------------------------------------
# Values


class PendingState(enum.Enum):
    """Where a dirty file stands in the write-back pipeline (the writeback module drives it)."""

    DIRTY = "dirty"  # modified locally, upload not started
    UPLOADING = "uploading"  # an upload is running
    CONFLICT = "conflict"  # the server copy changed meanwhile; ours must go up as a conflict copy
    FAILED = "failed"  # last attempt failed (will be retried)


@dataclass(frozen=True, slots=True)
class PendingUpload:
    """The journal record of a dirty file.

    key: the caller's cache key; cache_name: the data file name under data/; path: the path as the
    vfs knows it (follows local renames); resource_id: the CS3 resource id string, None for a file
    not yet on the server; base_etag: the etag our copy started from (None for a new file); lock_id:
    the CS3 lock we hold on it, if any; size: the local size when last recorded; generation: bumped
    by every local modification (`mark_clean` only succeeds if it still matches); state: see
    PendingState; upload_token: opaque resume information of a running upload (e.g. a tus URL);
    error: the last upload error, for `meshfs status`.
    """

    key: str
    cache_name: str
    path: str
    resource_id: str | None
    base_etag: str | None
    lock_id: str | None
    size: int
    generation: int
    state: PendingState = PendingState.DIRTY
    upload_token: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class EntryInfo:
    """A snapshot of one cached file (for getattr/status)."""

    key: str
    size: int
    etag: str | None
    mtime: float | None
    present_bytes: int
    dirty: bool
    open_handles: int


@dataclass(frozen=True, slots=True)
class StoreStats:
    """Cache use: `used` counts present bytes of every file (dirty included), `limit` the configured
    size, `dirty_bytes` the part that cannot be evicted."""

    limit: int
    used: int
    dirty_bytes: int
    files: int
    dirty_files: int
    open_files: int


# --------------------------------------------------------------------------------------------------
# Internals

_UNSET: Any = object()
_PUNCH_GUARD = 16 * 1024 * 1024  # bytes kept around the last read offset of an open file on eviction
_libc: ctypes.CDLL | None = None


def _libc_call(name: str, *args: object) -> int:
    """Call a libc function taking ints; returns 0 or raises OSError (ENOSYS if it does not exist)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    func = getattr(_libc, name, None)
    if func is None:
        raise OSError(errno.ENOSYS, f"{name} is not available")
    func.restype = ctypes.c_int
    if func(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return 0


def _punch_hole(fd: int, off: int, length: int) -> bool:
    """Free the disk blocks of [off, off+length) keeping the size; False if the fs cannot."""
    if length <= 0:
        return True
    falloc_fl_keep_size, falloc_fl_punch_hole = 0x01, 0x02
    try:
        _libc_call(
            "fallocate",
            ctypes.c_int(fd),
            ctypes.c_int(falloc_fl_keep_size | falloc_fl_punch_hole),
            ctypes.c_int64(off),
            ctypes.c_int64(length),
        )
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOSYS):
            return False
        raise
    return True


def _syncfs(path: Path) -> None:
    """Commit everything written to the filesystem holding `path` (one syscall for all files)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            _libc_call("syncfs", fd)
        except OSError as exc:
            if exc.errno != errno.ENOSYS:
                raise
            os.sync()
    finally:
        os.close(fd)


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def cache_name(key: str) -> str:
    """The file name used for `key` under data/ and meta/."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class _Entry:
    """Mutable per-file state; fields guarded by the store lock, data mutations by `mutex`."""

    __slots__ = (
        "atime",
        "conflicted",
        "detached",
        "durable_generation",
        "epoch",
        "etag",
        "fd",
        "generation",
        "key",
        "last_off",
        "meta_dirty",
        "mtime",
        "mutex",
        "name",
        "passthrough",
        "passthrough_writers",
        "pending",
        "pins",
        "present",
        "record_unsynced",
        "size",
        "unsynced",
    )

    def __init__(self, key: str, name: str) -> None:
        self.key = key
        self.name = name
        self.size = 0
        self.etag: str | None = None
        self.mtime: float | None = None
        self.present = RangeSet()
        self.atime = 0
        self.pins = 0
        self.passthrough = 0  # handles whose data the kernel reads and writes itself (FUSE passthrough)
        self.passthrough_writers = 0  # ... of them open for writing: the file may change unseen
        #: while passthrough_writers: the generation an upload made durable (the file stays pending)
        self.durable_generation = -1
        #: durable_generation is saved as a conflict copy: once nobody writes, the entry is dropped
        self.conflicted = False
        self.fd: int | None = None
        self.epoch = 0
        self.pending: PendingUpload | None = None
        self.generation = 0
        self.meta_dirty = False  # the record on disk is older than this state
        self.unsynced = False  # data written since the last fsync
        self.record_unsynced = False  # record renamed into place but not fsynced
        self.detached = False  # forgotten or evicted: never written to disk again
        self.last_off = 0
        self.mutex = threading.Lock()

    @property
    def partial(self) -> bool:
        """Dirty with remote bytes not yet fetched: its range map must be journaled on every change."""
        return self.pending is not None and not self.present.contains(0, self.size)


# --------------------------------------------------------------------------------------------------
# The store


class CacheStore:
    """The cache directory. Open one per daemon; `close()` it (or use it as a context manager).

    `limit` is the cache size in bytes: clean data is evicted least-recently-used (whole files; for
    files that are open, ranges away from the last read position) to stay below it; dirty data is
    never evicted. Writers call `ensure_space(n)` (or `SpaceWaiter.reserve`) before adding n bytes.

    The intended call sequences (each call in a worker thread where marked blocking above):
      read miss   f = open_file(key, size=, etag=) → e = f.epoch → transfer writes f.missing(window)
                  pieces into f.fd at their offsets → f.mark_present(off, n, epoch=e) → f.read()
                  (retry the fill on NotPresent: the range was evicted/invalidated meanwhile)
      write       mark_dirty(key, path=, resource_id=, base_etag=) once → [SpaceWaiter.reserve(grow)]
                  → f.write() / f.truncate() → f.close()
      upload      g = f.generation (before reading any data) → f.sync_data() → fill f.missing(0,
                  f.size) from the base version → upload → mark_clean(key, g, etag=new) — False
                  means it was written again meanwhile: upload again later
      delete      forget(key); rename: rename_path(old, new); new file got its id: rekey(old, new)
      daemon      checkpoint() every few seconds (`checkpoint_loop` in the nursery); close() at exit

    `sync_journal=True` fsyncs every journal transition before returning (two fsyncs per transition,
    ~5 ms each on this class of disk); the default relies on `checkpoint()` being called every few
    seconds (see the module docstring, "Durability").
    """

    def __init__(self, directory: str | os.PathLike[str], limit: int, *, sync_journal: bool = False) -> None:
        """Open (creating if needed) the cache at `directory`; loads every entry and the journal.

        Raises StoreLocked if another process has it open, StoreError if it is unusable.
        """
        self.directory = Path(directory)
        self.limit = limit
        self.sync_journal = sync_journal
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._clock = itertools.count(1)
        self._used = 0
        self._listeners: list[Callable[[], None]] = []
        self._closed = False
        self._data_dir = self.directory / "data"
        self._meta_dir = self.directory / "meta"
        self._lock_fd = -1
        self._prev_boot = ""
        try:
            self._prepare_dir()
            self._load()
        except OSError as exc:
            self._release_lock_file()
            raise _wrap_os_error(exc, f"opening cache dir {self.directory}") from exc
        except BaseException:
            self._release_lock_file()
            raise

    # ---- lifecycle -------------------------------------------------------------------------------

    def _prepare_dir(self) -> None:
        d = self.directory
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = d.stat()
        if st.st_uid != os.getuid():
            raise StoreError(f"cache: {d} is owned by uid {st.st_uid}, not by this user")
        if st.st_mode & 0o077:
            os.chmod(d, 0o700)
        for sub in (self._data_dir, self._meta_dir):
            sub.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(d / "LOCK", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").split("\n")[0]
            os.close(fd)
            raise StoreLocked(
                f"cache: {d} is in use by another meshfs ({holder or 'unknown pid'}); use another --cache-dir"
            ) from None
        self._lock_fd = fd
        previous = os.pread(fd, 400, 0).decode(errors="replace").split("\n")
        self._prev_boot = previous[1] if len(previous) > 1 else ""
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}\n{_boot_id()}\n".encode(), 0)

    def _release_lock_file(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def _load(self) -> None:
        clean_marker = self.directory / "CLEAN"
        trusted = clean_marker.exists() or self._prev_boot == _boot_id()
        with contextlib.suppress(FileNotFoundError):
            clean_marker.unlink()
        self._fsync_dir(self.directory)
        records: list[tuple[int, _Entry]] = []
        for meta in self._meta_dir.iterdir():
            if not meta.name.endswith(".json"):
                meta.unlink(missing_ok=True)  # a temp file of an interrupted record write
                continue
            name = meta.name[: -len(".json")]
            try:
                raw = json.loads(meta.read_bytes())
                entry, atime = self._entry_from_json(name, raw)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("cache: dropping unreadable record %s: %s", meta, exc)
                self._drop_files(name)
                continue
            data_path = self._data_dir / name
            try:
                disk_size: int | None = data_path.stat().st_size
            except FileNotFoundError:
                disk_size = None
            if entry.pending is not None:
                if disk_size is None:
                    # Data files are created before their record and unlinked after it: only a
                    # cache dir damaged by hand gets here. Keep the record (status shows it).
                    log.error(
                        "cache: data of pending upload %s is missing: recreated empty", entry.pending.path
                    )
                    os.close(os.open(data_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
                    disk_size = 0
                    raw["full"] = False
                    entry.present = RangeSet()
                if raw.get("full"):
                    entry.size = disk_size
                    entry.present = RangeSet.full(disk_size)
                else:
                    # Partly cached dirty file: the record is authoritative for size and ranges.
                    os.truncate(data_path, entry.size)
                    entry.present = entry.present.clip(entry.size)
                entry.generation = entry.pending.generation + 1
                entry.pending = replace(entry.pending, size=entry.size, generation=entry.generation)
            else:
                if disk_size is not None and trusted:
                    entry.present = entry.present.clip(min(entry.size, disk_size))
                else:
                    entry.present = RangeSet()
                if not entry.present:
                    self._drop_files(name)  # a clean entry without data is worth nothing
                    continue
                if disk_size != entry.size:
                    os.truncate(data_path, entry.size)
            records.append((atime, entry))
        # Data files without a record are leftovers of an interrupted create/forget/rekey.
        known = {e.name for _, e in records}
        for data in self._data_dir.iterdir():
            if data.name not in known:
                data.unlink(missing_ok=True)
        records.sort(key=lambda r: r[0])
        for _, entry in records:
            entry.atime = next(self._clock)
            self._entries[entry.key] = entry
            self._used += entry.present.total
        if not trusted:
            log.info("cache: unclean shutdown before a reboot: cached clean data dropped")

    def close(self) -> None:
        """Write all state, fsync it, mark the directory cleanly closed and release it.

        Open CacheFile handles become unusable. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            entries = list(self._entries.values())
        try:
            for e in entries:
                with e.mutex:
                    if e.meta_dirty or e.pending is not None:
                        self._write_meta(e, durable=False)
                    if e.fd is not None:
                        os.close(e.fd)
                        e.fd = None
            _syncfs(self.directory)
            self._write_atomic(self.directory / "CLEAN", b"clean\n", durable=True)
        except OSError as exc:
            log.error("cache: closing %s: %s (state will be rechecked at next open)", self.directory, exc)
        finally:
            self._release_lock_file()

    def __enter__(self) -> CacheStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- files -----------------------------------------------------------------------------------

    def open_file(self, key: str, *, size: int, etag: str | None, mtime: float | None = None) -> CacheFile:
        """Open (create if new) the cache file for `key`, revalidating it against the remote state.

        `size`/`etag`/`mtime` describe the remote file as just stat'ed (etag None for a file that does
        not exist on the server yet). A clean entry whose etag or size differs has its cached data
        dropped (close-to-open consistency). A dirty entry keeps its local content and size whatever
        the remote says (the write-back detects conflicts). The handle pins the entry (it is not
        evicted whole) until `CacheFile.close()`.
        """
        with self._lock:
            self._check_open()
            entry = self._entries.get(key)
            created = entry is None
            if entry is None:
                entry = _Entry(key, cache_name(key))
                entry.size, entry.etag, entry.mtime = size, etag, mtime
                entry.meta_dirty = True
                self._entries[key] = entry
            entry.pins += 1
            entry.atime = next(self._clock)
        try:
            with entry.mutex:
                if entry.fd is None:
                    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
                    entry.fd = os.open(self._data_dir / entry.name, flags, 0o600)
                if created and (size or os.fstat(entry.fd).st_size):
                    # (not on a new empty file: ext4 takes a truncate to 0 for a replace-by-truncate
                    # and then writes all the data back when the file is closed — in the writer's
                    # close(2) under passthrough: 0.3 s per GiB of dd)
                    os.ftruncate(entry.fd, size)
                elif entry.pending is None and entry.passthrough:
                    pass  # the kernel reads this very file for other opens: it is not replaced under them
                elif entry.pending is None and (entry.etag != etag or entry.size != size):
                    self._reset_locked(entry, size=size, etag=etag, mtime=mtime)
                elif entry.pending is None and mtime is not None:
                    entry.mtime = mtime
        except OSError as exc:
            self._unpin(entry)
            raise _wrap_os_error(exc, f"opening cache file for {key}") from exc
        return CacheFile(self, entry)

    def lookup(self, key: str) -> EntryInfo | None:
        """A snapshot of the entry for `key`, or None."""
        with self._lock:
            e = self._entries.get(key)
            if e is None:
                return None
            return EntryInfo(e.key, e.size, e.etag, e.mtime, e.present.total, e.pending is not None, e.pins)

    def forget(self, key: str) -> None:
        """Drop the entry for `key` entirely — data, ranges and any pending upload (the file was
        deleted locally, or replaced). Open handles keep reading and writing the unlinked data until
        closed; nothing of it is recorded or uploaded any more."""
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is None:
                return
            self._used -= entry.present.total
            entry.epoch += 1
            entry.detached = True
        with entry.mutex:
            try:
                (self._meta_dir / f"{entry.name}.json").unlink(missing_ok=True)
                if self.sync_journal:
                    self._fsync_dir(self._meta_dir)
                (self._data_dir / entry.name).unlink(missing_ok=True)
            except OSError as exc:
                raise _wrap_os_error(exc, f"forgetting {key}") from exc
            finally:
                if entry.pins == 0 and entry.fd is not None:
                    os.close(entry.fd)
                    entry.fd = None
        self._notify_space()

    def rekey(self, old: str, new: str) -> None:
        """Move the entry `old` to key `new` (e.g. a new file got its resource id). Replaces a clean
        entry at `new`; raises StoreError if `new` has a pending upload.

        Crash-safe by hard link: link data → write new record → unlink old record → unlink old data.
        A crash in between leaves the old entry, or (briefly) both, never neither."""
        with self._lock:
            self._check_open()
            entry = self._entries.get(old)
            if entry is None or old == new:
                return
            other = self._entries.get(new)
            if other is not None and other.pending is not None:
                raise StoreError(f"cache: cannot rekey {old} to {new}: {new} has a pending upload")
        if other is not None:
            self.forget(new)
        with entry.mutex:
            old_name, new_name = entry.name, cache_name(new)
            try:
                (self._data_dir / new_name).unlink(missing_ok=True)
                os.link(self._data_dir / old_name, self._data_dir / new_name)
                with self._lock:
                    entry.key, entry.name = new, new_name
                    if entry.pending is not None:
                        entry.pending = replace(entry.pending, key=new, cache_name=new_name)
                    self._entries.pop(old, None)
                    self._entries[new] = entry
                self._write_meta(entry, durable=self.sync_journal)
                (self._meta_dir / f"{old_name}.json").unlink(missing_ok=True)
                (self._data_dir / old_name).unlink(missing_ok=True)
            except OSError as exc:
                raise _wrap_os_error(exc, f"renaming cache entry {old}") from exc

    # ---- journal ---------------------------------------------------------------------------------

    def mark_dirty(
        self,
        key: str,
        *,
        path: str,
        resource_id: str | None,
        base_etag: str | None,
        lock_id: str | None = None,
    ) -> PendingUpload:
        """Record that the file `key` (which must be open) is about to be modified.

        Call before the first write/truncate of a clean file: the record is on disk (renamed into
        place; fsynced too with sync_journal) when this returns. On an already dirty file it does no
        I/O and returns the current record (the arguments are then ignored: use update_pending /
        rename_path). `base_etag` is the etag the cached content belongs to (None for a new file).
        """
        with self._lock:
            self._check_open()
            entry = self._entries.get(key)
            if entry is None or entry.fd is None:
                raise StoreError(f"cache: mark_dirty({key}): the file is not open")
            if entry.pending is not None:
                return replace(entry.pending, size=entry.size, generation=entry.generation)
        with entry.mutex:
            if entry.pending is not None:
                return entry.pending
            if not entry.present.contains(0, entry.size):
                self._fsync_data(entry)  # ranges we are about to journal must be on disk first
            entry.generation += 1
            record = PendingUpload(
                key=key,
                cache_name=entry.name,
                path=path,
                resource_id=resource_id,
                base_etag=base_etag,
                lock_id=lock_id,
                size=entry.size,
                generation=entry.generation,
            )
            self._commit_pending(entry, record, what=f"journaling {path}")
            return entry.pending or record

    def durable(self, key: str) -> bool:
        """Nothing of `key` waits for the server: clean, or pending only because a passthrough writer
        still has it open and its current generation went up (see mark_clean). Cheap."""
        with self._lock:
            e = self._entries.get(key)
            return e is None or e.pending is None or e.durable_generation == e.generation

    def mark_durable(self, key: str, generation: int) -> None:
        """The content of `generation` is saved on the server elsewhere (a conflict copy) while the
        file stays pending (a writer has it open and may write more): barriers need not wait for it,
        and `settle_conflict` drops the entry once the writers are gone, if nothing changed."""
        with self._lock:
            e = self._entries.get(key)
            if e is not None and e.pending is not None and e.generation == generation:
                e.durable_generation = generation
                e.conflicted = True

    def settle_conflict(self, key: str) -> bool:
        """Drop the entry of `key` (the cache follows the server's version again) if its content is
        all in a conflict copy (see mark_durable) and no passthrough writer has it. True if dropped."""
        with self._lock:
            e = self._entries.get(key)
            if (
                e is None
                or e.pending is None
                or not e.conflicted
                or e.durable_generation != e.generation
                or e.passthrough_writers
            ):
                return False
        self.forget(key)
        return True

    def pending(self) -> list[PendingUpload]:
        """Every pending upload (the journal), least recently used first. In-memory, cheap."""
        with self._lock:
            dirty = sorted(
                (e for e in self._entries.values() if e.pending is not None), key=lambda e: e.atime
            )
            return [replace(e.pending, size=e.size, generation=e.generation) for e in dirty if e.pending]

    def get_pending(self, key: str) -> PendingUpload | None:
        """The pending record of `key` (with its live size and generation), or None. Cheap."""
        with self._lock:
            e = self._entries.get(key)
            if e is None or e.pending is None:
                return None
            return replace(e.pending, size=e.size, generation=e.generation)

    def update_pending(
        self,
        key: str,
        *,
        path: str = _UNSET,
        resource_id: str | None = _UNSET,
        base_etag: str | None = _UNSET,
        lock_id: str | None = _UNSET,
        state: PendingState = _UNSET,
        upload_token: str | None = _UNSET,
        error: str | None = _UNSET,
    ) -> PendingUpload:
        """Change fields of a pending record (only the ones passed) and write it. Raises StoreError if
        `key` is not dirty."""
        changes: dict[str, Any] = {
            k: v
            for k, v in (
                ("path", path),
                ("resource_id", resource_id),
                ("base_etag", base_etag),
                ("lock_id", lock_id),
                ("state", state),
                ("upload_token", upload_token),
                ("error", error),
            )
            if v is not _UNSET
        }
        entry = self._dirty_entry(key)
        with entry.mutex:
            if entry.pending is None:
                raise StoreError(f"cache: {key} has no pending upload")
            record = replace(entry.pending, **changes)
            self._commit_pending(entry, record, what=f"journaling {record.path}")
            return self.get_pending(key) or record

    def mark_clean(
        self,
        key: str,
        generation: int,
        *,
        etag: str | None,
        mtime: float | None = None,
        resource_id: str | None = _UNSET,
    ) -> bool:
        """The upload of `key` that started at `generation` is durable on the server with `etag`.

        Returns False (and keeps the file dirty, with base_etag advanced to `etag` so that the next
        upload is not taken for a conflict) when the file was modified after that generation; True
        when the file is now clean: its data stays cached as the content of `etag`. The writer must
        read `generation` (CacheFile.generation / get_pending) *before* reading the data it uploads.
        """
        entry = self._dirty_entry(key)
        with entry.mutex:
            if entry.pending is None:
                return True
            rid = entry.pending.resource_id if resource_id is _UNSET else resource_id
            if entry.generation != generation or entry.passthrough_writers:
                # written meanwhile, or the kernel may still write it unseen (passthrough): it stays
                # pending; the next upload builds on `etag`. `durable` tells a barrier (fsync, sync)
                # that this generation is on the server.
                record = replace(
                    entry.pending, base_etag=etag, resource_id=rid, state=PendingState.DIRTY, error=None
                )
                self._commit_pending(entry, record, what=f"journaling {record.path}")
                if entry.generation == generation:
                    with self._lock:
                        entry.durable_generation = generation
                        entry.etag = etag
                return False
            old = entry.pending
            with self._lock:
                entry.pending = None
                entry.etag = etag
                if mtime is not None:
                    entry.mtime = mtime
                entry.atime = next(self._clock)
            try:
                self._write_meta(entry, durable=self.sync_journal)
            except OSError as exc:
                with self._lock:
                    entry.pending = old
                raise _wrap_os_error(exc, f"recording the upload of {old.path}") from exc
        self._notify_space()
        return True

    def rename_path(self, old_path: str, new_path: str) -> list[PendingUpload]:
        """A local rename: every pending upload at `old_path` or below it (a directory) follows to
        `new_path`. Returns the updated records."""
        prefix = old_path.rstrip("/") + "/"
        with self._lock:
            hits = [
                e
                for e in self._entries.values()
                if e.pending is not None and (e.pending.path == old_path or e.pending.path.startswith(prefix))
            ]
        out = []
        for e in hits:
            with e.mutex:
                if e.pending is None:
                    continue
                p = e.pending.path
                moved = new_path if p == old_path else new_path.rstrip("/") + "/" + p[len(prefix) :]
                self._commit_pending(e, replace(e.pending, path=moved), what=f"journaling rename of {p}")
                if e.pending is not None:
                    out.append(e.pending)
        return out

    def _dirty_entry(self, key: str) -> _Entry:
        with self._lock:
            self._check_open()
            entry = self._entries.get(key)
            if entry is None or entry.pending is None:
                raise StoreError(f"cache: {key} has no pending upload")
            return entry

    def _commit_pending(self, entry: _Entry, record: PendingUpload, *, what: str) -> None:
        """Make `record` the recorded pending state of `entry` (caller holds entry.mutex); on
        failure the previous state stays, in memory and on disk."""
        old = entry.pending
        with self._lock:
            entry.pending = replace(record, size=entry.size, generation=entry.generation)
        try:
            self._write_meta(entry, durable=self.sync_journal)
        except OSError as exc:
            with self._lock:
                entry.pending = old
            raise _wrap_os_error(exc, what) from exc

    # ---- space -----------------------------------------------------------------------------------

    def stats(self) -> StoreStats:
        """Current use (in-memory, cheap)."""
        with self._lock:
            dirty = [e for e in self._entries.values() if e.pending is not None]
            return StoreStats(
                limit=self.limit,
                used=self._used,
                dirty_bytes=sum(e.present.total for e in dirty),
                files=len(self._entries),
                dirty_files=len(dirty),
                open_files=sum(1 for e in self._entries.values() if e.pins),
            )

    def fits(self, nbytes: int) -> bool:
        """Whether `nbytes` more fit under the limit right now (lock-free snapshot; cheap)."""
        return self._used + nbytes <= self.limit

    def ensure_space(self, nbytes: int) -> bool:
        """Evict clean data until `nbytes` more fit under the limit. True if they fit now; False if
        dirty data (plus the recently read part of open files) leaves no room: a writer then waits
        (see SpaceWaiter) or fails with ENOSPC. Readers may call it before a fetch and proceed on
        False (the overshoot is bounded by one fetch window)."""
        with self._lock:
            self._check_open()
            need = self._used + nbytes - self.limit
        if need <= 0:
            return True
        self.release(need)
        with self._lock:
            return self._used + nbytes <= self.limit

    def release(self, nbytes: int) -> int:
        """Evict at least `nbytes` of clean data now if there is that much (least recently used
        first: unopened files whole, then ranges of open files away from their last read), whatever
        the limit — e.g. after ENOSPC from a disk shared with others. Returns the bytes freed."""
        with self._lock:
            candidates = sorted(
                (e for e in self._entries.values() if e.pending is None and e.present and not e.passthrough),
                key=lambda e: (e.pins > 0, e.atime),
            )
        freed = 0
        for e in candidates:
            if freed >= nbytes:
                break
            freed += self._evict(e, nbytes - freed)
        return freed

    def _droppable(self, e: _Entry) -> RangeSet:
        if not e.pins:
            return e.present
        guard = min(_PUNCH_GUARD, self.limit // 8)
        lo = max(0, e.last_off - guard)
        return e.present.subtract(lo, e.last_off + guard - lo)

    def _evict(self, e: _Entry, need: int) -> int:
        """Drop clean data of `e`: the whole entry if no handle has it open, else up to `need` bytes
        of ranges away from its last read (lowest offsets first: for a sequential reader, the
        oldest). Returns the bytes dropped (0 if `e` is busy, dirty or has nothing to drop)."""
        if not e.mutex.acquire(blocking=False):
            return 0
        try:
            with self._lock:
                if e.pending is not None or e.passthrough or self._entries.get(e.key) is not e:
                    return 0
                if e.pins == 0:
                    # Whole entry: record first, then data, all under the store lock so that a
                    # concurrent open_file of the same key cannot pick up the dying data file.
                    dropped = e.present.total
                    self._entries.pop(e.key)
                    self._used -= dropped
                    e.epoch += 1
                    e.detached = True
                    try:
                        self._drop_files(e.name)
                    except OSError as exc:
                        log.warning("cache: evicting %s: %s", e.key, exc)
                    if e.fd is not None:
                        os.close(e.fd)
                        e.fd = None
                    log.debug("cache: evicted %s (%d bytes)", e.key, dropped)
                    return dropped
                chosen = RangeSet()
                for start, end in self._droppable(e):
                    chosen = chosen.add(start, min(end - start, need - chosen.total))
                    if chosen.total >= need:
                        break
                if not chosen:
                    return 0
                e.epoch += 1
                e.present = e.present.difference(chosen)
                self._used -= chosen.total
            try:
                self._write_meta(e, durable=False)  # the record never claims dropped data
                assert e.fd is not None
                for start, end in chosen:
                    if not _punch_hole(e.fd, start, end - start):
                        log.debug("cache: cannot punch holes in %s", self._data_dir)
                        break
            except OSError as exc:
                log.warning("cache: evicting ranges of %s: %s", e.key, exc)
            finally:
                # A fill may have written into a dropped range after the first bump (fills pwrite
                # without the mutex): bumping again makes its mark_present fail, so it is refetched.
                with self._lock:
                    e.epoch += 1
            log.debug("cache: evicted %d bytes of open file %s", chosen.total, e.key)
            return chosen.total
        finally:
            e.mutex.release()

    def add_space_listener(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback()` (from whatever thread frees it) whenever space may have been freed
        (a dirty file became clean or was forgotten, a dirty file shrank). Returns a remover."""
        with self._lock:
            self._listeners.append(callback)

        def remove() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._listeners.remove(callback)

        return remove

    def _notify_space(self) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for cb in listeners:
            try:
                cb()
            except Exception:
                log.exception("cache: space listener failed")

    # ---- persistence -----------------------------------------------------------------------------

    def checkpoint(self) -> None:
        """Write the state of clean files whose ranges changed, then, if any record or dirty data
        is not yet on disk, commit the cache filesystem (one syncfs). The daemon calls it every few
        seconds from a worker thread: it bounds what a power cut can lose, like ext4's commit
        interval. Cheap when nothing changed."""
        with self._lock:
            self._check_open()
            changed = [e for e in self._entries.values() if e.meta_dirty and e.pending is None]
        for e in changed:
            with e.mutex:
                if not e.meta_dirty or e.pending is not None or e.detached:
                    continue
                try:
                    self._write_meta(e, durable=False)
                except OSError as exc:
                    log.warning("cache: saving state of %s: %s", e.key, exc)
        with self._lock:
            unsynced = [e for e in self._entries.values() if e.record_unsynced or e.unsynced]
        if unsynced:
            try:
                _syncfs(self.directory)
            except OSError as exc:
                raise _wrap_os_error(exc, "committing the cache journal") from exc
            with self._lock:
                for e in unsynced:
                    e.record_unsynced = e.unsynced = False

    def _meta_json(self, e: _Entry) -> bytes:
        with self._lock:
            full = e.present.contains(0, e.size)
            obj: dict[str, Any] = {
                "v": 1,
                "key": e.key,
                "size": e.size,
                "etag": e.etag,
                "mtime": e.mtime,
                "atime": e.atime,
                "full": full,
                "ranges": [] if full else e.present.to_json(),
                "pending": None,
            }
            p = e.pending
            if p is not None:
                obj["pending"] = {
                    "path": p.path,
                    "resource_id": p.resource_id,
                    "base_etag": p.base_etag,
                    "lock_id": p.lock_id,
                    "generation": e.generation,
                    "state": p.state.value,
                    "upload_token": p.upload_token,
                    "error": p.error,
                }
            e.meta_dirty = False
        return json.dumps(obj, separators=(",", ":")).encode()

    def _entry_from_json(self, name: str, raw: Any) -> tuple[_Entry, int]:
        if not isinstance(raw, dict) or raw.get("v") != 1:
            raise ValueError("unknown record version")
        key = raw["key"]
        if not isinstance(key, str) or cache_name(key) != name:
            raise ValueError("key does not match the file name")
        e = _Entry(key, name)
        e.size = int(raw["size"])
        e.etag = raw["etag"]
        e.mtime = raw["mtime"]
        e.present = RangeSet.full(e.size) if raw["full"] else RangeSet.from_json(raw["ranges"])
        p = raw.get("pending")
        if p is not None:
            e.generation = int(p["generation"])
            e.pending = PendingUpload(
                key=key,
                cache_name=name,
                path=str(p["path"]),
                resource_id=p["resource_id"],
                base_etag=p["base_etag"],
                lock_id=p["lock_id"],
                size=e.size,
                generation=e.generation,
                state=PendingState(p["state"]),
                upload_token=p.get("upload_token"),
                error=p.get("error"),
            )
        return e, int(raw.get("atime", 0))

    def _write_meta(self, e: _Entry, *, durable: bool) -> None:
        """Replace e's record atomically (fsynced if `durable`). Caller holds e.mutex. A detached
        entry (forgotten/evicted) is never written again."""
        if e.detached:
            return
        data = self._meta_json(e)
        try:
            self._write_atomic(self._meta_dir / f"{e.name}.json", data, durable=durable)
        except BaseException:
            e.meta_dirty = True
            raise
        e.record_unsynced = not durable

    def _write_atomic(self, path: Path, data: bytes, *, durable: bool) -> None:
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            try:
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        if durable:
            self._fsync_dir(path.parent)

    @staticmethod
    def _fsync_dir(path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _fsync_data(self, e: _Entry) -> None:
        """fsync e's data (caller holds e.mutex)."""
        if e.fd is not None and e.unsynced:
            os.fdatasync(e.fd)
            e.unsynced = False

    def _journal_ranges(self, e: _Entry, what: str) -> None:
        """Record the range map of a partly cached dirty file after a change (caller holds e.mutex):
        its data first, so a record never claims bytes a power cut could lose."""
        try:
            self._fsync_data(e)
            self._write_meta(e, durable=self.sync_journal)
        except OSError as exc:
            raise _wrap_os_error(exc, what) from exc

    def _drop_files(self, name: str) -> None:
        (self._meta_dir / f"{name}.json").unlink(missing_ok=True)
        (self._data_dir / name).unlink(missing_ok=True)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("cache: the store is closed")

    # ---- used by CacheFile -----------------------------------------------------------------------

    def _unpin(self, entry: _Entry) -> None:
        with entry.mutex:
            with self._lock:
                entry.pins -= 1
                last = entry.pins == 0
                if last and entry.pending is None and not entry.present and not entry.detached:
                    # nothing cached and nothing to upload: do not keep an empty entry around
                    if self._entries.get(entry.key) is entry:
                        self._entries.pop(entry.key)
                    entry.detached = True
                    entry.epoch += 1
                    try:
                        self._drop_files(entry.name)
                    except OSError as exc:
                        log.warning("cache: dropping empty entry %s: %s", entry.key, exc)
            if last and entry.fd is not None:
                os.close(entry.fd)  # no descriptor outlives the handles (100k cached files)
                entry.fd = None
            if (
                last
                and not entry.detached
                and not self._closed
                and entry.meta_dirty
                and entry.pending is None
            ):
                try:
                    self._write_meta(entry, durable=False)
                except OSError as exc:
                    log.warning("cache: saving state of %s: %s", entry.key, exc)

    def _reset_locked(self, e: _Entry, *, size: int, etag: str | None, mtime: float | None) -> None:
        """Drop all data of clean entry `e` and describe it as (size, etag). Caller holds e.mutex."""
        assert e.fd is not None
        with self._lock:
            e.epoch += 1
            self._used -= e.present.total
            e.present = RangeSet()
            e.size, e.etag, e.mtime = size, etag, mtime
        try:
            self._write_meta(e, durable=False)  # record first: it never claims dropped data
            os.ftruncate(e.fd, 0)
            os.ftruncate(e.fd, size)
            e.unsynced = False
        finally:
            with self._lock:
                e.epoch += 1  # fills that wrote before the truncation must not be marked


class Payload(Protocol):
    """Data that writes itself into a file, possibly without passing through Python (e.g.
    meshfs.fuse.WritePayload, spliced from the kernel). A stream: `write_to(fd, offset)` writes
    some of the bytes not yet written, the n-th byte of the data at `offset` + n, and returns how
    many (like pwrite(2): may be short, raises OSError); `remaining` counts the bytes still to
    write. `CacheFile.write` finishes a payload that `try_write` started."""

    def __len__(self) -> int: ...

    @property
    def remaining(self) -> int: ...

    def write_to(self, fd: int, offset: int) -> int: ...


class _BytesPayload:
    """bytes as a Payload (pwrite from memory)."""

    __slots__ = ("_done", "_view")

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self._view = memoryview(data).cast("B")
        self._done = 0

    def __len__(self) -> int:
        return len(self._view)

    @property
    def remaining(self) -> int:
        return len(self._view) - self._done

    def write_to(self, fd: int, offset: int) -> int:
        done = self._done
        n = os.pwrite(fd, self._view[done:], offset + done)
        if n <= 0 and done < len(self._view):
            raise OSError(errno.EIO, "pwrite made no progress")
        self._done = done + n
        return n


class CacheFile:
    """A handle on one cached file (returned by CacheStore.open_file; close it when done).

    Reads: `read` returns the bytes if they are all present, else raises NotPresent. Fills: the
    transfer layer writes fetched bytes at their offset into `fd` (positional writes, e.g.
    os.pwrite), then calls `mark_present(off, length, epoch=<epoch read before the fetch>)`; a fill
    that raced with an invalidation or eviction is then ignored. Only missing ranges may be filled
    (writing over present bytes of a dirty file would destroy local changes). Writes: `write`/
    `truncate` need the file to be dirty (`CacheStore.mark_dirty` first).
    """

    __slots__ = ("_closed", "_entry", "_store")

    def __init__(self, store: CacheStore, entry: _Entry) -> None:
        self._store = store
        self._entry = entry
        self._closed = False

    # ---- properties ------------------------------------------------------------------------------

    @property
    def key(self) -> str:
        return self._entry.key

    @property
    def fd(self) -> int:
        """The data file's descriptor (O_RDWR, no O_DIRECT); positional I/O only."""
        fd = self._entry.fd
        if fd is None or self._closed:
            raise StoreError(f"cache: handle on {self._entry.key} is closed")
        return fd

    @property
    def data_path(self) -> Path:
        return self._store._data_dir / self._entry.name

    @property
    def size(self) -> int:
        return self._entry.size

    @property
    def etag(self) -> str | None:
        return self._entry.etag

    @property
    def mtime(self) -> float | None:
        return self._entry.mtime

    @property
    def dirty(self) -> bool:
        return self._entry.pending is not None

    @property
    def generation(self) -> int:
        """Bumped after every modification (read it before reading data for an upload)."""
        return self._entry.generation

    @property
    def epoch(self) -> int:
        """Bumped whenever present data is dropped (invalidate, eviction, truncate, forget)."""
        return self._entry.epoch

    @property
    def present(self) -> RangeSet:
        return self._entry.present

    # ---- reads -----------------------------------------------------------------------------------

    def missing(self, off: int, size: int) -> list[tuple[int, int]]:
        """The (offset, length) pieces of [off, off+size), clipped to the file size, not cached."""
        e = self._entry
        end = min(off + size, e.size)
        if end <= off:
            return []
        return e.present.missing(off, end - off)

    def covers(self, off: int, size: int) -> bool:
        """True if [off, off+size) clipped to the file size is all cached."""
        e = self._entry
        end = min(off + size, e.size)
        return end <= off or e.present.contains(off, end - off)

    def read(self, off: int, size: int) -> bytes:
        """The bytes of [off, off+size) (short at EOF). Raises NotPresent if any of it is not
        cached, also when it was dropped while being read."""
        e = self._entry
        epoch = e.epoch
        end = min(off + size, e.size)
        if end <= off:
            return b""
        if not e.present.contains(off, end - off):
            raise NotPresent(f"cache: {e.key}: [{off}, {end}) is not cached")
        try:
            data = os.pread(self.fd, end - off, off)
        except OSError as exc:
            raise _wrap_os_error(exc, f"reading cache file of {e.key}") from exc
        if e.epoch != epoch:
            raise NotPresent(f"cache: {e.key}: [{off}, {end}) was dropped during the read")
        e.last_off = off
        e.atime = next(self._store._clock)
        return data

    def try_read(self, off: int, size: int) -> bytes | memoryview | None:
        """`read` for the event loop's thread: the bytes of [off, off+size) (short at EOF) if they
        are cached *and* in the kernel's page cache (preadv with RWF_NOWAIT never waits for the
        disk), else None: the caller then uses `read` in a worker thread (which also reports a
        range that is not cached)."""
        e = self._entry
        epoch = e.epoch
        end = min(off + size, e.size)
        if end <= off:
            return b""
        fd = e.fd
        if fd is None or self._closed or not e.present.contains(off, end - off):
            return None
        buf = bytearray(end - off)
        try:
            n = os.preadv(fd, [buf], off, _RWF_NOWAIT)
        except OSError:
            return None  # EAGAIN: not in the page cache (or no RWF_NOWAIT here)
        if n != end - off or e.epoch != epoch:
            return None
        e.last_off = off
        e.atime = next(self._store._clock)
        return memoryview(buf)

    def mark_present(self, off: int, length: int, *, epoch: int | None = None) -> bool:
        """Record that [off, off+length) now holds the remote content (clipped to the file size).
        With `epoch` (the value of `self.epoch` read before fetching), a fill that raced with an
        invalidation/eviction/truncate is ignored and False returned. On a dirty file this fsyncs
        the data and writes the record (it is rare: filling a partly cached file before upload)."""
        e = self._entry
        store = self._store
        with e.mutex:
            with store._lock:
                if epoch is not None and epoch != e.epoch:
                    return False
                end = min(off + length, e.size)
                if end <= off:
                    return True
                before = e.present.total
                e.present = e.present.add(off, end - off)
                store._used += e.present.total - before
                e.meta_dirty = True
                e.unsynced = True
                dirty = e.pending is not None
            if dirty:
                store._journal_ranges(e, f"journaling a fill of {e.key}")
        return True

    # ---- writes ----------------------------------------------------------------------------------

    def write(self, off: int, data: bytes | bytearray | memoryview | Payload) -> int:
        """Write `data` at `off` (extending the file as needed); the file must be dirty. Returns the
        number of bytes written — all of them — or raises DiskFull with the file's size and range
        map unchanged (after one retry that first evicts clean data: the disk may be shared).
        A `Payload` is written from where it stands (`try_write` may have begun it); it is spent
        afterwards, also when the write failed."""
        e = self._entry
        store = self._store
        n = len(data)
        with e.mutex:
            pending = e.pending
            if pending is None and not e.detached:
                raise WriteToCleanFile(f"cache: write to {e.key}, which is not marked dirty")
            what = f"writing {pending.path if pending else e.key}"
            fd = self.fd
            old_size = e.size
            if n == 0:
                return 0  # POSIX: a zero-length write changes nothing, not even the size
            src: Payload = (
                _BytesPayload(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
            )
            for attempt in (1, 2):
                try:
                    # a retry goes on where the failed attempt stopped (a payload taken from a
                    # pipe cannot be read twice; what was written stays written)
                    while src.remaining > 0:
                        src.write_to(fd, off)
                    break
                except OSError as exc:
                    if (
                        attempt == 1
                        and exc.errno in (errno.ENOSPC, errno.EDQUOT)
                        and store.release(2 * n) > 0
                    ):
                        continue
                    if off + n > old_size:
                        with contextlib.suppress(OSError):
                            os.ftruncate(fd, old_size)
                    raise _wrap_os_error(exc, what) from exc
            was_partial = e.partial
            changed = self._written(off, n, old_size)
            if was_partial and changed:
                # only a write that covers missing bytes or extends the file changes the map
                # (rewriting cached pages, as sqlite does, costs no journal write)
                store._journal_ranges(e, f"journaling a write to {what}")
        return n

    def try_write(self, off: int, data: bytes | bytearray | memoryview | Payload) -> int | None:
        """`write` for the event loop's thread: the same effect, but only when it needs no lock
        another thread holds, no journal record and no error handling. Returns the number of bytes
        written, or None when the caller must use `write` (in a worker thread) instead: the file is
        busy (an upload's fsync, a truncate, an eviction), partly cached (its range map is journaled
        per write), not dirty, or the pwrite failed or came back short (ENOSPC is handled by
        `write`, which rewrites the whole range). The cost is one pwrite into the page cache."""
        e = self._entry
        n = len(data)
        if e.pending is None or e.detached or self._closed or e.fd is None:
            return None
        if not e.mutex.acquire(blocking=False):
            return None
        try:
            fd = e.fd
            if fd is None or e.pending is None or e.detached or e.partial:
                return None
            if n == 0:
                return 0
            old_size = e.size
            try:
                if isinstance(data, (bytes, bytearray, memoryview)):
                    if os.pwrite(fd, data, off) != n:
                        return None  # short: `write` finishes it (and handles what made it short)
                else:
                    data.write_to(fd, off)
                    if data.remaining > 0:
                        return None  # short: `write` goes on from where this one stopped
            except OSError:
                return None
            self._written(off, n, old_size)
            return n
        finally:
            e.mutex.release()

    def _written(self, off: int, n: int, old_size: int) -> bool:
        """Account for n bytes written at off (caller holds e.mutex); True if the size or the
        present ranges changed."""
        e = self._entry
        store = self._store
        with store._lock:
            present = e.present
            before = present.total
            end = off + n
            if len(present.starts) == 1 and present.starts[0] == 0 and off <= present.ends[0]:
                # the common case (a write inside or appended to a fully cached file): the single
                # interval [0, size) at most grows, no bisecting and splicing of tuples
                if end > present.ends[0]:
                    present = e.present = RangeSet((0,), (end,))
            else:
                if off > old_size:
                    present = present.add(old_size, off - old_size)  # the hole reads as zeros
                present = present.add(off, n)
                e.present = present
            e.size = max(old_size, end)
            after = present.total
            store._used += after - before
            e.generation += 1
            e.unsynced = True
            e.last_off = off
            e.atime = next(store._clock)
            return after != before or e.size != old_size

    def truncate(self, size: int) -> None:
        """Set the file size (zeros when growing); the file must be dirty.

        A partly cached dirty file journals the new size and ranges *before* truncating the data
        (its record is authoritative after a crash and the data file is cut to the recorded size);
        a fully cached one needs no record (its st_size is authoritative)."""
        e = self._entry
        store = self._store
        with e.mutex:
            pending = e.pending
            if pending is None and not e.detached:
                raise WriteToCleanFile(f"cache: truncate of {e.key}, which is not marked dirty")
            what = f"truncating {pending.path if pending else e.key}"
            fd = self.fd
            old_size, old_present = e.size, e.present
            was_partial = e.partial

            def apply(new_size: int, present: RangeSet) -> None:
                with store._lock:
                    if new_size < e.size:
                        e.epoch += 1
                    store._used += present.total - e.present.total
                    e.present, e.size = present, new_size

            if size < old_size:
                apply(size, old_present.clip(size))
            else:
                apply(size, old_present.add(old_size, size - old_size))
            try:
                if was_partial:
                    store._fsync_data(e)
                    store._write_meta(e, durable=store.sync_journal)
                os.ftruncate(fd, size)
            except OSError as exc:
                apply(old_size, old_present)
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, old_size)
                    if was_partial:
                        store._write_meta(e, durable=store.sync_journal)
                raise _wrap_os_error(exc, what) from exc
            with store._lock:
                e.generation += 1
                e.unsynced = True
                if size < old_size:
                    e.epoch += 1
        if size < old_size:
            store._notify_space()

    def invalidate(self, *, size: int, etag: str | None, mtime: float | None = None) -> None:
        """The remote content changed: drop this clean file's data and ranges and describe it as the
        new remote version. Raises StoreError on a dirty file (its data is the user's)."""
        e = self._entry
        with e.mutex:
            if e.pending is not None:
                raise StoreError(f"cache: invalidate of {e.key}, which has a pending upload")
            try:
                self._store._reset_locked(e, size=size, etag=etag, mtime=mtime)
            except OSError as exc:
                raise _wrap_os_error(exc, f"invalidating {e.key}") from exc
        self._store._notify_space()

    def set_remote(self, *, size: int, etag: str | None, mtime: float | None = None) -> None:
        """The remote file is known to be in this state and our cached data matches it (e.g. a
        metadata-only change): record it without dropping data. The size of a dirty file stays."""
        e = self._entry
        with self._store._lock:
            e.etag, e.mtime = etag, mtime
            if e.pending is None:
                e.size = size
            e.meta_dirty = True

    # ---- passthrough: the kernel writes the data file itself ----------------------------------------

    def begin_passthrough(self, *, writable: bool) -> None:
        """The kernel will read (and, `writable`, write) this data file directly for an open (FUSE
        passthrough): until the matching `end_passthrough`, its data is never evicted or replaced by
        a new remote version, writes are not seen here — call `adopt_disk()` to take them into
        account — and while a writer has it open the file never turns clean (mark_clean keeps it
        pending). The file must be entirely present (new, truncated or fully cached)."""
        e = self._entry
        with self._store._lock:
            if not e.present.contains(0, e.size):
                raise StoreError(f"cache: passthrough of {e.key}, which is only partly cached")
            e.passthrough += 1
            if writable:
                e.passthrough_writers += 1

    def end_passthrough(self, *, writable: bool) -> bool:
        """Returns True when this was the last passthrough writer and an upload landed while writers
        had the file open: the caller must upload it once more (a store through a shared mmap into a
        page already dirty moves no timestamp, so what went up may be older than the file)."""
        e = self._entry
        with self._store._lock:
            e.passthrough = max(0, e.passthrough - 1)
            if not writable:
                return False
            e.passthrough_writers = max(0, e.passthrough_writers - 1)
            if e.passthrough_writers:
                return False
            again = e.durable_generation >= 0 and e.pending is not None
            e.durable_generation = -1
            e.conflicted = False
            return again

    def disk_stamp(self) -> tuple[int, int, int]:
        """(st_size, st_mtime_ns, st_ctime_ns) of the data file: changes with every write to it."""
        st = os.fstat(self.fd)
        return st.st_size, st.st_mtime_ns, st.st_ctime_ns

    def adopt_disk(self) -> int:
        """Take what the kernel wrote into the data file (passthrough) as this dirty file's new
        content: its size becomes the data file's, all of it present (it was complete when the
        passthrough began), the difference is accounted as used space, and the generation moves
        (an upload that read older data does not mark it clean). Returns the size."""
        e = self._entry
        store = self._store
        with e.mutex:
            if e.pending is None and not e.detached:
                raise WriteToCleanFile(f"cache: adopting writes to {e.key}, which is not marked dirty")
            try:
                size = os.fstat(self.fd).st_size
            except OSError as exc:
                raise _wrap_os_error(exc, f"reading the size of {e.key}") from exc
            with store._lock:
                before = e.present.total
                if size < e.size:
                    e.epoch += 1
                e.present = RangeSet.full(size)
                e.size = size
                store._used += size - before
                e.generation += 1
                e.unsynced = True
                e.atime = next(store._clock)
        return size

    def sync_data(self) -> None:
        """Make this file's data and its journal record durable (fsync(2) of the user; the write-back
        before an upload)."""
        e = self._entry
        store = self._store
        with e.mutex:
            try:
                os.fsync(self.fd)
                e.unsynced = False
                if e.record_unsynced and not e.detached:
                    store._write_meta(e, durable=True)
            except OSError as exc:
                raise _wrap_os_error(exc, f"syncing cache file of {e.key}") from exc

    def close(self) -> None:
        """Release the handle (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._store._unpin(self._entry)

    def __enter__(self) -> CacheFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------------
# Backpressure for trio code


class SpaceWaiter:
    """Trio-side backpressure: `await waiter.reserve(n, timeout=...)` returns once `n` bytes fit in
    the cache (evicting clean data in a worker thread), waiting — without polling — for uploads to
    free space, and raises DiskFull after `timeout` seconds (trio's clock).

    Create it inside the trio run (it remembers the trio token); `close()` it at shutdown.
    """

    def __init__(self, store: CacheStore, *, limiter: trio.CapacityLimiter | None = None) -> None:
        self._store = store
        self._limiter = limiter
        self._token = trio.lowlevel.current_trio_token()
        self._event = trio.Event()
        self._remove = store.add_space_listener(self._wake)

    def _wake(self) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self._fire)

    def _fire(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def reserve(self, nbytes: int, *, timeout: float) -> None:
        """Wait until `nbytes` fit; DiskFull after `timeout` seconds (math.inf: wait forever)."""
        if nbytes > self._store.limit:
            raise DiskFull(f"cache: {nbytes} bytes can never fit in a cache of {self._store.limit} bytes")
        if self._store.fits(nbytes):
            return  # the common case, without a thread hop (a racy read is fine: ensure_space decides)
        deadline = trio.current_time() + timeout if math.isfinite(timeout) else math.inf
        while True:
            event = self._event
            fits = await trio.to_thread.run_sync(self._store.ensure_space, nbytes, limiter=self._limiter)
            if fits:
                return
            with trio.move_on_at(deadline):
                await event.wait()
                continue
            raise DiskFull(
                f"cache: full of data waiting for upload ({self._store.stats().dirty_bytes} bytes)"
                f" for more than {timeout:g}s"
            )

    def close(self) -> None:
        self._remove()


async def checkpoint_loop(
    store: CacheStore, *, interval: float = 5.0, limiter: trio.CapacityLimiter | None = None
) -> None:
    """Run `store.checkpoint()` every `interval` seconds (trio's clock) in a worker thread, forever:
    start it in the daemon nursery. A failure is logged and retried at the next tick."""
    while True:
        await trio.sleep(interval)
        try:
            await trio.to_thread.run_sync(store.checkpoint, limiter=limiter)
        except StoreError as exc:
            if "closed" in str(exc):
                return
            log.warning("%s", exc)
