"""Fixtures for the write-back integration tests (issue 6): real `meshfs mount` through the kernel on the
dev Reva (or on a private Reva stack of our own for outages), the server's view over WebDAV, and a fresh
folder per test in einstein's home.

Owns: `mounter` (mounts + guaranteed cleanup: umount, lazy unmount, kill), `dav`, `area` (a unique folder
name, created on the server and removed afterwards), `private_reva` (REVA_INSTANCE=wb on a free port
offset; stopped at the end). Imports nothing from meshfs: the product is driven through its CLI
and the kernel.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from wbkit import Mounter, PrivateStack, WebDav  # type: ignore[import-not-found]

PRIVATE_INSTANCE = "wb"
#: revactl's default ports (dev/reva/NOTES.md); a private stack adds an offset (multiple of 10, <= 700)
BASE_PORTS = (19000, 19001, 11000, 11001, 14000, 13000)


def _ports_free(offset: int) -> bool:
    for port in BASE_PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + offset))
            except OSError:
                return False
    return True


def _private_offset() -> int:
    """MESHFS_WB_REVA_OFFSET, else the highest offset whose ports are all free (others run stacks too)."""
    if "MESHFS_WB_REVA_OFFSET" in os.environ:
        return int(os.environ["MESHFS_WB_REVA_OFFSET"])
    for offset in range(700, 290, -10):
        if _ports_free(offset):
            return offset
    pytest.fail("no free port offset for the private Reva stack (set MESHFS_WB_REVA_OFFSET)", pytrace=False)


def _close(m: Mounter) -> None:
    problems = m.close()
    if problems:
        # visible in the pytest output: a mount that had to be forced away is worth a look
        print(f"\nwriteback mount cleanup had to force: {problems}")


def _scrub(tmp: Path) -> None:
    """Remove the test's big local files (originals, cache data; daemon logs stay for a post-mortem) —
    only when nothing below is mounted."""
    prefix = os.fspath(tmp) + "/"
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        if any(line.split()[4].startswith(prefix) for line in f):
            print(f"\nnot scrubbing {tmp}: something below is still mounted")
            return
    for root, _dirs, files in os.walk(tmp):
        for name in files:
            p = Path(root) / name
            with contextlib.suppress(OSError):
                if name != "daemon.log" and p.is_file() and p.stat().st_size >= 1 << 20:
                    p.unlink()


@pytest.fixture
def mounter(reva: Any, tmp_path: Path, fuse_available: None) -> Iterator[Mounter]:
    """Mounts of the shared dev Reva (each with a fresh cache dir unless one is given)."""
    m = Mounter(reva.gateway, {u.username: u.password for u in reva.users}, tmp_path / "m")
    try:
        yield m
    finally:
        _close(m)
        _scrub(tmp_path)


@pytest.fixture
def dav(reva: Any) -> WebDav:
    u = reva.einstein
    return WebDav(reva.http_url, u.username, u.password)


def unique_name(request: pytest.FixtureRequest) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)[:50]
    return f"wb-{base}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def _made_folders(reva: Any) -> Iterator[set[str]]:
    """Names of the folders this session made on the shared stack; purged from the trash at the end."""
    names: set[str] = set()
    try:
        yield names
    finally:
        u = reva.einstein
        with contextlib.suppress(Exception):
            WebDav(reva.http_url, u.username, u.password).purge_trash(names)


@pytest.fixture
def area(dav: WebDav, request: pytest.FixtureRequest, _made_folders: set[str]) -> Iterator[str]:
    """A fresh folder in einstein's home on the shared stack (its name); removed afterwards (and from the
    trash at the end of the session, or right away for tests marked `long`)."""
    name = unique_name(request)
    dav.mkcol(name)
    _made_folders.add(name)
    try:
        yield name
    finally:
        with contextlib.suppress(Exception):
            dav.delete(name)
            if request.node.get_closest_marker("long") is not None:
                dav.purge_trash({name})
                _made_folders.discard(name)


@pytest.fixture(scope="session")
def private_reva(reva: Any) -> Iterator[PrivateStack]:
    """Our own Reva (revactl instance `wb`, a free port offset): the tests may stop and restart it; it is
    reset (stopped, var dir wiped) at the end.

    Depends on `reva` only so that revad is built; the shared stack is never touched here.
    """
    PrivateStack(PRIVATE_INSTANCE, 0).revactl("down", timeout=60)  # a leftover of ours (any offset)
    stack = PrivateStack(PRIVATE_INSTANCE, _private_offset())
    stack.up()
    try:
        yield stack
    finally:
        with contextlib.suppress(Exception):
            stack.revactl("reset", timeout=60)  # ours: down + wipe its var dir (these tests write GiBs)


@pytest.fixture
def private_mounter(
    private_reva: PrivateStack, reva: Any, tmp_path: Path, fuse_available: None
) -> Iterator[Mounter]:
    m = Mounter(private_reva.gateway, {u.username: u.password for u in reva.users}, tmp_path / "pm")
    try:
        yield m
    finally:
        if not private_reva.is_up():
            with contextlib.suppress(Exception):
                private_reva.up()  # an unmount drains against a live server, so the test can end
        _close(m)
        _scrub(tmp_path)
