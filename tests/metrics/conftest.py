"""Fixtures of the metrics/status tests: the private short-token Reva and a mount rig, shared with
tests/auth (authrig.py). Must not import meshfs.vfs.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "auth"))

from authrig import MountRig, Stack, private_reva


@pytest.fixture(scope="session")
def auth_reva() -> Iterator[Stack]:
    with private_reva() as stack:
        yield stack


@pytest.fixture
def mrig(tmp_path: Path, auth_reva: Stack) -> Iterator[MountRig]:
    rig = MountRig(tmp_path, auth_reva)
    try:
        yield rig
    finally:
        problems = rig.cleanup()
    assert not problems, f"the test left {problems}"
