"""CS3 storage calls: home, stat, list, mkdir, touch, move, delete, metadata, quota, locks, spaces, trash.

Owns: the StorageProvider part of GatewayAPI, returning plain values of meshfs/cs3/types.py.
Must not import: vfs/, fuse/, cache/. Protobuf stays inside meshfs/cs3/.
Every mutating call takes an optional `lock_id` (the CS3 lock we hold on the resource, if any).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import trio
from cs3.rpc.v1beta1 import code_pb2
from cs3.storage.provider.v1beta1 import provider_api_pb2 as pb
from cs3.storage.provider.v1beta1 import resources_pb2 as res_pb
from cs3.storage.provider.v1beta1 import spaces_api_pb2 as spaces_pb

from meshfs.errors import AlreadyExists, InvalidArgument, NotFound, NotSupported, ServerError

from ._convert import (
    lock_from_pb,
    lock_to_pb,
    opaque,
    recycle_from_pb,
    ref_to_pb,
    resource_from_pb,
    space_from_pb,
)
from .gateway import Gateway
from .types import Lock, LockKind, Quota, RecycleItem, Ref, Resource, Space

APP_NAME = "meshfs"


def mtime_value(mtime_ns: int) -> str:
    """The `<unix>.<nanos>` form Reva takes for the `mtime` metadata key and X-OC-Mtime."""
    return f"{mtime_ns // 1_000_000_000}.{mtime_ns % 1_000_000_000:09d}"


# Listings longer than this are converted in a worker thread: ~10 µs of CPU per entry would
# otherwise hold the event loop (and every other FUSE request) for 100 ms per 10k entries.
_THREAD_CONVERT_MIN = 256


async def _convert_many(infos: Sequence[Any]) -> list[Resource]:
    if len(infos) < _THREAD_CONVERT_MIN:
        return [resource_from_pb(ri) for ri in infos]
    return await trio.to_thread.run_sync(lambda: [resource_from_pb(ri) for ri in infos])


class Storage:
    """Metadata and namespace operations on the gateway's storage providers."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self._stream_list = True  # ListContainerStream until the server says UNIMPLEMENTED

    async def get_home(self) -> Ref:
        """The user's home as an absolute-path reference (e.g. /users/<opaque id>)."""
        res = await self.gw.call("GetHome", pb.GetHomeRequest(), op="gethome")
        return Ref(path=res.path)

    async def stat(self, ref: Ref) -> Resource:
        """All metadata of one resource, including the lock, checksum and arbitrary metadata."""
        res = await self.gw.call("Stat", pb.StatRequest(ref=ref_to_pb(ref)), op="stat", path=str(ref))
        return resource_from_pb(res.info)

    async def list_container(self, ref: Ref) -> list[Resource]:
        """The entries of a container (streaming call when the server has it). NotFound if missing."""
        req = pb.ListContainerRequest(ref=ref_to_pb(ref))
        if self._stream_list:
            try:
                parts = await self.gw.call("ListContainerStream", req, op="list", path=str(ref), stream=True)
                return await _convert_many([p.info for p in parts if p.HasField("info")])
            except (NotSupported, ServerError) as e:
                # Reva's gateway answers gRPC UNKNOWN "error: not supported: Unimplemented" here
                if not isinstance(e, NotSupported) and "not supported" not in e.message.lower():
                    raise
                self._stream_list = False
        res = await self.gw.call("ListContainer", req, op="list", path=str(ref))
        return await _convert_many(res.infos)

    async def create_container(self, ref: Ref, *, lock_id: str | None = None) -> None:
        """mkdir. AlreadyExists / FailedPrecondition (parent missing) / InvalidArgument (bad name)."""
        req = pb.CreateContainerRequest(ref=ref_to_pb(ref))
        if lock_id:
            req.opaque.CopyFrom(opaque({"lockid": lock_id}))
        try:
            await self.gw.call("CreateContainer", req, op="mkdir", path=str(ref), idempotent=False)
        except AlreadyExists as e:
            if not e.retried:  # after a transport failure: our first attempt made it
                raise

    async def touch_file(self, ref: Ref, *, lock_id: str | None = None, mtime_ns: int | None = None) -> None:
        """Create an empty file (AlreadyExists when present)."""
        req = pb.TouchFileRequest(ref=ref_to_pb(ref), lock_id=lock_id or "")
        if mtime_ns is not None:
            req.opaque.CopyFrom(opaque({"X-OC-Mtime": mtime_value(mtime_ns)}))
        await self.gw.call("TouchFile", req, op="touch", path=str(ref), idempotent=False)

    async def move(self, src: Ref, dst: Ref, *, lock_id: str | None = None) -> None:
        """Rename/move. The target must not exist (AlreadyExists otherwise: no overwrite)."""
        req = pb.MoveRequest(source=ref_to_pb(src), destination=ref_to_pb(dst), lock_id=lock_id or "")
        await self.gw.call("Move", req, op="move", path=f"{src} -> {dst}", idempotent=False)

    async def delete(self, ref: Ref, *, lock_id: str | None = None) -> None:
        """Delete (to the trash) a file or a whole tree."""
        req = pb.DeleteRequest(ref=ref_to_pb(ref), lock_id=lock_id or "")
        try:
            await self.gw.call("Delete", req, op="delete", path=str(ref), idempotent=False)
        except NotFound as e:
            if not e.retried:  # after a transport failure: our first attempt deleted it
                raise

    async def set_metadata(self, ref: Ref, values: Mapping[str, str], *, lock_id: str | None = None) -> None:
        """Set arbitrary metadata keys. The key `mtime` (`<unix>.<nanos>`) sets the modification time."""
        req = pb.SetArbitraryMetadataRequest(
            ref=ref_to_pb(ref),
            arbitrary_metadata=res_pb.ArbitraryMetadata(metadata=dict(values)),
            lock_id=lock_id or "",
        )
        await self.gw.call("SetArbitraryMetadata", req, op="setxattr", path=str(ref))

    async def set_mtime(self, ref: Ref, mtime_ns: int, *, lock_id: str | None = None) -> None:
        """Set the modification time (nanoseconds since the epoch)."""
        await self.set_metadata(ref, {"mtime": mtime_value(mtime_ns)}, lock_id=lock_id)

    async def unset_metadata(self, ref: Ref, keys: Iterable[str], *, lock_id: str | None = None) -> None:
        req = pb.UnsetArbitraryMetadataRequest(
            ref=ref_to_pb(ref), arbitrary_metadata_keys=list(keys), lock_id=lock_id or ""
        )
        await self.gw.call("UnsetArbitraryMetadata", req, op="removexattr", path=str(ref))

    async def get_quota(self, ref: Ref) -> Quota:
        res = await self.gw.call(
            "GetQuota", pb.GetQuotaRequest(ref=ref_to_pb(ref)), op="statfs", path=str(ref)
        )
        return Quota(int(res.total_bytes), int(res.used_bytes))

    # -- locks ------------------------------------------------------------------------------------
    # Reva's gateway cannot route GetLock/RefreshLock/Unlock by absolute path (decomposedfs answers
    # INTERNAL "invalid reference path"), so a path reference is resolved to its id first.

    async def _by_id(self, ref: Ref) -> Ref:
        if ref.resource_id is not None:
            return ref
        return Ref.to((await self.stat(ref)).id)

    def _lock(self, lock_id: str, kind: LockKind, app_name: str, expiration: float | None) -> Lock:
        return Lock(lock_id, kind, self.gw.user.id, app_name, expiration)

    async def set_lock(
        self,
        ref: Ref,
        lock_id: str,
        *,
        kind: LockKind = LockKind.WRITE,
        app_name: str = APP_NAME,
        expiration: float | None = None,
    ) -> None:
        """Take a whole-file CS3 lock (`expiration`: unix seconds). Already locked → FailedPrecondition."""
        req = pb.SetLockRequest(
            ref=ref_to_pb(ref), lock=lock_to_pb(self._lock(lock_id, kind, app_name, expiration))
        )
        await self.gw.call("SetLock", req, op="setlock", path=str(ref), idempotent=False)

    async def get_lock(self, ref: Ref) -> Lock | None:
        """The current lock, or None when the file is not locked (NotFound when the file is missing)."""
        ref = await self._by_id(ref)
        res = await self.gw.call(
            "GetLock",
            pb.GetLockRequest(ref=ref_to_pb(ref)),
            op="getlock",
            path=str(ref),
            ok_codes=(code_pb2.CODE_NOT_FOUND,),
        )
        if res.status.code == code_pb2.CODE_NOT_FOUND:
            await self.stat(ref)  # raises NotFound if the file itself is missing
            return None
        return lock_from_pb(res.lock) if res.HasField("lock") else None

    async def refresh_lock(
        self,
        ref: Ref,
        lock_id: str,
        *,
        kind: LockKind = LockKind.WRITE,
        app_name: str = APP_NAME,
        expiration: float | None = None,
        existing_lock_id: str | None = None,
    ) -> None:
        """Extend (or replace, via existing_lock_id) our lock. Wrong id: Aborted; none: FailedPrecondition."""
        ref = await self._by_id(ref)
        req = pb.RefreshLockRequest(
            ref=ref_to_pb(ref),
            lock=lock_to_pb(self._lock(lock_id, kind, app_name, expiration)),
            existing_lock_id=existing_lock_id or "",
        )
        await self.gw.call("RefreshLock", req, op="refreshlock", path=str(ref))

    async def unlock(
        self, ref: Ref, lock_id: str, *, kind: LockKind = LockKind.WRITE, app_name: str = APP_NAME
    ) -> None:
        """Release our lock. Not locked → Aborted; someone else's id → Locked (as Reva answers)."""
        ref = await self._by_id(ref)
        req = pb.UnlockRequest(ref=ref_to_pb(ref), lock=lock_to_pb(self._lock(lock_id, kind, app_name, None)))
        await self.gw.call("Unlock", req, op="unlock", path=str(ref))

    # -- spaces and trash -------------------------------------------------------------------------

    async def list_spaces(self, kind: str | None = None) -> list[Space]:
        """Storage spaces visible to the user ("personal", "project", ...), optionally of one kind."""
        req = spaces_pb.ListStorageSpacesRequest()
        if kind:
            f = req.filters.add()
            f.type = spaces_pb.ListStorageSpacesRequest.Filter.TYPE_SPACE_TYPE
            f.space_type = kind
        res = await self.gw.call("ListStorageSpaces", req, op="spaces")
        return [space_from_pb(sp) for sp in res.storage_spaces]

    async def list_recycle(self, ref: Ref) -> list[RecycleItem]:
        """Trash entries of the space holding `ref` (give the space root)."""
        res = await self.gw.call(
            "ListRecycle", pb.ListRecycleRequest(ref=ref_to_pb(ref)), op="listrecycle", path=str(ref)
        )
        return [recycle_from_pb(it) for it in res.recycle_items]

    async def restore_recycle_item(
        self, space_root: Ref, item: RecycleItem, *, restore_to: Ref | None = None
    ) -> None:
        """Restore a trash entry of the space rooted at `space_root` (an id reference), by default to
        its original path (Reva needs the target spelled out: without it, INVALID_ARGUMENT)."""
        if restore_to is None:
            if space_root.resource_id is None:
                raise InvalidArgument("restore needs the space root as an id reference", op="restore")
            restore_to = Ref(space_root.resource_id, "." + item.path)
        req = pb.RestoreRecycleItemRequest(ref=ref_to_pb(space_root), key=item.key)
        req.restore_ref.CopyFrom(ref_to_pb(restore_to))
        await self.gw.call("RestoreRecycleItem", req, op="restore", path=item.path, idempotent=False)


__all__ = ["APP_NAME", "Storage", "mtime_value"]
