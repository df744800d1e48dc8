"""Helpers of the auth/metrics tests (the shared plumbing is tests/rig.py): the private dev Reva with
short-lived tokens (`private_reva`, revactl instance `auth`), minting real Reva tokens, secret files, and
`MountRig`, one test's mount through the real CLI whose `cleanup()` guarantees that no mount or daemon
survives the test. Re-exports the shared helpers its tests import by this name.

Imports from meshfs only meshfs.cs3 (to mint tokens with a basic login); never vfs/.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from rig import (
    REPO,
    PrivateStack,
    WebDav,
    cli_env,
    kill_registered,
    lazy_unmount,
    mounted,
    one_line,
    pid_alive,
    registry_entries,
    run_meshfs,
    wait_for,
)

__all__ = [
    "LEEWAY",
    "REPO",
    "TOKEN_CMD",
    "MountRig",
    "Stack",
    "jwt_exp",
    "mint_token",
    "mounted",
    "one_line",
    "pid_alive",
    "private_reva",
    "wait_for",
    "webdav",
    "write_secret",
]

HERE = Path(__file__).resolve().parent
TOKEN_LIFETIME = 20  # seconds: REVA_TOKEN_EXPIRES of the private stack (Reva adds a 5 s leeway)
LEEWAY = 5
CLI_TIMEOUT = 90.0
TOKEN_CMD = HERE / "tokencmd.py"


def _private_stack() -> PrivateStack:
    """The `auth` instance: ports +600, tokens living TOKEN_LIFETIME s."""
    return PrivateStack("auth", 600, extra={"REVA_TOKEN_EXPIRES": str(TOKEN_LIFETIME)})


@dataclass(frozen=True, slots=True)
class Stack:
    """Where a dev Reva answers."""

    gateway: str
    http_url: str
    user: str = "einstein"
    password: str = "relativity"

    @property
    def source(self) -> str:
        return f"cs3://{self.user}@{self.gateway}"


@contextlib.contextmanager
def private_reva() -> Iterator[Stack]:
    """The `auth` instance (ports +600, tokens live TOKEN_LIFETIME s); stopped again if we started it."""
    private = _private_stack()
    private.revactl("build", timeout=30 * 60)
    started = not private.is_up()
    private.up()
    try:
        stack = Stack(gateway=private.gateway, http_url=private.http_url)
        lifetime = jwt_exp(mint_token(stack)) - time.time()
        assert lifetime <= TOKEN_LIFETIME + 2, (
            f"the running `auth` Reva mints tokens living {lifetime:.0f} s, not {TOKEN_LIFETIME} s: "
            "stop it (REVA_INSTANCE=auth REVA_PORT_OFFSET=600 dev/reva/revactl down) and rerun"
        )
        yield stack
    finally:
        if started:
            private.run("down", timeout=60)


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


def webdav(stack: Stack, method: str, name: str, body: bytes | None = None) -> tuple[int, bytes]:
    """(HTTP status, body) of a WebDAV request on `name` in the stack user's home (errors returned)."""
    return WebDav(stack.http_url, stack.user, stack.password).request(method, name, body)


@dataclass
class MountRig:
    """One test's mount: mountpoint, cache dir, private registry dir; the real MeshFilesystem."""

    root: Path
    stack: Stack
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mountpoint.mkdir(exist_ok=True)
        self.env = {
            **cli_env(self.root / "run", drop=("BEARER_TOKEN_FILE", "XDG_RUNTIME_DIR")),
            **self.env,
        }

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
        return run_meshfs(*args, env={**self.env, **(env or {})}, timeout=timeout, cwd=self.root)

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
        return registry_entries(self.root / "run")

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
        if mounted(self.mountpoint):
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.meshfs("umount", os.fspath(self.mountpoint), timeout=60)
        problems = kill_registered(self.root / "run")
        if mounted(self.mountpoint):
            problems.append(f"{self.mountpoint} still mounted")
            lazy_unmount(self.mountpoint)
        return problems
