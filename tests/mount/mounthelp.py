"""Helpers for the mount integration tests: running the meshfs CLI, bounded waits, errno checks, WebDAV.

Owns small tools shared by tests/mount/*: `run_meshfs` (the real CLI with a timeout), `sync`,
`wait_for` (poll a condition with a deadline, never a fixed sleep), `expect_errno`, file digests and
a tiny WebDAV client (stdlib urllib, basic auth) to check what the server really stores.
Imports nothing from meshfs: the tests drive the product only through the CLI and the kernel.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent.parent
CLI_TIMEOUT = 120.0
T = TypeVar("T")


def run_meshfs(
    *args: str, timeout: float = CLI_TIMEOUT, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """`python -m meshfs ARGS` with a bounded run time; with check=True a failure raises with its output."""
    proc = subprocess.run(
        [sys.executable, "-m", "meshfs", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=REPO,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"`meshfs {' '.join(args)}` failed ({proc.returncode}): {proc.stdout}{proc.stderr}"
        )
    return proc


def sync(path: Path | str, timeout: float = 60.0) -> None:
    """`meshfs sync PATH`: wait until every pending upload under PATH is stored on the server."""
    run_meshfs("sync", os.fspath(path), "--timeout", str(timeout), timeout=timeout + 30, check=True)


def wait_for(cond: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll `cond` until it returns something truthy; AssertionError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        last = cond()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")
        time.sleep(interval)


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


def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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


class WebDav:
    """Minimal WebDAV client for one user's files (ocdav, basic auth): the server's view, no meshfs."""

    def __init__(self, http_url: str, username: str, password: str) -> None:
        self.base = f"{http_url.rstrip('/')}/remote.php/dav/files/{username}/"
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}"}

    def url(self, rel: str) -> str:
        return self.base + urllib.parse.quote(rel.lstrip("/"))

    def _do(
        self, method: str, rel: str, data: bytes | None = None, headers: dict[str, str] | None = None
    ) -> Any:
        req = urllib.request.Request(
            self.url(rel), data=data, method=method, headers={**self.headers, **(headers or {})}
        )
        return urllib.request.urlopen(req, timeout=60)

    def get(self, rel: str) -> bytes:
        with self._do("GET", rel) as resp:
            data: bytes = resp.read()
            return data

    def exists(self, rel: str) -> bool:
        try:
            with self._do("PROPFIND", rel, headers={"Depth": "0"}):
                return True
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return False
            raise

    def put(self, rel: str, data: bytes) -> None:
        with self._do("PUT", rel, data=data, headers={"Content-Length": str(len(data))}) as resp:
            assert resp.status in (200, 201, 204), resp.status

    def mkcol(self, rel: str) -> None:
        with self._do("MKCOL", rel) as resp:
            assert resp.status in (200, 201), resp.status

    def delete(self, rel: str) -> None:
        with self._do("DELETE", rel) as resp:
            assert resp.status in (200, 204), resp.status
