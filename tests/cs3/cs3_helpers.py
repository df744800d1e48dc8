"""Helpers for tests/cs3/: an authenticated client bundle per demo user, sha256 of a file, and a TCP
proxy that can cut connections or die (a data server "killed" mid-transfer), built on tests/faultproxy.py.

Test plumbing only; imported by tests/cs3/conftest.py and the tests (module name kept unique).
"""

from __future__ import annotations

import hashlib
import os
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from faultproxy import CHUNK, FaultProxy

from meshfs.cs3 import BasicCredentials, Gateway, Ref, Secret, Shares, Storage, Transfer


@dataclass
class Client:
    gw: Gateway
    storage: Storage
    transfer: Transfer
    shares: Shares
    home: Ref


async def open_client(reva, username: str, **kw: object) -> Client:  # type: ignore[no-untyped-def]
    user = reva.user(username)
    gw = Gateway(reva.gateway, BasicCredentials(user.username, Secret(user.password)), **kw)  # type: ignore[arg-type]
    await gw.open()
    storage = Storage(gw)
    return Client(gw, storage, Transfer(gw), Shares(gw), await storage.get_home())


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class CuttingProxy(FaultProxy):
    """The shared fault proxy (tests/faultproxy.py) with this suite's options: `cut_after` bytes of
    server->client data per connection (None = never), then both sides are closed; with `die_on_cut` the
    listener closes too (the server "was killed": later connections are refused); `blackhole`: a hung
    server (connections accepted, nothing ever answered); `delay`: a slow server (seconds per 64 KiB
    piece, applied as a rate cap); `tls`: a TLS front end. `stop()` closes the listener and every
    connection; `port`, `connections`, `cuts` as in FaultProxy."""

    def __init__(
        self,
        target_port: int,
        cut_after: int | None = None,
        die_on_cut: bool = False,
        blackhole: bool = False,
        delay: float = 0.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(target_port, tls=tls, name="cs3")
        if cut_after is not None:
            self.cut_each_after(cut_after, "down", "close")
        self.stop_on_cut = die_on_cut
        if blackhole:
            self.set("blackhole")
        if delay:
            self.set(rate_down=CHUNK / delay)


@contextmanager
def fd_of(path: Path, *, write: bool = False) -> Iterator[int]:
    """A raw descriptor on `path` (read-only, or read-write created/truncated), closed on exit."""
    flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC if write else os.O_RDONLY
    fd = os.open(path, flags, 0o600)
    try:
        yield fd
    finally:
        os.close(fd)


def make_tls_files(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for "localhost" and its key (openssl CLI); returns (cert, key)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key
