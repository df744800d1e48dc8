"""Fast unit tests of meshfs.vfs.shares.ShareCommands on the real Tree with in-memory fakes of the
CS3 Storage/Shares clients (no server, no mount): WHO resolution, NAME resolution, dispatch, errors,
and the kernel invalidations a refresh sends.
"""

from __future__ import annotations

import errno
import itertools
from dataclasses import replace
from typing import Any

import pytest

from meshfs.cs3 import (
    Kind,
    OcmReceivedShare,
    Perm,
    ReceivedShare,
    Ref,
    Resource,
    ResourceId,
    Role,
    Share,
    ShareState,
    Space,
    User,
    UserId,
)
from meshfs.errors import AlreadyExists, NotFound, PermissionDenied
from meshfs.vfs.inodes import InodeTable
from meshfs.vfs.shares import ShareCommands, ShareError
from meshfs.vfs.tree import PENDING_INODE, SHARED_WITH_ME_INODE, Tree

IDP = "http://localhost:20080"
VIEWER = Perm.STAT | Perm.LIST | Perm.DOWNLOAD | Perm.GET_PATH
EDITOR = VIEWER | Perm.UPLOAD | Perm.CREATE_CONTAINER | Perm.DELETE | Perm.MOVE


def user(name: str, display: str, mail: str) -> User:
    return User(UserId(IDP, f"id-{name}"), name, display, mail)


EINSTEIN = user("einstein", "Albert Einstein", "einstein@example.org")
MARIE = user("marie", "Marie Curie", "marie@example.org")
RICHARD = user("richard", "Richard Feynman", "richard@example.org")
MARIO = user("mario", "Mario Rossi", "mario@example.org")


def rid(n: str) -> ResourceId:
    return ResourceId("st", "sp", n)


def res(n: str, name: str, kind: Kind = Kind.DIR, perms: Perm = EDITOR) -> Resource:
    return Resource(rid(n), None, name, name, kind, 0, 0, '"e"', permissions=perms)


class FakeStorage:
    def __init__(self) -> None:
        self.home = res("home", "home")
        self.children: dict[str, list[Resource]] = {"home": []}
        self.all: dict[str, Resource] = {"home": self.home}

    def add(self, parent: str, r: Resource) -> None:
        self.children.setdefault(parent, []).append(r)
        self.all[r.id.opaque_id] = r

    async def get_home(self) -> Ref:
        return Ref(path="/users/einstein")

    async def stat(self, ref: Ref) -> Resource:
        if ref.resource_id is None:
            return self.home
        base = self.all.get(ref.resource_id.opaque_id)
        if base is None:
            raise NotFound("no such resource", op="stat")
        if ref.path in (".", ""):
            return base
        name = ref.path.removeprefix("./")
        for c in self.children.get(base.id.opaque_id, []):
            if c.name == name:
                return c
        raise NotFound("no such entry", op="stat")

    async def list_container(self, ref: Ref) -> list[Resource]:
        assert ref.resource_id is not None
        return list(self.children.get(ref.resource_id.opaque_id, []))

    async def list_spaces(self, kind: str | None = None) -> list[Space]:
        return []


class FakeShares:
    def __init__(self) -> None:
        self.users = [EINSTEIN, MARIE, RICHARD, MARIO]
        self.mine: list[Share] = []
        self.received: list[ReceivedShare] = []
        self.ocm: list[OcmReceivedShare] = []
        self.calls: list[tuple[Any, ...]] = []
        self.ids = itertools.count(1)
        self.refuse: Exception | None = None

    async def find_users(self, query: str) -> list[User]:
        q = query.lower()
        return [
            u
            for u in self.users
            if any(q in x.lower() for x in (u.username, u.display_name, u.mail, u.id.opaque_id))
        ]

    async def list_shares(self, resource_id: ResourceId | None = None) -> list[Share]:
        return [s for s in self.mine if resource_id is None or s.resource_id == resource_id]

    async def create_share(self, ref: Ref, grantee: UserId, role: Role) -> Share:
        self.calls.append(("create", ref, grantee, role))
        if self.refuse is not None:
            raise self.refuse
        assert ref.resource_id is not None
        s = Share(str(next(self.ids)), ref.resource_id, grantee, role, EDITOR, EINSTEIN.id, EINSTEIN.id)
        self.mine.append(s)
        return s

    async def remove_share(self, share_id: str) -> None:
        self.calls.append(("remove", share_id))
        self.mine = [s for s in self.mine if s.id != share_id]

    async def list_received_shares(self, state: ShareState | None = None) -> list[ReceivedShare]:
        return [r for r in self.received if state is None or r.state is state]

    async def update_received_share(
        self, share_id: str, state: ShareState, *, mount_point: str | None = None
    ) -> ReceivedShare:
        self.calls.append(("update", share_id, state, mount_point))
        for i, r in enumerate(self.received):
            if r.id == share_id:
                self.received[i] = replace(r, state=state, mount_point=mount_point or r.mount_point)
                return self.received[i]
        raise NotFound("no such share")

    async def list_received_ocm_shares(self) -> list[OcmReceivedShare]:
        return list(self.ocm)


class FakeSession:
    def __init__(self) -> None:
        self.entries: list[tuple[int, bytes]] = []
        self.inodes: list[int] = []

    def invalidate_entry(self, parent: int, name: bytes) -> None:
        self.entries.append((parent, name))

    def invalidate_inode(self, inode: int, off: int = 0, length: int = 0) -> None:
        self.inodes.append(inode)


@pytest.fixture
async def rig() -> tuple[ShareCommands, FakeStorage, FakeShares, FakeSession]:
    storage, shares, session = FakeStorage(), FakeShares(), FakeSession()
    tree = Tree(storage, shares, InodeTable(), attr_ttl=1, entry_ttl=1, negative_ttl=1)  # type: ignore[arg-type]
    await tree.start()
    storage.add("home", res("docs", "docs"))
    storage.add("home", res("nb", "nb.ipynb", Kind.FILE))
    cmds = ShareCommands(tree, shares, lambda: EINSTEIN, lambda: session)  # type: ignore[arg-type,return-value]
    return cmds, storage, shares, session


def received(n: str, name: str, sharer: User, state: ShareState = ShareState.PENDING) -> ReceivedShare:
    return ReceivedShare(
        n, rid(f"r{n}"), state, name, sharer.id, sharer.id, Role.VIEWER, VIEWER, mtime_ns=int(n)
    )


async def test_who_exact_username_email_or_unique_part(rig: Any) -> None:
    cmds = rig[0]
    assert (await cmds.resolve_user("marie")).username == "marie"  # also a substring of nothing else
    assert (await cmds.resolve_user("MARIO@example.org")).username == "mario"
    assert (await cmds.resolve_user("Feynman")).username == "richard"
    # "mari" matches marie and mario: ambiguous, both named
    with pytest.raises(ShareError) as e:
        await cmds.resolve_user("mari")
    assert str(e.value) == (
        "ambiguous user 'mari': candidates: marie (Marie Curie, marie@example.org); "
        "mario (Mario Rossi, mario@example.org)"
    )
    with pytest.raises(ShareError, match="unknown user 'zz9'"):
        await cmds.resolve_user("zz9")


async def test_add_checks_before_changing_anything(rig: Any) -> None:
    cmds, _, shares, _ = rig
    row = await cmds.add("home/docs", "Curie", Role.EDITOR)
    assert (row.path, row.user, row.role, row.direction) == ("home/docs", "marie", "editor", "by-me")
    n = len(shares.calls)
    for path, who, message in (
        ("home/docs", "marie", "already shared with marie as editor"),
        ("home/docs", "einstein", "cannot share with yourself"),
        ("home/nope", "marie", "home/nope: no such file or directory"),
        ("shared-with-me", "marie", "virtual directory"),
        ("home", "marie", "whole personal space"),
        ("home/../etc", "marie", "'..' is not allowed"),
        ("home/docs", "mari", "ambiguous user"),
    ):
        with pytest.raises(ShareError, match=message):
            await cmds.add(path, who, Role.VIEWER)
    assert len(shares.calls) == n  # nothing was sent to the server


async def test_server_refusals_become_one_line(rig: Any) -> None:
    cmds, _, shares, _ = rig
    shares.refuse = PermissionDenied("gateway: permission denied [CODE_PERMISSION_DENIED]")
    with pytest.raises(ShareError, match=r"^home/docs: the server refused to share it"):
        await cmds.add("home/docs", "marie", Role.VIEWER)
    shares.refuse = AlreadyExists("exists")
    with pytest.raises(ShareError, match="already shared with marie"):
        await cmds.add("home/docs", "marie", Role.VIEWER)
    from meshfs.errors import InvalidArgument

    shares.refuse = InvalidArgument("cannot set the requested permissions on that type of resource")
    with pytest.raises(ShareError, match="refused the role editor"):
        await cmds.add("home/nb.ipynb", "marie", Role.EDITOR)
    assert shares.mine == []


async def test_rm_and_grantees(rig: Any) -> None:
    cmds = rig[0]
    await cmds.add("home/docs", "marie", Role.VIEWER)
    await cmds.add("home/docs", "richard", Role.EDITOR)
    node, _ = await cmds.resolve_path("home/docs")
    assert await cmds.grantees(node) == b"marie:viewer,richard:editor"
    with pytest.raises(ShareError, match=r"home/nb\.ipynb is not shared with marie"):
        await cmds.rm("home/nb.ipynb", "marie")
    rows = await cmds.rm("home/docs", "marie")
    assert [r.user for r in rows] == ["marie"]
    assert await cmds.grantees(node) == b"richard:editor"


async def test_pending_accept_by_name_id_path_and_collision_suffix(rig: Any) -> None:
    cmds, storage, shares, session = rig
    for n, sharer in (("7", MARIE), ("8", RICHARD)):
        storage.all[f"r{n}"] = res(f"r{n}", "data", perms=VIEWER)
        shares.received.append(received(n, "", sharer))
    rows = await cmds.pending()
    assert sorted((r.path, r.user) for r in rows) == [
        ("shared-with-me/.pending/data", "marie"),
        ("shared-with-me/.pending/data (8)", "richard"),
    ]
    row = await cmds.accept("data (8)")
    assert row.id == "8" and row.state == "accepted" and row.path == "shared-with-me/data"
    row = await cmds.accept("shared-with-me/.pending/data")
    assert row.id == "7"
    names = {r.id: r.path for r in await cmds.ls() if r.direction == "with-me"}
    assert len(set(names.values())) == 2 and names["7"].startswith("shared-with-me/data")
    with pytest.raises(ShareError, match="no pending/rejected share named 'data'; there are no"):
        await cmds.accept("data")
    declined = await cmds.decline("7")
    assert declined.state == "rejected"
    # the kernel was told about the names that moved
    assert (PENDING_INODE, b"data") in session.entries
    assert (SHARED_WITH_ME_INODE, b"data") in session.entries


async def test_accept_by_rename_sets_the_new_name_and_refuses_other_renames(rig: Any) -> None:
    cmds, storage, shares, _ = rig
    storage.all["r5"] = res("r5", "thing", perms=VIEWER)
    shares.received.append(received("5", "", MARIE))
    tree = cmds.tree
    pending, swm = tree.inodes.get(PENDING_INODE), tree.inodes.get(SHARED_WITH_ME_INODE)
    await cmds.accept_by_rename(pending, "thing", swm, "renamed")
    assert shares.calls[-1] == ("update", "5", ShareState.ACCEPTED, "renamed")
    assert "renamed" in await tree.listing(swm)
    with pytest.raises(PermissionDenied) as e:
        await cmds.accept_by_rename(swm, "renamed", swm, "again")
    assert e.value.errno == errno.EPERM
    storage.all["r6"] = res("r6", "other", perms=VIEWER)
    shares.received.append(received("6", "", RICHARD))
    cmds.tree.drop_share_cache()
    # onto a taken name: accepted like `share accept` (no mount point), shown with a suffix
    await cmds.accept_by_rename(pending, "other", swm, "renamed")
    assert shares.calls[-1] == ("update", "6", ShareState.ACCEPTED, None)
    assert set(await tree.listing(swm)) >= {"renamed", "other"}


async def test_ocm_shares_are_listed_and_need_the_cs3_call(rig: Any) -> None:
    cmds, _, shares, _ = rig
    fed = UserId("cesnet.local", "id-richard@https://cesnet.local", "USER_TYPE_FEDERATED")
    shares.ocm.append(OcmReceivedShare("abc", "fed-x", ShareState.PENDING, fed, fed, Kind.DIR))
    rows = await cmds.pending()
    assert [(r.id, r.user) for r in rows] == [("ocm:abc", "id-richard@cesnet.local")]
    if not hasattr(shares, "update_received_ocm_share"):
        with pytest.raises(ShareError, match="federated"):
            await cmds.accept("ocm:abc")


async def test_run_dispatch_and_argument_errors(rig: Any) -> None:
    cmds = rig[0]
    got = await cmds.run("users", {"query": "curie"})
    assert [u["username"] for u in got["users"]] == ["marie"]
    with pytest.raises(ShareError, match="at least 2 characters"):
        await cmds.run("users", {"query": "m"})
    with pytest.raises(ShareError, match="unknown share action 'frobnicate'"):
        await cmds.run("share", {"action": "frobnicate"})
    with pytest.raises(ShareError, match="missing who"):
        await cmds.run("share", {"action": "add", "path": "home/docs", "role": "viewer"})
    with pytest.raises(ShareError, match="unknown role 'owner'"):
        await cmds.run("share", {"action": "add", "path": "home/docs", "who": "marie", "role": "owner"})
    got = await cmds.run("share", {"action": "add", "path": "home/docs", "who": "marie", "role": "viewer"})
    assert got["share"]["user"] == "marie"
    assert (await cmds.run("share", {"action": "ls", "path": "home/docs"}))["shares"][0]["role"] == "viewer"


async def test_an_accepted_name_never_changes_when_another_share_of_that_name_arrives(rig: Any) -> None:
    cmds, storage, shares, _ = rig
    storage.all["r8"] = res("r8", "data", perms=VIEWER)
    shares.received.append(received("8", "", RICHARD))
    await cmds.accept("data")
    assert {r.id: r.path for r in await cmds.ls() if r.direction == "with-me"} == {"8": "shared-with-me/data"}
    storage.all["r7"] = res("r7", "data", perms=VIEWER)  # an older share of the same name appears
    shares.received.append(received("7", "", MARIE))
    await cmds.accept("data")
    names = {r.id: r.path for r in await cmds.ls() if r.direction == "with-me"}
    assert names["8"] == "shared-with-me/data"  # what einstein's open shells and scripts still use
