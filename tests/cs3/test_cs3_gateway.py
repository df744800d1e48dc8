"""Gateway behaviour against the real dev Reva: wrong password, unreachable server, token refresh
(before expiry and after a refused token), a gateway that dies mid-session (local TCP proxy)."""

from __future__ import annotations

import pytest
import trio
from cs3_helpers import CuttingProxy  # type: ignore[import-not-found]

from meshfs.cs3 import BasicCredentials, BearerCredentials, Gateway, Ref, Secret, Storage
from meshfs.errors import MeshError, NotFound, ServerUnavailable, Unauthenticated

pytestmark = pytest.mark.timeout(120)


async def test_wrong_password_is_one_clear_line(reva, password_file) -> None:  # type: ignore[no-untyped-def]
    secret = Secret.from_file(str(password_file("not-relativity")))
    gw = Gateway(reva.gateway, BasicCredentials("einstein", secret))
    with pytest.raises(Unauthenticated) as exc:
        await gw.open()
    await gw.aclose()
    msg = str(exc.value)
    assert msg.startswith("authenticate einstein: wrong username or password")
    assert "\n" not in msg and "not-relativity" not in msg and "not-relativity" not in repr(exc.value)
    assert exc.value.__cause__ is None and exc.value.__context__ is None


async def test_unknown_user(reva) -> None:  # type: ignore[no-untyped-def]
    gw = Gateway(reva.gateway, BasicCredentials("nobody", Secret("x")))
    with pytest.raises(Unauthenticated, match="wrong username or password"):
        await gw.open()
    await gw.aclose()


async def test_bearer_token_as_is(reva, einstein) -> None:  # type: ignore[no-untyped-def]
    token = await einstein.gw.access_token()
    gw = Gateway(reva.gateway, BearerCredentials(token, exchange=False))
    try:
        await gw.open()
        assert gw.user.username == "einstein"
        assert (await Storage(gw).get_home()) == einstein.home
        assert token.reveal() not in repr(gw)
    finally:
        await gw.aclose()


async def test_unreachable_gateway_bounded() -> None:
    with trio.socket.socket() as s:  # a port with nothing listening
        await s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gw = Gateway(
        f"127.0.0.1:{port}",
        BasicCredentials("einstein", Secret("relativity")),
        retries=3,
        backoff=0.01,
        backoff_max=0.05,
        call_timeout=5,
    )
    with trio.fail_after(30), pytest.raises(ServerUnavailable) as exc:
        await gw.open()
    await gw.aclose()
    assert "unreachable after 4 attempts" in str(exc.value) and "relativity" not in str(exc.value)


async def test_token_refreshed_before_expiry(einstein) -> None:  # type: ignore[no-untyped-def]
    gw = einstein.gw
    before = gw.auth_count
    assert gw._token_deadline is not None, "Reva tokens are JWTs with exp: a refresh time must be known"
    gw._token_deadline = trio.current_time() - 1  # pretend the token is about to expire (trio clock)
    await einstein.storage.stat(einstein.home)
    assert gw.auth_count == before + 1
    await einstein.storage.stat(einstein.home)
    assert gw.auth_count == before + 1  # fresh again: no further logins


async def test_token_refreshed_after_suspend(einstein) -> None:  # type: ignore[no-untyped-def]
    # the monotonic clock does not run during a suspend; the wall-clock refresh time catches it
    gw = einstein.gw
    before = gw.auth_count
    gw._token_refresh_wall = 0.0
    await einstein.storage.stat(einstein.home)
    assert gw.auth_count == before + 1


@pytest.mark.parametrize("by_id", [False, True])
async def test_refused_token_reauthenticates_once(einstein, by_id) -> None:  # type: ignore[no-untyped-def]
    """Reva answers a stat with an invalid token (server restarted with a new secret, revoked) with
    NOT_FOUND, not UNAUTHENTICATED: the gateway must notice and log in again, not report ENOENT."""
    gw = einstein.gw
    ref = Ref.to((await einstein.storage.stat(einstein.home)).id) if by_id else einstein.home
    before = gw.auth_count
    gw._token = Secret("garbage.token.value")
    gw._verified_at = None  # no successful call "recently"
    info = await einstein.storage.stat(ref)
    assert info.name and gw.auth_count == before + 1
    # other calls answer differently (gRPC PERMISSION_DENIED, UNKNOWN): same recovery
    for call in (einstein.storage.get_home, einstein.shares.list_received_shares):
        gw._token, gw._verified_at = Secret("garbage.token.value"), None
        await call()
    assert gw.auth_count == before + 3


async def test_real_not_found_stays_not_found(einstein) -> None:  # type: ignore[no-untyped-def]
    gw = einstein.gw
    before = gw.auth_count
    gw._verified_at = None
    with pytest.raises(NotFound):
        await einstein.storage.stat(einstein.home.child("does-not-exist"))
    assert gw.auth_count == before  # checked with WhoAmI, token fine, no new login


async def test_gateway_killed_mid_session(reva, proxy_factory) -> None:  # type: ignore[no-untyped-def]
    port = int(reva.gateway.rpartition(":")[2])
    proxy: CuttingProxy = await proxy_factory(port)  # type: ignore[assignment]
    gw = Gateway(
        f"127.0.0.1:{proxy.port}",
        BasicCredentials("einstein", Secret("relativity")),
        retries=3,
        backoff=0.01,
        backoff_max=0.05,
        call_timeout=5,
    )
    try:
        await gw.open()
        st = Storage(gw)
        home = await st.get_home()
        await st.stat(home)
        proxy.stop()  # the "server" dies: open connections cut, new ones refused
        with trio.fail_after(30), pytest.raises(ServerUnavailable) as exc:
            await st.stat(home)
        assert "\n" not in str(exc.value) and str(exc.value).startswith("stat /users/")
    finally:
        await gw.aclose()


async def test_hung_gateway_times_out(reva, proxy_factory) -> None:  # type: ignore[no-untyped-def]
    port = int(reva.gateway.rpartition(":")[2])
    proxy: CuttingProxy = await proxy_factory(port, blackhole=True)  # type: ignore[assignment]
    gw = Gateway(
        f"127.0.0.1:{proxy.port}",
        BasicCredentials("einstein", Secret("relativity")),
        retries=2,
        backoff=0.01,
        backoff_max=0.05,
        call_timeout=0.5,
    )
    try:
        with trio.fail_after(30), pytest.raises(ServerUnavailable) as exc:  # Timeout is a subclass
            await gw.open()
    finally:
        await gw.aclose()
    # gRPC reports a never-finished handshake as UNAVAILABLE, a silent server as DEADLINE_EXCEEDED
    assert "after 3 attempts" in str(exc.value)


async def test_no_secret_in_debug_logs(reva, caplog, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import logging
    import uuid

    from cs3_helpers import fd_of  # type: ignore[import-not-found]

    from meshfs.cs3 import Transfer

    caplog.set_level(logging.DEBUG)
    bad = Gateway(reva.gateway, BasicCredentials("einstein", Secret("wrong-password-xyz")))
    with pytest.raises(Unauthenticated):
        await bad.open()
    await bad.aclose()
    gw = Gateway(reva.gateway, BasicCredentials("einstein", Secret("relativity")))
    tr = Transfer(gw)
    try:
        await gw.open()
        first = (await gw.access_token()).reveal()
        gw._token, gw._verified_at = Secret("garbage.token.value"), None
        home = await Storage(gw).get_home()
        name = f"log-check-{uuid.uuid4().hex[:8]}.bin"  # unique: parallel runs share the server
        src = tmp_path / "f"
        src.write_bytes(b"x" * 2_000_000)
        with fd_of(src) as fd:
            await tr.upload(home.child(name), fd, 2_000_000)
        with fd_of(tmp_path / "g", write=True) as fd:
            await tr.download(home.child(name), fd)
        await Storage(gw).delete(home.child(name))
        second = (await gw.access_token()).reveal()
    finally:
        tr.close()
        await gw.aclose()
    text = "\n".join(f"{r.getMessage()} {r.args!r}" for r in caplog.records)
    assert "re-authenticating" in text  # the log did capture our debug lines
    for secret in ("wrong-password-xyz", "relativity", first, second, "garbage.token.value"):
        assert secret not in text


async def test_tls_with_ca_file(reva, proxy_factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """TLS end to end: a TLS front end (self-signed, openssl) in front of the dev gateway."""
    import shutil
    import ssl

    from cs3_helpers import make_tls_files  # type: ignore[import-not-found]

    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI missing: cannot make a test certificate (apt-get install openssl)")
    cert, key = make_tls_files(tmp_path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2"])
    port = int(reva.gateway.rpartition(":")[2])
    proxy: CuttingProxy = await proxy_factory(port, tls=ctx)  # type: ignore[assignment]
    creds = BasicCredentials("einstein", Secret("relativity"))
    gw = Gateway(f"localhost:{proxy.port}", creds, tls=True, ca_file=str(cert))
    try:
        await gw.open()
        assert (await Storage(gw).get_home()).path.startswith("/users/")
    finally:
        await gw.aclose()
    # without the CA the system trust store refuses the self-signed certificate: a clear error, bounded
    untrusted = Gateway(f"localhost:{proxy.port}", creds, tls=True, retries=1, backoff=0.01, call_timeout=5)
    with trio.fail_after(30), pytest.raises(ServerUnavailable):
        await untrusted.open()
    await untrusted.aclose()
    missing = Gateway(f"localhost:{proxy.port}", creds, ca_file=str(tmp_path / "nope.pem"))
    with pytest.raises(MeshError, match="cannot read CA file"):
        await missing.open()
