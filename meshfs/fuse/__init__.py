"""meshfs.fuse: the Linux FUSE kernel protocol in pure Python on trio (no libfuse).

A self-contained library: imports nothing else from meshfs and knows nothing of CS3.
Public API: `Operations` and its value types (operations.py), `Session` / `MountOptions` /
`MountError` (session.py). Read those module docstrings to write a filesystem.
"""

from .operations import (
    F_RDLCK,
    F_UNLCK,
    F_WRLCK,
    LOCK_END_EOF,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    ROOT_INODE,
    EntryAttributes,
    FileInfo,
    FUSEError,
    Lock,
    Operations,
    ReaddirToken,
    RequestContext,
    SetattrFields,
    StatvfsData,
    WritePayload,
    readdir_reply,
)
from .session import ConnectionInfo, MountError, MountOptions, Session, lazy_unmount

__all__ = [
    "F_RDLCK",
    "F_UNLCK",
    "F_WRLCK",
    "LOCK_END_EOF",
    "RENAME_EXCHANGE",
    "RENAME_NOREPLACE",
    "ROOT_INODE",
    "ConnectionInfo",
    "EntryAttributes",
    "FUSEError",
    "FileInfo",
    "Lock",
    "MountError",
    "MountOptions",
    "Operations",
    "ReaddirToken",
    "RequestContext",
    "Session",
    "SetattrFields",
    "StatvfsData",
    "WritePayload",
    "lazy_unmount",
    "readdir_reply",
]
