"""The kernel forgets inodes (memory pressure, `drop_caches`); the mount must look them up again.

`echo 2 > /proc/sys/vm/drop_caches` evicts every unused dentry and inode of the machine: the kernel then
sends FORGET for them. This is global, so the file is named to run last in tests/mount and uses its
own mounts (the shared session mount is not touched on purpose).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from mounthelp import sync

pytestmark = [pytest.mark.reva, pytest.mark.fuse]


def drop_kernel_caches() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to write /proc/sys/vm/drop_caches (evicts inodes: FORGET to the daemon)")
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("2\n")


def test_home_survives_the_kernel_forgetting_it(mount_factory: Callable[..., Path]) -> None:
    mnt = mount_factory()
    assert "home" in os.listdir(mnt)
    os.stat(mnt / "home")
    for _ in range(3):
        drop_kernel_caches()
        assert "home" in os.listdir(mnt)
        os.listdir(mnt / "home")  # ESTALE or ENOENT when the daemon dropped the home inode
        os.stat(mnt / "home")


def test_files_and_dirs_survive_the_kernel_forgetting_them(
    mount_factory: Callable[..., Path], request: pytest.FixtureRequest
) -> None:
    mnt = mount_factory()
    d = mnt / "home" / f"mt-forget-{os.getpid()}-{request.node.name[-20:]}"
    d.mkdir()
    try:
        (d / "sub").mkdir()
        (d / "sub" / "f").write_bytes(b"payload")
        (d / "g").write_bytes(b"g")
        sync(d)
        assert sorted(os.listdir(d)) == ["g", "sub"]
        for i in range(3):
            drop_kernel_caches()
            assert sorted(os.listdir(d)) == ["g", "sub"]
            assert (d / "sub" / "f").read_bytes() == b"payload"
            assert (d / "g").stat().st_size == 1 + i
            with open(d / "g", "ab") as f:
                f.write(b"+")
        assert (d / "g").read_bytes() == b"g+++"
    finally:  # through a fresh mount: this one may have lost the directory
        shutil.rmtree(mount_factory() / "home" / d.name, ignore_errors=True)
