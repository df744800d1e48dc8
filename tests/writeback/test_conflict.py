"""A concurrent remote edit while our upload is pending: both versions survive. The file keeps the remote
content, ours goes up beside it as `<stem>-<user>.<YYYY-mm-dd_HH_MM_SS>-conflict.<ext>`, and
`meshfs status --json` lists the conflict.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from wbkit import Mounter, WebDav, wait_for  # type: ignore[import-not-found]

pytestmark = [pytest.mark.reva, pytest.mark.fuse]

STAMP = r"\d{4}-\d{2}-\d{2}_\d{2}_\d{2}_\d{2}"


def write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


@pytest.mark.parametrize("name", ["notes.txt", "README"])
def test_remote_edit_during_pending_upload_makes_conflict_copy(
    mounter: Mounter, dav: WebDav, area: str, name: str
) -> None:
    dav.put(f"{area}/{name}", b"base version\n")
    a = mounter.mount("upload_delay=300s")
    local = a.home / area / name
    assert local.read_bytes() == b"base version\n"
    ours, theirs = b"our edit on node A\n" * 20, b"their edit on the server\n" * 7
    write(local, ours)
    dav.put(f"{area}/{name}", theirs)  # someone else saves meanwhile

    a.sync_ok(a.home / area, timeout=60)

    assert dav.get(f"{area}/{name}") == theirs, "the remote version must stay in place"
    stem, dot, ext = name.rpartition(".")
    pattern = (
        re.escape(stem) + r"-einstein\." + STAMP + r"-conflict\." + re.escape(ext)
        if dot
        else re.escape(name) + r"-einstein\." + STAMP + r"-conflict"
    )
    names = sorted(dav.names(area))
    copies = [n for n in names if re.fullmatch(pattern, n)]
    assert len(copies) == 1 and len(names) == 2, f"expected {name} and one conflict copy, got {names}"
    assert dav.get(f"{area}/{copies[0]}") == ours, "our version must survive in the conflict copy"

    conflicts = a.status()["fs"]["conflicts"]
    assert [(c["path"], os.path.basename(c["copy"])) for c in conflicts] == [
        (f"home/{area}/{name}", copies[0])
    ]
    assert a.status()["fs"]["uploads"] == []
    # the mount follows the server again: the file shows their content, the copy ours
    wait_for(lambda: local.read_bytes() == theirs, 30, "the mount to show the remote version")
    assert (a.home / area / copies[0]).read_bytes() == ours
    assert os.getxattr(local, "user.meshfs.state").decode() == "clean"
