"""Helpers of the daemon/CLI tests: `Rig` (paths + environment of one test's daemons; runs
`python -m meshfs` with bounded timeouts), bounded waits, and `cleanup()`, which guarantees that no
mount and no daemon survives a test (even a failed one): every daemon in the rig's registry is killed,
every mount under the test's tmp dir lazily detached. Must not import meshfs.vfs or meshfs.cs3.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SOURCE = "cs3://einstein@127.0.0.1:19000"
CLI_TIMEOUT = 60.0


def mounted(path: Path | str) -> bool:
    target = os.fspath(path)
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return any(line.split()[4] == target for line in f)


def wait_for(cond: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll `cond` until it is truthy; fail after `timeout` seconds (never an unbounded wait)."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@dataclass
class Rig:
    """One test's world: a mountpoint, a cache dir, a runtime dir, a password file, an event log."""

    root: Path
    mountpoint: Path
    cache_dir: Path
    runtime_dir: Path
    password_file: Path
    events_file: Path
    env: dict[str, str] = field(default_factory=dict)

    def meshfs(
        self,
        *args: str,
        timeout: float = CLI_TIMEOUT,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "meshfs", *args],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=cwd,
        )

    def popen(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "meshfs", *args],
            env={**self.env, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def mount_args(
        self, *extra: str, mountpoint: Path | None = None, cache_dir: Path | None = None
    ) -> list[str]:
        return [
            "mount",
            SOURCE,
            os.fspath(mountpoint or self.mountpoint),
            "--password-file",
            os.fspath(self.password_file),
            "--cache-dir",
            os.fspath(cache_dir or self.cache_dir),
            "-o",
            "tls=false",
            *extra,
        ]

    def events(self) -> list[str]:
        try:
            return self.events_file.read_text().splitlines()
        except FileNotFoundError:
            return []

    def entries(self) -> list[dict[str, Any]]:
        out = []
        for p in sorted(self.runtime_dir.glob("*.json")):
            with contextlib.suppress(OSError, ValueError):
                out.append(json.loads(p.read_text()))
        return out

    def entry(self, mountpoint: Path | None = None) -> dict[str, Any]:
        target = os.path.realpath(mountpoint or self.mountpoint)
        found = [e for e in self.entries() if e["mountpoint"] == target]
        assert found, f"no registry entry for {target}: {self.entries()}"
        return found[0]


def one_line(stderr: str) -> str:
    """The stderr of a failed command must be exactly one non-empty line; return it."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got {lines!r}"
    assert lines[0].startswith("meshfs: "), lines[0]
    return lines[0]


def cleanup(rig: Rig) -> list[str]:
    problems = []
    for entry in rig.entries():
        pid = int(entry["pid"])
        if pid_alive(pid):
            problems.append(f"daemon {pid} still running")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(AssertionError):
                wait_for(lambda pid=pid: not pid_alive(pid), 10, f"daemon {pid} to die")
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        points = [line.split()[4] for line in f]
    for point in points:
        if point.startswith(os.fspath(rig.root) + "/"):
            problems.append(f"{point} still mounted")
            subprocess.run(
                ["umount", "-l", point] if os.geteuid() == 0 else ["fusermount3", "-u", "-z", point],
                capture_output=True,
                check=False,
                timeout=30,
            )
    return problems
