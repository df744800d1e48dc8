"""Helpers of tests/hostile/ (module name kept unique: suites import helpers by plain name): the server's
view of einstein's files over WebDAV (no meshfs involved), the daemon's RSS, calls bounded in time
(waits for a condition and private Reva stacks are tests/rig.py's `wait_for` and `PrivateStack`).

Test plumbing only; imports nothing from meshfs.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ServerView:
    """One user's files straight from Reva's ocdav (basic auth): what the server really holds."""

    def __init__(self, http_url: str, username: str, password: str, timeout: float = 60.0) -> None:
        self.root = f"/remote.php/dav/files/{username}/"
        self.base = http_url.rstrip("/") + self.root
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}"}
        self.timeout = timeout

    def _open(self, method: str, rel: str, data: bytes | None = None, **headers: str) -> Any:
        url = self.base + urllib.parse.quote(rel.strip("/"))
        req = urllib.request.Request(url, data=data, method=method, headers={**self.headers, **headers})
        return urllib.request.urlopen(req, timeout=self.timeout)

    def get(self, rel: str) -> bytes:
        with self._open("GET", rel) as resp:
            data: bytes = resp.read()
            return data

    def sha256(self, rel: str) -> str:
        return hashlib.sha256(self.get(rel)).hexdigest()

    def put(self, rel: str, data: bytes) -> None:
        with self._open("PUT", rel, data, **{"Content-Length": str(len(data))}) as resp:
            assert resp.status in (200, 201, 204), resp.status

    def mkcol(self, rel: str) -> None:
        with self._open("MKCOL", rel) as resp:
            assert resp.status in (200, 201), resp.status

    def delete(self, rel: str) -> None:
        try:
            with self._open("DELETE", rel):
                pass
        except urllib.error.HTTPError as e:
            if e.code != 404:
                raise

    def listdir(self, rel: str) -> list[str]:
        """Names in a folder (PROPFIND depth 1)."""
        body = (
            b'<?xml version="1.0"?><d:propfind xmlns:d="DAV:"><d:prop><d:resourcetype/></d:prop></d:propfind>'
        )
        with self._open(
            "PROPFIND", rel + "/", body, Depth="1", **{"Content-Type": "application/xml"}
        ) as resp:
            tree = ET.fromstring(resp.read())
        me = urllib.parse.unquote(self.root + rel.strip("/") + "/")
        names = []
        for href in tree.iter("{DAV:}href"):
            path = urllib.parse.unquote(href.text or "")
            if path.rstrip("/") != me.rstrip("/"):
                names.append(path.rstrip("/").rsplit("/", 1)[-1])
        return sorted(names)


def rss_kib(pid: int) -> int:
    """Resident set size of a process in KiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


def bounded(fn: Callable[..., T], *args: Any, limit: float) -> tuple[T | BaseException, float]:
    """Run a possibly blocking call (file system through the mount) in a thread: (its value or the
    exception it raised, seconds taken). A call still blocked after `limit` seconds is a hang:
    AssertionError (the thread stays blocked until the mount is torn down)."""
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(fn(*args))
        except BaseException as exc:
            box.append(exc)

    t0 = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    elapsed = time.monotonic() - t0
    if thread.is_alive():
        raise AssertionError(
            f"{getattr(fn, '__name__', fn)}{args!r} still blocked after {limit:g} s (a hang)"
        )
    return box[0], elapsed
