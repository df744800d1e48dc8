"""A scriptable child process for the lock tests: one command per stdin line, one answer line.

Commands: `open NAME PATH`, `close NAME`, `lk NAME r|w|u START LEN WAIT` (fcntl F_SETLK/F_SETLKW),
`getlk NAME r|w START LEN`, `flock NAME sh|ex|un WAIT`, `pid`. Answers: `ok`, `err ERRNONAME`,
`getlk TYPE START END PID`, the pid. SIGUSR1 interrupts a blocking call (answer `err EINTR`).
Imports only the standard library (it runs as a separate process).
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import struct
import sys

FLOCK = struct.Struct("hh4xqqi4x")  # struct flock on x86_64 / aarch64 Linux
TYPES = {"r": fcntl.F_RDLCK, "w": fcntl.F_WRLCK, "u": fcntl.F_UNLCK}


class Interrupted(Exception):
    pass


def on_signal(signum: int, frame: object) -> None:
    raise Interrupted()


def run(cmd: list[str], fds: dict[str, int]) -> str:
    op = cmd[0]
    if op == "pid":
        return str(os.getpid())
    if op == "open":
        fds[cmd[1]] = os.open(cmd[2], os.O_RDWR | os.O_CREAT, 0o644)
        return "ok"
    if op == "close":
        os.close(fds.pop(cmd[1]))
        return "ok"
    fd = fds[cmd[1]]
    if op == "lk":
        arg = FLOCK.pack(TYPES[cmd[2]], os.SEEK_SET, int(cmd[3]), int(cmd[4]), 0)
        fcntl.fcntl(fd, fcntl.F_SETLKW if cmd[5] == "1" else fcntl.F_SETLK, arg)
        return "ok"
    if op == "getlk":
        arg = FLOCK.pack(TYPES[cmd[2]], os.SEEK_SET, int(cmd[3]), int(cmd[4]), 0)
        typ, _whence, start, length, pid = FLOCK.unpack(fcntl.fcntl(fd, fcntl.F_GETLK, arg))
        return f"getlk {typ} {start} {length} {pid}"
    if op == "flock":
        how = {"sh": fcntl.LOCK_SH, "ex": fcntl.LOCK_EX, "un": fcntl.LOCK_UN}[cmd[2]]
        fcntl.flock(fd, how if cmd[3] == "1" else how | fcntl.LOCK_NB)
        return "ok"
    return f"bad command {op}"


def main() -> None:
    signal.signal(signal.SIGUSR1, on_signal)
    fds: dict[str, int] = {}
    for line in sys.stdin:
        try:
            answer = run(line.split(), fds)
        except Interrupted:
            answer = "err EINTR"
        except OSError as e:
            answer = f"err {errno.errorcode.get(e.errno or 0, e.errno)}"
        print(answer, flush=True)


if __name__ == "__main__":
    main()
