"""Authentication of real mounts through the CLI against the private short-token Reva (tokens live
20 s): a token file rotated while mounted keeps the mount working after the old token expired; a
token command is run for the mount; $BEARER_TOKEN_FILE is found without any credential option;
unsafe (world-readable, foreign-owned) password/token files stop the mount with one line.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path

import pytest
from authrig import (
    LEEWAY,
    TOKEN_CMD,
    MountRig,
    jwt_exp,
    mint_token,
    mounted,
    one_line,
    wait_for,
    webdav,
    write_secret,
)

pytestmark = [pytest.mark.fuse, pytest.mark.reva]
NOBODY = 65534


def wait_until(wall: float, what: str) -> None:
    wait_for(lambda: time.time() >= wall, max(0.0, wall - time.time()) + 10, what)


def next_token(rig: MountRig, old: str) -> str:
    """The token a rotating agent writes: minted shortly before `old` expires, different from it."""
    wait_until(jwt_exp(old) - 6, "shortly before the old token expires")
    return wait_for(lambda: (t := mint_token(rig.stack)) != old and t, 10, "a new token")


def round_trip(rig: MountRig, name: str, body: bytes) -> None:
    """Write through the mount, upload (`meshfs sync`), read back through WebDAV and the mount."""
    path = rig.home / name
    path.write_bytes(body)
    done = rig.meshfs("sync", os.fspath(path))
    assert done.returncode == 0, done.stderr
    assert webdav(rig.stack, "GET", name) == (200, body)
    assert path.read_bytes() == body
    assert name in os.listdir(rig.home)


def assert_no_secret_in_log(rig: MountRig, *secrets: str) -> None:
    text = rig.log_text
    assert text, "the daemon log is empty"
    for s in secrets:
        assert s not in text


def test_token_file_rotated_while_mounted_keeps_working(mrig: MountRig) -> None:
    a = mint_token(mrig.stack)
    token_file = write_secret(mrig.root / "token", a)
    names = [f"auth-rot-{uuid.uuid4().hex[:8]}-{i}.txt" for i in range(2)]
    done = mrig.mount("--token-file", os.fspath(token_file), "-o", "upload_delay=0s", "-v")
    assert done.returncode == 0, done.stderr
    try:
        round_trip(mrig, names[0], b"before the rotation\n")
        b = next_token(mrig, a)
        write_secret(token_file, b, atomic=True)  # as oidc-agent / htgettoken rotate it
        wait_until(jwt_exp(a) + LEEWAY + 1, "the old token to expire")
        round_trip(mrig, names[1], b"after the old token expired\n")
        assert (mrig.home / names[0]).read_bytes() == b"before the rotation\n"
        assert "changed: using the new token" in mrig.log_text
        assert_no_secret_in_log(mrig, a, b)
    finally:
        for name in names:
            webdav(mrig.stack, "DELETE", name)


def test_token_command_runs_for_the_mount(mrig: MountRig) -> None:
    a = mint_token(mrig.stack)
    agent = write_secret(mrig.root / "agent-token", a)
    runs = mrig.root / "runs"
    name = f"auth-cmd-{uuid.uuid4().hex[:8]}.txt"
    command = f"{sys.executable} {TOKEN_CMD} {agent} {runs}"
    done = mrig.mount("-o", f"token_command={command},upload_delay=0s")
    assert done.returncode == 0, done.stderr
    try:
        assert runs.read_text().count("run") >= 1
        first_runs = runs.read_text().count("run")
        write_secret(agent, next_token(mrig, a))
        wait_until(jwt_exp(a) + LEEWAY + 1, "the first token to expire")
        round_trip(mrig, name, b"token from a command\n")
        assert runs.read_text().count("run") > first_runs
        assert_no_secret_in_log(mrig, a, agent.read_text().strip())
        assert "tokencmd: issued ***" in mrig.log_text
    finally:
        webdav(mrig.stack, "DELETE", name)


def test_bearer_token_file_is_discovered(mrig: MountRig) -> None:
    token = mint_token(mrig.stack)
    token_file = write_secret(mrig.root / "job-token", token)
    name = f"auth-disc-{uuid.uuid4().hex[:8]}.txt"
    done = mrig.mount("-o", "upload_delay=0s", env={"BEARER_TOKEN_FILE": os.fspath(token_file)})
    assert done.returncode == 0, done.stderr
    try:
        round_trip(mrig, name, b"found by $BEARER_TOKEN_FILE\n")
        assert "found by $BEARER_TOKEN_FILE" in mrig.log_text
        status = mrig.meshfs("status", "--json", os.fspath(mrig.mountpoint))
        assert status.returncode == 0 and token not in status.stdout
        (row,) = json.loads(status.stdout)["mounts"]
        auth = row["fs"]["auth"]
        assert auth["kind"] == "bearer" and "$BEARER_TOKEN_FILE" in auth["source"]
        assert auth["token_expires"] == jwt_exp(token)
    finally:
        webdav(mrig.stack, "DELETE", name)


@pytest.mark.parametrize("how", ["password_file", "token_file", "BEARER_TOKEN_FILE"])
def test_world_readable_secret_file_is_refused(mrig: MountRig, how: str) -> None:
    secret = "relativity" if how == "password_file" else mint_token(mrig.stack)
    path = write_secret(mrig.root / "secret", secret, mode=0o644)
    if how == "BEARER_TOKEN_FILE":
        done = mrig.mount(env={"BEARER_TOKEN_FILE": os.fspath(path)})
    else:
        done = mrig.mount(f"--{how.replace('_', '-')}", os.fspath(path))
    # a configured file is checked by the CLI (a usage error, 2); a discovered one by the daemon (1)
    assert done.returncode == (1 if how == "BEARER_TOKEN_FILE" else 2)
    line = one_line(done.stderr)
    assert "accessible by others (mode 0644)" in line and f"chmod 600 '{path}'" in line
    assert secret not in done.stderr and secret not in mrig.log_text
    assert not mounted(mrig.mountpoint)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
@pytest.mark.parametrize("how", ["password_file", "BEARER_TOKEN_FILE"])
def test_foreign_owned_secret_file_is_refused(mrig: MountRig, how: str) -> None:
    secret = "relativity" if how == "password_file" else mint_token(mrig.stack)
    path = write_secret(mrig.root / "secret", secret)
    os.chown(path, NOBODY, NOBODY)
    if how == "BEARER_TOKEN_FILE":
        done = mrig.mount(env={"BEARER_TOKEN_FILE": os.fspath(path)})
    else:
        done = mrig.mount("--password-file", os.fspath(path))
    assert done.returncode == (1 if how == "BEARER_TOKEN_FILE" else 2)
    assert f"must be owned by uid {os.getuid()}, not {NOBODY}" in one_line(done.stderr)
    assert not mounted(mrig.mountpoint)


def test_no_credentials_at_all_is_one_line(mrig: MountRig, tmp_path: Path) -> None:
    if Path(f"/tmp/bt_u{os.getuid()}").exists():
        pytest.skip(f"/tmp/bt_u{os.getuid()} exists on this machine: discovery would find it")
    done = mrig.mount(env={"XDG_RUNTIME_DIR": os.fspath(tmp_path)})
    assert done.returncode == 1
    assert "one is needed to log in" in one_line(done.stderr)
    assert not mounted(mrig.mountpoint)


def test_a_token_written_after_expiry_recovers_the_mount(mrig: MountRig) -> None:
    a = mint_token(mrig.stack)
    token_file = write_secret(mrig.root / "token", a)
    name = f"auth-late-{uuid.uuid4().hex[:8]}.txt"
    body = b"readable again once a valid token is back\n"
    assert webdav(mrig.stack, "PUT", name, body)[0] in (201, 204)
    done = mrig.mount("--token-file", os.fspath(token_file), "-o", "attr_ttl=0s,entry_ttl=0s")
    assert done.returncode == 0, done.stderr
    try:
        assert (mrig.home / name).read_bytes() == body
        wait_until(jwt_exp(a) + LEEWAY + 1, "the token to expire")
        with pytest.raises(PermissionError):  # no valid token: EACCES, the mount stays
            (mrig.home / name).read_bytes()
        assert mounted(mrig.mountpoint)
        write_secret(token_file, mint_token(mrig.stack), atomic=True)

        def readable() -> bool:
            try:
                return (mrig.home / name).read_bytes() == body
            except PermissionError:
                return False

        wait_for(readable, 20, "the mount to use the new token")
    finally:
        webdav(mrig.stack, "DELETE", name)


def test_unsafe_rotation_is_refused_and_the_mount_keeps_its_token(mrig: MountRig) -> None:
    a = mint_token(mrig.stack)
    token_file = write_secret(mrig.root / "token", a)
    name = f"auth-unsafe-{uuid.uuid4().hex[:8]}.txt"
    assert webdav(mrig.stack, "PUT", name, b"still readable\n")[0] in (201, 204)
    done = mrig.mount("--token-file", os.fspath(token_file), "-o", "attr_ttl=0s,entry_ttl=0s")
    assert done.returncode == 0, done.stderr
    try:
        (entry,) = mrig.entries()
        cmdline = Path(f"/proc/{entry['pid']}/cmdline").read_bytes().decode(errors="replace")
        assert a not in cmdline
        b = wait_for(lambda: (t := mint_token(mrig.stack)) != a and t, 10, "a second token")
        write_secret(token_file, b, mode=0o644, atomic=True)  # a careless agent
        wait_for(lambda: "accessible by others (mode 0644)" in mrig.log_text, 15, "the refusal in the log")
        assert time.time() < jwt_exp(a)
        assert (mrig.home / name).read_bytes() == b"still readable\n"  # served with the old token
        assert_no_secret_in_log(mrig, a, b)
    finally:
        webdav(mrig.stack, "DELETE", name)
