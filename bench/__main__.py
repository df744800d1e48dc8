"""`python -m bench` (`make bench`): meshfs side by side with rclone mount, davfs2, the local disk and
raw curl, on the dev Reva. Writes bench/results/<UTC time>-<label>.{json,md}.

Owns: the command line, the interleaved round loop, cleanup (every mount is unmounted in finally).
Must not import: meshfs (the product is driven through its CLI and the mount).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import report
from .dataset import prepare
from .rows import ROWS, Meter, Params, applies, check_row
from .server import REPO, REVACTL, Reva, start, stop
from .sysutil import BenchError, ensure_py_spy, ensure_tools, is_mounted, loadavg, log, run
from .targets import VPY, Meshfs, Target, make_targets

ALL_TARGETS = ["meshfs", "rclone", "davfs2", "local", "curl"]

EPILOG = """\
rows: seq_write (dd return + until durable), seq_read (cold, warm), rand4k / rand256k (fio O_DIRECT,
cold, warm), ttfb (1-byte O_DIRECT read), meta (create/stat/unlink), ls (ls -l of 1k/10k entries, cold,
warm via hyperfine), untar (+ git status), sparse (footer + 1 % in 64 KiB pieces, bytes fetched).
Rounds are the outer loop (a --deadline cut keeps whole rounds of every row); within a round each row
runs on every target in turn, each on a fresh mount with an empty cache; the target order rotates.
Times are seconds (median [min–max]); ratios are speed ratios, >1 = meshfs faster.
"""


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0], epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument(
        "--quick", action="store_true", help="256 MiB files, 1 GiB sparse file, 1000 small files, 1 round"
    )
    ap.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows (default: all)")
    ap.add_argument("--targets", default=",".join(ALL_TARGETS), help="comma-separated targets (default: all)")
    ap.add_argument("--rounds", type=int, help="rounds (default 3, --quick 1)")
    ap.add_argument("--size-mb", type=int, help="sequential/random file size in MiB (default 2048)")
    ap.add_argument("--sparse-mb", type=int, help="sparse-read file size in MiB (default 4096)")
    ap.add_argument("--nfiles", type=int, help="files for create/stat/unlink (default 10000)")
    ap.add_argument(
        "--rand4k-mb", type=int, help="MiB read by the 4 KiB random-read row (default 32, --quick 8)"
    )
    ap.add_argument(
        "--rand256k-mb", type=int, help="MiB read by the 256 KiB random-read row (default 256, quick 64)"
    )
    ap.add_argument(
        "--skip", default="", help="ROW:TARGET pairs not to run, comma-separated (e.g. untar:davfs2)"
    )
    ap.add_argument("--deadline", help="UTC HH:MM after which no new round starts (results so far are kept)")
    ap.add_argument("--ls-sizes", default="1000,10000", help="directory sizes for ls -l (default 1000,10000)")
    ap.add_argument(
        "--sample-timeout", type=float, default=900, help="seconds one measurement may take (900)"
    )
    ap.add_argument("--meshfs-opts", default="", help="extra meshfs -o options")
    ap.add_argument("--instance", default="bench", help="revactl instance (default: bench, its own stack)")
    ap.add_argument(
        "--port-offset", type=int, default=500, help="REVA_PORT_OFFSET of that instance (default 500)"
    )
    ap.add_argument(
        "--work", type=Path, default=REPO / ".cache" / "bench", help="work dir (data set, mounts, caches)"
    )
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="where results go")
    ap.add_argument("--label", default="", help="suffix of the result file names")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the meshfs daemon; profiles in bench/results/<run>-profiles/",
    )
    ap.add_argument("--keep-reva", action="store_true", help="leave the Reva instance running at the end")
    a = ap.parse_args(argv)
    for name in ("rounds", "size_mb", "sparse_mb", "nfiles", "rand4k_mb", "rand256k_mb"):
        v = getattr(a, name)
        if v is not None and v < 1:
            ap.error(f"--{name.replace('_', '-')} must be ≥ 1")
    return a


def params(a: argparse.Namespace) -> tuple[Params, int]:
    q = a.quick
    size = a.size_mb or (256 if q else 2048)
    p = Params(
        size_mb=size,
        sparse_mb=a.sparse_mb or (1024 if q else 4096),
        nfiles=a.nfiles or (1000 if q else 10000),
        rand4k_mb=min(size, a.rand4k_mb or (8 if q else 32)),
        rand256k_mb=min(size, a.rand256k_mb or (64 if q else 256)),
        ls_sizes=tuple(int(x) for x in a.ls_sizes.split(",") if x),
        timeout=a.sample_timeout,
    )
    return p, a.rounds or (1 if q else 3)


def versions() -> dict[str, str]:
    def first(cmd: list[str]) -> str:
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
            return (r.stdout or r.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    return {
        "kernel": platform.release(),
        "meshfs_commit": first(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
        "rclone": first(["rclone", "version"]),
        "davfs2": first(["dpkg-query", "-W", "-f", "${Version}", "davfs2"]),
        "fio": first(["fio", "--version"]),
        "cpus": str(os.cpu_count()),
    }


def cleanup_server(reva: Reva, t: Target) -> None:
    for rel in (f"bench/w-{t.name}.bin", f"bench/meta-{t.name}", f"bench/untar-{t.name}"):
        try:
            reva.delete(rel)
        except (BenchError, OSError) as e:
            log(f"cleanup {rel}: {e}")


def main(argv: list[str]) -> int:
    a = parse(argv)
    p, rounds = params(a)
    rows = [r for r in a.rows.split(",") if r]
    for r in rows:
        check_row(r)
    names = [t for t in a.targets.split(",") if t]
    for n in names:
        if n not in ALL_TARGETS:
            raise BenchError(f"unknown target {n!r} (one of {', '.join(ALL_TARGETS)})")
    skip = {tuple(x.split(":", 1)) for x in a.skip.split(",") if x}
    for pair in skip:
        if len(pair) != 2 or pair[0] not in ROWS or pair[1] not in ALL_TARGETS:
            raise BenchError(f"--skip wants ROW:TARGET pairs, got {':'.join(pair)!r}")
    deadline = _deadline(a.deadline)
    tools = ["fio", "hyperfine", "curl", "git", "fusermount3"]
    tools += ["rclone"]  # also used for the setup upload of the small files
    if "davfs2" in names:
        tools.append("mount.davfs")
    ensure_tools(tools)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    env = dict(os.environ, REVA_INSTANCE=a.instance, REVA_PORT_OFFSET=str(a.port_offset))
    was_running = run([str(REVACTL), "status"], timeout=30, check=False, env=env).rc == 0
    reva = start(a.instance, a.port_offset)
    log(f"Reva instance {a.instance!r}: gateway {reva.gateway}, WebDAV {reva.webdav}")
    work = a.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    data_root = work / "data"
    started = time.time()
    label = a.label or ("quick" if a.quick else "full")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started))
    a.out.mkdir(parents=True, exist_ok=True)
    base = a.out / f"{stamp}-{label}"
    meta: dict[str, Any] = {
        "started": stamp,
        "params": {**{k: getattr(p, k) for k in Params.__dataclass_fields__}, "rounds": rounds},
        "rows": rows,
        "targets": names,
        "meshfs_opts": a.meshfs_opts,
        "skip": a.skip,
        "versions": versions(),
        "load_start": loadavg(),
        "command": " ".join(["python -m bench", *argv]),
    }
    samples: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    targets: list[Target] = []
    try:
        prepare(data_root, work, reva, p)
        profile = base.parent / f"{base.name}-profiles" if a.profile else None
        spy = ensure_py_spy(VPY) if a.profile else None
        targets = make_targets(names, work, reva, data_root / "data", a.meshfs_opts, profile, spy)
        for rnd in range(rounds):
            if deadline is not None and time.time() > deadline:
                log(f"past the deadline {a.deadline} UTC: no more rounds")
                errors.append({"round": rnd, "error": f"not run: past the deadline {a.deadline} UTC"})
                break
            # targets rotate their order every round, so none always runs first (or right after setup)
            order = targets[rnd % len(targets) :] + targets[: rnd % len(targets)]
            for row in rows:
                log(f"round {rnd + 1}/{rounds}, row {row} (load {loadavg()})")
                for t in order:
                    if not applies(row, t) or (row, t.name) in skip:
                        continue
                    if isinstance(t, Meshfs):
                        t.profile_name = f"{row}-r{rnd}"
                    try:
                        t.mount()
                        res = ROWS[row](t, Meter(t, reva), p)
                        for phase, m in res.items():
                            samples.append(
                                {"row": row, "phase": phase, "target": t.name, "round": rnd, **m.as_dict()}
                            )
                        log(
                            f"  {row} r{rnd} {t.name}: "
                            + ", ".join(f"{k} {v.seconds:.3f}s" for k, v in res.items())
                        )
                    except (BenchError, OSError, ValueError, KeyError) as e:
                        log(f"  {row} r{rnd} {t.name}: FAILED: {type(e).__name__}: {e}")
                        errors.append({"row": row, "target": t.name, "round": rnd, "error": str(e)})
                    finally:
                        t.unmount()
                        if t.is_mount:
                            cleanup_server(reva, t)
                _write(base, meta, samples, errors, p, partial=True)
            reva.purge_trash()
    except KeyboardInterrupt:
        log("interrupted; unmounting")
        errors.append({"error": "interrupted"})
    finally:
        for t in targets:
            try:
                t.unmount()
            except Exception as e:
                log(f"unmount {t.name}: {e}")
        left = [str(t.mp) for t in targets if t.is_mount and is_mounted(str(t.mp))]
        if left:
            log(f"WARNING: still mounted: {', '.join(left)}")
        if not was_running and not a.keep_reva:
            stop(reva)
    meta["load_end"] = loadavg()
    meta["seconds"] = time.time() - started
    _write(base, meta, samples, errors, p, partial=False)
    print(base.with_suffix(".md").read_text())
    log(f"results: {base}.json, {base}.md")
    return 1 if errors else 0


def _deadline(hhmm: str | None) -> float | None:
    if not hhmm:
        return None
    try:
        h, m = (int(x) for x in hhmm.split(":"))
    except ValueError:
        raise BenchError(f"--deadline wants HH:MM (UTC), got {hhmm!r}") from None
    now = time.time()
    day = now - now % 86400
    return day + h * 3600 + m * 60


def _write(
    base: Path,
    meta: dict[str, Any],
    samples: list[dict[str, Any]],
    errors: list[dict[str, Any]],
    p: Params,
    *,
    partial: bool,
) -> None:
    doc: dict[str, Any] = {"meta": {**meta, "partial": partial}, "samples": samples, "errors": errors}
    doc["goals"] = [
        {"goal": g, "measured": v, "met": ok} for g, v, ok in report.goals(samples, report.nbytes(doc))
    ]
    base.with_suffix(".json").write_text(json.dumps(doc, indent=1))
    base.with_suffix(".md").write_text(report.render_md(doc))


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        sys.exit(1)
