"""Plumbing for the lock integration tests: mounts through the real CLI, lock-holding child processes,
a synchronous CS3 client (einstein, marie) on a background trio loop, and a TCP proxy that can be paused.

Owns only test plumbing for tests/locks/. The product is driven through its CLI and the kernel; the
CS3 client (meshfs.cs3) is used only to look at and poke the server the way another application would.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import trio
from rig import REPO, Mount, run_meshfs, wait_for
from rig import Mounter as _Mounter

from meshfs.cs3 import BasicCredentials, Gateway, Lock, Ref, Resource, Secret, Shares, Storage

__all__ = [
    "REPO",
    "Cs3",
    "LockProc",
    "LoopThread",
    "Mounter",
    "Node",
    "PausableProxy",
    "errno_of",
    "run_meshfs",
    "wait_for",
]

HERE = Path(__file__).resolve().parent
T = TypeVar("T")


def errno_of(fn: Callable[[], object]) -> str | None:
    """Run fn; the errno name of the OSError it raised, or None when it succeeded."""
    try:
        fn()
    except OSError as e:
        return errno.errorcode.get(e.errno or 0, str(e.errno))
    return None


# ---- the mounts ----------------------------------------------------------------------------------


class Node(Mount):
    """One mount (= one node): its mountpoint, cache dir and daemon pid."""

    def locks(self) -> list[dict[str, Any]]:
        """The CS3 leases this mount holds (`meshfs status --json`)."""
        fs = self.status().get("fs") or {}
        return list(fs.get("locks", []))

    def sync(self, path: Path | None = None, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """`meshfs sync` of the whole mount; fails the test unless it succeeded."""
        proc = super().sync(path, timeout)
        assert proc.returncode == 0, f"meshfs sync failed: {proc.stdout}{proc.stderr}"
        return proc


def _debug_options() -> tuple[str, ...]:
    extra = os.environ.get("MESHFS_LOCKTEST_OPTS", "")  # e.g. log_level=debug while debugging
    return (extra,) if extra else ()


@dataclass
class Mounter(_Mounter):
    """The lock tests' mounts (rig.Mounter): `Node`s, a 30 s bound on each umount."""

    options: tuple[str, ...] = field(default_factory=_debug_options)
    umount_timeout: float = 30.0
    mount_class: type[Mount] = Node


# ---- lock-holding child processes ------------------------------------------------------------------


class LockProc:
    """A child process running lockproc.py: a separate lock owner the test scripts line by line."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-u", os.fspath(HERE / "lockproc.py")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )  # fmt: skip
        self.answers: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._reader, daemon=True).start()
        hello = self.answer(30)
        self.pid = int(hello["pid"])

    def _reader(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.answers.put(json.loads(line))
        self.answers.put({"ok": False, "errno": "EOF", "msg": "lockproc exited"})

    def send(self, *cmd: object) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(" ".join(str(c) for c in cmd) + "\n")
        self.proc.stdin.flush()

    def answer(self, timeout: float = 30.0) -> dict[str, Any]:
        try:
            return self.answers.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"lockproc {self.proc.pid}: no answer within {timeout:g} s") from None

    def has_answer(self) -> bool:
        return not self.answers.empty()

    def call(self, *cmd: object, timeout: float = 30.0) -> dict[str, Any]:
        self.send(*cmd)
        return self.answer(timeout)

    def ok(self, *cmd: object, timeout: float = 30.0) -> dict[str, Any]:
        a = self.call(*cmd, timeout=timeout)
        assert a["ok"], f"`{' '.join(map(str, cmd))}` failed: {a}"
        return a

    def err(self, *cmd: object, timeout: float = 30.0) -> str:
        """The errno name of a command that must fail."""
        a = self.call(*cmd, timeout=timeout)
        assert not a["ok"], f"`{' '.join(map(str, cmd))}` succeeded, expected a failure"
        return str(a["errno"])

    def wchan(self) -> str:
        try:
            return Path(f"/proc/{self.pid}/wchan").read_text()
        except OSError:
            return ""

    def wait_blocked_in_fuse(self, timeout: float = 10.0) -> None:
        """Until the process sleeps waiting for the FUSE daemon's answer (a blocking lock request)."""
        wait_for(
            lambda: self.has_answer() or "fuse" in self.wchan() or "request_wait" in self.wchan(),
            timeout, f"lockproc {self.pid} to block in a FUSE request",
        )  # fmt: skip
        assert not self.has_answer(), f"expected a blocked request, got an answer: {self.answer(1)}"

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.send("quit")
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for f in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                if f is not None:
                    f.close()


# ---- a background trio loop for CS3 clients and the proxy -------------------------------------------


class LoopThread:
    """A trio event loop in a daemon thread; `run(afn, *args)` runs a coroutine function there."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._thread = threading.Thread(target=lambda: trio.run(self._main), daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise AssertionError("background trio loop did not start")

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as n:
            self._nursery = n
            self._ready.set()
            await trio.sleep_forever()

    def run(self, afn: Callable[..., Awaitable[T]], *args: Any, timeout: float = 60.0) -> T:
        async def bounded() -> T:
            with trio.fail_after(timeout):
                return await afn(*args)

        return trio.from_thread.run(bounded, trio_token=self._token)

    def start(self, afn: Callable[..., Awaitable[Any]]) -> None:
        """Start a background task with nursery.start (returns once it called task_status.started)."""

        async def go() -> None:
            assert self._nursery is not None
            await self._nursery.start(afn)

        trio.from_thread.run(go, trio_token=self._token)

    def close(self) -> None:
        if self._nursery is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._nursery.cancel_scope.cancel, trio_token=self._token)
        self._thread.join(10)


class Cs3:
    """A synchronous CS3 client of one demo user (another application looking at the server)."""

    def __init__(self, loop: LoopThread, gateway: str, username: str, password: str) -> None:
        self.loop = loop
        self.gw = Gateway(gateway, BasicCredentials(username, Secret(password)))
        loop.run(self.gw.open)
        self.storage = Storage(self.gw)
        self.shares = Shares(self.gw)
        self.home: Ref = loop.run(self.storage.get_home)
        self.user = self.gw.user

    def ref(self, rel: str) -> Ref:
        """The absolute-path reference of `rel` below this user's home."""
        ref = self.home
        for part in rel.strip("/").split("/"):
            ref = ref.child(part)
        return ref

    def stat(self, ref: Ref) -> Resource:
        return self.loop.run(self.storage.stat, ref)

    def by_id(self, ref: Ref) -> Ref:
        return Ref.to(self.stat(ref).id)

    def get_lock(self, ref: Ref) -> Lock | None:
        return self.loop.run(self.storage.get_lock, ref)

    def call(self, afn: Callable[..., Awaitable[T]], *args: Any, **kw: Any) -> T:
        async def go() -> T:
            return await afn(*args, **kw)

        return self.loop.run(go)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.run(self.gw.aclose, timeout=10)


class PausableProxy:
    """A TCP proxy 127.0.0.1:port -> target, on a LoopThread. `pause()` drops the listener and every
    connection (the server is down: connections are refused); `resume()` listens on the same port again."""

    def __init__(self, loop: LoopThread, target_host: str, target_port: int) -> None:
        self.loop = loop
        self.target = (target_host, target_port)
        self.port = 0
        self.connections = 0  # accepted so far (a client that reconnects after a pause shows up here)
        self._scope: trio.CancelScope | None = None
        self.resume()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            self._scope = scope
            listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
            self.port = listeners[0].socket.getsockname()[1]
            task_status.started()
            await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        self.connections += 1
        try:
            server = await trio.open_tcp_stream(*self.target)
        except OSError:
            await client.aclose()
            return
        async with client, server, trio.open_nursery() as n:

            async def pipe(src: trio.SocketStream, dst: trio.SocketStream) -> None:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    while data := await src.receive_some(1 << 16):
                        await dst.send_all(data)
                n.cancel_scope.cancel()

            n.start_soon(pipe, client, server)
            n.start_soon(pipe, server, client)

    def pause(self) -> None:
        scope = self._scope
        if scope is not None:
            trio.from_thread.run_sync(scope.cancel, trio_token=self.loop._token)
            self._scope = None

    def resume(self) -> None:
        self.loop.start(self._serve)
