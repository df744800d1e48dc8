"""Fixture for the share tests: `mounts`, a factory of real `meshfs mount`s of demo users (share_rig.py).

Must not import meshfs.vfs (the daemon owns the filesystem).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from share_rig import Mounts  # type: ignore[import-not-found]


@pytest.fixture
def mounts(tmp_path: Path, reva: Any, fuse_available: None) -> Iterator[Mounts]:
    """Factory of real `meshfs mount`s of demo users on the dev Reva; all unmounted at the end."""
    ms = Mounts(
        root=tmp_path,
        gateway=reva.gateway,
        runtime_dir=tmp_path / "run",
        passwords={u.username: u.password for u in reva.users},
    )
    try:
        yield ms
    finally:
        problems = ms.cleanup()
    assert not problems, f"the test left {problems}"
