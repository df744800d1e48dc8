"""The CS3 data plane: ranged downloads into a file, simple PUT and tus resumable uploads from a file.

Owns: InitiateFileDownload/InitiateFileUpload and the HTTP transfers to the data gateway (urllib3, one
connection pool shared by the worker threads). Data goes straight between the network and a file
descriptor at an offset (os.pread/os.pwrite of bounded chunks); a whole file is never held in memory.
Must not import: vfs/, fuse/, cache/, httpx. Protobuf and urllib3 stay inside meshfs/cs3/.

Worker threads work on a dup() of the caller's descriptor, so a cancelled transfer (abandoned thread,
stopped at its next step) can never write into a descriptor number the caller has since reused, and a
download checks for cancellation between receiving a chunk and writing it, so nothing lands in the
file after the cancelled call returned (short of the microseconds of one pwrite in progress).
"""

from __future__ import annotations

import http.client
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial
from typing import Any, TypeVar

import trio
import urllib3
import urllib3.connection
import urllib3.util
from cs3.storage.provider.v1beta1 import provider_api_pb2 as pb
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import ReadTimeoutError

from meshfs.cs3.retry import RetryPolicy, StallWatch
from meshfs.errors import (
    HTTP_FALLBACK,
    HTTP_STATUS_ERRORS,
    Aborted,
    EtagMismatch,
    FailedPrecondition,
    InvalidArgument,
    MeshError,
    PermissionDenied,
    ServerError,
    ServerUnavailable,
    SessionExpired,
    Timeout,
    Unauthenticated,
)

from ._convert import opaque, ref_to_pb, rid_from_pb
from .gateway import Gateway
from .storage import mtime_value
from .types import DownloadTicket, Ref, ResourceId, Secret, TusSession, UploadResult

log = logging.getLogger("meshfs.cs3.transfer")

T = TypeVar("T")

CHUNK = 1 << 20  # file -> socket copy unit (uploads)
SENDFILE_MIN = 1 << 20  # smaller bodies go through the pool (a dedicated connection costs a connect)
SENDFILE_SLICE = 16 << 20  # sendfile() call size; the stop flag is checked between slices
READ_CHUNK = 256 << 10  # socket -> file copy unit (a cut connection loses at most one partial unit)
TUS_CHUNK = 64 << 20  # default size of one tus PATCH


class _Stopped(Exception):
    """The awaiting task was cancelled; the worker thread stops at the next chunk."""


class _Transient(Exception):
    """A transport failure worth retrying; carries the MeshError to raise when retries run out."""

    def __init__(self, error: MeshError, progress: int = 0) -> None:
        super().__init__(str(error))
        self.error = error
        self.progress = progress


def _http_error(status: int, *, op: str, path: str, reason: str = "") -> MeshError:
    cls = HTTP_STATUS_ERRORS.get(status) or HTTP_FALLBACK.get(status // 100, ServerError)
    return cls(f"HTTP {status}{' ' + reason if reason else ''}", op=op, path=path, code=f"HTTP_{status}")


def _transport_error(e: Exception, *, op: str, path: str) -> MeshError:
    if isinstance(e, ReadTimeoutError | TimeoutError):
        return Timeout("data server did not answer in time", op=op, path=path)
    return ServerUnavailable(f"data transfer failed: {type(e).__name__}", op=op, path=path)


def _headers(token: Secret, transfer: Secret) -> dict[str, str]:
    return {"x-access-token": token.reveal(), "X-Reva-Transfer": transfer.reveal()}


class Transfer:
    """Downloads and uploads through the data gateway.

    http_threads: worker threads (and pooled connections per host) for transfers.
    connect_timeout / read_timeout: seconds (read_timeout bounds a stalled server).
    retries: extra attempts on transport failures (connection refused/reset, timeouts, 502/503/504);
    downloads resume where they stopped, tus uploads ask the server's offset (HEAD) and go on,
    simple uploads restart from scratch.
    sendfile: send upload bodies of plain-HTTP transfers with os.sendfile (kernel copy from the file
    to the socket, on a dedicated connection) instead of read()+send() through the pool.
    probe_timeout: a read attempt *probes* (waits at most this long, capped at read_timeout, to
    connect and for each byte, and is not retried if it gets nothing) in two cases, both only with
    the gateway's unavailable_timeout set: as the last chance of a read whose attempt timed out
    after no progress for unavailable_timeout (a hung connection is not yet a dead server), and
    for unavailable_timeout seconds after such a stall (`stalls`, a StallWatch), so that a read(2)
    the kernel splits into several READs fails after one stall plus a short probe per READ, not
    a stall per READ. Any progress ends it.
    """

    def __init__(
        self,
        gateway: Gateway,
        *,
        http_threads: int = 8,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        retries: int = 4,
        backoff: float = 0.2,
        backoff_max: float = 5.0,
        ticket_lifetime: float = 60.0,
        ca_file: str | None = None,
        sendfile: bool = True,
        probe_timeout: float = 2.0,
    ) -> None:
        if http_threads < 1:
            raise ValueError(f"http_threads must be ≥ 1, got {http_threads}")
        if probe_timeout <= 0:
            raise ValueError(f"probe_timeout must be > 0, got {probe_timeout}")
        self.gw = gateway
        self.limiter = trio.CapacityLimiter(http_threads)
        self.retry = RetryPolicy(retries, backoff, backoff_max)
        self.ticket_lifetime = ticket_lifetime
        self.sendfile = sendfile
        self._read_timeout = read_timeout
        self._connect_timeout = connect_timeout
        self.probe_timeout = probe_timeout
        self.stalls = StallWatch()  # the data server's last stall: reads shortly after it probe
        kw: dict[str, Any] = {}
        if ca_file is not None:
            kw["ca_certs"] = ca_file
        self.pool = urllib3.PoolManager(
            num_pools=4,
            maxsize=http_threads,
            block=False,
            retries=False,
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            blocksize=CHUNK,
            **kw,
        )

    def close(self) -> None:
        self.pool.clear()

    # -- plumbing ---------------------------------------------------------------------------------

    async def _in_thread(self, fn: Callable[[threading.Event], T]) -> T:
        """Run fn(stop) in a worker thread. On cancellation, `stop` is set and the task returns at once."""
        stop = threading.Event()
        try:
            return await trio.to_thread.run_sync(fn, stop, limiter=self.limiter, abandon_on_cancel=True)
        finally:
            stop.set()

    async def _pause(self, attempt: int) -> None:
        await trio.sleep(self.retry.delay(attempt))

    # -- download ---------------------------------------------------------------------------------

    async def initiate_download(self, ref: Ref, *, lock_id: str | None = None) -> DownloadTicket:
        """Ask the gateway where to GET the file; the ticket is reusable for several ranged reads."""
        req = pb.InitiateFileDownloadRequest(ref=ref_to_pb(ref), lock_id=lock_id or "")
        res = await self.gw.call("InitiateFileDownload", req, op="download", path=str(ref))
        protos = {p.protocol: p for p in res.protocols}
        p = protos.get("simple") or protos.get("spaces") or (res.protocols[0] if res.protocols else None)
        if p is None:
            raise ServerError("no download protocol offered", op="download", path=str(ref))
        return DownloadTicket(
            p.download_endpoint,
            Secret(p.token),
            trio.current_time() + self.ticket_lifetime,
            ref,
            lock_id,
        )

    async def fresh_ticket(self, ticket: DownloadTicket) -> DownloadTicket:
        """`ticket` if still valid, else a new one for the same reference."""
        if ticket.ref is None or trio.current_time() < ticket.expires_at:
            return ticket
        return await self.initiate_download(ticket.ref, lock_id=ticket.lock_id)

    async def read_range(
        self,
        ticket: DownloadTicket,
        fd: int,
        *,
        offset: int = 0,
        length: int | None = None,
        fd_offset: int | None = None,
        path: str = "",
    ) -> int:
        """GET bytes [offset, offset+length) (to EOF if length is None) and pwrite them to `fd` at
        `fd_offset` (default: `offset`). Returns the number of bytes written (short at EOF).
        Transport failures are retried, resuming after the bytes already written. An expired or
        refused transfer token (HTTP 403) gets a new ticket once; a refused access token (401) a
        new login once."""
        path = path or str(ticket.ref or "")
        if offset < 0 or (length is not None and length < 0):
            raise InvalidArgument(f"bad range {offset}+{length}", op="read", path=path)
        if length == 0:
            return 0
        base = offset if fd_offset is None else fd_offset
        done = 0
        attempt = 0
        renewed = reauthed = False
        limit = self.gw.unavailable_timeout  # the gateway's bound for a dead server
        progress_at = trio.current_time()  # a read without progress for `limit` fails
        last_chance = False  # the next attempt is the one probe after a stall ended by a timeout
        while True:
            ticket = await self.fresh_ticket(ticket)
            token = await self.gw.access_token()
            want = None if length is None else length - done
            # a *probe* waits only probe_timeout for each byte, and one that gets nothing ends the
            # read: right after a stall of the data server (another read's, or our own), and as the
            # last chance of a read that stalled on one connection (a hung connection is not yet a
            # dead server; a fresh one to a live server answers at once)
            suspect = self.stalls.suspect(trio.current_time(), limit)
            probe = suspect or last_chance
            waits = min(self.probe_timeout, self._read_timeout) if probe else self._read_timeout
            try:
                get = partial(
                    self._get,  # called as get(stop) in a worker thread
                    ticket,
                    token,
                    fd,
                    offset + done,
                    want,
                    base + done,
                    path=path,
                    read_timeout=waits if probe else None,
                )
                done += await self._in_thread(get)
                self.stalls.progressed()
                return done
            except Unauthenticated:
                self.stalls.progressed()  # an answer: the server is alive
                last_chance = False
                if reauthed:
                    raise
                reauthed = True
                await self.gw.authenticate(stale=token)
            except PermissionDenied:
                self.stalls.progressed()
                last_chance = False
                if renewed or ticket.ref is None:
                    raise
                renewed = True
                ticket = await self.initiate_download(ticket.ref, lock_id=ticket.lock_id)
            except _Transient as t:
                now = trio.current_time()
                done += t.progress
                timed_out = isinstance(t.error, Timeout)
                if t.progress:
                    attempt = 0  # the retry budget counts failures in a row without progress
                    # a timeout means the last byte came at least `waits` seconds ago
                    progress_at = max(progress_at, now - waits) if timed_out else now
                    self.stalls.progressed()
                last_chance = False
                stalled = limit is not None and now - progress_at >= limit
                if stalled and timed_out and not probe and self.retry.may_retry(attempt):
                    last_chance = True  # one probe on a fresh connection before giving up
                elif stalled or (probe and not t.progress):
                    # only a real stall (re)opens the window: a probe of a suspect server that
                    # got nothing for less than `limit` does not extend it, so a server merely
                    # slow to answer is not turned away for longer
                    if stalled:
                        self.stalls.stalled(now)
                    raise t.error from None
                elif not self.retry.may_retry(attempt):
                    raise t.error from None
                log.debug("read %s: %s, retry %d", path, t.error, attempt + 1)
                await self._pause(attempt)
                attempt += 1

    def _get(
        self,
        ticket: DownloadTicket,
        token: Secret,
        fd: int,
        start: int,
        want: int | None,
        at: int,
        stop: threading.Event,
        path: str,
        read_timeout: float | None = None,
    ) -> int:
        """One GET of [start, start+want) into `fd` at `at` (run in a worker thread): bytes written.
        read_timeout: seconds to connect and without a byte before giving up (None: the pool's
        connect_timeout and read_timeout).
        Raises _Transient (with the bytes written before the failure) on transport failures."""
        headers = _headers(token, ticket.token)
        kw: dict[str, Any] = {}
        if read_timeout is not None:
            connect = min(self._connect_timeout, read_timeout)
            kw["timeout"] = urllib3.Timeout(connect=connect, read=read_timeout)
        if start or want is not None:
            headers["Range"] = f"bytes={start}-" + ("" if want is None else str(start + want - 1))
        written = 0
        own = os.dup(fd)
        try:
            try:
                resp = self.pool.request(
                    "GET", ticket.url, headers=headers, preload_content=False, redirect=False, **kw
                )
                if resp.status == 416 and "Range" in headers and not resp.headers.get("Content-Range"):
                    # a server that cannot serve ranges at all (Reva's OCM received storage answers
                    # every Range with a bare 416): take the whole body and keep the slice asked for
                    resp.drain_conn()
                    del headers["Range"]
                    resp = self.pool.request(
                        "GET", ticket.url, headers=headers, preload_content=False, redirect=False, **kw
                    )
            except Urllib3Error as e:
                raise _Transient(_transport_error(e, op="read", path=path)) from None
            try:
                if resp.status == 416:
                    return 0  # at or past EOF
                if resp.status not in (200, 206):
                    err = _http_error(resp.status, op="read", path=path)
                    if resp.status in (502, 503, 504):
                        raise _Transient(err)
                    raise err
                skip = start if resp.status == 200 else 0  # server ignored Range
                buf = bytearray(READ_CHUNK)
                view = memoryview(buf)
                readinto = _body_reader(resp)
                while want is None or written < want:
                    if stop.is_set():
                        raise _Stopped
                    try:
                        n = readinto(buf)
                    except (OSError, http.client.HTTPException) as e:  # socket errors, straight
                        raise _Transient(_transport_error(e, op="read", path=path), written) from None
                    if stop.is_set():  # cancelled while we waited for the network: write nothing more
                        raise _Stopped
                    if not n:
                        if _cut_short(resp):  # http.client ends a cut body quietly
                            raise _Transient(
                                ServerUnavailable("download cut short", op="read", path=path), written
                            )
                        break
                    chunk = view[:n]
                    if skip:
                        cut = min(skip, n)
                        skip -= cut
                        chunk = chunk[cut:]
                    if want is not None:
                        chunk = chunk[: want - written]
                    pos = 0
                    while pos < len(chunk):
                        pos += os.pwrite(own, chunk[pos:], at + written + pos)
                    written += len(chunk)
                if want is not None and written < want and resp.status == 206:
                    # a Content-Range shorter than asked is EOF; a cut connection is not
                    total = resp.headers.get("Content-Range", "").rpartition("/")[2]
                    if not total.isdigit() or start + written < int(total):
                        raise _Transient(
                            ServerUnavailable("download cut short", op="read", path=path), written
                        )
                return written
            except Urllib3Error as e:
                raise _Transient(_transport_error(e, op="read", path=path), written) from None
            finally:
                _done_with(resp)
        finally:
            os.close(own)

    async def download(
        self,
        ref: Ref,
        fd: int,
        *,
        offset: int = 0,
        length: int | None = None,
        fd_offset: int | None = None,
        lock_id: str | None = None,
    ) -> int:
        """initiate_download + read_range in one go. Returns bytes written."""
        ticket = await self.initiate_download(ref, lock_id=lock_id)
        return await self.read_range(
            ticket, fd, offset=offset, length=length, fd_offset=fd_offset, path=str(ref)
        )

    # -- upload -----------------------------------------------------------------------------------

    async def initiate_upload(
        self,
        ref: Ref,
        length: int,
        *,
        if_match: str | None,
        if_not_exist: bool,
        lock_id: str | None,
        mtime_ns: int | None,
    ) -> dict[str, tuple[str, Secret]]:
        entries = {"Upload-Length": str(length)}  # ALWAYS: without it Reva truncates the file to 0
        if mtime_ns is not None:
            entries["X-OC-Mtime"] = mtime_value(mtime_ns)
        # if_not_exist / if_match / if_unmodified_since are a proto *oneof*: set at most one of them
        # (setting if_not_exist=False after if_match silently clears if_match)
        if if_match and if_not_exist:
            raise InvalidArgument("if_match and if_not_exist exclude each other", op="upload", path=str(ref))
        req = pb.InitiateFileUploadRequest(opaque=opaque(entries), ref=ref_to_pb(ref), lock_id=lock_id or "")
        if if_match:
            req.if_match = if_match
        elif if_not_exist:
            req.if_not_exist = True
        try:
            res = await self.gw.call("InitiateFileUpload", req, op="upload", path=str(ref), idempotent=False)
        except (Aborted, FailedPrecondition) as e:
            # Reva answers a wrong if_match etag with ABORTED "etag mismatch"
            if if_match and "etag" in e.message.lower():
                raise EtagMismatch(e.message, op=e.op, path=e.path, code=e.code) from None
            raise
        except ServerError as e:
            # Reva wraps a wrong/unneeded lock id as INTERNAL "error getting upload id: error: aborted: ..."
            if "aborted: " in e.message:
                raise Aborted(e.message, op=e.op, path=e.path, code=e.code) from None
            raise
        return {p.protocol: (p.upload_endpoint, Secret(p.token)) for p in res.protocols}

    async def upload(
        self,
        ref: Ref,
        fd: int,
        length: int,
        *,
        if_match: str | None = None,
        if_not_exist: bool = False,
        lock_id: str | None = None,
        mtime_ns: int | None = None,
    ) -> UploadResult:
        """Upload `length` bytes of `fd` (from offset 0) as the whole new content of `ref`, one PUT.

        if_match: the etag our copy is based on (EtagMismatch when the remote moved on);
        if_not_exist: create only (AlreadyExists); lock_id: the CS3 lock we hold. Empty files need no
        PUT. Transport failures restart the upload (new session), up to `retries` times."""
        path = str(ref)
        attempt = 0
        renewed = reauthed = False
        while True:
            protos = await self.initiate_upload(
                ref, length, if_match=if_match, if_not_exist=if_not_exist, lock_id=lock_id, mtime_ns=mtime_ns
            )
            if length == 0:
                # InitiateFileUpload with Upload-Length 0 already created/truncated the file (a 0-byte
                # PUT would answer 400); report its new etag and id
                info = await self.gw.call("Stat", pb.StatRequest(ref=ref_to_pb(ref)), op="upload", path=path)
                return UploadResult(info.info.etag, rid_from_pb(info.info.id))
            if "simple" not in protos:
                raise ServerError(f"no simple upload offered ({', '.join(protos)})", op="upload", path=path)
            url, transfer = protos["simple"]
            token = await self.gw.access_token()

            def work(
                stop: threading.Event, url: str = url, transfer: Secret = transfer, token: Secret = token
            ) -> UploadResult:
                return self._put(url, token, transfer, fd, length, stop, path)

            try:
                return await self._in_thread(work)
            except FailedPrecondition as e:
                raise _etag_mismatch(e) if if_match else e from None
            except Unauthenticated:  # HTTP 401: our access token was refused
                if reauthed:
                    raise
                reauthed = True
                await self.gw.authenticate(stale=token)
            except PermissionDenied:  # HTTP 403: the transfer token expired or was refused
                if renewed:
                    raise
                renewed = True
            except _Transient as t:
                if not self.retry.may_retry(attempt):
                    raise t.error from None
                log.debug("upload %s: %s, retry %d", path, t.error, attempt + 1)
                await self._pause(attempt)
                attempt += 1

    def _body(self, fd: int, start: int, end: int, stop: threading.Event) -> Iterator[bytes]:
        pos = start
        while pos < end:
            if stop.is_set():
                raise _Stopped
            chunk = os.pread(fd, min(CHUNK, end - pos), pos)
            if not chunk:
                raise MeshError(f"local file shorter than {end} bytes", op="upload")
            pos += len(chunk)
            yield chunk

    def _send_body(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        fd: int,
        start: int,
        size: int,
        stop: threading.Event,
        path: str,
    ) -> tuple[int, Any]:
        """Send `size` bytes of `fd` from `start` as the body of one request; (status, headers).
        Raises _Transient on transport failures. `fd` is the worker's own descriptor."""
        headers = {**headers, "Content-Length": str(size)}
        if not (self.sendfile and size >= SENDFILE_MIN and url.startswith("http://")):
            try:
                resp = self.pool.request(
                    method,
                    url,
                    body=self._body(fd, start, start + size, stop),
                    headers=headers,
                    redirect=False,
                    chunked=False,
                )
            except Urllib3Error as e:
                raise _Transient(_transport_error(e, op="upload", path=path)) from None
            return resp.status, resp.headers
        u = urllib3.util.parse_url(url)
        conn = urllib3.connection.HTTPConnection(u.host or "", u.port or 80, timeout=self._read_timeout)
        try:
            conn.request(method, u.request_uri, body=None, headers=headers)  # sends the headers only
            sock = conn.sock
            assert sock is not None
            try:
                with open(fd, "rb", buffering=0, closefd=False) as f:
                    pos, end = start, start + size
                    while pos < end:
                        if stop.is_set():
                            raise _Stopped
                        sent = sock.sendfile(f, pos, min(SENDFILE_SLICE, end - pos))
                        if not sent:
                            raise MeshError(f"local file shorter than {end} bytes", op="upload", path=path)
                        pos += sent
            except OSError as e:
                # the server may have answered early (403/412/507) and closed: salvage its answer
                try:
                    early = conn.getresponse()
                    early.read()
                except (OSError, http.client.HTTPException):
                    raise e from None
                if early.status < 400:
                    raise
                return early.status, early.headers
            resp = conn.getresponse()
            resp.read()
            return resp.status, resp.headers
        except (Urllib3Error, OSError, http.client.HTTPException) as e:
            raise _Transient(_transport_error(e, op="upload", path=path)) from None
        finally:
            conn.close()

    def _put(
        self,
        url: str,
        token: Secret,
        transfer: Secret,
        fd: int,
        length: int,
        stop: threading.Event,
        path: str,
    ) -> UploadResult:
        headers = _headers(token, transfer)
        headers["Content-Type"] = "application/octet-stream"
        own = os.dup(fd)
        try:
            status, rheaders = self._send_body("PUT", url, headers, own, 0, length, stop, path)
            if status not in (200, 201, 204):
                err = _http_error(status, op="upload", path=path)
                if status in (502, 503, 504):
                    raise _Transient(err)
                raise err
            return _upload_result(rheaders)
        finally:
            os.close(own)

    # -- tus --------------------------------------------------------------------------------------

    async def start_tus(
        self,
        ref: Ref,
        length: int,
        *,
        if_match: str | None = None,
        if_not_exist: bool = False,
        lock_id: str | None = None,
        mtime_ns: int | None = None,
    ) -> TusSession:
        """Open a resumable upload of `length` bytes; store `session.to_json()` to resume after a crash."""
        protos = await self.initiate_upload(
            ref, length, if_match=if_match, if_not_exist=if_not_exist, lock_id=lock_id, mtime_ns=mtime_ns
        )
        if "tus" not in protos:
            raise ServerError(f"no tus upload offered ({', '.join(protos)})", op="upload", path=str(ref))
        url, transfer = protos["tus"]
        return TusSession(url, transfer, length, 0, str(ref), if_match or "")

    async def tus_offset(self, session: TusSession) -> int:
        """How many bytes the server has (HEAD). SessionExpired when the session cannot go on."""
        reauthed = False
        attempt = 0
        while True:
            token = await self.gw.access_token()
            try:
                return await self._in_thread(partial(self._head, session, token))
            except Unauthenticated:
                if reauthed:
                    raise
                reauthed = True
                await self.gw.authenticate(stale=token)
            except _Transient as t:
                if not self.retry.may_retry(attempt):
                    raise t.error from None
                await self._pause(attempt)
                attempt += 1

    def _head(self, session: TusSession, token: Secret, stop: threading.Event) -> int:
        headers = _headers(token, session.token)
        headers["Tus-Resumable"] = "1.0.0"
        try:
            resp = self.pool.request("HEAD", session.url, headers=headers, redirect=False)
        except Urllib3Error as e:
            raise _Transient(_transport_error(e, op="upload", path=session.ref)) from None
        if resp.status not in (200, 204):
            raise _tus_error(resp.status, session)
        value = resp.headers.get("Upload-Offset", "")
        if not value.isdigit():
            raise ServerError("HEAD without Upload-Offset", op="upload", path=session.ref)
        return int(value)

    async def tus_upload(
        self,
        session: TusSession,
        fd: int,
        *,
        chunk_size: int = TUS_CHUNK,
        resume: bool = True,
        max_bytes: int | None = None,
    ) -> UploadResult | TusSession:
        """Send the rest of `fd` (file offset == upload offset) in PATCH chunks of `chunk_size`.

        resume: first ask the server's offset (HEAD) instead of trusting `session.offset`.
        max_bytes: stop after about that many bytes and return the updated session (for tests and
        for spreading big uploads); otherwise returns the UploadResult once the server has it all.
        Transport failures are retried from the server's offset, up to `retries` times in a row."""
        offset = await self.tus_offset(session) if resume else session.offset
        sent = 0
        attempt = 0
        reauthed = False
        while offset < session.length:
            if max_bytes is not None and sent >= max_bytes:
                return replace(session, offset=offset)
            size = min(chunk_size, session.length - offset)
            token = await self.gw.access_token()

            def work(
                stop: threading.Event, start: int = offset, size: int = size, token: Secret = token
            ) -> tuple[int, UploadResult]:
                return self._patch(session, token, fd, start, size, stop)

            try:
                new_offset, result = await self._in_thread(work)
            except FailedPrecondition as e:
                raise _etag_mismatch(e) if session.if_match else e from None
            except Unauthenticated:
                if reauthed:
                    raise
                reauthed = True
                await self.gw.authenticate(stale=token)
                continue
            except _Transient as t:
                if not self.retry.may_retry(attempt):
                    raise t.error from None
                log.debug("tus %s: %s, retry %d", session.ref, t.error, attempt + 1)
                await self._pause(attempt)
                attempt += 1
                offset = await self.tus_offset(session)
                continue
            attempt = 0
            sent += new_offset - offset
            offset = new_offset
            if offset >= session.length:
                return result
        return UploadResult("", None)

    def _patch(
        self, session: TusSession, token: Secret, fd: int, start: int, size: int, stop: threading.Event
    ) -> tuple[int, UploadResult]:
        headers = _headers(token, session.token)
        headers.update(
            {
                "Tus-Resumable": "1.0.0",
                "Upload-Offset": str(start),
                "Content-Type": "application/offset+octet-stream",
            }
        )
        own = os.dup(fd)
        try:
            status, rheaders = self._send_body(
                "PATCH", session.url, headers, own, start, size, stop, session.ref
            )
            if status not in (200, 201, 204):
                err = _tus_error(status, session)
                if status in (502, 503, 504):
                    raise _Transient(err)
                raise err
            value = rheaders.get("Upload-Offset", "")
            new = int(value) if value.isdigit() else start + size
            return new, _upload_result(rheaders)
        finally:
            os.close(own)


def _etag_mismatch(e: FailedPrecondition) -> MeshError:
    """An upload carrying if_match that ends in HTTP 412: Reva checked the etag again when the data
    was complete and someone else had written in between."""
    if isinstance(e, EtagMismatch) or e.code != "HTTP_412":
        return e
    return EtagMismatch("the file changed on the server during the upload", op=e.op, path=e.path, code=e.code)


def _tus_error(status: int, session: TusSession) -> MeshError:
    if status in (403, 404, 410):
        return SessionExpired(
            f"HTTP {status}: upload session expired or unknown, start a new upload",
            op="upload",
            path=session.ref,
            code=f"HTTP_{status}",
        )
    return _http_error(status, op="upload", path=session.ref)


def _body_reader(resp: Any) -> Callable[[bytearray], int]:
    """readinto for a response body: http.client's own, which receives straight into our buffer,
    when urllib3 has nothing to decode; urllib3's HTTPResponse.readinto reads each chunk into a new
    bytes object and copies it over (for a 1 GiB GET measured 0.2-0.4 s user + 1.2-1.5 s sys against
    0.03-0.1 + 0.2 s, wall 4.4-6.5 s against 2.9 s, to /dev/null; /work/notes/rd/getmicro.py).
    Falls back to urllib3's when its internals are not what we expect."""
    fp = getattr(resp, "_fp", None)
    encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
    if isinstance(fp, http.client.HTTPResponse) and encoding == "identity":
        return fp.readinto
    return resp.readinto  # type: ignore[no-any-return]


def _cut_short(resp: Any) -> bool:
    """Whether a body read to its end by http.client (_body_reader) stopped before its
    Content-Length: http.client answers a closed connection with an empty read, where urllib3
    raises. (With urllib3's own reads, it has raised already.)"""
    fp = getattr(resp, "_fp", None)
    return isinstance(fp, http.client.HTTPResponse) and bool(fp.length)


def _done_with(resp: Any) -> None:
    """Give the connection back to the pool only when its response was read to the end (by urllib3,
    or by http.client under it, which closes its side at the end of the body); otherwise (cancelled,
    cut, stopped early) close it: draining could mean reading gigabytes."""
    fp = getattr(resp, "_fp", None)
    read_out = resp.length_remaining == 0 or (
        isinstance(fp, http.client.HTTPResponse) and fp.isclosed() and fp.length == 0
    )
    if not read_out:
        resp.close()
    resp.release_conn()


def _upload_result(headers: Any) -> UploadResult:
    fid = headers.get("OC-FileId", "")
    file_id: ResourceId | None
    try:
        file_id = ResourceId.parse(fid) if fid else None
    except ValueError:
        file_id = None
    return UploadResult(headers.get("ETag", ""), file_id)


__all__ = ["CHUNK", "TUS_CHUNK", "Transfer"]
