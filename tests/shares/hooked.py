"""Test-only stand-in for hook H0 of /work/notes/shares-hooks.md until meshfs/vfs carries it: a node
handed to the kernel again from a cached listing is put back into the inode table (else the next
OPEN of that inode answers ESTALE). Once `InodeTable.hand_out` exists this adds nothing.

Loaded by the daemon through MESHFS_FILESYSTEM="hooked:HookedFilesystem" (tests/shares/share_rig.py).
"""

from __future__ import annotations

import contextlib

import trio

from meshfs.errors import MeshError
from meshfs.fuse import EntryAttributes, ReaddirToken
from meshfs.vfs.filesystem import MeshFilesystem
from meshfs.vfs.inodes import InodeTable, Node
from meshfs.vfs.ops import MeshOps


def _revive(table: InodeTable, node: Node) -> None:
    if table.get(node.inode) is None:
        table._nodes[node.inode] = node


class _H0Ops(MeshOps):
    async def _entry(self, node: Node) -> EntryAttributes:
        _revive(self.inodes, node)
        return await super()._entry(node)

    async def readdir(self, fh: int, start_id: int, token: ReaddirToken) -> None:
        dh = self._dirs.get(fh)
        if dh is not None:
            with contextlib.suppress(MeshError):
                for node in (await self.tree.listing(dh.node)).values():
                    _revive(self.inodes, node)
            for _, node in dh.entries or ():
                _revive(self.inodes, node)
        await super().readdir(fh, start_id, token)


class HookedFilesystem(MeshFilesystem):
    async def start(self, nursery: trio.Nursery) -> None:
        await super().start(nursery)
        if not hasattr(InodeTable, "hand_out") and type(self.operations) is MeshOps:
            self.operations.__class__ = _H0Ops
