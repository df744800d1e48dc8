"""Fixtures of the auth tests: the private short-token Reva (`auth_reva`) and a mount rig (`mrig`).

Must not import meshfs.vfs.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from authrig import MountRig, Stack, private_reva


@pytest.fixture(scope="session")
def auth_reva() -> Iterator[Stack]:
    """A private dev Reva (REVA_INSTANCE=auth, ports +600) whose tokens live 20 s."""
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
