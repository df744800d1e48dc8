"""Helpers of the daemon/CLI tests: `Rig` (paths + environment of one test's daemons; runs
`python -m meshfs` with bounded timeouts), bounded waits, and `cleanup()`, which guarantees that no
mount and no daemon survives a test (even a failed one): every daemon in the rig's registry is killed,
every mount under the test's tmp dir lazily detached. Must not import meshfs.vfs or meshfs.cs3.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rig import (
    REPO,
    detach_all_below,
    kill_registered,
    mounted,
    one_line,
    pid_alive,
    registry_entries,
    run_meshfs,
    wait_for,
)

__all__ = [
    "HERE",
    "REPO",
    "SOURCE",
    "Rig",
    "cleanup",
    "mounted",
    "one_line",
    "pid_alive",
    "wait_for",
]

HERE = Path(__file__).resolve().parent
SOURCE = "cs3://einstein@127.0.0.1:19000"
CLI_TIMEOUT = 60.0


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
        return run_meshfs(*args, env={**self.env, **(env or {})}, timeout=timeout, cwd=cwd)

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
        return registry_entries(self.runtime_dir)

    def entry(self, mountpoint: Path | None = None) -> dict[str, Any]:
        target = os.path.realpath(mountpoint or self.mountpoint)
        found = [e for e in self.entries() if e["mountpoint"] == target]
        assert found, f"no registry entry for {target}: {self.entries()}"
        return found[0]


def cleanup(rig: Rig) -> list[str]:
    """Kill every daemon still registered, lazily detach every mount below the test's tmp dir;
    returns what was left (a test that leaves either behind fails)."""
    return kill_registered(rig.runtime_dir) + detach_all_below(rig.root)
