"""Fixtures for the lock integration tests (real Reva, real kernel FUSE mounts; two mounts = two nodes).

Owns: `mounter` (mounts through the real `meshfs mount`, fresh cache dir per mount; umount, lazy unmount
and kill of the daemon afterwards, even when the test failed), `cs3` (synchronous CS3 clients of
einstein and marie on a background trio loop, shared by the session), `area` (a fresh folder in
einstein's home, removed afterwards), `procs` (lock-holding child processes, ended afterwards) and
`proxy` (a pausable TCP proxy in front of the gateway). Imports meshfs.cs3 only to observe and poke
the server as another application would; the product itself is driven through its CLI and the kernel.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from lockkit import Cs3, LockProc, LoopThread, Mounter, PausableProxy

from meshfs.cs3 import Ref


@dataclass
class Cs3Pair:
    loop: LoopThread
    einstein: Cs3
    marie: Cs3


@pytest.fixture(scope="session")
def cs3(reva: Any) -> Iterator[Cs3Pair]:
    loop = LoopThread()
    clients: list[Cs3] = []
    try:
        for name in ("einstein", "marie"):
            clients.append(Cs3(loop, reva.gateway, name, reva.user(name).password))
        yield Cs3Pair(loop, clients[0], clients[1])
    finally:
        for c in clients:
            c.close()
        loop.close()


@dataclass
class Area:
    """A fresh folder `name` in einstein's home: `ref` on the server, `on(node)` its path on a mount."""

    name: str
    ref: Ref

    def on(self, node: Any) -> Path:
        return Path(node.home) / self.name


@pytest.fixture
def area(cs3: Cs3Pair) -> Iterator[Area]:
    name = f"lk-{uuid.uuid4().hex[:10]}"
    ref = cs3.einstein.ref(name)
    cs3.einstein.call(cs3.einstein.storage.create_container, ref)
    try:
        yield Area(name, ref)
    finally:
        with contextlib.suppress(Exception):  # best effort: a lock left by a killed daemon may block it
            cs3.einstein.call(cs3.einstein.storage.delete, ref)


@pytest.fixture
def mounter(reva: Any, tmp_path: Path, area: Area) -> Iterator[Mounter]:
    """Mounts of this test (set up after `area`, so they are gone before it is removed)."""
    m = Mounter(reva.gateway, {u.username: u.password for u in reva.users}, tmp_path / "m")
    try:
        yield m
    finally:
        forced = m.close()
        if forced:
            print(f"\nlock test cleanup had to force: {forced}")


@pytest.fixture
def procs(mounter: Mounter) -> Iterator[Callable[[], LockProc]]:
    """procs() -> a new lock-holding child process; all are ended after the test (before its mounts)."""
    made: list[LockProc] = []

    def make() -> LockProc:
        p = LockProc()
        made.append(p)
        return p

    try:
        yield make
    finally:
        for p in made:
            p.close()


@pytest.fixture
def proxy(reva: Any, cs3: Cs3Pair) -> Iterator[PausableProxy]:
    host, port = reva.gateway.rsplit(":", 1)
    p = PausableProxy(cs3.loop, host, int(port))
    try:
        yield p
    finally:
        p.pause()
