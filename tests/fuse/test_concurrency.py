"""Many processes at once against a MemFS whose every handler blocks for a moment: exercises the
worker pool of meshfs.fuse (reader hand-off, idle workers, max_tasks) under real interleaving."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio
from conftest import serve
from memfs import MemFS

from meshfs.fuse import MountOptions, Operations

pytestmark = pytest.mark.fuse

OPS = [n for n, v in vars(Operations).items() if callable(v) and not n.startswith("_")
       and n not in ("init", "destroy")]


class SlowMemFS(MemFS):
    """Every handler first sleeps 0-2 ms: each request blocks, so every one hands off reading."""


def _slow(name: str) -> object:
    orig = getattr(MemFS, name)

    async def handler(self: MemFS, *args: object) -> object:
        await trio.sleep(random.random() * 0.002)
        return await orig(self, *args)

    handler.__name__ = name
    return handler


for _name in OPS:
    setattr(SlowMemFS, _name, _slow(_name))

CLIENT = textwrap.dedent(
    """
    import os, sys, fcntl
    root = sys.argv[1]
    os.mkdir(root)
    for i in range(60):
        with open(f"{root}/f{i}", "wb") as f:
            f.write(str(i).encode() * (i + 1))
    for i in range(60):
        assert open(f"{root}/f{i}", "rb").read() == str(i).encode() * (i + 1), i
    for i in range(0, 60, 2):
        os.rename(f"{root}/f{i}", f"{root}/g{i}")
    want = [f"g{i}" for i in range(0, 60, 2)] + [f"f{i}" for i in range(1, 60, 2)]
    assert sorted(os.listdir(root)) == sorted(want)
    shared = os.path.join(os.path.dirname(root), "shared")
    fd = os.open(shared, os.O_RDWR | os.O_CREAT, 0o644)
    for _ in range(5):
        fcntl.flock(fd, fcntl.LOCK_EX)
        n = int(os.pread(fd, 20, 0) or b"0")
        os.pwrite(fd, str(n + 1).encode().ljust(20), 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
    for name in os.listdir(root):
        os.unlink(f"{root}/{name}")
    os.rmdir(root)
    print("done")
    """
)


@pytest.mark.parametrize("max_tasks", [1024, 3])
def test_parallel_clients_with_blocking_handlers(tmp_path: Path, max_tasks: int) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    fs = SlowMemFS()
    with serve(mp, fs, MountOptions(fsname="memfs", max_tasks=max_tasks, unmount_grace=1.0)) as m:
        procs = [subprocess.Popen([sys.executable, "-c", CLIENT, str(mp / f"c{i}")], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for i in range(6)]
        try:
            results = [p.communicate(timeout=60) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait(10)
        assert [r[0].strip() for r in results] == ["done"] * 6, [r[1][-500:] for r in results]
        assert int((mp / "shared").read_bytes()) == 6 * 5  # flock serialised every increment
        assert sorted(p.name for p in mp.iterdir()) == ["shared"]
        # (lock waiters may exceed max_tasks: 5 of the 6 clients can wait for the flock at once)
        assert m.session._workers <= max_tasks + 5
