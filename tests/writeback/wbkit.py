"""Plumbing of the write-back integration tests (the shared plumbing is tests/rig.py): mounts that
can be killed -9 and remounted on the same cache dir, what a daemon logged about its uploads,
deterministic data files, a tmpfs; re-exports what its tests import by this name.

Owns only test plumbing for tests/writeback/. The product is driven through its CLI, the kernel and its
daemon log; the server is looked at through ocdav (WebDAV, basic auth), independent of meshfs.
Imports nothing from meshfs.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rig import MiB, Mount, PrivateStack, WebDav, sha256, sha256_file, wait_for
from rig import Mounter as _Mounter
from rig import mounted as is_mounted

__all__ = [
    "MiB",
    "Mounter",
    "PrivateStack",
    "WbMount",
    "WebDav",
    "errno_name",
    "is_mounted",
    "make_data_file",
    "sha256",
    "sha256_file",
    "state_of",
    "tmpfs",
    "wait_for",
]

UMOUNT_TIMEOUT = 120.0


def errno_name(e: OSError) -> str:
    return errno.errorcode.get(e.errno or 0, str(e.errno))


def make_data_file(path: Path, size: int, seed: int) -> str:
    """Write `size` pseudo-random bytes (deterministic per seed) to `path`; return their sha256."""
    h = hashlib.sha256()
    block = hashlib.sha256(f"seed-{seed}".encode()).digest() * (MiB // 32)  # 1 MiB pattern
    with open(path, "wb") as f:
        done = 0
        n = 0
        while done < size:
            # every MiB differs (its index is stamped in), so a misplaced chunk changes the digest
            chunk = (n.to_bytes(8, "little") + block[8:])[: size - done]
            f.write(chunk)
            h.update(chunk)
            done += len(chunk)
            n += 1
    return h.hexdigest()


def state_of(path: Path) -> str:
    """xattr user.meshfs.state of a file on a mount."""
    return os.getxattr(path, "user.meshfs.state").decode()


class WbMount(Mount):
    """One running `meshfs mount` (rig.Mount) and what its daemon logged."""

    def uploads_logged(self, rel: str) -> int:
        """How many "uploaded <rel> (...)" lines the daemon logged (rel: mount-relative path)."""
        pat = re.compile(r"uploaded " + re.escape(rel.strip("/")) + r" \(\d+ bytes\)")
        return len(pat.findall(self.log_text()))


@dataclass
class Mounter(_Mounter):
    """The write-back tests' mounts (rig.Mounter): options first, `user` by keyword; a 120 s bound on
    each umount (a drain of big files); `kill9` = kill -9 of the daemon and a lazy detach."""

    umount_timeout: float = UMOUNT_TIMEOUT
    mount_class: type[Mount] = WbMount

    def mount(  # type: ignore[override]
        self, *options: str, user: str = "einstein", cache_dir: Path | None = None
    ) -> WbMount:
        m: WbMount = super().mount(user, *options, cache_dir=cache_dir)
        return m

    def kill9(self, m: Mount) -> None:
        self.kill(m, detach=True)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted on `path` (root only); always unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", os.fspath(path)], check=True
    )
    try:
        yield path
    finally:
        if subprocess.run(["umount", os.fspath(path)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", os.fspath(path)], capture_output=True, check=False)
