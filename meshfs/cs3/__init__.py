"""The CS3 client layer: the only package that imports grpc, cs3apis or urllib3.

Owns: talking to a CS3 gateway (gateway.py), storage metadata calls (storage.py), sharing calls
(shares.py) and data transfers (transfer.py); callers get the plain values of types.py and the
MeshError classes of meshfs/errors.py — never a protobuf message.
Must not import: vfs/, fuse/, cache/.

Typical use:
    async with Gateway("127.0.0.1:19000", BasicCredentials("einstein", Secret.from_file(p))) as gw:
        storage, shares, transfer = Storage(gw), Shares(gw), Transfer(gw)
        home = await storage.get_home()
"""

from .gateway import Gateway
from .shares import Shares
from .storage import APP_NAME, Storage, mtime_value
from .transfer import Transfer
from .types import (
    BasicCredentials,
    BearerCredentials,
    Checksum,
    Credentials,
    DownloadTicket,
    Kind,
    Lock,
    LockKind,
    OcmReceivedShare,
    Perm,
    Quota,
    ReceivedShare,
    RecycleItem,
    Ref,
    Resource,
    ResourceId,
    Role,
    Secret,
    Share,
    ShareState,
    Space,
    TusSession,
    UploadResult,
    User,
    UserId,
)

__all__ = [
    "APP_NAME",
    "BasicCredentials",
    "BearerCredentials",
    "Checksum",
    "Credentials",
    "DownloadTicket",
    "Gateway",
    "Kind",
    "Lock",
    "LockKind",
    "OcmReceivedShare",
    "Perm",
    "Quota",
    "ReceivedShare",
    "RecycleItem",
    "Ref",
    "Resource",
    "ResourceId",
    "Role",
    "Secret",
    "Share",
    "ShareState",
    "Shares",
    "Space",
    "Storage",
    "Transfer",
    "TusSession",
    "UploadResult",
    "User",
    "UserId",
    "mtime_value",
]
