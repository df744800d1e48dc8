"""Write patterns for checking a file system's write path, shared by tests/fuse (the FUSE layer over a
test filesystem) and tests/mount (a real meshfs mount).

Owns `write_pattern`: dd in several block sizes (page multiples and not) at random block offsets, then
pwrites of random, mostly unaligned sizes at random offsets, all from a seeded generator; it returns the
bytes the file must then hold, for the caller to compare with what reads back wherever it looks.
Imports nothing from meshfs: the writes go through the kernel like any program's.
"""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

KiB = 1 << 10
MiB = 1 << 20
PAGE = 4096

DD_BLOCK_SIZES = (4 * KiB, 64 * KiB, 128 * KiB + 4 * KiB, 128 * KiB + 4 * KiB + 1, MiB)
PWRITE_SIZES = (1, 100, PAGE - 1, PAGE + 1, 3 * PAGE + 7, 200 * KiB + 3, MiB - 1, MiB, MiB + 5)
PWRITES = 12


def dd(src: Path, dst: Path, bs: int, count: int, skip: int, seek: int) -> None:
    """`dd` of `count` blocks of `bs` bytes from block `skip` of `src` to block `seek` of `dst`, in place."""
    subprocess.run(
        ["dd", f"if={src}", f"of={dst}", f"bs={bs}", f"count={count}", f"skip={skip}", f"seek={seek}",
         "conv=notrunc", "status=none"],
        check=True, timeout=120,
    )  # fmt: skip


def write_pattern(target: Path, scratch: Path, seed: int) -> bytes:
    """Create `target` and write the pattern of `seed` into it (source data in `scratch`); returns
    what `target` must hold (up to about 9 MiB, with holes)."""
    rng = random.Random(seed)
    size = 6 * MiB
    src = scratch / f"src-{seed}.bin"
    src.write_bytes(rng.randbytes(size))
    source = src.read_bytes()
    model = bytearray()

    def put(off: int, data: bytes) -> None:
        if off > len(model):
            model.extend(bytes(off - len(model)))
        model[off : off + len(data)] = data

    target.touch()
    for bs in DD_BLOCK_SIZES:
        count = rng.randint(1, 4)
        skip = rng.randrange(0, size // bs - count + 1)
        seek = rng.randrange(0, (8 * MiB) // bs)
        dd(src, target, bs, count, skip, seek)
        put(seek * bs, source[skip * bs : (skip + count) * bs])
    fd = os.open(target, os.O_WRONLY)
    try:
        for _ in range(PWRITES):
            n = rng.choice(PWRITE_SIZES)
            off = rng.randrange(0, 9 * MiB)
            data = rng.randbytes(n)
            assert os.pwrite(fd, data, off) == n
            put(off, data)
    finally:
        os.close(fd)
    return bytes(model)
