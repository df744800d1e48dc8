"""Data transfers against the real dev Reva: round trips with sha256, ranged reads into a file at an
offset, preconditions, empty files, tus interrupted and resumed, and a data server cut or killed
mid-transfer (a local TCP proxy) — bounded retries, then a MeshError, nothing hangs."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import trio
from cs3_helpers import CuttingProxy, fd_of, open_client, sha256_file  # type: ignore[import-not-found]

from meshfs.cs3 import DownloadTicket, Secret, Transfer, TusSession
from meshfs.cs3.transfer import READ_CHUNK
from meshfs.errors import (
    AlreadyExists,
    EtagMismatch,
    FailedPrecondition,
    PermissionDenied,
    ServerUnavailable,
    SessionExpired,
    Timeout,
)

pytestmark = pytest.mark.timeout(300)

MiB = 1 << 20


def _via(url: str, port: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"127.0.0.1:{port}"))


@dataclass(frozen=True, slots=True)
class ProxiedDownload:
    src: Path  # the local original
    ticket: DownloadTicket  # straight to the data server
    proxy: CuttingProxy  # in front of the data server
    via: DownloadTicket  # the same ticket, through the proxy


@pytest.fixture
def proxied_download(einstein, workdir, make_file, proxy_factory):  # type: ignore[no-untyped-def]
    """proxied_download(name, size, **CuttingProxy options): uploads `size` random bytes to `name` in
    the workdir and gives a download ticket for it straight and through a proxy started with `options`."""

    async def make(name: str, size: int, **options: Any) -> ProxiedDownload:
        src = make_file(size)
        ref = workdir.child(name)
        with fd_of(src) as f:
            await einstein.transfer.upload(ref, f, size)
        ticket = await einstein.transfer.initiate_download(ref)
        proxy = await proxy_factory(urlsplit(ticket.url).port, **options)
        via = DownloadTicket(_via(ticket.url, proxy.port), ticket.token, ticket.expires_at)
        return ProxiedDownload(src, ticket, proxy, via)

    return make


async def _roundtrip(client, workdir, make_file, tmp_path: Path, size: int) -> None:  # type: ignore[no-untyped-def]
    src = make_file(size)
    ref = workdir.child(f"rt-{size}.bin")
    with fd_of(src) as f:
        res = await client.transfer.upload(ref, f, size)
    info = await client.storage.stat(ref)
    assert info.size == size
    assert res.etag == info.etag and res.file_id == info.id
    dst = tmp_path / f"dst-{size}"
    fd = os.open(dst, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        n = await client.transfer.download(ref, fd)
    finally:
        os.close(fd)
    assert n == size
    assert sha256_file(dst) == sha256_file(src)


@pytest.mark.parametrize("size", [0, 1, 10 * MiB])
async def test_roundtrip(einstein, workdir, make_file, tmp_path, size) -> None:  # type: ignore[no-untyped-def]
    await _roundtrip(einstein, workdir, make_file, tmp_path, size)


@pytest.mark.long
@pytest.mark.timeout(1200)
async def test_roundtrip_1gib(einstein, workdir, make_file, tmp_path) -> None:  # type: ignore[no-untyped-def]
    await _roundtrip(einstein, workdir, make_file, tmp_path, 1024 * MiB)


async def test_ranged_read_into_offset(einstein, workdir, make_file, tmp_path) -> None:  # type: ignore[no-untyped-def]
    size = 3 * MiB + 17
    src = make_file(size)
    data = src.read_bytes()
    ref = workdir.child("ranged.bin")
    with fd_of(src) as f:
        await einstein.transfer.upload(ref, f, size)
    ticket = await einstein.transfer.initiate_download(ref)
    dst = tmp_path / "sparse"
    fd = os.open(dst, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        # same place in the cache file as in the remote file (default fd_offset)
        n = await einstein.transfer.read_range(ticket, fd, offset=MiB + 5, length=100_000)
        assert n == 100_000
        assert os.pread(fd, 100_000, MiB + 5) == data[MiB + 5 : MiB + 5 + 100_000]
        # elsewhere in the file
        n = await einstein.transfer.read_range(ticket, fd, offset=7, length=11, fd_offset=0)
        assert os.pread(fd, 11, 0) == data[7:18] and n == 11
        # a range crossing EOF is short; a range past EOF is empty
        n = await einstein.transfer.read_range(ticket, fd, offset=size - 10, length=1000, fd_offset=0)
        assert n == 10 and os.pread(fd, 10, 0) == data[-10:]
        assert await einstein.transfer.read_range(ticket, fd, offset=size + 5, length=10) == 0
    finally:
        os.close(fd)


async def test_overwrite_preconditions_and_mtime(einstein, workdir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    tr, st = einstein.transfer, einstein.storage
    ref = workdir.child("pre.txt")
    src = tmp_path / "pre"
    src.write_bytes(b"version one")
    with fd_of(src) as f:
        first = await tr.upload(ref, f, 11, if_not_exist=True)
        with pytest.raises(AlreadyExists):
            await tr.upload(ref, f, 11, if_not_exist=True)
        # an etag that is not the current one → EtagMismatch (Reva: CODE_ABORTED "etag mismatch")
        with pytest.raises(EtagMismatch) as exc:
            await tr.upload(ref, f, 11, if_match='"not-the-etag"')
        assert isinstance(exc.value, FailedPrecondition)
        assert (await st.stat(ref)).etag == first.etag  # nothing changed
        mtime_ns = 1_500_000_000_250_000_000
        second = await tr.upload(ref, f, 7, if_match=first.etag, mtime_ns=mtime_ns)
    info = await st.stat(ref)
    assert info.etag == second.etag != first.etag
    assert info.size == 7 and info.mtime_ns == mtime_ns


async def test_empty_upload_truncates_existing(einstein, workdir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    ref = workdir.child("trunc.txt")
    src = tmp_path / "t"
    src.write_bytes(b"abcdef")
    with fd_of(src) as f:
        await einstein.transfer.upload(ref, f, 6)
        res = await einstein.transfer.upload(ref, f, 0)
    info = await einstein.storage.stat(ref)
    assert info.size == 0 and res.etag == info.etag


async def test_upload_onto_directory(einstein, workdir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "x"
    src.write_bytes(b"x")
    with fd_of(src) as f, pytest.raises(FailedPrecondition):
        await einstein.transfer.upload(workdir, f, 1)


async def test_tus_interrupted_and_resumed_by_a_new_process(  # type: ignore[no-untyped-def]
    reva, einstein, workdir, make_file
) -> None:
    size = 9 * MiB + 3
    src = make_file(size)
    ref = workdir.child("tus.bin")
    with fd_of(src) as f:
        session = await einstein.transfer.start_tus(ref, size)
        partial = await einstein.transfer.tus_upload(session, f, chunk_size=2 * MiB, max_bytes=4 * MiB)
    assert isinstance(partial, TusSession) and 0 < partial.offset < size
    journal = partial.to_json()
    assert "x-access-token" not in journal
    # the file is not visible before the upload completes
    assert await einstein.transfer.tus_offset(partial) == partial.offset

    # "after a crash": a new session (new token) resumes from the journal record
    other = await open_client(reva, "einstein")
    try:
        resumed = TusSession.from_json(journal)
        with fd_of(src) as f:
            result = await other.transfer.tus_upload(resumed, f, chunk_size=2 * MiB)
        info = await other.storage.stat(ref)
    finally:
        other.transfer.close()
        await other.gw.aclose()
    assert not isinstance(result, TusSession)
    assert info.size == size and result.etag == info.etag


async def test_tus_survives_cut_connections(einstein, workdir, make_file, proxy_factory, reva) -> None:  # type: ignore[no-untyped-def]
    size = 6 * MiB
    src = make_file(size)
    ref = workdir.child("tus-cut.bin")
    session = await einstein.transfer.start_tus(ref, size)
    # the proxy cuts every connection after 16 KiB of *responses* (so each PATCH's answer is lost
    # at most once per connection); send small chunks through it
    proxy = await proxy_factory(urlsplit(session.url).port, cut_after=0)
    tr = Transfer(einstein.gw, backoff=0.01, backoff_max=0.05, retries=3)
    try:
        cut = TusSession(_via(session.url, proxy.port), session.token, session.length, 0, session.ref)
        with fd_of(src) as f, pytest.raises(ServerUnavailable):
            await tr.tus_upload(cut, f, chunk_size=MiB, resume=False)
        assert proxy.cuts >= 1
        # the server kept what arrived before the cuts; resume directly and finish
        with fd_of(src) as f:
            result = await einstein.transfer.tus_upload(session, f, chunk_size=2 * MiB)
    finally:
        tr.close()
    info = await einstein.storage.stat(ref)
    assert info.size == size and not isinstance(result, TusSession)
    dst = Path(str(src) + ".back")
    fd = os.open(dst, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        await einstein.transfer.download(ref, fd)
    finally:
        os.close(fd)
    assert sha256_file(dst) == sha256_file(src)


async def test_download_resumes_after_cuts(einstein, proxied_download, tmp_path) -> None:  # type: ignore[no-untyped-def]
    size = 4 * MiB + 1
    d = await proxied_download("cut.bin", size, cut_after=MiB + 64 * 1024)
    src, proxy, via = d.src, d.proxy, d.via
    tr = Transfer(einstein.gw, backoff=0.01, backoff_max=0.05, retries=2)
    dst = tmp_path / "cut"
    fd = os.open(dst, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with trio.fail_after(60):
            n = await tr.read_range(via, fd)
    finally:
        os.close(fd)
        tr.close()
    assert proxy.cuts >= 3, "the proxy should have cut the download several times"
    assert n == size and sha256_file(dst) == sha256_file(src)


async def test_ranged_reads_reuse_one_connection_and_a_cut_one_is_not_reused(  # type: ignore[no-untyped-def]
    einstein, proxied_download, tmp_path
) -> None:
    """Bodies are received by http.client straight into our buffer (transfer._body_reader): a body read
    to its end must still give the connection back to the pool (three ranged reads, one connection),
    and a body cut before its Content-Length is an error, never a short success."""
    d = await proxied_download("reuse.bin", 3 * MiB)
    src, proxy, via = d.src, d.proxy, d.via
    tr = Transfer(einstein.gw, retries=0)
    dst = tmp_path / "reuse"
    try:
        with fd_of(dst, write=True) as fd, trio.fail_after(60):
            for i in range(3):
                assert await tr.read_range(via, fd, offset=i * MiB, length=MiB) == MiB
            assert proxy.connections == 1, "each ranged read opened its own connection"
            assert sha256_file(dst) == sha256_file(src)
            proxy.cut_each_after(MiB // 2, "down", "close")
            with pytest.raises(ServerUnavailable, match=r"cut short|failed"):
                await tr.read_range(via, fd, offset=0, length=2 * MiB)
            with pytest.raises(ServerUnavailable, match=r"cut short|failed"):
                await tr.read_range(via, fd)  # no Range: only the Content-Length tells the cut
    finally:
        tr.close()


async def test_download_server_killed(einstein, proxied_download, tmp_path) -> None:  # type: ignore[no-untyped-def]
    d = await proxied_download("killed.bin", 3 * MiB, cut_after=MiB, die_on_cut=True)
    ticket, via = d.ticket, d.via
    tr = Transfer(einstein.gw, backoff=0.01, backoff_max=0.05, retries=3)
    fd = os.open(tmp_path / "k", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with trio.fail_after(60), pytest.raises(ServerUnavailable) as exc:
            await tr.read_range(via, fd, path="killed.bin")
    finally:
        os.close(fd)
        tr.close()
    msg = str(exc.value)
    assert "\n" not in msg and "killed.bin" in msg
    assert ticket.token.reveal() not in msg and einstein.gw._token.reveal() not in msg


async def test_upload_to_unreachable_data_server(einstein, workdir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    session = await einstein.transfer.start_tus(workdir.child("never.bin"), 10)
    with trio.socket.socket() as s:  # a port with nothing listening
        await s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = TusSession(_via(session.url, port), session.token, 10, 0, session.ref)
    src = tmp_path / "n"
    src.write_bytes(b"0123456789")
    tr = Transfer(einstein.gw, backoff=0.01, backoff_max=0.05, retries=2)
    try:
        with fd_of(src) as f, trio.fail_after(30), pytest.raises(ServerUnavailable):
            await tr.tus_upload(dead, f)
    finally:
        tr.close()


def test_hash_helper(tmp_path) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "h"
    p.write_bytes(b"abc")
    assert sha256_file(p) == hashlib.sha256(b"abc").hexdigest()


async def test_hung_data_server_times_out(einstein, workdir, proxy_factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    ref = workdir.child("hung.txt")
    await einstein.storage.touch_file(ref)
    ticket = await einstein.transfer.initiate_download(ref)
    proxy = await proxy_factory(urlsplit(ticket.url).port, blackhole=True)
    via = DownloadTicket(_via(ticket.url, proxy.port), ticket.token, ticket.expires_at)
    tr = Transfer(einstein.gw, read_timeout=0.5, retries=1, backoff=0.01)
    try:
        with fd_of(tmp_path / "h", write=True) as fd, trio.fail_after(30), pytest.raises(Timeout):
            await tr.read_range(via, fd)
    finally:
        tr.close()
    assert proxy.connections == 2  # one try + one retry, then a clear error


async def test_cancelled_download_stops_its_thread(einstein, proxied_download, tmp_path) -> None:  # type: ignore[no-untyped-def]
    size = 8 * MiB
    via = (await proxied_download("slow.bin", size, delay=0.02)).via  # ~3 MB/s
    tr = Transfer(einstein.gw)
    dst = tmp_path / "slow"
    try:
        with fd_of(dst, write=True) as fd:
            with trio.fail_after(10):  # the cancelled call returns at once, not after the download
                with trio.move_on_after(0.3) as scope:
                    await tr.read_range(via, fd)
            assert scope.cancelled_caught
            at_return = dst.stat().st_size
        # the worker thread notices within one chunk and gives its slot back
        with trio.fail_after(20):
            while tr.limiter.borrowed_tokens:
                await trio.sleep(0.01)
        written = dst.stat().st_size
        assert 0 < written < size
        assert written - at_return <= READ_CHUNK  # at most a write already in progress
    finally:
        tr.close()


@pytest.mark.parametrize("sendfile", [True, False])
async def test_both_body_senders(einstein, workdir, make_file, tmp_path, sendfile) -> None:  # type: ignore[no-untyped-def]
    size = 5 * MiB + 1
    src = make_file(size)
    tr = Transfer(einstein.gw, sendfile=sendfile)
    try:
        with fd_of(src) as fd:
            await tr.upload(workdir.child("a.bin"), fd, size)
            session = await tr.start_tus(workdir.child("b.bin"), size)
            await tr.tus_upload(session, fd, chunk_size=2 * MiB)
        for name in ("a.bin", "b.bin"):
            dst = tmp_path / f"{name}.{sendfile}"
            with fd_of(dst, write=True) as fd:
                assert await tr.download(workdir.child(name), fd) == size
            assert sha256_file(dst) == sha256_file(src)
    finally:
        tr.close()


@pytest.mark.parametrize("sendfile", [True, False])
async def test_tus_wrong_offset_is_a_clear_error(einstein, workdir, make_file, sendfile) -> None:  # type: ignore[no-untyped-def]
    """A refusal while the body is still being sent (409 here) is reported as such, not as a
    transport failure retried until the budget runs out."""
    size = 4 * MiB
    src = make_file(size)
    tr = Transfer(einstein.gw, sendfile=sendfile, retries=1, backoff=0.01)
    try:
        session = await tr.start_tus(workdir.child("off.bin"), size)
        wrong = TusSession(session.url, session.token, size, MiB, session.ref)
        with fd_of(src) as fd, trio.fail_after(30), pytest.raises(FailedPrecondition) as exc:
            await tr.tus_upload(wrong, fd, chunk_size=3 * MiB, resume=False)
        assert "HTTP_409" in str(exc.value)
    finally:
        tr.close()


async def test_expired_ticket_and_refused_tokens_recover(einstein, workdir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    tr, gw = einstein.transfer, einstein.gw
    src = tmp_path / "s"
    src.write_bytes(b"0123456789")
    ref = workdir.child("tok.txt")
    with fd_of(src) as fd:
        await tr.upload(ref, fd, 10)
    ticket = await tr.initiate_download(ref)
    dst = tmp_path / "d"
    with fd_of(dst, write=True) as fd:
        # a ticket past its lifetime is renewed before use
        old = DownloadTicket(ticket.url, ticket.token, trio.current_time() - 1, ticket.ref)
        assert await tr.read_range(old, fd, offset=2, length=3) == 3
        # a transfer token the data gateway refuses (HTTP 403) → one new ticket
        refused = DownloadTicket(ticket.url, Secret("not-a-transfer-token"), ticket.expires_at, ticket.ref)
        assert await tr.read_range(refused, fd, offset=0, length=10) == 10
        # ... unless the ticket cannot be renewed (no reference)
        with pytest.raises(PermissionDenied):
            await tr.read_range(DownloadTicket(ticket.url, Secret("x"), ticket.expires_at), fd)
        # an access token refused by HTTP (401) → one new login
        before = gw.auth_count
        gw._token = Secret("garbage.token.value")
        assert await tr.read_range(ticket, fd, offset=0, length=10) == 10
        assert gw.auth_count == before + 1
    assert dst.read_bytes() == b"0123456789"

    with fd_of(src) as fd:
        gw._token = Secret("garbage.token.value")
        gw._verified_at = None
        await tr.upload(ref, fd, 10)  # the gRPC side notices (InitiateFileUpload) and logs in again
        session = await tr.start_tus(workdir.child("tus-tok.bin"), 10)
        gw._token = Secret("garbage.token.value")
        assert await tr.tus_offset(session) == 0  # HTTP 401 → new login
        dead = TusSession(session.url, Secret("expired-transfer-token"), 10, 0, session.ref)
        with pytest.raises(SessionExpired, match="start a new upload"):
            await tr.tus_offset(dead)
        with pytest.raises(SessionExpired):
            await tr.tus_upload(dead, fd, resume=False)


async def test_tus_etag_rechecked_at_the_end(einstein, workdir, make_file, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Someone writes between our InitiateFileUpload (if_match ok then) and our last PATCH: Reva
    answers 412 at the end; that is an EtagMismatch (a conflict), and their version stays."""
    size = 3 * MiB
    src = make_file(size)
    ref = workdir.child("race.bin")
    other = tmp_path / "other"
    other.write_bytes(b"their version")
    with fd_of(src) as fd:
        first = await einstein.transfer.upload(ref, fd, size)
        session = await einstein.transfer.start_tus(ref, size, if_match=first.etag)
        assert TusSession.from_json(session.to_json()).if_match == first.etag
        with fd_of(other) as ofd:
            theirs = await einstein.transfer.upload(ref, ofd, 13)
        with pytest.raises(EtagMismatch):
            await einstein.transfer.tus_upload(session, fd, chunk_size=2 * MiB)
    info = await einstein.storage.stat(ref)
    assert info.size == 13 and info.etag == theirs.etag
