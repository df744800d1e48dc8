"""The tree a user sees and its metadata cache: home/, the virtual share directories, projects/.

Owns: resolving (parent node, name) to a node, listing directories, the TTL caches of stats and
listings (cachetools on trio's clock) and the negative-lookup cache, the root's virtual entries and
what they contain (accepted/pending received shares, the user's own shares, project spaces).
Nodes are addressed on the server by resource id (`Ref.to(rid)`) and their children by
`Ref(parent rid, "./name")`, so renames never invalidate a node's reference.

Etag validation: a directory's etag changes whenever anything below it changes (names, contents,
metadata; not locks). A listing, and the attributes of a directory's children, stay valid past their
TTL as long as one Stat of the directory (~3 ms instead of a relist) shows the etag they were fetched
under, and only for the TTL after that Stat: what is served was true on the server at most a TTL ago,
exactly as with plain TTLs. Lock state is not covered (locks do not move etags): callers that need it
ask with `force=True`.

Must not import: grpc, cs3apis, urllib3, meshfs.fuse; errors leave as MeshError (ops.py maps them).
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio
from cachetools import LRUCache, TTLCache

from meshfs.cs3 import Kind as RKind
from meshfs.cs3 import OcmReceivedShare, Perm, ReceivedShare, Ref, Resource, Shares, ShareState, Storage
from meshfs.errors import MeshError, NotFound, PermissionDenied, ServerUnavailable
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
_WRITE_BITS: int = _WRITE_PERMS.value


def node_kind(r: Resource) -> Kind:
    return Kind.DIR if r.kind is RKind.DIR else Kind.SYMLINK if r.kind is RKind.SYMLINK else Kind.FILE


@dataclass(slots=True)
class _Check:
    """An etag check of one directory in flight."""

    done: trio.Event = field(default_factory=trio.Event)
    reachable: bool = True


@dataclass(slots=True)
class _Listing:
    """A directory's entries and the trio time the server call that listed them began."""

    entries: dict[str, Node]
    observed: float


# child lookups by name in one quiet directory after which it is listed instead (one ListContainer
# rather than a Stat per name: `stat` of every file of a directory, `find -newer`...)
RELIST_AFTER = 32
RELIST_WINDOW = 2.0  # seconds within which those lookups happened
# ...unless the directory is known to be that big: a relist would then block the lookup for seconds
RELIST_MAX_ENTRIES = 5000


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
        self.list_ttl = entry_ttl if list_ttl is None else list_ttl
        self._listings: LRUCache[int, _Listing] = LRUCache(maxsize=4096)
        # directory etag checks in flight (one Stat serves every waiter)
        self._checks: dict[int, _Check] = {}
        # per directory: trio time its entries last changed through this mount, and how many
        # children were looked up by name (Stat) since then without a usable listing
        # (bounded: a forgotten entry costs at most one useless Stat or one late relist)
        self._touched: LRUCache[int, float] = LRUCache(maxsize=65536)
        self._misses: LRUCache[int, tuple[float, int]] = LRUCache(maxsize=4096)  # (first miss, count)
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
        # name -> node as last looked up: answers again while the etag confirms it, and in outages
        self._seen: LRUCache[tuple[int, str], Node] = LRUCache(maxsize=65536)
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

    def _set_resource(self, node: Node, res: Resource, began: float | None = None) -> bool:
        """Record a server answer about `node`; `began` = trio time the call that gave it began.

        False (nothing recorded but a directory's etag) when the call began before the node was last
        invalidated: the answer may predate that change (a listing asked just before an upload of the
        file landed still shows the old size and etag), and recording it would serve the old state as
        fresh, to the kernel too."""
        now = trio.current_time()
        began = now if began is None else began
        if began < node.invalidated and node.resource is not None:
            self._etag_seen(node, res, began, now)  # etags carry their own time bounds
            return False
        node.resource = res
        node.fetched = now
        node.kind = node_kind(res)
        node.observed = began
        self._etag_seen(node, res, began, now)
        return True

    def invalidate(self, node: Node) -> None:
        """A local change made what is recorded about `node` stale (an upload of it landed, its entries
        changed): the next question goes to the server, and answers to calls already on their way are
        not recorded."""
        node.fetched = -1.0
        node.invalidated = trio.current_time()

    @staticmethod
    def _etag_seen(node: Node, res: Resource, began: float, ended: float) -> None:
        if res.kind is RKind.DIR and res.etag:
            if res.etag != node.etag:
                node.etag, node.etag_since, node.etag_checked = res.etag, ended, began
            elif began > node.etag_checked:
                node.etag_checked = began

    def _confirmed(self, d: Node | None, observed: float, ttl: float) -> bool:
        """Was something observed at `observed` inside directory `d` confirmed unchanged by a Stat of
        `d` less than `ttl` ago (no RPC)?"""
        return (
            d is not None
            and d.etag is not None
            and observed >= d.etag_since
            and trio.current_time() - d.etag_checked < ttl
        )

    def _confirmable(self, d: Node | None, observed: float) -> bool:
        """Could one Stat of `d` confirm what was observed inside it at `observed`?"""
        return (
            d is not None
            and d.rid is not None
            and d.etag is not None
            and observed >= d.etag_since
            and self._touched.get(d.inode, -math.inf) <= d.etag_checked  # our own change moved it
        )

    async def _check(self, d: Node) -> bool:
        """Stat directory `d` (one call for all concurrent askers) to learn whether its etag moved.
        False when the server is unreachable: callers then serve what they have, as stat() does."""
        pending = self._checks.get(d.inode)
        if pending is not None:
            await pending.done.wait()
            return pending.reachable
        check = self._checks[d.inode] = _Check()
        try:
            assert d.rid is not None
            began = trio.current_time()
            res = await self.storage.stat(Ref.to(d.rid))
            self._set_resource(d, res, began)
        except NotFound:
            d.unlinked = True
        except ServerUnavailable as e:
            self._outage(e)
            check.reachable = False
        except MeshError as e:
            log.debug("etag check of %s: %s", self.path_of(d), e)
        finally:
            del self._checks[d.inode]
            check.done.set()
        return check.reachable

    def _parent_of(self, node: Node) -> Node | None:
        parent = self.inodes.get(node.parent)
        return parent if parent is not None and parent.inode != node.inode else None

    def fresh(self, node: Node) -> bool:
        """The node's cached attributes may be served without asking the server."""
        if node.resource is None or node.fetched < 0:
            return False
        if trio.current_time() - node.fetched < self.attr_ttl:
            return True
        return self._confirmed(self._parent_of(node), node.observed, self.attr_ttl)

    async def _revalidated(self, node: Node) -> bool:
        """fresh(), or made fresh by one etag check of the parent directory."""
        if self.fresh(node):
            return True
        if node.resource is None or node.fetched < 0:
            return False
        parent = self._parent_of(node)
        if parent is None or not self._confirmable(parent, node.observed):
            return False
        # unreachable server: serve what we last knew
        return not await self._check(parent) or self.fresh(node)

    async def stat(self, node: Node, *, force: bool = False) -> Resource | None:
        """The node's resource, from the cache while fresh. None for virtual directories."""
        if node.rid is None:
            return None
        if not force and await self._revalidated(node):
            return node.resource
        for attempt in range(3):
            began = trio.current_time()
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
            if self._set_resource(node, res, began) or attempt == 2:
                break
            # the node changed locally while the call was on its way (an upload landed): ask again
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
        if res is None:
            return True
        bits: int = res.permissions._value_  # plain ints: Flag arithmetic costs µs per entry listed
        return bits == 0 or bool(bits & _WRITE_BITS)

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
            now = trio.current_time()
            for d in dirs:
                left = self._busy.get(d.inode, 1) - 1
                if left:
                    self._busy[d.inode] = left
                else:
                    self._busy.pop(d.inode, None)
                self._gen[d.inode] = self._gen.get(d.inode, 0) + 1
                self._touched[d.inode] = now  # its etag moved: a check would only say so
                self._misses.pop(d.inode, None)

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

    def known_listing(self, inode: int) -> dict[str, Node] | None:
        """The last listing of a directory, valid or not, without asking the server (for diffs)."""
        return self._known.get(inode)

    def _listing_fresh(self, d: Node, cached: _Listing) -> bool:
        if trio.current_time() - cached.observed < self.list_ttl:
            return True
        return d.virtual is None and self._confirmed(d, cached.observed, self.list_ttl)

    def cached_listings(self) -> list[int]:
        """Directories whose listing is cached and currently valid without asking the server."""
        out = []
        for inode, cached in list(self._listings.items()):
            d = self.inodes.get(inode)
            if d is not None and self._listing_fresh(d, cached):
                out.append(inode)
        return out

    async def _cached_listing(self, d: Node) -> dict[str, Node] | None:
        """The cached listing of `d` if still valid, after one etag check of `d` when that can tell."""
        cached = self._listings.get(d.inode)
        if cached is None:
            return None
        if self._listing_fresh(d, cached):
            return cached.entries
        if d.virtual is not None or not self._confirmable(d, cached.observed):
            return None
        reachable = await self._check(d)
        cached = self._listings.get(d.inode)  # a local change may have dropped it meanwhile
        if cached is not None and (not reachable or self._listing_fresh(d, cached)):
            return cached.entries  # confirmed, or the server is unreachable: serve what we know
        return None

    def add_to_listing(self, parent: Node, name: str, child: Node) -> None:
        self._seen[(parent.inode, name)] = child
        cached = self._listings.get(parent.inode)
        listing = None if cached is None else cached.entries
        if listing is not None:
            listing[name] = child
        known = self._known.get(parent.inode)
        if known is not None and known is not listing:
            known[name] = child
        self.clear_negative(parent, name)

    def remove_from_listing(self, parent: Node, name: str) -> None:
        self._seen.pop((parent.inode, name), None)
        cached = self._listings.get(parent.inode)
        if cached is not None:
            cached.entries.pop(name, None)
        known = self._known.get(parent.inode)
        if known is not None:
            known.pop(name, None)

    def _adopt(
        self, parent: Node, res: Resource, name: str | None = None, began: float | None = None
    ) -> Node:
        known = self.inodes.by_rid(res.id)
        if known is not None and began is not None and began < known.invalidated:
            # the answer may predate a local change of this node (a rename: it would put the node
            # back under its old name): keep what the change recorded
            return known
        node = self.inodes.node_for(res.id, node_kind(res), name or res.name, parent.inode)
        node.readonly = parent.readonly or node.readonly
        if node.local_size is None:  # local changes win over the server's view until uploaded
            self._set_resource(node, res, began)
        elif began is None or began >= node.invalidated:
            node.resource, node.fetched = res, trio.current_time()
            node.observed = -math.inf  # what we serve is local, not the server's answer
        node.unlinked = False
        return node

    async def lookup(self, parent: Node, name: str) -> Node:
        """The node called `name` in `parent`; NotFound if absent."""
        if parent.virtual is not None:
            entries = await self.listing(parent)
            if name not in entries:
                raise NotFound("no such entry", op="lookup", path=self.path_of(parent) + "/" + name)
            return self.inodes.live(entries[name])
        listing = await self._cached_listing(parent)
        if listing is not None:
            node = listing.get(name)
            if node is None:
                raise NotFound("no such entry", op="lookup", path=self.path_of(parent) + "/" + name)
            return self.inodes.live(node)
        if self.is_negative(parent, name):
            raise NotFound("no such entry (cached)", op="lookup", path=self.path_of(parent) + "/" + name)
        known = self._seen.get((parent.inode, name))
        if known is not None:
            # the kernel may have forgotten it and another node been made for its inode since: that
            # one is the current record (name, resource, open handles)
            known = self.inodes.live(known)
        if (
            known is not None
            and known.parent == parent.inode
            and known.name == name
            and not known.unlinked
            and known.resource is not None
            and known.resource.name == name  # the server's own view of where it is, when observed
            and (known.resource.parent_id is None or known.resource.parent_id == parent.rid)
            and await self._revalidated(known)
        ):
            return known  # looked up before, and the directory's etag says nothing changed since
        now = trio.current_time()
        first, misses = self._misses.get(parent.inode, (now, 0))
        if now - first > RELIST_WINDOW:
            first, misses = now, 0
        self._misses[parent.inode] = (first, misses + 1)
        if (
            misses + 1 >= RELIST_AFTER
            and parent.inode not in self._busy
            and len(self._known.get(parent.inode) or ()) <= RELIST_MAX_ENTRIES
        ):
            # many names of this quiet directory asked one by one: one listing answers them all
            self._misses.pop(parent.inode, None)
            try:
                entries = await self.listing(parent)
            except MeshError as e:
                log.debug("listing %s instead of lookups: %s", self.path_of(parent), e)
            else:
                if name not in entries:
                    raise NotFound("no such entry", op="lookup", path=self.path_of(parent) + "/" + name)
                return self.inodes.live(entries[name])
        stamp = self._stamp(parent.inode)
        began = trio.current_time()
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
            return self.inodes.live(known)
        node = self._adopt(parent, res, name, began)
        self._seen[(parent.inode, name)] = node
        return node

    async def listing(self, parent: Node) -> dict[str, Node]:
        """name → node for every entry of a directory (cached for the listing TTL, and past it while
        the directory's etag is unchanged)."""
        listing = await self._cached_listing(parent)
        if listing is not None:
            return listing
        began = trio.current_time()
        if parent.virtual is not None:
            listing = await self._list_virtual(parent)
        else:
            if parent.rid is None:
                raise NotFound("no such directory", op="list", path=self.path_of(parent))
            if parent.etag is None or self._touched.get(parent.inode, -math.inf) > parent.etag_checked:
                # learn the directory's etag first, so that a Stat can confirm this listing later
                await self._check(parent)
            stamp = self._stamp(parent.inode)
            began = trio.current_time()
            try:
                resources = await self.storage.list_container(Ref.to(parent.rid))
            except ServerUnavailable as e:
                known = self._known.get(parent.inode)
                if known is None:
                    raise
                self._outage(e)
                return known
            listing = {r.name: self._adopt(parent, r, began=began) for r in resources}
            if not self._quiet_since(parent.inode, stamp):
                return listing  # a local change overlapped: good for this caller, not for the cache
        self._listings[parent.inode] = _Listing(listing, began)
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
