"""Inode numbers, the nodes they name, kernel lookup counts and forget.

Owns the mapping inode ↔ Node. An inode number is stable per CS3 resource (keyed by the resource id
string) for the daemon's lifetime, so a file keeps its inode across renames and is the same inode under
home/ and shared-by-me/. Virtual directories get fixed inodes below FIRST_DYNAMIC.

Must not import: grpc, cs3apis, urllib3, meshfs.fuse (the node values are plain Python).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from meshfs.cs3 import Resource, ResourceId

ROOT = 1
FIRST_DYNAMIC = 64


class Kind(enum.Enum):
    DIR = "dir"
    FILE = "file"
    SYMLINK = "symlink"


class Virtual(enum.Enum):
    """The read-only containers meshfs makes up; their entries are real CS3 resources."""

    ROOT = "root"
    SHARED_WITH_ME = "shared-with-me"
    PENDING = ".pending"
    SHARED_BY_ME = "shared-by-me"
    PROJECTS = "projects"


@dataclass(slots=True, eq=False)
class Node:
    """One inode. `rid` is None only for virtual directories.

    `resource` is the last Stat/listing answer and `fetched` the trio time it arrived; `parent` and
    `name` are where the kernel last looked it up (for logs, the journal and path-relative views).
    `readonly` is set for resources reached through a viewer share.

    Etag validation (vfs/tree.py): `observed` is the trio time the server call that produced
    `resource` began. For directories, `etag` is the last etag seen, `etag_since` the time the call
    that first showed it ended and `etag_checked` the time the latest call that showed it again began:
    nothing below the directory changed on the server between those two times.
    `invalidated` is the trio time of the last local change that made `resource` stale (an upload of the
    file landed, a child of the directory changed): an answer from a server call that began before it
    may predate that change and is not recorded (vfs/tree.py).
    """

    inode: int
    kind: Kind
    name: str
    parent: int
    rid: ResourceId | None = None
    virtual: Virtual | None = None
    resource: Resource | None = None
    fetched: float = -1.0
    readonly: bool = False
    lookups: int = 0
    open_count: int = 0
    #: while the file has local changes not yet on the server: its local size and mtime
    local_size: int | None = None
    local_mtime_ns: int | None = None
    #: the resource is gone on the server (unlinked) but open handles or lookups still use it
    unlinked: bool = False
    #: for the entries of shared-with-me/: the received share they stand for
    share_id: str | None = None
    observed: float = -math.inf
    etag: str | None = None
    etag_since: float = math.inf
    etag_checked: float = -math.inf
    invalidated: float = -math.inf

    @property
    def key(self) -> str | None:
        return None if self.rid is None else str(self.rid)


class InodeTable:
    """inode → Node, resource key → inode; lookup counts as the kernel holds them."""

    def __init__(self) -> None:
        self._nodes: dict[int, Node] = {}
        self._by_key: dict[str, int] = {}
        self._next = FIRST_DYNAMIC
        self._pinned: set[int] = set()  # the fixed inodes (root, home, virtual dirs): never dropped

    def __len__(self) -> int:
        return len(self._nodes)

    def get(self, inode: int) -> Node | None:
        return self._nodes.get(inode)

    def add_virtual(self, inode: int, virtual: Virtual, name: str, parent: int) -> Node:
        node = Node(inode=inode, kind=Kind.DIR, name=name, parent=parent, virtual=virtual)
        self._nodes[inode] = node
        self._pinned.add(inode)
        return node

    def ensure(self, node: Node) -> Node:
        """Make `node`'s inode reachable again and return the node that stands for it (a cached listing
        handed out a node the kernel had forgotten). Numbers are stable per resource: when another
        node was registered for the same inode since, that one is returned (it is the one server
        answers, open handles and the kernel have been using); `node` is only an old copy."""
        live = self._nodes.get(node.inode)
        if live is None:
            self._nodes[node.inode] = node
            return node
        return live

    def live(self, node: Node) -> Node:
        """The registered node of `node`'s inode if there is one, else `node` (nothing registered)."""
        return self._nodes.get(node.inode) or node

    def by_rid(self, rid: ResourceId) -> Node | None:
        inode = self._by_key.get(str(rid))
        return None if inode is None else self._nodes.get(inode)

    def node_for(self, rid: ResourceId, kind: Kind, name: str, parent: int) -> Node:
        """The node of a resource, created on first sight; refreshed name/parent otherwise."""
        inode = self._by_key.get(str(rid))
        node = None if inode is None else self._nodes.get(inode)
        if node is not None:
            # (a registered node always carries the id its inode is keyed by; `rekey` sees to it)
            node.name, node.parent, node.kind = name, parent, kind
            return node
        if inode is None:
            inode = self._next
            self._next += 1
        node = Node(inode=inode, kind=kind, name=name, parent=parent, rid=rid)
        self._nodes[inode] = node
        self._by_key[str(rid)] = inode
        return node

    def rekey(self, node: Node, rid: ResourceId) -> None:
        """A resource got a new id (e.g. replaced by an upload through another path). The node
        registered for the same inode, when `node` is an old copy of it, gets the id too: it is the one
        the kernel's requests reach, and it must not keep an id that is gone."""
        for n in {id(x): x for x in (node, self._nodes.get(node.inode)) if x is not None}.values():
            if n.rid is not None and self._by_key.get(str(n.rid)) == n.inode:
                del self._by_key[str(n.rid)]
            n.rid = rid
        self._by_key[str(rid)] = node.inode

    def forget(self, inode: int, nlookup: int) -> None:
        node = self._nodes.get(inode)
        if node is None or inode in self._pinned:
            return
        node.lookups = max(0, node.lookups - nlookup)
        if node.lookups == 0 and node.open_count == 0:
            self._drop(node)

    def release_open(self, node: Node) -> None:
        node.open_count = max(0, node.open_count - 1)
        if node.lookups == 0 and node.open_count == 0 and node.inode not in self._pinned:
            self._drop(node)

    def _drop(self, node: Node) -> None:
        # The key → inode entry stays: the same resource gets the same inode number when the kernel
        # looks it up again (numbers are stable for the daemon's lifetime; an int per resource seen).
        if self._nodes.get(node.inode) is node:  # never another node registered for the inode since
            del self._nodes[node.inode]

    def children_of(self, parent: int) -> list[Node]:
        return [n for n in self._nodes.values() if n.parent == parent and n.virtual is None]
