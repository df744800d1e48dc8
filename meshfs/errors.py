"""MeshError classes (each with its errno) and the three tables that map remote failures to them.

Owns: the error vocabulary of meshfs and the CS3 code / gRPC status / HTTP status -> class tables.
Must not import: grpc, cs3apis, urllib3 or anything else from meshfs. CS3 codes are keyed by their
proto enum *names* ("CODE_NOT_FOUND"), gRPC status by `grpc.StatusCode` *names* ("UNAVAILABLE"),
HTTP by the integer status; meshfs/cs3/ translates the wire values into these keys.
"""

from __future__ import annotations

import errno as _errno
from collections.abc import Mapping
from types import MappingProxyType
from typing import ClassVar


class MeshError(Exception):
    """Base of every expected failure. `str(e)` is one line: "<op> <path>: <message>".

    `errno` is what vfs/ops.py answers the kernel with; `transient` says a later retry of the same
    request may succeed (the write-back scheduler and the retry loops read it). `retried` is set when
    the answer came to a request repeated after a transport failure: the first attempt may have
    been carried out (a mkdir answering AlreadyExists then most likely created the directory).
    """

    errno: ClassVar[int] = _errno.EIO
    transient: ClassVar[bool] = False

    def __init__(
        self, message: str = "", *, op: str | None = None, path: str | None = None, code: str | None = None
    ) -> None:
        self.message = " ".join(message.split()) or type(self).__name__
        self.op = op
        self.path = path
        self.code = code
        self.retried = False
        super().__init__(str(self))

    def __str__(self) -> str:
        where = " ".join(p for p in (self.op, self.path) if p)
        text = f"{where}: {self.message}" if where else self.message
        return f"{text} [{self.code}]" if self.code else text

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


class NotFound(MeshError):
    """The resource does not exist, or the user may not even stat it."""

    errno = _errno.ENOENT


class PermissionDenied(MeshError):
    """The resource is visible but the operation is not granted."""

    errno = _errno.EACCES


class Unauthenticated(PermissionDenied):
    """Credentials refused or token expired and could not be renewed."""

    errno = _errno.EACCES


class AlreadyExists(MeshError):
    errno = _errno.EEXIST


class InvalidArgument(MeshError):
    errno = _errno.EINVAL


class OutOfRange(InvalidArgument):
    """A byte range outside the file (HTTP 416, CODE_OUT_OF_RANGE)."""

    errno = _errno.EINVAL


class FailedPrecondition(MeshError):
    """The server refused because of the resource's state (parent missing, already locked, ...)."""

    errno = _errno.EIO


class EtagMismatch(FailedPrecondition):
    """An upload/metadata change carried `if_match` and the remote etag had moved on: a conflict."""

    errno = _errno.EIO


class Locked(MeshError):
    """The resource is locked by someone else and the request carried no (or another) lock id."""

    errno = _errno.EACCES


class Aborted(MeshError):
    """Reva's answer to a wrong lock id (or a lock id on an unlocked file) and similar races."""

    errno = _errno.EIO


class SessionExpired(MeshError):
    """A resumable upload can no longer be continued (its transfer token expired or the server
    forgot the session): start a new upload from the local copy."""

    errno = _errno.EIO


class InsufficientStorage(MeshError):
    errno = _errno.ENOSPC


class QuotaExceeded(InsufficientStorage):
    errno = _errno.EDQUOT


class NotSupported(MeshError):
    errno = _errno.ENOTSUP


class Cancelled(MeshError):
    errno = _errno.EINTR


class ServerError(MeshError):
    """The server failed internally (CODE_INTERNAL, HTTP 500) or answered something unexpected."""

    errno = _errno.EIO


class ServerUnavailable(MeshError):
    """Transport failure: connection refused/reset, server down. Retried before it reaches callers."""

    errno = _errno.EIO
    transient = True


class Timeout(ServerUnavailable):
    """A deadline passed (per-call deadline, HTTP read timeout)."""

    errno = _errno.EIO
    transient = True


class TooEarly(ServerUnavailable):
    """The server asks to come back later (e.g. an upload still being post-processed)."""

    errno = _errno.EAGAIN
    transient = True


class DataLoss(MeshError):
    errno = _errno.EIO


# CS3 rpc status code (cs3.rpc.v1beta1.Code enum name) -> class. CODE_OK never reaches the table.
CS3_CODE_ERRORS: Mapping[str, type[MeshError]] = MappingProxyType(
    {
        "CODE_INVALID": ServerError,
        "CODE_CANCELLED": Cancelled,
        "CODE_UNKNOWN": ServerError,
        "CODE_INVALID_ARGUMENT": InvalidArgument,
        "CODE_DEADLINE_EXCEEDED": Timeout,
        "CODE_NOT_FOUND": NotFound,
        "CODE_ALREADY_EXISTS": AlreadyExists,
        "CODE_PERMISSION_DENIED": PermissionDenied,
        "CODE_UNAUTHENTICATED": Unauthenticated,
        "CODE_RESOURCE_EXHAUSTED": QuotaExceeded,
        "CODE_FAILED_PRECONDITION": FailedPrecondition,
        "CODE_ABORTED": Aborted,
        "CODE_OUT_OF_RANGE": OutOfRange,
        "CODE_UNIMPLEMENTED": NotSupported,
        "CODE_INTERNAL": ServerError,
        "CODE_UNAVAILABLE": ServerUnavailable,
        "CODE_DATA_LOSS": DataLoss,
        "CODE_REDIRECTION": ServerError,
        "CODE_INSUFFICIENT_STORAGE": InsufficientStorage,
        "CODE_LOCKED": Locked,
        "CODE_TOO_EARLY": TooEarly,
    }
)

# gRPC transport status (grpc.StatusCode name) -> class. OK never reaches the table.
GRPC_STATUS_ERRORS: Mapping[str, type[MeshError]] = MappingProxyType(
    {
        "CANCELLED": Cancelled,
        "UNKNOWN": ServerError,
        "INVALID_ARGUMENT": InvalidArgument,
        "DEADLINE_EXCEEDED": Timeout,
        "NOT_FOUND": NotFound,
        "ALREADY_EXISTS": AlreadyExists,
        "PERMISSION_DENIED": PermissionDenied,
        "RESOURCE_EXHAUSTED": ServerError,  # gRPC uses it for message size limits, not quota
        "FAILED_PRECONDITION": FailedPrecondition,
        "ABORTED": Aborted,
        "OUT_OF_RANGE": OutOfRange,
        "UNIMPLEMENTED": NotSupported,
        "INTERNAL": ServerError,
        "UNAVAILABLE": ServerUnavailable,
        "DATA_LOSS": DataLoss,
        "UNAUTHENTICATED": Unauthenticated,
    }
)

# HTTP status of the data gateway / data provider -> class. 2xx and 304 never reach the table;
# any other status falls back to ServerError (5xx) or InvalidArgument (4xx) via http_fallback.
HTTP_STATUS_ERRORS: Mapping[int, type[MeshError]] = MappingProxyType(
    {
        400: InvalidArgument,
        401: Unauthenticated,
        403: PermissionDenied,
        404: NotFound,
        405: NotSupported,
        408: Timeout,
        409: FailedPrecondition,
        412: FailedPrecondition,
        413: InsufficientStorage,
        416: OutOfRange,
        423: Locked,
        425: TooEarly,
        429: TooEarly,
        500: ServerError,
        501: NotSupported,
        502: ServerUnavailable,
        503: ServerUnavailable,
        504: Timeout,
        507: InsufficientStorage,
    }
)

# Class for a status absent from HTTP_STATUS_ERRORS, by its hundreds digit.
HTTP_FALLBACK: Mapping[int, type[MeshError]] = MappingProxyType({4: InvalidArgument, 5: ServerError})
