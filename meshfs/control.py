"""The control socket of a running daemon and the registry through which the CLI finds it.

Owns: the runtime directory, the per-mount registry files, the JSON-lines protocol, the trio server
(in the daemon) and the blocking client (in the CLI), and reading/detaching entries of the kernel's
mount table. trio is imported lazily so that `meshfs status/umount/sync` start fast.
Must not import: meshfs.vfs, meshfs.cs3, meshfs.fuse, grpc, cs3apis or urllib3; the daemon passes in a
`Handler` that does the work.

Runtime directory (mode 0700, owned by the user; refused otherwise): $MESHFS_RUNTIME_DIR, else
/run/meshfs for root, else $XDG_RUNTIME_DIR/meshfs, else /run/user/UID/meshfs when that directory is
the user's (a cron job has no XDG_RUNTIME_DIR but the same session dir), else /tmp/meshfs-UID.

Registry: one mount = two files named after KEY = the first 16 hex digits of sha256(the mountpoint's
real path, resolved before mounting):
  KEY.json  {"version": 1, "mountpoint", "socket", "pid", "pid_start", "cache_dir", "source",
             "started"} (mode 0600, written atomically by the daemon once the mount is live)
  KEY.sock  the daemon's control socket (mode 0600; peers with another uid, except root, are refused)
The daemon removes both on exit. An entry whose pid is gone (or was reused: `pid_start` is the
process start time from /proc/PID/stat) is stale; readers ignore it and remove it.

Protocol: one JSON object per line each way; any number of requests per connection, answered in order.
  {"op": "ping"}                                   -> {"ok": true, "result": {"pid": N}}
  {"op": "status"}                                 -> {"ok": true, "result": {...}}
  {"op": "sync", "path": "/home/x" | null}         -> {"ok": true, "result": {"failures": [...]}}
  {"op": "umount", "drain": true}                  -> {"ok": true, "result": {"pid": N}} at once;
                                                      the daemon then drains (unless drain is
                                                      false), unmounts and exits
  {"op": "umount", "wait_drained": true}           -> {"ok": true, "result": {"pid": N, "drained":
                                                      bool}} once the drain is over (the reply the
                                                      daemon owes before it exits; `meshfs umount`)
  {"op": "drained"}                                -> {"ok": true, "result": {"drained": bool}} once
                                                      the stop's drain is over (false: uploads were
                                                      left pending in the cache: timeout, failure
                                                      or skipped)
  {"op": "command", "name": "share", "args": {..}} -> {"ok": true, "result": {...}}
A failure is {"ok": false, "error": "one line"}.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import socket
import stat
import struct
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import trio

PROTOCOL_VERSION: Final = 1
READY_FD_ENV: Final = "MESHFS_READY_FD"
"""The environment variable naming the readiness pipe from `meshfs mount` to its daemon (see daemon.py)."""
MAX_LINE: Final = 1 << 20
OPS: Final = frozenset({"ping", "status", "sync", "umount", "drained", "command"})
_SUN_PATH_MAX: Final = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux


class ControlError(Exception):
    """A one-line failure talking to (or finding) a daemon."""


class DaemonGone(ControlError):
    """The daemon is not there (no socket, refused, or it closed the connection)."""


class ControlTimeout(ControlError):
    """The daemon did not answer within the given time (it may still be working on it)."""


# --------------------------------------------------------------------------------------------- paths


def runtime_dir() -> Path:
    """The directory holding the registry and the sockets (not created here).

    It must be the same for every process of the user (a login shell, a cron job, a systemd
    unit), so it depends on the uid first and on the environment only where that is consistent.
    """
    if env := os.environ.get("MESHFS_RUNTIME_DIR"):
        return Path(env)
    uid = os.getuid()
    if uid == 0:
        return Path("/run/meshfs")
    if xdg := os.environ.get("XDG_RUNTIME_DIR"):
        return Path(xdg) / "meshfs"
    session = Path(f"/run/user/{uid}")  # what XDG_RUNTIME_DIR is in a logind session
    with contextlib.suppress(OSError):
        if session.stat().st_uid == uid:
            return session / "meshfs"
    return Path(f"/tmp/meshfs-{uid}")


def ensure_runtime_dir() -> Path:
    """Create the runtime dir 0700 if needed and refuse one that others could write or own."""
    path = runtime_dir()
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.lstat()
    except OSError as e:
        raise ControlError(f"cannot create the runtime directory {path}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ControlError(f"the runtime directory {path} is not a directory")
    if st.st_uid != os.getuid():
        raise ControlError(f"the runtime directory {path} belongs to uid {st.st_uid}, not to you")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def mount_key(mountpoint: str | os.PathLike[str]) -> str:
    """The registry name of a mountpoint, given as its real path (symlinks already resolved).

    It deliberately does not resolve the path itself: once mounted, a stat of the mountpoint is a
    request to the daemon, and the daemon computing this from its own trio thread would deadlock.
    """
    return hashlib.sha256(os.fspath(mountpoint).encode("utf-8", "surrogateescape")).hexdigest()[:16]


def socket_path_for(mountpoint: str | os.PathLike[str]) -> Path:
    path = runtime_dir() / f"{mount_key(mountpoint)}.sock"
    if len(os.fsencode(path)) > _SUN_PATH_MAX:
        raise ControlError(
            f"the control socket path {path} is longer than {_SUN_PATH_MAX} bytes; "
            "set MESHFS_RUNTIME_DIR to a shorter directory"
        )
    return path


# ------------------------------------------------------------------------------------------ registry


def process_start_time(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot (field 22 of /proc/PID/stat), None if gone
    (or a zombie)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may contain spaces or ')'
    rest = raw[raw.rindex(b")") + 2 :].split()
    if rest and rest[0] in (b"Z", b"X"):
        return None  # exited; a zombie nobody reaped yet (containers without an init) is gone too
    try:
        return int(rest[19])
    except (IndexError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class MountEntry:
    """What the registry knows about one running daemon."""

    mountpoint: str
    socket: str
    pid: int
    pid_start: int
    cache_dir: str
    source: str
    started: float

    def alive(self) -> bool:
        return self.pid_start == process_start_time(self.pid)

    def to_json(self) -> dict[str, Any]:
        return {"version": PROTOCOL_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MountEntry:
        return cls(
            mountpoint=str(data["mountpoint"]),
            socket=str(data["socket"]),
            pid=int(data["pid"]),
            pid_start=int(data["pid_start"]),
            cache_dir=str(data["cache_dir"]),
            source=str(data["source"]),
            started=float(data["started"]),
        )


def entry_path_for(mountpoint: str | os.PathLike[str]) -> Path:
    return runtime_dir() / f"{mount_key(mountpoint)}.json"


def register(entry: MountEntry) -> Path:
    """Write the registry file of `entry` atomically (0600); returns its path."""
    directory = ensure_runtime_dir()
    final = directory / f"{mount_key(entry.mountpoint)}.json"
    tmp = final.with_suffix(f".json.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(entry.to_json(), f)
        f.write("\n")
    os.replace(tmp, final)
    return final


def unregister(entry: MountEntry) -> None:
    """Remove the registry file and socket of `entry` if they are still ours."""
    path = entry_path_for(entry.mountpoint)
    with contextlib.suppress(OSError, ValueError, KeyError):
        current = MountEntry.from_json(json.loads(path.read_text(encoding="utf-8")))
        if current.pid == entry.pid and current.pid_start == entry.pid_start:
            path.unlink()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(entry.socket)


def _read_entry(path: Path) -> MountEntry | None:
    try:
        return MountEntry.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def list_entries(*, clean: bool = True) -> list[MountEntry]:
    """Every live daemon of this user, sorted by mountpoint; stale entries are removed if `clean`."""
    directory = runtime_dir()
    try:
        st = directory.lstat()
        if st.st_uid != os.getuid() or not stat.S_ISDIR(st.st_mode):
            # e.g. /tmp/meshfs-UID made by someone else: its entries could point us anywhere
            raise ControlError(
                f"the runtime directory {directory} is not a directory of yours; not trusting it"
            )
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    except OSError as e:
        raise ControlError(f"cannot read the runtime directory {directory}: {e.strerror}") from None
    found = []
    for name in names:
        if not name.endswith(".json"):
            continue
        path = directory / name
        entry = _read_entry(path)
        if entry is not None and entry.alive():
            found.append(entry)
        elif clean and entry is not None:
            with contextlib.suppress(OSError):
                path.unlink()
            with contextlib.suppress(OSError):
                os.unlink(entry.socket)
    return sorted(found, key=lambda e: e.mountpoint)


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _candidates(path: str | os.PathLike[str]) -> Iterator[str]:
    yield os.path.abspath(path)
    yield os.path.realpath(path)  # only computed when the lexical path did not match


def find_entry(path: str | os.PathLike[str]) -> MountEntry | None:
    """The live daemon whose mountpoint is `path` or contains it (the innermost one).

    The lexical absolute path is tried first so that a hung mount is never stat'ed; the real path
    (symlinks resolved) only when that finds nothing.
    """
    entries = list_entries()
    for candidate in _candidates(path):
        best = [e for e in entries if _within(candidate, e.mountpoint)]
        if best:
            return max(best, key=lambda e: len(e.mountpoint))
    return None


def relative_to_mount(path: str | os.PathLike[str], entry: MountEntry) -> str:
    """`path` as seen from the mount's root ("/" for the mountpoint itself)."""
    for candidate in _candidates(path):
        if _within(candidate, entry.mountpoint):
            rest = candidate[len(entry.mountpoint) :].lstrip("/")
            return "/" + rest
    raise ControlError(f"{path} is not inside the meshfs mount {entry.mountpoint}")


# ------------------------------------------------------------------------------ the kernel's mount table


@dataclass(frozen=True, slots=True)
class MountInfo:
    """One line of /proc/self/mountinfo, the fields meshfs needs."""

    fstype: str
    devno: str
    """major:minor; for FUSE the minor is the connection number in /sys/fs/fuse/connections"""
    super_options: str
    source: str = ""

    @property
    def owner(self) -> int | None:
        """user_id= of a FUSE mount (who mounted it)."""
        for opt in self.super_options.split(","):
            if opt.startswith("user_id="):
                with contextlib.suppress(ValueError):
                    return int(opt[len("user_id=") :])
        return None


def mounted_filesystems() -> dict[str, MountInfo]:
    """mountpoint -> MountInfo of the topmost mount there (octal escapes in paths decoded)."""
    found: dict[str, MountInfo] = {}
    try:
        text = Path("/proc/self/mountinfo").read_text(encoding="utf-8", errors="surrogateescape")
    except OSError:
        return found
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        tail = right.split()
        if len(fields) < 5 or not tail:
            continue
        point = _unescape_mount_path(fields[4])
        found[point] = MountInfo(
            tail[0],
            fields[2],
            tail[2] if len(tail) > 2 else "",
            _unescape_mount_path(tail[1]) if len(tail) > 1 else "",
        )
    return found


def _unescape_mount_path(raw: str) -> str:
    out, i = [], 0
    while i < len(raw):
        if raw[i] == "\\" and i + 3 < len(raw) and raw[i + 1 : i + 4].isdigit():
            out.append(chr(int(raw[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return "".join(out)


def detach_mount(mountpoint: str, *, lazy: bool = True) -> str | None:
    """Unmount `mountpoint` with the system tools (lazy by default); None or the one-line failure."""
    if os.getuid() == 0:
        cmd = ["umount", "-l", mountpoint] if lazy else ["umount", mountpoint]
    else:
        cmd = ["fusermount3", "-u", "-z", mountpoint] if lazy else ["fusermount3", "-u", mountpoint]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except FileNotFoundError:
        return f"{cmd[0]} is not installed"
    except subprocess.TimeoutExpired:
        return f"{' '.join(cmd)} did not finish within 30 s"
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        return lines[-1] if lines else f"{cmd[0]} failed with status {done.returncode}"
    return None


def abort_connection(mountpoint: str) -> str | None:
    """Abort the FUSE connection of `mountpoint` (/sys/fs/fuse/connections/N/abort); None on success."""
    info = mounted_filesystems().get(mountpoint)
    if info is None:
        return f"{mountpoint} is not mounted"
    if not info.fstype.startswith("fuse"):
        return f"{mountpoint} is not a FUSE mount ({info.fstype})"
    minor = info.devno.partition(":")[2]
    conn = Path("/sys/fs/fuse/connections")  # fusectl, mounted at boot by sys-fs-fuse-connections.mount
    try:
        (conn / minor / "abort").write_text("1")
    except OSError as e:
        return f"cannot abort FUSE connection {minor}: {e.strerror} ({conn} not mounted?)"
    return None


# ------------------------------------------------------------------------------------------ protocol


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), default=str).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except (ValueError, UnicodeDecodeError) as e:
        raise ControlError(f"malformed control message: {e}") from None
    if not isinstance(value, dict):
        raise ControlError("malformed control message: not a JSON object")
    return value


Handler = Callable[[dict[str, Any]], Awaitable[Any]]
"""Called by the server for each request; returns the JSON-able `result` or raises (→ error line)."""


def _peer_uid(sock: trio.socket.SocketType) -> int:
    fmt = "3i"
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize(fmt))
    _pid, uid, _gid = struct.unpack(fmt, raw)
    return int(uid)


class ControlServer:
    """The daemon's side: listens on `path` and answers requests with `handler`.

    A handler exception becomes {"ok": false, "error": str(exc)}; only the first line of the
    message is kept. The server never lets a client crash the daemon.
    """

    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self._handler = handler
        self._listener: trio.socket.SocketType | None = None
        self._busy = 0  # requests being answered (handler running or reply being sent)
        self._idle: trio.Event | None = None

    async def wait_idle(self) -> None:
        """Until no request is being answered: the daemon calls it (bounded) before exiting, so
        that the replies it owes (e.g. to "drained") reach their clients."""
        import trio

        while self._busy:
            self._idle = trio.Event()
            await self._idle.wait()

    async def bind(self) -> None:
        """Create and listen on the socket (0600); an existing stale socket file is replaced."""
        import trio  # here, not at module level: the CLI's clients should start fast

        ensure_runtime_dir()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            await sock.bind(os.fspath(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        sock.listen(16)
        self._listener = sock

    async def serve(self, *, task_status: trio.TaskStatus[None] | None = None) -> None:
        import trio

        if self._listener is None:
            await self.bind()
        listener = self._listener
        assert listener is not None
        if task_status is not None:
            task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                while True:
                    conn, _ = await listener.accept()
                    nursery.start_soon(self._serve_conn, conn)
        finally:
            listener.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    async def _serve_conn(self, conn: trio.socket.SocketType) -> None:
        with conn:
            uid = _peer_uid(conn)
            if uid not in (os.getuid(), 0):
                return
            buf = b""
            while True:
                try:
                    chunk = await conn.recv(65536)
                except OSError:
                    return
                if not chunk:
                    return
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    self._busy += 1
                    try:
                        reply = await self._answer(line)
                        await _send_all(conn, encode(reply))
                    except OSError:
                        return
                    finally:
                        self._busy -= 1
                        if not self._busy and self._idle is not None:
                            self._idle.set()
                if len(buf) > MAX_LINE:
                    await _send_all(conn, encode({"ok": False, "error": "request too long"}))
                    return

    async def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = decode(line)
            op = request.get("op")
            if op not in OPS:
                raise ControlError(f"unknown request {op!r}; known: {', '.join(sorted(OPS))}")
            result = await self._handler(request)
        except Exception as e:
            text = str(e).strip().splitlines()
            return {"ok": False, "error": text[0] if text else type(e).__name__}
        return {"ok": True, "result": result}


async def _send_all(conn: trio.socket.SocketType, data: bytes) -> None:
    view = memoryview(data)
    while view:
        sent = await conn.send(view)
        view = view[sent:]


class ControlClient:
    """The CLI's side: blocking, one connection, requests answered in order.

    `timeout` bounds connecting and each reply; None waits as long as the daemon lives (a dying
    daemon closes the socket, which ends the wait with DaemonGone).
    """

    def __init__(self, path: str | os.PathLike[str], timeout: float | None = 10.0) -> None:
        self.path = os.fspath(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self._sock.settimeout(timeout)
        self._buf = b""
        try:
            self._sock.connect(self.path)
        except (FileNotFoundError, ConnectionRefusedError):
            self._sock.close()
            raise DaemonGone(f"no meshfs daemon answers on {self.path}") from None
        except TimeoutError:
            self._sock.close()
            raise ControlError(f"the meshfs daemon on {self.path} does not answer") from None
        except OSError as e:
            self._sock.close()
            raise ControlError(f"cannot connect to {self.path}: {e.strerror}") from None

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def request(self, op: str, *, timeout: float | str | None = "keep", **fields: Any) -> Any:
        """Send one request and return its `result`; a daemon-side failure raises ControlError.

        `timeout` (seconds, None = as long as the daemon lives) replaces the connection's for this
        and later requests; "keep" leaves it as it is. Running out of it raises ControlTimeout.
        """
        self.send(op, **fields)
        return self.receive(op, timeout=timeout)

    def send(self, op: str, **fields: Any) -> None:
        try:
            self._sock.sendall(encode({"op": op, **fields}))
        except TimeoutError:
            raise ControlTimeout(f"the meshfs daemon did not take {op!r} in time") from None
        except (BrokenPipeError, ConnectionResetError):
            raise DaemonGone("the meshfs daemon closed the connection") from None

    def receive(self, op: str, *, timeout: float | str | None = "keep") -> Any:
        """The reply to the oldest request not answered yet; after a ControlTimeout it can be
        called again to keep waiting for the same reply."""
        if not isinstance(timeout, str):
            self._sock.settimeout(timeout)
        try:
            reply = decode(self._readline())
        except TimeoutError:
            raise ControlTimeout(f"the meshfs daemon did not answer {op!r} in time") from None
        except ConnectionResetError:
            raise DaemonGone("the meshfs daemon closed the connection") from None
        if reply.get("ok"):
            return reply.get("result")
        raise ControlError(str(reply.get("error") or "the daemon refused the request"))

    def _readline(self) -> bytes:
        while b"\n" not in self._buf:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise DaemonGone("the meshfs daemon closed the connection before answering")
            self._buf += chunk
            if len(self._buf) > MAX_LINE:
                raise ControlError("the daemon's reply is too long")
        line, self._buf = self._buf.split(b"\n", 1)
        return line


# ------------------------------------------------------------------------------------- process waits


def wait_pid_exit(pid: int, pid_start: int | None, timeout: float | None) -> bool:
    """Wait until process `pid` (any parent) has exited; True if it did within `timeout`.

    Uses a pidfd, so no polling; `pid_start` guards against a reused pid.
    """
    if pid_start is not None and process_start_time(pid) != pid_start:
        return True
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except OSError as e:
        if e.errno != errno.ENOSYS:
            raise
        return _poll_pid_exit(pid, pid_start, timeout)
    try:
        import select

        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(None if timeout is None else max(0, int(timeout * 1000))))
    finally:
        os.close(fd)


def _poll_pid_exit(pid: int, pid_start: int | None, timeout: float | None) -> bool:
    deadline = None if timeout is None else time.monotonic() + timeout
    while process_start_time(pid) is not None and (pid_start is None or process_start_time(pid) == pid_start):
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True
