"""Fast unit tests (no server, autojump clock) of Gateway.call's retry/backoff, re-login and status
mapping, with a fake stub in place of the gRPC channel."""

from __future__ import annotations

import grpc
import pytest
import trio
from cs3.rpc.v1beta1 import code_pb2, status_pb2
from cs3.storage.provider.v1beta1 import provider_api_pb2 as pb

from meshfs.cs3 import BasicCredentials, Gateway, Secret, User, UserId
from meshfs.errors import NotFound, ServerUnavailable, Timeout


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str = "") -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class FakeStub:
    """Answers Stat from a script: each entry is an exception to raise or a CS3 code to answer."""

    def __init__(self, script: list[object]) -> None:
        self.script = script
        self.calls: list[str] = []

    def Stat(self, request: object, metadata: object = (), timeout: float | None = None) -> object:
        self.calls.append("Stat")
        step = self.script.pop(0) if self.script else code_pb2.CODE_OK
        if isinstance(step, Exception):
            raise step
        return pb.StatResponse(status=status_pb2.Status(code=step, message="scripted"))

    Move = CreateContainer = Delete = Stat

    def WhoAmI(self, request: object, metadata: object = (), timeout: float | None = None) -> object:
        self.calls.append("WhoAmI")
        return pb.StatResponse(status=status_pb2.Status(code=code_pb2.CODE_OK))


def gateway(stub: FakeStub, **kw: object) -> Gateway:
    gw = Gateway("127.0.0.1:1", BasicCredentials("einstein", Secret("relativity")), **kw)  # type: ignore[arg-type]
    gw._stub = stub
    gw._token = Secret("tok")
    gw._user = User(UserId("idp", "einstein-id"), "einstein")
    return gw


async def test_unavailable_retried_with_bounded_backoff(autojump_clock) -> None:  # type: ignore[no-untyped-def]
    stub = FakeStub([FakeRpcError(grpc.StatusCode.UNAVAILABLE)] * 10)
    gw = gateway(stub, retries=4, backoff=0.5, backoff_max=2.0)
    t0 = trio.current_time()
    with pytest.raises(ServerUnavailable, match="unreachable after 5 attempts"):
        await gw.call("Stat", pb.StatRequest(), op="stat", path="/x")
    waited = trio.current_time() - t0
    assert stub.calls == ["Stat"] * 5
    # sleeps of 0.5, 1, 2, 2 (each jittered to 50-100 %)
    assert 0.5 * 5.5 <= waited <= 5.5


async def test_transient_then_ok(autojump_clock) -> None:  # type: ignore[no-untyped-def]
    stub = FakeStub(
        [FakeRpcError(grpc.StatusCode.UNAVAILABLE), FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED)]
    )
    gw = gateway(stub)
    res = await gw.call("Stat", pb.StatRequest(), op="stat")
    assert res.status.code == code_pb2.CODE_OK and len(stub.calls) == 3


async def test_deadline_not_retried_for_non_idempotent_calls(autojump_clock) -> None:  # type: ignore[no-untyped-def]
    stub = FakeStub([FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED)] * 3)
    gw = gateway(stub)
    with pytest.raises(Timeout):
        await gw.call("Move", pb.StatRequest(), op="move", idempotent=False)
    assert stub.calls == ["Stat"]  # Move = Stat in the fake: one attempt only


async def test_cs3_status_mapped_with_op_and_path(autojump_clock) -> None:  # type: ignore[no-untyped-def]
    stub = FakeStub([code_pb2.CODE_NOT_FOUND])
    gw = gateway(stub)
    gw._verified_at = trio.current_time()  # token known good: a NOT_FOUND is believed at once
    with pytest.raises(NotFound) as exc:
        await gw.call("Stat", pb.StatRequest(), op="stat", path="/users/x/f")
    assert str(exc.value) == "stat /users/x/f: scripted [CODE_NOT_FOUND]"
    assert stub.calls == ["Stat"]


async def test_not_found_checks_an_old_token_once(autojump_clock) -> None:  # type: ignore[no-untyped-def]
    stub = FakeStub([code_pb2.CODE_NOT_FOUND])
    gw = gateway(stub, verify_interval=10)
    gw._verified_at = trio.current_time() - 11
    with pytest.raises(NotFound):
        await gw.call("Stat", pb.StatRequest(), op="stat")
    assert stub.calls == ["Stat", "WhoAmI"]  # token still good: no new login, the NOT_FOUND stands


async def test_secret_not_in_transport_error(autojump_clock) -> None:  # type: ignore[no-untyped-def]
    stub = FakeStub([FakeRpcError(grpc.StatusCode.INTERNAL, "boom with token tok inside")])
    gw = gateway(stub)
    with pytest.raises(Exception) as exc:
        await gw.call("Stat", pb.StatRequest(), op="stat")
    assert "tok inside" not in str(exc.value) and "*** inside" in str(exc.value)


async def test_mkdir_and_delete_repeated_after_transport_failure(autojump_clock) -> None:  # type: ignore[no-untyped-def]
    """The first attempt may have been carried out before the connection broke: AlreadyExists /
    NotFound to the repetition mean success; without a repetition they stand."""
    from meshfs.cs3 import Ref, Storage
    from meshfs.errors import AlreadyExists

    lost = FakeRpcError(grpc.StatusCode.UNAVAILABLE)
    stub = FakeStub([lost, code_pb2.CODE_ALREADY_EXISTS, lost, code_pb2.CODE_NOT_FOUND])
    gw = gateway(stub, backoff=0.01)
    gw._verified_at = trio.current_time() + 1e9  # token known good
    st = Storage(gw)
    await st.create_container(Ref(path="/users/x/d"))
    await st.delete(Ref(path="/users/x/d"))
    assert len(stub.calls) == 4
    stub.script = [code_pb2.CODE_ALREADY_EXISTS, code_pb2.CODE_NOT_FOUND]
    with pytest.raises(AlreadyExists) as exc:
        await st.create_container(Ref(path="/users/x/d"))
    assert not exc.value.retried
    with pytest.raises(NotFound):
        await st.delete(Ref(path="/users/x/d"))


async def test_a_call_on_a_closed_channel_is_an_ordinary_failure(autojump_clock) -> None:  # type: ignore[no-untyped-def]
    """At umount the channel closes while background loops (share watcher, poller) may still call:
    grpc raises ValueError there, which must reach them as ServerUnavailable, not crash the daemon."""
    stub = FakeStub([ValueError("Cannot invoke RPC on closed channel!")])
    gw = gateway(stub)
    with pytest.raises(ServerUnavailable, match="connection to the gateway is closed"):
        await gw.call("Stat", pb.StatRequest(), op="stat")
    stub.script = [ValueError("some other bug")]
    gw._channel = object()  # an open channel: other ValueErrors are bugs and are not hidden
    with pytest.raises(ValueError, match="some other bug"):
        await gw.call("Stat", pb.StatRequest(), op="stat")
