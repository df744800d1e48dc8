"""Helpers of tests/hostile/ (module name kept unique: suites import helpers by plain name): the server's
view of einstein's files over WebDAV (no meshfs involved), the daemon's RSS, bounded waits.

Test plumbing only; imports nothing from meshfs.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shlex
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
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


def wait_until(what: Callable[[], T], timeout: float, message: str, interval: float = 0.1) -> T:
    """Poll what() until it returns a truthy value or `timeout` seconds passed (then AssertionError).
    Exceptions from what() count as "not yet" and the last one is reported."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = what()
            if value:
                return value
            last = value
        except Exception as exc:  # a not-yet answer, e.g. EIO while the mount recovers
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"{message}: not within {timeout:g} s (last: {last!r})")
        time.sleep(interval)


# ---- a private Reva stack behind fault proxies ----------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
REVACTL = REPO / "dev" / "reva" / "revactl"
#: revactl's default gateway and HTTP (ocdav + /data) ports; an instance adds REVA_PORT_OFFSET
GATEWAY_PORT, HTTP_PORT = 19000, 19001


@dataclass
class PrivateStack:
    """A revactl instance of ours (REVA_INSTANCE / REVA_PORT_OFFSET + extra REVA_* settings)."""

    instance: str
    offset: int
    settings: dict[str, str] = field(default_factory=dict)
    env_vars: dict[str, str] = field(default_factory=dict)

    def revactl(self, *args: str, timeout: float = 180) -> str:
        env = {**os.environ, "REVA_INSTANCE": self.instance, "REVA_PORT_OFFSET": str(self.offset)}
        proc = subprocess.run(
            [os.fspath(REVACTL), *args], cwd=REPO, env={**env, **self.settings},
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise AssertionError(
                f"revactl {' '.join(args)} ({self.instance}) failed: {proc.stdout}{proc.stderr}"
            )
        return proc.stdout

    def up(self) -> None:
        self.revactl("up")
        for line in self.revactl("env", timeout=30).splitlines():
            key, sep, raw = line.partition("=")
            if sep:
                values = shlex.split(raw)
                self.env_vars[key] = values[0] if values else ""

    @property
    def gateway_port(self) -> int:
        return GATEWAY_PORT + self.offset

    @property
    def http_port(self) -> int:
        return HTTP_PORT + self.offset


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
