"""Fixtures for the CS3 client tests: authenticated gateways per demo user, a scratch folder per test,
local files of given content, and a tiny TCP proxy that can cut connections (server "killed").

Owns only test plumbing for tests/cs3/; talks to the real dev Reva through the `reva` fixture.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from cs3_helpers import Client, CuttingProxy, open_client  # type: ignore[import-not-found]

from meshfs.cs3 import Ref


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


@pytest.fixture
async def proxy_factory(reva) -> AsyncIterator[Callable[..., object]]:  # type: ignore[no-untyped-def]
    """start(target_port, **CuttingProxy options) -> a running CuttingProxy (stopped at the end)."""
    async with trio.open_nursery() as nursery:
        proxies: list[CuttingProxy] = []

        async def start(target_port: int, **options: Any) -> CuttingProxy:
            p = CuttingProxy(target_port, **options)
            await nursery.start(p.serve)
            proxies.append(p)
            return p

        yield start
        for p in proxies:
            p.stop()
