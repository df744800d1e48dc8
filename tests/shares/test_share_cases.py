"""Share edge cases through the real CLI and mounts: bad input (one line, nothing changed), shares of one
name from two users, einstein's shared-by-me with the grantees xattr, a project space under projects/.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
import trio
from share_rig import (  # type: ignore[import-not-found]
    Mounts,
    UserMount,
    create_project_space,
    one_line,
    wait_for,
)

from meshfs.cs3 import BasicCredentials, Gateway, Ref, Role, Secret, Shares, Storage

pytestmark = pytest.mark.timeout(240)


def _uniq(stem: str) -> str:
    return f"{stem}-{uuid.uuid4().hex[:8]}"


def _ls(path: Path) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []


def _mine(m: UserMount) -> list[tuple[str, str, str, str]]:
    rows = m.share_json("ls")["shares"]
    return sorted((r["direction"], r["id"], r["user"], r["role"]) for r in rows)


def test_bad_input_one_line_nothing_changed(mounts: Mounts, tmp_path: Path) -> None:
    marie = mounts.mount("marie")
    einstein = mounts.mount("einstein")
    name = _uniq("bad-input")
    mhome = marie.root / "home"
    (mhome / name).mkdir()
    target = os.fspath(mhome / name)
    try:
        marie.share("add", target, "einstein", "--role", "viewer")
        wait_for(lambda: name in _ls(einstein.root / "shared-with-me" / ".pending"), what="pending share")
        einstein.share("accept", name)
        before_m, before_e = _mine(marie), _mine(einstein)

        outside = tmp_path / "outside.txt"
        outside.write_text("x")
        missing = os.fspath(mhome / "no-such-x")
        virtual = os.fspath(marie.root / "shared-by-me")
        reshare = os.fspath(einstein.root / "shared-with-me" / name)
        cases = [
            (marie, ("add", os.fspath(outside), "einstein", "--role", "viewer"), "is not inside", 1),
            (marie, ("add", target, "nobody-zz9", "--role", "viewer"), "unknown user 'nobody-zz9'", 1),
            (marie, ("add", target, "r", "--role", "viewer"), "ambiguous user 'r': candidates:", 1),
            (marie, ("add", target, "einstein", "--role", "owner"), "unknown role 'owner'", 2),
            (marie, ("add", target, "einstein", "--role", "editor"), "already shared with einstein", 1),
            (marie, ("add", missing, "einstein", "--role", "viewer"), "no such file", 1),
            (marie, ("add", virtual, "einstein", "--role", "viewer"), "virtual", 1),
            (marie, ("rm", target, "richard"), "not shared with richard", 1),
            (einstein, ("add", reshare, "richard", "--role", "viewer"), "resharing", 1),
            (einstein, ("accept", "no-such-share"), "no pending/rejected share named 'no-such-share'", 1),
            (einstein, ("decline", "no-such-share"), "no pending/accepted share named", 1),
        ]  # fmt: skip
        for who, args, expected, status in cases:
            proc = who.share(*args, ok=False)
            assert proc.returncode == status, (args, proc.returncode, proc.stderr)
            line = one_line(proc.stderr)
            assert expected in line, (args, line)
            assert proc.stdout == "", (args, proc.stdout)
        # the ambiguous answer names the candidates
        amb = one_line(marie.share("add", target, "r", "--role", "viewer", ok=False).stderr)
        assert "richard" in amb and "einstein" in amb
        # nothing changed
        assert _mine(marie) == before_m
        assert _mine(einstein) == before_e
        assert _ls(einstein.root / "shared-with-me").count(name) == 1
        # WHO as a unique part of a display name works
        proc = marie.share("add", target, "Feynman", "--role", "viewer")
        assert "with richard as viewer" in proc.stdout
        assert os.getxattr(mhome / name, "user.meshfs.grantees") == b"einstein:viewer,richard:viewer"
    finally:
        marie.share("rm", target, "einstein", ok=False)
        marie.share("rm", target, "richard", ok=False)


def test_same_name_from_two_users_gets_a_suffix(mounts: Mounts) -> None:
    marie = mounts.mount("marie")
    richard = mounts.mount("richard")
    einstein = mounts.mount("einstein")
    name = _uniq("common")
    for m, content in ((marie, "from marie\n"), (richard, "from richard\n")):
        (m.root / "home" / name).mkdir()
        (m.root / "home" / name / "who.txt").write_text(content)
        assert m.meshfs("sync", os.fspath(m.root / "home")).returncode == 0
    try:
        marie.share("add", os.fspath(marie.root / "home" / name), "einstein", "--role", "viewer")
        richard.share("add", os.fspath(richard.root / "home" / name), "einstein", "--role", "viewer")
        pending = einstein.root / "shared-with-me" / ".pending"

        def named() -> list[str]:
            return [n for n in _ls(pending) if n.startswith(name)]

        wait_for(lambda: len(named()) == 2, what="two pending shares of the same name")
        both = named()
        assert name in both  # the older keeps the plain name, the other gets " (<share id>)"
        other = next(n for n in both if n != name)
        assert other.startswith(f"{name} (") and other.endswith(")")
        # accept both: one by command with the suffixed name, one with mv
        einstein.share("accept", other)
        os.rename(pending / name, einstein.root / "shared-with-me" / name)
        swm = einstein.root / "shared-with-me"
        wait_for(lambda: len([n for n in _ls(swm) if n.startswith(name)]) == 2, what="both accepted")
        contents = sorted((swm / n / "who.txt").read_text() for n in _ls(swm) if n.startswith(name))
        assert contents == ["from marie\n", "from richard\n"]
        # the names are stable across a re-listing
        first = sorted(n for n in _ls(swm) if n.startswith(name))
        einstein.share("ls")  # refreshes the virtual dirs
        assert sorted(n for n in _ls(swm) if n.startswith(name)) == first
    finally:
        marie.share("rm", os.fspath(marie.root / "home" / name), "einstein", ok=False)
        richard.share("rm", os.fspath(richard.root / "home" / name), "einstein", ok=False)


def test_einsteins_shared_by_me(mounts: Mounts) -> None:
    einstein = mounts.mount("einstein")
    name = _uniq("mine")
    home = einstein.root / "home"
    (home / name).mkdir()
    (home / name / "f.txt").write_text("data\n")
    path = os.fspath(home / name)
    try:
        einstein.share("add", path, "marie", "--role", "viewer")
        einstein.share("add", path, "richard@example.org", "--role", "editor")
        sbm = einstein.root / "shared-by-me"
        wait_for(lambda: name in _ls(sbm), what="shared-by-me entry")
        assert os.getxattr(sbm / name, "user.meshfs.grantees") == b"marie:viewer,richard:editor"
        assert user_xattrs(sbm / name) >= {"user.meshfs.grantees"}
        assert (sbm / name / "f.txt").read_text() == "data\n"
        assert os.stat(sbm / name).st_ino == os.stat(home / name).st_ino
        rows = einstein.share_json("ls", path)["shares"]
        assert sorted((r["user"], r["role"]) for r in rows) == [("marie", "viewer"), ("richard", "editor")]
        table = einstein.share("ls", path).stdout.splitlines()
        assert table[0].split() == ["DIR", "PATH", "USER", "ROLE", "STATE", "ID"]
        assert len(table) == 3
        einstein.share("rm", path, "marie")
        einstein.share("rm", path, "richard")
        wait_for(lambda: name not in _ls(sbm), what="shared-by-me entry to go")
        assert os.getxattr(home / name, "user.meshfs.grantees") == b""
    finally:
        einstein.share("rm", path, "marie", ok=False)
        einstein.share("rm", path, "richard", ok=False)


def user_xattrs(path: Path) -> set[str]:
    return set(os.listxattr(path))


async def _make_project(gateway: str, owner: str, password: str, member: str) -> str:
    """A project space created by `owner` (via CreateStorageSpace) with `member` granted as viewer."""
    name = _uniq("proj")
    root = create_project_space(gateway, owner, password, name)
    async with Gateway(gateway, BasicCredentials(owner, Secret(password)), tls=False) as gw:
        shares = Shares(gw)
        user = next(u for u in await shares.find_users(member) if u.username == member)
        await shares.create_share(Ref.to(root), user.id, Role.VIEWER)
        await Storage(gw).stat(Ref.to(root))
    return name


def test_project_space_shows_under_projects(mounts: Mounts, reva: object) -> None:
    name = trio.run(_make_project, mounts.gateway, "marie", mounts.passwords["marie"], "einstein")
    einstein = mounts.mount("einstein")
    projects = einstein.root / "projects"
    wait_for(lambda: name in _ls(projects), what=f"project {name} under projects/")
    assert os.path.isdir(projects / name)
    # the creator sees it too, and can write into it
    marie = mounts.mount("marie")
    (marie.root / "projects" / name / "readme.txt").write_text("project data\n")
    assert marie.meshfs("sync", os.fspath(marie.root / "projects" / name)).returncode == 0
    wait_for(lambda: "readme.txt" in _ls(projects / name), what="marie's file in the project, for einstein")
    assert (projects / name / "readme.txt").read_text() == "project data\n"
