"""meshfs.auth without a server: strict secret files, WLCG discovery, the token command, re-reads.

Fast unit tests on real files and real subprocesses (no fakes needed).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import sys
import time
from pathlib import Path

import pytest
import trio
from authrig import TOKEN_CMD, write_secret

from meshfs.auth import (
    MountCredentials,
    TokenFile,
    credential_source,
    discover_token_file,
    read_secret_file,
    redact,
    run_token_command,
)
from meshfs.config import ConfigError, load_config
from meshfs.cs3 import BasicCredentials, BearerCredentials, Secret
from meshfs.errors import Unauthenticated

NOBODY = 65534


def jwt(claims: dict[str, object]) -> str:
    def part(d: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS256'})}.{part(claims)}.c2ln"


def reva_like(exp: float) -> str:
    return jwt({"aud": ["reva"], "exp": int(exp), "user": {"username": "einstein"}})


def oidc_like(exp: float) -> str:
    return jwt({"aud": "cernbox", "exp": int(exp), "sub": "einstein"})


# ---------------------------------------------------------------------------------- secret files


def test_read_secret_file_first_line(tmp_path: Path) -> None:
    p = write_secret(tmp_path / "t", "  tok-1  \nsecond line")
    secret, version = read_secret_file("token_file", p)
    assert secret.reveal() == "tok-1" and version.size == p.stat().st_size


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_readable_by_others_refused_in_one_line(tmp_path: Path, mode: int) -> None:
    p = write_secret(tmp_path / "t", "s3cr3t-value", mode=mode)
    with pytest.raises(ConfigError) as err:
        read_secret_file("token_file", p)
    line = str(err.value)
    assert "\n" not in line and f"mode {mode:04o}" in line and "chmod 600" in line
    assert line.startswith("config: token_file: ") and "s3cr3t-value" not in line


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
def test_foreign_owned_refused(tmp_path: Path) -> None:
    p = write_secret(tmp_path / "t", "tok")
    os.chown(p, NOBODY, NOBODY)
    with pytest.raises(ConfigError, match=f"must be owned by uid {os.getuid()}, not {NOBODY}"):
        read_secret_file("token_file", p)


def test_not_a_regular_file_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a regular file"):
        read_secret_file("token_file", tmp_path)


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config: token_file: cannot read '.*nope': No such file"):
        read_secret_file("token_file", tmp_path / "nope")


# ---------------------------------------------------------------------------------- discovery


def test_discovery_order(tmp_path: Path) -> None:
    uid = 4242  # a uid whose /tmp/bt_u<uid> does not exist
    runtime = tmp_path / "run"
    runtime.mkdir()
    assert discover_token_file({}, uid) is None
    assert discover_token_file({"XDG_RUNTIME_DIR": str(runtime)}, uid) is None  # candidate missing
    write_secret(runtime / f"bt_u{uid}", "x")
    found = discover_token_file({"XDG_RUNTIME_DIR": str(runtime)}, uid)
    assert found == TokenFile(runtime / f"bt_u{uid}", "$XDG_RUNTIME_DIR/bt_u<uid>")
    named = tmp_path / "job-token"
    env = {"XDG_RUNTIME_DIR": str(runtime), "BEARER_TOKEN_FILE": str(named)}
    # $BEARER_TOKEN_FILE wins, even before the file exists (the login then says it is missing)
    assert discover_token_file(env, uid) == TokenFile(named, "$BEARER_TOKEN_FILE")


def test_discovery_falls_back_to_tmp(tmp_path: Path) -> None:
    uid = os.getuid()
    tmp_candidate = Path(f"/tmp/bt_u{uid}")
    if tmp_candidate.exists():
        pytest.skip(f"{tmp_candidate} exists on this machine: cannot test the fallback without touching it")
    write_secret(tmp_candidate, "x")
    try:
        assert discover_token_file({"XDG_RUNTIME_DIR": str(tmp_path)}) == TokenFile(
            tmp_candidate, "/tmp/bt_u<uid>"
        )
    finally:
        tmp_candidate.unlink()


def _config(tmp_path: Path, **flags: object) -> object:
    return load_config(
        flags={"source": "cs3://einstein@127.0.0.1:19600", "mountpoint": str(tmp_path / "mnt"), **flags},
        require=("source",),
        env={"XDG_CACHE_HOME": str(tmp_path / "cache")},
    )


def test_credential_source_without_options_uses_bearer_token_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = write_secret(tmp_path / "job.token", reva_like(time.time() + 600))
    monkeypatch.setenv("BEARER_TOKEN_FILE", str(token))
    source = credential_source(_config(tmp_path))  # type: ignore[arg-type]
    assert source.token_file == TokenFile(token, "$BEARER_TOKEN_FILE")
    assert "$BEARER_TOKEN_FILE" in source.describe()
    token.chmod(0o644)
    with pytest.raises(ConfigError) as err:
        credential_source(_config(tmp_path))  # type: ignore[arg-type]
    assert "token_file (from $BEARER_TOKEN_FILE)" in str(err.value) and "chmod 600" in str(err.value)
    monkeypatch.setenv("BEARER_TOKEN_FILE", str(tmp_path / "gone"))
    with pytest.raises(ConfigError, match=r"\$BEARER_TOKEN_FILE names '.*gone': No such file"):
        credential_source(_config(tmp_path))  # type: ignore[arg-type]


def test_credential_source_with_nothing_says_what_is_needed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BEARER_TOKEN_FILE", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    if Path(f"/tmp/bt_u{os.getuid()}").exists():
        pytest.skip("/tmp/bt_u<uid> exists on this machine")
    with pytest.raises(ConfigError, match="one is needed to log in"):
        credential_source(_config(tmp_path))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- token command


def _cmd(tmp_path: Path, token: str, *extra: str) -> tuple[str, Path]:
    tok = write_secret(tmp_path / "cmd.token", token)
    count = tmp_path / "runs"
    return f"{sys.executable} {TOKEN_CMD} {tok} {count} {' '.join(extra)}", count


def test_token_command_prints_token_and_stderr_is_redacted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    command, count = _cmd(tmp_path, "opaque-token-123")
    with caplog.at_level(logging.DEBUG, logger="meshfs.auth"):
        assert run_token_command(command) == Secret("opaque-token-123")
    assert count.read_text() == "run\n"
    assert "opaque-token-123" not in caplog.text and "tokencmd: issued ***" in caplog.text


def test_token_command_failure_is_one_line_without_token(tmp_path: Path) -> None:
    token = reva_like(time.time() + 600)
    command, _ = _cmd(tmp_path, token, "--fail")
    with pytest.raises(Unauthenticated) as err:
        run_token_command(command)
    text = str(err.value)
    assert "exited with status 3" in text and token not in text and "\n" not in text
    assert "refused to hand out ***" in text


def test_token_command_bounded_time(tmp_path: Path) -> None:
    command, _ = _cmd(tmp_path, "t", "--sleep", "30")
    started = time.monotonic()
    with pytest.raises(Unauthenticated, match=r"did not finish within 0.5 s \(killed\)"):
        run_token_command(command, timeout=0.5)
    assert time.monotonic() - started < 10


def test_token_command_not_found_and_no_shell(tmp_path: Path) -> None:
    with pytest.raises(Unauthenticated, match="'no-such-oidc-token' not found"):
        run_token_command("no-such-oidc-token cernbox")
    marker = tmp_path / "shell-ran"
    # no shell: `;` is a plain argument of echo (which then prints a line with spaces: no token)
    with pytest.raises(Unauthenticated, match="'echo' printed no token"):
        run_token_command(f"echo tok ; touch {marker}")
    assert not marker.exists()
    assert run_token_command("echo tok-2") == Secret("tok-2")


def test_redact_hides_jwts_and_given_secrets() -> None:
    t = reva_like(time.time())
    assert redact(f"got {t} and pw hunter2", Secret("hunter2")) == "got *** and pw ***"


# ---------------------------------------------------------------------------------- the source


async def test_token_file_reread_when_changed(tmp_path: Path) -> None:
    a, b = reva_like(time.time() + 600), reva_like(time.time() + 1200)
    path = write_secret(tmp_path / "t", a)
    source = MountCredentials(token_file=TokenFile(path, "token_file"))
    first = await source.credentials()
    assert first == BearerCredentials(Secret(a), exchange=False)  # a Reva token is used as is
    write_secret(path, b)  # in place
    assert (await source.credentials()).token == Secret(b)  # checked before every login
    c = reva_like(time.time() + 1800)
    write_secret(path, c, atomic=True)  # renamed over it
    assert (await source.credentials()).token == Secret(c)
    assert source.file_reads == 3


async def test_unsafe_or_empty_rewrite_keeps_the_old_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = reva_like(time.time() + 600), reva_like(time.time() + 1200)
    path = write_secret(tmp_path / "t", a)
    source = MountCredentials(token_file=TokenFile(path, "token_file"))
    await source.credentials()
    write_secret(path, "")  # a writer between truncate and write
    assert (await source.credentials()).token == Secret(a)
    write_secret(path, b, mode=0o644)
    with caplog.at_level(logging.ERROR, logger="meshfs.auth"):
        assert (await source.credentials()).token == Secret(a)
        assert (await source.credentials()).token == Secret(a)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "chmod 600" in errors[0] and b not in caplog.text
    path.chmod(0o600)
    assert (await source.credentials()).token == Secret(b)


async def test_oidc_token_is_exchanged(tmp_path: Path) -> None:
    token = oidc_like(time.time() + 600)
    source = MountCredentials(token_file=TokenFile(write_secret(tmp_path / "t", token), "token_file"))
    assert await source.credentials() == BearerCredentials(Secret(token), exchange=True)


async def test_password_file_gives_basic_credentials(tmp_path: Path) -> None:
    path = write_secret(tmp_path / "pw", "relativity")
    source = MountCredentials(username="einstein", password_file=path)
    assert await source.credentials() == BasicCredentials("einstein", Secret("relativity"))
    assert "relativity" not in repr(source) and "relativity" not in str(source.status())


async def test_watch_bumps_generation_on_rotation(tmp_path: Path) -> None:
    path = write_secret(tmp_path / "t", reva_like(time.time() + 600))
    source = MountCredentials(token_file=TokenFile(path, "token_file"), watch_interval=0.05)
    await source.credentials()
    async with trio.open_nursery() as nursery:
        await nursery.start(source.watch)
        write_secret(path, reva_like(time.time() + 1200), atomic=True)
        with trio.fail_after(10):
            while source.generation == 0:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert source.generation == 1


async def test_command_runs_when_stale_or_expiring_and_is_rate_limited(tmp_path: Path) -> None:
    soon = reva_like(time.time() + 30)  # inside the 60 s margin: "near expiry"
    command, count = _cmd(tmp_path, soon)
    source = MountCredentials(token_command=command, command_min_interval=3600)
    assert (await source.credentials()).token == Secret(soon)
    assert source.command_runs == 1
    # near expiry again, but the last run was just now: not run again
    assert (await source.credentials(Secret(soon))).token == Secret(soon)
    assert count.read_text().count("run") == 1
    later = reva_like(time.time() + 3600)
    write_secret(tmp_path / "cmd.token", later)
    source.command_min_interval = 0
    assert (await source.credentials(Secret(soon))).token == Secret(later)
    assert source.command_runs == 2
    # a fresh token that is neither stale nor expiring: no run
    assert (await source.credentials()).token == Secret(later)
    assert source.command_runs == 2


async def test_command_failure_keeps_token_then_raises_when_none(tmp_path: Path) -> None:
    command, _ = _cmd(tmp_path, "x", "--fail")
    source = MountCredentials(token_command=command)
    with pytest.raises(Unauthenticated, match="exited with status 3"):
        await source.credentials()
