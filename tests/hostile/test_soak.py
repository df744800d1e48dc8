"""Soak (issue 9, `make test-long`): several processes doing mixed operations through the mount for a
bounded time, a periodic check of every file against the server through a second mount, and the
daemon's memory (RSS) sampled over time: it must stay bounded. MESHFS_SOAK_SECONDS sets the length
(default 600)."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import random
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.reva, pytest.mark.fuse, pytest.mark.long]


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _worker(root: str, seed: int, deadline: float, out: mp.Queue) -> None:  # type: ignore[type-arg]
    rnd = random.Random(seed)
    mine = Path(root) / f"w{seed}"
    mine.mkdir()
    state: dict[str, str] = {}
    ops = 0
    while time.time() < deadline:
        op = rnd.random()
        name = f"f{rnd.randrange(30)}"
        p = mine / name
        if op < 0.45:
            data = rnd.randbytes(rnd.choice([0, 1, 100, 4096, 70000, 300000]))
            p.write_bytes(data)
            state[name] = hashlib.sha256(data).hexdigest()
        elif op < 0.7 and name in state:
            assert hashlib.sha256(p.read_bytes()).hexdigest() == state[name], f"{p} content differs"
        elif op < 0.8 and name in state:
            p.unlink()
            del state[name]
        elif op < 0.9 and name in state:
            other = f"f{rnd.randrange(30)}"
            p.rename(mine / other)
            state[other] = state.pop(name)
        else:
            assert sorted(os.listdir(mine)) == sorted(state), "listing differs"
        ops += 1
    out.put((seed, ops, state))


def test_soak_mixed_operations_with_bounded_memory(mount, work: Path, tmp_path: Path, reva) -> None:  # type: ignore[no-untyped-def]
    from conftest import Mount, meshfs  # type: ignore[import-not-found]

    seconds = float(os.environ.get("MESHFS_SOAK_SECONDS", "600"))
    pid = mount.pid()
    assert pid
    deadline = time.time() + seconds
    q: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    procs = [mp.Process(target=_worker, args=(os.fspath(work), s, deadline, q)) for s in range(4)]
    for p in procs:
        p.start()
    rss: list[tuple[float, int]] = []
    t0 = time.time()
    while any(p.is_alive() for p in procs):
        rss.append((time.time() - t0, _rss_kib(pid)))
        time.sleep(min(10.0, max(1.0, seconds / 60)))
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0, f"worker {p.name} failed"
    results = [q.get(timeout=10) for _ in procs]
    assert meshfs("sync", os.fspath(mount.mp), timeout=600).returncode == 0
    # check against the server through another node
    other = Mount(tmp_path / "other", reva)
    try:
        rel = work.relative_to(mount.mp)
        for seed, _ops, state in results:
            d = other.mp / rel / f"w{seed}"
            got = {n: hashlib.sha256((d / n).read_bytes()).hexdigest() for n in os.listdir(d)}
            assert got == state
    finally:
        other.close()
    first = max(v for t, v in rss if t <= max(30.0, seconds / 10))
    last = max(v for t, v in rss[-max(1, len(rss) // 5) :])
    total_ops = sum(r[1] for r in results)
    peak = max(v for _, v in rss)
    rss_text = f"daemon RSS {first} KiB early, {last} KiB late, peak {peak} KiB"
    print(f"soak: {total_ops} ops in {seconds:.0f}s; {rss_text}")
    assert last < first * 1.5 + 50_000, f"daemon RSS grew from {first} KiB to {last} KiB"
