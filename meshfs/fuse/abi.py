"""Struct layouts and constants of the Linux FUSE kernel ABI (<linux/fuse.h>, protocol 7.x).

Owns: opcodes, INIT flags, request/reply struct formats (precompiled `struct.Struct`, little
endian, 64-bit aligned exactly as in the header), notification codes.
Must not import: anything from meshfs, nor trio (pure data).
"""

from __future__ import annotations

import struct
from typing import Final

KERNEL_VERSION: Final = 7
#: The newest minor whose structures this module knows (the header on the build machine).
#: We answer INIT with min(kernel minor, SUPPORTED_MINOR) and refuse kernels older than MIN_MINOR.
SUPPORTED_MINOR: Final = 40
MIN_MINOR: Final = 31

# ---------------------------------------------------------------- opcodes
LOOKUP: Final = 1
FORGET: Final = 2
GETATTR: Final = 3
SETATTR: Final = 4
READLINK: Final = 5
SYMLINK: Final = 6
MKNOD: Final = 8
MKDIR: Final = 9
UNLINK: Final = 10
RMDIR: Final = 11
RENAME: Final = 12
LINK: Final = 13
OPEN: Final = 14
READ: Final = 15
WRITE: Final = 16
STATFS: Final = 17
RELEASE: Final = 18
FSYNC: Final = 20
SETXATTR: Final = 21
GETXATTR: Final = 22
LISTXATTR: Final = 23
REMOVEXATTR: Final = 24
FLUSH: Final = 25
INIT: Final = 26
OPENDIR: Final = 27
READDIR: Final = 28
RELEASEDIR: Final = 29
FSYNCDIR: Final = 30
GETLK: Final = 31
SETLK: Final = 32
SETLKW: Final = 33
ACCESS: Final = 34
CREATE: Final = 35
INTERRUPT: Final = 36
BMAP: Final = 37
DESTROY: Final = 38
IOCTL: Final = 39
POLL: Final = 40
NOTIFY_REPLY: Final = 41
BATCH_FORGET: Final = 42
FALLOCATE: Final = 43
READDIRPLUS: Final = 44
RENAME2: Final = 45
LSEEK: Final = 46
COPY_FILE_RANGE: Final = 47

#: opcode -> name, for logs
OPCODE_NAMES: Final[dict[int, str]] = {
    v: k for k, v in list(globals().items())
    if isinstance(v, int) and k.isupper() and k not in ("KERNEL_VERSION", "SUPPORTED_MINOR", "MIN_MINOR")
}

# ---------------------------------------------------------------- INIT flags
ASYNC_READ: Final = 1 << 0
POSIX_LOCKS: Final = 1 << 1
ATOMIC_O_TRUNC: Final = 1 << 3
EXPORT_SUPPORT: Final = 1 << 4
BIG_WRITES: Final = 1 << 5
DONT_MASK: Final = 1 << 6
FLOCK_LOCKS: Final = 1 << 10
AUTO_INVAL_DATA: Final = 1 << 12
DO_READDIRPLUS: Final = 1 << 13
READDIRPLUS_AUTO: Final = 1 << 14
ASYNC_DIO: Final = 1 << 15
WRITEBACK_CACHE: Final = 1 << 16
PARALLEL_DIROPS: Final = 1 << 18
HANDLE_KILLPRIV: Final = 1 << 19
ABORT_ERROR: Final = 1 << 21
MAX_PAGES: Final = 1 << 22
CACHE_SYMLINKS: Final = 1 << 23
EXPLICIT_INVAL_DATA: Final = 1 << 25
HANDLE_KILLPRIV_V2: Final = 1 << 28
INIT_EXT: Final = 1 << 30
#: flags2 (the upper 32 bits of the 64-bit flag word, sent only with INIT_EXT)
PASSTHROUGH: Final = 1 << 37

# ---------------------------------------------------------------- other flag words
FATTR_MODE: Final = 1 << 0
FATTR_UID: Final = 1 << 1
FATTR_GID: Final = 1 << 2
FATTR_SIZE: Final = 1 << 3
FATTR_ATIME: Final = 1 << 4
FATTR_MTIME: Final = 1 << 5
FATTR_FH: Final = 1 << 6
FATTR_ATIME_NOW: Final = 1 << 7
FATTR_MTIME_NOW: Final = 1 << 8
FATTR_LOCKOWNER: Final = 1 << 9
FATTR_CTIME: Final = 1 << 10
FATTR_KILL_SUIDGID: Final = 1 << 11

FOPEN_DIRECT_IO: Final = 1 << 0
FOPEN_KEEP_CACHE: Final = 1 << 1
FOPEN_NONSEEKABLE: Final = 1 << 2
FOPEN_NOFLUSH: Final = 1 << 5
FOPEN_PASSTHROUGH: Final = 1 << 7  # 7.40: reads/writes/mmap go to the backing file of open_out.backing_id

RELEASE_FLUSH: Final = 1 << 0
RELEASE_FLOCK_UNLOCK: Final = 1 << 1
GETATTR_FH: Final = 1 << 0
LK_FLOCK: Final = 1 << 0
FSYNC_FDATASYNC: Final = 1 << 0

NOTIFY_INVAL_INODE: Final = 2
NOTIFY_INVAL_ENTRY: Final = 3
NOTIFY_STORE: Final = 4
NOTIFY_DELETE: Final = 6

# ---------------------------------------------------------------- /dev/fuse ioctls (7.40)
#: struct fuse_backing_map {int32 fd; uint32 flags; uint64 padding}
BACKING_MAP: Final = struct.Struct("<iIQ")
#: _IOW(229, 1, struct fuse_backing_map): register an open file as a backing file, returns its id
DEV_IOC_BACKING_OPEN: Final = (1 << 30) | (BACKING_MAP.size << 16) | (229 << 8) | 1
#: _IOW(229, 2, uint32_t): drop a backing id (opens already using it keep their file)
DEV_IOC_BACKING_CLOSE: Final = (1 << 30) | (4 << 16) | (229 << 8) | 2
BACKING_CLOSE_ARG: Final = struct.Struct("<I")

# ---------------------------------------------------------------- structs
IN_HEADER: Final = struct.Struct("<IIQQIIIHH")  # len opcode unique nodeid uid gid pid extlen pad
OUT_HEADER: Final = struct.Struct("<IiQ")  # len error unique
INIT_IN: Final = struct.Struct("<IIII")  # major minor max_readahead flags (+ flags2 from 7.36)
INIT_IN_FLAGS2: Final = struct.Struct("<I")
#: major minor max_readahead flags max_background congestion_threshold max_write time_gran
#: max_pages map_alignment flags2 max_stack_depth (7.40) unused[6]
INIT_OUT: Final = struct.Struct("<IIIIHHIIHHII24x")
FORGET_IN: Final = struct.Struct("<Q")
FORGET_ONE: Final = struct.Struct("<QQ")
BATCH_FORGET_IN: Final = struct.Struct("<II")
GETATTR_IN: Final = struct.Struct("<IIQ")  # getattr_flags dummy fh
ATTR: Final = struct.Struct("<QQQQQQIIIIIIIIII")
ATTR_OUT_HEAD: Final = struct.Struct("<QII")  # attr_valid attr_valid_nsec dummy
#: valid padding fh size lock_owner atime mtime ctime atimensec mtimensec ctimensec mode unused4
#: uid gid unused5
SETATTR_IN: Final = struct.Struct("<IIQQQQQQIIIIIIII")
MKNOD_IN: Final = struct.Struct("<IIII")  # mode rdev umask padding
MKDIR_IN: Final = struct.Struct("<II")  # mode umask
RENAME_IN: Final = struct.Struct("<Q")
RENAME2_IN: Final = struct.Struct("<QII")  # newdir flags padding
LINK_IN: Final = struct.Struct("<Q")
OPEN_IN: Final = struct.Struct("<II")  # flags open_flags
CREATE_IN: Final = struct.Struct("<IIII")  # flags mode umask open_flags
OPEN_OUT: Final = struct.Struct("<QIi")  # fh open_flags backing_id (7.40; padding before)
RELEASE_IN: Final = struct.Struct("<QIIQ")  # fh flags release_flags lock_owner
FLUSH_IN: Final = struct.Struct("<QIIQ")  # fh unused padding lock_owner
READ_IN: Final = struct.Struct("<QQIIQII")  # fh offset size read_flags lock_owner flags padding
WRITE_IN: Final = struct.Struct("<QQIIQII")  # fh offset size write_flags lock_owner flags padding
WRITE_OUT: Final = struct.Struct("<II")
STATFS_OUT: Final = struct.Struct("<QQQQQIIII24x")  # blocks bfree bavail files ffree bsize namelen frsize
FSYNC_IN: Final = struct.Struct("<QII")
SETXATTR_IN: Final = struct.Struct("<II")  # size flags (SETXATTR_EXT not negotiated)
GETXATTR_IN: Final = struct.Struct("<II")  # size padding
GETXATTR_OUT: Final = struct.Struct("<II")
LK_IN: Final = struct.Struct("<QQQQIIII")  # fh owner start end type pid lk_flags padding
LK_OUT: Final = struct.Struct("<QQII")  # start end type pid
ACCESS_IN: Final = struct.Struct("<II")
INTERRUPT_IN: Final = struct.Struct("<Q")
FALLOCATE_IN: Final = struct.Struct("<QQQII")  # fh offset length mode padding
LSEEK_IN: Final = struct.Struct("<QQII")  # fh offset whence padding
LSEEK_OUT: Final = struct.Struct("<Q")
COPY_FILE_RANGE_IN: Final = struct.Struct("<QQQQQQQ")  # fh_in off_in nodeid_out fh_out off_out len flags
NOTIFY_INVAL_INODE_OUT: Final = struct.Struct("<Qqq")
NOTIFY_INVAL_ENTRY_OUT: Final = struct.Struct("<QII")  # parent namelen flags
NOTIFY_DELETE_OUT: Final = struct.Struct("<QQII")  # parent child namelen padding
NOTIFY_STORE_OUT: Final = struct.Struct("<QQII")  # nodeid offset size padding

assert IN_HEADER.size == 40 and OUT_HEADER.size == 16 and OPEN_OUT.size == 16
assert DEV_IOC_BACKING_OPEN == 0x4010E501 and DEV_IOC_BACKING_CLOSE == 0x4004E502
assert INIT_OUT.size == 64 and ATTR.size == 88 and SETATTR_IN.size == 88
assert STATFS_OUT.size == 80 and LK_IN.size == 48 and READ_IN.size == 40
