"""The share commands behind `meshfs share ...` / `meshfs users ...`, and the share hooks of the mount.

Owns: resolving a mount path to a resource and WHO to one user (FindUsers: username, email or a
unique part of a name; unknown/ambiguous → an error naming the candidates, nothing changed), the
commands add/ls/rm/accept/decline/pending/users with plain JSON-able results, accepting by rename
(`mv shared-with-me/.pending/X shared-with-me/`), the `user.meshfs.grantees` xattr value, and
keeping the virtual share directories fresh (re-list, invalidate the kernel's entries) after a
command and from a poller when the server's share lists change.

Must not import: grpc, cs3apis, urllib3 (only meshfs.cs3's public API). Errors leave as MeshError
with a one-line message; vfs/ops.py maps them to errnos.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import trio

from meshfs.cs3 import ReceivedShare, Ref, Role, Share, Shares, ShareState, User, UserId
from meshfs.errors import (
    AlreadyExists,
    InvalidArgument,
    MeshError,
    NotFound,
    PermissionDenied,
)
from meshfs.fuse import Session
from meshfs.vfs.inodes import ROOT, Node, Virtual
from meshfs.vfs.tree import (
    PENDING_INODE,
    PROJECTS_INODE,
    SHARED_BY_ME_INODE,
    SHARED_WITH_ME_INODE,
    Tree,
)

log = logging.getLogger(__name__)

VIRTUAL_INODES = (SHARED_WITH_ME_INODE, PENDING_INODE, SHARED_BY_ME_INODE, PROJECTS_INODE)
GRANTEES_XATTR = b"user.meshfs.grantees"
ACTIONS = ("add", "ls", "rm", "accept", "decline", "pending")
OCM_PREFIX = "ocm:"  # share ids of federated shares received from other sites (Node.share_id too)


class ShareError(InvalidArgument):
    """A share command that cannot be carried out; the message is the whole story (one line)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


# ---- result values -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UserRow:
    username: str
    display_name: str
    mail: str
    idp: str
    opaque_id: str

    @classmethod
    def of(cls, u: User) -> UserRow:
        return cls(u.username, u.display_name, u.mail, u.id.idp, u.id.opaque_id)


@dataclass(frozen=True, slots=True)
class ShareRow:
    """A share seen from this mount: `direction` is "by-me" (a grant of ours) or "with-me"."""

    id: str
    direction: str
    path: str  # mount-relative path of the shared resource ("" when not reachable in the tree)
    user: str  # by-me: the grantee's username; with-me: the sharer's username
    role: str  # "viewer", "editor" or "custom"
    state: str  # with-me: pending/accepted/rejected; by-me: "granted"
    resource_id: str


@dataclass(frozen=True, slots=True)
class _Received:
    """A received share, user or federated, as the with-me commands need it."""

    id: str
    state: ShareState
    role: Role | None
    sharer: UserId | None
    resource_id: str
    share: ReceivedShare | None


def _role_name(role: Role | None) -> str:
    return role.value if role is not None else "custom"


def _parse_role(text: str) -> Role:
    try:
        return Role(text.strip().lower())
    except ValueError:
        raise ShareError(f"unknown role {text!r}: use viewer or editor") from None


def _describe(u: User) -> str:
    extra = ", ".join(x for x in (u.display_name, u.mail) if x)
    return f"{u.username} ({extra})" if extra else u.username or u.id.opaque_id


class ShareCommands:
    """The share commands of one mount. `session` gives the FUSE session (None before the mount)."""

    def __init__(
        self,
        tree: Tree,
        shares: Shares,
        me: Callable[[], User],
        session: Callable[[], Session | None] = lambda: None,
    ) -> None:
        self.tree = tree
        self.shares = shares
        self.me = me
        self.session = session
        self._names: dict[UserId, str] = {}  # user id → username, filled by lookups
        self._seen: frozenset[tuple[str, str]] | None = None  # what the poller saw last
        self._known: dict[int, dict[str, Node]] = {}  # the virtual listings at the last refresh

    # ---- the control-socket entry point -----------------------------------------------------------

    async def run(self, name: str, args: Mapping[str, Any]) -> dict[str, Any]:
        """`MeshFilesystem.command` forwards "share" and "users" here. Returns a JSON-able dict."""
        if name == "users":
            query = str(args.get("query") or "").strip()
            return {"users": [asdict(u) for u in await self.users(query)]}
        if name != "share":
            raise ShareError(f"unknown command {name!r}")
        action = str(args.get("action") or "")
        if action == "add":
            row = await self.add(_text(args, "path"), _text(args, "who"), _parse_role(_text(args, "role")))
            return {"share": asdict(row)}
        if action == "ls":
            path = args.get("path")
            rows = await self.ls(str(path) if path else None)
            return {"shares": [asdict(r) for r in rows]}
        if action == "rm":
            rows = await self.rm(_text(args, "path"), _text(args, "who"))
            return {"removed": [asdict(r) for r in rows]}
        if action == "accept":
            return {"share": asdict(await self.accept(_text(args, "name")))}
        if action == "decline":
            return {"share": asdict(await self.decline(_text(args, "name")))}
        if action == "pending":
            return {"shares": [asdict(r) for r in await self.pending()]}
        raise ShareError(f"unknown share action {action!r}; one of: {', '.join(ACTIONS)}")

    # ---- users ------------------------------------------------------------------------------------

    async def users(self, query: str) -> list[UserRow]:
        """The seed's search: part of a first or last name, or a username/email."""
        if len(query) < 2:
            raise ShareError("users: give at least 2 characters to search for")
        found = await self.shares.find_users(query)
        for u in found:
            self._names[u.id] = u.username
        return [UserRow.of(u) for u in sorted(found, key=lambda u: u.username)]

    async def resolve_user(self, who: str) -> User:
        """WHO → one user: an exact username or email wins, else the only substring match."""
        who = who.strip()
        if not who:
            raise ShareError("no user given")
        found = await self.shares.find_users(who)
        for u in found:
            self._names[u.id] = u.username
        low = who.lower()
        exact = [u for u in found if u.username.lower() == low or (u.mail and u.mail.lower() == low)]
        if len(exact) == 1:
            return exact[0]
        pick = exact or found
        if len(pick) == 1:
            return pick[0]
        if not pick:
            raise ShareError(f"unknown user {who!r}: nobody's username, name or email contains it")
        names = "; ".join(_describe(u) for u in sorted(pick, key=lambda u: u.username))
        raise ShareError(f"ambiguous user {who!r}: candidates: {names}")

    async def username(self, uid: UserId | None) -> str:
        if uid is None:
            return ""
        name = self._names.get(uid)
        if name is not None:
            return name
        name = uid.opaque_id
        try:
            for u in await self.shares.find_users(uid.opaque_id):
                if u.id.opaque_id == uid.opaque_id:
                    name = u.username or name
                    break
        except MeshError as e:
            log.debug("find user %s: %s", uid.opaque_id, e)
        self._names[uid] = name
        return name

    # ---- paths ------------------------------------------------------------------------------------

    async def resolve_path(self, path: str) -> tuple[Node, str]:
        """A mount-relative path ("home/a/b") → its node (walking the tree like lookups do)."""
        parts = [p for p in path.strip("/").split("/") if p and p != "."]
        if ".." in parts:
            raise ShareError(f"{path}: '..' is not allowed in a share path")
        node = self.tree.inodes.get(ROOT)
        assert node is not None
        for i, part in enumerate(parts):
            try:
                node = await self.tree.lookup(node, part)
            except NotFound:
                raise ShareError(f"{'/'.join(parts[: i + 1])}: no such file or directory") from None
        return node, "/".join(parts)

    async def _shareable(self, path: str) -> tuple[Node, str]:
        node, rel = await self.resolve_path(path)
        if node.rid is None or node.virtual is not None:
            raise ShareError(f"{rel or '/'}: a virtual directory of the mount cannot be shared")
        if rel == "home":
            raise ShareError("home: your whole personal space cannot be shared; share a folder in it")
        return node, rel

    # ---- shares by me ------------------------------------------------------------------------------

    async def add(self, path: str, who: str, role: Role) -> ShareRow:
        node, rel = await self._shareable(path)
        user = await self.resolve_user(who)
        me = self.me()
        if user.id.opaque_id == me.id.opaque_id and user.id.idp == me.id.idp:
            raise ShareError(f"{rel}: you cannot share with yourself")
        assert node.rid is not None
        for s in await self.shares.list_shares(node.rid):
            if s.grantee is not None and s.grantee.opaque_id == user.id.opaque_id:
                raise ShareError(
                    f"{rel} is already shared with {user.username} as {_role_name(s.role)}"
                    f" (`meshfs share rm` it first to change the role)"
                )
        try:
            share = await self.shares.create_share(Ref.to(node.rid), user.id, role)
        except PermissionDenied as e:
            if node.share_id is not None or rel.startswith("shared-with-me/"):
                raise ShareError(
                    f"{rel}: resharing a share you received is not allowed by the server"
                ) from None
            raise ShareError(f"{rel}: the server refused to share it: {e.message}") from None
        except AlreadyExists:
            raise ShareError(f"{rel} is already shared with {user.username}") from None
        except InvalidArgument as e:
            raise ShareError(
                f"{rel}: the server refused the role {role.value} for this resource: {e.message}"
            ) from None
        self._names[user.id] = user.username
        await self.refresh()
        return await self._row_by_me(share, rel)

    async def _row_by_me(self, share: Share, path: str = "") -> ShareRow:
        if not path:
            path = await self._by_me_path(share)
        return ShareRow(
            id=share.id,
            direction="by-me",
            path=path,
            user=await self.username(share.grantee) if share.grantee else f"group:{share.grantee_group}",
            role=_role_name(share.role),
            state="granted",
            resource_id=str(share.resource_id),
        )

    async def _by_me_path(self, share: Share) -> str:
        node = self.tree.inodes.get(SHARED_BY_ME_INODE)
        if node is None:
            return ""
        try:
            listing = await self.tree.listing(node)
        except MeshError:
            return ""
        for name, child in listing.items():
            if child.rid == share.resource_id:
                return f"shared-by-me/{name}"
        return ""

    async def ls(self, path: str | None = None) -> list[ShareRow]:
        """Shares of PATH (the grants on it if it is ours, the received share if it is one), or all:
        every grant of ours, then every received share (pending, accepted and declined; OCM too)."""
        if path is not None:
            node, rel = await self._shareable(path)
            assert node.rid is not None
            if node.share_id is not None:
                await self.refresh()
                got = [r for r in await self._received() if r.id == node.share_id]
                return [await self._row_with_me(r, rel) for r in got]
            return [await self._row_by_me(s, rel) for s in await self.shares.list_shares(node.rid)]
        await self.refresh()
        rows = [await self._row_by_me(s) for s in await self.shares.list_shares()]
        names = await self._with_me_names()
        for r in await self._received():
            rows.append(await self._row_with_me(r, names.get(r.id, "")))
        return rows

    async def rm(self, path: str, who: str) -> list[ShareRow]:
        node, rel = await self._shareable(path)
        assert node.rid is not None
        user = await self.resolve_user(who)
        mine = [
            s
            for s in await self.shares.list_shares(node.rid)
            if s.grantee is not None and s.grantee.opaque_id == user.id.opaque_id
        ]
        if not mine:
            raise ShareError(f"{rel} is not shared with {user.username}")
        rows = []
        for s in mine:
            rows.append(await self._row_by_me(s, rel))
            await self.shares.remove_share(s.id)
        await self.refresh()
        return rows

    # ---- shares with me ----------------------------------------------------------------------------

    async def _with_me_names(self) -> dict[str, str]:
        """share id → its mount-relative path under shared-with-me/ (or .pending/)."""
        out: dict[str, str] = {}
        for inode, prefix in (
            (SHARED_WITH_ME_INODE, "shared-with-me/"),
            (PENDING_INODE, "shared-with-me/.pending/"),
        ):
            node = self.tree.inodes.get(inode)
            if node is None:
                continue
            for name, child in (await self.tree.listing(node)).items():
                if child.share_id is not None:
                    out[child.share_id] = prefix + name
        return out

    async def _received(self) -> list[_Received]:
        """Every received share, user shares and federated (OCM) ones (ids "ocm:<id>"), from the
        tree's caches (refresh() first for fresh ones)."""
        out = [
            _Received(r.id, r.state, r.role, r.sharer or r.creator, str(r.resource_id), r)
            for r in await self.tree.received_shares()
        ]
        ocm_list = getattr(self.tree, "received_ocm_shares", None)  # hook H3c
        fed = await (ocm_list() if ocm_list is not None else self.shares.list_received_ocm_shares())
        for f in fed:
            out.append(_Received(OCM_PREFIX + f.id, f.state, Role.VIEWER, f.owner or f.creator, "", None))
        return out

    async def _row_with_me(self, r: _Received, path: str) -> ShareRow:
        if r.id.startswith(OCM_PREFIX):
            who = r.sharer.opaque_id.split("@", 1)[0] + "@" + r.sharer.idp if r.sharer else ""
        else:
            who = await self.username(r.sharer)
        return ShareRow(
            id=r.id,
            direction="with-me",
            path=path,
            user=who,
            role=_role_name(r.role),
            state=r.state.value,
            resource_id=r.resource_id,
        )

    async def _set_state(self, share_id: str, state: ShareState, mount_point: str | None = None) -> None:
        if not share_id.startswith(OCM_PREFIX):
            await self.shares.update_received_share(share_id, state, mount_point=mount_point)
            return
        update = getattr(self.shares, "update_received_ocm_share", None)  # hook H3b
        if update is None:
            raise ShareError(
                "accepting/declining federated (OCM) shares needs Shares.update_received_ocm_share"
            )
        await update(share_id[len(OCM_PREFIX) :], state)

    async def pending(self) -> list[ShareRow]:
        await self.refresh()
        names = await self._with_me_names()
        got = [r for r in await self._received() if r.state is ShareState.PENDING]
        return [await self._row_with_me(r, names.get(r.id, "")) for r in got]

    async def _find_received(self, name: str, states: Sequence[ShareState]) -> _Received:
        """NAME: an entry of shared-with-me/.pending/ (or shared-with-me/), a path to one, or a share id."""
        await self.refresh()
        names = await self._with_me_names()
        shares = [r for r in await self._received() if r.state in states]
        key = name.strip().rstrip("/")
        for prefix in ("shared-with-me/.pending/", "shared-with-me/", ".pending/"):
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        by_name = [r for r in shares if names.get(r.id, "").rpartition("/")[2] == key]
        if len(by_name) == 1:
            return by_name[0]
        by_id = [r for r in shares if r.id == key]
        if len(by_id) == 1:
            return by_id[0]
        wanted = "/".join(s.value for s in states)
        known = sorted(names.get(r.id, "").rpartition("/")[2] or r.id for r in shares)
        hint = f"; {wanted} shares: {', '.join(known)}" if known else f"; there are no {wanted} shares"
        raise ShareError(f"no {wanted} share named {name!r}{hint}")

    async def accept(self, name: str, *, mount_point: str | None = None) -> ShareRow:
        share = await self._find_received(name, (ShareState.PENDING, ShareState.REJECTED))
        await self._set_state(
            share.id, ShareState.ACCEPTED, None if share.id.startswith(OCM_PREFIX) else mount_point
        )
        await self.refresh()
        names = await self._with_me_names()
        got = [r for r in await self._received() if r.id == share.id]
        return await self._row_with_me(got[0] if got else share, names.get(share.id, ""))

    async def decline(self, name: str) -> ShareRow:
        share = await self._find_received(name, (ShareState.PENDING, ShareState.ACCEPTED))
        await self._set_state(share.id, ShareState.REJECTED)
        await self.refresh()
        row = await self._row_with_me(share, "")
        return ShareRow(
            row.id, row.direction, "", row.user, row.role, ShareState.REJECTED.value, row.resource_id
        )

    async def accept_by_rename(
        self, old_parent: Node, old_name: str, new_parent: Node, new_name: str
    ) -> Node:
        """rename(shared-with-me/.pending/X → shared-with-me/Y) = accept X (as Y when Y differs).

        Any other rename out of or into a virtual directory is PermissionDenied (EPERM)."""
        if old_parent.virtual is not Virtual.PENDING or new_parent.virtual is not Virtual.SHARED_WITH_ME:
            raise _Eperm("only shared-with-me/.pending/X → shared-with-me/ can be renamed here", op="rename")
        node = await self.tree.lookup(old_parent, old_name)
        if node.share_id is None:
            raise _Eperm("not a pending share", op="rename", path=old_name)
        if node.share_id.startswith(OCM_PREFIX) and new_name != old_name:
            raise _Eperm("a federated share keeps its name (OCM has no mount point)", op="rename")
        # Onto an existing name (another share already shows there): accept all the same, like
        # `meshfs share accept`, and let the tree give it a suffixed name; the kernel's entry for
        # the target name is revalidated after entry_ttl and then shows the tree's view again.
        taken = new_name in await self.tree.listing(new_parent)
        mount_point = new_name if new_name != old_name and not taken else None
        await self._set_state(node.share_id, ShareState.ACCEPTED, mount_point)
        await self.refresh()
        return node

    # ---- xattr ------------------------------------------------------------------------------------

    async def grantees(self, node: Node) -> bytes:
        """`user.meshfs.grantees`: "user:role" for each grant on the resource, comma-separated, by
        username (group grants as "group:NAME:role"). Empty when nothing is shared."""
        if node.rid is None:
            return b""
        parts = []
        for s in await self.shares.list_shares(node.rid):
            who = await self.username(s.grantee) if s.grantee else f"group:{s.grantee_group}"
            parts.append(f"{who}:{_role_name(s.role)}")
        return ",".join(sorted(parts)).encode()

    # ---- freshness ----------------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Re-list the virtual share directories and drop the kernel's entries that changed."""
        before: dict[int, dict[str, Node]] = {}
        cached = set(self.tree.cached_listings())
        for inode in VIRTUAL_INODES:
            node = self.tree.inodes.get(inode)
            if node is not None and inode in cached:
                with _quiet():
                    before[inode] = dict(await self.tree.listing(node))
            before[inode] = {**self._known.get(inode, {}), **before.get(inode, {})}
        self.tree.drop_share_cache()
        session = self.session()
        for inode in VIRTUAL_INODES:
            node = self.tree.inodes.get(inode)
            if node is None:
                continue
            try:
                after = await self.tree.listing(node)
            except MeshError as e:
                log.debug("refresh %s: %s", node.name, e)
                continue
            if session is None:
                continue
            old = before.get(inode, {})
            for name in set(old) | set(after):
                if old.get(name) is not after.get(name) or name not in old:
                    session.invalidate_entry(inode, name.encode())
            if old.keys() != after.keys():
                session.invalidate_inode(inode, -1)
            self._known[inode] = dict(after)
        with _quiet():
            latest = await self._received()  # what the listings just used (cached)
            self._seen = frozenset((r.id, r.state.value) for r in latest)

    async def watch(
        self, interval: float, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Poll the received shares every `interval` s; refresh the tree when they changed (a share
        removed by its owner disappears from shared-with-me/ without a remount)."""
        task_status.started()
        while True:
            await trio.sleep(interval)
            try:
                got = await self.shares.list_received_shares()
                fed = await self.shares.list_received_ocm_shares()
            except MeshError as e:
                log.debug("share poll: %s", e)
                continue
            seen = frozenset((r.id, r.state.value) for r in got) | frozenset(
                (OCM_PREFIX + f.id, f.state.value) for f in fed
            )
            if seen != self._seen:
                if self._seen is not None:
                    log.info("received shares changed; refreshing shared-with-me/")
                self._seen = seen
                try:
                    await self.refresh()
                except MeshError as e:
                    log.debug("share refresh: %s", e)


class _Eperm(PermissionDenied):
    errno = errno.EPERM  # the virtual directories refuse the operation itself


class _quiet:
    """Ignore a MeshError (best-effort bookkeeping)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: object, tb: object) -> bool:
        return isinstance(exc, MeshError)


def _text(args: Mapping[str, Any], key: str) -> str:
    value = args.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ShareError(f"missing {key}")
    return value
