"""The remote-change poller: with kernel and meshfs TTLs of a minute, a second node still sees another
node's creates, rewrites and deletes within a few poll intervals (directory etags move, the poller
relists and invalidates the kernel's entries and attributes)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from mounthelp import sync, wait_for

pytestmark = [pytest.mark.reva, pytest.mark.fuse]

POLL = 0.5
LONG_TTLS = ("entry_ttl=60s", "attr_ttl=60s", "negative_ttl=60s", f"dir_poll_interval={POLL:g}s")
BOUND = 15.0  # a few poll intervals plus slack for a loaded 2-core machine; the TTLs alone would take 60 s


def test_poller_shows_remote_changes_despite_long_ttls(
    work: Path, mount_factory: Callable[..., Path]
) -> None:
    b = mount_factory("einstein", *LONG_TTLS) / "home" / work.name
    assert os.listdir(b) == []  # B has cached an empty listing for a minute
    with pytest.raises(FileNotFoundError):
        os.stat(b / "new")  # ... and a negative entry

    # stat only (no listing in between: READDIRPLUS would refresh the kernel's entries by itself)
    (work / "new").write_bytes(b"v1")
    sync(work)
    wait_for(lambda: (b / "new").exists(), BOUND, "B's negative entry for the file A created to go")
    assert (b / "new").read_bytes() == b"v1"

    (work / "new").write_bytes(b"version two")
    sync(work)
    wait_for(lambda: os.stat(b / "new").st_size == len(b"version two"), BOUND, "B to see A's new size")
    assert (b / "new").read_bytes() == b"version two"

    (work / "new").unlink()
    wait_for(lambda: not (b / "new").exists(), BOUND, "B's entry for the file A deleted to go")
    assert os.listdir(b) == []
