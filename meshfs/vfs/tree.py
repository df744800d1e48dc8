"""The tree a user sees and its metadata cache: home/, the virtual share directories, projects/.

Owns: resolving (parent node, name) to a node, listing directories, the TTL caches of stats and
listings (cachetools on trio's clock) and the negative-lookup cache, the root's virtual entries and
what they contain (accepted/pending received shares, the user's own shares, project spaces).
Nodes are addressed on the server by resource id (`Ref.to(rid)`) and their children by
`Ref(parent rid, "./name")`, so renames never invalidate a node's reference.

Must not import: grpc, cs3apis, urllib3, meshfs.fuse; errors leave as MeshError (ops.py maps them).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio
from cachetools import LRUCache, TTLCache

from meshfs.cs3 import Kind as RKind
from meshfs.cs3 import OcmReceivedShare, Perm, ReceivedShare, Ref, Resource, Shares, ShareState, Storage
from meshfs.errors import NotFound, PermissionDenied, ServerUnavailable
from meshfs.vfs.inodes import ROOT, InodeTable, Kind, Node, Virtual

log = logging.getLogger(__name__)

HOME_INODE = 2
SHARED_WITH_ME_INODE = 3
PENDING_INODE = 4
SHARED_BY_ME_INODE = 5
PROJECTS_INODE = 6

ROOT_ENTRIES: tuple[tuple[str, int, Virtual | None], ...] = (
    ("home", HOME_INODE, None),
    ("shared-with-me", SHARED_WITH_ME_INODE, Virtual.SHARED_WITH_ME),
    ("shared-by-me", SHARED_BY_ME_INODE, Virtual.SHARED_BY_ME),
    ("projects", PROJECTS_INODE, Virtual.PROJECTS),
)

_WRITE_PERMS = Perm.UPLOAD | Perm.CREATE_CONTAINER | Perm.DELETE | Perm.MOVE


def node_kind(r: Resource) -> Kind:
    return Kind.DIR if r.kind is RKind.DIR else Kind.SYMLINK if r.kind is RKind.SYMLINK else Kind.FILE


@dataclass(frozen=True, slots=True)
class Entry:
    """One name in a listing."""

    name: str
    node: Node


class Tree:
    """Nodes, lookups and listings with caching. All methods are trio coroutines."""

    def __init__(
        self,
        storage: Storage,
        shares: Shares,
        inodes: InodeTable,
        *,
        attr_ttl: float,
        entry_ttl: float,
        negative_ttl: float,
        list_ttl: float | None = None,
        share_ttl: float = 10.0,
    ) -> None:
        self.storage = storage
        self.shares = shares
        self.inodes = inodes
        self.attr_ttl = attr_ttl
        self.entry_ttl = entry_ttl
        self.negative_ttl = negative_ttl
        ttl = entry_ttl if list_ttl is None else list_ttl
        self._listings: TTLCache[int, dict[str, Node]] = TTLCache(
            maxsize=4096, ttl=max(ttl, 0.001), timer=trio.current_time
        )
        self._negative: TTLCache[tuple[int, str], bool] = TTLCache(
            maxsize=65536, ttl=max(negative_ttl, 0.001), timer=trio.current_time
        )
        self._shares: TTLCache[str, list[ReceivedShare]] = TTLCache(
            maxsize=4, ttl=share_ttl, timer=trio.current_time
        )
        self._ocm: TTLCache[str, list[OcmReceivedShare]] = TTLCache(
            maxsize=2, ttl=share_ttl, timer=trio.current_time
        )
        # the name handed out per (virtual dir, share id): an accepted name never changes when
        # another share of the same name arrives
        self._share_names: dict[tuple[int, str], str] = {}
        # last known listings, kept past their TTL: what an outage falls back to
        self._known: LRUCache[int, dict[str, Node]] = LRUCache(maxsize=8192)
        self._seen: LRUCache[tuple[int, str], Node] = LRUCache(maxsize=65536)  # lookups, for outages
        self._outage_logged = -1e9
        # directories with local namespace changes in flight, and a counter bumped when one ends:
        # a listing or negative lookup that overlapped a change is used once but never cached
        self._busy: dict[int, int] = {}
        self._gen: dict[int, int] = {}
        self.home_ref: Ref | None = None
        self.home_path = ""
        root = inodes.add_virtual(ROOT, Virtual.ROOT, "", ROOT)
        root.lookups = 1
        for name, inode, virtual in ROOT_ENTRIES:
            if virtual is not None:
                inodes.add_virtual(inode, virtual, name, ROOT)
        inodes.add_virtual(PENDING_INODE, Virtual.PENDING, ".pending", SHARED_WITH_ME_INODE)

    async def start(self) -> Node:
        """Find the user's home and make it the node `home/`."""
        self.home_ref = await self.storage.get_home()
        self.home_path = self.home_ref.path
        res = await self.storage.stat(self.home_ref)
        home = self.inodes.add_virtual(HOME_INODE, Virtual.ROOT, "home", ROOT)
        home.virtual = None
        home.rid = res.id
        self.inodes.rekey(home, res.id)
        self._set_resource(home, res)
        return home

    # ---- attributes ------------------------------------------------------------------------------

    def _set_resource(self, node: Node, res: Resource) -> None:
        node.resource = res
        node.fetched = trio.current_time()
        node.kind = node_kind(res)

    def fresh(self, node: Node) -> bool:
        return node.resource is not None and trio.current_time() - node.fetched < self.attr_ttl

    async def stat(self, node: Node, *, force: bool = False) -> Resource | None:
        """The node's resource, from the cache while fresh. None for virtual directories."""
        if node.rid is None:
            return None
        if not force and self.fresh(node):
            return node.resource
        try:
            res = await self.storage.stat(Ref.to(node.rid))
        except NotFound:
            node.unlinked = True
            raise
        except ServerUnavailable as e:
            if node.resource is None:
                raise
            self._outage(e)
            return node.resource  # the server is unreachable: serve what we last knew
        self._set_resource(node, res)
        return res

    def _outage(self, e: Exception) -> None:
        now = trio.current_time()
        if now - self._outage_logged > 60:
            self._outage_logged = now
            log.warning("server unreachable (%s): serving cached metadata and data until it is back", e)

    def writable(self, node: Node) -> bool:
        if node.virtual is not None or node.readonly:
            return False
        res = node.resource
        return res is None or res.permissions is Perm.NONE or bool(res.permissions & _WRITE_PERMS)

    # ---- names -----------------------------------------------------------------------------------

    def child_ref(self, parent: Node, name: str) -> Ref:
        if parent.rid is None:
            raise PermissionDenied("virtual directory", op="create", path=self.path_of(parent) + "/" + name)
        return Ref.to(parent.rid).child(name)

    def path_of(self, node: Node) -> str:
        """Mount-relative path, for logs, the journal and `meshfs status` (best effort)."""
        parts: list[str] = []
        seen = 0
        while node.inode != ROOT and seen < 256:
            parts.append(node.name)
            parent = self.inodes.get(node.parent)
            if parent is None:
                break
            node = parent
            seen += 1
        return "/".join(reversed(parts))

    @asynccontextmanager
    async def changing(self, *dirs: Node) -> AsyncIterator[None]:
        """Wrap a local change of these directories' entries (create, unlink, rename...)."""
        for d in dirs:
            self._busy[d.inode] = self._busy.get(d.inode, 0) + 1
        try:
            yield
        finally:
            for d in dirs:
                left = self._busy.get(d.inode, 1) - 1
                if left:
                    self._busy[d.inode] = left
                else:
                    self._busy.pop(d.inode, None)
                self._gen[d.inode] = self._gen.get(d.inode, 0) + 1

    def _stamp(self, inode: int) -> tuple[int, int]:
        return self._gen.get(inode, 0), self._busy.get(inode, 0)

    def _quiet_since(self, inode: int, stamp: tuple[int, int]) -> bool:
        """No local change of the directory overlapped the server call that began at `stamp`."""
        return stamp[1] == 0 and self._stamp(inode) == stamp

    def is_negative(self, parent: Node, name: str) -> bool:
        return (parent.inode, name) in self._negative

    def set_negative(self, parent: Node, name: str) -> None:
        if self.negative_ttl > 0:
            self._negative[(parent.inode, name)] = True

    def clear_negative(self, parent: Node, name: str) -> None:
        self._negative.pop((parent.inode, name), None)

    def forget_listing(self, node: Node | int) -> None:
        inode = node if isinstance(node, int) else node.inode
        self._listings.pop(inode, None)
        self._known.pop(inode, None)

    def cached_listings(self) -> list[int]:
        return list(self._listings.keys())

    def add_to_listing(self, parent: Node, name: str, child: Node) -> None:
        self._seen[(parent.inode, name)] = child
        listing = self._listings.get(parent.inode)
        if listing is not None:
            listing[name] = child
        known = self._known.get(parent.inode)
        if known is not None and known is not listing:
            known[name] = child
        self.clear_negative(parent, name)

    def remove_from_listing(self, parent: Node, name: str) -> None:
        self._seen.pop((parent.inode, name), None)
        for cache in (self._listings, self._known):
            listing = cache.get(parent.inode)
            if listing is not None:
                listing.pop(name, None)

    def _adopt(self, parent: Node, res: Resource, name: str | None = None) -> Node:
        node = self.inodes.node_for(res.id, node_kind(res), name or res.name, parent.inode)
        node.readonly = parent.readonly or node.readonly
        if node.local_size is None:  # local changes win over the server's view until uploaded
            self._set_resource(node, res)
        else:
            node.resource, node.fetched = res, trio.current_time()
        node.unlinked = False
        return node

    async def lookup(self, parent: Node, name: str) -> Node:
        """The node called `name` in `parent`; NotFound if absent."""
        if parent.virtual is not None:
            entries = await self.listing(parent)
            if name not in entries:
                raise NotFound("no such entry", op="lookup", path=self.path_of(parent) + "/" + name)
            return entries[name]
        listing = self._listings.get(parent.inode)
        if listing is not None:
            node = listing.get(name)
            if node is None:
                raise NotFound("no such entry", op="lookup", path=self.path_of(parent) + "/" + name)
            return node
        if self.is_negative(parent, name):
            raise NotFound("no such entry (cached)", op="lookup", path=self.path_of(parent) + "/" + name)
        stamp = self._stamp(parent.inode)
        try:
            res = await self.storage.stat(self.child_ref(parent, name))
        except NotFound:
            if self._quiet_since(parent.inode, stamp):
                self.set_negative(parent, name)
            raise
        except ServerUnavailable as e:
            known = self._known.get(parent.inode, {}).get(name) or self._seen.get((parent.inode, name))
            if known is None:
                known = next((n for n in self.inodes.children_of(parent.inode) if n.name == name), None)
            if known is None:
                raise
            self._outage(e)
            return known
        node = self._adopt(parent, res, name)
        self._seen[(parent.inode, name)] = node
        return node

    async def listing(self, parent: Node) -> dict[str, Node]:
        """name → node for every entry of a directory (cached for the listing TTL)."""
        listing = self._listings.get(parent.inode)
        if listing is not None:
            return listing
        if parent.virtual is not None:
            listing = await self._list_virtual(parent)
        else:
            if parent.rid is None:
                raise NotFound("no such directory", op="list", path=self.path_of(parent))
            stamp = self._stamp(parent.inode)
            try:
                resources = await self.storage.list_container(Ref.to(parent.rid))
            except ServerUnavailable as e:
                known = self._known.get(parent.inode)
                if known is None:
                    raise
                self._outage(e)
                return known
            listing = {r.name: self._adopt(parent, r) for r in resources}
            if not self._quiet_since(parent.inode, stamp):
                return listing  # a local change overlapped: good for this caller, not for the cache
        self._listings[parent.inode] = listing
        self._known[parent.inode] = listing
        return listing

    # ---- virtual directories ---------------------------------------------------------------------

    async def received_shares(self, *, force: bool = False) -> list[ReceivedShare]:
        if not force:
            cached = self._shares.get("received")
            if cached is not None:
                return cached
        shares = await self.shares.list_received_shares()
        self._shares["received"] = shares
        return shares

    async def received_ocm_shares(self, *, force: bool = False) -> list[OcmReceivedShare]:
        if not force:
            cached = self._ocm.get("ocm")
            if cached is not None:
                return cached
        shares = await self.shares.list_received_ocm_shares()  # [] on a server without OCM
        self._ocm["ocm"] = shares
        return shares

    def drop_share_cache(self) -> None:
        self._shares.clear()
        self._ocm.clear()
        for inode in (ROOT, SHARED_WITH_ME_INODE, PENDING_INODE, SHARED_BY_ME_INODE, PROJECTS_INODE):
            self._listings.pop(inode, None)

    async def _list_virtual(self, parent: Node) -> dict[str, Node]:
        if parent.virtual is Virtual.ROOT:
            out: dict[str, Node] = {}
            for name, inode, _ in ROOT_ENTRIES:
                node = self.inodes.get(inode)
                if node is not None:
                    out[name] = node
            return out
        if parent.virtual in (Virtual.SHARED_WITH_ME, Virtual.PENDING):
            want = ShareState.ACCEPTED if parent.virtual is Virtual.SHARED_WITH_ME else ShareState.PENDING
            shares = [s for s in await self.received_shares() if s.state is want and not s.hidden]
            out = await self._share_entries(parent, shares)
            fed = [s for s in await self.received_ocm_shares() if s.state is want]
            out.update(await self._ocm_entries(parent, fed, out))
            if parent.virtual is Virtual.SHARED_WITH_ME:
                pending = self.inodes.get(PENDING_INODE)
                assert pending is not None
                out[".pending"] = pending
            return out
        if parent.virtual is Virtual.SHARED_BY_ME:
            mine = await self.shares.list_shares()
            seen: dict[str, Node] = {}
            ids: set[str] = set()
            for share in mine:
                if str(share.resource_id) in ids:  # one entry per resource, however many grantees
                    continue
                ids.add(str(share.resource_id))
                try:
                    res = await self.storage.stat(Ref.to(share.resource_id))
                except NotFound:
                    continue
                name = self._unique(seen, res.name, share.id)
                seen[name] = self._adopt(parent, res, name)
            return seen
        if parent.virtual is Virtual.PROJECTS:
            spaces = await self.storage.list_spaces("project")
            out = {}
            for sp in spaces:
                try:
                    res = await self.storage.stat(Ref.to(sp.root))
                except NotFound:
                    continue
                name = self._unique(out, sp.name or res.name, sp.id)
                out[name] = self._adopt(parent, res, name)
            return out
        return {}

    async def _share_entries(self, parent: Node, shares: Iterable[ReceivedShare]) -> dict[str, Node]:
        resolved = []
        for share in sorted(shares, key=lambda s: (s.mtime_ns, s.id)):
            try:
                res = await self.storage.stat(Ref.to(share.resource_id))
            except (NotFound, PermissionDenied):
                continue
            resolved.append((share, res))
        # names handed out before keep them: place those shares first (stable sort)
        resolved.sort(key=lambda p: (parent.inode, p[0].id) not in self._share_names)
        out: dict[str, Node] = {}
        for share, res in resolved:
            base = share.mount_point.strip("/").rsplit("/", 1)[-1] or res.name
            name = self._stable_name(parent, share.id, base, out)
            node = self._adopt(parent, res, name)
            node.readonly = not (share.permissions & _WRITE_PERMS)
            node.share_id = share.id
            out[name] = node
        return out

    def _stable_name(self, parent: Node, share_id: str, base: str, taken: dict[str, Node]) -> str:
        name = self._share_names.get((parent.inode, share_id), base)
        if name in taken:
            name = self._unique(taken, base, share_id)
        self._share_names[(parent.inode, share_id)] = name
        return name

    async def _ocm_entries(
        self, parent: Node, shares: Iterable[OcmReceivedShare], taken: dict[str, Node]
    ) -> dict[str, Node]:
        """Federated shares: Reva's ocmreceived storage mounts each at /ocm/<received share id>."""
        out: dict[str, Node] = {}
        for share in sorted(shares, key=lambda s: (s.mtime_ns, s.id)):
            try:
                res = await self.storage.stat(Ref(path=f"/ocm/{share.id}"))
            except (NotFound, PermissionDenied):
                continue
            name = self._stable_name(parent, "ocm:" + share.id, share.name or res.name, {**taken, **out})
            node = self._adopt(parent, res, name)
            node.readonly = not (res.permissions & _WRITE_PERMS)
            node.share_id = "ocm:" + share.id  # vfs/shares.py recognises this prefix (OCM_PREFIX)
            out[name] = node
        return out

    @staticmethod
    def _unique(taken: dict[str, Node], name: str, tag: str) -> str:
        """Collisions get a stable suffix derived from the share/space id."""
        if name not in taken:
            return name
        stem, dot, ext = name.rpartition(".")
        suffix = f" ({tag})"
        return f"{stem}{suffix}.{ext}" if dot and stem else f"{name}{suffix}"
