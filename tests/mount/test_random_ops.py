"""Random-operation comparison: the same seeded sequence of file operations on the mount and on a local
directory must give the same results, the same errnos and the same final tree (also on another node).
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from mounthelp import sync, tree_snapshot

pytestmark = [pytest.mark.reva, pytest.mark.fuse]

FILES = ["a", "b", "c"]
DIRS = ["x", "y", "z"]
NAMES = FILES + DIRS
# ENOTEMPTY and EEXIST are both allowed by POSIX for rename/rmdir onto a non-empty directory
SAME = {errno.EEXIST: errno.ENOTEMPTY}


def rand_path(rng: random.Random, last: list[str] = FILES) -> str:
    """Mostly well-formed paths (dirs in the middle, the wanted kind last); 10% anything, to hit errors."""
    depth = rng.choice([0, 1, 1, 2])
    pool = NAMES if rng.random() < 0.1 else last
    middle = [rng.choice(NAMES if rng.random() < 0.1 else DIRS) for _ in range(depth)]
    return "/".join([*middle, rng.choice(pool)])


def rand_data(rng: random.Random) -> bytes:
    size = rng.choice([0, 1, 7, 100, 4096, 5000, 70_000, 200_000])
    return rng.randbytes(size)


def make_ops(seed: int, count: int) -> list[tuple[str, tuple[object, ...]]]:
    rng = random.Random(seed)
    kinds = ["write", "write", "pwrite", "append", "read", "truncate", "unlink", "mkdir", "mkdir", "rmdir",
             "rename", "rename", "stat", "listdir", "excl", "ftruncate_rw"]  # fmt: skip
    seeds = ["x", "y", "z", "x/y", "x/z", "y/x", "x/y/z"]
    ops: list[tuple[str, tuple[object, ...]]] = [("mkdir", (d,)) for d in seeds]
    for _ in range(count - len(ops)):
        k = rng.choice(kinds)
        p = rand_path(rng, DIRS if k in ("mkdir", "rmdir") else FILES)
        if k in ("write", "append", "excl"):
            ops.append((k, (p, rand_data(rng))))
        elif k == "pwrite":
            ops.append((k, (p, rng.randrange(0, 300_000), rand_data(rng))))
        elif k in ("truncate", "ftruncate_rw"):
            ops.append((k, (p, rng.choice([0, 1, 50, 4096, 100_000, 300_000]))))
        elif k == "rename":
            ops.append((k, (p, rand_path(rng, DIRS if p.rsplit("/", 1)[-1] in DIRS else FILES))))
        elif k == "listdir":
            ops.append((k, (rng.choice(["", *DIRS]) if rng.random() < 0.5 else rand_path(rng, DIRS),)))
        else:
            ops.append((k, (p,)))
    return ops


def apply(root: Path, op: str, args: tuple[object, ...]) -> object:
    """Run one operation below root; the result (comparable across file systems) or ("errno", name)."""
    p = root / str(args[0]) if args[0] else root
    try:
        if op == "write":
            with open(p, "wb") as f:
                f.write(args[1])  # type: ignore[arg-type]
            return "ok"
        if op == "append":
            with open(p, "ab") as f:
                f.write(args[1])  # type: ignore[arg-type]
            return "ok"
        if op == "excl":
            fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            try:
                os.write(fd, args[1])  # type: ignore[arg-type]
            finally:
                os.close(fd)
            return "ok"
        if op == "pwrite":
            fd = os.open(p, os.O_WRONLY)
            try:
                os.pwrite(fd, args[2], args[1])  # type: ignore[arg-type]
            finally:
                os.close(fd)
            return "ok"
        if op == "read":
            with open(p, "rb") as f:
                return hashlib.sha256(f.read()).hexdigest()
        if op == "truncate":
            os.truncate(p, args[1])  # type: ignore[arg-type]
            return "ok"
        if op == "ftruncate_rw":
            fd = os.open(p, os.O_RDWR)
            try:
                os.ftruncate(fd, args[1])  # type: ignore[arg-type]
                return hashlib.sha256(os.pread(fd, 1 << 20, 0)).hexdigest()
            finally:
                os.close(fd)
        if op == "unlink":
            os.unlink(p)
            return "ok"
        if op == "mkdir":
            os.mkdir(p)
            return "ok"
        if op == "rmdir":
            os.rmdir(p)
            return "ok"
        if op == "rename":
            os.rename(p, root / str(args[1]))
            return "ok"
        if op == "stat":
            st = os.stat(p)
            return ("dir", 0) if os.path.isdir(p) else ("file", st.st_size)
        if op == "listdir":
            return sorted(os.listdir(p))
        raise AssertionError(op)
    except OSError as e:
        code = e.errno or 0
        if op in ("rename", "rmdir"):
            code = SAME.get(code, code)
        return ("errno", errno.errorcode.get(code, str(code)))


def run_comparison(seed: int, count: int, mnt: Path, local: Path) -> None:
    log: list[str] = []
    for i, (op, args) in enumerate(make_ops(seed, count)):
        shown = tuple(a if not isinstance(a, bytes) else f"<{len(a)} bytes>" for a in args)
        want = apply(local, op, args)
        got = apply(mnt, op, args)
        log.append(f"{i}: {op}{shown} -> {want}")
        assert got == want, (
            f"op {i} {op}{shown}: mount gave {got}, local gave {want}; history:\n" + "\n".join(log[-25:])
        )
    assert tree_snapshot(mnt) == tree_snapshot(local)


@pytest.mark.parametrize("seed", [1, 2])
def test_random_ops_match_a_local_directory(
    seed: int, work: Path, tmp_path: Path, mount_factory: Callable[..., Path]
) -> None:
    local = tmp_path / "local"
    local.mkdir()
    run_comparison(seed, 200, work, local)
    sync(work)
    other = mount_factory() / "home" / work.name
    assert tree_snapshot(other) == tree_snapshot(local)


@pytest.mark.long
@pytest.mark.parametrize("seed", range(3, 9))
def test_random_ops_long(seed: int, work: Path, tmp_path: Path, mount_factory: Callable[..., Path]) -> None:
    local = tmp_path / "local"
    local.mkdir()
    run_comparison(seed, 600, work, local)
    sync(work)
    other = mount_factory() / "home" / work.name
    assert tree_snapshot(other) == tree_snapshot(local)


# ------------------------------------------------------------------ with open handles, modes and times


class Side:
    """One side of the comparison (mount or local dir) with its table of open file descriptors."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fds: dict[int, int] = {}

    def close_all(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


FD_FLAGS = {"r": os.O_RDONLY, "rw": os.O_RDWR, "w+c": os.O_RDWR | os.O_CREAT, "a": os.O_WRONLY | os.O_APPEND}


def make_handle_ops(seed: int, count: int) -> list[tuple[str, tuple[object, ...]]]:
    rng = random.Random(seed)
    ops: list[tuple[str, tuple[object, ...]]] = [("mkdir", (d,)) for d in ("x", "y", "z", "x/y")]
    ops += [("write", (f, rand_data(rng))) for f in ("a", "b", "x/a", "x/y/b", "z/c")]
    kinds = ["open", "open", "open", "fd_write", "fd_write", "fd_read", "fd_read", "fd_trunc", "fd_stat",
             "close", "write", "unlink", "rename", "rename", "chmod", "utime", "stat_full",
             "read"]  # fmt: skip
    while len(ops) < count:
        k = rng.choice(kinds)
        slot = rng.randrange(3)
        p = rand_path(rng, FILES)
        if k == "open":
            ops.append((k, (p, slot, rng.choice(list(FD_FLAGS)))))
        elif k == "fd_write":
            ops.append((k, (slot, rng.randrange(0, 150_000), rand_data(rng))))
        elif k == "fd_read":
            ops.append((k, (slot, rng.randrange(0, 150_000), rng.choice([1, 100, 70_000]))))
        elif k == "fd_trunc":
            ops.append((k, (slot, rng.choice([0, 10, 5000, 120_000]))))
        elif k in ("fd_stat", "close"):
            ops.append((k, (slot,)))
        elif k == "write":
            ops.append((k, (p, rand_data(rng))))
        elif k == "rename":
            ops.append((k, (p, rand_path(rng, FILES))))
        elif k == "chmod":
            ops.append((k, (p, rng.choice([0o600, 0o644, 0o755, 0o700, 0o444]))))
        elif k == "utime":
            ops.append((k, (p, rng.randrange(10**9, 2 * 10**9) * 10**9 + rng.randrange(10**9))))
        else:
            ops.append((k, (p,)))
    return ops


def apply_handle_op(side: Side, op: str, args: tuple[object, ...]) -> object:
    try:
        if op == "open":
            path, slot, mode = str(args[0]), int(args[1]), str(args[2])  # type: ignore[call-overload]
            if slot in side.fds:
                os.close(side.fds.pop(slot))
            side.fds[slot] = os.open(side.root / path, FD_FLAGS[mode], 0o644)
            return "ok"
        if op in ("fd_write", "fd_read", "fd_trunc", "fd_stat", "close"):
            fd = side.fds.get(int(args[0]))  # type: ignore[call-overload]
            if fd is None:
                return "no fd"
            if op == "fd_write":
                return os.pwrite(fd, args[2], args[1])  # type: ignore[arg-type]
            if op == "fd_read":
                return hashlib.sha256(os.pread(fd, args[2], args[1])).hexdigest()  # type: ignore[arg-type]
            if op == "fd_trunc":
                os.ftruncate(fd, args[1])  # type: ignore[arg-type]
                return "ok"
            if op == "fd_stat":
                return os.fstat(fd).st_size
            os.close(side.fds.pop(int(args[0])))  # type: ignore[call-overload]
            return "ok"
        p = side.root / str(args[0])
        if op == "chmod":
            os.chmod(p, args[1])  # type: ignore[arg-type]
            return oct(os.stat(p).st_mode & 0o777)
        if op == "utime":
            os.utime(p, ns=(args[1], args[1]))  # type: ignore[arg-type]
            return os.stat(p).st_mtime_ns
        if op == "stat_full":
            st = os.stat(p)
            if os.path.isdir(p):  # directory sizes differ between file systems
                return ("dir", oct(st.st_mode & 0o777))
            return (st.st_size, oct(st.st_mode & 0o777))
        return apply(side.root, op, args)
    except OSError as e:
        code = e.errno or 0
        # a file with mode 0444 on the mount: root ignores mode bits locally and on the mount alike
        return ("errno", errno.errorcode.get(code, str(code)))


def modes(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            out[os.fspath(p.relative_to(root))] = oct(p.stat().st_mode & 0o777)
    return out


@pytest.mark.parametrize("seed", [11, 12])
def test_random_ops_with_open_handles_modes_and_times(
    seed: int, work: Path, tmp_path: Path, mount_factory: Callable[..., Path]
) -> None:
    """Handles stay open across renames, unlinks and overwrites; mode bits and mtimes are compared too."""
    local = tmp_path / "local"
    local.mkdir()
    sides = (Side(local), Side(work))
    log: list[str] = []
    try:
        for i, (op, args) in enumerate(make_handle_ops(seed, 220)):
            shown = tuple(a if not isinstance(a, bytes) else f"<{len(a)} bytes>" for a in args)
            want = apply_handle_op(sides[0], op, args)
            got = apply_handle_op(sides[1], op, args)
            log.append(f"{i}: {op}{shown} -> {want}")
            assert got == want, (
                f"op {i} {op}{shown}: mount gave {got}, local gave {want}; history:\n" + "\n".join(log[-30:])
            )
    finally:
        for side in sides:
            side.close_all()
    assert tree_snapshot(work) == tree_snapshot(local)
    assert modes(work) == modes(local)
    sync(work)
    other = mount_factory() / "home" / work.name
    assert tree_snapshot(other) == tree_snapshot(local)
    assert modes(other) == modes(local)


@pytest.mark.long
@pytest.mark.parametrize("seed", range(13, 19))
def test_random_ops_with_open_handles_long(
    seed: int, work: Path, tmp_path: Path, mount_factory: Callable[..., Path]
) -> None:
    test_random_ops_with_open_handles_modes_and_times(seed, work, tmp_path, mount_factory)
