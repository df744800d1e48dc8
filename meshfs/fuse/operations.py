"""The filesystem-facing API of meshfs.fuse: the `Operations` base class and its value types.

Owns: `Operations` (async, inode based, modelled on pyfuse3's `Operations`), `FUSEError`,
`EntryAttributes`, `FileInfo`, `SetattrFields`, `StatvfsData`, `RequestContext`, `Lock`,
`ReaddirToken` + `readdir_reply`, `ROOT_INODE`, `WritePayload`.
Must not import: anything else from meshfs (this package is a self-contained library), nor
anything CS3/gRPC related. Only the standard library and trio.

How to write a filesystem
-------------------------
Subclass `Operations` and override the handlers you support; every handler you do not override
answers ENOSYS (a few harmless ones -- forget, flush, release, releasedir, fsync, fsyncdir, init,
destroy -- default to "success, do nothing"). Every handler is a coroutine run in its own trio
task; handlers may await for as long as they like (the mount keeps serving other requests).

* Errors: raise `FUSEError(errno.ENOENT)` etc. Any other exception is logged with its traceback and
  answered EIO; the mount survives it.
* Cancellation: when the calling process gets a signal, the kernel sends INTERRUPT and the session
  cancels the handler's task (a `trio.Cancelled` arrives at the next checkpoint); the kernel is
  answered EINTR. Let `trio.Cancelled` propagate (clean up with `finally`).
* Names are `bytes` (never containing b"/" or NUL), paths (symlink targets) are `bytes`.
* Inodes: the kernel refers to files by the `st_ino` you return from lookup/mknod/mkdir/symlink/
  link/create and (readdirplus) `readdir_reply`. Each such successful reply counts as ONE lookup
  of that inode; `forget()` gives them back. `ROOT_INODE` (1) is never looked up nor forgotten.
  Inode numbers must not be reused while the kernel still holds lookups (use `generation` if you
  must reuse numbers).
* Timeouts: `EntryAttributes.entry_timeout` / `attr_timeout` (seconds, float) say how long the kernel
  may cache the name -> inode mapping and the attributes; 0 means "ask every time".
* Buffers: `write(fh, off, buf)` gets a `memoryview` into the session's request buffer; it is valid
  only until the handler returns (copy it with `bytes(buf)` to keep it). A filesystem that stores
  data in files overrides `write_buf(fh, off, data)` instead: `data` (a `WritePayload`) writes
  itself into a file descriptor, spliced from the kernel without a copy through Python. `read()`
  may return bytes, bytearray or memoryview; it is not copied again before being written to the
  kernel.
* Locks: the session asks the kernel to forward POSIX (fcntl) and BSD (flock) locks to the
  filesystem only when `setlk` is overridden (or `MountOptions.locks=True`); otherwise the kernel
  keeps locks local. See `getlk` / `setlk` / `flush` / `release` for the lock-owner rules.

Differences from pyfuse3 (deliberate, everything else has the same names and argument order):
`setxattr` takes `flags` (XATTR_CREATE/XATTR_REPLACE); `flush` gets the lock owner; `release` gets
flags, lock owner and the flock-release bit; `access` may return None (= allowed); `init`/`destroy`
are async; new: `getlk`, `setlk`, `fallocate`, `lseek`, `copy_file_range`; `rename` flags are the
renameat2 flags (RENAME_NOREPLACE=1, RENAME_EXCHANGE=2); readdir entries added through
`readdir_reply` always count as a lookup (the session gives back the ones the kernel did not take,
by calling `forget` itself), so a filesystem never has to know whether READDIR or READDIRPLUS ran.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

ROOT_INODE: Final = 1

#: Lock types, the Linux values of fcntl.F_RDLCK / F_WRLCK / F_UNLCK.
F_RDLCK: Final = 0
F_WRLCK: Final = 1
F_UNLCK: Final = 2
#: `Lock.end` of a lock that reaches to the end of the file (and beyond): the kernel's OFFSET_MAX.
LOCK_END_EOF: Final = 0x7FFF_FFFF_FFFF_FFFF

#: renameat2 flags as they arrive in `rename(..., flags, ...)`.
RENAME_NOREPLACE: Final = 1
RENAME_EXCHANGE: Final = 2
RENAME_WHITEOUT: Final = 4


class FUSEError(Exception):
    """Raise from a handler to answer the kernel with ``-errno``.

    ``FUSEError(errno.ENOENT)``; ``.errno`` holds the number. Raising anything else is a bug in the
    filesystem: it is logged with its traceback and answered EIO.
    """

    __slots__ = ("errno",)

    def __init__(self, errno_: int) -> None:
        super().__init__(errno_)
        self.errno = errno_

    def __str__(self) -> str:
        return f"FUSEError({errno.errorcode.get(self.errno, self.errno)}: {os.strerror(self.errno)})"


@dataclass(slots=True)
class EntryAttributes:
    """Attributes of an inode plus how long the kernel may cache them (pyfuse3 field names).

    Mutable on purpose (like pyfuse3's): build it with keywords or assign the fields afterwards.
    Times are integer nanoseconds since the epoch. `st_ino` must be set (0 is reserved: in a
    lookup reply it means "negative entry, cache the absence for entry_timeout seconds").
    """

    st_ino: int = 0
    generation: int = 0
    entry_timeout: float = 300.0
    attr_timeout: float = 300.0
    st_mode: int = 0
    st_nlink: int = 1
    st_uid: int = 0
    st_gid: int = 0
    st_rdev: int = 0
    st_size: int = 0
    st_blksize: int = 4096
    st_blocks: int = 0
    st_atime_ns: int = 0
    st_mtime_ns: int = 0
    st_ctime_ns: int = 0


@dataclass(frozen=True, slots=True)
class FileInfo:
    """What `open` / `create` return: the file handle and per-open kernel cache flags.

    fh: any integer the filesystem chooses; it comes back in read/write/flush/release/... .
    direct_io: bypass the page cache for this open file (reads/writes go straight to the fs, sizes
      as the application asked; needed for files whose size is unknown).
    keep_cache: do not drop the page cache of this inode on open (the data did not change).
    nonseekable: the file is a stream (pread/lseek fail with ESPIPE).
    noflush: do not send FLUSH on close unless locks are involved (kernel >= 5.x, FOPEN_NOFLUSH).
    backing_id: nonzero: FOPEN_PASSTHROUGH with this id from `Session.backing_open` — the kernel
      reads, writes and mmaps the backing file itself; READ/WRITE never reach the filesystem for
      this open (needs `MountOptions.passthrough` and `conn.has(PASSTHROUGH)`). Every open of one
      inode at a time must be passthrough with the same id, or none: the kernel fails the open
      with EIO otherwise.
    """

    fh: int = 0
    direct_io: bool = False
    keep_cache: bool = False
    nonseekable: bool = False
    noflush: bool = False
    backing_id: int = 0


@dataclass(frozen=True, slots=True)
class SetattrFields:
    """Which fields of the `attr` argument of `setattr` are to be changed (pyfuse3 names).

    update_atime / update_mtime: set to attr.st_atime_ns / st_mtime_ns (UTIME_NOW already resolved
    to the current time by the session). update_ctime: attr.st_ctime_ns. update_size: truncate or
    extend to attr.st_size. kill_suidgid: the kernel asks to drop setuid/setgid bits (write by a
    non-owner with HANDLE_KILLPRIV; not negotiated by default).
    """

    update_atime: bool = False
    update_mtime: bool = False
    update_ctime: bool = False
    update_mode: bool = False
    update_uid: bool = False
    update_gid: bool = False
    update_size: bool = False
    kill_suidgid: bool = False


@dataclass(frozen=True, slots=True)
class StatvfsData:
    """Answer of `statfs` (pyfuse3 field names; statvfs(3) semantics, counts in f_frsize units)."""

    f_bsize: int = 4096
    f_frsize: int = 4096
    f_blocks: int = 0
    f_bfree: int = 0
    f_bavail: int = 0
    f_files: int = 0
    f_ffree: int = 0
    f_favail: int = 0
    f_namemax: int = 255


@dataclass(frozen=True, slots=True)
class RequestContext:
    """Who asked: the calling process's fsuid/fsgid, its tgid, and the umask (for create/mkdir/mknod
    the kernel already applied it to `mode` unless the fs asked otherwise; kept for pyfuse3 parity)."""

    uid: int = 0
    gid: int = 0
    pid: int = 0
    umask: int = 0


@dataclass(frozen=True, slots=True)
class Lock:
    """A POSIX byte-range lock or a BSD flock, as the kernel forwards it.

    start, end: inclusive byte range; `end == LOCK_END_EOF` means "to end of file and beyond".
      flock locks always arrive as 0..LOCK_END_EOF.
    type: F_RDLCK (shared), F_WRLCK (exclusive) or F_UNLCK (unlock / "no conflict" in getlk replies).
    pid: tgid of the process asking (in requests) or holding the conflicting lock (in getlk
      replies; 0 if the holder is not a local process -- the kernel then reports pid 0).
    flock: True for flock(2) locks (FUSE_LK_FLOCK), False for fcntl/lockf byte-range locks.
    """

    start: int
    end: int
    type: int
    pid: int = 0
    flock: bool = False


@dataclass(slots=True)
class ReaddirToken:
    """Opaque reply buffer handed to `Operations.readdir`; fill it with `readdir_reply`.

    `plus` tells whether the kernel asked for READDIRPLUS (entries with attributes); filesystems
    normally need not care (see `readdir_reply`). `size` is the kernel's buffer size in bytes.
    """

    size: int
    plus: bool
    chunks: list[bytes] = field(default_factory=list)
    used: int = 0
    #: inodes of entries added (each counts as one lookup; the session forgets the ones the
    #: kernel did not take).
    added: list[int] = field(default_factory=list)
    dot_names: int = 0


class WritePayload:
    """The data of one WRITE request, handed to `Operations.write_buf`.

    It is either in memory (a memoryview into the session's request buffer) or still in the
    kernel: with splicing, the session moved the request from /dev/fuse into a pipe and read only
    its headers, and the data pages wait in the pipe (the kernel passed references to the page
    cache pages the writer filled, no copy). `write_to` then moves them from the pipe into a file
    with splice(2): one copy in the kernel, none through Python.

    The payload is a stream: `write_to` writes the bytes not yet written, and `consumed` counts the
    bytes already written. It is valid only until the handler returns (the session then discards
    what is left). Not thread-safe: use it from one thread at a time (a worker thread may call
    `write_to` while the handler awaits it).
    """

    __slots__ = ("_buf", "_consumed", "_filled", "_pipe", "_size")

    def __init__(self, buf: memoryview, pipe: int = -1) -> None:
        """buf: the data (pipe < 0), or the place in the request buffer to read it into when it
        must come out of the pipe (`view`); its length is the payload's size either way."""
        self._buf = buf
        self._size = len(buf)
        self._pipe = pipe
        self._consumed = 0
        self._filled = pipe < 0  # bytes in _buf are the data

    def __len__(self) -> int:
        return self._size

    @property
    def consumed(self) -> int:
        """Bytes already written by `write_to`."""
        return self._consumed

    @property
    def remaining(self) -> int:
        """Bytes not yet written by `write_to`."""
        return self._size - self._consumed

    @property
    def in_kernel(self) -> bool:
        """True while the data is in the session's pipe, not in memory (`write_to` splices it)."""
        return not self._filled

    def write_to(self, fd: int, offset: int, count: int | None = None) -> int:
        """Write bytes not yet written (at most `count`) to `fd`, the n-th byte of the payload at
        `offset` + n (so always pass the offset of the payload's first byte); return how many this
        call wrote.

        Like pwrite(2) it may write fewer than asked (call again; `remaining` says how many are
        left) and raises OSError on failure (bytes written before stay written and counted in
        `consumed`). `fd` must accept positional writes (a regular file); 0 when nothing is left.
        """
        pos = self._consumed
        left = self._size - pos
        if count is not None:
            left = min(left, count)
        if left <= 0:
            return 0
        if self._filled:
            n = os.pwrite(fd, self._buf[pos : pos + left], offset + pos)
        else:
            n = os.splice(self._pipe, fd, left, offset_dst=offset + pos)
        if n <= 0:
            raise OSError(errno.EIO, f"write to fd {fd} made no progress")
        self._consumed = pos + n
        return n

    def write_all_to(self, fd: int, offset: int) -> int:
        """`write_to` until everything is written; returns len(self)."""
        while self._consumed < self._size:
            self.write_to(fd, offset)
        return self._size

    def view(self) -> memoryview:
        """The whole data in memory (read out of the pipe first if needed; one copy). Raises
        ValueError when `write_to` already took bytes out of the pipe."""
        if not self._filled:
            if self._consumed:
                raise ValueError("WritePayload.view() after write_to() took data out of the pipe")
            _read_exactly(self._pipe, self._buf)
            self._filled = True
        return self._buf

    def _discard(self) -> None:
        """Session: drop whatever of the data is still in the pipe (the handler did not take it)."""
        if not self._filled and self._consumed < self._size:
            _read_exactly(self._pipe, self._buf[self._consumed :])
            self._consumed = self._size
        self._filled = True


def _read_exactly(fd: int, buf: memoryview) -> None:
    got = 0
    size = len(buf)
    while got < size:
        n = os.readv(fd, [buf[got:]])
        if n <= 0:
            raise OSError(errno.EIO, f"pipe ended after {got} of {size} bytes")
        got += n


_DIRENT = struct.Struct("<QQII")  # ino, off, namelen, type
_ENTRY_OUT = struct.Struct("<QQQQII" + "QQQQQQIIIIIIIIII")
_PAD = bytes(8)


def _valid_split(t: float) -> tuple[int, int]:
    if t <= 0:
        return 0, 0
    sec = int(t)
    return sec, int((t - sec) * 1e9)


def pack_entry_out(attr: EntryAttributes) -> bytes:
    """fuse_entry_out for `attr` (used by the session for lookup-like replies and readdirplus)."""
    es, ens = _valid_split(attr.entry_timeout)
    as_, ans = _valid_split(attr.attr_timeout)
    a_ns, m_ns, c_ns = attr.st_atime_ns, attr.st_mtime_ns, attr.st_ctime_ns
    return _ENTRY_OUT.pack(
        attr.st_ino, attr.generation, es, as_, ens, ans,
        attr.st_ino, attr.st_size, attr.st_blocks,
        a_ns // 1_000_000_000, m_ns // 1_000_000_000, c_ns // 1_000_000_000,
        a_ns % 1_000_000_000, m_ns % 1_000_000_000, c_ns % 1_000_000_000,
        attr.st_mode, attr.st_nlink, attr.st_uid, attr.st_gid, attr.st_rdev & 0xFFFFFFFF,
        attr.st_blksize, 0,
    )  # fmt: skip


_ATTR = struct.Struct("<QQQQQQIIIIIIIIII")


def pack_attr(attr: EntryAttributes) -> bytes:
    """fuse_attr for `attr` (used by the session for getattr/setattr replies)."""
    a_ns, m_ns, c_ns = attr.st_atime_ns, attr.st_mtime_ns, attr.st_ctime_ns
    return _ATTR.pack(
        attr.st_ino, attr.st_size, attr.st_blocks,
        a_ns // 1_000_000_000, m_ns // 1_000_000_000, c_ns // 1_000_000_000,
        a_ns % 1_000_000_000, m_ns % 1_000_000_000, c_ns % 1_000_000_000,
        attr.st_mode, attr.st_nlink, attr.st_uid, attr.st_gid, attr.st_rdev & 0xFFFFFFFF,
        attr.st_blksize, 0,
    )  # fmt: skip


def readdir_reply(token: ReaddirToken, name: bytes, attr: EntryAttributes, next_id: int) -> bool:
    """Add one directory entry to the reply of `Operations.readdir`; False = buffer full.

    next_id: the `start_id` the kernel will pass to the *next* readdir call to continue after this
      entry. It must be stable (the same entry keeps the same id while the directory is open,
      even if the directory changes), non-zero and unique within the directory.
    attr: the entry's attributes; only st_ino and st_mode are used for plain READDIR, the full
      attributes and timeouts for READDIRPLUS.

    When it returns True the entry counts as one lookup of attr.st_ino (exactly as if the kernel
    had called lookup), whether or not the kernel ran READDIRPLUS: the session calls `forget` for
    the entries the kernel did not take. When it returns False, the entry was not added (and not
    counted): stop and return from readdir; the kernel will call again with the last next_id.
    The names b"." and b".." may be returned; they do not count as lookups.
    """
    namelen = len(name)
    if token.plus:
        reclen = (_ENTRY_OUT.size + _DIRENT.size + namelen + 7) & ~7
    else:
        reclen = (_DIRENT.size + namelen + 7) & ~7
    if token.used + reclen > token.size:
        return False
    dtype = (attr.st_mode >> 12) & 0xF
    pad = reclen - namelen - _DIRENT.size
    if token.plus:
        pad -= _ENTRY_OUT.size
        is_dot = name == b"." or name == b".."
        # the kernel takes no lookup for "." and ".."; a zero fuse_entry_out says "no attributes"
        eo = bytes(_ENTRY_OUT.size) if is_dot else pack_entry_out(attr)
        token.chunks.append(eo + _DIRENT.pack(attr.st_ino, next_id, namelen, dtype) + name + _PAD[:pad])
    else:
        token.chunks.append(_DIRENT.pack(attr.st_ino, next_id, namelen, dtype) + name + _PAD[:pad])
    token.used += reclen
    if name == b"." or name == b"..":
        token.dot_names += 1
    else:
        token.added.append(attr.st_ino)
    return True


class Operations:
    """Base class of a filesystem served by `meshfs.fuse.Session`. All handlers are coroutines.

    `ctx` is always a `RequestContext`. Unless stated otherwise a handler returns None on success
    and raises `FUSEError(errno)` on failure.
    """

    # ------------------------------------------------------------------ lifecycle
    async def init(self) -> None:
        """Called once after INIT was negotiated, before any other request is answered."""

    async def destroy(self) -> None:
        """Called once when the session ends (unmounted or the connection went away)."""

    # ------------------------------------------------------------------ names and inodes
    async def lookup(self, parent_inode: int, name: bytes, ctx: RequestContext) -> EntryAttributes:
        """Look up `name` in directory `parent_inode`; counts one lookup of the result.

        Raise FUSEError(ENOENT) if absent, or return EntryAttributes(st_ino=0, entry_timeout=t)
        to let the kernel cache the absence for t seconds. With `MountOptions.export_support`
        the names b"." and b".." must be answered too.
        """
        raise FUSEError(errno.ENOSYS)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        """The kernel dropped `nlookup` lookups of each `(inode, nlookup)`. No reply, no errors.

        When an inode's lookup count reaches 0 (and it is unlinked) its resources may be freed.
        Also called by the session to give back readdir entries the kernel did not take.
        """

    async def getattr(self, inode: int, ctx: RequestContext) -> EntryAttributes:
        """Attributes of `inode` (entry_timeout is ignored here, attr_timeout is used)."""
        raise FUSEError(errno.ENOSYS)

    async def setattr(
        self, inode: int, attr: EntryAttributes, fields: SetattrFields, fh: int | None, ctx: RequestContext
    ) -> EntryAttributes:
        """Change the attributes flagged in `fields` to the values in `attr`; return the new ones.

        fh: the file handle when the change comes through an open file (ftruncate, futimens),
        else None. A truncate by open(O_TRUNC) arrives here (ATOMIC_O_TRUNC: or as flags of open).
        """
        raise FUSEError(errno.ENOSYS)

    async def readlink(self, inode: int, ctx: RequestContext) -> bytes:
        """Target of symlink `inode`."""
        raise FUSEError(errno.ENOSYS)

    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: RequestContext
    ) -> EntryAttributes:
        """Create a file node (regular file, fifo, socket, device); counts one lookup."""
        raise FUSEError(errno.ENOSYS)

    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: RequestContext) -> EntryAttributes:
        """Create a directory (`mode` has S_IFDIR set); counts one lookup."""
        raise FUSEError(errno.ENOSYS)

    async def unlink(self, parent_inode: int, name: bytes, ctx: RequestContext) -> None:
        """Remove a non-directory entry. Open handles and lookups keep the inode alive."""
        raise FUSEError(errno.ENOSYS)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: RequestContext) -> None:
        """Remove an empty directory (ENOTEMPTY otherwise)."""
        raise FUSEError(errno.ENOSYS)

    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: RequestContext
    ) -> EntryAttributes:
        """Create symlink `name` -> `target`; counts one lookup."""
        raise FUSEError(errno.ENOSYS)

    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: RequestContext,
    ) -> None:
        """Rename, replacing an existing target (flags=0), or with renameat2 flags:
        RENAME_NOREPLACE (EEXIST if the target exists), RENAME_EXCHANGE (swap both; ENOENT if the
        target is missing). Replacing a directory needs it empty (ENOTEMPTY), a dir over a
        non-dir is ENOTDIR, a non-dir over a dir EISDIR."""
        raise FUSEError(errno.ENOSYS)

    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: RequestContext
    ) -> EntryAttributes:
        """Create hard link `new_name` to `inode`; counts one lookup."""
        raise FUSEError(errno.ENOSYS)

    # ------------------------------------------------------------------ files
    async def open(self, inode: int, flags: int, ctx: RequestContext) -> FileInfo:
        """Open `inode`; `flags` are the open(2) flags (O_CREAT/O_EXCL/O_NOCTTY removed by the
        kernel; O_TRUNC present: truncate here, the kernel does not send a separate setattr)."""
        raise FUSEError(errno.ENOSYS)

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: RequestContext
    ) -> tuple[FileInfo, EntryAttributes]:
        """Atomically create and open a regular file; counts one lookup. O_EXCL is checked by the
        kernel via a lookup first, but a racing creator must still get EEXIST if flags has O_EXCL."""
        raise FUSEError(errno.ENOSYS)

    async def read(self, fh: int, off: int, size: int) -> bytes | bytearray | memoryview:
        """Up to `size` bytes at `off`. Short only at end of file (or with direct_io)."""
        raise FUSEError(errno.ENOSYS)

    async def write(self, fh: int, off: int, buf: memoryview) -> int:
        """Write `buf` at `off`; return the number of bytes written (normally len(buf)).
        `buf` is only valid until this handler returns. With writeback_cache, writes may come
        through any handle of the inode and may be issued by the kernel after close."""
        raise FUSEError(errno.ENOSYS)

    async def write_buf(self, fh: int, off: int, data: WritePayload) -> int:
        """Write `data` (len(data) bytes) at `off`; return the number of bytes written.

        Override this instead of `write` to receive the data without it passing through Python:
        the session then moves large WRITE requests through a pipe (splice) and `data.write_to(fd,
        off)` splices them into a file; small ones (and every one when splicing is unavailable)
        arrive in memory, and `write_to` pwrites them. `data.view()` gives the bytes in memory.
        Valid only until the handler returns. The default calls `write(fh, off, data.view())`."""
        return await self.write(fh, off, data.view())

    async def flush(self, fh: int, lock_owner: int) -> None:
        """close(2) of one file descriptor of handle `fh` (may happen several times per open).
        POSIX locks of `lock_owner` on this inode must be released here (the kernel does not
        send an unlock for them). Errors are returned by close(2)."""

    async def release(self, fh: int, flags: int, lock_owner: int, flock_release: bool) -> None:
        """The last reference to the open file `fh` is gone. `flags` are its open flags.
        flock_release: the open file held a flock, which must be released now (lock owner
        `lock_owner`, the same owner the flock arrived with). The reply is not seen by anyone.
        OFD locks (F_OFD_SETLK) arrive as fcntl locks whose owner is the open file; the kernel
        sends no unlock for them when that file is closed (FUSE drops the close-time unlock and
        FLUSH carries the process's owner), so release here every fcntl lock still held
        through this `fh` (classic POSIX locks were already released at FLUSH)."""

    async def fsync(self, fh: int, datasync: bool) -> None:
        """fsync(2)/fdatasync(2): persist the data (and metadata unless datasync)."""

    async def fallocate(self, fh: int, off: int, length: int, mode: int) -> None:
        """fallocate(2) with its mode flags (FALLOC_FL_KEEP_SIZE=1, PUNCH_HOLE=2, ...)."""
        raise FUSEError(errno.ENOSYS)

    async def lseek(self, fh: int, off: int, whence: int) -> int:
        """Only SEEK_DATA (3) / SEEK_HOLE (4) come here; return the resulting offset (ENXIO past
        the end). ENOSYS makes the kernel use its generic implementation from then on."""
        raise FUSEError(errno.ENOSYS)

    async def copy_file_range(
        self, fh_in: int, off_in: int, fh_out: int, off_out: int, length: int, flags: int
    ) -> int:
        """Copy up to `length` bytes; return the number copied. ENOSYS makes the kernel fall back
        to read+write (and stop asking)."""
        raise FUSEError(errno.ENOSYS)

    # ------------------------------------------------------------------ locks
    async def getlk(self, inode: int, fh: int, owner: int, lock: Lock, ctx: RequestContext) -> Lock:
        """fcntl(F_GETLK): return the first lock conflicting with `lock` held by an owner other
        than `owner`, or a Lock with type F_UNLCK if there is none (start/end/pid then ignored)."""
        raise FUSEError(errno.ENOSYS)

    async def setlk(
        self, inode: int, fh: int, owner: int, lock: Lock, sleep: bool, ctx: RequestContext
    ) -> None:
        """Acquire, convert or release (type F_UNLCK) `lock` for `owner`.

        owner: the kernel's lock owner id (fcntl: the process's files table; flock and OFD
          locks: the open file). fcntl owners come back in flush(lock_owner), flock owners in
          release(lock_owner); OFD locks must be dropped at release(fh) (see there).
        sleep: False -> fail at once with FUSEError(EAGAIN) on conflict (EWOULDBLOCK is the same
          number); True (F_SETLKW / blocking flock) -> wait until it can be granted. A waiting
          handler is cancelled when the process gets a signal (the session answers EINTR);
          make sure nothing is left half-acquired (use `finally`). EDEADLK may be raised.
        lock.flock tells flock(2) from fcntl locks; POSIX semantics (split/merge/upgrade ranges
        of the same owner) apply to fcntl locks, a flock is one whole-file lock per owner.
        """
        raise FUSEError(errno.ENOSYS)

    # ------------------------------------------------------------------ directories
    async def opendir(self, inode: int, ctx: RequestContext) -> int:
        """Open a directory; return a handle for readdir/releasedir."""
        raise FUSEError(errno.ENOSYS)

    async def readdir(self, fh: int, start_id: int, token: ReaddirToken) -> None:
        """List entries after position `start_id` (0 = from the beginning) with
        `readdir_reply(token, name, attr, next_id)` until it returns False or the directory ends.
        Serves both READDIR and READDIRPLUS; the buffer size is enforced by readdir_reply."""
        raise FUSEError(errno.ENOSYS)

    async def releasedir(self, fh: int) -> None:
        """The directory handle `fh` is closed."""

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        """fsync(2) on a directory."""

    # ------------------------------------------------------------------ misc
    async def statfs(self, ctx: RequestContext) -> StatvfsData:
        """statfs(2)/df."""
        raise FUSEError(errno.ENOSYS)

    async def access(self, inode: int, mode: int, ctx: RequestContext) -> bool | None:
        """access(2) check (only sent without default_permissions). Return True/None when
        allowed, False (-> EACCES) or raise when not. mode: R_OK|W_OK|X_OK or F_OK (0)."""
        raise FUSEError(errno.ENOSYS)

    async def setxattr(self, inode: int, name: bytes, value: bytes, flags: int, ctx: RequestContext) -> None:
        """Set extended attribute; flags XATTR_CREATE (1: EEXIST if present) / XATTR_REPLACE
        (2: ENODATA if absent)."""
        raise FUSEError(errno.ENOSYS)

    async def getxattr(self, inode: int, name: bytes, ctx: RequestContext) -> bytes:
        """Value of an extended attribute, FUSEError(ENODATA) if absent. The session answers
        size probes (size 0) and ERANGE from the returned value."""
        raise FUSEError(errno.ENOSYS)

    async def listxattr(self, inode: int, ctx: RequestContext) -> Sequence[bytes]:
        """Names of the extended attributes (without NUL terminators)."""
        raise FUSEError(errno.ENOSYS)

    async def removexattr(self, inode: int, name: bytes, ctx: RequestContext) -> None:
        """Remove an extended attribute (ENODATA if absent)."""
        raise FUSEError(errno.ENOSYS)
