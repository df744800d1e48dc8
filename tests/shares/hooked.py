"""Test-only stand-ins for hooks of /work/notes/shares-hooks.md that meshfs does not carry yet, each
switching itself off once the real one exists. H0: a node handed to the kernel again from a cached
listing is put back into the inode table (else the next OPEN answers ESTALE) — off since 9c8ae5f
(`InodeTable.ensure`). H3a/H3b/H3c (OCM), only with SHARES_OCM_STANDIN=1: see below. H4 (a whole-file
GET when a Range gets a bare 416) is in the product (cs3/transfer.py) and has no stand-in any more.

Loaded by the daemon through MESHFS_FILESYSTEM="hooked:HookedFilesystem" (tests/shares/share_rig.py).
"""

from __future__ import annotations

import contextlib
import os
from functools import partial
from pathlib import Path
from typing import Any

import trio

from meshfs.cs3 import Perm, Ref, ResourceId, Shares, ShareState
from meshfs.errors import MeshError, NotFound, PermissionDenied
from meshfs.fuse import EntryAttributes, ReaddirToken
from meshfs.vfs.filesystem import MeshFilesystem
from meshfs.vfs.inodes import InodeTable, Node, Virtual
from meshfs.vfs.ops import MeshOps
from meshfs.vfs.tree import Tree

REPO = Path(__file__).resolve().parent.parent.parent


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
        fixed = hasattr(InodeTable, "hand_out") or hasattr(InodeTable, "ensure")  # H0 is in (9c8ae5f)
        if not fixed and type(self.operations) is MeshOps:
            self.operations.__class__ = _H0Ops
        if os.environ.get("SHARES_OCM_STANDIN") == "1":
            _install_ocm_standins(self)


# ---- OCM stand-ins (hook H3), only when SHARES_OCM_STANDIN=1 (tests/shares/test_ocm_shares.py) ----------

OCM_DRIVER_ID = "89f37a33-858b-45fa-8890-a1f2b27d90e1"  # what the ocmreceived driver puts in its ids
OCM_REGISTERED_ID = "984e7351-2729-4417-99b4-ab5e6d41fa97"  # what the dev stack registers (H3a)


def _route(ref: Any) -> Any:
    """H3a stand-in: give an OCM id the storage id the dev stack's registry knows."""
    rid = getattr(ref, "resource_id", None)
    if isinstance(ref, Ref) and rid is not None and rid.storage_id == OCM_DRIVER_ID:
        return Ref(ResourceId(OCM_REGISTERED_ID, rid.space_id, rid.opaque_id), ref.path)
    return ref


def _routing(obj: Any, names: tuple[str, ...]) -> None:
    for name in names:
        method = getattr(obj, name)

        async def routed(*args: Any, _m: Any = method, **kw: Any) -> Any:
            return await _m(*(_route(a) for a in args), **kw)

        setattr(obj, name, routed)


async def _update_received_ocm_share(self: Shares, share_id: str, state: ShareState) -> None:
    """H3b stand-in (test-only raw call through the Gateway)."""
    from cs3.sharing.ocm.v1beta1 import ocm_api_pb2 as ocm_api
    from cs3.sharing.ocm.v1beta1 import resources_pb2 as ocm_pb

    states = {
        ShareState.ACCEPTED: ocm_pb.SHARE_STATE_ACCEPTED,
        ShareState.REJECTED: ocm_pb.SHARE_STATE_REJECTED,
    }
    rs = ocm_pb.ReceivedShare(id=ocm_pb.ShareId(opaque_id=share_id), state=states[state])
    req = ocm_api.UpdateReceivedOCMShareRequest(share=rs)
    req.update_mask.paths.append("state")
    await self.gw.call("UpdateReceivedOCMShare", req, op="updateocmshare", path=share_id)


def _install_ocm_standins(fs: MeshFilesystem) -> None:
    tree = fs.tree
    if not hasattr(Shares, "update_received_ocm_share"):
        fs.shares.update_received_ocm_share = partial(_update_received_ocm_share, fs.shares)  # type: ignore[attr-defined]
    if OCM_DRIVER_ID not in (REPO / "dev/reva/templates/ocm/ocm-registry.inc").read_text():
        _routing(fs.storage, ("stat", "list_container", "create_container", "touch_file", "move", "delete",
                              "set_metadata", "unset_metadata", "get_quota"))  # fmt: skip
        _routing(fs.transfer, ("initiate_download", "download"))
    if hasattr(Tree, "received_ocm_shares"):
        return
    cache: dict[str, tuple[float, list[Any]]] = {}
    original_list = tree._list_virtual
    original_drop = tree.drop_share_cache

    async def received_ocm_shares(*, force: bool = False) -> list[Any]:
        hit = cache.get("ocm")
        if not force and hit is not None and trio.current_time() - hit[0] < 10.0:
            return hit[1]
        got = await fs.shares.list_received_ocm_shares()
        cache["ocm"] = (trio.current_time(), got)
        return got

    def drop_share_cache() -> None:
        cache.clear()
        original_drop()

    async def list_virtual(parent: Node) -> dict[str, Node]:
        out = await original_list(parent)
        if parent.virtual not in (Virtual.SHARED_WITH_ME, Virtual.PENDING):
            return out
        want = ShareState.ACCEPTED if parent.virtual is Virtual.SHARED_WITH_ME else ShareState.PENDING
        for share in sorted(await received_ocm_shares(), key=lambda s: (s.mtime_ns, s.id)):
            if share.state is not want:
                continue
            try:
                res = await fs.storage.stat(Ref(path=f"/ocm/{share.id}"))
            except (NotFound, PermissionDenied):
                continue
            name = tree._unique(out, share.name or res.name, share.id)
            node = tree._adopt(parent, res, name)
            node.readonly = not (
                res.permissions & (Perm.UPLOAD | Perm.CREATE_CONTAINER | Perm.DELETE | Perm.MOVE)
            )
            node.share_id = "ocm:" + share.id
            out[name] = node
        return out

    tree.received_ocm_shares = received_ocm_shares  # type: ignore[attr-defined]
    tree.drop_share_cache = drop_share_cache  # type: ignore[method-assign]
    tree._list_virtual = list_virtual  # type: ignore[method-assign]
