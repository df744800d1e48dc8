"""The fault proxy itself (tests/faultproxy.py) against a local echo/source server: each fault does what it
claims (latency, rate caps, FIN vs RST, black hole that heals, a cut armed mid-transfer), so the fault tests
through the mount rest on something checked. No Reva, no FUSE."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest
import trio
from faultproxy import FaultProxy, serve_in_thread


async def _echo(stream: trio.SocketStream) -> None:
    try:
        async with stream:
            while data := await stream.receive_some(65536):
                await stream.send_all(data)
    except trio.BrokenResourceError:
        pass


async def _server(nursery: trio.Nursery) -> int:
    listeners = await nursery.start(trio.serve_tcp, _echo, 0)
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def _proxy(nursery: trio.Nursery, **kw: Any) -> FaultProxy:
    proxy = FaultProxy(await _server(nursery), **kw)
    await nursery.start(proxy.serve)
    return proxy


async def _roundtrip(port: int, payload: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        got = bytearray()

        async def reader() -> None:
            while len(got) < len(payload):
                data = await stream.receive_some(65536)
                if not data:
                    return
                got.extend(data)

        async with trio.open_nursery() as n:
            n.start_soon(reader)
            await stream.send_all(payload)
        return bytes(got)


async def test_forward_with_latency_delays_each_direction(nursery: trio.Nursery) -> None:
    proxy = await _proxy(nursery)
    assert await _roundtrip(proxy.port, b"ping") == b"ping"
    proxy.set(latency=0.1)
    t0 = trio.current_time()
    assert await _roundtrip(proxy.port, b"ping") == b"ping"
    assert trio.current_time() - t0 >= 0.2  # 0.1 s up + 0.1 s down


async def test_rate_cap_bounds_throughput_and_keeps_bytes(nursery: trio.Nursery) -> None:
    proxy = await _proxy(nursery)
    proxy.set(rate_down=500_000)
    payload = bytes(range(256)) * 2000  # 512 KB
    t0 = trio.current_time()
    with trio.fail_after(30):
        assert await _roundtrip(proxy.port, payload) == payload
    elapsed = trio.current_time() - t0
    assert 0.8 <= elapsed < 10, elapsed  # ~1 s at 500 kB/s
    assert proxy.bytes_down == len(payload)


@pytest.mark.parametrize(("how", "error"), [("reset", ConnectionResetError), ("close", None)])
def test_cut_closes_or_resets_live_connections(how: str, error: type[Exception] | None) -> None:
    with _thread_echo() as target:
        proxy = FaultProxy(target)
        with serve_in_thread(proxy):
            s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
            try:
                s.sendall(b"x")
                assert s.recv(1) == b"x"
                proxy.cut(how)  # type: ignore[arg-type]
                if error is None:
                    assert s.recv(1) == b""  # FIN: orderly end of stream
                else:
                    with pytest.raises(error):
                        s.recv(1)
                        s.recv(1)
                assert proxy.cuts == 1
            finally:
                s.close()


def test_blackhole_holds_then_heals_and_close_mode_refuses_service() -> None:
    with _thread_echo() as target:
        proxy = FaultProxy(target)
        with serve_in_thread(proxy):
            s = socket.create_connection(("127.0.0.1", proxy.port), timeout=0.5)
            try:
                proxy.set("blackhole")
                s.sendall(b"held")
                with pytest.raises(TimeoutError):
                    s.recv(4)
                late = socket.create_connection(("127.0.0.1", proxy.port), timeout=0.5)
                late.sendall(b"late")
                with pytest.raises(TimeoutError):
                    late.recv(4)
                proxy.set("forward")
                s.settimeout(10)
                late.settimeout(10)
                assert s.recv(4) == b"held"
                assert late.recv(4) == b"late"
                late.close()
                proxy.set("close")
                assert s.recv(1) == b""
                fresh = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
                assert fresh.recv(1) == b""
                fresh.close()
            finally:
                s.close()


def test_armed_cut_hits_mid_transfer_once() -> None:
    with _thread_echo() as target:
        proxy = FaultProxy(target)
        with serve_in_thread(proxy):
            proxy.arm_cut(100_000, "down", "reset")
            s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
            got = 0
            with pytest.raises(ConnectionResetError):
                s.sendall(b"y" * 300_000)
                while data := s.recv(65536):
                    got += len(data)
            s.close()
            assert got <= 100_000
            assert not proxy.armed
            proxy.wait_for(lambda: proxy.live == 0, 10, "the cut connection gone")
            # the fault cleared by itself
            s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
            s.sendall(b"again")
            assert s.recv(5) == b"again"
            s.close()


class _thread_echo:
    """An echo server on a private trio loop in a thread (for the sync tests); yields its port."""

    def __enter__(self) -> int:
        self._target_ready: list[int] = []
        self._cancel = trio.CancelScope()
        self._ready = threading.Event()

        async def main() -> None:
            self._token = trio.lowlevel.current_trio_token()
            with self._cancel:
                async with trio.open_nursery() as n:
                    self._target_ready.append(await _server(n))
                    self._ready.set()

        self._thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
        self._thread.start()
        assert self._ready.wait(10)
        return self._target_ready[0]

    def __exit__(self, *exc: object) -> None:
        trio.from_thread.run_sync(self._cancel.cancel, trio_token=self._token)
        self._thread.join(10)


def test_serve_in_thread_stops_cleanly() -> None:
    with _thread_echo() as target:
        proxy = FaultProxy(target)
        t0 = time.monotonic()
        with serve_in_thread(proxy):
            port = proxy.port
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        assert time.monotonic() - t0 < 10


def test_cut_each_after_cuts_every_connection_and_stop_on_cut_kills_the_server() -> None:
    with _thread_echo() as target:
        proxy = FaultProxy(target)
        with serve_in_thread(proxy):
            proxy.cut_each_after(1000, "down", "close")
            for _ in range(2):  # every connection, not just the first
                s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
                s.sendall(b"z" * 5000)
                got = b""
                while data := s.recv(65536):
                    got += data
                s.close()
                assert got == b"z" * 1000
            assert proxy.cuts == 2
            proxy.stop_on_cut = True
            s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
            s.sendall(b"z" * 5000)
            while s.recv(65536):
                pass
            s.close()
            proxy.wait_for(lambda: _refused(proxy.port), 10, "the proxy refusing connections after the cut")


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False
