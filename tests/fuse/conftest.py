"""Fixtures for the meshfs.fuse tests: a MemFS mounted through the real kernel.

Owns: `serve()` (mount + a daemon thread running its own trio loop, always unmounted in finally,
lazy-unmount fallback), the `mnt` fixture, helpers to run code in the daemon's trio loop and to
wait for conditions with a bound. Must not import meshfs modules other than meshfs.fuse.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio

sys.path.insert(0, str(Path(__file__).parent))

from memfs import MemFS

from meshfs.fuse import MountOptions, Session, lazy_unmount

T = TypeVar("T")


def fuse_unavailable() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse on this machine: the meshfs.fuse kernel tests cannot run"
    if os.geteuid() != 0 and not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not accessible to this user: the meshfs.fuse kernel tests cannot run"
    return None


_REASON = fuse_unavailable()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _REASON is None:
        return
    here = str(Path(__file__).parent)
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytest.mark.skip(reason=f"SKIPPED LOUDLY: {_REASON}"))


def is_mounted(path: str | Path) -> bool:
    p = os.path.abspath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == p for line in f)


def wait_for(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll `cond` until truthy (returns its value); fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


@dataclass
class Mounted:
    path: Path
    fs: MemFS
    session: Session
    token: trio.lowlevel.TrioToken
    errors: list[BaseException]
    thread: threading.Thread

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a plain function inside the daemon's trio thread (to touch MemFS state safely)."""
        return trio.from_thread.run_sync(fn, *args, trio_token=self.token)

    def acall(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a coroutine function inside the daemon's trio loop and return its result."""
        return trio.from_thread.run(fn, *args, trio_token=self.token)


@contextmanager
def serve(path: Path, fs: MemFS | None = None, options: MountOptions | None = None) -> Iterator[Mounted]:
    """Mount `fs` at `path`, serve it from a daemon thread, and always unmount at the end."""
    fs = fs or MemFS()
    options = options or MountOptions(fsname="memfs", subtype="memfs", unmount_grace=1.0)
    session = Session(fs)
    session.mount(path, options)
    tokens: queue.Queue[trio.lowlevel.TrioToken] = queue.Queue()
    errors: list[BaseException] = []

    async def main() -> None:
        tokens.put(trio.lowlevel.current_trio_token())
        await session.run()

    def runner() -> None:
        try:
            trio.run(main)
        except BaseException as e:  # reported by the fixture
            traceback.print_exc()
            errors.append(e)
            tokens.put(None)  # type: ignore[arg-type]

    thread = threading.Thread(target=runner, name=f"memfs-{path.name}", daemon=True)
    thread.start()
    try:
        token = tokens.get(timeout=10)
        if token is None:
            raise AssertionError(f"the session loop died at start: {errors!r}")
        os.stat(path)  # returns once the kernel's INIT was answered
        yield Mounted(path, fs, session, token, errors, thread)
    finally:
        try:
            session.unmount()
        except Exception:
            lazy_unmount(str(path))
        thread.join(timeout=20)
        if thread.is_alive() or is_mounted(path):
            lazy_unmount(str(path))
            raise AssertionError(f"the session at {path} did not stop after unmount")
    if errors:
        raise AssertionError(f"the session loop failed: {errors!r}")


@pytest.fixture
def mnt(tmp_path: Path) -> Iterator[Mounted]:
    mp = tmp_path / "mnt"
    mp.mkdir()
    with serve(mp) as m:
        yield m
