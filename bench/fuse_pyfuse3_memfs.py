"""The MemFS of tests/fuse/memfs.py served by pyfuse3 (libfuse 3), for the side-by-side benchmark.

Owns: `serve_pyfuse3(mountpoint)`. It is literally the same MemFS code: the module is loaded
with `meshfs.fuse` replaced by a shim that maps the names MemFS uses to pyfuse3's types, plus
adapters for the three handlers whose pyfuse3 signatures are shorter (flush, release, setxattr).
Bench-only dependency: `apt-get install libfuse3-dev pkg-config && .venv/bin/pip install pyfuse3`.
Must not be imported by meshfs.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

MEMFS = Path(__file__).resolve().parent.parent / "tests" / "fuse" / "memfs.py"


def _shim(pyfuse3: Any) -> types.ModuleType:
    import meshfs.fuse.operations as ours

    def entry_attributes(**kw: Any) -> Any:
        e = pyfuse3.EntryAttributes()
        for k, v in kw.items():
            setattr(e, k, v)
        return e

    def file_info(fh: int = 0, direct_io: bool = False, keep_cache: bool = False,
                  nonseekable: bool = False, noflush: bool = False) -> Any:
        # pyfuse3 defaults keep_cache to True; use the same defaults as meshfs.fuse
        return pyfuse3.FileInfo(fh=fh, direct_io=direct_io, keep_cache=keep_cache, nonseekable=nonseekable)

    def statvfs_data(**kw: Any) -> Any:
        s = pyfuse3.StatvfsData()
        for k, v in kw.items():
            setattr(s, k, v)
        return s

    shim = types.ModuleType("meshfs.fuse")
    for name in ("F_RDLCK", "F_UNLCK", "F_WRLCK", "RENAME_EXCHANGE", "RENAME_NOREPLACE", "Lock",
                 "ReaddirToken", "RequestContext", "SetattrFields"):
        setattr(shim, name, getattr(ours, name))
    shim.ROOT_INODE = pyfuse3.ROOT_INODE  # type: ignore[attr-defined]
    shim.EntryAttributes = entry_attributes  # type: ignore[attr-defined]
    shim.FileInfo = file_info  # type: ignore[attr-defined]
    shim.StatvfsData = statvfs_data  # type: ignore[attr-defined]
    shim.FUSEError = pyfuse3.FUSEError  # type: ignore[attr-defined]
    shim.Operations = pyfuse3.Operations  # type: ignore[attr-defined]
    shim.readdir_reply = pyfuse3.readdir_reply  # type: ignore[attr-defined]
    return shim


def load_memfs_for_pyfuse3() -> Any:
    import pyfuse3

    shim = _shim(pyfuse3)
    saved = sys.modules.get("meshfs.fuse")
    sys.modules["meshfs.fuse"] = shim
    try:
        spec = importlib.util.spec_from_file_location("memfs_pyfuse3", MEMFS)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules["memfs_pyfuse3"] = mod
        spec.loader.exec_module(mod)
    finally:
        if saved is not None:
            sys.modules["meshfs.fuse"] = saved
        else:
            del sys.modules["meshfs.fuse"]

    class PyFuse3MemFS(mod.MemFS):  # type: ignore[misc,name-defined]
        async def flush(self, fh: int) -> None:  # type: ignore[override]
            await super().flush(fh, 0)

        async def release(self, fh: int) -> None:  # type: ignore[override]
            await super().release(fh, 0, 0, False)

        async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:  # type: ignore[override]
            await super().setxattr(inode, name, value, 0, ctx)

    return PyFuse3MemFS


def serve_pyfuse3(
    mountpoint: str, fsname: str = "memfs-pyfuse3", ready: Any = None, timeout: float = 1.0
) -> None:
    """Mount the MemFS with pyfuse3 and serve until unmounted (blocking)."""
    import pyfuse3
    import trio

    fs_cls = load_memfs_for_pyfuse3()
    opts = set(pyfuse3.default_options)
    opts.add(f"fsname={fsname}")
    opts.add("subtype=memfs")
    pyfuse3.init(fs_cls(timeout=timeout), mountpoint, opts)

    async def main() -> None:
        async with trio.open_nursery() as n:
            n.start_soon(pyfuse3.main)
            if ready is not None:
                ready()

    try:
        trio.run(main)
    finally:
        pyfuse3.close(unmount=False)
