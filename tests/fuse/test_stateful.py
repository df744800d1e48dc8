"""Random operation sequences applied to the MemFS mount and to a local directory (ext4/tmpfs):
results and errnos must agree (hypothesis stateful testing through the real kernel)."""

from __future__ import annotations

import ctypes
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
from conftest import Mounted
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test

pytestmark = pytest.mark.fuse

_libc = ctypes.CDLL(None, use_errno=True)
NAMES = ["a", "d"]
PATHS = st.lists(st.sampled_from(NAMES), min_size=1, max_size=2).map("/".join)
DATA = st.binary(max_size=300)


def outcome(fn: Any, *args: Any) -> tuple[str, Any]:
    try:
        return ("ok", fn(*args))
    except OSError as e:
        return ("err", e.errno)


def _renameat2(old: str, new: str, flags: int) -> None:
    if _libc.renameat2(-100, os.fsencode(old), -100, os.fsencode(new), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def _summary(p: str) -> tuple[Any, ...]:
    s = os.lstat(p)
    kind = stat.S_IFMT(s.st_mode)
    size = s.st_size if not stat.S_ISDIR(s.st_mode) else None
    return (kind, stat.S_IMODE(s.st_mode), size, s.st_nlink)


def _write(p: str, data: bytes, off: int, trunc: bool) -> int:
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if trunc else 0), 0o644)
    try:
        return os.pwrite(fd, data, off)
    finally:
        os.close(fd)


def _read(p: str) -> bytes:
    with open(p, "rb") as f:
        return f.read()


def _tree(root: str) -> list[tuple[str, tuple[Any, ...]]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for n in sorted(dirnames + filenames):
            full = os.path.join(dirpath, n)
            out.append((os.path.relpath(full, root), _summary(full)))
        dirnames.sort()
    return sorted(out)


class SameAsLocal(RuleBasedStateMachine):
    mount_root = ""
    local_root = ""

    def __init__(self) -> None:
        super().__init__()
        for root in (self.mount_root, self.local_root):
            for entry in os.listdir(root):
                p = os.path.join(root, entry)
                if os.path.isdir(p) and not os.path.islink(p):
                    shutil.rmtree(p)
                else:
                    os.unlink(p)

    def both(self, fn: Any, *paths_and_args: Any, npaths: int = 1) -> tuple[str, Any]:
        paths, rest = paths_and_args[:npaths], paths_and_args[npaths:]
        r1 = outcome(fn, *[os.path.join(self.mount_root, p) for p in paths], *rest)
        r2 = outcome(fn, *[os.path.join(self.local_root, p) for p in paths], *rest)
        assert r1 == r2, f"{getattr(fn, '__name__', fn)}{paths_and_args}: mount {r1} != local {r2}"
        return r1

    @rule(p=PATHS, data=DATA, off=st.integers(0, 500), trunc=st.booleans())
    def write(self, p: str, data: bytes, off: int, trunc: bool) -> None:
        self.both(_write, p, data, off, trunc)

    @rule(p=PATHS)
    def read(self, p: str) -> None:
        self.both(_read, p)

    @rule(p=PATHS, size=st.integers(0, 600))
    def truncate(self, p: str, size: int) -> None:
        self.both(os.truncate, p, size)

    @rule(p=PATHS)
    def mkdir(self, p: str) -> None:
        self.both(os.mkdir, p)

    @rule(p=PATHS)
    def rmdir(self, p: str) -> None:
        self.both(os.rmdir, p)

    @rule(p=PATHS)
    def unlink(self, p: str) -> None:
        self.both(os.unlink, p)

    @rule(a=PATHS, b=PATHS, flags=st.sampled_from([0, 0, 1, 2]))
    def rename(self, a: str, b: str, flags: int) -> None:
        self.both(_renameat2, a, b, flags, npaths=2)

    @rule(a=PATHS, b=PATHS)
    def link(self, a: str, b: str) -> None:
        self.both(os.link, a, b, npaths=2)

    @rule(dest=st.sampled_from([*NAMES, "../a", "nowhere"]), p=PATHS)
    def symlink(self, dest: str, p: str) -> None:
        r1 = outcome(os.symlink, dest, os.path.join(self.mount_root, p))
        r2 = outcome(os.symlink, dest, os.path.join(self.local_root, p))
        assert r1 == r2, f"symlink {dest} {p}: mount {r1} != local {r2}"

    @rule(p=PATHS)
    def readlink(self, p: str) -> None:
        self.both(os.readlink, p)

    @rule(p=PATHS)
    def listdir(self, p: str) -> None:
        r1 = outcome(lambda q: sorted(os.listdir(q)), os.path.join(self.mount_root, p))
        r2 = outcome(lambda q: sorted(os.listdir(q)), os.path.join(self.local_root, p))
        assert r1 == r2

    @rule(p=PATHS)
    def stat(self, p: str) -> None:
        self.both(_summary, p)

    @rule(p=PATHS, mode=st.sampled_from([0o600, 0o644, 0o755, 0o700]))
    def chmod(self, p: str, mode: int) -> None:
        self.both(os.chmod, p, mode)

    def teardown(self) -> None:
        assert _tree(self.mount_root) == _tree(self.local_root)


def test_random_operations_match_a_local_directory(mnt: Mounted, tmp_path: Path) -> None:
    local = tmp_path / "local"
    local.mkdir()
    SameAsLocal.mount_root = str(mnt.path)
    SameAsLocal.local_root = str(local)
    run_state_machine_as_test(
        SameAsLocal,
        settings=settings(max_examples=300, stateful_step_count=50, deadline=None,
                          suppress_health_check=list(HealthCheck)),
    )
