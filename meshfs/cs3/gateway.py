"""The connection to a CS3 gateway: channel, authentication, token refresh, retries, one `call()`.

Owns: the grpc channel and GatewayAPI stub, the user's access token (kept fresh), the mapping of every
CS3 / gRPC failure to a MeshError (through the tables of meshfs/errors.py), bounded retries.
Must not import: vfs/, fuse/, cache/. Protobuf messages go in and out of `call()` only inside
meshfs/cs3/; nothing outside this package sees them. Tokens and passwords never reach logs, argv,
exception messages or repr.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar

import grpc
import trio
from cs3.gateway.v1beta1 import gateway_api_pb2 as gw_pb
from cs3.gateway.v1beta1 import gateway_api_pb2_grpc as gw_grpc
from cs3.rpc.v1beta1 import code_pb2

from meshfs.cs3.retry import RetryPolicy
from meshfs.errors import (
    CS3_CODE_ERRORS,
    GRPC_STATUS_ERRORS,
    MeshError,
    PermissionDenied,
    ServerError,
    ServerUnavailable,
    Timeout,
    Unauthenticated,
)

from ._convert import user_from_pb
from .types import BasicCredentials, BearerCredentials, Credentials, CredentialSource, Secret, User

log = logging.getLogger("meshfs.cs3")

T = TypeVar("T")

_CODE_OK = code_pb2.CODE_OK
_CODE_UNAUTHENTICATED = code_pb2.CODE_UNAUTHENTICATED
# what Reva says when it refuses a token ("auth: core access token is invalid", "error dismantling
# token", "user not found in context")
_TOKEN_REFUSED = re.compile(r"access token|dismantling token|user not found in context", re.IGNORECASE)
# CS3 codes an invalid/expired token can hide behind (see Gateway._token_refused)
_SUSPECT_CODES = frozenset(
    {code_pb2.CODE_UNAUTHENTICATED, code_pb2.CODE_NOT_FOUND, code_pb2.CODE_PERMISSION_DENIED}
)
_MAX_MESSAGE = 64 * 1024 * 1024


def jwt_claims(token: str) -> dict[str, Any] | None:
    """The claims of a JWT, read without verifying; None when `token` is not a readable JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, TypeError):
        return None
    return claims if isinstance(claims, dict) else None


def jwt_expiry(token: str) -> float | None:
    """The `exp` claim (unix seconds) of a JWT, read without verifying; None when absent/unreadable."""
    exp = (jwt_claims(token) or {}).get("exp")
    return float(exp) if isinstance(exp, int | float) else None


def is_reva_token(token: str) -> bool:
    """Was `token` minted by a Reva gateway (audience "reva", a `user` claim)? Such a token is sent
    as x-access-token as is; an OIDC access token must first be exchanged (Authenticate "bearer")."""
    claims = jwt_claims(token)
    if claims is None:
        return False
    aud = claims.get("aud")
    auds = aud if isinstance(aud, list) else [aud]
    return "reva" in auds and isinstance(claims.get("user"), dict)


_Reason = Literal["login", "changed", "expiring", "refused"]


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Gateway:
    """An authenticated session with a CS3 gateway. Use as `async with Gateway(...) as gw:`.

    address: "host:port" of the gateway gRPC service. tls: use TLS (system CAs, or `ca_file`);
    plain TCP otherwise (fine for 127.0.0.1). rpc_threads: worker threads for unary calls.
    call_timeout: per-call deadline in seconds. retries: extra attempts on transport errors
    (UNAVAILABLE, DEADLINE_EXCEEDED), with exponential backoff from `backoff` to `backoff_max`.
    refresh_margin: re-authenticate this many seconds before the token's `exp`.
    unavailable_timeout: when set, an operation stops retrying (and each attempt's deadline is cut)
    once this many seconds passed since it began: a dead server answers EIO within that bound.
    verify_interval: a NOT_FOUND/PERMISSION_DENIED when no call succeeded for this long first checks
    the token (WhoAmI), since Reva answers an invalid token that way.

    `credentials` are fixed values, or a CredentialSource (meshfs/auth.py) asked again before every
    login: when the token nears its expiry or is refused, and whenever its `generation` changed. A
    bearer token used as is (exchange=False) that has no newer replacement is kept until it expires.
    """

    def __init__(
        self,
        address: str,
        credentials: Credentials | CredentialSource,
        *,
        tls: bool = False,
        ca_file: str | None = None,
        rpc_threads: int = 8,
        call_timeout: float = 30.0,
        retries: int = 4,
        backoff: float = 0.2,
        backoff_max: float = 5.0,
        refresh_margin: float = 60.0,
        verify_interval: float = 10.0,
        unavailable_timeout: float | None = None,
    ) -> None:
        if rpc_threads < 1:
            raise ValueError(f"rpc_threads must be ≥ 1, got {rpc_threads}")
        self.address = address
        self._credentials = credentials
        self._generation = -1  # the source's generation our token was obtained with
        self._login_secret: Secret | None = None  # what the last login used (password / input token)
        self._tls = tls or ca_file is not None
        self._ca_file = ca_file
        self.limiter = trio.CapacityLimiter(rpc_threads)
        self.call_timeout = call_timeout
        self.retry = RetryPolicy(retries, backoff, backoff_max)
        self.refresh_margin = refresh_margin
        self.verify_interval = verify_interval
        self.unavailable_timeout = unavailable_timeout
        self._verified_at: float | None = None  # trio time of the last call the token was accepted
        self._token_refresh_wall: float | None = None  # same moment as _token_deadline, wall clock
        self._channel: grpc.Channel | None = None
        self._stub: Any = None
        self._token: Secret | None = None
        self._token_deadline: float | None = None  # trio clock time to refresh at
        self._auth_lock = trio.Lock()
        self._user: User | None = None
        self.auth_count = 0  # successful authentications so far (status, tests)

    def __repr__(self) -> str:
        who = self._user.username if self._user else "?"
        return f"Gateway({self.address!r}, user={who!r}, tls={self._tls})"

    # -- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> Gateway:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Create the channel and authenticate. Raises Unauthenticated / ServerUnavailable."""
        if self._channel is None:
            self._channel = await trio.to_thread.run_sync(self._make_channel)
            self._stub = gw_grpc.GatewayAPIStub(self._channel)
        await self.authenticate()

    def _make_channel(self) -> grpc.Channel:
        options = [
            ("grpc.max_receive_message_length", _MAX_MESSAGE),
            ("grpc.max_send_message_length", _MAX_MESSAGE),
            # reconnect quickly after a server restart (defaults back off up to 120 s)
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2000),
            ("grpc.enable_retries", 0),
        ]
        if not self._tls:
            return grpc.insecure_channel(self.address, options=options)
        root: bytes | None = None
        if self._ca_file is not None:
            try:
                with open(self._ca_file, "rb") as f:
                    root = f.read()
            except OSError as e:
                raise MeshError(
                    f"cannot read CA file: {e.strerror}", op="connect", path=self._ca_file
                ) from None
        return grpc.secure_channel(
            self.address, grpc.ssl_channel_credentials(root_certificates=root), options
        )

    async def aclose(self) -> None:
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            channel.close()

    # -- authentication ------------------------------------------------------------------------

    @property
    def user(self) -> User:
        """The authenticated user (after open())."""
        if self._user is None:
            raise Unauthenticated("not authenticated yet", op="user")
        return self._user

    async def access_token(self) -> Secret:
        """A token valid for at least `refresh_margin` seconds (re-authenticates when needed)."""
        if (
            self._token is None
            or (self._token_deadline is not None and trio.current_time() >= self._token_deadline)
            # the monotonic clock stops during suspend; the token's exp is wall-clock time
            or (self._token_refresh_wall is not None and time.time() >= self._token_refresh_wall)
        ):
            await self.authenticate(stale=self._token, reason="expiring")
        elif (
            not isinstance(self._credentials, BasicCredentials | BearerCredentials)
            and self._credentials.generation != self._generation
        ):
            await self.authenticate(stale=self._token, reason="changed")
        assert self._token is not None
        return self._token

    async def _current_credentials(self, reason: _Reason) -> Credentials:
        source = self._credentials
        if isinstance(source, BasicCredentials | BearerCredentials):
            return source
        self._generation = source.generation  # a change during the call below is seen next time
        urgent = reason in ("expiring", "refused")
        return await source.credentials(self._login_secret if urgent else None)

    def _keep_token(self, token: Secret, reason: _Reason) -> None:
        """No newer bearer token than the one in use: keep it while it is valid, look again soon."""
        exp = jwt_expiry(token.reveal())
        left = None if exp is None else exp - time.time()
        if reason == "refused" or (left is not None and left <= 0):
            raise Unauthenticated(
                "the bearer token expired or was refused and no newer one is available",
                op="authenticate",
            )
        now = trio.current_time()
        if self._token_deadline is not None and now >= self._token_deadline:
            pause = 30.0 if left is None else min(30.0, max(1.0, left / 4))
            self._token_deadline = now + pause
            self._token_refresh_wall = time.time() + pause

    async def authenticate(self, *, stale: Secret | None = None, reason: _Reason = "refused") -> None:
        """Authenticate (again). With `stale` (the token found expiring, refused, or outdated by a
        newer `generation` of the credential source), skip if another task already replaced it."""
        async with self._auth_lock:
            if stale is not None and self._token is not None and self._token != stale:
                return
            if stale is None:
                reason = "login"
            creds = await self._current_credentials(reason)
            if isinstance(creds, BearerCredentials) and not creds.exchange:
                if stale is not None and stale == creds.token:
                    self._keep_token(creds.token, reason)
                    return
                token, user = creds.token, None
            else:
                if isinstance(creds, BasicCredentials):
                    req = gw_pb.AuthenticateRequest(
                        type="basic", client_id=creds.username, client_secret=creds.password.reveal()
                    )
                    who = creds.username
                else:
                    req = gw_pb.AuthenticateRequest(type="bearer", client_secret=creds.token.reveal())
                    who = "bearer token"
                res, _ = await self._unary("Authenticate", req, op="authenticate", path=who, token=None)
                code = res.status.code
                if code != _CODE_OK:
                    if code in (
                        _CODE_UNAUTHENTICATED,
                        code_pb2.CODE_PERMISSION_DENIED,
                        code_pb2.CODE_NOT_FOUND,
                    ):
                        raise Unauthenticated(
                            "wrong username or password"
                            if isinstance(creds, BasicCredentials)
                            else "token refused",
                            op="authenticate",
                            path=who,
                            code=code_pb2.Code.Name(code),
                        )
                    if isinstance(creds, BearerCredentials):  # e.g. no auth provider for "bearer"
                        raise Unauthenticated(
                            "the server could not exchange the bearer token (no OIDC login there?): "
                            + _one_line(res.status.message or code_pb2.Code.Name(code)),
                            op="authenticate",
                            path=who,
                            code=code_pb2.Code.Name(code),
                        )
                    raise self._cs3_error(res.status, op="authenticate", path=who)
                token, user = Secret(res.token), user_from_pb(res.user)
            if user is None:  # a token used as is: check it before giving up the one we have
                res, _ = await self._unary(
                    "WhoAmI", gw_pb.WhoAmIRequest(token=token.reveal()), op="whoami", token=token
                )
                if res.status.code != _CODE_OK:
                    if res.status.code == _CODE_UNAUTHENTICATED:
                        raise Unauthenticated(
                            "the bearer token was refused (expired or not issued by this server)",
                            op="authenticate",
                            code="CODE_UNAUTHENTICATED",
                        )
                    raise self._cs3_error(res.status, op="whoami", path=None)
                user = user_from_pb(res.user)
            exp = jwt_expiry(token.reveal())
            now = trio.current_time()
            if exp is None:
                self._token_deadline = None
            else:
                lifetime = exp - time.time()
                self._token_deadline = now + max(lifetime - self.refresh_margin, min(lifetime / 2, 5.0))
            self._token = token
            self._token_refresh_wall = (
                None if self._token_deadline is None else time.time() + (self._token_deadline - now)
            )
            self._verified_at = now
            self._login_secret = creds.password if isinstance(creds, BasicCredentials) else creds.token
            self.auth_count += 1
            self._user = user
            log.debug("authenticated as %s (%s)", user.username, reason)

    # -- the one call ---------------------------------------------------------------------------

    async def call(
        self,
        method: str,
        request: Any,
        *,
        op: str,
        path: str | None = None,
        timeout: float | None = None,
        idempotent: bool = True,
        stream: bool = False,
        ok_codes: Sequence[int] = (),
    ) -> Any:
        """Call GatewayAPI.<method>(request) and return the response (a list of them if `stream`).

        A response whose CS3 status is not OK (nor in `ok_codes`) raises the MeshError of
        CS3_CODE_ERRORS, with `op` and `path` in its message. UNAUTHENTICATED re-authenticates once
        and repeats. Transport errors (UNAVAILABLE; DEADLINE_EXCEEDED for idempotent calls only) are
        retried `retries` times with backoff on trio's clock, then raise ServerUnavailable/Timeout.
        """
        reauthed = False
        while True:
            token = await self.access_token()
            try:
                res, retried = await self._unary(
                    method,
                    request,
                    op=op,
                    path=path,
                    token=token,
                    timeout=timeout,
                    idempotent=idempotent,
                    stream=stream,
                )
            except (PermissionDenied, ServerError) as e:
                # gRPC-level refusals: Unauthenticated, PERMISSION_DENIED "core access token is invalid",
                # UNKNOWN "user not found in context"
                if reauthed or not await self._token_refused(token, e.code or "", e.message):
                    raise
                reauthed = True
                log.debug("%s: token refused (%s), re-authenticating", op, e.code)
                await self.authenticate(stale=token, reason="refused")
                continue
            statuses = [r.status for r in res] if stream else [res.status]
            bad = next((s for s in statuses if s.code != _CODE_OK and s.code not in ok_codes), None)
            if bad is None:
                self._verified_at = trio.current_time()
                return res
            if (
                not reauthed
                and bad.code in _SUSPECT_CODES
                and await self._token_refused(token, code_pb2.Code.Name(bad.code), bad.message)
            ):
                reauthed = True
                log.debug("%s: token refused (%s), re-authenticating", op, code_pb2.Code.Name(bad.code))
                await self.authenticate(stale=token, reason="refused")
                continue
            err = self._cs3_error(bad, op=op, path=path)
            err.retried = retried
            raise err

    async def _token_refused(self, token: Secret, code: str, message: str = "") -> bool:
        """Is `token` no longer accepted? Reva's gateway lets every call through and an invalid or
        expired token then surfaces as NOT_FOUND / PERMISSION_DENIED / UNKNOWN, indistinguishable
        from the real thing; so when no call has succeeded for `verify_interval` seconds, ask WhoAmI."""
        if code in ("CODE_UNAUTHENTICATED", "UNAUTHENTICATED") or _TOKEN_REFUSED.search(message):
            return True
        if token != self._token:
            return True  # another task already replaced it
        now = trio.current_time()
        if self._verified_at is not None and now - self._verified_at < self.verify_interval:
            return False
        res, _ = await self._unary(
            "WhoAmI", gw_pb.WhoAmIRequest(token=token.reveal()), op="whoami", token=token
        )
        if res.status.code == _CODE_OK:
            self._verified_at = now
            return False
        return True

    def _cs3_error(self, status: Any, *, op: str, path: str | None) -> MeshError:
        try:
            name = code_pb2.Code.Name(status.code)
        except ValueError:
            name = f"CODE_{status.code}"
        cls = CS3_CODE_ERRORS.get(name, ServerError)
        return cls(_one_line(status.message or name), op=op, path=path, code=name)

    async def _unary(
        self,
        method: str,
        request: Any,
        *,
        op: str,
        path: str | None = None,
        token: Secret | None,
        timeout: float | None = None,
        idempotent: bool = True,
        stream: bool = False,
    ) -> tuple[Any, bool]:
        """One gRPC call in a worker thread, with transport retries: (response, whether it was
        repeated after a transport failure). Maps grpc.RpcError."""
        if self._stub is None:
            raise ServerUnavailable("not connected", op=op, path=path)
        fn: Callable[..., Any] = getattr(self._stub, method)
        deadline = self.call_timeout if timeout is None else timeout
        metadata = () if token is None else (("x-access-token", token.reveal()),)
        # the whole operation, retries included, gives up after unavailable_timeout (when set)
        limit = self.unavailable_timeout
        give_up_at = math.inf if limit is None else trio.current_time() + limit
        this_deadline = deadline

        def run() -> Any:
            if stream:
                return list(fn(request, metadata=metadata, timeout=this_deadline))
            return fn(request, metadata=metadata, timeout=this_deadline)

        attempt = 0
        while True:
            this_deadline = max(0.5, min(deadline, give_up_at - trio.current_time()))
            try:
                res = await trio.to_thread.run_sync(run, limiter=self.limiter, abandon_on_cancel=True)
                return res, attempt > 0
            except ValueError as e:
                # grpc's "Cannot invoke RPC on closed channel!": the session is closing (umount)
                # while a background loop still calls; an ordinary failure for the caller, not a crash
                if self._channel is not None and "closed channel" not in str(e):
                    raise
                raise ServerUnavailable("the connection to the gateway is closed", op=op, path=path) from None
            except grpc.RpcError as e:
                code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
                retry = code is grpc.StatusCode.UNAVAILABLE or (
                    idempotent and code is grpc.StatusCode.DEADLINE_EXCEEDED
                )
                delay = self.retry.delay(attempt)
                if retry and self.retry.may_retry(attempt) and trio.current_time() + delay + 0.5 < give_up_at:
                    attempt += 1
                    log.debug("%s: %s, retry %d in %.2fs", op, code.name, attempt, delay)
                    await trio.sleep(delay)
                    continue
                details = e.details() if hasattr(e, "details") else ""
                cls = GRPC_STATUS_ERRORS.get(code.name, ServerError)
                if code is grpc.StatusCode.UNAVAILABLE:
                    msg = f"gateway {self.address} unreachable after {attempt + 1} attempts"
                elif code is grpc.StatusCode.DEADLINE_EXCEEDED:
                    cls, msg = Timeout, f"no answer within {this_deadline:g}s after {attempt + 1} attempts"
                else:
                    msg = _one_line(details or code.name)
                if token is not None:
                    msg = msg.replace(token.reveal(), "***")
                raise cls(msg, op=op, path=path, code=code.name) from None
