"""CS3 sharing calls: shares by me, shares with me (accept/decline), create/remove, FindUsers, OCM.

Owns: the collaboration, user-lookup and OCM-received parts of GatewayAPI, as plain values.
Must not import: vfs/, fuse/, cache/. Protobuf stays inside meshfs/cs3/.
"""

from __future__ import annotations

from typing import Any

from cs3.identity.user.v1beta1 import user_api_pb2 as user_api
from cs3.sharing.collaboration.v1beta1 import collaboration_api_pb2 as collab_api
from cs3.sharing.collaboration.v1beta1 import resources_pb2 as collab_pb
from cs3.sharing.ocm.v1beta1 import ocm_api_pb2 as ocm_api
from cs3.sharing.ocm.v1beta1 import resources_pb2 as ocm_pb
from cs3.storage.provider.v1beta1 import provider_api_pb2 as prov_pb
from cs3.storage.provider.v1beta1 import resources_pb2 as res_pb

from meshfs.errors import InvalidArgument, NotSupported

from ._convert import (
    perms_from_pb,
    perms_to_pb,
    ref_to_pb,
    rid_from_pb,
    rid_to_pb,
    role_of,
    role_perms,
    state_from_name,
    ts_ns,
    uid_from_pb,
    uid_to_pb,
    user_from_pb,
)
from .gateway import Gateway
from .types import (
    Kind,
    OcmReceivedShare,
    ReceivedShare,
    Ref,
    ResourceId,
    Role,
    Share,
    ShareState,
    User,
    UserId,
)

_STATES = {
    ShareState.PENDING: collab_pb.SHARE_STATE_PENDING,
    ShareState.ACCEPTED: collab_pb.SHARE_STATE_ACCEPTED,
    ShareState.REJECTED: collab_pb.SHARE_STATE_REJECTED,
}


def _uid_or_none(msg: Any, field: str) -> UserId | None:
    if not msg.HasField(field):
        return None
    u = getattr(msg, field)
    return uid_from_pb(u) if u.opaque_id else None


def share_from_pb(s: Any) -> Share:
    perms = perms_from_pb(s.permissions.permissions)
    grantee = s.grantee
    return Share(
        id=s.id.opaque_id,
        resource_id=rid_from_pb(s.resource_id),
        grantee=uid_from_pb(grantee.user_id) if grantee.HasField("user_id") else None,
        role=role_of(perms),
        permissions=perms,
        owner=_uid_or_none(s, "owner"),
        creator=_uid_or_none(s, "creator"),
        ctime_ns=ts_ns(s.ctime),
        mtime_ns=ts_ns(s.mtime),
        grantee_group=grantee.group_id.opaque_id if grantee.HasField("group_id") else "",
    )


def received_from_pb(rs: Any) -> ReceivedShare:
    s = rs.share
    perms = perms_from_pb(s.permissions.permissions)
    return ReceivedShare(
        id=s.id.opaque_id,
        resource_id=rid_from_pb(s.resource_id),
        state=state_from_name(collab_pb.ShareState.Name(rs.state)),
        mount_point=rs.mount_point.path.rstrip("/").rpartition("/")[2] if rs.HasField("mount_point") else "",
        sharer=_uid_or_none(s, "owner"),
        creator=_uid_or_none(s, "creator"),
        role=role_of(perms),
        permissions=perms,
        mtime_ns=ts_ns(s.mtime),
        hidden=rs.hidden,
    )


_OCM_STATES = {
    ShareState.PENDING: ocm_pb.SHARE_STATE_PENDING,
    ShareState.ACCEPTED: ocm_pb.SHARE_STATE_ACCEPTED,
    ShareState.REJECTED: ocm_pb.SHARE_STATE_REJECTED,
}


class Shares:
    """Shares by and with the current user, and user lookup."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    async def list_shares(self, resource_id: ResourceId | None = None) -> list[Share]:
        """Shares created by the current user (optionally only those of one resource)."""
        req = collab_api.ListSharesRequest()
        if resource_id is not None:
            f = req.filters.add()
            f.type = collab_pb.Filter.TYPE_RESOURCE_ID
            f.resource_id.CopyFrom(rid_to_pb(resource_id))
        res = await self.gw.call("ListShares", req, op="listshares")
        return [share_from_pb(s) for s in res.shares]

    async def list_received_shares(self, state: ShareState | None = None) -> list[ReceivedShare]:
        """Shares granted to the current user, all states unless `state` is given.

        The state is filtered here: Reva's `memory` share manager ignores a TYPE_STATE filter
        (answers nothing)."""
        req = collab_api.ListReceivedSharesRequest()
        res = await self.gw.call("ListReceivedShares", req, op="listreceived")
        shares = [received_from_pb(rs) for rs in res.shares]
        return shares if state is None else [r for r in shares if r.state is state]

    async def update_received_share(
        self, share_id: str, state: ShareState, *, mount_point: str | None = None
    ) -> ReceivedShare:
        """Accept (ACCEPTED) or decline (REJECTED) a received share; optionally set its mount point name."""
        if state not in _STATES:
            raise InvalidArgument(f"cannot set a share to {state.value}", op="updateshare", path=share_id)
        rs = collab_pb.ReceivedShare(
            share=collab_pb.Share(id=collab_pb.ShareId(opaque_id=share_id)), state=_STATES[state]
        )
        paths = ["state"]
        if mount_point is not None:
            rs.mount_point.CopyFrom(res_pb.Reference(path=mount_point))
            paths.append("mount_point")
        req = collab_api.UpdateReceivedShareRequest(share=rs)
        req.update_mask.paths.extend(paths)
        res = await self.gw.call("UpdateReceivedShare", req, op="updateshare", path=share_id)
        return received_from_pb(res.share)

    async def accept(self, share_id: str) -> ReceivedShare:
        return await self.update_received_share(share_id, ShareState.ACCEPTED)

    async def decline(self, share_id: str) -> ReceivedShare:
        return await self.update_received_share(share_id, ShareState.REJECTED)

    async def create_share(self, ref: Ref, grantee: UserId, role: Role) -> Share:
        """Share a file or folder with a user as viewer or editor (file vs folder editor set chosen here)."""
        stat = await self.gw.call("Stat", prov_pb.StatRequest(ref=ref_to_pb(ref)), op="share", path=str(ref))
        info = stat.info
        is_dir = info.type == res_pb.RESOURCE_TYPE_CONTAINER
        grant = collab_pb.ShareGrant(
            grantee=res_pb.Grantee(type=res_pb.GRANTEE_TYPE_USER, user_id=uid_to_pb(grantee)),
            permissions=collab_pb.SharePermissions(permissions=perms_to_pb(role_perms(role, is_dir=is_dir))),
        )
        req = collab_api.CreateShareRequest(resource_info=info, grant=grant)
        res = await self.gw.call("CreateShare", req, op="share", path=str(ref), idempotent=False)
        return share_from_pb(res.share)

    async def remove_share(self, share_id: str) -> None:
        req = collab_api.RemoveShareRequest(
            ref=collab_pb.ShareReference(id=collab_pb.ShareId(opaque_id=share_id))
        )
        await self.gw.call("RemoveShare", req, op="unshare", path=share_id, idempotent=False)

    async def find_users(self, query: str) -> list[User]:
        """Users whose username, display name, mail or id contains `query` (case-insensitive)."""
        f = user_api.Filter(type=user_api.Filter.TYPE_QUERY, query=query)
        req = user_api.FindUsersRequest(filters=[f], skip_fetching_user_groups=True)
        res = await self.gw.call("FindUsers", req, op="findusers", path=query)
        return [user_from_pb(u) for u in res.users]

    async def update_received_ocm_share(self, share_id: str, state: ShareState) -> None:
        """Accept (ACCEPTED) or decline (REJECTED) a federated share received from another site."""
        if state not in _OCM_STATES:
            raise InvalidArgument(f"cannot set a share to {state.value}", op="updateocmshare", path=share_id)
        rs = ocm_pb.ReceivedShare(id=ocm_pb.ShareId(opaque_id=share_id), state=_OCM_STATES[state])
        req = ocm_api.UpdateReceivedOCMShareRequest(share=rs)
        req.update_mask.paths.append("state")
        await self.gw.call("UpdateReceivedOCMShare", req, op="updateocmshare", path=share_id)

    async def list_received_ocm_shares(self) -> list[OcmReceivedShare]:
        """Federated shares from other sites granted to the current user (empty without OCM)."""
        req = ocm_api.ListReceivedOCMSharesRequest()
        try:
            res = await self.gw.call("ListReceivedOCMShares", req, op="listocm")
        except NotSupported:
            return []  # no OCM share provider on this server ("unknown service ...OcmAPI")
        out = []
        for s in res.shares:
            out.append(
                OcmReceivedShare(
                    id=s.id.opaque_id,
                    name=s.name,
                    state=state_from_name(ocm_pb.ShareState.Name(s.state)),
                    owner=_uid_or_none(s, "owner"),
                    creator=_uid_or_none(s, "creator"),
                    resource_type=Kind.DIR
                    if s.resource_type == res_pb.RESOURCE_TYPE_CONTAINER
                    else Kind.FILE,
                    remote_share_id=s.remote_share_id,
                    mtime_ns=ts_ns(s.mtime),
                )
            )
        return out
