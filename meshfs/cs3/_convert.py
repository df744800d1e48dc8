"""Conversions between cs3apis protobuf messages and the plain values of meshfs/cs3/types.py.

Owns: every proto <-> dataclass translation (one place to fix when the wire format moves).
Must not import: vfs/, fuse/, cache/, grpc. Internal to meshfs/cs3/.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

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


_PERM_FIELDS = tuple(PERM_FIELDS.items())
T = TypeVar("T")


def _memoised(memo: dict[bytes, T], msg: Any, make: Callable[[Any], T], limit: int) -> T:
    """make(msg), memoised by the message's wire bytes in `memo` (emptied when it reaches `limit`):
    values that repeat across a listing (permission sets, the parent's id, the owner) are converted
    once instead of once per entry."""
    key = msg.SerializeToString(deterministic=True)
    value = memo.get(key)
    if value is None:
        if len(memo) >= limit:
            memo.clear()
        value = memo[key] = make(msg)
    return value


def _perms(p: Any) -> Perm:
    bits = 0
    for name, flag in _PERM_FIELDS:
        if getattr(p, name):
            bits |= flag.value
    return Perm(bits)


# a listing holds few distinct permission sets (one serialisation per entry instead of 19 Flag ORs)
_PERM_MEMO: dict[bytes, Perm] = {}


def perms_from_pb(p: Any) -> Perm:
    return _memoised(_PERM_MEMO, p, _perms, 256)


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


_EMPTY_MD: Mapping[str, str] = MappingProxyType({})
_RID_MEMO: dict[bytes, ResourceId] = {}
_UID_MEMO: dict[bytes, UserId] = {}
_MEMO_MAX = 1024


def _memo_rid(msg: Any) -> ResourceId:
    return _memoised(_RID_MEMO, msg, lambda m: ResourceId(m.storage_id, m.space_id, m.opaque_id), _MEMO_MAX)


def _memo_uid(msg: Any) -> UserId:
    return _memoised(_UID_MEMO, msg, uid_from_pb, _MEMO_MAX)


def resource_from_pb(ri: Any) -> Resource:
    """One ResourceInfo. Hot: a listing converts thousands of them, so it avoids repeated work."""
    has = ri.HasField
    md: Mapping[str, str] = _EMPTY_MD
    if has("arbitrary_metadata"):
        raw = ri.arbitrary_metadata.metadata
        if len(raw):
            md = MappingProxyType(dict(raw))
    checksum = None
    if has("checksum"):
        ck = ri.checksum
        if ck.sum:
            checksum = Checksum(_CHECKSUMS.get(ck.type, "unknown"), ck.sum)
    i = ri.id
    rid = ResourceId(i.storage_id, i.space_id, i.opaque_id)
    parent_id = None
    if has("parent_id"):
        p = ri.parent_id
        if p.opaque_id:
            parent_id = _memo_rid(p)
    owner = None
    if has("owner"):
        o = ri.owner
        if o.opaque_id:
            owner = _memo_uid(o)
    mt = ri.mtime
    return Resource(
        rid,
        parent_id,
        ri.name or ri.path.rstrip("/").rpartition("/")[2],
        ri.path,
        _KINDS.get(ri.type, Kind.OTHER),
        ri.size,
        mt.seconds * 1_000_000_000 + mt.nanos,
        ri.etag,
        ri.mime_type,
        perms_from_pb(ri.permission_set),
        lock_from_pb(ri.lock) if has("lock") else None,
        md,
        checksum,
        owner,
        rid.space_id,
        ri.target,
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
