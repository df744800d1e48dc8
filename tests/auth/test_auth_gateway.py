"""The Gateway with a meshfs.auth credential source against a real Reva whose tokens live 20 s:
a rotated token file is picked up (before a login and by the watcher), an expired token with no
replacement fails with one clear line, a token command runs when the token nears expiry.
"""

from __future__ import annotations

import base64
import json
import logging
import sys
import time
from pathlib import Path

import pytest
import trio
from authrig import LEEWAY, TOKEN_CMD, Stack, jwt_exp, mint_token, write_secret

from meshfs.auth import MountCredentials, TokenFile
from meshfs.cs3 import Gateway, Secret, Storage
from meshfs.errors import Unauthenticated

pytestmark = pytest.mark.reva


async def fresh_token(stack: Stack, other: str | None = None) -> str:
    """A token different from `other` (two logins within the same second mint the same JWT)."""
    with trio.fail_after(10):
        while True:
            token = await trio.to_thread.run_sync(mint_token, stack)
            if token != other:
                return token
            await trio.sleep(0.2)


async def until(wall: float) -> None:
    """Wait (bounded) until the wall clock reaches `wall`."""
    with trio.fail_after(max(0.0, wall - time.time()) + 10):
        while time.time() < wall:
            await trio.sleep(0.1)


async def until_expired(token: str) -> None:
    """Wait until the server no longer accepts `token` (exp + Reva's leeway)."""
    await until(jwt_exp(token) + LEEWAY + 1)


async def successor(stack: Stack, old: str) -> str:
    """The next token, minted as a rotating agent would: shortly before `old` expires."""
    await until(jwt_exp(old) - 6)
    return await fresh_token(stack, old)


async def test_token_file_rotated_before_expiry_keeps_working(tmp_path: Path, auth_reva: Stack) -> None:
    a = await fresh_token(auth_reva)
    path = write_secret(tmp_path / "token", a)
    source = MountCredentials(token_file=TokenFile(path, "token_file"))
    async with Gateway(auth_reva.gateway, source) as gw:
        storage = Storage(gw)
        home = await storage.get_home()
        assert gw.user.username == "einstein"
        b = await successor(auth_reva, a)
        write_secret(path, b)  # rewritten in place, no watcher: found at the next re-login
        await until_expired(a)
        assert (await storage.stat(home)).is_dir
        assert await gw.access_token() == Secret(b)
        assert gw.auth_count >= 2


async def test_watcher_switches_to_the_new_token_at_once(tmp_path: Path, auth_reva: Stack) -> None:
    a = await fresh_token(auth_reva)
    path = write_secret(tmp_path / "token", a)
    source = MountCredentials(token_file=TokenFile(path, "token_file"), watch_interval=0.1)
    async with Gateway(auth_reva.gateway, source, refresh_margin=0) as gw, trio.open_nursery() as nursery:
        await nursery.start(source.watch)
        storage = Storage(gw)
        await storage.get_home()
        b = await fresh_token(auth_reva, a)
        write_secret(path, b, atomic=True)
        with trio.fail_after(10):
            while source.generation == 0:
                await trio.sleep(0.02)
        await storage.get_home()
        assert await gw.access_token() == Secret(b)
        assert time.time() < jwt_exp(a)  # switched while the old one was still valid
        nursery.cancel_scope.cancel()


async def test_expired_token_without_replacement_is_one_clear_error(tmp_path: Path, auth_reva: Stack) -> None:
    a = await fresh_token(auth_reva)
    source = MountCredentials(token_file=TokenFile(write_secret(tmp_path / "token", a), "token_file"))
    async with Gateway(auth_reva.gateway, source) as gw:
        storage = Storage(gw)
        await storage.get_home()
        await until_expired(a)
        with pytest.raises(Unauthenticated) as err:
            await storage.get_home()
        assert "expired or was refused and no newer one is available" in str(err.value)
        assert a not in str(err.value) and a not in repr(err.value)


async def test_token_command_runs_when_the_token_nears_expiry(
    tmp_path: Path, auth_reva: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    a = await fresh_token(auth_reva)
    cmd_token = write_secret(tmp_path / "agent-token", a)
    runs = tmp_path / "runs"
    command = f"{sys.executable} {TOKEN_CMD} {cmd_token} {runs}"
    source = MountCredentials(token_command=command, command_min_interval=1.0)
    caplog.set_level(logging.DEBUG)
    async with Gateway(auth_reva.gateway, source) as gw:
        storage = Storage(gw)
        await storage.get_home()
        assert runs.read_text().count("run") == 1
        b = await successor(auth_reva, a)
        write_secret(cmd_token, b)  # what the agent hands out from now on
        await until_expired(a)
        await storage.get_home()
        assert await gw.access_token() == Secret(b)
        assert runs.read_text().count("run") >= 2
    assert a not in caplog.text and b not in caplog.text
    assert "tokencmd: issued ***" in caplog.text


async def test_oidc_token_is_exchanged_and_a_server_without_oidc_says_so(
    tmp_path: Path, auth_reva: Stack
) -> None:
    claims = {"iss": "https://idp.example.org", "aud": "cernbox", "sub": "einstein", "exp": time.time() + 600}
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    token = f"eyJhbGciOiJSUzI1NiJ9.{payload}.c2lnbmF0dXJl"
    source = MountCredentials(token_file=TokenFile(write_secret(tmp_path / "token", token), "token_file"))
    with pytest.raises(Unauthenticated) as err:
        async with Gateway(auth_reva.gateway, source):
            pass
    text = str(err.value)
    assert "could not exchange the bearer token" in text and token not in text and "\n" not in text


async def test_a_token_written_after_expiry_recovers_the_session(tmp_path: Path, auth_reva: Stack) -> None:
    a = await fresh_token(auth_reva)
    path = write_secret(tmp_path / "token", a)
    source = MountCredentials(token_file=TokenFile(path, "token_file"))
    async with Gateway(auth_reva.gateway, source) as gw:
        storage = Storage(gw)
        await storage.get_home()
        await until_expired(a)
        with pytest.raises(Unauthenticated):
            await storage.get_home()
        b = await fresh_token(auth_reva, a)
        write_secret(path, b)  # the agent was late
        assert (await storage.get_home()).path
        assert await gw.access_token() == Secret(b)
