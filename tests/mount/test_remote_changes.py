"""Changes made by another node: with kernel and meshfs TTLs of a minute, the remote-change poller still
shows another node's creates, rewrites and deletes within a few poll intervals (directory etags move,
the poller relists and invalidates the kernel's entries and attributes), and destructive operations
check the server instead of trusting what this node has cached."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from mounthelp import expect_errno, sync, wait_for

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


def test_rmdir_of_a_directory_another_node_just_filled_is_refused(
    work: Path, mount_factory: Callable[..., Path]
) -> None:
    """Delete removes a whole tree on Reva: an rmdir trusting a cached empty listing would delete
    the other node's new file with the directory."""
    a = mount_factory("einstein", *LONG_TTLS[:3], "dir_poll_interval=0") / "home" / work.name
    (work / "d").mkdir()
    (work / "e").mkdir()
    assert os.listdir(a / "d") == [] and os.listdir(a / "e") == []  # cached as empty for a minute
    (work / "d" / "late").write_bytes(b"precious")
    (work / "e" / "late").write_bytes(b"precious too")
    sync(work)
    with expect_errno(errno.ENOTEMPTY):
        os.rmdir(a / "d")
    (a / "empty").mkdir()
    with expect_errno(errno.ENOTEMPTY, errno.EEXIST):
        os.rename(a / "empty", a / "e")  # rename over a directory that is no longer empty
    assert (work / "d" / "late").read_bytes() == b"precious"
    assert (work / "e" / "late").read_bytes() == b"precious too"
