"""After the suite: the shared mount's daemon must not have logged internal errors, and nothing may be
left pending or in conflict. Named to run last; run alone it checks a fresh mount (and still must pass).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from mounthelp import run_meshfs, sync

pytestmark = [pytest.mark.reva, pytest.mark.fuse]


def test_shared_mount_is_healthy_after_the_suite(mount: Path) -> None:
    sync(mount / "home", timeout=120)
    proc = run_meshfs("status", os.fspath(mount), "--json", timeout=30, check=True)
    entry = json.loads(proc.stdout)["mounts"][0]
    assert entry["state"] == "running", entry
    fs = entry["fs"]
    assert fs["uploads"] == [], fs["uploads"]
    assert fs["conflicts"] == [], fs["conflicts"]
    assert fs["cache"]["dirty_files"] == 0, fs["cache"]
    log = Path(entry["cache_dir"]) / "daemon.log"
    bad = [
        line
        for line in log.read_text(errors="replace").splitlines()
        if " ERROR " in line or " CRITICAL " in line or "Traceback" in line
    ]
    assert not bad, "the daemon logged internal errors:\n" + "\n".join(bad[:20])
