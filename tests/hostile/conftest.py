"""Fixtures for the hostile-input, security and soak suite (issue 9): one real einstein mount through
the CLI per module, a fresh working directory per test; umount in finally with a lazy fallback and a
kill of the daemon, so nothing is left mounted even when a test fails."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def meshfs(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshfs", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return any(line.split()[4] == os.fspath(path) for line in f)


class Mount:
    def __init__(self, root: Path, reva: object, user: str = "einstein", options: str = "") -> None:
        self.root = root
        self.mp = root / "mnt"
        self.cache = root / "cache"
        self.mp.mkdir(parents=True)
        self.password = "".join(u.password for u in reva.users if u.username == user)  # type: ignore[attr-defined]
        pw = root / "password"
        pw.write_text(self.password + "\n")
        pw.chmod(0o600)
        self.pwfile = pw
        extra = os.environ.get("MESHFS_HOSTILE_MOUNT_OPTIONS", "")  # e.g. log_level=debug to chase a bug
        opts = ",".join(o for o in ("tls=false", "drain_timeout=60s", options, extra) if o)
        r = meshfs(
            "mount", f"cs3://{user}@{reva.gateway}", os.fspath(self.mp),  # type: ignore[attr-defined]
            "--password-file", os.fspath(pw), "--cache-dir", os.fspath(self.cache), "-o", opts,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert mounted(self.mp)

    def pid(self) -> int | None:
        r = meshfs("status", os.fspath(self.mp), "--json")
        import json

        try:
            data = json.loads(r.stdout)
        except ValueError:
            return None
        for m in data.get("mounts", []):
            if m.get("mountpoint") == os.fspath(self.mp):
                return int(m["pid"]) if m.get("pid") else None
        return None

    def close(self) -> None:
        pid = self.pid()
        try:
            meshfs("umount", os.fspath(self.mp), timeout=90)
        except subprocess.TimeoutExpired:
            pass
        if mounted(self.mp):
            subprocess.run(["umount", "-l", os.fspath(self.mp)], capture_output=True)
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="module")
def mount(reva: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    m = Mount(tmp_path_factory.mktemp("hostile"), reva)
    try:
        yield m
    finally:
        m.close()


@pytest.fixture
def work(mount: Mount) -> Path:
    d = mount.mp / "home" / f"hostile-{uuid.uuid4().hex[:10]}"
    d.mkdir()
    return d
