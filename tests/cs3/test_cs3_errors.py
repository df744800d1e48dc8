"""Fast unit tests (no server) of meshfs/errors.py tables and the secret-hiding value types."""

from __future__ import annotations

import base64
import errno
import json

import grpc
import pytest
from cs3.rpc.v1beta1 import code_pb2

from meshfs.cs3 import BasicCredentials, Ref, ResourceId, Secret, TusSession
from meshfs.cs3.gateway import jwt_expiry
from meshfs.errors import (
    CS3_CODE_ERRORS,
    GRPC_STATUS_ERRORS,
    HTTP_FALLBACK,
    HTTP_STATUS_ERRORS,
    AlreadyExists,
    EtagMismatch,
    FailedPrecondition,
    Locked,
    MeshError,
    NotFound,
    ServerUnavailable,
    Timeout,
)


def test_every_cs3_code_but_ok_is_mapped() -> None:
    names = {name for name, _ in code_pb2.Code.items()} - {"CODE_OK"}
    assert names == set(CS3_CODE_ERRORS)


def test_every_grpc_status_but_ok_is_mapped() -> None:
    names = {s.name for s in grpc.StatusCode} - {"OK"}
    assert names == set(GRPC_STATUS_ERRORS)


@pytest.mark.parametrize(
    ("code", "cls", "err"),
    [
        ("CODE_NOT_FOUND", NotFound, errno.ENOENT),
        ("CODE_ALREADY_EXISTS", AlreadyExists, errno.EEXIST),
        ("CODE_FAILED_PRECONDITION", FailedPrecondition, errno.EIO),
        ("CODE_LOCKED", Locked, errno.EACCES),
        ("CODE_INSUFFICIENT_STORAGE", CS3_CODE_ERRORS["CODE_INSUFFICIENT_STORAGE"], errno.ENOSPC),
        ("CODE_PERMISSION_DENIED", CS3_CODE_ERRORS["CODE_PERMISSION_DENIED"], errno.EACCES),
        ("CODE_UNIMPLEMENTED", CS3_CODE_ERRORS["CODE_UNIMPLEMENTED"], errno.ENOTSUP),
    ],
)
def test_cs3_codes(code: str, cls: type[MeshError], err: int) -> None:
    assert CS3_CODE_ERRORS[code] is cls
    assert cls.errno == err


def test_every_class_has_an_errno_and_tables_hold_only_mesherrors() -> None:
    tables = [
        *CS3_CODE_ERRORS.values(),
        *GRPC_STATUS_ERRORS.values(),
        *HTTP_STATUS_ERRORS.values(),
        *HTTP_FALLBACK.values(),
    ]
    for cls in tables:
        assert issubclass(cls, MeshError)
        assert cls.errno in errno.errorcode


def test_http_table() -> None:
    assert HTTP_STATUS_ERRORS[404] is NotFound
    assert HTTP_STATUS_ERRORS[412] is FailedPrecondition
    assert issubclass(EtagMismatch, FailedPrecondition)
    assert HTTP_STATUS_ERRORS[503] is ServerUnavailable and ServerUnavailable.transient
    assert issubclass(Timeout, ServerUnavailable)
    assert HTTP_STATUS_ERRORS[507].errno == errno.ENOSPC


def test_message_is_one_line_with_op_and_path() -> None:
    e = NotFound("no such\n  file", op="stat", path="/users/x/a", code="CODE_NOT_FOUND")
    assert str(e) == "stat /users/x/a: no such file [CODE_NOT_FOUND]"
    assert "\n" not in repr(e)
    assert str(MeshError()) == "MeshError"


def test_secrets_never_in_repr() -> None:
    creds = BasicCredentials("einstein", Secret("relativity"))
    assert "relativity" not in repr(creds) and "relativity" not in str(creds)
    s = TusSession("http://h/data", Secret("tok-123"), 10, 4, "/users/x/f")
    assert "tok-123" not in repr(s)
    again = TusSession.from_json(s.to_json())
    assert again == s and again.token.reveal() == "tok-123"
    with pytest.raises(ValueError, match="tus session"):
        TusSession.from_json('{"url": "x"}')


def test_secret_from_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "pw"
    p.write_text("radioactivity\n")
    assert Secret.from_file(str(p)).reveal() == "radioactivity"


def test_jwt_expiry() -> None:
    payload = base64.urlsafe_b64encode(json.dumps({"exp": 1700000000}).encode()).rstrip(b"=").decode()
    assert jwt_expiry(f"aaa.{payload}.sig") == 1700000000
    assert jwt_expiry("not-a-jwt") is None
    assert jwt_expiry("a.!!!.c") is None


def test_refs() -> None:
    rid = ResourceId("s", "sp", "o")
    assert Ref.to(rid).path == "."
    assert Ref(rid, "a/b").path == "./a/b"
    assert Ref.to(rid).child("f").path == "./f"
    assert Ref(path="/users/x").child("f").path == "/users/x/f"
    assert ResourceId.parse(str(rid)) == rid
    with pytest.raises(ValueError):
        Ref(path="relative")
    with pytest.raises(ValueError):
        Ref(path="/x").child("a/b")
