"""Soak (issue 9, `make test-long`): several processes doing mixed operations through the mount for a
bounded time. Every MESHFS_SOAK_CHECK_SECONDS (default 60) the workers pause at an operation boundary,
the mount syncs, and every worker's files are compared with the server (WebDAV listing + SHA-256 of each
file, no meshfs involved); at the end a second mount must see the same. The daemon's RSS is sampled
every few seconds: it must stay bounded. MESHFS_SOAK_SECONDS sets the length (default 600).

The RSS series and the check results are printed and written to .cache/test-results/soak.json, the
daemon's log is kept beside it (soak-daemon.log; anomalies carry wall-clock times to match its lines).
Knobs to chase a bug faster: MESHFS_SOAK_WORKERS (default 4), MESHFS_SOAK_NAMES (names per folder, 30),
MESHFS_SOAK_FORGET_SECONDS (drop the kernel's unused inodes that often, as memory pressure does; off).
"""

from __future__ import annotations

import collections
import hashlib
import json
import multiprocessing as mp
import os
import queue
import random
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hostilekit import ServerView, rss_kib

pytestmark = [pytest.mark.reva, pytest.mark.fuse, pytest.mark.long]

REPO = Path(__file__).resolve().parents[2]
# knobs to reproduce faster while chasing a bug (the soak itself runs with the defaults)
WORKERS = int(os.environ.get("MESHFS_SOAK_WORKERS", "4"))
NAMES = int(os.environ.get("MESHFS_SOAK_NAMES", "30"))  # names per worker folder: f0 .. f<NAMES-1>
SIZES = [0, 1, 100, 4096, 70000, 300000]
# every so many seconds the kernel is made to forget every unused inode (drop_caches 2, as memory pressure
# does): the daemon must serve the names again correctly (0 = off; global to the machine, so opt-in)
FORGET_EVERY = float(os.environ.get("MESHFS_SOAK_FORGET_SECONDS", "0"))


def _view(mine: Path) -> dict[str, str]:
    """What the mount shows in a worker's folder (meshfs's own transient names left out)."""
    return {
        n: hashlib.sha256((mine / n).read_bytes()).hexdigest()
        for n in os.listdir(mine)
        if not n.startswith(".meshfs-")
    }


def _worker(root: str, seed: int, deadline: float, out: Any, pause: Any, go: Any) -> None:
    """Random writes, reads, unlinks, renames (also over existing names) and listings in its own folder.

    A wrong answer (content, listing) or an unexpected error is reported as an anomaly with the last ops;
    then the worker takes the mount's current view as its expectation and goes on, so that one product
    bug does not end the soak (the test fails at the end, listing every anomaly)."""
    rnd = random.Random(seed)
    mine = Path(root) / f"w{seed}"
    mine.mkdir()
    state: dict[str, str] = {}
    recent: collections.deque[str] = collections.deque(maxlen=8)  # for the anomaly messages
    ops = 0
    resync = False
    try:
        while time.time() < deadline:
            if pause.is_set():  # a check: report what the server must hold, wait until it is done
                out.put(("snap", seed, ops, dict(state)))
                if not go.wait(900):
                    raise AssertionError("the periodic check never finished")
                continue
            if resync:
                try:
                    state, resync = _view(mine), False
                except OSError as exc:
                    out.put(("anomaly", seed, ops, f"resync: {exc!r} on {exc.filename}"))
                    time.sleep(0.5)  # pacing of the retry, not synchronisation
                    continue
            op = rnd.random()
            name = f"f{rnd.randrange(NAMES)}"
            p = mine / name
            what = "listdir"
            try:
                if op < 0.45:
                    data = rnd.randbytes(rnd.choice(SIZES))
                    what = f"write {name} {len(data)}"
                    p.write_bytes(data)
                    state[name] = hashlib.sha256(data).hexdigest()
                elif op < 0.7 and name in state:
                    what = f"read {name}"
                    got = p.read_bytes()
                    if hashlib.sha256(got).hexdigest() != state[name]:
                        raise AssertionError(f"content differs ({len(got)} bytes read)")
                elif op < 0.8 and name in state:
                    what = f"unlink {name}"
                    p.unlink()
                    del state[name]
                elif op < 0.9 and name in state:
                    other = f"f{rnd.randrange(NAMES)}"
                    what = f"rename {name} {other}" + (" (over an existing file)" if other in state else "")
                    p.rename(mine / other)
                    state[other] = state.pop(name)
                else:
                    names = set(os.listdir(mine))
                    if names != set(state):
                        raise AssertionError(
                            f"listing differs: extra {sorted(names - set(state))}, "
                            f"missing {sorted(set(state) - names)}"
                        )
            except (OSError, AssertionError) as exc:
                stamp = time.strftime("%H:%M:%S") + f".{int(time.time() * 1000) % 1000:03d}"
                text = f"w{seed} {what}: {exc!r}; at {stamp}; before: {list(recent)}"
                out.put(("anomaly", seed, ops, text))
                resync = True
            recent.append(what)
            ops += 1
    except BaseException as exc:
        out.put(("error", seed, ops, repr(exc)))
        raise
    out.put(("done", seed, ops, state))


def _group(anomalies: list[tuple[float, str]]) -> dict[str, tuple[int, float, str]]:
    """Anomalies by kind (operation + error, names and ids blanked): count, first time, first text."""
    kinds: dict[str, tuple[int, float, str]] = {}
    for at, text in anomalies:
        head = re.split(r"; (?:at |before:)", text)[0]
        kind = re.sub(r"\bf\d+\b", "F", re.sub(r"^w\d+ ", "", head))
        kind = re.sub(
            r"[0-9a-f]{12}", "X", re.sub(r"\d+ bytes", "N bytes", re.sub(r"(write F) \d+", r"\1", kind))
        )
        n, first_at, example = kinds.get(kind, (0, at, text))
        kinds[kind] = (n + 1, first_at, example)
    return kinds


def _compare(server: ServerView, rel: str, state: dict[str, str]) -> list[str]:
    """Differences between a worker's expected files and the server's folder (empty = equal)."""
    names = server.listdir(rel)
    bad = [f"{rel}: listing {names} != expected {sorted(state)}"] if names != sorted(state) else []
    for n in sorted(set(names) & set(state)):
        if server.sha256(f"{rel}/{n}") != state[n]:
            bad.append(f"{rel}/{n}: content differs on the server")
    return bad


# the soak's own length plus room for the checks, the final sync and the second mount (pytest-timeout
# would otherwise stop it at the suite default)
@pytest.mark.timeout(int(float(os.environ.get("MESHFS_SOAK_SECONDS", "600"))) + 1500)
def test_soak_mixed_operations_with_bounded_memory(mount, work: Path, tmp_path: Path, reva) -> None:  # type: ignore[no-untyped-def]
    from conftest import Mount, meshfs  # type: ignore[import-not-found]

    seconds = float(os.environ.get("MESHFS_SOAK_SECONDS", "600"))
    check_every = float(os.environ.get("MESHFS_SOAK_CHECK_SECONDS", "60"))
    pid = mount.pid()
    assert pid
    server = ServerView(reva.http_url, "einstein", mount.password)
    rel = os.fspath(work.relative_to(mount.mp / "home"))
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    pause, go = ctx.Event(), ctx.Event()
    t0 = time.time()
    deadline = t0 + seconds
    procs = [
        ctx.Process(target=_worker, args=(os.fspath(work), s, deadline, out, pause, go), name=f"w{s}")
        for s in range(WORKERS)
    ]
    for p in procs:
        p.start()
    forgetting = threading.Event()
    if FORGET_EVERY > 0:
        threading.Thread(target=_forget_loop, args=(forgetting, FORGET_EVERY), daemon=True).start()
    rss: list[tuple[float, int]] = []
    checks: list[dict[str, Any]] = []
    final: dict[int, tuple[int, dict[str, str]]] = {}
    errors: list[str] = []
    anomalies: list[tuple[float, str]] = []
    next_check = t0 + check_every
    try:
        while len(final) + len(errors) < WORKERS:
            rss.append((round(time.time() - t0, 1), rss_kib(pid)))
            if time.time() >= next_check and time.time() < deadline - 5:
                checks.append(
                    _periodic_check(mount, server, rel, out, pause, go, final, errors, anomalies, t0)
                )
                c = checks[-1]
                print(  # progress, in case a later step dies
                    f"\nsoak: check at {c['at']:.0f}s: {c['files']} files, {c['seconds']:.1f}s, "
                    f"{len(c['differences'])} differences; RSS {rss[-1][1]} KiB; "
                    f"{len(anomalies)} anomalies so far",
                    flush=True,
                )
                next_check = time.time() + check_every
                continue
            try:
                kind, seed, ops, payload = out.get(timeout=5.0)  # also the sampling period
            except queue.Empty:
                if time.time() > deadline + 600:
                    raise AssertionError("workers still running 600 s after the deadline") from None
                continue
            if kind == "done":
                final[seed] = (ops, payload)
            elif kind == "anomaly":
                anomalies.append((round(time.time() - t0, 1), payload[:2000]))
            elif kind == "error":
                errors.append(f"worker {seed} after {ops} ops: {payload}")
    finally:
        forgetting.set()
        go.set()
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    rss.append((round(time.time() - t0, 1), rss_kib(pid)))
    # everything below is recorded first and asserted at the end: a failure never hides the RSS series
    final_bad: list[str] = list(errors)
    if not all(p.exitcode == 0 for p in procs):
        final_bad.append(f"worker exit codes {[p.exitcode for p in procs]}")
    done = meshfs("sync", os.fspath(mount.mp / "home" / rel), "--timeout", "600", timeout=630)
    if done.returncode != 0:
        final_bad.append(f"final sync failed: {done.stderr.strip()}")
    alive = rss_kib(pid) > 0
    if not alive:
        final_bad.append("the daemon is gone: " + _last_error(mount))
    else:
        for seed, (_ops, state) in final.items():
            try:
                final_bad += _compare(server, f"{rel}/w{seed}", state)
            except OSError as exc:  # urllib errors included
                final_bad.append(f"server view of w{seed}: {exc!r}")
        # and another node (a second mount, cold cache) sees the same
        other = Mount(tmp_path / "other", reva)
        try:
            for seed, (_ops, state) in final.items():
                d = other.mp / "home" / rel / f"w{seed}"
                try:
                    got = {n: hashlib.sha256((d / n).read_bytes()).hexdigest() for n in os.listdir(d)}
                except OSError as exc:
                    final_bad.append(f"second mount: w{seed}: {exc!r}")
                    continue
                if got != state:
                    final_bad.append(f"second mount: w{seed} differs: {_diff(got, state)}")
        finally:
            other.close()
    total_ops = sum(ops for ops, _ in final.values())
    rss = [(t, v) for t, v in rss if v > 0] or [(0.0, 0)]
    first = max(v for t, v in rss if t <= max(30.0, seconds / 10))
    last = max(v for _, v in rss[-max(1, len(rss) // 5) :])
    peak = max(v for _, v in rss)
    report = {
        "seconds": seconds,
        "workers": WORKERS,
        "ops": total_ops,
        "rss_kib": rss,
        "rss_start_kib": rss[0][1],
        "rss_early_kib": first,
        "rss_late_kib": last,
        "rss_peak_kib": peak,
        "rss_end_kib": rss[-1][1],
        "checks": checks,
        "final_differences": final_bad,
        "anomalies": anomalies,
    }
    minute = [f"{t:.0f}s:{v // 1024}M" for t, v in rss[:: max(1, len(rss) // 12)]]
    print(f"\nsoak: {total_ops} ops by {WORKERS} workers in {seconds:.0f}s; RSS series {' '.join(minute)}")
    print(f"soak: RSS start {rss[0][1]} KiB, early {first}, peak {peak}, late {last}, end {rss[-1][1]} KiB")
    for c in checks:
        n_diff = len(c["differences"])
        print(f"soak: check at {c['at']:.0f}s: {c['files']} files, {c['seconds']:.1f}s, {n_diff} differences")
    kinds = _group(anomalies)
    report["anomaly_kinds"] = [
        {"kind": k, "count": n, "first_at": at, "first": ex} for k, (n, at, ex) in kinds.items()
    ]
    print(f"soak: {len(anomalies)} anomalies (wrong answers or errors through the mount), {len(kinds)} kinds")
    for kind, (n, at, example) in kinds.items():
        print(f"soak: {n} x {kind}; first at {at:.0f}s: {example}")
    out_file = REPO / ".cache" / "test-results" / "soak.json"
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps(report, indent=1))
    print(f"soak: details in {out_file}")
    log = Path(mount.cache) / "daemon.log"
    if log.exists():  # the daemon's side of any anomaly (anomalies carry wall-clock times to match)
        kept = out_file.with_name("soak-daemon.log")
        kept.write_bytes(log.read_bytes())
        print(f"soak: daemon log kept in {kept}")
    assert all(not c["differences"] for c in checks), [c["differences"] for c in checks]
    assert not final_bad, final_bad
    assert not anomalies, f"{len(anomalies)} anomalies, first: {anomalies[:5]}"
    assert len(checks) >= min(3, int(seconds // check_every) - 1), f"only {len(checks)} periodic checks ran"
    assert last < first * 1.5 + 50_000, f"daemon RSS grew from {first} KiB to {last} KiB"


def _forget_loop(stop: threading.Event, every: float) -> None:
    """drop_caches 2 every `every` seconds until `stop`: the kernel sends FORGET for unused inodes."""
    while not stop.wait(every):
        try:
            Path("/proc/sys/vm/drop_caches").write_text("2\n")
        except OSError as exc:  # not root: say so once and stop
            print(f"soak: cannot drop kernel caches ({exc}); MESHFS_SOAK_FORGET_SECONDS ignored")
            return


def _diff(got: dict[str, str], want: dict[str, str]) -> str:
    extra, missing = sorted(set(got) - set(want)), sorted(set(want) - set(got))
    changed = sorted(n for n in set(got) & set(want) if got[n] != want[n])
    return f"extra {extra}, missing {missing}, other content {changed}"


def _last_error(mount) -> str:  # type: ignore[no-untyped-def]
    log = Path(mount.cache) / "daemon.log"
    lines = (
        [ln for ln in log.read_text(errors="replace").splitlines() if " ERROR " in ln] if log.exists() else []
    )
    return lines[-1] if lines else "no ERROR line in daemon.log"


def _periodic_check(  # type: ignore[no-untyped-def]
    mount,
    server: ServerView,
    rel: str,
    out: Any,
    pause: Any,
    go: Any,
    final: dict[int, tuple[int, dict[str, str]]],
    errors: list[str],
    anomalies: list[tuple[float, str]],
    t0: float,
) -> dict[str, Any]:
    """Pause the workers, sync the mount, compare every worker's folder with the server, resume."""
    from conftest import meshfs  # type: ignore[import-not-found]

    started = time.time()
    go.clear()
    pause.set()
    snaps: dict[int, dict[str, str]] = {seed: state for seed, (_ops, state) in final.items()}
    try:
        limit = time.time() + 300
        while len(snaps) + len(errors) < WORKERS:
            kind, seed, ops, payload = out.get(timeout=max(0.1, limit - time.time()))
            if kind == "done":
                final[seed] = (ops, payload)
                snaps[seed] = payload
            elif kind == "snap":
                snaps[seed] = payload
            elif kind == "anomaly":
                anomalies.append((round(time.time() - t0, 1), payload[:2000]))
            else:
                errors.append(f"worker {seed} after {ops} ops: {payload}")
        done = meshfs("sync", os.fspath(mount.mp / "home" / rel), "--timeout", "300", timeout=330)
        differences = [] if done.returncode == 0 else [f"sync failed: {done.stderr.strip()}"]
        for seed, state in sorted(snaps.items()):
            try:
                differences += _compare(server, f"{rel}/w{seed}", state)
            except OSError as exc:
                differences.append(f"server view of w{seed}: {exc!r}")
    finally:
        pause.clear()
        go.set()
    return {
        "at": started - t0,
        "seconds": time.time() - started,
        "files": sum(len(s) for s in snaps.values()),
        "differences": differences,
    }
