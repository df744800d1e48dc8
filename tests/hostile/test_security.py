"""Security of a default mount (issue 9): other users cannot read it, the cache dir and control socket
are private, secrets never reach the logs."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.reva, pytest.mark.fuse]


def _other_user() -> str:
    for name in ("nobody", "daemon"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    pytest.fail("no unprivileged user (nobody/daemon) on this machine to test access with")


def test_another_local_user_cannot_read_a_default_mount(work: Path) -> None:
    (work / "secret.txt").write_text("top secret")
    other = _other_user()
    r = subprocess.run(
        ["setpriv", f"--reuid={other}", f"--regid={pwd.getpwnam(other).pw_gid}", "--clear-groups",
         "cat", os.fspath(work / "secret.txt")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert r.returncode != 0
    assert "top secret" not in r.stdout
    assert "Permission denied" in r.stderr or "Operation not permitted" in r.stderr, r.stderr


def test_cache_dir_and_control_socket_are_private(mount) -> None:  # type: ignore[no-untyped-def]
    assert stat.S_IMODE(os.stat(mount.cache).st_mode) == 0o700
    sockets = []
    for root in (mount.cache, Path("/run/meshfs"), Path(os.environ.get("XDG_RUNTIME_DIR", "/nonexistent"))):
        if root.exists():
            sockets += [p for p in root.rglob("*") if p.is_socket()]
    assert sockets, "no control socket found"
    for s in sockets:
        assert stat.S_IMODE(os.stat(s).st_mode) & 0o077 == 0, f"{s} is {oct(os.stat(s).st_mode)}"


def test_the_password_never_reaches_logs_or_status(mount, work: Path) -> None:  # type: ignore[no-untyped-def]
    from conftest import meshfs  # type: ignore[import-not-found]

    (work / "f").write_text("x")
    meshfs("sync", os.fspath(work))
    status = meshfs("status", os.fspath(mount.mp), "--json").stdout
    assert mount.password not in status
    for log in mount.cache.rglob("*.log"):
        assert mount.password not in log.read_text(errors="replace"), log
    cmdline = Path(f"/proc/{mount.pid()}/cmdline").read_bytes().decode(errors="replace")
    assert mount.password not in cmdline
