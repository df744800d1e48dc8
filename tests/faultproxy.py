"""A fault-injecting TCP proxy for the tests (issue 9), in front of the gateway (gRPC) or the data gateway
(HTTP): added latency, bandwidth caps per direction, dropped connections (FIN), reset connections (RST,
SO_LINGER 0), a server that stops answering (black hole), and a cut armed to hit mid-transfer. Every knob
can be changed at runtime, from the proxy's own trio loop or from any other thread.

Test plumbing only: imports trio and the standard library, nothing from meshfs. Suites import it by plain
name (`from faultproxy import FaultProxy`): tests/ is on sys.path because of the root tests/conftest.py.

Semantics (what a client sees):
- "forward": bytes pass, each piece delayed by `latency` seconds (per direction, pipelined: latency does
  not cap throughput) and paced to `rate_up` / `rate_down` bytes/s (shared by all connections of the
  proxy, like one link). "up" = client -> server, "down" = server -> client.
- "blackhole": nothing passes any more in either direction on live connections (they stay open, the
  kernel buffers fill), new connections are accepted and never answered. Back to "forward": held bytes
  are delivered (a network partition that heals), held new connections are connected to the target.
- "close" / "reset": every live connection is closed (FIN) / reset (RST) now, and so is every new one
  right after accept, until the mode changes.
- `cut(how)`: close or reset the live connections once, the mode stays.
- `arm_cut(after, direction, how)`: one shot; once `after` more bytes went in `direction`, the connection
  carrying the next byte is cut (the bytes up to the limit are delivered first): a fault mid-transfer
  that clears by itself.
- `cut_each_after(after, direction, how)`: every connection is cut once it carried `after` bytes in
  `direction` (None = off); with `stop_on_cut` the first such cut also stops the proxy (a server that
  was killed: later connections are refused).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import trio

Mode = Literal["forward", "blackhole", "close", "reset"]
How = Literal["close", "reset"]
Direction = Literal["up", "down"]
MODES: tuple[str, ...] = ("forward", "blackhole", "close", "reset")
CHUNK = 64 * 1024
QUEUE_PIECES = 32  # pieces in flight per direction and connection (latency buffer)


def _raw_socket(stream: Any) -> socket.socket | None:
    """The OS socket under a trio stream (SocketStream, or SSLStream over one)."""
    while stream is not None:
        sock = getattr(stream, "socket", None)
        if sock is not None:
            return sock  # type: ignore[no-any-return]
        stream = getattr(stream, "transport_stream", None)
    return None


def _abort(stream: Any, how: How) -> None:
    """Close now; with how="reset" the kernel sends RST instead of FIN (SO_LINGER on, timeout 0)."""
    sock = _raw_socket(stream)
    if sock is None:
        return
    with contextlib.suppress(OSError):
        if how == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


@dataclass(slots=True)
class _Pacer:
    """One direction's bandwidth budget, shared by all connections (a token bucket without burst)."""

    next_free: float = 0.0

    async def take(self, nbytes: int, rate: float | None) -> None:
        if not rate:
            return
        start = max(trio.current_time(), self.next_free)
        self.next_free = start + nbytes / rate
        await trio.sleep_until(start)


@dataclass(slots=True)
class _Arm:
    direction: Direction
    remaining: int
    how: How


@dataclass(eq=False, slots=True)
class _Conn:
    client: Any
    server: Any = None
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    how: How | None = None
    sent: dict[str, int] = field(default_factory=lambda: {"up": 0, "down": 0})

    def cut(self, how: How) -> None:
        if self.how is None:
            self.how = how
        self.scope.cancel()

    def close(self) -> None:
        how: How = self.how or "close"
        for s in (self.client, self.server):
            if s is not None:
                _abort(s, how)


class FaultProxy:
    """TCP proxy 127.0.0.1:`port` -> target_host:target_port with switchable faults (see the module doc).

    In trio: `port = await nursery.start(proxy.serve)`; from sync code: `with serve_in_thread(proxy): ...`.
    The knobs (`set`, `cut`, `arm_cut`, `clear`) may be called from any thread once serving.
    """

    def __init__(
        self,
        target_port: int,
        target_host: str = "127.0.0.1",
        *,
        port: int = 0,
        tls: ssl.SSLContext | None = None,
        name: str = "proxy",
    ) -> None:
        self.target = (target_host, target_port)
        self.port = port
        self.tls = tls
        self.name = name
        self.mode: Mode = "forward"
        self.latency = 0.0
        self.rate_up: float | None = None
        self.rate_down: float | None = None
        self.bytes_up = 0
        self.bytes_down = 0
        self.connections = 0  # accepted so far
        self.cuts = 0  # connections closed or reset by a fault
        self._arm: _Arm | None = None
        self._each: _Arm | None = None  # cut_each_after (remaining = the per-connection limit)
        self.stop_on_cut = False
        self._live: set[_Conn] = set()
        self._pacers = {"up": _Pacer(), "down": _Pacer()}
        self._changed = trio.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._loop_thread: int | None = None
        self._cancel = trio.CancelScope()

    def __repr__(self) -> str:
        return (
            f"FaultProxy({self.name} :{self.port} -> {self.target[0]}:{self.target[1]}, {self.mode}, "
            f"latency {self.latency:g} s, up {self.rate_up} B/s, down {self.rate_down} B/s, "
            f"{len(self._live)} live, {self.connections} accepted, {self.cuts} cut)"
        )

    # ---- knobs (any thread) -----------------------------------------------------------------

    def set(
        self,
        mode: Mode | None = None,
        *,
        latency: float | None = None,
        rate: float | Literal[False] | None = False,
        rate_up: float | Literal[False] | None = False,
        rate_down: float | Literal[False] | None = False,
    ) -> None:
        """Change the mode and/or shaping; `rate` sets both directions (None = unlimited)."""
        if mode is not None and mode not in MODES:
            raise ValueError(f"mode {mode!r}: expected one of {', '.join(MODES)}")

        def apply() -> None:
            if rate is not False:
                self.rate_up = self.rate_down = rate
            if rate_up is not False:
                self.rate_up = rate_up
            if rate_down is not False:
                self.rate_down = rate_down
            if latency is not None:
                self.latency = max(0.0, latency)
            if mode is not None:
                self.mode = mode
                if mode in ("close", "reset"):
                    self._cut_live(mode)
            self._wake()

        self._call(apply)

    def clear(self) -> None:
        """Back to plain forwarding: mode forward, no latency, no caps, no armed or per-connection cut."""

        def apply() -> None:
            self._arm = self._each = None

        self._call(apply)
        self.set("forward", latency=0.0, rate=None)

    def cut(self, how: How = "reset") -> None:
        """Close or reset every live connection once (new ones are served as the mode says)."""
        self._call(lambda: self._cut_live(how))

    def arm_cut(self, after: int, direction: Direction = "down", how: How = "reset") -> None:
        """One shot: cut the connection that carries byte `after`+1 (counted from now) in `direction`."""

        def apply() -> None:
            self._arm = _Arm(direction, max(0, after), how)

        self._call(apply)

    def cut_each_after(self, after: int | None, direction: Direction = "down", how: How = "close") -> None:
        """Cut every connection once it carried `after` bytes in `direction` (None: no more such cuts)."""

        def apply() -> None:
            self._each = None if after is None else _Arm(direction, max(0, after), how)

        self._call(apply)

    @property
    def armed(self) -> bool:
        return self._arm is not None

    @property
    def live(self) -> int:
        return len(self._live)

    def wait_for(self, what: Callable[[], bool], timeout: float, message: str = "") -> None:
        """Block (not on the proxy's loop) until what() holds, at most `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not what():
            if time.monotonic() > deadline:
                raise AssertionError(f"{message or 'condition'} not reached within {timeout:g} s: {self!r}")
            time.sleep(0.01)

    # ---- serving ---------------------------------------------------------------------------

    async def serve(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and relay until stop() or cancellation; task_status gets the listening port."""
        self._token = trio.lowlevel.current_trio_token()
        self._loop_thread = threading.get_ident()
        self._changed = trio.Event()  # bound to this loop
        with self._cancel:
            listeners: list[Any] = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
            self.port = listeners[0].socket.getsockname()[1]
            if self.tls is not None:
                listeners = [trio.SSLListener(lst, self.tls, https_compatible=True) for lst in listeners]
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(trio.serve_listeners, self._handle, listeners)
                    task_status.started(self.port)
            finally:
                for conn in list(self._live):
                    conn.cut("close")
                    conn.close()

    def stop(self) -> None:
        """Close the listener (later connections are refused) and every connection."""
        self._call(self._cancel.cancel)

    # ---- internals -------------------------------------------------------------------------

    def _call(self, fn: Callable[[], None]) -> None:
        if self._token is None or threading.get_ident() == self._loop_thread:
            fn()
        else:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(fn, trio_token=self._token)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _cut_live(self, how: How) -> None:
        for conn in list(self._live):
            self.cuts += 1
            conn.cut(how)

    async def _gate(self) -> None:
        """Wait while the proxy is a black hole."""
        while self.mode == "blackhole":
            await self._changed.wait()

    async def _handle(self, client: Any) -> None:
        self.connections += 1
        conn = _Conn(client)
        self._live.add(conn)
        try:
            with conn.scope:
                await self._gate()
                if self.mode in ("close", "reset"):
                    self.cuts += 1
                    conn.how = self.mode
                    return
                try:
                    conn.server = await trio.open_tcp_stream(*self.target)
                except OSError:
                    conn.how = "reset"  # the target refused: the client sees its connection reset
                    return
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._direction, conn, client, conn.server, "up")
                    nursery.start_soon(self._direction, conn, conn.server, client, "down")
        finally:
            self._live.discard(conn)
            conn.close()

    async def _direction(self, conn: _Conn, src: Any, dst: Any, direction: Direction) -> None:
        send, receive = trio.open_memory_channel[tuple[float, bytes] | None](QUEUE_PIECES)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._reader, conn, src, send)
            nursery.start_soon(self._writer, conn, dst, receive, direction)

    async def _reader(
        self, conn: _Conn, src: Any, send: trio.MemorySendChannel[tuple[float, bytes] | None]
    ) -> None:
        async with send:
            while True:
                await self._gate()
                try:
                    data = await src.receive_some(CHUNK)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    conn.cut("reset")  # the peer reset: pass it on to the other side
                    return
                if not data:
                    await send.send(None)
                    return
                await send.send((trio.current_time() + self.latency, data))

    async def _writer(
        self,
        conn: _Conn,
        dst: Any,
        receive: trio.MemoryReceiveChannel[tuple[float, bytes] | None],
        direction: Direction,
    ) -> None:
        async with receive:
            async for item in receive:
                if item is None:  # EOF from the source: half-close towards the destination
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        if hasattr(dst, "send_eof"):
                            await dst.send_eof()
                    return
                due, data = item
                await trio.sleep_until(due)
                view = memoryview(data)
                while view:
                    rate = self.rate_up if direction == "up" else self.rate_down
                    step = max(1024, int(rate / 50)) if rate else len(view)
                    piece, view = view[:step], view[step:]
                    await self._gate()
                    await self._pacers[direction].take(len(piece), rate)
                    arm = self._arm
                    cut_how: How | None = None
                    if arm is not None and arm.direction == direction:
                        if len(piece) > arm.remaining:
                            piece = piece[: arm.remaining]
                            self._arm = None
                            cut_how = arm.how
                        else:
                            arm.remaining -= len(piece)
                    each = self._each
                    if each is not None and each.direction == direction:
                        room = each.remaining - conn.sent[direction]
                        if len(piece) > room:
                            piece = piece[: max(0, room)]
                            cut_how = cut_how or each.how
                    try:
                        if piece:
                            await dst.send_all(piece)
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        conn.cut("reset")
                        return
                    conn.sent[direction] += len(piece)
                    if direction == "up":
                        self.bytes_up += len(piece)
                    else:
                        self.bytes_down += len(piece)
                    if cut_how is not None:
                        self.cuts += 1
                        conn.cut(cut_how)
                        if self.stop_on_cut:
                            self.stop()
                        return


@contextlib.contextmanager
def serve_in_thread(*proxies: FaultProxy, timeout: float = 30.0) -> Iterator[tuple[FaultProxy, ...]]:
    """Run the proxies on a private trio loop in a daemon thread (for sync tests and module-scoped fixtures);
    on exit they are stopped and the thread joined (bounded)."""
    ready = threading.Event()
    failed: list[BaseException] = []
    token: list[trio.lowlevel.TrioToken] = []
    cancel = trio.CancelScope()

    async def main() -> None:
        token.append(trio.lowlevel.current_trio_token())
        with cancel:
            async with trio.open_nursery() as nursery:
                for p in proxies:
                    await nursery.start(p.serve)
                ready.set()

    def run() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # reported to the caller below
            failed.append(exc)
        finally:
            ready.set()

    thread = threading.Thread(target=run, name="faultproxy", daemon=True)
    thread.start()
    if not ready.wait(timeout) or failed:
        raise AssertionError(f"fault proxies did not start: {failed!r}")
    try:
        yield proxies
    finally:
        with contextlib.suppress(trio.RunFinishedError):
            trio.from_thread.run_sync(cancel.cancel, trio_token=token[0])
        thread.join(timeout)
