"""Fixtures for the daemon/CLI tests: `rig`, one test's private world (see rigs.py).

Must not import meshfs.vfs or meshfs.cs3.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rigs import HERE, REPO, Rig, cleanup


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    root = tmp_path
    r = Rig(
        root=root,
        mountpoint=root / "mnt",
        cache_dir=root / "cache",
        runtime_dir=root / "run",
        password_file=root / "password",
        events_file=root / "events",
    )
    r.mountpoint.mkdir()
    r.password_file.write_text("relativity\n")
    r.password_file.chmod(0o600)
    r.env = {
        **os.environ,
        "MESHFS_RUNTIME_DIR": os.fspath(r.runtime_dir),
        "MESHFS_FILESYSTEM": "fakefs:FakeFilesystem",
        "PYTHONPATH": os.pathsep.join([os.fspath(HERE), os.fspath(REPO)]),
        "FAKEFS_EVENTS": os.fspath(r.events_file),
    }
    r.env.pop("NOTIFY_SOCKET", None)
    try:
        yield r
    finally:
        problems = cleanup(r)
    assert not problems, f"the test left {problems}"
