"""A scriptable lock-holding child process for tests/locks: one command per stdin line, one JSON answer line.

Owns nothing of meshfs (standard library only; it runs as its own process, so each instance is a
separate POSIX lock owner). Commands (fd NAMEs are free-form labels):
  open NAME PATH r|w|rw|wt   -> {"ok": true}            (wt = O_WRONLY|O_TRUNC; w/rw create)
  close NAME | dup NAME NEW  -> {"ok": true}
  flock NAME ex|sh|un nb|wait        (libc flock: a signal makes it return EINTR instead of retrying)
  lk NAME r|w|u START LEN nb|wait    (fcntl F_SETLK / F_SETLKW)
  ofd NAME r|w|u START LEN nb|wait   (fcntl F_OFD_SETLK / F_OFD_SETLKW)
  getlk NAME r|w START LEN   -> {"ok": true, "type": "r|w|u", "start": S, "len": L, "pid": P}
  write NAME TEXT (the rest of the line, no newline) | fsync NAME | read NAME
  pid                        -> {"ok": true, "pid": P}
Every failure answers {"ok": false, "errno": "EAGAIN", ...}. SIGINT only interrupts a blocking call.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import signal
import struct
import sys

LIBC = ctypes.CDLL(None, use_errno=True)
FLOCK_STRUCT = struct.Struct("hh4xqqi4x")  # struct flock on x86_64 / aarch64 Linux
TYPES = {"r": fcntl.F_RDLCK, "w": fcntl.F_WRLCK, "u": fcntl.F_UNLCK}
NAMES = {v: k for k, v in TYPES.items()}
OPEN_MODES = {
    "r": os.O_RDONLY,
    "w": os.O_WRONLY | os.O_CREAT,
    "rw": os.O_RDWR | os.O_CREAT,
    "wt": os.O_WRONLY | os.O_TRUNC,
}
F_OFD_SETLK, F_OFD_SETLKW = 37, 38  # <fcntl.h> on Linux
FLOCK_OPS = {"ex": fcntl.LOCK_EX, "sh": fcntl.LOCK_SH, "un": fcntl.LOCK_UN}


class Failed(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _check(rc: int) -> int:
    if rc == -1:
        raise Failed(ctypes.get_errno())
    return rc


def _fcntl_lock(fd: int, cmd: int, type_: int, start: int, length: int) -> bytes:
    buf = ctypes.create_string_buffer(
        FLOCK_STRUCT.pack(type_, os.SEEK_SET, start, length, 0), FLOCK_STRUCT.size
    )
    _check(LIBC.fcntl(fd, cmd, buf))
    return buf.raw


def run(cmd: list[str], fds: dict[str, int]) -> dict[str, object]:
    op = cmd[0]
    if op == "pid":
        return {"pid": os.getpid()}
    if op == "open":
        fds[cmd[1]] = os.open(cmd[2], OPEN_MODES[cmd[3]], 0o644)
        return {}
    if op == "close":
        os.close(fds.pop(cmd[1]))
        return {}
    if op == "dup":
        fds[cmd[2]] = os.dup(fds[cmd[1]])
        return {}
    fd = fds[cmd[1]]
    if op == "flock":
        how = FLOCK_OPS[cmd[2]] | (fcntl.LOCK_NB if cmd[3] == "nb" else 0)
        _check(LIBC.flock(fd, how))
        return {}
    if op == "lk":
        setcmd = fcntl.F_SETLK if cmd[5] == "nb" else fcntl.F_SETLKW
        _fcntl_lock(fd, setcmd, TYPES[cmd[2]], int(cmd[3]), int(cmd[4]))
        return {}
    if op == "ofd":  # open-file-description locks: owned by the open file, not the process
        setcmd = F_OFD_SETLK if cmd[5] == "nb" else F_OFD_SETLKW
        _fcntl_lock(fd, setcmd, TYPES[cmd[2]], int(cmd[3]), int(cmd[4]))
        return {}
    if op == "getlk":
        raw = _fcntl_lock(fd, fcntl.F_GETLK, TYPES[cmd[2]], int(cmd[3]), int(cmd[4]))
        type_, _whence, start, length, pid = FLOCK_STRUCT.unpack(raw)
        return {"type": NAMES[type_], "start": start, "len": length, "pid": pid}
    if op == "write":
        return {"n": os.write(fd, " ".join(cmd[2:]).encode())}
    if op == "fsync":
        os.fsync(fd)
        return {}
    if op == "read":
        os.lseek(fd, 0, os.SEEK_SET)
        return {"data": os.read(fd, 1 << 20).decode(errors="replace")}
    raise ValueError(f"unknown command {op!r}")


def main() -> None:
    # a handler that returns: blocking libc calls end with EINTR (Python sets SA_RESTART off)
    signal.signal(signal.SIGINT, lambda signum, frame: None)
    fds: dict[str, int] = {}
    print(json.dumps({"ok": True, "pid": os.getpid()}), flush=True)
    for line in sys.stdin:
        cmd = line.rstrip("\n").split(" ")
        if not cmd or not cmd[0]:
            continue
        if cmd[0] == "quit":
            break
        try:
            answer: dict[str, object] = {"ok": True, **run(cmd, fds)}
        except Failed as e:
            answer = {"ok": False, "errno": errno.errorcode.get(e.code, str(e.code))}
        except OSError as e:
            answer = {"ok": False, "errno": errno.errorcode.get(e.errno or 0, str(e.errno)), "msg": str(e)}
        except (KeyError, ValueError, IndexError) as e:  # a scripting mistake of the test: say so
            answer = {"ok": False, "errno": "BADCMD", "msg": repr(e)}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
