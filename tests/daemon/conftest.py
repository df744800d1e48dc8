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

from rig import cli_env, write_private
from rigs import HERE, Rig, cleanup


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
    write_private(r.password_file, "relativity\n")
    r.env = cli_env(
        r.runtime_dir,
        filesystem="fakefs:FakeFilesystem",
        pythonpath=[HERE],
        FAKEFS_EVENTS=os.fspath(r.events_file),
    )
    try:
        yield r
    finally:
        problems = cleanup(r)
    assert not problems, f"the test left {problems}"
