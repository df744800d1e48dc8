"""Helpers of the mount integration tests (the shared plumbing is tests/rig.py).

Owns what only tests/mount/* use: `sync` (`meshfs sync PATH`, failing the test on an error),
`expect_errno` and `tree_snapshot`; re-exports the shared helpers its tests import by this name
(`run_meshfs`, `wait_for`, `sha256`, `sha256_file`, `WebDav`, `REPO`).
Imports nothing from meshfs: the tests drive the product only through the CLI and the kernel.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from rig import REPO, WebDav, run_meshfs, sha256, sha256_file, wait_for

__all__ = [
    "REPO",
    "WebDav",
    "expect_errno",
    "run_meshfs",
    "sha256",
    "sha256_file",
    "sync",
    "tree_snapshot",
    "wait_for",
]


def sync(path: Path | str, timeout: float = 60.0) -> None:
    """`meshfs sync PATH`: wait until every pending upload under PATH is stored on the server."""
    run_meshfs("sync", os.fspath(path), "--timeout", str(timeout), timeout=timeout + 30, check=True)


@contextlib.contextmanager
def expect_errno(*codes: int) -> Iterator[None]:
    """The block must raise OSError with one of `codes` (names shown on mismatch)."""
    names = "/".join(errno.errorcode.get(c, str(c)) for c in codes)
    try:
        yield
    except OSError as e:
        got = errno.errorcode.get(e.errno or 0, str(e.errno))
        assert e.errno in codes, f"expected {names}, got {got}: {e}"
    else:
        raise AssertionError(f"expected OSError {names}, nothing was raised")


def tree_snapshot(root: Path) -> dict[str, tuple[str, int, str]]:
    """{relative path: (kind, size, sha256 or "")} for everything below root (dirs: size 0)."""
    out: dict[str, tuple[str, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        for d in dirnames:
            out[os.fspath((base / d).relative_to(root))] = ("dir", 0, "")
        for f in filenames:
            p = base / f
            out[os.fspath(p.relative_to(root))] = ("file", p.stat().st_size, sha256_file(p))
    return out
