"""`meshfs status --json` of a real mount (with a pending upload and a held lock, so that every list
of the report has entries) validated against docs/status-schema.json.
"""

from __future__ import annotations

import fcntl
import json
import os
import uuid

import jsonschema
import pytest
from authrig import REPO, MountRig, wait_for, webdav, write_secret

pytestmark = [pytest.mark.fuse, pytest.mark.reva]
SCHEMA = json.loads((REPO / "docs" / "status-schema.json").read_text())


def validate(report: object) -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    jsonschema.Draft202012Validator(SCHEMA).validate(report)


def test_schema_rejects_what_it_should() -> None:
    good = {"mounts": []}
    validate(good)
    row = {
        "mountpoint": "/m", "source": "cs3://a@b:1", "pid": 1, "cache_dir": "/c", "started": 1.0,
        "state": "unreachable", "fs": None, "error": "no answer",
    }  # fmt: skip
    validate({"mounts": [row]})
    dead = {**row, "pid": None, "cache_dir": None, "started": None, "state": "dead", "error": "gone"}
    validate({"mounts": [dead]})
    for bad in ({"mounts": [{**row, "state": "sleeping"}]}, {"mounts": [{**row, "pid": "1"}]}, {}):
        with pytest.raises(jsonschema.ValidationError):
            validate(bad)


def test_status_json_of_a_real_mount_matches_the_schema(mrig: MountRig) -> None:
    password = write_secret(mrig.root / "password", mrig.stack.password)
    done = mrig.mount("--password-file", os.fspath(password), "-o", "upload_delay=1h")
    assert done.returncode == 0, done.stderr
    name = f"status-{uuid.uuid4().hex[:8]}.txt"
    locked = f"status-lock-{uuid.uuid4().hex[:8]}.txt"
    try:
        report = mrig.status_json()
        validate(report)
        (row,) = report["mounts"]
        assert row["state"] == "running" and row["mountpoint"] == os.path.realpath(mrig.mountpoint)
        assert row["fs"]["user"] == "einstein"
        auth = row["fs"]["auth"]
        assert auth["kind"] == "basic" and os.fspath(password) in auth["source"]
        assert mrig.stack.password not in json.dumps(report)

        (mrig.home / name).write_bytes(b"waiting for upload_delay\n")
        webdav(mrig.stack, "PUT", locked, b"lock me\n")
        with open(mrig.home / locked, "rb") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)

            def busy() -> dict[str, object] | None:
                r = mrig.status_json()
                fs = r["mounts"][0]["fs"]
                return r if fs["uploads"] and fs["locks"] else None

            report = wait_for(busy, 30, "a pending upload and a held lock in the status")
            validate(report)
            fs = report["mounts"][0]["fs"]
            assert any(u["path"].endswith(name) for u in fs["uploads"])
            assert any(lk["path"].endswith(locked) for lk in fs["locks"])
            assert fs["cache"]["dirty_files"] >= 1
            fcntl.flock(f, fcntl.LOCK_UN)
    finally:
        assert mrig.meshfs("umount", os.fspath(mrig.mountpoint), timeout=120).returncode == 0
        webdav(mrig.stack, "DELETE", name)
        webdav(mrig.stack, "DELETE", locked)


def test_status_json_of_all_mounts_matches_the_schema(mrig: MountRig) -> None:
    """The plain command lists every meshfs mount of this user: none of this rig's (not mounted),
    maybe other tests' running or dead ones; whatever it prints must match the schema."""
    done = mrig.meshfs("status", "--json")
    report = json.loads(done.stdout)
    validate(report)
    rows = report["mounts"]
    assert all(not r["mountpoint"].startswith(os.fspath(mrig.root)) for r in rows)
    assert done.returncode == (1 if any(r["error"] for r in rows) else 0), done.stderr
