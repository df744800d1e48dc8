"""Which upload protocol is cheapest for one big fresh file: curl PUT vs meshfs.cs3's simple PUT vs tus
(one PATCH for the whole file, or fixed-size chunks with/without a HEAD before each chunk).

`python -m bench.upload_probe --instance bw --port-offset 510 --file .cache/bench-bw/data/big-1024M.bin
--rounds 3` — needs that Reva instance running (e.g. left by `python -m bench ... --keep-reva`).
Variants run interleaved (rotating order per round) so the machine's load hits each alike; prints
one line per sample and the medians. Owns nothing else; imports only meshfs.cs3's public client.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
from pathlib import Path

import trio

from meshfs.cs3 import BasicCredentials, Gateway, Ref, Secret, Storage, Transfer, UploadResult

from .server import PASSWORD, USER

MiB = 1 << 20


async def _variant(name: str, gw_addr: str, path: Path, size: int, rel: str) -> float:
    async with Gateway(gw_addr, BasicCredentials(USER, Secret(PASSWORD)), tls=False) as gw:
        storage, transfer = Storage(gw), Transfer(gw)
        home = await storage.get_home()
        ref = Ref(path=f"{home.path}/{rel}")
        fd = os.open(path, os.O_RDONLY)
        try:
            t0 = time.perf_counter()
            if name == "curl":
                protos = await transfer.initiate_upload(
                    ref, size, if_match=None, if_not_exist=False, lock_id=None, mtime_ns=None
                )
                url, sec = protos["simple"]
                token = (await gw.access_token()).reveal()
                cmd = ["curl", "-sS", "-f", "-X", "PUT", "-H", f"x-access-token: {token}",
                       "-H", f"X-Reva-Transfer: {sec.reveal()}", "-T", str(path), url]  # fmt: skip
                await trio.to_thread.run_sync(lambda: subprocess.run(cmd, check=True))
            elif name == "put":
                await transfer.upload(ref, fd, size)
            else:
                chunk = size if name == "tus1" else 64 * MiB
                session = await transfer.start_tus(ref, size)
                first = True
                while True:
                    out = await transfer.tus_upload(
                        session, fd, chunk_size=chunk, max_bytes=chunk,
                        resume=first or name == "tus64head",
                    )  # fmt: skip
                    first = False
                    if isinstance(out, UploadResult):
                        break
                    session = out
            dt = time.perf_counter() - t0
            st = await storage.stat(ref)
            if st.size != size:
                raise SystemExit(f"{name}: server has {st.size} bytes, expected {size}")
            await storage.delete(ref)
            return dt
        finally:
            os.close(fd)
            transfer.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instance", default="bw")
    ap.add_argument("--port-offset", type=int, default=510)
    ap.add_argument("--file", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", default="curl,put,tus1,tus64,tus64head")
    a = ap.parse_args()
    gw_addr = f"127.0.0.1:{19000 + a.port_offset}"
    names = a.variants.split(",")
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(a.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            dt = trio.run(_variant, n, gw_addr, a.file, a.file.stat().st_size, f"bench/probe-{n}.bin")
            times[n].append(dt)
            print(f"round {r} {n}: {dt:.2f}s  (load {os.getloadavg()[0]:.1f})", flush=True)
    for n in names:
        print(f"{n}: median {statistics.median(times[n]):.2f}s  {[round(x, 2) for x in times[n]]}")


if __name__ == "__main__":
    main()
