"""The daemon: one mount's whole lifecycle in one trio loop.

Owns: the startup checks (mountpoint, secret files, the one-daemon-per-cache-dir lock), the order
MeshFilesystem.start -> FUSE mount -> control socket + registry -> readiness (parent pipe and
sd_notify) -> serve -> stop (signal, `meshfs umount`, or an unmount by someone else) -> drain ->
unmount -> exit; sd_notify written by hand over the $NOTIFY_SOCKET datagram socket.
Must not import: grpc, cs3apis, urllib3, meshfs.cs3 (the daemon talks to the filesystem only through
`MeshFilesystem`: start, operations, attach, status, sync, drain, command).

Readiness: when started by `meshfs mount` without `-f`, the environment variable MESHFS_READY_FD
names a pipe; the daemon writes one line to it and closes it: "READY <mountpoint>" once the mount is
live, or "ERROR <one line>" when it gives up. The parent prints the line and exits accordingly.

Test hook: MESHFS_FILESYSTEM="package.module:Factory" replaces MeshFilesystem by any callable taking
the Config and returning an object of the same shape (used by tests/daemon with a fake filesystem).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import importlib
import json
import logging
import math
import os
import resource
import signal
import socket
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import trio

from meshfs import control
from meshfs.config import ConfigError
from meshfs.errors import MeshError, ServerUnavailable

log = logging.getLogger("meshfs.daemon")

LOCK_NAME: Final = "daemon.lock"
READY_FD_ENV: Final = control.READY_FD_ENV
DRAIN_TIMEOUT: Final = 900.0
"""drain_timeout when the Config has none (systemd's TimeoutStopSec is longer). What is not uploaded
by then stays in the cache journal and resumes at the next mount."""
FS_FACTORY_ENV: Final = "MESHFS_FILESYSTEM"


class StartupError(Exception):
    """The mount cannot start; `str()` is the one line shown to the user."""


# ----------------------------------------------------------------------------------------- the plan


@dataclass(frozen=True, slots=True)
class MountPlan:
    """What the daemon needs from the Config, in one place (built by `plan_from_config`)."""

    source: str
    """The source as displayed (cs3://user@host:port); never contains a secret."""
    mountpoint: str
    cache_dir: Path
    read_only: bool = False
    allow_other: bool = False
    default_permissions: bool = False
    nonempty: bool = False
    drain_timeout: float = DRAIN_TIMEOUT
    read_ahead_kb: int = 0
    """The mount's kernel readahead (bdi read_ahead_kb) to set once it is live; 0 = kernel default."""
    max_background: int = 64
    writeback_cache: bool = False
    passthrough: bool = False


def plan_from_config(config: Any) -> MountPlan:
    """What the daemon needs from a validated meshfs.config.Config (source and mountpoint set)."""
    return MountPlan(
        source=str(config.require_server()),
        mountpoint=os.fspath(config.require_mountpoint()),
        cache_dir=config.require_cache_dir(),
        read_only=config.ro,
        allow_other=config.allow_other,
        default_permissions=config.default_permissions,
        drain_timeout=_drain_bound(float(getattr(config, "drain_timeout", DRAIN_TIMEOUT))),
        read_ahead_kb=int(config.read_ahead_kb),
        max_background=int(config.max_background),
        writeback_cache=bool(config.writeback_cache),
        passthrough=bool(getattr(config, "passthrough", False)),
    )


def _drain_bound(configured: float) -> float:
    """The daemon's own bound around MeshFilesystem.drain(): the filesystem applies drain_timeout
    itself (and logs what it leaves), so allow a margin for releasing locks and closing the cache;
    drain_timeout = 0 means no bound."""
    return math.inf if configured <= 0 else configured + 30.0


class FilesystemLike(Protocol):
    """The shape of meshfs.vfs.filesystem.MeshFilesystem the daemon relies on."""

    operations: Any

    async def start(self, nursery: trio.Nursery) -> None: ...
    def attach(self, session: Any) -> None: ...
    async def status(self) -> dict[str, object]: ...
    async def sync(self, path: str | None) -> list[str]: ...
    async def drain(self) -> None: ...
    async def command(self, name: str, args: dict[str, object]) -> dict[str, object]: ...


FilesystemFactory = Callable[[Any], FilesystemLike]


def default_fs_factory() -> FilesystemFactory:
    spec = os.environ.get(FS_FACTORY_ENV)
    if spec:
        module_name, _, attr = spec.partition(":")
        try:
            factory: FilesystemFactory = getattr(
                importlib.import_module(module_name), attr or "MeshFilesystem"
            )
        except (ImportError, AttributeError) as e:
            raise StartupError(f"{FS_FACTORY_ENV}={spec}: {e}") from None
        return factory
    # the real one, imported late (it pulls in grpc)
    real: FilesystemFactory = importlib.import_module("meshfs.vfs.filesystem").MeshFilesystem
    return real


# ------------------------------------------------------------------------------------------ sd_notify


def sd_notify(*states: str) -> bool:
    """Send `states` ("READY=1", "STATUS=...") to systemd; False when not run by systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or address[0] not in "/@":
        return False
    if address[0] == "@":
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(states).encode(), address)
    except OSError as e:
        log.warning("sd_notify to %s failed: %s", os.environ.get("NOTIFY_SOCKET"), e.strerror)
        return False
    return True


# ------------------------------------------------------------------------------------- readiness pipe


class Readiness:
    """The pipe to the `meshfs mount` parent (if any) plus systemd; each side is told once."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd

    @classmethod
    def from_environ(cls) -> Readiness:
        raw = os.environ.pop(READY_FD_ENV, None)
        if raw is None:
            return cls(None)
        try:
            fd = int(raw)
            os.set_inheritable(fd, False)
        except (ValueError, OSError):
            return cls(None)
        return cls(fd)

    def _send(self, line: str) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.write(fd, (line.replace("\n", " ") + "\n").encode())
        with contextlib.suppress(OSError):
            os.close(fd)

    def ready(self, mountpoint: str) -> None:
        self._send(f"READY {mountpoint}")

    def failed(self, message: str) -> None:
        self._send(f"ERROR {message}")

    @property
    def pending(self) -> bool:
        return self._fd is not None


# --------------------------------------------------------------------------------- startup checks


def check_mountpoint(mountpoint: str) -> None:
    """Refuse a mountpoint that is missing, not a directory, or already mounted; detach the mount
    left behind by a killed meshfs daemon of ours. Looks at /proc/self/mountinfo and the registry
    before any stat: a stat of a mount whose daemon hangs would hang too."""
    mounted = control.mounted_filesystems().get(mountpoint)
    if mounted is not None:
        holder = next((e for e in control.list_entries() if e.mountpoint == mountpoint), None)
        if holder is not None:
            raise StartupError(
                f"{mountpoint} is already mounted by meshfs (pid {holder.pid}, {holder.source})"
            )
        if mounted.fstype != "fuse.meshfs" or mounted.owner != os.getuid():
            raise StartupError(f"{mountpoint} is already a mountpoint ({mounted.fstype}); unmount it first")
        # ours, and no live daemon serves it: the leftover of a killed daemon
        log.warning("%s: replacing the mount left behind by a dead meshfs daemon", mountpoint)
        failure = control.detach_mount(mountpoint, lazy=True)
        if failure:
            raise StartupError(f"{mountpoint}: cannot detach the mount of a dead meshfs daemon: {failure}")
    try:
        st = os.stat(mountpoint)
    except FileNotFoundError:
        raise StartupError(f"the mountpoint {mountpoint} does not exist (create it with mkdir)") from None
    except OSError as e:
        if e.errno in (errno.ENOTCONN, errno.ECONNABORTED):
            return  # a dead FUSE mount: meshfs.fuse detaches it before mounting
        raise StartupError(f"the mountpoint {mountpoint}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise StartupError(f"the mountpoint {mountpoint} is not a directory")
    try:
        with os.scandir(mountpoint) as it:
            if any(True for _ in it):
                raise StartupError(f"the mountpoint {mountpoint} is not empty (its files would be hidden)")
    except OSError as e:
        raise StartupError(f"the mountpoint {mountpoint} cannot be listed: {e.strerror}") from None
    if not os.access(mountpoint, os.W_OK | os.X_OK) and os.getuid() != 0:
        raise StartupError(f"the mountpoint {mountpoint} is not writable by you")


def prepare_cache_dir(cache_dir: Path) -> None:
    """Create the cache dir 0700 (parents too); refuse one owned by someone else."""
    try:
        cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = cache_dir.stat()
    except OSError as e:
        raise StartupError(f"cache dir {cache_dir}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise StartupError(f"cache dir {cache_dir} is not a directory")
    if st.st_uid != os.getuid():
        raise StartupError(f"cache dir {cache_dir} belongs to uid {st.st_uid}, not to you")
    if st.st_mode & 0o077:
        os.chmod(cache_dir, 0o700)


class CacheDirLock:
    """One daemon per cache dir: an flock on CACHE_DIR/daemon.lock held for the daemon's life.

    The file holds {"pid", "mountpoint", "source"} of the holder, for the refusal message. It is
    never deleted (deleting a lock file races with the next locker); the kernel drops the lock when
    the process dies, even by SIGKILL.
    """

    def __init__(self, cache_dir: Path) -> None:
        self.path = cache_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self, mountpoint: str, source: str) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder(fd)
            os.close(fd)
            raise StartupError(
                f"the cache dir {self.path.parent} is in use by another meshfs daemon{holder}; "
                "unmount it first or use another --cache-dir"
            ) from None
        except OSError as e:
            os.close(fd)
            raise StartupError(f"cannot lock {self.path}: {e.strerror}") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "mountpoint": mountpoint, "source": source}).encode())
        self._fd = fd

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            info = json.loads(os.pread(fd, 4096, 0) or b"{}")
            return f" (pid {int(info['pid'])}, mounted on {info['mountpoint']})"
        except (ValueError, KeyError, TypeError, OSError):
            return ""

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


# ------------------------------------------------------------------------------- kernel readahead


BDI_ROOT: Final = Path("/sys/class/bdi")


@dataclass(frozen=True, slots=True)
class ReadAheadResult:
    """What `set_read_ahead` did: `applied` is True when the kernel now has the wanted value;
    `message` is the one line for the log."""

    applied: bool
    message: str


def set_read_ahead(mountpoint: str, kb: int, *, bdi_root: Path = BDI_ROOT) -> ReadAheadResult:
    """Set the kernel readahead (KiB) of the FUSE mount at `mountpoint`: the kernel then turns a
    sequential reader's page-cache misses into READ requests of up to `kb` KiB (capped by the
    session's max_pages) instead of its default 128 KiB. The INIT reply can only lower this value,
    hence sysfs: /sys/class/bdi/MAJOR:MINOR/read_ahead_kb, MAJOR:MINOR being the mount's st_dev.

    The device number comes from /proc/self/mountinfo, not from a stat of the mountpoint: that stat
    would be answered by this very daemon. Never raises: a missing bdi, a read-only sysfs or a
    non-root user (the file is root's, mode 0644) give applied=False and a one-line message."""
    mounted = control.mounted_filesystems().get(mountpoint)
    if mounted is None:
        return ReadAheadResult(
            False, f"{mountpoint}: not in /proc/self/mountinfo; kernel readahead left as is"
        )
    path = bdi_root / mounted.devno / "read_ahead_kb"
    try:
        before = int(path.read_text().strip())
        if before != kb:
            path.write_text(f"{kb}\n")
        after = int(path.read_text().strip())
    except (OSError, ValueError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        hint = " (needs root)" if isinstance(e, PermissionError) else ""
        return ReadAheadResult(
            False,
            f"{mountpoint}: kernel readahead not set to {kb} KiB: {path}: {why}{hint}; kept the default",
        )
    if after != kb:
        return ReadAheadResult(
            False, f"{mountpoint}: kernel readahead is {after} KiB after writing {kb} to {path}"
        )
    return ReadAheadResult(True, f"{mountpoint}: kernel readahead {after} KiB (was {before}; {path})")


# ------------------------------------------------------------------------------------ unmount helpers


# -------------------------------------------------------------------------------------- the daemon


@contextlib.contextmanager
def _chdir_root() -> Iterator[None]:
    old = os.getcwd()
    os.chdir("/")
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.chdir(old)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _leaf(exc: BaseException) -> BaseException:
    """The first real exception inside nested exception groups (not a Cancelled)."""
    while isinstance(exc, BaseExceptionGroup):
        inner = [e for e in exc.exceptions if not isinstance(e, trio.Cancelled)] or list(exc.exceptions)
        exc = inner[0]
    return exc


def _first(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    """The first exception of `kinds` inside `exc` (which may be a nested exception group)."""
    if isinstance(exc, kinds):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            found = _first(sub, kinds)
            if found is not None:
                return found
    return None


class Daemon:
    """One mount. `run()` returns the process exit status (0: clean stop, 1: failure)."""

    def __init__(
        self,
        config: Any,
        plan: MountPlan,
        *,
        fs_factory: FilesystemFactory | None = None,
        session_api: SessionApi | None = None,
        readiness: Readiness | None = None,
    ) -> None:
        self.config = config
        self.plan = plan
        self._fs_factory = fs_factory
        self._session_api = session_api or SessionApi()
        self.readiness = readiness or Readiness(None)
        self._stop = trio.Event()
        self._stop_reason = ""
        self._drain = True
        self._drain_scope: trio.CancelScope | None = None
        self._session: Any = None
        self._fs: FilesystemLike | None = None
        self._mounted = False
        self._started = time.time()
        self._state = "starting"
        self._start_scope: trio.CancelScope | None = None
        self._drained = trio.Event()
        self._drain_ok = False
        self._control: control.ControlServer | None = None

    # -------------------------------------------------------------------- public
    def run(self) -> int:
        """Blocking entry point: runs the trio loop until the mount has ended."""
        # resolve symlinks now: after the mount a stat of the mountpoint is served by this very
        # process, so the trio thread must never touch it again
        self.plan = dataclasses.replace(self.plan, mountpoint=os.path.realpath(self.plan.mountpoint))
        # no core dumps: the process holds the password/token in memory
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        lock = CacheDirLock(self.plan.cache_dir)
        try:
            check_mountpoint(self.plan.mountpoint)
            prepare_cache_dir(self.plan.cache_dir)
            lock.acquire(self.plan.mountpoint, self.plan.source)
            with _chdir_root():
                return trio.run(self._main)
        except (StartupError, control.ControlError) as e:
            return self._fail(str(e))
        except KeyboardInterrupt:
            return self._fail("interrupted")
        finally:
            lock.release()

    def request_stop(self, reason: str, *, drain: bool = True) -> None:
        if not self._stop.is_set():
            self._stop_reason = reason
            self._drain = drain
            self._stop.set()
        elif not drain and self._drain_scope is not None:
            log.warning(
                "%s: giving up draining; pending uploads stay in the cache and resume next mount", reason
            )
            self._drain_scope.cancel()

    # -------------------------------------------------------------------- internals
    def _fail(self, message: str) -> int:
        log.error("%s", message)
        self.readiness.failed(message)
        return 1

    async def _main(self) -> int:
        entry: control.MountEntry | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_signals)
                entry = await self._start(nursery)
                if entry is None:  # stopped by a signal while starting
                    nursery.cancel_scope.cancel()
                    return self._fail(f"stopped by {self._stop_reason} before the mount was live")
                await self._stop.wait()
                await self._shutdown()
                if self._control is not None:
                    with trio.move_on_after(2):
                        await self._control.wait_idle()  # e.g. the reply to "drained"
                nursery.cancel_scope.cancel()
        except BaseException as exc:
            if entry is not None:
                control.unregister(entry)
                entry = None
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            await self._emergency_unmount()
            failure = _first(
                exc, (StartupError, MeshError, ConfigError, control.ControlError, OSError, trio.TooSlowError)
            )
            if failure is None:
                log.error("internal error", exc_info=exc)
                leaf = _leaf(exc)
                return self._fail(
                    f"internal error: {type(leaf).__name__}: {_one_line(leaf)} (traceback in the log)"
                )
            message = _one_line(failure)
            if isinstance(failure, trio.TooSlowError):
                message = "the kernel did not start the FUSE session within 30 s"
            elif isinstance(failure, OSError) and not isinstance(failure, MeshError) and failure.filename:
                message = f"{failure.filename}: {failure.strerror}"
            elif isinstance(failure, ServerUnavailable) and getattr(self.config, "tls", False):
                message += " (tls is on: if the gateway speaks plain gRPC, use -o tls=false)"
            return self._fail(message)
        finally:
            if entry is not None:
                control.unregister(entry)
        log.info("%s: unmounted (%s)", self.plan.mountpoint, self._stop_reason)
        return 0

    async def _start(self, nursery: trio.Nursery) -> control.MountEntry | None:
        plan = self.plan
        factory = self._fs_factory or default_fs_factory()
        fs = factory(self.config)
        self._fs = fs
        log.info("%s: connecting to %s", plan.mountpoint, plan.source)
        with trio.CancelScope() as scope:
            self._start_scope = scope
            await fs.start(nursery)
        if self._stop.is_set():
            return None
        socket_path = control.socket_path_for(plan.mountpoint)
        session = await self._session_api.mount(fs.operations, plan)
        self._session = session
        self._mounted = True
        fs.attach(session)
        nursery.start_soon(self._serve_fuse, session)
        with trio.fail_after(30):
            await self._session_api.wait_initialized(session)
        if plan.read_ahead_kb > 0:
            # after INIT (whose reply could only lower it) and before anyone opens a file (an open
            # file keeps the readahead it was opened with); never fails the mount
            result = await trio.to_thread.run_sync(set_read_ahead, plan.mountpoint, plan.read_ahead_kb)
            (log.debug if result.applied else log.info)("%s", result.message)
        server = control.ControlServer(socket_path, self._handle)
        self._control = server
        await server.bind()
        nursery.start_soon(server.serve)
        entry = control.MountEntry(
            mountpoint=plan.mountpoint,
            socket=os.fspath(socket_path),
            pid=os.getpid(),
            pid_start=control.process_start_time(os.getpid()) or 0,
            cache_dir=os.fspath(plan.cache_dir),
            source=plan.source,
            started=self._started,
        )
        control.register(entry)
        self._state = "running"
        self.readiness.ready(plan.mountpoint)
        sd_notify("READY=1", f"STATUS=Mounted {plan.source} on {plan.mountpoint}", f"MAINPID={os.getpid()}")
        log.info("%s: mounted %s (pid %d)", plan.mountpoint, plan.source, os.getpid())
        return entry

    async def _shutdown(self) -> None:
        plan = self.plan
        self._state = "stopping"
        sd_notify("STOPPING=1", f"STATUS=Stopping: {self._stop_reason}")
        log.info("%s: stopping (%s)", plan.mountpoint, self._stop_reason)
        self._drain_ok = False
        if self._drain and self._fs is not None:
            sd_notify("STATUS=Draining pending uploads")
            with trio.move_on_after(plan.drain_timeout) as scope:
                self._drain_scope = scope
                try:
                    await self._fs.drain()
                    self._drain_ok = True
                except MeshError as e:
                    log.error(
                        "%s: draining failed: %s; pending uploads stay in the cache", plan.mountpoint, e
                    )
            self._drain_scope = None
            self._drain_ok = self._drain_ok and not scope.cancelled_caught
            if scope.cancelled_caught and scope.deadline <= trio.current_time():
                log.warning(
                    "%s: pending uploads not finished within %g s; they stay in the cache and "
                    "resume at the next mount",
                    plan.mountpoint,
                    plan.drain_timeout,
                )
        self._drained.set()
        await self._unmount()

    async def _unmount(self) -> None:
        """Unmount through the session; whatever is still mounted afterwards (the session lost its
        connection, unmount failed or hung) is detached lazily, so the daemon never leaves a dead
        mount behind."""
        if not self._mounted or self._session is None:
            return
        self._mounted = False
        with trio.move_on_after(30):
            try:
                await self._session_api.unmount(self._session)
            except OSError as e:
                log.warning("%s: unmount failed (%s); detaching lazily", self.plan.mountpoint, e.strerror)
        left = control.mounted_filesystems().get(self.plan.mountpoint)
        if left is not None and left.fstype == "fuse.meshfs":
            failure = await trio.to_thread.run_sync(control.detach_mount, self.plan.mountpoint)
            if failure:
                log.error("%s: lazy unmount failed: %s", self.plan.mountpoint, failure)

    async def _emergency_unmount(self) -> None:
        with trio.CancelScope(shield=True):
            await self._unmount()

    async def _serve_fuse(self, session: Any) -> None:
        await self._session_api.serve(session)
        # the session ends when the kernel connection goes away: unmounted by someone else
        if self._mounted:
            self._mounted = False
            self.request_stop("unmounted from outside (fusermount3 -u / umount)")

    async def _watch_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if signum == signal.SIGHUP:
                    log.info("SIGHUP ignored (nothing to reload yet)")
                    continue
                if self._state == "starting":
                    log.info("%s while starting: giving up", name)
                    self._stop_reason = name
                    self._stop.set()
                    if self._start_scope is not None:
                        self._start_scope.cancel()
                    continue
                self.request_stop(f"{name} received", drain=not self._stop.is_set())

    async def _handle(self, request: dict[str, Any]) -> Any:
        op = request["op"]
        fs = self._fs
        assert fs is not None
        if op == "ping":
            return {"pid": os.getpid()}
        if op == "status":
            return {
                "mountpoint": self.plan.mountpoint,
                "source": self.plan.source,
                "pid": os.getpid(),
                "cache_dir": os.fspath(self.plan.cache_dir),
                "started": self._started,
                "state": self._state,
                "fs": await fs.status(),
            }
        if op == "sync":
            path = request.get("path")
            if path is not None and not isinstance(path, str):
                raise ValueError("sync: path must be a string")
            return {"failures": [str(f) for f in await fs.sync(path)]}
        if op == "umount":
            self.request_stop("meshfs umount", drain=bool(request.get("drain", True)))
            if request.get("wait_drained"):
                # answered once draining is over: this request is being answered from before the
                # stop began, so the daemon waits for this reply before it exits (wait_idle)
                await self._drained.wait()
                return {"pid": os.getpid(), "drained": self._drain_ok}
            return {"pid": os.getpid()}
        if op == "drained":
            await self._drained.wait()
            return {"drained": self._drain_ok}
        if op == "command":
            name, args = request.get("name"), request.get("args") or {}
            if not isinstance(name, str) or not isinstance(args, dict):
                raise ValueError("command: needs a name and an args object")
            return await fs.command(name, args)
        raise ValueError(f"unknown request {op!r}")


# ------------------------------------------------------------------------------- the FUSE adapter


class SessionApi:
    """The things the daemon does with meshfs.fuse: mount, serve, wait for INIT, unmount.

    Kept in one small class so that the daemon depends on the FUSE library's API in one place.
    """

    async def mount(self, operations: Any, plan: MountPlan) -> Any:
        from meshfs import fuse

        session = fuse.Session(operations)
        options = fuse.MountOptions(
            fsname=plan.source,
            subtype="meshfs",
            allow_other=plan.allow_other,
            default_permissions=plan.default_permissions or plan.allow_other,
            ro=plan.read_only,
            nonempty=plan.nonempty,
            max_background=plan.max_background,
            writeback_cache=plan.writeback_cache,
            passthrough=plan.passthrough,
            # meshfs keeps no setuid/setgid bits and no security.* xattrs: nothing to clear on write
            handle_killpriv_v2=True,
        )
        try:
            # blocking (mount(2) or fusermount3), bounded inside by 30 s timeouts
            await trio.to_thread.run_sync(session.mount, plan.mountpoint, options)
        except fuse.MountError as e:
            raise StartupError(str(e)) from None
        return session

    async def serve(self, session: Any) -> None:
        await session.run()

    async def wait_initialized(self, session: Any) -> None:
        """Until the kernel's INIT was answered (the mount then answers stat at once)."""
        while session.initialized is None:
            await trio.sleep(0.005)
        await session.initialized.wait()

    async def unmount(self, session: Any) -> None:
        from meshfs import fuse

        try:
            await trio.to_thread.run_sync(session.unmount)
        except fuse.MountError as e:
            raise OSError(errno.EBUSY, str(e)) from None
