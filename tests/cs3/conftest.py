"""Fixtures for the CS3 client tests: authenticated gateways per demo user, a scratch folder per test,
local files of given content, and a tiny TCP proxy that can cut connections (server "killed").

Owns only test plumbing for tests/cs3/; talks to the real dev Reva through the `reva` fixture.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from meshfs.cs3 import BasicCredentials, Gateway, Ref, Secret, Shares, Storage, Transfer


@dataclass
class Client:
    gw: Gateway
    storage: Storage
    transfer: Transfer
    shares: Shares
    home: Ref


async def open_client(reva, username: str, **kw: object) -> Client:  # type: ignore[no-untyped-def]
    user = reva.user(username)
    gw = Gateway(reva.gateway, BasicCredentials(user.username, Secret(user.password)), **kw)  # type: ignore[arg-type]
    await gw.open()
    storage = Storage(gw)
    return Client(gw, storage, Transfer(gw), Shares(gw), await storage.get_home())


@pytest.fixture
async def einstein(reva) -> AsyncIterator[Client]:  # type: ignore[no-untyped-def]
    c = await open_client(reva, "einstein")
    try:
        yield c
    finally:
        c.transfer.close()
        await c.gw.aclose()


@pytest.fixture
async def marie(reva) -> AsyncIterator[Client]:  # type: ignore[no-untyped-def]
    c = await open_client(reva, "marie")
    try:
        yield c
    finally:
        c.transfer.close()
        await c.gw.aclose()


@pytest.fixture
async def workdir(einstein: Client) -> AsyncIterator[Ref]:
    """A fresh folder in einstein's home, deleted (best effort) after the test."""
    ref = einstein.home.child(f"cs3test-{uuid.uuid4().hex[:10]}")
    await einstein.storage.create_container(ref)
    try:
        yield ref
    finally:
        with trio.move_on_after(20):
            try:
                await einstein.storage.delete(ref)
            except Exception:  # the test may have moved/locked it; leftovers are harmless
                pass


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@pytest.fixture
def make_file(tmp_path: Path) -> Callable[[int], Path]:
    """make_file(size) -> a local file of `size` pseudo-random bytes (written in 1 MiB steps)."""

    def make(size: int, name: str | None = None) -> Path:
        path = tmp_path / (name or f"src-{size}-{uuid.uuid4().hex[:6]}")
        block = os.urandom(1 << 20)
        with open(path, "wb") as f:
            left = size
            i = 0
            while left:
                n = min(left, len(block))
                # vary the block so identical chunks cannot hide offset bugs
                f.write(i.to_bytes(8, "little") + block[8:n] if n >= 8 else block[:n])
                left -= n
                i += 1
        return path

    return make


@dataclass
class CuttingProxy:
    """TCP proxy 127.0.0.1:port -> target. `cut_after` bytes of server->client data per connection
    (None = never), then both sides are closed. `stop()` closes the listener (connection refused)."""

    target_port: int
    cut_after: int | None = None
    port: int = 0
    connections: int = 0
    cuts: int = 0
    _cancel: trio.CancelScope = field(default_factory=trio.CancelScope)

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self._cancel:
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            self.port = listeners[0].socket.getsockname()[1]
            task_status.started()
            async with trio.open_nursery() as n:
                for lst in listeners:
                    n.start_soon(trio.serve_listeners, self._handle, [lst])

    async def _handle(self, client: trio.SocketStream) -> None:
        self.connections += 1
        limit = self.cut_after
        try:
            server = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        except OSError:
            await client.aclose()
            return
        async with client, server, trio.open_nursery() as n:

            async def up() -> None:
                try:
                    while data := await client.receive_some(1 << 16):
                        await server.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                n.cancel_scope.cancel()

            async def down() -> None:
                sent = 0
                try:
                    while data := await server.receive_some(1 << 16):
                        if limit is not None and sent + len(data) > limit:
                            await client.send_all(data[: limit - sent])
                            self.cuts += 1
                            break
                        await client.send_all(data)
                        sent += len(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                n.cancel_scope.cancel()

            n.start_soon(up)
            n.start_soon(down)

    def stop(self) -> None:
        self._cancel.cancel()


@pytest.fixture
async def proxy_factory(reva) -> AsyncIterator[Callable[..., object]]:  # type: ignore[no-untyped-def]
    """start(target_port, cut_after=None) -> a running CuttingProxy (stopped at the end of the test)."""
    async with trio.open_nursery() as nursery:
        proxies: list[CuttingProxy] = []

        async def start(target_port: int, cut_after: int | None = None) -> CuttingProxy:
            p = CuttingProxy(target_port, cut_after)
            await nursery.start(p.serve)
            proxies.append(p)
            return p

        yield start
        for p in proxies:
            p.stop()
