"""Tests of dev/reva/revactl's own behaviour: lifecycle, idempotency, env output, refusals, clear errors.

Owns the contract of the dev-stack script that the Makefile, the fixtures and other engineers rely on.
Runs a private instance in tmp_path on free ports; talks to it with grpc/cs3apis where a check needs
the server; imports nothing from meshfs.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cs3.gateway.v1beta1 import gateway_api_pb2 as gw
from cs3.gateway.v1beta1 import gateway_api_pb2_grpc as gw_grpc
from cs3.rpc.v1beta1 import code_pb2
from cs3.storage.provider.v1beta1 import provider_api_pb2 as sp
from cs3.storage.provider.v1beta1 import resources_pb2 as spr

REPO = Path(__file__).resolve().parents[2]
REVACTL = REPO / "dev" / "reva" / "revactl"
DEFAULT_PORTS = (19000, 19001, 11000, 11001, 14000, 13000)

pytestmark = pytest.mark.reva


def run(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REVACTL), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
def private_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Environment for a throw-away instance in tmp_path, on an offset whose ports are all free."""
    offsets = [o for o in range(700, 300, -10) if all(_free(p + o) for p in DEFAULT_PORTS)]
    if not offsets:
        pytest.fail("no free REVA_PORT_OFFSET between 310 and 700 for a private stack")
    env = dict(os.environ)
    env.update(
        REVA_INSTANCE=f"pytest-{os.getpid()}",
        REVA_VAR_DIR=str(tmp_path / "var"),
        REVA_PORT_OFFSET=str(offsets[0]),
    )
    build = run(env, "build", timeout=30 * 60)
    assert build.returncode == 0, build.stdout + build.stderr
    try:
        yield env
    finally:
        run(env, "down", timeout=60)


def test_bad_offset_is_one_clear_line() -> None:
    env = dict(os.environ, REVA_PORT_OFFSET="5")
    res = run(env, "env")
    assert res.returncode == 1
    assert res.stdout == ""
    assert res.stderr.count("\n") == 1
    assert res.stderr.startswith("revactl: REVA_PORT_OFFSET=5: use a multiple of 10")


def test_missing_reva_bin_is_one_clear_line(tmp_path: Path) -> None:
    env = dict(os.environ, REVA_BIN=str(tmp_path / "nope" / "revad"), REVA_VAR_DIR=str(tmp_path / "var"))
    res = run(env, "up")
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        f"revactl: REVA_BIN={tmp_path / 'nope' / 'revad'} does not exist (revactl only builds "
        f"{REPO / '.cache' / 'bin' / 'revad'})"
    ]
    assert not (tmp_path / "nope").exists()


def test_lifecycle_of_a_private_instance(private_env: dict[str, str]) -> None:
    env = private_env
    var_dir = Path(env["REVA_VAR_DIR"])
    offset = int(env["REVA_PORT_OFFSET"])

    assert run(env, "status").returncode == 3
    first = run(env, "up")
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"gateway 127.0.0.1:{19000 + offset}" in first.stdout
    assert f"http://127.0.0.1:{19001 + offset}/remote.php/webdav/" in first.stdout
    pid = (var_dir / "revad.pid").read_text().strip()
    assert oct((var_dir / "secrets.json").stat().st_mode & 0o777) == "0o600"

    again = run(env, "up")  # idempotent: same process, nothing restarted
    assert again.returncode == 0, again.stderr
    assert f"(pid {pid})" in again.stdout
    assert "warning" not in again.stderr
    assert run(env, "status").returncode == 0

    sourced = subprocess.run(
        [
            "bash",
            "-c",
            'eval "$1"; echo "$REVA_GATEWAY|$REVA_VAR_DIR|$REVA_DATAGATEWAY_URL"',
            "_",
            run(env, "env").stdout,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert (
        sourced.stdout.strip()
        == f"127.0.0.1:{19000 + offset}|{var_dir}|http://127.0.0.1:{19001 + offset}/data"
    )

    # a second instance on the same ports is refused, naming the ports
    clash = dict(env, REVA_INSTANCE=env["REVA_INSTANCE"] + "-b", REVA_VAR_DIR=str(var_dir) + "-b")
    refused = run(clash, "up")
    assert refused.returncode == 1
    assert "port(s) already in use on 127.0.0.1: gateway=" in refused.stderr

    stopped = run(env, "down")
    assert stopped.returncode == 0
    assert f"stopped (pid {pid})" in stopped.stdout
    assert not Path(f"/proc/{pid}").exists() or b"-dev-dir" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert run(env, "status").returncode == 3
    assert "is not running" in run(env, "down").stdout

    wiped = run(env, "reset")
    assert wiped.returncode == 0, wiped.stderr
    assert not var_dir.exists()


def test_foreign_var_dir_is_left_alone(tmp_path: Path) -> None:
    foreign = tmp_path / "precious"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    env = dict(os.environ, REVA_INSTANCE="pytest-foreign", REVA_VAR_DIR=str(foreign))
    for cmd in ("reset", "down", "up"):
        res = run(env, cmd)
        assert res.returncode == 1, cmd
        assert "was not made by revactl" in res.stderr, cmd
    assert sorted(p.name for p in foreign.iterdir()) == ["keep.txt"]
    assert (foreign / "keep.txt").read_text() == "mine"


def test_env_is_shell_quoted(tmp_path: Path) -> None:
    odd = tmp_path / "dir with 'quotes' and spaces"
    env = dict(os.environ, REVA_INSTANCE="pytest-quoted", REVA_VAR_DIR=str(odd))
    out = run(env, "env").stdout
    line = next(x for x in out.splitlines() if x.startswith("REVA_VAR_DIR="))
    assert shlex.split(line.partition("=")[2]) == [str(odd)]


def test_short_token_lifetime_and_what_reva_answers_after_expiry(private_env: dict[str, str]) -> None:
    """REVA_TOKEN_EXPIRES sets the gateway's token lifetime; pins how Reva refuses an expired token."""
    env = dict(private_env, REVA_TOKEN_EXPIRES="2")
    started = run(env, "up")
    assert started.returncode == 0, started.stdout + started.stderr
    gateway = f"127.0.0.1:{19000 + int(env['REVA_PORT_OFFSET'])}"
    with grpc.insecure_channel(gateway) as channel:
        stub = gw_grpc.GatewayAPIStub(channel)
        auth = stub.Authenticate(
            gw.AuthenticateRequest(type="basic", client_id="einstein", client_secret="relativity"), timeout=30
        )
        assert auth.status.code == code_pb2.CODE_OK, auth.status
        payload = auth.token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        assert claims["exp"] - claims["iat"] == 2
        md = [("x-access-token", auth.token)]
        home = stub.GetHome(sp.GetHomeRequest(), metadata=md, timeout=30)
        assert home.status.code == code_pb2.CODE_OK, home.status

        deadline = time.monotonic() + 30  # expiry (2 s) + Reva's 5 s leeway, polled, bounded
        while stub.WhoAmI(gw.WhoAmIRequest(token=auth.token), timeout=30).status.code == code_pb2.CODE_OK:
            assert time.monotonic() < deadline, "token still accepted 30 s after a 2 s lifetime"
            time.sleep(0.2)
        assert stub.WhoAmI(gw.WhoAmIRequest(token=auth.token), timeout=30).status.code == (
            code_pb2.CODE_UNAUTHENTICATED
        )
        # calls with the expired token: a CS3 NOT_FOUND status, or a gRPC UNKNOWN error; never UNAUTHENTICATED
        stat = stub.Stat(sp.StatRequest(ref=spr.Reference(path=home.path)), metadata=md, timeout=30)
        assert stat.status.code == code_pb2.CODE_NOT_FOUND, stat.status
        with pytest.raises(grpc.RpcError) as err:
            stub.GetHome(sp.GetHomeRequest(), metadata=md, timeout=30)
        assert err.value.code() == grpc.StatusCode.UNKNOWN
        assert "user not found in context" in (err.value.details() or "")


def _fake_revad(tmp_path: Path, body: str) -> Path:
    fake = tmp_path / "fake-revad"
    fake.write_text(f"#!/bin/sh\n{body}\n")
    fake.chmod(0o755)
    return fake


def test_up_reports_a_revad_that_dies_with_its_log_tail(tmp_path: Path) -> None:
    fake = _fake_revad(tmp_path, 'echo "boom: cannot start" >&2; exit 3')
    env = dict(
        os.environ, REVA_BIN=str(fake), REVA_VAR_DIR=str(tmp_path / "var"), REVA_INSTANCE="pytest-dies"
    )
    env["REVA_PORT_OFFSET"] = "690"
    res = run(env, "up")
    assert res.returncode == 1
    assert res.stderr.startswith("revactl: revad exited with status 3 during start-up; log tail (")
    assert "boom: cannot start" in res.stderr
    assert not (tmp_path / "var" / "revad.pid").exists()


def test_up_gives_up_after_the_timeout_and_stops_what_it_started(tmp_path: Path) -> None:
    marker = tmp_path / "pid"
    fake = _fake_revad(tmp_path, f'echo $$ > "{marker}"; exec sleep 600')
    env = dict(
        os.environ, REVA_BIN=str(fake), REVA_VAR_DIR=str(tmp_path / "var"), REVA_INSTANCE="pytest-hangs"
    )
    env.update(REVA_PORT_OFFSET="690", REVA_UP_TIMEOUT="1")
    res = run(env, "up")
    assert res.returncode == 1
    assert res.stderr.startswith("revactl: revad not ready after 1 s (PROPFIND as einstein:")
    pid = int(marker.read_text())
    assert not Path(f"/proc/{pid}").exists()  # revactl waited for (and reaped) its child before exiting


def test_up_ocm_stops_the_first_peer_when_the_second_cannot_start() -> None:
    """`up --ocm` starts two stacks; when the second cannot start (here: its gateway port is taken)
    the first one is stopped again, not left running on its ports (it once blocked the next CI run)."""
    offsets = [
        o
        for o in range(500, 290, -10)
        if all(_free(p + o + 100) and _free(p + o + 200) for p in DEFAULT_PORTS)
    ]
    if not offsets:
        pytest.fail("no free REVA_PORT_OFFSET between 300 and 500 for a private OCM pair")
    env = dict(os.environ, REVA_PORT_OFFSET=str(offsets[0]))
    env.pop("REVA_INSTANCE", None)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", DEFAULT_PORTS[0] + offsets[0] + 200))  # the second peer's gateway
        blocker.listen()
        try:
            res = run(env, "up", "--ocm", timeout=300)
            assert res.returncode == 1, res.stdout + res.stderr
            assert "port(s) already in use" in res.stderr
            st = run(env, "status", "--ocm")
            assert st.returncode == 3 and " is up " not in st.stdout, st.stdout
        finally:
            run(env, "down", "--ocm", timeout=60)
            run(env, "reset", "--ocm", timeout=60)
