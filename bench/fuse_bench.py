"""Side-by-side benchmark: the MemFS served by meshfs.fuse vs. the same MemFS served by pyfuse3.

Owns: the `fuse_bench` script (not a test). Each filesystem runs as its own daemon process; this
process drives the workloads through the kernel, alternating the two, and prints a markdown
table of medians and ratios (meshfs.fuse / pyfuse3; > 1 means meshfs.fuse is faster).

Run as root (it sets /sys/class/bdi/<dev>/read_ahead_kb):
    apt-get install libfuse3-dev pkg-config fio && .venv/bin/pip install pyfuse3   # bench-only
    .venv/bin/python bench/fuse_bench.py [--size-mib 1024] [--files 10000] [--repeat 3]
Must not be imported by meshfs.
"""

from __future__ import annotations

import argparse
import mmap
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "fuse"))

MiB = 1 << 20


# ----------------------------------------------------------------------------- daemons
def serve_meshfs(mountpoint: str, timeout: float) -> None:
    import trio
    from memfs import MemFS

    from meshfs.fuse import MountOptions, Session

    session = Session(MemFS(timeout=timeout))
    session.mount(mountpoint, MountOptions(fsname="memfs-meshfs", subtype="memfs", default_permissions=True))

    async def main() -> None:
        async with trio.open_nursery() as n:
            n.start_soon(session.run)
            print("ready", flush=True)

    trio.run(main)


def start_daemon(kind: str, mountpoint: str, timeout: float) -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, __file__, "--timeout", str(timeout), "--serve", kind, mountpoint],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    line = p.stdout.readline().strip()
    if line != "ready":
        p.kill()
        raise SystemExit(f"fuse_bench: the {kind} daemon did not start ({line!r})")
    os.stat(mountpoint)  # waits for INIT
    return p


def stop_daemon(p: subprocess.Popen[str], mountpoint: str) -> None:
    r = subprocess.run(["umount", mountpoint], capture_output=True, check=False)
    if r.returncode != 0:
        subprocess.run(["umount", "-l", mountpoint], capture_output=True, check=False)
    try:
        p.wait(20)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(10)


def bdi_of(mountpoint: str) -> Path:
    dev = os.stat(mountpoint).st_dev
    return Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")


# ----------------------------------------------------------------------------- workloads
def seq_write(mp: str, size: int) -> float:
    buf = os.urandom(MiB)
    t = time.perf_counter()
    fd = os.open(f"{mp}/big", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for _ in range(size // MiB):
        os.write(fd, buf)
    os.close(fd)
    return size / MiB / (time.perf_counter() - t)


def seq_read(mp: str, size: int) -> float:
    buf = bytearray(MiB)
    total = 0
    t = time.perf_counter()
    fd = os.open(f"{mp}/big", os.O_RDONLY)  # open drops the page cache (no keep_cache)
    while n := os.readv(fd, [buf]):
        total += n
    os.close(fd)
    assert total == size, (total, size)
    return size / MiB / (time.perf_counter() - t)


def rand_read_direct(mp: str, size: int, count: int = 20000) -> float:
    buf = mmap.mmap(-1, 4096)  # page aligned, as O_DIRECT needs
    rng = random.Random(42)
    offs = [rng.randrange(size // 4096) * 4096 for _ in range(count)]
    fd = os.open(f"{mp}/big", os.O_RDONLY | os.O_DIRECT)
    t = time.perf_counter()
    for off in offs:
        os.preadv(fd, [buf], off)
    dt = time.perf_counter() - t
    os.close(fd)
    return count / dt


def make_files(mp: str, n: int, sub: str) -> float:
    d = f"{mp}/{sub}"
    os.mkdir(d)
    t = time.perf_counter()
    for i in range(n):
        os.close(os.open(f"{d}/f{i:05d}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    return n / (time.perf_counter() - t)


def stat_files(mp: str, n: int, sub: str) -> float:
    t = time.perf_counter()
    for i in range(n):
        os.stat(f"{mp}/{sub}/f{i:05d}")
    return n / (time.perf_counter() - t)


def unlink_files(mp: str, n: int, sub: str) -> float:
    t = time.perf_counter()
    for i in range(n):
        os.unlink(f"{mp}/{sub}/f{i:05d}")
    dt = time.perf_counter() - t
    os.rmdir(f"{mp}/{sub}")
    return n / dt


def ls_l(mp: str, sub: str) -> float:
    t = time.perf_counter()
    subprocess.run(["ls", "-l", f"{mp}/{sub}"], stdout=subprocess.DEVNULL, check=True)
    return 1 / (time.perf_counter() - t)


# ----------------------------------------------------------------------------- driver
def rand_read_parallel(mp: str, size: int, procs: int = 4, count: int = 5000) -> float:
    """`procs` processes doing random 4 KiB O_DIRECT reads at once (total IOPS)."""
    code = (
        "import mmap, os, random, sys\n"
        "buf = mmap.mmap(-1, 4096); rng = random.Random(int(sys.argv[3]))\n"
        "fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECT); blocks = int(sys.argv[2]) // 4096\n"
        "sys.stdin.readline()\n"
        f"for _ in range({count}): os.preadv(fd, [buf], rng.randrange(blocks) * 4096)\n"
    )
    ps = [subprocess.Popen([sys.executable, "-c", code, f"{mp}/big", str(size), str(i)],
                           stdin=subprocess.PIPE, text=True) for i in range(procs)]
    time.sleep(0.3)  # let them start (imports) before the clock runs
    t = time.perf_counter()
    for p in ps:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.close()
    for p in ps:
        p.wait()
    return procs * count / (time.perf_counter() - t)


def daemon_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


Results = dict[tuple[str, str], list[tuple[float, float]]]


def run_pass(mps: dict[str, str], pids: dict[str, int], args: argparse.Namespace, results: Results,
             tag: str) -> None:
    size = args.size_mib * MiB
    order = list(mps)
    files = args.files
    # (row name, workload -> rate, operations per run for the CPU column, unit of those operations)
    rows: list[tuple[str, Callable[[str], float], int]] = [
        (f"seq write {args.size_mib} MiB, 1 MiB blocks (MiB/s)", lambda mp: seq_write(mp, size), size // MiB),
        (f"seq read {args.size_mib} MiB, 1 MiB blocks (MiB/s)", lambda mp: seq_read(mp, size), size // MiB),
        ("random 4 KiB O_DIRECT reads, QD1 (IOPS)", lambda mp: rand_read_direct(mp, size), 20000),
        ("random 4 KiB O_DIRECT reads, 4 processes (IOPS)", lambda mp: rand_read_parallel(mp, size), 20000),
        (f"create {files} files (ops/s)", lambda mp: make_files(mp, files, "meta"), files),
        (f"stat {files} files (ops/s)", lambda mp: stat_files(mp, files, "meta"), files),
        (f"unlink {files} files (ops/s)", lambda mp: unlink_files(mp, files, "meta"), files),
    ]

    def measure(name: str, kind: str, fn: Callable[[str], float], ops: int) -> None:
        c = daemon_cpu(pids[kind])
        rate = fn(mps[kind])
        cpu_us = (daemon_cpu(pids[kind]) - c) / ops * 1e6
        results.setdefault((f"{name}{tag}", kind), []).append((rate, cpu_us))

    for rep in range(args.repeat):
        for kind in order if rep % 2 == 0 else order[::-1]:
            for name, fn, ops in rows:
                measure(name, kind, fn, ops)
    for mp in mps.values():
        make_files(mp, files, "lsdir")
    for rep in range(args.repeat):
        for kind in order if rep % 2 == 0 else order[::-1]:
            measure(f"`ls -l` on {files} entries (entries/s)", kind,
                    lambda mp: files * ls_l(mp, "lsdir"), files)
    for mp in mps.values():
        unlink_files(mp, files, "lsdir")
        os.unlink(f"{mp}/big")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=0.0,
                    help="entry/attr timeout of the MemFS (0: every stat/lookup reaches the daemon)")
    ap.add_argument("--serve", nargs=2, metavar=("KIND", "MOUNTPOINT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        kind, mp = args.serve
        if kind == "meshfs":
            serve_meshfs(mp, args.timeout)
        else:
            from fuse_pyfuse3_memfs import serve_pyfuse3

            serve_pyfuse3(mp, ready=lambda: print("ready", flush=True), timeout=args.timeout)
        return 0
    if os.geteuid() != 0:
        print("fuse_bench: run as root (it mounts with mount(2) and sets read_ahead_kb)", file=sys.stderr)
        return 2
    try:
        import pyfuse3  # noqa: F401
    except ImportError:
        print("fuse_bench: pyfuse3 is missing: apt-get install libfuse3-dev pkg-config && "
              ".venv/bin/pip install pyfuse3", file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="fuse-bench-"))
    mps = {"meshfs.fuse": str(base / "meshfs"), "pyfuse3": str(base / "pyfuse3")}
    daemons: dict[str, subprocess.Popen[str]] = {}
    results: Results = {}
    try:
        for kind, mp in mps.items():
            os.mkdir(mp)
            daemons[kind] = start_daemon("meshfs" if kind == "meshfs.fuse" else "pyfuse3", mp, args.timeout)
        ra_default = {k: bdi_of(mp).read_text().strip() for k, mp in mps.items()}
        pids = {k: p.pid for k, p in daemons.items()}
        run_pass(mps, pids, args, results, "")
        for mp in mps.values():
            bdi_of(mp).write_text("1024\n")
        run_pass(mps, pids, args, results, ", read_ahead_kb=1024")
    finally:
        for kind, p in daemons.items():
            stop_daemon(p, mps[kind])
        shutil.rmtree(base, ignore_errors=True)
    print(f"\nmeshfs.fuse vs pyfuse3 {getattr(sys.modules.get('pyfuse3'), '__version__', '?')} (libfuse3), "
          f"same MemFS (entry/attr timeout {args.timeout} s), median of {args.repeat}; "
          f"kernel {os.uname().release}; default read_ahead_kb {ra_default}\n")
    print("| workload | meshfs.fuse | pyfuse3 | ratio | daemon CPU µs/op meshfs.fuse | pyfuse3 |")
    print("|---|---:|---:|---:|---:|---:|")
    names = list(dict.fromkeys(k[0] for k in results))
    for name in names:
        a = statistics.median(r for r, _ in results[(name, "meshfs.fuse")])
        b = statistics.median(r for r, _ in results[(name, "pyfuse3")])
        ca = statistics.median(c for _, c in results[(name, "meshfs.fuse")])
        cb = statistics.median(c for _, c in results[(name, "pyfuse3")])
        print(f"| {name} | {a:,.1f} | {b:,.1f} | {a / b:.2f}x | {ca:,.1f} | {cb:,.1f} |")
    print("\nratio: meshfs.fuse / pyfuse3 throughput (> 1: meshfs.fuse faster). CPU: user+system time of "
          "the daemon process per MiB (sequential rows), per request (random reads) or per file/entry.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
