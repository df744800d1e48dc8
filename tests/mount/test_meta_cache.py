"""The etag-validated metadata cache (vfs/tree.py) through the real kernel and Reva, on two nodes.

Past the 1 s TTLs, node B keeps serving a directory's listing and its files' attributes as long as one
Stat of the directory shows the same etag. Reva moves a directory's etag for every change below it, so a
change on node A (new size, new xattr, in the directory or one level down) must still show on B within
the TTL bound, with B's poller off: the etag checks alone have to find it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from mounthelp import sync, wait_for

pytestmark = [pytest.mark.reva, pytest.mark.fuse]

TTL = 1.0  # default entry/attr TTL
BOUND = 2 * TTL + 5.0  # + slack for a loaded 2-core machine


@pytest.fixture
def node_b(work: Path, mount_factory: Callable[..., Path]) -> Path:
    """The work directory as seen by a second node without a poller (TTLs and etag checks only)."""
    return mount_factory("einstein", "dir_poll_interval=0") / "home" / work.name


def keep_seeing(check: Callable[[], bool], seconds: float, what: str) -> None:
    """`check` holds on every look for `seconds` (B's TTLs run out meanwhile: etag checks take over)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert check(), what


def test_remote_size_and_xattr_changes_show_past_the_ttl(work: Path, node_b: Path) -> None:
    (work / "sub").mkdir()
    for path in (work / "f", work / "sub" / "g"):
        path.write_bytes(b"one")
    sync(work)
    assert sorted(os.listdir(node_b)) == ["f", "sub"]
    keep_seeing(
        lambda: os.stat(node_b / "f").st_size == 3 and os.stat(node_b / "sub" / "g").st_size == 3,
        3 * TTL,
        "B serves the unchanged files",
    )

    (work / "f").write_bytes(b"longer content")
    sync(work)
    wait_for(lambda: os.stat(node_b / "f").st_size == 14, BOUND, "B to see A's new size of f")
    assert (node_b / "f").read_bytes() == b"longer content"

    keep_seeing(lambda: os.stat(node_b / "sub" / "g").st_size == 3, 2 * TTL, "B serves sub/g")
    (work / "sub" / "g").write_bytes(b"g, rewritten")
    sync(work)
    wait_for(lambda: os.stat(node_b / "sub" / "g").st_size == 12, BOUND, "B to see sub/g's new size")

    keep_seeing(lambda: "user.colour" not in os.listxattr(node_b / "f"), 2 * TTL, "no xattr yet on B")
    os.setxattr(work / "f", "user.colour", b"red")
    wait_for(
        lambda: (
            "user.colour" in os.listxattr(node_b / "f") and os.getxattr(node_b / "f", "user.colour") == b"red"
        ),
        BOUND,
        "B to see the xattr A set",
    )
    assert sorted(os.listdir(node_b)) == ["f", "sub"]
