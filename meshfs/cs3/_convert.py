"""Conversions between cs3apis protobuf messages and the plain values of meshfs/cs3/types.py.

Owns: every proto <-> dataclass translation (one place to fix when the wire format moves).
Must not import: vfs/, fuse/, cache/, grpc. Internal to meshfs/cs3/.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from cs3.identity.user.v1beta1 import resources_pb2 as user_pb
from cs3.storage.provider.v1beta1 import resources_pb2 as res_pb
from cs3.types.v1beta1 import types_pb2

from .types import (
    Checksum,
    Kind,
    Lock,
    LockKind,
    Perm,
    Quota,
    RecycleItem,
    Ref,
    Resource,
    ResourceId,
    Role,
    ShareState,
    Space,
    User,
    UserId,
)

_KINDS = {
    res_pb.RESOURCE_TYPE_FILE: Kind.FILE,
    res_pb.RESOURCE_TYPE_CONTAINER: Kind.DIR,
    res_pb.RESOURCE_TYPE_SYMLINK: Kind.SYMLINK,
    res_pb.RESOURCE_TYPE_REFERENCE: Kind.REFERENCE,
}
_LOCK_KINDS = {
    res_pb.LOCK_TYPE_SHARED: LockKind.SHARED,
    res_pb.LOCK_TYPE_WRITE: LockKind.WRITE,
    res_pb.LOCK_TYPE_EXCL: LockKind.EXCL,
}
_LOCK_TYPES = {v: k for k, v in _LOCK_KINDS.items()}
_CHECKSUMS = {
    res_pb.RESOURCE_CHECKSUM_TYPE_ADLER32: "adler32",
    res_pb.RESOURCE_CHECKSUM_TYPE_MD5: "md5",
    res_pb.RESOURCE_CHECKSUM_TYPE_SHA1: "sha1",
}

# ResourcePermissions field name -> Perm flag
PERM_FIELDS: Mapping[str, Perm] = MappingProxyType(
    {
        "stat": Perm.STAT,
        "get_path": Perm.GET_PATH,
        "get_quota": Perm.GET_QUOTA,
        "list_container": Perm.LIST,
        "initiate_file_download": Perm.DOWNLOAD,
        "initiate_file_upload": Perm.UPLOAD,
        "create_container": Perm.CREATE_CONTAINER,
        "delete": Perm.DELETE,
        "move": Perm.MOVE,
        "list_recycle": Perm.LIST_RECYCLE,
        "restore_recycle_item": Perm.RESTORE_RECYCLE_ITEM,
        "purge_recycle": Perm.PURGE_RECYCLE,
        "list_file_versions": Perm.LIST_VERSIONS,
        "restore_file_version": Perm.RESTORE_VERSION,
        "add_grant": Perm.ADD_GRANT,
        "list_grants": Perm.LIST_GRANTS,
        "update_grant": Perm.UPDATE_GRANT,
        "remove_grant": Perm.REMOVE_GRANT,
        "deny_grant": Perm.DENY_GRANT,
    }
)

# Reva's share roles (pkg/conversions/role.go): viewer, and the editor sets for files and folders.
VIEWER_PERMS = Perm.STAT | Perm.GET_PATH | Perm.GET_QUOTA | Perm.LIST | Perm.LIST_RECYCLE | Perm.DOWNLOAD
FILE_EDITOR_PERMS = VIEWER_PERMS | Perm.UPLOAD | Perm.RESTORE_RECYCLE_ITEM
FOLDER_EDITOR_PERMS = (
    VIEWER_PERMS | Perm.CREATE_CONTAINER | Perm.DELETE | Perm.UPLOAD | Perm.MOVE | Perm.RESTORE_RECYCLE_ITEM
)


def role_perms(role: Role, *, is_dir: bool) -> Perm:
    if role is Role.VIEWER:
        return VIEWER_PERMS
    return FOLDER_EDITOR_PERMS if is_dir else FILE_EDITOR_PERMS


def role_of(perms: Perm) -> Role | None:
    """The meshfs role a permission set amounts to (editor if it can upload, viewer if it can read)."""
    if Perm.UPLOAD in perms:
        return Role.EDITOR
    if VIEWER_PERMS & perms and Perm.DOWNLOAD in perms:
        return Role.VIEWER
    return None


def perms_from_pb(p: Any) -> Perm:
    out = Perm.NONE
    for name, flag in PERM_FIELDS.items():
        if getattr(p, name):
            out |= flag
    return out


def perms_to_pb(perms: Perm) -> Any:
    return res_pb.ResourcePermissions(**{name: True for name, flag in PERM_FIELDS.items() if flag in perms})


def ts_ns(ts: Any) -> int:
    return int(ts.seconds) * 1_000_000_000 + int(ts.nanos)


def ts_from_ns(ns: int) -> Any:
    return types_pb2.Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


def rid_from_pb(r: Any) -> ResourceId:
    return ResourceId(r.storage_id, r.space_id, r.opaque_id)


def rid_to_pb(r: ResourceId) -> Any:
    return res_pb.ResourceId(storage_id=r.storage_id, space_id=r.space_id, opaque_id=r.opaque_id)


def ref_to_pb(ref: Ref) -> Any:
    if ref.resource_id is None:
        return res_pb.Reference(path=ref.path)
    return res_pb.Reference(resource_id=rid_to_pb(ref.resource_id), path=ref.path)


def uid_from_pb(u: Any) -> UserId:
    return UserId(u.idp, u.opaque_id, user_pb.UserType.Name(u.type))


def uid_to_pb(u: UserId) -> Any:
    try:
        t = user_pb.UserType.Value(u.type)
    except ValueError:
        t = user_pb.USER_TYPE_PRIMARY
    return user_pb.UserId(idp=u.idp, opaque_id=u.opaque_id, type=t)


def user_from_pb(u: Any) -> User:
    return User(uid_from_pb(u.id), u.username, u.display_name, u.mail)


def lock_from_pb(lk: Any) -> Lock | None:
    if not lk.lock_id:
        return None
    exp = lk.expiration.seconds + lk.expiration.nanos / 1e9 if lk.HasField("expiration") else None
    return Lock(
        lk.lock_id,
        _LOCK_KINDS.get(lk.type, LockKind.WRITE),
        uid_from_pb(lk.user) if lk.HasField("user") and lk.user.opaque_id else None,
        lk.app_name,
        exp or None,
    )


def lock_to_pb(lock: Lock) -> Any:
    msg = res_pb.Lock(lock_id=lock.lock_id, type=_LOCK_TYPES[lock.kind], app_name=lock.app_name)
    if lock.user is not None:
        msg.user.CopyFrom(uid_to_pb(lock.user))
    if lock.expiration is not None:
        msg.expiration.CopyFrom(ts_from_ns(int(lock.expiration * 1e9)))
    return msg


def resource_from_pb(ri: Any) -> Resource:
    md = dict(ri.arbitrary_metadata.metadata) if ri.HasField("arbitrary_metadata") else {}
    checksum = None
    if ri.HasField("checksum") and ri.checksum.sum:
        checksum = Checksum(_CHECKSUMS.get(ri.checksum.type, "unknown"), ri.checksum.sum)
    rid = rid_from_pb(ri.id)
    return Resource(
        id=rid,
        parent_id=rid_from_pb(ri.parent_id) if ri.HasField("parent_id") and ri.parent_id.opaque_id else None,
        name=ri.name or ri.path.rstrip("/").rpartition("/")[2],
        path=ri.path,
        kind=_KINDS.get(ri.type, Kind.OTHER),
        size=int(ri.size),
        mtime_ns=ts_ns(ri.mtime),
        etag=ri.etag,
        mime=ri.mime_type,
        permissions=perms_from_pb(ri.permission_set),
        lock=lock_from_pb(ri.lock) if ri.HasField("lock") else None,
        metadata=MappingProxyType(md),
        checksum=checksum,
        owner=uid_from_pb(ri.owner) if ri.HasField("owner") and ri.owner.opaque_id else None,
        space_id=rid.space_id,
        target=ri.target,
    )


def space_from_pb(sp: Any) -> Space:
    quota = None
    if sp.HasField("quota") and (sp.quota.quota_max_bytes or sp.quota.remaining_bytes):
        total = int(sp.quota.quota_max_bytes)
        quota = Quota(total, max(0, total - int(sp.quota.remaining_bytes)))
    return Space(
        id=sp.id.opaque_id,
        root=rid_from_pb(sp.root),
        name=sp.name,
        kind=sp.space_type,
        owner=uid_from_pb(sp.owner.id) if sp.HasField("owner") and sp.owner.id.opaque_id else None,
        mtime_ns=ts_ns(sp.mtime),
        quota=quota,
    )


def recycle_from_pb(it: Any) -> RecycleItem:
    return RecycleItem(
        key=it.key,
        path=it.ref.path,
        kind=_KINDS.get(it.type, Kind.OTHER),
        size=int(it.size),
        deletion_time_ns=ts_ns(it.deletion_time),
    )


def state_from_name(name: str) -> ShareState:
    short = name.rpartition("_")[2].lower()
    try:
        return ShareState(short)
    except ValueError:
        return ShareState.INVALID


def opaque(entries: Mapping[str, str]) -> Any:
    """An Opaque map of plain (decimal/text) values."""
    msg = types_pb2.Opaque()
    for key, value in entries.items():
        msg.map[key].CopyFrom(types_pb2.OpaqueEntry(decoder="plain", value=value.encode()))
    return msg
