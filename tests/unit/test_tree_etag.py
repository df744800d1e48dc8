"""Unit tests (fake server, autojump clock) of the metadata cache's etag validation in vfs/tree.py.

The fake server keeps a tree whose directory etags change, like Reva's, whenever anything below them
changes (names, sizes, metadata). What must hold: a change on the server is never hidden for longer
than the TTL after it happened; while nothing changes, a listing and the children's attributes are
served after one Stat of the directory instead of a relist or a Stat per child.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field

import pytest
import trio

from meshfs.cs3 import Kind, Ref, Resource, ResourceId
from meshfs.errors import NotFound, ServerUnavailable
from meshfs.vfs import tree as tree_module
from meshfs.vfs.inodes import InodeTable, Node
from meshfs.vfs.tree import RELIST_AFTER, Tree

TTL = 1.0
Rig = tuple[Tree, "FakeServer", Node]
RTT = 0.003  # every fake call takes this long (trio time)


def rid(opaque: str) -> ResourceId:
    return ResourceId("st", "sp", opaque)


@dataclass
class Item:
    name: str
    parent: str | None
    is_dir: bool
    size: int = 0
    etag: int = 0
    meta: dict[str, str] = field(default_factory=dict)


class FakeServer:
    """A storage tree with propagated etags; counts calls by kind."""

    def __init__(self) -> None:
        self.items: dict[str, Item] = {"home": Item("home", None, True)}
        self.calls: Counter[str] = Counter()
        self.down = False
        self._ids = itertools.count(1)

    # -- changes made "on another node" ------------------------------------------------------------

    def _bump(self, opaque: str | None) -> None:
        while opaque is not None:
            self.items[opaque].etag += 1
            opaque = self.items[opaque].parent

    def add(self, parent: str, name: str, *, is_dir: bool = False, size: int = 0) -> str:
        opaque = f"n{next(self._ids)}"
        self.items[opaque] = Item(name, parent, is_dir, size)
        self._bump(opaque)
        return opaque

    def delete(self, opaque: str) -> None:
        parent = self.items.pop(opaque).parent
        self._bump(parent)

    def rename(self, opaque: str, name: str) -> None:
        self.items[opaque].name = name
        self._bump(opaque)

    def write(self, opaque: str, size: int) -> None:
        self.items[opaque].size = size
        self._bump(opaque)

    def set_meta(self, opaque: str, key: str, value: str) -> None:
        self.items[opaque].meta[key] = value
        self._bump(opaque)

    # -- the Storage calls Tree makes --------------------------------------------------------------

    def _res(self, opaque: str) -> Resource:
        it = self.items[opaque]
        return Resource(
            rid(opaque),
            rid(it.parent) if it.parent else None,
            it.name,
            it.name,
            Kind.DIR if it.is_dir else Kind.FILE,
            it.size,
            0,
            f'"{opaque}-{it.etag}"',
            metadata=dict(it.meta),
        )

    async def _call(self, kind: str) -> None:
        self.calls[kind] += 1
        await trio.sleep(RTT)
        if self.down:
            raise ServerUnavailable("gateway unreachable", op=kind)

    async def get_home(self) -> Ref:
        return Ref(path="/users/einstein")

    async def stat(self, ref: Ref) -> Resource:
        await self._call("stat")
        if ref.resource_id is None:
            return self._res("home")
        base = ref.resource_id.opaque_id
        if base not in self.items:
            raise NotFound("gone", op="stat")
        if ref.path in (".", ""):
            return self._res(base)
        name = ref.path.removeprefix("./")
        for opaque, it in self.items.items():
            if it.parent == base and it.name == name:
                return self._res(opaque)
        raise NotFound("no such entry", op="stat")

    async def list_container(self, ref: Ref) -> list[Resource]:
        await self._call("list")
        assert ref.resource_id is not None
        base = ref.resource_id.opaque_id
        if base not in self.items:
            raise NotFound("gone", op="list")
        return [self._res(o) for o, it in self.items.items() if it.parent == base]

    def names(self, parent: str) -> set[str]:
        return {it.name for it in self.items.values() if it.parent == parent}


@pytest.fixture
async def rig(autojump_clock: trio.abc.Clock) -> Rig:
    server = FakeServer()
    tree = Tree(server, None, InodeTable(), attr_ttl=TTL, entry_ttl=TTL, negative_ttl=TTL)  # type: ignore[arg-type]
    home = await tree.start()
    return tree, server, home


async def subdir(tree: Tree, server: FakeServer, home: Node, files: int) -> tuple[Node, str]:
    d = server.add("home", "d", is_dir=True)
    for i in range(files):
        server.add(d, f"f{i}", size=i)
    await trio.sleep(2 * TTL)  # nothing of it is cached
    return await tree.lookup(home, "d"), d


async def test_unchanged_listing_is_kept_past_the_ttl_with_one_stat(rig: Rig, autojump_clock: object) -> None:
    tree, server, home = rig
    d, _ = await subdir(tree, server, home, 50)
    assert len(await tree.listing(d)) == 50
    server.calls.clear()
    for _ in range(5):
        await trio.sleep(3 * TTL)
        assert len(await tree.listing(d)) == 50
    assert server.calls == {"stat": 5}  # one etag check per listing, no relist


async def test_remote_changes_show_within_the_ttl(rig: Rig, autojump_clock: object) -> None:
    tree, server, home = rig
    d, dopaque = await subdir(tree, server, home, 3)
    await tree.listing(d)
    f0 = next(o for o, it in server.items.items() if it.name == "f0")
    f1 = next(o for o, it in server.items.items() if it.name == "f1")
    node0 = await tree.lookup(d, "f0")
    changes = [
        lambda: server.add(dopaque, "new"),
        lambda: server.delete(f1),
        lambda: server.rename(f0, "f0-renamed"),
        lambda: server.add(dopaque, "sub", is_dir=True),
    ]
    for change in changes:
        await trio.sleep(3 * TTL)  # the listing is past its TTL and only confirmed by etag
        assert set(await tree.listing(d)) == server.names(dopaque)
        change()
        await trio.sleep(TTL)
        assert set(await tree.listing(d)) == server.names(dopaque)
    # attributes: a size change and a metadata change of a file, seen by stat() within the TTL
    f2 = next(o for o, it in server.items.items() if it.name == "f2")
    node2 = await tree.lookup(d, "f2")
    for change in (lambda: server.write(f2, 1234), lambda: server.set_meta(f2, "k", "v")):
        await trio.sleep(3 * TTL)
        assert (await tree.stat(node2)) is not None
        change()
        await trio.sleep(TTL)
        res = await tree.stat(node2)
        assert res is not None and res.size == 1234
    assert res.metadata.get("k") == "v"
    # the renamed file: its old name is gone, also for a lookup by name
    with pytest.raises(NotFound):
        await tree.lookup(d, "f0")
    assert (await tree.lookup(d, "f0-renamed")) is node0


async def test_a_name_renamed_remotely_is_not_served_from_the_lookup_memory(
    rig: Rig, autojump_clock: object
) -> None:
    """lookup(a), rename a→b on the server, then the node is re-read by id (getattr): its old name must
    not be answered from what lookup remembered, although the directory's etag no longer moves."""
    tree, server, home = rig
    d, dopaque = await subdir(tree, server, home, 0)
    a = server.add(dopaque, "a")
    await trio.sleep(2 * TTL)
    node = await tree.lookup(d, "a")
    server.rename(a, "b")
    await trio.sleep(2 * TTL)
    await tree.stat(d, force=True)  # the directory's new etag
    await tree.stat(node)  # the node again, by id: the server says it is "b"
    await trio.sleep(2 * TTL)
    with pytest.raises(NotFound):
        await tree.lookup(d, "a")


async def test_stat_of_many_children_costs_one_directory_stat(rig: Rig, autojump_clock: object) -> None:
    tree, server, home = rig
    d, _ = await subdir(tree, server, home, 100)
    nodes = [await tree.lookup(d, f"f{i}") for i in range(100)]
    await trio.sleep(3 * TTL)
    server.calls.clear()
    for node in nodes:
        assert await tree.stat(node) is not None
    assert server.calls == {"stat": 1}
    # a change in the directory: one check, then each child is asked for again (nothing served stale)
    server.add(d.rid.opaque_id if d.rid else "", "other")
    await trio.sleep(3 * TTL)
    server.calls.clear()
    for node in nodes:
        await tree.stat(node)
    assert server.calls == {"stat": 1 + 100}


async def test_lookups_of_many_names_list_the_quiet_directory_once(rig: Rig, autojump_clock: object) -> None:
    tree, server, home = rig
    d, _ = await subdir(tree, server, home, 200)
    server.calls.clear()
    for i in range(200):
        assert (await tree.lookup(d, f"f{i}")).name == f"f{i}"
    with pytest.raises(NotFound):
        await tree.lookup(d, "nope")
    assert server.calls["list"] == 1
    assert server.calls["stat"] <= RELIST_AFTER + 1


async def test_a_directory_known_to_be_big_is_not_relisted_for_lookups(
    rig: Rig, autojump_clock: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tree_module, "RELIST_MAX_ENTRIES", 100)
    tree, server, home = rig
    d, dopaque = await subdir(tree, server, home, 150)
    await tree.listing(d)
    server.add(dopaque, "more")  # the listing is out of date: lookups ask by name again
    await trio.sleep(3 * TTL)
    server.calls.clear()
    for i in range(2 * RELIST_AFTER):
        await tree.lookup(d, f"f{i}")
    assert server.calls["list"] == 0


async def test_local_changes_are_not_checked_in_vain_and_are_relisted(
    rig: Rig, autojump_clock: object
) -> None:
    tree, server, home = rig
    d, dopaque = await subdir(tree, server, home, 5)
    await tree.listing(d)
    async with tree.changing(d):
        new = server.add(dopaque, "mine")  # what the mount itself creates
        tree.add_to_listing(d, "mine", tree.inodes.node_for(rid(new), d.kind, "mine", d.inode))
    await trio.sleep(3 * TTL)
    server.calls.clear()
    assert "mine" in await tree.listing(d)
    # the etag moved through our own change: one Stat (to learn the new etag) and one relist
    assert server.calls == {"stat": 1, "list": 1}
    server.calls.clear()
    await trio.sleep(3 * TTL)
    await tree.listing(d)
    assert server.calls == {"stat": 1}


async def test_unreachable_server_serves_the_cache_after_one_failed_call(
    rig: Rig, autojump_clock: object
) -> None:
    tree, server, home = rig
    d, _ = await subdir(tree, server, home, 10)
    await tree.listing(d)
    node = await tree.lookup(d, "f3")
    await trio.sleep(3 * TTL)
    server.down = True
    server.calls.clear()
    assert len(await tree.listing(d)) == 10
    assert server.calls == {"stat": 1}
    server.calls.clear()
    res = await tree.stat(node)
    assert res is not None and res.size == 3
    assert server.calls == {"stat": 1}


async def test_concurrent_askers_share_one_check(rig: Rig, autojump_clock: object) -> None:
    tree, server, home = rig
    d, _ = await subdir(tree, server, home, 20)
    nodes = [await tree.lookup(d, f"f{i}") for i in range(20)]
    await trio.sleep(3 * TTL)
    server.calls.clear()
    async with trio.open_nursery() as n:
        for node in nodes:
            n.start_soon(tree.stat, node)
    assert server.calls == {"stat": 1}
