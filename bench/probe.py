"""I/O probes run in a child process (`python -m bench.probe CMD ...`), so a hung mount can be killed
by the harness's timeout instead of hanging it. Each prints one JSON object with its own timings.

Owns: time to first byte, small-file create/stat/unlink, the ROOT-like sparse read pattern.
Must not import: meshfs, anything outside the standard library.
"""

from __future__ import annotations

import json
import mmap
import os
import random
import sys
import time


def ttfb(path: str) -> dict[str, float]:
    """open(O_DIRECT) + read of 1 byte (4 KiB aligned where 1 byte is refused, e.g. local disk)."""
    t0 = time.perf_counter()
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        try:
            n = len(os.pread(fd, 1, 0))
        except OSError:
            buf = mmap.mmap(-1, 4096)
            n = os.preadv(fd, [buf], 0)
    finally:
        os.close(fd)
    dt = time.perf_counter() - t0
    if n < 1:
        raise SystemExit(f"probe ttfb: read returned {n} bytes from {path}")
    return {"seconds": dt}


def meta(directory: str, n: int) -> dict[str, float]:
    """Create n empty files, stat each, unlink each; seconds per phase."""
    os.makedirs(directory, exist_ok=True)
    names = [os.path.join(directory, f"f{i:06d}") for i in range(n)]
    t0 = time.perf_counter()
    for p in names:
        os.close(os.open(p, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644))
    t1 = time.perf_counter()
    for p in names:
        os.stat(p)
    t2 = time.perf_counter()
    for p in names:
        os.unlink(p)
    t3 = time.perf_counter()
    return {"create": t1 - t0, "stat": t2 - t1, "unlink": t3 - t2}


def sparse(path: str, fraction: float, piece: int, seed: int) -> dict[str, float]:
    """ROOT-like: read the last 64 KiB (footer/directory), then `fraction` of the file in scattered
    `piece`-sized reads at piece-aligned offsets, in ascending order (as a TTreeCache would)."""
    size = os.stat(path).st_size
    pieces = max(1, int(size * fraction) // piece)
    slots = size // piece
    rng = random.Random(seed)
    offsets = sorted(rng.sample(range(slots - 1), min(pieces, slots - 1)))
    t0 = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    asked = 0
    try:
        foot = max(0, size - 65536)
        asked += len(os.pread(fd, size - foot, foot))
        for k in offsets:
            got = os.pread(fd, piece, k * piece)
            if len(got) != piece:
                raise SystemExit(f"probe sparse: short read at {k * piece}")
            asked += len(got)
    finally:
        os.close(fd)
    return {"seconds": time.perf_counter() - t0, "asked": asked, "reads": len(offsets) + 1}


def main(argv: list[str]) -> int:
    cmd, args = argv[0], argv[1:]
    if cmd == "ttfb":
        out = ttfb(args[0])
    elif cmd == "meta":
        out = meta(args[0], int(args[1]))
    elif cmd == "sparse":
        out = sparse(args[0], float(args[1]), int(args[2]), int(args[3]))
    else:
        print(f"probe: unknown command {cmd!r}", file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
