"""Helpers for tests/cs3/: an authenticated client bundle per demo user, sha256 of a file, and a tiny
TCP proxy that can cut connections or die (a data server "killed" mid-transfer).

Test plumbing only; imported by tests/cs3/conftest.py and the tests (module name kept unique).
"""

from __future__ import annotations

import hashlib
import os
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

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


@dataclass
class CuttingProxy:
    """TCP proxy 127.0.0.1:port -> target. `cut_after` bytes of server->client data per connection
    (None = never), then both sides are closed; with `die_on_cut` the listener closes too (the server
    "was killed": later connections are refused). `stop()` closes the listener and every connection."""

    target_port: int
    cut_after: int | None = None
    die_on_cut: bool = False
    blackhole: bool = False  # accept and swallow everything, never answer (a hung server)
    delay: float = 0.0  # pause before relaying each server->client piece (a slow server)
    tls: ssl.SSLContext | None = None  # terminate TLS with this server context (a TLS front end)
    port: int = 0
    connections: int = 0
    cuts: int = 0
    _cancel: trio.CancelScope = field(default_factory=trio.CancelScope)

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self._cancel:
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            self.port = listeners[0].socket.getsockname()[1]
            task_status.started()
            async with trio.open_nursery() as n:
                for lst in listeners:
                    wrapped: trio.abc.Listener[Any] = (
                        lst if self.tls is None else trio.SSLListener(lst, self.tls, https_compatible=True)
                    )
                    n.start_soon(trio.serve_listeners, self._handle, [wrapped])

    async def _handle(self, client: Any) -> None:
        self.connections += 1
        limit = self.cut_after
        if self.blackhole:
            async with client:
                try:
                    while await client.receive_some(1 << 16):
                        pass
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            return
        try:
            server = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        except OSError:
            await client.aclose()
            return
        async with client, server, trio.open_nursery() as n:

            async def up() -> None:
                try:
                    while data := await client.receive_some(1 << 16):
                        await server.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                n.cancel_scope.cancel()

            async def down() -> None:
                sent = 0
                try:
                    while data := await server.receive_some(1 << 16):
                        if self.delay:
                            await trio.sleep(self.delay)
                        if limit is not None and sent + len(data) > limit:
                            await client.send_all(data[: limit - sent])
                            self.cuts += 1
                            if self.die_on_cut:
                                self.stop()
                            break
                        await client.send_all(data)
                        sent += len(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                n.cancel_scope.cancel()

            n.start_soon(up)
            n.start_soon(down)

    def stop(self) -> None:
        self._cancel.cancel()


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
