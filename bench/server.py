"""The dev Reva as seen by the benchmarks: starting it through revactl (own instance), its WebDAV
endpoint (setup, cleanup, durability polls), its process counters, and data-gateway tickets for the
raw curl limit.

Owns: revactl calls, plain WebDAV requests (stdlib http.client), CS3 tickets for curl.
Must not import: meshfs other than meshfs.cs3's public client (for the tickets).
"""

from __future__ import annotations

import base64
import os
import re
import time
import urllib.parse
from dataclasses import dataclass
from http.client import HTTPConnection
from pathlib import Path

from .sysutil import BenchError, log, run

REPO = Path(__file__).resolve().parent.parent
REVACTL = REPO / "dev" / "reva" / "revactl"
USER, PASSWORD = "einstein", "relativity"
PROPFIND_LENGTH = (
    b'<?xml version="1.0"?><d:propfind xmlns:d="DAV:"><d:prop><d:getcontentlength/></d:prop></d:propfind>'
)


@dataclass(frozen=True, slots=True)
class Reva:
    gateway: str  # host:port (gRPC)
    http: str  # http://host:port (data gateway + ocdav)
    webdav: str  # http://host:port/remote.php/webdav/
    var_dir: Path
    env: dict[str, str]

    @property
    def pid(self) -> int:
        return int((self.var_dir / "revad.pid").read_text().strip())

    # -- WebDAV ------------------------------------------------------------------------------------

    def _conn(self) -> HTTPConnection:
        u = urllib.parse.urlsplit(self.http)
        return HTTPConnection(u.hostname or "127.0.0.1", u.port or 80, timeout=120)

    def _request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        h = {"Authorization": f"Basic {auth}", **(headers or {})}
        c = self._conn()
        try:
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def dav_path(self, rel: str) -> str:
        return urllib.parse.urlsplit(self.webdav).path + urllib.parse.quote(rel.strip("/"))

    def size(self, rel: str) -> int | None:
        """Size of a file on the server (PROPFIND Depth 0), None when it does not exist."""
        body = PROPFIND_LENGTH
        st, data = self._request("PROPFIND", self.dav_path(rel), body, {"Depth": "0"})
        if st == 404:
            return None
        if st != 207:
            raise BenchError(f"PROPFIND {rel}: HTTP {st}")
        m = re.search(rb"getcontentlength>(\d+)<", data)
        return int(m.group(1)) if m else None

    def count(self, rel: str) -> int | None:
        """Number of entries of a directory on the server, None when it does not exist."""
        st, data = self._request("PROPFIND", self.dav_path(rel) + "/", b"", {"Depth": "1"})
        if st == 404:
            return None
        if st != 207:
            raise BenchError(f"PROPFIND {rel}: HTTP {st}")
        return data.count(b"<d:response>") - 1

    def mkcol(self, rel: str) -> None:
        st, _ = self._request("MKCOL", self.dav_path(rel))
        if st not in (201, 405):
            raise BenchError(f"MKCOL {rel}: HTTP {st}")

    def delete(self, rel: str) -> None:
        st, _ = self._request("DELETE", self.dav_path(rel))
        if st not in (204, 404):
            raise BenchError(f"DELETE {rel}: HTTP {st}")

    def purge_trash(self) -> None:
        """Empty einstein's trash so deleted benchmark files do not fill the disk."""
        try:
            st, _ = self._request("DELETE", f"/remote.php/dav/trash-bin/{USER}/")
        except OSError as e:  # a big trash takes Reva long; it goes on purging without us
            log(f"purging the trash: {e}")
            return
        if st not in (204, 404):
            log(f"could not purge the trash: HTTP {st}")

    def put_file(self, rel: str, local: Path) -> None:
        url = self.webdav + urllib.parse.quote(rel.strip("/"))
        run(["curl", "-sS", "-f", "-u", f"{USER}:{PASSWORD}", "-T", str(local), url], timeout=1800)


def start(instance: str, port_offset: int) -> Reva:
    env = dict(os.environ, REVA_INSTANCE=instance, REVA_PORT_OFFSET=str(port_offset))
    if not (REPO / ".cache" / "bin" / "revad").exists():
        log("building the dev Reva (revactl build)")
        run([str(REVACTL), "build"], timeout=1800, env=env)
    run([str(REVACTL), "up"], timeout=180, env=env)
    out = run([str(REVACTL), "env"], timeout=30, env=env).out
    kv = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return Reva(
        gateway=kv["REVA_GATEWAY"],
        http=kv["REVA_HTTP_URL"],
        webdav=kv["REVA_WEBDAV_URL"],
        var_dir=Path(kv["REVA_VAR_DIR"]),
        env=env,
    )


def stop(reva: Reva) -> None:
    run([str(REVACTL), "down"], timeout=60, env=reva.env, check=False)


# -- data gateway tickets for the curl limit -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ticket:
    url: str
    headers: tuple[str, ...]  # curl -H arguments
    seconds: float  # time the CS3 calls took (login excluded)


def _tickets(reva: Reva, rel: str, upload_length: int | None, stat_first: bool) -> Ticket:
    import trio

    from meshfs.cs3 import BasicCredentials, Gateway, Ref, Secret, Storage, Transfer

    async def go() -> Ticket:
        async with Gateway(reva.gateway, BasicCredentials(USER, Secret(PASSWORD)), tls=False) as gw:
            storage, transfer = Storage(gw), Transfer(gw)
            home = await storage.get_home()
            ref = Ref(path=f"{home.path}/{rel.strip('/')}")
            token = (await gw.access_token()).reveal()
            t0 = time.perf_counter()
            if upload_length is None:
                if stat_first:
                    await storage.stat(ref)
                t = await transfer.initiate_download(ref)
                url, xfer = t.url, t.token.reveal()
            else:
                # no public "initiate only" call exists in meshfs.cs3; the private one is the same RPC
                protos = await transfer.initiate_upload(
                    ref, upload_length, if_match=None, if_not_exist=False, lock_id=None, mtime_ns=None
                )
                url, sec = protos["simple"]
                xfer = sec.reveal()
            dt = time.perf_counter() - t0
            transfer.close()
            return Ticket(url, ("-H", f"x-access-token: {token}", "-H", f"X-Reva-Transfer: {xfer}"), dt)

    return trio.run(go)


def download_ticket(reva: Reva, rel: str, *, stat_first: bool = False) -> Ticket:
    return _tickets(reva, rel, None, stat_first)


def upload_ticket(reva: Reva, rel: str, length: int) -> Ticket:
    return _tickets(reva, rel, length, False)
