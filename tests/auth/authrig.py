"""Helpers of the auth/metrics tests: a private dev Reva with short-lived tokens, minting real Reva
tokens, secret files, and `MountRig`, which mounts through the real CLI (`python -m meshfs`) with bounded
timeouts and guarantees in `cleanup()` that no mount or daemon survives the test.

Imports from meshfs only meshfs.cs3 (to mint tokens with a basic login); never vfs/.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
REVACTL = REPO / "dev" / "reva" / "revactl"
TOKEN_LIFETIME = 20  # seconds: REVA_TOKEN_EXPIRES of the private stack (Reva adds a 5 s leeway)
LEEWAY = 5
PRIVATE_ENV = {"REVA_INSTANCE": "auth", "REVA_PORT_OFFSET": "600", "REVA_TOKEN_EXPIRES": str(TOKEN_LIFETIME)}
CLI_TIMEOUT = 90.0
TOKEN_CMD = HERE / "tokencmd.py"


@dataclass(frozen=True, slots=True)
class Stack:
    """Where a dev Reva answers."""

    gateway: str
    webdav_url: str
    user: str = "einstein"
    password: str = "relativity"

    @property
    def source(self) -> str:
        return f"cs3://{self.user}@{self.gateway}"


def revactl(*args: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REVACTL), *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def stack_from_revactl(env: dict[str, str]) -> Stack:
    done = revactl("env", env=env, timeout=30)
    assert done.returncode == 0, done.stderr
    values = {}
    for line in done.stdout.splitlines():
        key, sep, raw = line.partition("=")
        if sep:
            parts = shlex.split(raw)
            values[key] = parts[0] if parts else ""
    return Stack(gateway=values["REVA_GATEWAY"], webdav_url=values["REVA_WEBDAV_URL"])


@contextlib.contextmanager
def private_reva() -> Iterator[Stack]:
    """The `auth` instance (ports +600, tokens live TOKEN_LIFETIME s); stopped again if we started it."""
    build = revactl("build", env=PRIVATE_ENV, timeout=30 * 60)
    assert build.returncode == 0, build.stdout + build.stderr
    started = revactl("status", env=PRIVATE_ENV, timeout=30).returncode != 0
    up = revactl("up", env=PRIVATE_ENV, timeout=180)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        stack = stack_from_revactl(PRIVATE_ENV)
        lifetime = jwt_exp(mint_token(stack)) - time.time()
        assert lifetime <= TOKEN_LIFETIME + 2, (
            f"the running `auth` Reva mints tokens living {lifetime:.0f} s, not {TOKEN_LIFETIME} s: "
            "stop it (REVA_INSTANCE=auth REVA_PORT_OFFSET=600 dev/reva/revactl down) and rerun"
        )
        yield stack
    finally:
        if started:
            revactl("down", env=PRIVATE_ENV, timeout=60)


def mint_token(stack: Stack) -> str:
    """A fresh Reva access token of `stack.user` (a basic login through meshfs.cs3)."""
    from meshfs.cs3 import BasicCredentials, Gateway, Secret

    async def login() -> str:
        async with Gateway(stack.gateway, BasicCredentials(stack.user, Secret(stack.password))) as gw:
            return (await gw.access_token()).reveal()

    return trio.run(login)


def jwt_exp(token: str) -> float:
    from meshfs.cs3.gateway import jwt_expiry

    exp = jwt_expiry(token)
    assert exp is not None
    return exp


def write_secret(path: Path, text: str, *, mode: int = 0o600, atomic: bool = False) -> Path:
    """Write `text` to `path` with `mode`; `atomic`: through a temp file renamed over it (a rotation
    as token agents do it); otherwise truncated and rewritten in place."""
    target = path.with_name(path.name + ".new") if atomic else path
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    os.chmod(target, mode)
    if atomic:
        os.replace(target, path)
    return path


def wait_for(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `cond` until truthy; AssertionError after `timeout` s (never an unbounded wait)."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def webdav(stack: Stack, method: str, name: str, body: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(stack.webdav_url.rstrip("/") + "/" + name, data=body, method=method)
    basic = b64encode(f"{stack.user}:{stack.password}".encode()).decode()
    request.add_header("Authorization", f"Basic {basic}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


def mounted(path: Path) -> bool:
    target = os.fspath(path)
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return any(line.split()[4] == target for line in f)


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def one_line(stderr: str) -> str:
    """A failed command's stderr must be exactly one `meshfs: ...` line; return it."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got {lines!r}"
    assert lines[0].startswith("meshfs: "), lines[0]
    return lines[0]


@dataclass
class MountRig:
    """One test's mount: mountpoint, cache dir, private registry dir; the real MeshFilesystem."""

    root: Path
    stack: Stack
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mountpoint.mkdir(exist_ok=True)
        self.env = {
            **{k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "MESHFS_FILESYSTEM")},
            "MESHFS_RUNTIME_DIR": os.fspath(self.root / "run"),
            "PYTHONPATH": os.fspath(REPO),
            **self.env,
        }
        for key in ("BEARER_TOKEN_FILE", "XDG_RUNTIME_DIR"):
            self.env.pop(key, None)

    @property
    def mountpoint(self) -> Path:
        return self.root / "mnt"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def home(self) -> Path:
        return self.mountpoint / "home"

    @property
    def log_text(self) -> str:
        try:
            return (self.cache_dir / "daemon.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def meshfs(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = CLI_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "meshfs", *args],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=self.root,
        )

    def mount(self, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return self.meshfs(
            "mount",
            self.stack.source,
            os.fspath(self.mountpoint),
            "--cache-dir",
            os.fspath(self.cache_dir),
            "-o",
            "tls=false",
            *extra,
            env=env,
        )

    def entries(self) -> list[dict[str, Any]]:
        out = []
        for p in sorted((self.root / "run").glob("*.json")):
            with contextlib.suppress(OSError, ValueError):
                out.append(json.loads(p.read_text()))
        return out

    def status_json(self) -> dict[str, Any]:
        """`meshfs status --json MOUNTPOINT` (only this rig's mount: on a shared machine the plain
        command also lists other tests' mounts, dead ones included)."""
        done = self.meshfs("status", "--json", os.fspath(self.mountpoint))
        assert done.returncode == 0, done.stdout + done.stderr
        value = json.loads(done.stdout)
        assert isinstance(value, dict)
        return value

    def cleanup(self) -> list[str]:
        """umount (draining), then kill what is left and detach lazily; returns what had to be forced."""
        problems = []
        if mounted(self.mountpoint):
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.meshfs("umount", os.fspath(self.mountpoint), timeout=60)
        for entry in self.entries():
            pid = int(entry["pid"])
            if pid_alive(pid):
                problems.append(f"daemon {pid} still running")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(AssertionError):
                    wait_for(lambda pid=pid: not pid_alive(pid), 10, f"daemon {pid} to die")
        if mounted(self.mountpoint):
            problems.append(f"{self.mountpoint} still mounted")
            subprocess.run(["umount", "-l", os.fspath(self.mountpoint)], capture_output=True, timeout=30)
        return problems
