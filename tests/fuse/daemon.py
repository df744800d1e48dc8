"""Serve a MemFS at a mountpoint as a separate process (tests: stale mounts, non-root mounts).

Usage: python daemon.py MOUNTPOINT [--die-after-init] [--fsname NAME] [--allow-other]
Prints `ready <uid>` once the kernel's INIT was answered; unmounts and exits 0 when stdin
reaches EOF or on SIGTERM. With --die-after-init it exits abruptly (os._exit) right after INIT,
leaving a stale mount behind, like a crashed daemon.
Must not import meshfs modules other than meshfs.fuse.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).parent))

from memfs import MemFS

from meshfs.fuse import MountError, MountOptions, Session


async def main(args: argparse.Namespace) -> int:
    session = Session(MemFS())
    try:
        opts = MountOptions(fsname=args.fsname, subtype="memfs", unmount_grace=1.0,
                            allow_other=args.allow_other)
        session.mount(args.mountpoint, opts)
    except MountError as e:
        print(f"error {e}", flush=True)
        return 2
    async def announce() -> None:
        assert session.initialized is not None
        await session.initialized.wait()
        if args.die_after_init:
            os._exit(0)
        print(f"ready {os.getuid()}", flush=True)

    async def stop_on_eof() -> None:
        await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)
        session.unmount()

    async def stop_on_signal() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                session.unmount()
                return

    async with trio.open_nursery() as helpers:
        helpers.start_soon(announce)
        helpers.start_soon(stop_on_eof)
        helpers.start_soon(stop_on_signal)
        await session.run()  # returns once the kernel let go of the mount
        helpers.cancel_scope.cancel()
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("mountpoint")
    ap.add_argument("--die-after-init", action="store_true")
    ap.add_argument("--fsname", default="memfs")
    ap.add_argument("--allow-other", action="store_true")
    sys.exit(trio.run(main, ap.parse_args()))
