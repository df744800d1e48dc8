"""Mount/unmount, the request loop, replies, notifications and interrupts of meshfs.fuse.

Owns: `Session` (one FUSE connection serving an `Operations`), `MountOptions`, `MountError`,
`ConnectionInfo`. Talks to /dev/fuse directly (no libfuse): mount(2) through ctypes as root,
`fusermount3` with `_FUSE_COMMFD` otherwise.
Must not import: anything else from meshfs except this package; nothing CS3 related.

Usage (inside trio)::

    session = Session(MyOperations())
    session.mount("/mnt/x", MountOptions(fsname="myfs"))   # MountError with a one-line message
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session.run)                   # returns when the fs is unmounted
        ...
        session.unmount()                                 # from any thread; run() then ends

Concurrency model: a pool of worker tasks in the session's nursery, of which exactly one at a
time reads /dev/fuse (non-blocking fd + `trio.lowlevel.wait_readable`, no thread hop). The
reader runs the request's handler inline, so a handler that does not block costs no task switch;
the moment a handler blocks (awaits something that yields to trio) the reader role passes to an
idle worker or a new one, so every handler effectively runs as its own task. At most
`MountOptions.max_tasks` workers exist, not counting those waiting in SETLKW (their unlock must
stay readable): when all are blocked, reading pauses until one is free.
Replies are one `os.writev` each, WRITE payloads are memoryviews into the worker's buffer and
READ results are written as returned (no copies). INTERRUPT cancels the blocked handler (each
worker owns one cancel scope, replaced after an interrupt) and answers EINTR.

Spliced WRITEs (only for an Operations that overrides `write_buf`, `MountOptions.splice_write`):
while large WRITEs come in, each worker moves requests from /dev/fuse into its own pipe with
splice(2) (the kernel lends the page cache pages of the written data, no copy), reads the 80
header bytes of a WRITE and hands its data on still in the pipe (`WritePayload`, which splices it
into the filesystem's file); other requests are read out of the pipe whole. What the handler did
not take is drained from the pipe before the worker reads again.

Notifications (`invalidate_inode`, `invalidate_entry`, `delete_entry`, `store`) are queued and
written by a worker thread, so they never block the loop nor deadlock against a request that
holds kernel locks (e.g. a READ holding the page lock that an invalidation waits for); call them
from handlers or any task of the session's trio loop. `await session.drain_notifications()`
waits until everything queued so far reached the kernel.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import logging
import os
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import trio

from . import abi
from .operations import (
    EntryAttributes,
    FileInfo,
    FUSEError,
    Lock,
    Operations,
    ReaddirToken,
    RequestContext,
    SetattrFields,
    StatvfsData,
    WritePayload,
    _read_exactly,
    pack_attr,
    pack_entry_out,
)

log = logging.getLogger("meshfs.fuse")

MiB = 1 << 20
_PAGE = 4096
#: in_header + fuse_write_in: what is read out of the pipe of a spliced WRITE before its data
_WRITE_HEAD = abi.IN_HEADER.size + abi.WRITE_IN.size
#: a spliced WRITE with less data than this is read into memory whole (a page: as libfuse does)
SPLICE_MIN = _PAGE
#: a WRITE of at least this many bytes (read the ordinary way) turns splicing on ...
SPLICE_ENTER = 64 << 10
#: ... and this many other requests in a row turn it off again (each costs one more syscall)
SPLICE_LEAVE = 64
_MNT_DETACH = 2
_MS_RDONLY = 1
_MS_NOSUID = 2
_MS_NODEV = 4


class MountError(Exception):
    """Mounting or unmounting failed; str() is one line saying what and why."""


@dataclass(frozen=True, slots=True)
class MountOptions:
    """Mount options.

    fsname: the "device" shown in /proc/mounts and df. subtype: shown as fuse.<subtype>.
    allow_other: let other users access the mount (off unless explicitly asked; for non-root
      mounts fusermount3 also needs `user_allow_other` in /etc/fuse.conf).
    default_permissions: let the kernel check permissions from st_mode/uid/gid (no ACCESS calls).
    ro: read-only mount. nonempty: allow mounting over a non-empty directory.
    max_read: largest READ the kernel sends (0: max_write). max_write: largest WRITE (and READ
      with max_pages), 4 KiB .. 1 MiB (MAX_PAGES = max_write / 4096).
    writeback_cache: FUSE_WRITEBACK_CACHE (the kernel buffers writes; mtime/size become
      kernel-owned; writes can arrive after close and through any open handle).
    max_background / congestion_threshold: async request limits (0 threshold: 3/4 of max_background).
    locks: forward fcntl locks to the fs (None: iff the Operations subclass overrides setlk).
    flock_locks: forward flock locks (None: same as locks).
    readdirplus: negotiate DO_READDIRPLUS + READDIRPLUS_AUTO.
    export_support: FUSE_EXPORT_SUPPORT (lookup of "." and ".." must work).
    auto_inval_data: FUSE_AUTO_INVAL_DATA (drop cached pages when getattr shows a new mtime/size).
    max_tasks: handlers blocked at once (workers); when all are blocked, reading pauses until one
      finishes. Handlers waiting for a lock (SETLKW) do not count, so an unlock can always be read.
    unmount_grace: seconds to keep serving after a lazy (busy) unmount before the connection is
      aborted (processes still inside then get ENOTCONN).
    splice_write: when the Operations overrides `write_buf`, move large WRITE requests from
      /dev/fuse into a pipe with splice(2) and hand the data on still in the pipe (`WritePayload`):
      no copy through Python. Used while large WRITEs come in (see SPLICE_ENTER/SPLICE_LEAVE).
      A WRITE must fit one pipe (max_write + 2 pages; the kernel fails the WRITE otherwise), and
      without CAP_SYS_RESOURCE a pipe is at most fs.pipe-max-size (1 MiB by default): mount()
      then lowers max_write to fit (1 MiB -> 1016 KiB; `Session.options` shows the value used).
      A worker that cannot get its pipe (per-user pipe limits) reads requests the ordinary way.
    passthrough: negotiate FUSE_PASSTHROUGH (kernel >= 6.9, protocol 7.40; not with
      writeback_cache): opens may then be answered with a backing file (`FileInfo.backing_id`,
      from `Session.backing_open`, which needs CAP_SYS_ADMIN) whose reads and writes the kernel
      does itself. `conn.has(abi.PASSTHROUGH)` says whether the kernel agreed. The mount gets
      stacking depth 1: a backing file must be on a filesystem that is not itself stacked
      (overlayfs, ecryptfs) — backing_open fails with ELOOP for those.
    handle_killpriv_v2: FUSE_HANDLE_KILLPRIV_V2 — the filesystem promises to clear setuid/setgid
      bits and security.capability itself on write, truncate and chown (true of a filesystem that
      keeps none). The kernel then marks inodes S_NOSEC after their first write: without it, every
      write(2) first asks GETXATTR("security.capability"), a round trip per write — also for
      passthrough writes, which otherwise never reach the filesystem.
    """

    fsname: str = "meshfs"
    subtype: str = ""
    allow_other: bool = False
    default_permissions: bool = False
    ro: bool = False
    nonempty: bool = False
    max_read: int = 0
    max_write: int = MiB
    writeback_cache: bool = False
    max_background: int = 64
    congestion_threshold: int = 0
    locks: bool | None = None
    flock_locks: bool | None = None
    readdirplus: bool = True
    export_support: bool = False
    auto_inval_data: bool = True
    max_tasks: int = 1024
    unmount_grace: float = 5.0
    splice_write: bool = True
    passthrough: bool = False
    handle_killpriv_v2: bool = False

    def check(self) -> None:
        """Raise MountError for a bad value."""
        if not 4096 <= self.max_write <= MiB or self.max_write % 4096:
            raise MountError(
                f"max_write must be a multiple of 4096 between 4096 and {MiB}, got {self.max_write}"
            )
        if self.max_read < 0:
            raise MountError(f"max_read must be >= 0, got {self.max_read}")
        if not 1 <= self.max_background <= 65535:
            raise MountError(f"max_background must be 1..65535, got {self.max_background}")
        if self.max_tasks < 1:
            raise MountError(f"max_tasks must be >= 1, got {self.max_tasks}")
        for name, value in (("fsname", self.fsname), ("subtype", self.subtype)):
            if any(c in value for c in ",\0\n ") or (name == "fsname" and not value):
                raise MountError(f"{name} must be non-empty and free of commas/spaces, got {value!r}")


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """What INIT negotiated: protocol minor, the flags both sides agreed on, sizes."""

    proto_minor: int
    kernel_flags: int
    flags: int
    max_write: int
    max_readahead: int

    def has(self, flag: int) -> bool:
        return bool(self.flags & flag)


_LIBC: ctypes.CDLL | None = None


def splice_max_write(want: int) -> int:
    """The largest max_write (<= want, a multiple of 4096) whose WRITEs fit a pipe this process
    may have: a slot for the header page, one per data page, one more for data starting mid-page."""
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        try:
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, want + 2 * _PAGE)
            return want
        except OSError:
            pass
        try:
            with open("/proc/sys/fs/pipe-max-size") as f:
                cap = int(f.read())
            cap = fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, cap)
        except (OSError, ValueError):
            return 0
        return max(0, min(want, (cap - 2 * _PAGE) // _PAGE * _PAGE))
    finally:
        os.close(r)
        os.close(w)


def _libc() -> ctypes.CDLL:
    global _LIBC
    if _LIBC is None:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        c_str = ctypes.c_char_p
        lib.mount.argtypes = [c_str, c_str, c_str, ctypes.c_ulong, c_str]
        lib.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
        _LIBC = lib
    return _LIBC


def _umount2(path: str, flags: int) -> int:
    """0 or the errno."""
    if _libc().umount2(os.fsencode(path), flags) != 0:
        return ctypes.get_errno()
    return 0


def _fusermount() -> str:
    exe = shutil.which("fusermount3") or shutil.which("fusermount")
    if exe is None:
        raise MountError("fusermount3 not found: install the fuse3 package (apt-get install fuse3)")
    return exe


def lazy_unmount(mountpoint: str) -> None:
    """Detach `mountpoint` (umount -l / fusermount3 -u -z), ignoring 'not mounted'."""
    if os.geteuid() == 0:
        err = _umount2(mountpoint, _MNT_DETACH)
        if err not in (0, errno.EINVAL, errno.ENOENT):
            raise MountError(f"cannot detach {mountpoint}: {os.strerror(err)}")
        return
    subprocess.run([_fusermount(), "-u", "-z", "-q", mountpoint], capture_output=True, check=False)


def _ctx(hdr: tuple[int, ...], umask: int = 0) -> RequestContext:
    return RequestContext(hdr[4], hdr[5], hdr[6], umask)


def _cstr(mv: memoryview, off: int) -> tuple[bytes, int]:
    """NUL-terminated string at `off`; returns (bytes, offset after the NUL)."""
    raw = mv[off:]
    end = bytes(raw).find(b"\0") if len(raw) < 4096 else bytes(raw[:4096]).find(b"\0")
    if end < 0:
        end = len(raw)
    return bytes(raw[:end]), off + end + 1


def _now_ns() -> int:
    return time.time_ns()


def _open_flags(fi: FileInfo) -> int:
    return ((abi.FOPEN_DIRECT_IO if fi.direct_io else 0) | (abi.FOPEN_KEEP_CACHE if fi.keep_cache else 0)
            | (abi.FOPEN_NONSEEKABLE if fi.nonseekable else 0) | (abi.FOPEN_NOFLUSH if fi.noflush else 0)
            | (abi.FOPEN_PASSTHROUGH if fi.backing_id else 0))


def _open_out(fi: FileInfo) -> bytes:
    return abi.OPEN_OUT.pack(fi.fh, _open_flags(fi), fi.backing_id)


#: parses one request (header tuple, payload) -> (coroutine function, its args)
_Handler = Callable[..., Awaitable[None]]
_Parser = Callable[[tuple[int, ...], memoryview], tuple[_Handler, tuple[Any, ...]]]


class Session:
    """One FUSE connection serving `ops`. See the module docstring for the life cycle.

    Attributes after mount: `mountpoint`, `options`, `fd` (the /dev/fuse fd);
    after INIT: `conn` (ConnectionInfo); `initialized` is a trio.Event created by mount() and set
    by run() once INIT was answered (await it before touching the mountpoint from the same loop).
    """

    def __init__(self, ops: Operations) -> None:
        self.ops = ops
        self.mountpoint: str | None = None
        self.options = MountOptions()
        self.fd = -1
        self.conn: ConnectionInfo | None = None
        self._fusermount = False
        self._mounted = False
        self._inflight: dict[int, _WorkerState] = {}
        self._free_bufs: list[bytearray] = []
        self._bufsize = MiB + 4096
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._notify_send: trio.MemorySendChannel[tuple[list[bytes | memoryview], int]] | None = None
        self._notify_recv: trio.MemoryReceiveChannel[tuple[list[bytes | memoryview], int]] | None = None
        self._notify_seq = 0
        self._notify_done = 0
        self._notify_progress: trio.Event | None = None
        self._stopping = False
        self._closed = False
        self._detach_scheduled = False
        self.initialized: trio.Event | None = None
        self._ended = trio.Event()
        self._idle_lot = trio.lowlevel.ParkingLot()
        self._reader: object | None = None
        self._idle = 0
        self._workers = 0
        self._lock_waiters = 0
        self._ops_table = self._build_table()
        #: the filesystem takes WritePayloads (overrides write_buf): WRITEs go there
        self._write_buf = type(ops).write_buf is not Operations.write_buf
        self._splice_ok = False  # set per mount: _write_buf and options.splice_write
        self._splice_mode = False  # large WRITEs are coming: read requests through the pipe
        self._plain_streak = 0  # requests other than WRITE in a row while in splice mode
        #: counters (tests, debugging): WRITE payloads spliced into files / read into memory
        self.spliced_writes = 0
        self.memory_writes = 0

    # ================================================================== mount / unmount
    def mount(self, mountpoint: str | os.PathLike[str], options: MountOptions | None = None) -> None:
        """Mount at `mountpoint` (synchronously; the kernel's INIT is answered by run()).

        Raises MountError (one line) for: missing mountpoint, not a directory, non-empty
        directory (unless options.nonempty), mount(2)/fusermount3 failures. A stale FUSE mount
        left by a dead daemon ("Transport endpoint is not connected") is detached first with a
        warning in the log.
        """
        if self._mounted:
            raise MountError(f"session is already mounted at {self.mountpoint}")
        opts = options or MountOptions()
        opts.check()
        mp = os.path.abspath(os.fspath(mountpoint))
        try:
            st = os.stat(mp)
        except FileNotFoundError:
            raise MountError(f"mountpoint {mp} does not exist") from None
        except OSError as e:
            if e.errno != errno.ENOTCONN:
                raise MountError(f"mountpoint {mp} is not usable: {e.strerror}") from None
            log.warning("meshfs.fuse: %s is a stale FUSE mount (Transport endpoint is not connected); "
                        "detaching it", mp)
            lazy_unmount(mp)
            try:
                st = os.stat(mp)
            except OSError as e2:
                raise MountError(f"mountpoint {mp} is a stale mount that could not be cleaned: "
                                 f"{e2.strerror}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise MountError(f"mountpoint {mp} is not a directory")
        if not opts.nonempty:
            try:
                with os.scandir(mp) as it:
                    nonempty = any(True for _ in it)
            except OSError as e:
                raise MountError(f"mountpoint {mp} cannot be listed: {e.strerror}") from None
            if nonempty:
                raise MountError(f"mountpoint {mp} is not empty (mount over it with nonempty=True)")
        self._splice_ok = self._write_buf and opts.splice_write
        self._splice_mode = False
        if self._splice_ok:
            fit = splice_max_write(opts.max_write)
            if fit < SPLICE_ENTER:
                self._splice_ok = False
            elif fit < opts.max_write:
                log.info("meshfs.fuse: max_write %d -> %d: a WRITE must fit a pipe to be spliced "
                         "(fs.pipe-max-size limits this process)", opts.max_write, fit)
                opts = replace(opts, max_write=fit)
        self.options = opts
        self._bufsize = opts.max_write + 4096
        if os.geteuid() == 0:
            self.fd = self._mount_root(mp, st, opts)
            self._fusermount = False
        else:
            self.fd = self._mount_fusermount(mp, opts)
            self._fusermount = True
        os.set_blocking(self.fd, False)
        self.mountpoint = mp
        self._mounted = True
        self.initialized = trio.Event()
        self._closed = False
        self._stopping = False
        self._detach_scheduled = False
        log.info("meshfs.fuse: mounted %s at %s", opts.fsname, mp)

    def _opt_string(self, opts: MountOptions, *, kernel: bool) -> list[str]:
        out = []
        if opts.default_permissions:
            out.append("default_permissions")
        if opts.allow_other:
            out.append("allow_other")
        if opts.max_read:
            out.append(f"max_read={opts.max_read}")
        if not kernel:
            out.append(f"fsname={opts.fsname}")
            if opts.subtype:
                out.append(f"subtype={opts.subtype}")
            out += ["nosuid", "nodev"]
            if opts.ro:
                out.append("ro")
        return out

    def _mount_root(self, mp: str, st: os.stat_result, opts: MountOptions) -> int:
        try:
            fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise MountError(f"cannot open /dev/fuse: {e.strerror} (is the fuse module loaded?)") from None
        data = [f"fd={fd}", f"rootmode={stat.S_IFMT(st.st_mode):o}", f"user_id={os.getuid()}",
                f"group_id={os.getgid()}", *self._opt_string(opts, kernel=True)]
        fstype = f"fuse.{opts.subtype}" if opts.subtype else "fuse"
        flags = _MS_NOSUID | _MS_NODEV | (_MS_RDONLY if opts.ro else 0)
        rc = _libc().mount(opts.fsname.encode(), mp.encode(), fstype.encode(), flags, ",".join(data).encode())
        if rc != 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise MountError(f"mount(2) of {mp} failed: {os.strerror(err)}")
        return fd

    def _mount_fusermount(self, mp: str, opts: MountOptions) -> int:
        exe = _fusermount()
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            env = dict(os.environ, _FUSE_COMMFD=str(child.fileno()))
            cmd = [exe, "-o", ",".join(self._opt_string(opts, kernel=False)), "--", mp]
            proc = subprocess.Popen(cmd, env=env, pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            child.close()
            parent.settimeout(30)
            try:
                _msg, fds, _flags, _addr = socket.recv_fds(parent, 1, 1)
            except (OSError, TimeoutError):
                fds = []
            try:
                _out, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                _out, err = proc.communicate()
            if not fds:
                text = err.decode(errors="replace").strip().replace("\n", "; ")
                why = text or f"exit code {proc.returncode}"
                raise MountError(f"fusermount3 could not mount {mp}: {why}")
            for extra in fds[1:]:
                os.close(extra)
            os.set_inheritable(fds[0], False)
            return fds[0]
        finally:
            parent.close()
            child.close()

    def unmount(self, lazy: bool = True) -> None:
        """Unmount; safe to call from any thread, several times, and before/after run().

        Tries a normal unmount first. If the mount is busy (open files, cwd inside) and `lazy`,
        it is detached instead, served for `options.unmount_grace` more seconds and then the
        connection is aborted (remaining users get ENOTCONN). Without `lazy` a busy mount raises
        MountError. run() returns once the kernel has let go of the connection.
        """
        if not self._mounted or self.mountpoint is None:
            return
        mp = self.mountpoint
        busy = False
        if self._fusermount:
            r = subprocess.run([_fusermount(), "-u", "-q", mp], capture_output=True, check=False)
            if r.returncode != 0:
                text = r.stderr.decode(errors="replace")
                if "busy" not in text.lower() and "not found in" in text:
                    busy = False  # already gone
                elif not lazy:
                    raise MountError(f"cannot unmount {mp}: {text.strip()}")
                else:
                    busy = True
                    subprocess.run([_fusermount(), "-u", "-z", "-q", mp], capture_output=True, check=False)
        else:
            err = _umount2(mp, 0)
            if err == errno.EBUSY:
                if not lazy:
                    raise MountError(f"cannot unmount {mp}: it is busy")
                busy = True
                err = _umount2(mp, _MNT_DETACH)
            if err not in (0, errno.EINVAL, errno.ENOENT):
                raise MountError(f"cannot unmount {mp}: {os.strerror(err)}")
        self._mounted = False
        log.info("meshfs.fuse: unmounted %s%s", mp, " (lazily, it was busy)" if busy else "")
        token = self._token
        if token is not None:
            try:
                token.run_sync_soon(self._begin_stop, busy)
            except trio.RunFinishedError:
                pass
        elif self.fd >= 0 and busy:
            self._close_fd()

    def _begin_stop(self, busy: bool) -> None:
        self._stopping = True
        if self._nursery is not None and not self._detach_scheduled and not self._ended.is_set():
            self._detach_scheduled = True
            try:
                self._nursery.start_soon(self._abort_after, self.options.unmount_grace if busy else 2.0)
            except RuntimeError:
                pass  # the session is already ending (the kernel let go first)

    async def _abort_after(self, delay: float) -> None:
        # After a normal unmount the kernel ends the connection itself (reads get ENODEV); this
        # is the safety net, and the end of the grace period after a lazy unmount.
        await trio.sleep(delay)
        if not self._closed:
            log.warning("meshfs.fuse: aborting the connection of %s (still in use after unmount)",
                        self.mountpoint)
            self._close_fd()
        self._end()  # also when no worker is reading (all blocked at max_tasks)

    def _close_fd(self) -> None:
        if self._closed or self.fd < 0:
            return
        self._closed = True
        try:
            trio.lowlevel.notify_closing(self.fd)
        except RuntimeError:
            pass
        os.close(self.fd)
        self.fd = -1

    # ================================================================== notifications
    def backing_open(self, fd: int) -> int:
        """Register the open file `fd` (a regular file, opened for reading and writing) as a
        backing file of this connection; returns its backing id for `FileInfo.backing_id`. The
        kernel holds its own reference: `fd` may be closed afterwards. Call `backing_close(id)` once
        no open still to be answered will use the id (e.g. at the last release of the inode's
        passthrough opens). Raises OSError: EPERM without CAP_SYS_ADMIN, ELOOP for a file on a
        stacked filesystem, EOPNOTSUPP/ENOTTY when passthrough was not negotiated."""
        if self.conn is None or not self.conn.has(abi.PASSTHROUGH) or self.fd < 0:
            raise OSError(errno.EOPNOTSUPP, "FUSE passthrough was not negotiated")
        arg = bytearray(abi.BACKING_MAP.pack(fd, 0, 0))
        backing_id = fcntl.ioctl(self.fd, abi.DEV_IOC_BACKING_OPEN, arg)
        if backing_id <= 0:  # the kernel returns the id (> 0) or an error
            raise OSError(errno.EIO, f"FUSE_DEV_IOC_BACKING_OPEN returned {backing_id}")
        return int(backing_id)

    def backing_close(self, backing_id: int) -> None:
        """Drop a backing id (opens that use it keep their backing file). Errors are logged: the
        connection may be gone already."""
        if self.fd < 0 or backing_id <= 0:
            return
        try:
            fcntl.ioctl(self.fd, abi.DEV_IOC_BACKING_CLOSE, bytearray(abi.BACKING_CLOSE_ARG.pack(backing_id)))
        except OSError as e:
            if e.errno not in (errno.EBADF, errno.ENODEV, errno.ENOTCONN):
                log.warning("meshfs.fuse: closing backing id %d: %s", backing_id, e.strerror)

    def invalidate_inode(self, inode: int, off: int = 0, length: int = 0) -> None:
        """Drop the kernel's cached attributes of `inode` and its cached data in [off, off+length)
        (length 0: to the end; off < 0: attributes only). Queued, never blocks."""
        self._notify(abi.NOTIFY_INVAL_INODE, [abi.NOTIFY_INVAL_INODE_OUT.pack(inode, off, length)])

    def invalidate_entry(self, parent: int, name: bytes) -> None:
        """Drop the kernel's cached lookup of `name` in directory `parent`. Queued, never blocks."""
        head = abi.NOTIFY_INVAL_ENTRY_OUT.pack(parent, len(name), 0)
        self._notify(abi.NOTIFY_INVAL_ENTRY, [head, bytes(name), b"\0"])

    def delete_entry(self, parent: int, child: int, name: bytes) -> None:
        """Tell the kernel `name` (inode `child`) was removed from `parent` (also drops it from
        inotify watchers' view). Queued, never blocks."""
        head = abi.NOTIFY_DELETE_OUT.pack(parent, child, len(name), 0)
        self._notify(abi.NOTIFY_DELETE, [head, bytes(name), b"\0"])

    def store(self, inode: int, off: int, data: bytes) -> None:
        """Put `data` into the kernel's page cache of `inode` at `off` (extends the cached size if
        needed). Queued, never blocks."""
        self._notify(abi.NOTIFY_STORE, [abi.NOTIFY_STORE_OUT.pack(inode, off, len(data), 0), bytes(data)])

    def _notify(self, code: int, parts: list[bytes | memoryview]) -> None:
        if self._notify_send is None:
            raise RuntimeError("notifications can only be sent while Session.run() is running")
        self._notify_seq += 1
        self._notify_send.send_nowait((parts, code))

    async def drain_notifications(self) -> None:
        """Wait until every notification queued so far was written to the kernel."""
        target = self._notify_seq
        while self._notify_done < target and not self._closed:
            assert self._notify_progress is not None
            await self._notify_progress.wait()

    async def _notify_loop(self) -> None:
        assert self._notify_recv is not None
        limiter = trio.CapacityLimiter(1)
        async for parts, code in self._notify_recv:
            size = abi.OUT_HEADER.size + sum(len(p) for p in parts)
            iov = [abi.OUT_HEADER.pack(size, code, 0), *parts]
            fd = self.fd
            if fd >= 0:
                try:
                    await trio.to_thread.run_sync(os.writev, fd, iov, limiter=limiter, abandon_on_cancel=True)
                except OSError as e:
                    # ENOENT: the kernel does not know that inode/entry (nothing cached) -- fine.
                    if e.errno not in (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ENODEV):
                        log.warning("meshfs.fuse: notification %d failed: %s", code, e.strerror)
            self._notify_done += 1
            assert self._notify_progress is not None
            self._notify_progress.set()
            self._notify_progress = trio.Event()

    # ================================================================== the loop
    async def run(self) -> None:
        """Serve requests until the filesystem is unmounted (or the connection aborted).

        Start it in a nursery after mount(). Calls ops.init() after INIT and ops.destroy() at
        the end; handlers still running at the end are cancelled. Closes the /dev/fuse fd.
        """
        if self.fd < 0:
            raise MountError("Session.run() needs a mounted session (call mount() first)")
        self._token = trio.lowlevel.current_trio_token()
        if self.initialized is None or self.initialized.is_set():
            self.initialized = trio.Event()
        self._notify_send, self._notify_recv = trio.open_memory_channel(float("inf"))
        self._notify_progress = trio.Event()
        self._ended = trio.Event()
        self._idle_lot = trio.lowlevel.ParkingLot()
        self._reader = None
        self._idle = 0
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._notify_loop)
                if self._stopping:
                    self._begin_stop(True)
                self._workers = 1
                nursery.start_soon(self._worker)
                try:
                    await self._ended.wait()
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            self._notify_send = None
            try:
                with trio.CancelScope(shield=True):
                    await self.ops.destroy()
            except Exception:
                log.exception("meshfs.fuse: destroy() raised")
            self._close_fd()
            self._mounted = False
            self._token = None

    def _get_buf(self) -> bytearray:
        if self._free_bufs:
            return self._free_bufs.pop()
        return bytearray(self._bufsize)

    def _put_buf(self, buf: bytearray) -> None:
        if len(self._free_bufs) < 8 and len(buf) == self._bufsize:
            self._free_bufs.append(buf)

    # Workers. Exactly one worker at a time is "the reader": it reads a request and runs its
    # handler inline. A handler that completes without blocking (no trio checkpoint) costs no
    # task switch at all. When a handler blocks, _Tracked hands the reader role to an idle
    # worker (or starts a new one, up to max_tasks) before the handler yields, so the mount
    # keeps serving; the cancel scope INTERRUPT needs is only created for handlers that block.
    def _hand_off_reading(self) -> None:
        self._reader = None
        if self._idle:
            self._idle_lot.unpark()
        elif self._workers - self._lock_waiters < self.options.max_tasks and self._nursery is not None:
            # workers waiting in SETLKW do not count: their unlock must still be readable
            self._workers += 1
            self._nursery.start_soon(self._worker)
        # else: at the limit; the next worker whose handler finishes becomes the reader

    async def _worker(self) -> None:
        state = _WorkerState(self._get_buf())
        try:
            while True:
                # One cancel scope per worker (entering one per request would cost more than the
                # rest of a request); INTERRUPT cancels the scope of the worker whose handler is
                # blocked on that request, and the scope is replaced right after.
                scope = trio.CancelScope()
                state.scope = scope
                state.unique = 0
                state.interrupted = False
                with scope:
                    if await self._work(state):
                        return
                if scope.cancelled_caught and state.unique:
                    self._reply_err(state.unique, errno.EINTR)
        finally:
            self._workers -= 1
            self._put_buf(state.buf)
            _close_pipe(state)

    async def _work(self, state: _WorkerState) -> bool:
        """The worker loop; True: the worker is done, False: its cancel scope must be replaced."""
        me = state
        buf = state.buf
        bufsize = len(buf)
        readv = os.readv
        splice = os.splice
        fd = self.fd
        wait_readable = trio.lowlevel.wait_readable
        served = 0
        while True:
            if self._reader is not None:
                if self._idle >= 4:
                    return True
                self._idle += 1
                try:
                    await self._idle_lot.park()
                finally:
                    self._idle -= 1
                continue
            self._reader = me
            spliced = False
            try:
                if self._splice_mode and (state.pipe_w >= 0 or self._open_pipe(state)):
                    spliced = True
                    n = splice(fd, state.pipe_w, bufsize)
                else:
                    n = readv(fd, [buf])
            except BlockingIOError:
                # only the reader waits here, so trio never sees two waiters on the fd
                try:
                    await wait_readable(fd)
                except (trio.ClosedResourceError, OSError):
                    self._end()
                    return True
                finally:
                    self._reader = None
                served = 0
                continue
            except OSError as e:
                self._reader = None
                if e.errno in (errno.EINTR, errno.ENOENT, errno.EAGAIN):
                    continue  # ENOENT: the request was interrupted before we could read it
                if spliced and e.errno == errno.EINVAL:
                    log.warning("meshfs.fuse: splice from /dev/fuse is not supported here (%s); "
                                "reading WRITEs the ordinary way", e.strerror)
                    self._splice_ok = self._splice_mode = False
                    continue
                # ECONNABORTED: a request was taken just as the connection shut down (an unmount
                # racing the read; the kernel answers the request itself)
                if e.errno in (errno.ENODEV, errno.EBADF, errno.ECONNABORTED):
                    log.debug("meshfs.fuse: connection ended (%s)", e.strerror)
                    self._end()
                    return True
                raise
            except BaseException:
                self._reader = None
                raise
            if spliced:
                n = self._from_pipe(state, n)
                if not n:
                    self._reader = None
                    continue
            try:
                await self._process(state, n)
            finally:
                if self._reader is me:
                    self._reader = None
                    served += 1
            if state.interrupted:
                # interrupted, but the handler finished anyway: leave the cancelled scope now,
                # before anything else could see its cancellation
                state.unique = 0
                return False
            if served >= 32:
                # handlers that never block keep this worker reading; stay fair to others
                served = 0
                await trio.lowlevel.checkpoint()

    def _end(self) -> None:
        self._ended.set()

    async def _process(self, state: _WorkerState, n: int) -> None:
        buf = state.buf
        if n < abi.IN_HEADER.size:
            log.error("meshfs.fuse: short read of %d bytes from /dev/fuse", n)
            return
        hdr = abi.IN_HEADER.unpack_from(buf)
        opcode = hdr[1]
        unique = hdr[2]
        mv = memoryview(buf)[abi.IN_HEADER.size : n]
        if self._splice_mode:
            if opcode == abi.WRITE:
                self._plain_streak = 0
            else:
                self._plain_streak += 1
                if self._plain_streak >= SPLICE_LEAVE:
                    self._splice_mode = False
        payload = state.payload
        if payload is not None:  # a WRITE whose data is still in the worker's pipe
            state.payload = None
            try:
                fh, offset, _size, _wf, _lo, _fl, _ = abi.WRITE_IN.unpack_from(mv)
                self.spliced_writes += 1
                await self._run(state, hdr, self._do_write_buf(unique, fh, offset, payload))
            finally:
                try:
                    payload._discard()
                except OSError as e:
                    log.error("meshfs.fuse: cannot empty the pipe after a WRITE: %s", e.strerror)
                    _close_pipe(state)
            return
        parser = self._ops_table.get(opcode)
        if parser is None:
            if opcode == abi.INTERRUPT:
                self._on_interrupt(mv)
            elif opcode == abi.INIT:
                await self._on_init(hdr, mv)
            elif opcode == abi.DESTROY:
                self._reply_empty(unique)
                self._end()
            else:
                log.debug("meshfs.fuse: unsupported opcode %s", abi.OPCODE_NAMES.get(opcode, opcode))
                self._reply_err(unique, errno.ENOSYS)
            return
        try:
            fn, args = parser(hdr, mv)
        except Exception:
            log.exception("meshfs.fuse: cannot parse %s", abi.OPCODE_NAMES.get(opcode, opcode))
            self._reply_err(unique, errno.EIO)
            return
        await self._run(state, hdr, fn(unique, *args))

    async def _run(self, state: _WorkerState, hdr: tuple[int, ...], coro: Any) -> None:
        """Run one request's handler coroutine; answer its errors."""
        opcode = hdr[1]
        unique = hdr[2]
        state.unique = unique
        state.lock_wait = opcode == abi.SETLKW
        err = 0
        try:
            await _Tracked(self, state, coro)
        except FUSEError as e:
            err = e.errno or errno.EIO
        except _ReplyFailed:
            pass
        except Exception:
            log.exception("meshfs.fuse: %s (node %d) raised; answering EIO",
                          abi.OPCODE_NAMES.get(opcode, opcode), hdr[3])
            err = errno.EIO
        if err and opcode != abi.FORGET and opcode != abi.BATCH_FORGET:
            self._reply_err(unique, err)

    def _open_pipe(self, state: _WorkerState) -> bool:
        """Give the worker a pipe big enough for the largest request; False when it cannot have
        one (it then reads requests the ordinary way)."""
        if state.no_pipe:
            return False
        # a slot for the header page and one per data page of a WRITE, plus one: its data may start
        # mid-page (a non-WRITE request fills max_write + 4096 bytes at most: fewer slots)
        want = self.options.max_write + 2 * _PAGE
        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            size = fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, want)
        except OSError as e:
            os.close(r)
            os.close(w)
            state.no_pipe = True
            log.debug("meshfs.fuse: no %d-byte pipe for splicing WRITEs (%s)", want, e.strerror)
            return False
        if size < want:
            os.close(r)
            os.close(w)
            state.no_pipe = True
            return False
        state.pipe_r, state.pipe_w = r, w
        return True

    def _from_pipe(self, state: _WorkerState, n: int) -> int:
        """A request of n bytes was spliced into the worker's pipe: read it into the worker's
        buffer, except the data of a large WRITE, which stays in the pipe (`state.payload`).
        Returns the number of bytes now in the buffer (0: the request was lost, answered EIO)."""
        mv = memoryview(state.buf)
        got = 0
        try:
            if n < _WRITE_HEAD + SPLICE_MIN:
                _read_exactly(state.pipe_r, mv[:n])
                return n
            _read_exactly(state.pipe_r, mv[:_WRITE_HEAD])
            got = _WRITE_HEAD
            if abi.IN_HEADER.unpack_from(mv)[1] == abi.WRITE:
                size = abi.WRITE_IN.unpack_from(mv, abi.IN_HEADER.size)[2]
                if size == n - _WRITE_HEAD:
                    state.payload = WritePayload(mv[_WRITE_HEAD:n], state.pipe_r)
                    return _WRITE_HEAD
            _read_exactly(state.pipe_r, mv[_WRITE_HEAD:n])
            return n
        except OSError as e:
            log.error("meshfs.fuse: reading a request back from the pipe failed: %s", e.strerror)
            _close_pipe(state)
            if got:
                self._reply_err(abi.IN_HEADER.unpack_from(mv)[2], errno.EIO)
            return 0

    def _on_interrupt(self, mv: memoryview) -> None:
        (target,) = abi.INTERRUPT_IN.unpack_from(mv)
        state = self._inflight.get(target)
        if state is not None and state.scope is not None:
            log.debug("meshfs.fuse: interrupt of request %d", target)
            state.interrupted = True
            state.scope.cancel()

    async def _on_init(self, hdr: tuple[int, ...], mv: memoryview) -> None:
        unique = hdr[2]
        major, minor, max_readahead, kflags = abi.INIT_IN.unpack_from(mv)
        kflags2 = 0
        if minor >= 36 and len(mv) >= abi.INIT_IN.size + 4 and kflags & abi.INIT_EXT:
            (kflags2,) = abi.INIT_IN_FLAGS2.unpack_from(mv, abi.INIT_IN.size)
        if major != abi.KERNEL_VERSION or minor < abi.MIN_MINOR:
            log.error("meshfs.fuse: kernel FUSE protocol %d.%d is too old (need 7.%d or newer)",
                      major, minor, abi.MIN_MINOR)
            if major > abi.KERNEL_VERSION:
                # the kernel will retry with our major
                self._write(unique, 0, [abi.INIT_OUT.pack(abi.KERNEL_VERSION, *([0] * 11))])
            else:
                self._reply_err(unique, errno.EPROTO)
            return
        opts = self.options
        locks = opts.locks
        if locks is None:
            locks = type(self.ops).setlk is not Operations.setlk
        flocks = locks if opts.flock_locks is None else opts.flock_locks
        want = (abi.ASYNC_READ | abi.ATOMIC_O_TRUNC | abi.BIG_WRITES | abi.PARALLEL_DIROPS | abi.MAX_PAGES
                | abi.ASYNC_DIO | abi.INIT_EXT)
        if locks:
            want |= abi.POSIX_LOCKS
        if flocks:
            want |= abi.FLOCK_LOCKS
        if opts.readdirplus:
            want |= abi.DO_READDIRPLUS | abi.READDIRPLUS_AUTO
        if opts.writeback_cache:
            want |= abi.WRITEBACK_CACHE
        if opts.export_support:
            want |= abi.EXPORT_SUPPORT
        if opts.auto_inval_data:
            want |= abi.AUTO_INVAL_DATA
        if opts.passthrough and not opts.writeback_cache and minor >= 40:
            want |= abi.PASSTHROUGH
        if opts.handle_killpriv_v2:
            want |= abi.HANDLE_KILLPRIV_V2
        flags = want & (kflags | (kflags2 << 32))
        self.conn = ConnectionInfo(min(minor, abi.SUPPORTED_MINOR), kflags | (kflags2 << 32), flags,
                                   opts.max_write, max_readahead)
        try:
            await self.ops.init()
        except Exception:
            log.exception("meshfs.fuse: init() raised; refusing the mount")
            self._reply_err(unique, errno.EIO)
            return
        congestion = opts.congestion_threshold or max(1, opts.max_background * 3 // 4)
        out = abi.INIT_OUT.pack(
            abi.KERNEL_VERSION, min(minor, abi.SUPPORTED_MINOR), max_readahead, flags & 0xFFFFFFFF,
            opts.max_background, congestion, opts.max_write, 1, opts.max_write // 4096, 0,
            flags >> 32, 1 if flags & abi.PASSTHROUGH else 0,  # flags2, max_stack_depth
        )
        self._write(unique, 0, [out])
        log.debug("meshfs.fuse: INIT 7.%d kernel flags %#x, negotiated %#x", minor, kflags, flags)
        assert self.initialized is not None
        self.initialized.set()

    # ================================================================== replies
    def _write(self, unique: int, error: int, parts: list[Any]) -> None:
        size = abi.OUT_HEADER.size
        for p in parts:
            size += len(p)
        try:
            os.writev(self.fd, [abi.OUT_HEADER.pack(size, error, unique), *parts])
        except OSError as e:
            # ENOENT: the request was aborted/interrupted meanwhile; EBADF/ENODEV: connection gone
            if e.errno not in (errno.ENOENT, errno.EBADF, errno.ENODEV):
                log.error("meshfs.fuse: writing the reply to request %d failed: %s", unique, e.strerror)
            raise _ReplyFailed() from e

    def _reply_err(self, unique: int, err: int) -> None:
        try:
            self._write(unique, -err, [])
        except _ReplyFailed:
            pass

    def _reply_empty(self, unique: int) -> None:
        try:
            self._write(unique, 0, [])
        except _ReplyFailed:
            pass

    def _reply_entry(self, unique: int, attr: EntryAttributes) -> None:
        self._write(unique, 0, [pack_entry_out(attr)])

    def _reply_attr(self, unique: int, attr: EntryAttributes) -> None:
        t = attr.attr_timeout
        sec = int(t) if t > 0 else 0
        nsec = int((t - sec) * 1e9) if t > 0 else 0
        self._write(unique, 0, [abi.ATTR_OUT_HEAD.pack(sec, nsec, 0), pack_attr(attr)])

    def _reply_open(self, unique: int, fi: FileInfo) -> None:
        self._write(unique, 0, [_open_out(fi)])

    def _reply_data(self, unique: int, data: bytes | bytearray | memoryview, limit: int) -> None:
        if len(data) > limit:
            data = memoryview(data)[:limit]
        self._write(unique, 0, [data])

    # ================================================================== per-opcode parse + run
    def _build_table(self) -> dict[int, _Parser]:
        ops = self.ops
        S = self

        def p_lookup(h: tuple[int, ...], mv: memoryview) -> Any:
            name, _ = _cstr(mv, 0)
            return S._do_lookup, (h[3], name, _ctx(h))

        def p_forget(h: tuple[int, ...], mv: memoryview) -> Any:
            (nlookup,) = abi.FORGET_IN.unpack_from(mv)
            return S._do_forget, ([(h[3], nlookup)],)

        def p_batch_forget(h: tuple[int, ...], mv: memoryview) -> Any:
            count, _ = abi.BATCH_FORGET_IN.unpack_from(mv)
            items = [abi.FORGET_ONE.unpack_from(mv, 8 + 16 * i) for i in range(count)]
            return S._do_forget, (items,)

        def p_getattr(h: tuple[int, ...], mv: memoryview) -> Any:
            return S._do_getattr, (h[3], _ctx(h))

        def p_setattr(h: tuple[int, ...], mv: memoryview) -> Any:
            (valid, _pad, fh, size, _lo, atime, mtime, ctime, atimens, mtimens, ctimens, mode, _u4, uid, gid,
             _u5) = abi.SETATTR_IN.unpack_from(mv)
            now = _now_ns()
            attr = EntryAttributes(
                st_ino=h[3], st_mode=mode, st_uid=uid, st_gid=gid, st_size=size,
                st_atime_ns=now if valid & abi.FATTR_ATIME_NOW else atime * 1_000_000_000 + atimens,
                st_mtime_ns=now if valid & abi.FATTR_MTIME_NOW else mtime * 1_000_000_000 + mtimens,
                st_ctime_ns=ctime * 1_000_000_000 + ctimens if valid & abi.FATTR_CTIME else now,
            )
            fields = SetattrFields(
                update_atime=bool(valid & abi.FATTR_ATIME), update_mtime=bool(valid & abi.FATTR_MTIME),
                update_ctime=bool(valid & abi.FATTR_CTIME), update_mode=bool(valid & abi.FATTR_MODE),
                update_uid=bool(valid & abi.FATTR_UID), update_gid=bool(valid & abi.FATTR_GID),
                update_size=bool(valid & abi.FATTR_SIZE), kill_suidgid=bool(valid & abi.FATTR_KILL_SUIDGID),
            )
            return S._do_setattr, (h[3], attr, fields, fh if valid & abi.FATTR_FH else None, _ctx(h))

        def p_readlink(h: tuple[int, ...], mv: memoryview) -> Any:
            return S._do_readlink, (h[3], _ctx(h))

        def p_symlink(h: tuple[int, ...], mv: memoryview) -> Any:
            name, off = _cstr(mv, 0)
            target, _ = _cstr(mv, off)
            return S._do_entry, (ops.symlink, h[3], name, target, _ctx(h))

        def p_mknod(h: tuple[int, ...], mv: memoryview) -> Any:
            mode, rdev, umask, _ = abi.MKNOD_IN.unpack_from(mv)
            name, _ = _cstr(mv, abi.MKNOD_IN.size)
            return S._do_entry, (ops.mknod, h[3], name, mode, rdev, _ctx(h, umask))

        def p_mkdir(h: tuple[int, ...], mv: memoryview) -> Any:
            mode, umask = abi.MKDIR_IN.unpack_from(mv)
            name, _ = _cstr(mv, abi.MKDIR_IN.size)
            return S._do_entry, (ops.mkdir, h[3], name, mode | stat.S_IFDIR, _ctx(h, umask))

        def p_unlink(h: tuple[int, ...], mv: memoryview) -> Any:
            name, _ = _cstr(mv, 0)
            return S._do_none, (ops.unlink, h[3], name, _ctx(h))

        def p_rmdir(h: tuple[int, ...], mv: memoryview) -> Any:
            name, _ = _cstr(mv, 0)
            return S._do_none, (ops.rmdir, h[3], name, _ctx(h))

        def p_rename(h: tuple[int, ...], mv: memoryview) -> Any:
            (newdir,) = abi.RENAME_IN.unpack_from(mv)
            old, off = _cstr(mv, abi.RENAME_IN.size)
            new, _ = _cstr(mv, off)
            return S._do_none, (ops.rename, h[3], old, newdir, new, 0, _ctx(h))

        def p_rename2(h: tuple[int, ...], mv: memoryview) -> Any:
            newdir, flags, _ = abi.RENAME2_IN.unpack_from(mv)
            old, off = _cstr(mv, abi.RENAME2_IN.size)
            new, _ = _cstr(mv, off)
            return S._do_none, (ops.rename, h[3], old, newdir, new, flags, _ctx(h))

        def p_link(h: tuple[int, ...], mv: memoryview) -> Any:
            (oldnode,) = abi.LINK_IN.unpack_from(mv)
            name, _ = _cstr(mv, abi.LINK_IN.size)
            return S._do_entry, (ops.link, oldnode, h[3], name, _ctx(h))

        def p_open(h: tuple[int, ...], mv: memoryview) -> Any:
            flags, _ = abi.OPEN_IN.unpack_from(mv)
            return S._do_open, (h[3], flags, _ctx(h))

        def p_read(h: tuple[int, ...], mv: memoryview) -> Any:
            fh, offset, size, _rf, _lo, _fl, _ = abi.READ_IN.unpack_from(mv)
            return S._do_read, (fh, offset, size)

        def p_write(h: tuple[int, ...], mv: memoryview) -> Any:
            fh, offset, size, _wf, _lo, _fl, _ = abi.WRITE_IN.unpack_from(mv)
            data = mv[abi.WRITE_IN.size : abi.WRITE_IN.size + size]
            if not S._write_buf:
                return S._do_write, (fh, offset, data)
            if size >= SPLICE_ENTER and S._splice_ok and not S._splice_mode:
                S._splice_mode = True
                S._plain_streak = 0
            S.memory_writes += 1
            return S._do_write_buf, (fh, offset, WritePayload(data))

        def p_statfs(h: tuple[int, ...], mv: memoryview) -> Any:
            return S._do_statfs, (_ctx(h),)

        def p_release(h: tuple[int, ...], mv: memoryview) -> Any:
            fh, flags, rflags, owner = abi.RELEASE_IN.unpack_from(mv)
            return S._do_none, (ops.release, fh, flags, owner, bool(rflags & abi.RELEASE_FLOCK_UNLOCK))

        def p_releasedir(h: tuple[int, ...], mv: memoryview) -> Any:
            fh, _flags, _rflags, _owner = abi.RELEASE_IN.unpack_from(mv)
            return S._do_none, (ops.releasedir, fh)

        def p_fsync(h: tuple[int, ...], mv: memoryview) -> Any:
            fh, fflags, _ = abi.FSYNC_IN.unpack_from(mv)
            return S._do_none, (ops.fsync, fh, bool(fflags & abi.FSYNC_FDATASYNC))

        def p_fsyncdir(h: tuple[int, ...], mv: memoryview) -> Any:
            fh, fflags, _ = abi.FSYNC_IN.unpack_from(mv)
            return S._do_none, (ops.fsyncdir, fh, bool(fflags & abi.FSYNC_FDATASYNC))

        def p_flush(h: tuple[int, ...], mv: memoryview) -> Any:
            fh, _u, _p, owner = abi.FLUSH_IN.unpack_from(mv)
            return S._do_none, (ops.flush, fh, owner)

        def p_setxattr(h: tuple[int, ...], mv: memoryview) -> Any:
            size, flags = abi.SETXATTR_IN.unpack_from(mv)
            name, off = _cstr(mv, abi.SETXATTR_IN.size)
            value = bytes(mv[off : off + size])
            return S._do_none, (ops.setxattr, h[3], name, value, flags, _ctx(h))

        def p_getxattr(h: tuple[int, ...], mv: memoryview) -> Any:
            size, _ = abi.GETXATTR_IN.unpack_from(mv)
            name, _ = _cstr(mv, abi.GETXATTR_IN.size)
            return S._do_getxattr, (h[3], name, size, _ctx(h))

        def p_listxattr(h: tuple[int, ...], mv: memoryview) -> Any:
            size, _ = abi.GETXATTR_IN.unpack_from(mv)
            return S._do_listxattr, (h[3], size, _ctx(h))

        def p_removexattr(h: tuple[int, ...], mv: memoryview) -> Any:
            name, _ = _cstr(mv, 0)
            return S._do_none, (ops.removexattr, h[3], name, _ctx(h))

        def p_opendir(h: tuple[int, ...], mv: memoryview) -> Any:
            return S._do_opendir, (h[3], _ctx(h))

        def p_readdir(h: tuple[int, ...], mv: memoryview) -> Any:
            fh, offset, size, _rf, _lo, _fl, _ = abi.READ_IN.unpack_from(mv)
            return S._do_readdir, (fh, offset, size, h[1] == abi.READDIRPLUS)

        def p_lk(h: tuple[int, ...], mv: memoryview) -> Any:
            fh, owner, start, end, typ, pid, lk_flags, _ = abi.LK_IN.unpack_from(mv)
            lock = Lock(start, end, typ, pid, bool(lk_flags & abi.LK_FLOCK))
            if h[1] == abi.GETLK:
                return S._do_getlk, (h[3], fh, owner, lock, _ctx(h))
            return S._do_none, (ops.setlk, h[3], fh, owner, lock, h[1] == abi.SETLKW, _ctx(h))

        def p_access(h: tuple[int, ...], mv: memoryview) -> Any:
            mask, _ = abi.ACCESS_IN.unpack_from(mv)
            return S._do_access, (h[3], mask, _ctx(h))

        def p_create(h: tuple[int, ...], mv: memoryview) -> Any:
            flags, mode, umask, _ = abi.CREATE_IN.unpack_from(mv)
            name, _ = _cstr(mv, abi.CREATE_IN.size)
            return S._do_create, (h[3], name, mode, flags, _ctx(h, umask))

        def p_fallocate(h: tuple[int, ...], mv: memoryview) -> Any:
            fh, offset, length, mode, _ = abi.FALLOCATE_IN.unpack_from(mv)
            return S._do_none, (ops.fallocate, fh, offset, length, mode)

        def p_lseek(h: tuple[int, ...], mv: memoryview) -> Any:
            fh, offset, whence, _ = abi.LSEEK_IN.unpack_from(mv)
            return S._do_lseek, (fh, offset, whence)

        def p_copy_file_range(h: tuple[int, ...], mv: memoryview) -> Any:
            fh_in, off_in, _node_out, fh_out, off_out, length, flags = abi.COPY_FILE_RANGE_IN.unpack_from(mv)
            return S._do_copy_file_range, (fh_in, off_in, fh_out, off_out, length, flags)

        return {
            abi.LOOKUP: p_lookup, abi.FORGET: p_forget, abi.BATCH_FORGET: p_batch_forget,
            abi.GETATTR: p_getattr, abi.SETATTR: p_setattr, abi.READLINK: p_readlink,
            abi.SYMLINK: p_symlink, abi.MKNOD: p_mknod, abi.MKDIR: p_mkdir, abi.UNLINK: p_unlink,
            abi.RMDIR: p_rmdir, abi.RENAME: p_rename, abi.RENAME2: p_rename2, abi.LINK: p_link,
            abi.OPEN: p_open, abi.READ: p_read, abi.WRITE: p_write, abi.STATFS: p_statfs,
            abi.RELEASE: p_release, abi.FSYNC: p_fsync, abi.SETXATTR: p_setxattr,
            abi.GETXATTR: p_getxattr, abi.LISTXATTR: p_listxattr, abi.REMOVEXATTR: p_removexattr,
            abi.FLUSH: p_flush, abi.OPENDIR: p_opendir, abi.READDIR: p_readdir,
            abi.READDIRPLUS: p_readdir, abi.RELEASEDIR: p_releasedir, abi.FSYNCDIR: p_fsyncdir,
            abi.GETLK: p_lk, abi.SETLK: p_lk, abi.SETLKW: p_lk, abi.ACCESS: p_access,
            abi.CREATE: p_create, abi.FALLOCATE: p_fallocate, abi.LSEEK: p_lseek,
            abi.COPY_FILE_RANGE: p_copy_file_range,
        }  # fmt: skip

    # Each _do_* gets the request's unique id first, awaits the filesystem and writes the reply.
    # Errors (FUSEError, other exceptions, cancellation) are answered by _process.
    async def _do_lookup(self, unique: int, parent: int, name: bytes, ctx: RequestContext) -> None:
        attr = await self.ops.lookup(parent, name, ctx)
        try:
            self._reply_entry(unique, attr)
        except _ReplyFailed:
            if attr.st_ino:
                await self.ops.forget([(attr.st_ino, 1)])

    async def _do_entry(self, unique: int, fn: Callable[..., Awaitable[EntryAttributes]], *args: Any) -> None:
        attr = await fn(*args)
        try:
            self._reply_entry(unique, attr)
        except _ReplyFailed:
            await self.ops.forget([(attr.st_ino, 1)])

    async def _do_forget(self, unique: int, items: list[tuple[int, int]]) -> None:
        await self.ops.forget(items)

    async def _do_getattr(self, unique: int, inode: int, ctx: RequestContext) -> None:
        self._reply_attr(unique, await self.ops.getattr(inode, ctx))

    async def _do_setattr(self, unique: int, inode: int, attr: EntryAttributes, fields: SetattrFields,
                          fh: int | None, ctx: RequestContext) -> None:
        self._reply_attr(unique, await self.ops.setattr(inode, attr, fields, fh, ctx))

    async def _do_readlink(self, unique: int, inode: int, ctx: RequestContext) -> None:
        self._write(unique, 0, [await self.ops.readlink(inode, ctx)])

    async def _do_none(self, unique: int, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        await fn(*args)
        self._reply_empty(unique)

    async def _do_open(self, unique: int, inode: int, flags: int, ctx: RequestContext) -> None:
        fi = await self.ops.open(inode, flags, ctx)
        try:
            self._reply_open(unique, fi)
        except _ReplyFailed:
            await self.ops.release(fi.fh, flags, 0, False)

    async def _do_create(self, unique: int, parent: int, name: bytes, mode: int, flags: int,
                         ctx: RequestContext) -> None:
        fi, attr = await self.ops.create(parent, name, mode, flags, ctx)
        try:
            self._write(unique, 0, [pack_entry_out(attr), _open_out(fi)])
        except _ReplyFailed:
            await self.ops.release(fi.fh, flags, 0, False)
            await self.ops.forget([(attr.st_ino, 1)])

    async def _do_read(self, unique: int, fh: int, off: int, size: int) -> None:
        self._reply_data(unique, await self.ops.read(fh, off, size), size)

    async def _do_write(self, unique: int, fh: int, off: int, data: memoryview) -> None:
        n = await self.ops.write(fh, off, data)
        self._write(unique, 0, [abi.WRITE_OUT.pack(n, 0)])

    async def _do_write_buf(self, unique: int, fh: int, off: int, data: WritePayload) -> None:
        n = await self.ops.write_buf(fh, off, data)
        self._write(unique, 0, [abi.WRITE_OUT.pack(n, 0)])

    async def _do_statfs(self, unique: int, ctx: RequestContext) -> None:
        s: StatvfsData = await self.ops.statfs(ctx)
        self._write(unique, 0, [abi.STATFS_OUT.pack(s.f_blocks, s.f_bfree, s.f_bavail, s.f_files, s.f_ffree,
                                                    s.f_bsize, s.f_namemax, s.f_frsize, 0)])

    async def _do_getxattr(
        self, unique: int, inode: int, name: bytes, size: int, ctx: RequestContext
    ) -> None:
        value = await self.ops.getxattr(inode, name, ctx)
        self._sized_reply(unique, bytes(value), size)

    async def _do_listxattr(self, unique: int, inode: int, size: int, ctx: RequestContext) -> None:
        names = await self.ops.listxattr(inode, ctx)
        self._sized_reply(unique, b"".join(bytes(n) + b"\0" for n in names), size)

    def _sized_reply(self, unique: int, data: bytes, size: int) -> None:
        if size == 0:
            self._write(unique, 0, [abi.GETXATTR_OUT.pack(len(data), 0)])
        elif len(data) > size:
            raise FUSEError(errno.ERANGE)
        else:
            self._write(unique, 0, [data])

    async def _do_opendir(self, unique: int, inode: int, ctx: RequestContext) -> None:
        fh = await self.ops.opendir(inode, ctx)
        try:
            self._write(unique, 0, [abi.OPEN_OUT.pack(fh, 0, 0)])
        except _ReplyFailed:
            await self.ops.releasedir(fh)

    async def _do_readdir(self, unique: int, fh: int, offset: int, size: int, plus: bool) -> None:
        token = ReaddirToken(size=size, plus=plus)
        sent = False
        try:
            await self.ops.readdir(fh, offset, token)
            self._write(unique, 0, [b"".join(token.chunks)])  # one iovec: IOV_MAX is 1024
            sent = True
        finally:
            # every added entry counted as a lookup; give back those the kernel did not take
            back = token.added if not (sent and plus) else []
            if back:
                counts: dict[int, int] = {}
                for ino in back:
                    counts[ino] = counts.get(ino, 0) + 1
                with trio.CancelScope(shield=True):
                    await self.ops.forget(list(counts.items()))

    async def _do_getlk(self, unique: int, inode: int, fh: int, owner: int, lock: Lock,
                        ctx: RequestContext) -> None:
        got = await self.ops.getlk(inode, fh, owner, lock, ctx)
        self._write(unique, 0, [abi.LK_OUT.pack(got.start, got.end, got.type, got.pid)])

    async def _do_access(self, unique: int, inode: int, mask: int, ctx: RequestContext) -> None:
        ok = await self.ops.access(inode, mask, ctx)
        if ok is False:
            raise FUSEError(errno.EACCES)
        self._reply_empty(unique)

    async def _do_lseek(self, unique: int, fh: int, off: int, whence: int) -> None:
        self._write(unique, 0, [abi.LSEEK_OUT.pack(await self.ops.lseek(fh, off, whence))])

    async def _do_copy_file_range(self, unique: int, *args: int) -> None:
        n = await self.ops.copy_file_range(*args)
        self._write(unique, 0, [abi.WRITE_OUT.pack(n, 0)])


class _ReplyFailed(Exception):
    """The kernel refused a reply (request gone); already logged when unexpected."""


@dataclass(slots=True)
class _WorkerState:
    buf: bytearray
    scope: trio.CancelScope | None = None
    unique: int = 0
    interrupted: bool = False
    lock_wait: bool = False
    #: the worker's pipe for splicing requests (-1: none yet), and whether it cannot have one
    pipe_r: int = -1
    pipe_w: int = -1
    no_pipe: bool = False
    #: the data of the WRITE just read, still in the pipe
    payload: WritePayload | None = None


def _close_pipe(state: _WorkerState) -> None:
    """Close the worker's pipe (it gets a new one on its next spliced read)."""
    for fd in (state.pipe_r, state.pipe_w):
        if fd >= 0:
            os.close(fd)
    state.pipe_r = state.pipe_w = -1


class _Tracked:
    """Awaitable that drives a handler coroutine and notices when it first blocks.

    A handler that finishes without yielding to trio runs entirely inline in the reading worker.
    At its first yield the reader role is handed to another worker and the request is
    registered for INTERRUPT (mapped to the worker's cancel scope) until the handler ends.
    """

    __slots__ = ("coro", "session", "state")

    def __init__(self, session: Session, state: _WorkerState, coro: Any) -> None:
        self.session = session
        self.state = state
        self.coro = coro

    def __await__(self) -> Any:
        coro = self.coro
        try:
            trap = coro.send(None)
        except StopIteration as e:
            return e.value
        session = self.session
        unique = self.state.unique
        lock_wait = self.state.lock_wait
        if lock_wait:
            session._lock_waiters += 1
        session._hand_off_reading()
        if unique:
            session._inflight[unique] = self.state
        try:
            while True:
                try:
                    value = yield trap
                except BaseException as exc:
                    trap = coro.throw(exc)
                else:
                    trap = coro.send(value)
        except StopIteration as e:
            return e.value
        finally:
            session._inflight.pop(unique, None)
            if lock_wait:
                session._lock_waiters -= 1
