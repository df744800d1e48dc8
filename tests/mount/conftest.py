"""Fixtures for the mount integration tests: real `meshfs mount` of the dev Reva through the kernel.

Owns the fixtures `mount_factory` (per test), `proxied_mount` (a mount whose gateway is reached through
the fault proxy of tests/faultproxy.py), `mount` (one einstein mount shared by the session: each
test works in its own fresh directory; replaced loudly when its daemon died), `work` (that directory)
and `webdav`. Mounting and the guaranteed clean-up (bounded `meshfs umount`, then a lazy unmount and a
kill of the daemon) are tests/rig.py's `Mounter`.
Imports nothing from meshfs: the product is driven only through its CLI and the kernel.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
from faultproxy import FaultProxy
from rig import Mount, Mounter, WebDav, mounted, run_meshfs

UMOUNT_TIMEOUT = 60.0


def _mounter(reva: Any, root: Path) -> Mounter:
    """Mounts of the dev Reva below `root` (every one drains for at most 60 s at its umount)."""
    return Mounter(
        reva.gateway,
        {u.username: u.password for u in reva.users},
        root,
        options=("drain_timeout=60s",),
        umount_timeout=UMOUNT_TIMEOUT,
    )


def _umount_all(mounter: Mounter) -> None:
    problems = mounter.close()
    if problems:
        # visible in the pytest output; a test that left a mount behind is a finding, not a silent pass
        print(f"\nmount cleanup had to force: {problems}")


@pytest.fixture
def mount_factory(reva: Any, tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """mount_factory(user="einstein", *options, cache_dir=None, gateway=None) -> a fresh mountpoint."""
    m = _mounter(reva, tmp_path / "m")

    def mount(user: str = "einstein", *options: str, **kw: Any) -> Path:
        mp: Path = m.mount(user, *options, **kw).mountpoint
        return mp

    try:
        yield mount
    finally:
        _umount_all(m)


@dataclass(frozen=True, slots=True)
class ProxiedMount:
    path: Path  # the mountpoint
    proxy: FaultProxy  # between the mount and the gateway (gRPC only: uploads go to the data gateway)


ProxiedMounter = Callable[..., AbstractAsyncContextManager[ProxiedMount]]  # the proxied_mount fixture


@pytest.fixture
async def proxied_mount(
    reva: Any, mount_factory: Callable[..., Path], nursery: trio.Nursery
) -> ProxiedMounter:
    """`async with proxied_mount(*options) as pm:` an einstein mount (mount_factory's options) whose
    gateway is a FaultProxy served in the test's nursery. On leaving, the proxy goes back to plain
    forwarding and the mount is unmounted (`meshfs umount`, bounded) while the proxy still serves:
    mount_factory's own clean-up runs only after the test's trio loop, and so the proxy, have ended."""
    host, port = reva.gateway.rsplit(":", 1)

    @contextlib.asynccontextmanager
    async def proxied(*options: str) -> AsyncIterator[ProxiedMount]:
        proxy = FaultProxy(int(port), host)
        proxy_port = await nursery.start(proxy.serve)
        gateway = f"127.0.0.1:{proxy_port}"
        with trio.fail_after(180):  # a blocking mount, off the loop that runs the proxy
            mp: Path = await trio.to_thread.run_sync(
                lambda: mount_factory("einstein", *options, gateway=gateway), abandon_on_cancel=True
            )
        try:
            yield ProxiedMount(mp, proxy)
        finally:
            proxy.clear()
            # shielded: a test cancelled by its own deadline still unmounts while the proxy serves
            with trio.CancelScope(deadline=trio.current_time() + UMOUNT_TIMEOUT + 60, shield=True):
                await trio.to_thread.run_sync(
                    lambda: run_meshfs("umount", os.fspath(mp), "--timeout", "60", timeout=90),
                    abandon_on_cancel=True,
                )

    return proxied


@dataclass
class SharedMount:
    """The session's einstein mount; replaced by a fresh one when the daemon died or lost home/."""

    mounter: Mounter
    path: Path | None = None
    replaced: list[str] = field(default_factory=list)

    def healthy(self) -> bool:
        if self.path is None or not mounted(self.path):
            return False
        try:
            return (self.path / "home").is_dir()
        except OSError:
            return False

    def get(self) -> Path:
        if self.path is not None and not self.healthy():
            # a product bug (see /work/notes/mount-findings.md F2/F5) must not cascade into every later
            # test: say so loudly and carry on with a fresh mount
            self.replaced.append(f"{self.path}: home/ unusable or daemon gone")
            print(f"\nshared mount {self.path} unusable (home/ gone or daemon dead): remounting")
            info: Mount = next(i for i in self.mounter.mounts if i.mountpoint == self.path)
            self.mounter.unmount(info)
            self.path = None
        if self.path is None:
            self.path = self.mounter.mount("einstein").mountpoint
        return self.path


@pytest.fixture(scope="session")
def shared_mount(reva: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedMount]:
    shared = SharedMount(_mounter(reva, tmp_path_factory.mktemp("shared-mount")))
    try:
        yield shared
    finally:
        _umount_all(shared.mounter)
        if shared.replaced:
            print(f"\nthe shared mount had to be replaced {len(shared.replaced)} time(s): {shared.replaced}")


@pytest.fixture
def mount(shared_mount: SharedMount) -> Path:
    """One einstein mount shared by the session (tests use their own `work` directory inside it)."""
    return shared_mount.get()


def unique_name(request: pytest.FixtureRequest) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)[:60]
    return f"mt-{base}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def work(mount: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A fresh directory home/<unique> on the shared einstein mount; removed afterwards (best effort)."""
    d = mount / "home" / unique_name(request)
    d.mkdir()
    try:
        yield d
    finally:
        for _ in range(2):
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def webdav(reva: Any) -> WebDav:
    """einstein's files over ocdav: what the server stores, independent of meshfs."""
    u = reva.einstein
    return WebDav(reva.http_url, u.username, u.password)
