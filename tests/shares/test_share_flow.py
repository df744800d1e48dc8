"""Shares as directories, end to end: real Reva, marie and einstein mounted at once, the real CLI.

Each test makes its own uniquely named resources in marie's/einstein's home (the dev server is shared
by parallel runs) and removes its shares at the end.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import uuid
from pathlib import Path

import pytest
from share_rig import Mounts, UserMount, wait_for  # type: ignore[import-not-found]

pytestmark = pytest.mark.timeout(240)


def _uniq(stem: str) -> str:
    return f"{stem}-{uuid.uuid4().hex[:8]}"


def _ls(path: Path) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []


def _read(path: Path) -> str | None:
    """Content, or None while the file is (transiently) missing: another client's upload may make a
    Stat by resource id answer NOT_FOUND for a moment (seen once in ~10 runs; noted in the report)."""
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def _pending_ids(m: UserMount) -> dict[str, str]:
    """name in .pending → share id, from `meshfs share pending --json`."""
    rows = m.share_json("pending")["shares"]
    return {r["path"].rpartition("/")[2]: r["id"] for r in rows}


def _cleanup_shares(owner: UserMount, path: str, *who: str) -> None:
    for w in who:
        owner.share("rm", path, w, ok=False)


def test_marie_shares_folder_and_notebook_with_einstein(mounts: Mounts) -> None:
    marie = mounts.mount("marie")
    einstein = mounts.mount("einstein")
    folder, notebook = _uniq("analysis"), _uniq("notes") + ".ipynb"
    mhome = marie.root / "home"
    (mhome / folder).mkdir()
    (mhome / folder / "data.txt").write_text("v1\n")
    (mhome / notebook).write_text('{"cells": []}\n')
    assert marie.meshfs("sync", os.fspath(mhome)).returncode == 0
    try:
        out = marie.share("add", os.fspath(mhome / folder), "einstein", "--role", "editor").stdout
        assert f"shared home/{folder} with einstein as editor" in out
        # WHO by email, role by the other name
        marie.share("add", os.fspath(mhome / notebook), "einstein@example.org", "--role", "viewer")

        # both are pending for einstein, listed in .pending and by the command
        pending = einstein.root / "shared-with-me" / ".pending"
        wait_for(lambda: {folder, notebook} <= set(_ls(pending)), what="both shares in .pending")
        ids = _pending_ids(einstein)
        assert folder in ids and notebook in ids
        assert (pending / notebook).read_text() == '{"cells": []}\n'  # readable while pending
        assert folder not in _ls(einstein.root / "shared-with-me")

        # accept the folder with mv, the notebook with the command
        os.rename(pending / folder, einstein.root / "shared-with-me" / folder)
        out = einstein.share("accept", notebook).stdout
        assert f"accepted: shared-with-me/{notebook}" in out
        swm = einstein.root / "shared-with-me"
        wait_for(lambda: {folder, notebook} <= set(_ls(swm)), what="both shares accepted")
        assert folder not in _ls(pending) and notebook not in _ls(pending)

        # editor folder: einstein edits, marie sees it through her own mount
        (swm / folder / "data.txt").write_text("v2 by einstein\n")
        (swm / folder / "new.txt").write_text("hello marie\n")
        assert einstein.meshfs("sync", os.fspath(swm / folder)).returncode == 0
        seen = mhome / folder / "data.txt"
        wait_for(
            lambda: _read(seen) == "v2 by einstein\n",
            timeout=60,  # bounded; generous because this 2-core machine runs other suites at once
            what=f"marie to see einstein's edit (she sees {_read(seen)!r} at the start)",
        )
        wait_for(lambda: (mhome / folder / "new.txt").exists(), what="marie to see einstein's new file")
        assert (mhome / folder / "new.txt").read_text() == "hello marie\n"

        # viewer notebook: read-only mode, EACCES on write, still readable
        nb = swm / notebook
        assert os.stat(nb).st_mode & 0o222 == 0
        with pytest.raises(PermissionError) as exc:
            nb.write_text("overwritten")
        assert exc.value.errno == errno.EACCES
        assert nb.read_text() == '{"cells": []}\n'
        assert (mhome / notebook).read_text() == '{"cells": []}\n'

        # the virtual dirs refuse mkdir/create/unlink
        for action in (lambda: (swm / "x").mkdir(), lambda: (swm / "x").write_text("")):
            with pytest.raises(OSError) as exc2:
                action()
            assert exc2.value.errno == errno.EPERM

        # marie's shared-by-me shows both, with the grantee xattr
        sbm = marie.root / "shared-by-me"
        wait_for(lambda: {folder, notebook} <= set(_ls(sbm)), what="marie's shared-by-me")
        assert os.getxattr(sbm / folder, "user.meshfs.grantees") == b"einstein:editor"
        assert os.getxattr(mhome / notebook, "user.meshfs.grantees") == b"einstein:viewer"
        rows = marie.share_json("ls", os.fspath(mhome / folder))["shares"]
        assert [(r["user"], r["role"], r["direction"]) for r in rows] == [("einstein", "editor", "by-me")]

        # marie removes the folder share → gone from einstein's tree without a remount
        out = marie.share("rm", os.fspath(mhome / folder), "einstein").stdout
        assert f"stopped sharing home/{folder} with einstein" in out
        wait_for(lambda: folder not in _ls(swm), what="the removed share to disappear")
        wait_for(lambda: not (swm / folder).exists(), what="lookup of the removed share to fail")
        assert notebook in _ls(swm)
        assert os.getxattr(sbm / notebook, "user.meshfs.grantees") == b"einstein:viewer"
    finally:
        _cleanup_shares(marie, os.fspath(mhome / folder), "einstein")
        _cleanup_shares(marie, os.fspath(mhome / notebook), "einstein")


def test_decline_and_json(mounts: Mounts) -> None:
    marie = mounts.mount("marie")
    einstein = mounts.mount("einstein")
    name = _uniq("declined")
    (marie.root / "home" / name).mkdir()
    path = os.fspath(marie.root / "home" / name)
    try:
        added = marie.share_json("add", path, "Einstein", "--role", "viewer")["share"]
        assert added["user"] == "einstein" and added["role"] == "viewer" and added["path"] == f"home/{name}"
        wait_for(lambda: name in _ls(einstein.root / "shared-with-me" / ".pending"), what="pending share")
        rows = [r for r in einstein.share_json("pending")["shares"] if r["id"] == added["id"]]
        assert rows and rows[0]["user"] == "marie" and rows[0]["state"] == "pending"
        out = einstein.share("decline", name).stdout
        assert f"declined share {added['id']} from marie" in out
        wait_for(lambda: name not in _ls(einstein.root / "shared-with-me" / ".pending"), what="declined")
        assert name not in _ls(einstein.root / "shared-with-me")
        every = {r["id"]: r for r in einstein.share_json("ls")["shares"] if r["direction"] == "with-me"}
        assert every[added["id"]]["state"] == "rejected"
        # a declined share can be accepted later
        einstein.share("accept", added["id"])
        swm = einstein.root / "shared-with-me"
        wait_for(lambda: name in _ls(swm), what="accepted after decline")
        # a viewer folder share is r-x and refuses writes inside with EACCES
        assert stat.S_IMODE(os.stat(swm / name).st_mode) & 0o777 == 0o555
        with pytest.raises(PermissionError) as exc:
            (swm / name / "new.txt").write_text("x")
        assert exc.value.errno == errno.EACCES
        # renames into / inside the virtual dirs: EPERM (only .pending/X → shared-with-me/ is allowed)
        mine = einstein.root / "home" / _uniq("mine")
        mine.write_text("mine")
        try:
            for src, dst in (
                (mine, swm / "moved-in"),
                (swm / name, swm / "renamed"),
                (swm / name, mine.parent / "out"),
            ):
                with pytest.raises(OSError) as exc2:
                    os.rename(src, dst)
                assert exc2.value.errno == errno.EPERM, (src, dst)
        finally:
            mine.unlink()
        assert name in _ls(swm)
    finally:
        _cleanup_shares(marie, path, "einstein")


def test_users_search(mounts: Mounts) -> None:
    einstein = mounts.mount("einstein")
    proc = einstein.meshfs("users", "curie", "--mount", os.fspath(einstein.mountpoint))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["USERNAME", "NAME", "EMAIL", "IDP"]
    assert any(line.split()[0] == "marie" and "Marie Curie" in line for line in lines[1:])
    proc = einstein.meshfs("users", "lovers-nobody", "--json", "--mount", os.fspath(einstein.mountpoint))
    assert proc.returncode == 0 and json.loads(proc.stdout) == {"users": []}
