"""The benchmark rows. Each row runs on a freshly mounted target with an empty cache (cold) and,
where it has a warm phase, repeats on the same mount. A row returns {phase: Measure}.

Owns: what each row does and which metric it reports; CPU/bytes accounting around each phase.
Must not import: meshfs (the product is driven through the mount and its CLI only).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .server import Reva, download_ticket, upload_ticket
from .sysutil import BenchError, cpu_seconds, drop_dentries, drop_page_cache, io_wchar, run
from .targets import VPY, Curl, Local, Meshfs, Rclone, Target

PROBE = str(Path(__file__).resolve().parent / "probe.py")
MiB = 1 << 20
TARBALL = "src-requests-urllib3.tar"  # made by dataset.py


@dataclass(slots=True)
class Params:
    size_mb: int  # sequential/random rows: the big file
    sparse_mb: int  # sparse-read row: the very big file
    nfiles: int  # create/stat/unlink
    rand4k_mb: int  # bytes read by the 4 KiB random-read row
    rand256k_mb: int
    ls_sizes: tuple[int, ...] = (1000, 10000)
    timeout: float = 1800.0

    @property
    def big(self) -> str:
        return f"data/big-{self.size_mb}M.bin"

    @property
    def sparse(self) -> str:
        return f"data/sparse-{self.sparse_mb}M.bin"


@dataclass(slots=True)
class Measure:
    seconds: float
    cpu: float = 0.0  # daemon CPU seconds (utime+stime) during the phase
    srv_cpu: float = 0.0  # revad CPU seconds during the phase
    srv_sent: int = 0  # bytes revad wrote (sockets + log) during the phase
    extra: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {
            "seconds": self.seconds,
            "cpu": self.cpu,
            "srv_cpu": self.srv_cpu,
            "srv_sent": self.srv_sent,
            **self.extra,
        }


class Meter:
    """Counters of one target's daemon and of revad, read before and after a phase."""

    def __init__(self, t: Target, reva: Reva) -> None:
        self.t, self.reva = t, reva

    def snap(self) -> tuple[float, float, int]:
        rp = self.reva.pid
        return sum(cpu_seconds(p) for p in self.t.pids()), cpu_seconds(rp), io_wchar(rp)

    def phase(self, fn: Callable[[], float | dict[str, float] | None]) -> Measure:
        """fn returns its seconds, a dict with "seconds" and extras, or None (then the wall time counts);
        counters around it."""
        a = self.snap()
        t0 = time.perf_counter()
        r = fn()
        wall = time.perf_counter() - t0
        b = self.snap()
        extra = dict(r) if isinstance(r, dict) else {}
        secs = float(extra.pop("seconds", r if isinstance(r, float) else wall))
        return Measure(secs, b[0] - a[0], b[1] - a[1], b[2] - a[2], extra)


def probe(*args: str, timeout: float) -> dict[str, float]:
    out = run([VPY, PROBE, *args], timeout=timeout).out
    res: dict[str, float] = json.loads(out)
    return res


def _fio(path: Path, bs: str, io_mb: int, timeout: float) -> dict[str, float]:
    out = run(
        [
            "fio", "--name=rr", f"--filename={path}", "--rw=randread", f"--bs={bs}", "--direct=1",
            "--ioengine=psync", f"--io_size={io_mb}m", "--randrepeat=1", "--randseed=4242",
            "--invalidate=0", "--output-format=json",
        ],
        timeout=timeout,
    ).out  # fmt: skip
    js = json.loads(out[out.index("{") :])
    rd = js["jobs"][0]["read"]
    return {"seconds": rd["runtime"] / 1000.0, "iops": rd["iops"], "MBps": rd["bw_bytes"] / 1e6}


# -- rows -----------------------------------------------------------------------------------------


def seq_write(t: Target, m: Meter, p: Params) -> dict[str, Measure]:
    size = p.size_mb * MiB
    rel = f"w-{t.name}.bin"
    if isinstance(t, Curl):
        src = Path(t.work).parent / "data" / p.big  # the local copy of the data set
        tk = upload_ticket(t.reva, f"bench/{rel}", size)

        def up() -> float:
            r = run(
                ["curl", "-sS", "-f", "-X", "PUT", *tk.headers, "-T", str(src), tk.url], timeout=p.timeout
            )
            return r.seconds + tk.seconds

        ms = m.phase(up)
        t.reva.delete(f"bench/{rel}")
        return {"return": ms, "durable": ms}
    path = t.root / rel
    ret = m.phase(
        lambda: (
            run(
                ["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={p.size_mb}"], timeout=p.timeout
            ).seconds
        )
    )
    wait = m.phase(lambda: t.wait_durable(rel, size, p.timeout))
    durable = Measure(
        ret.seconds + wait.seconds,
        ret.cpu + wait.cpu,
        ret.srv_cpu + wait.srv_cpu,
        ret.srv_sent + wait.srv_sent,
    )
    path.unlink()
    if not isinstance(t, Local):
        t.wait_durable(rel, None, 300)
    return {"return": ret, "durable": durable}


def seq_read(t: Target, m: Meter, p: Params) -> dict[str, Measure]:
    if isinstance(t, Curl):
        tk = download_ticket(t.reva, f"bench/{p.big}")
        cold = m.phase(
            lambda: (
                run(["curl", "-sS", "-f", *tk.headers, "-o", "/dev/null", tk.url], timeout=p.timeout).seconds
                + tk.seconds
            )
        )
        out = t.work / "dl.bin"
        to_disk = m.phase(
            lambda: (
                run(["curl", "-sS", "-f", *tk.headers, "-o", str(out), tk.url], timeout=p.timeout).seconds
                + tk.seconds
            )
        )
        out.unlink(missing_ok=True)
        return {"cold": cold, "cold_to_disk": to_disk}
    path = t.root / p.big
    if isinstance(t, Local):
        drop_page_cache([path.resolve()])

    def dd() -> float:
        return run(["dd", f"if={path}", "of=/dev/null", "bs=1M"], timeout=p.timeout).seconds

    return {"cold": m.phase(dd), "warm": m.phase(dd)}


def _rand(
    bs: str, io_mb_of: Callable[[Params], int]
) -> Callable[[Target, Meter, Params], dict[str, Measure]]:
    def row(t: Target, m: Meter, p: Params) -> dict[str, Measure]:
        path = t.root / p.big
        if isinstance(t, Local):
            path = path.resolve()
        io_mb = io_mb_of(p)
        return {
            "cold": m.phase(lambda: _fio(path, bs, io_mb, p.timeout)),
            "warm": m.phase(lambda: _fio(path, bs, io_mb, p.timeout)),
        }

    return row


rand4k = _rand("4k", lambda p: p.rand4k_mb)
rand256k = _rand("256k", lambda p: p.rand256k_mb)


def ttfb(t: Target, m: Meter, p: Params) -> dict[str, Measure]:
    if isinstance(t, Curl):

        def stat_get() -> float:
            tk = download_ticket(t.reva, f"bench/{p.sparse}", stat_first=True)
            r = run(["curl", "-sS", "-f", *tk.headers, "-r", "0-0", "-o", "/dev/null", tk.url], timeout=60)
            return tk.seconds + r.seconds

        return {"cold": m.phase(stat_get)}
    path = t.root / p.sparse
    if isinstance(t, Local):
        path = path.resolve()
    return {"cold": m.phase(lambda: probe("ttfb", str(path), timeout=120))}


def meta(t: Target, m: Meter, p: Params) -> dict[str, Measure]:
    d = t.root / f"meta-{t.name}"
    whole = m.phase(lambda: probe("meta", str(d), str(p.nfiles), timeout=p.timeout))
    ph = whole.extra
    # split the daemon CPU by phase time (one child process ran all three)
    total = sum(ph.values()) or 1.0
    out = {}
    for k in ("create", "stat", "unlink"):
        f = ph[k] / total
        out[k] = Measure(
            ph[k], whole.cpu * f, whole.srv_cpu * f, int(whole.srv_sent * f), {"per_s": p.nfiles / ph[k]}
        )
    try:
        d.rmdir()
    except OSError:  # rclone may still list unlinked files whose upload is pending
        shutil.rmtree(d, ignore_errors=True)
    if isinstance(t, Meshfs):
        t.wait_durable("", None, 600)
    return out


def ls(t: Target, m: Meter, p: Params) -> dict[str, Measure]:
    out: dict[str, Measure] = {}
    if isinstance(t, Local):
        drop_dentries()
    dirs = {n: t.root / f"data/d{n}" for n in p.ls_sizes}
    for n, d in dirs.items():

        def cold(d: Path = d) -> float:
            return run(["ls", "-l", str(d)], timeout=600, stdout_null=True).seconds

        out[f"{n}.cold"] = m.phase(cold)
    for n, d in dirs.items():
        js = t.work / "hyperfine.json"

        def hf(d: Path = d, js: Path = js) -> float:
            run(
                ["hyperfine", "-N", "--warmup", "1", "--runs", "5", "--export-json", str(js), f"ls -l {d}"],
                timeout=600,
            )
            res = json.loads(js.read_text())["results"][0]
            return float(res["median"])

        out[f"{n}.warm"] = m.phase(hf)
    return out


def untar(t: Target, m: Meter, p: Params) -> dict[str, Measure]:
    tarball = Path(t.work).parent / "data" / TARBALL
    d = t.root / f"untar-{t.name}"
    d.mkdir()
    out = {
        "untar": m.phase(lambda: run(["tar", "xf", str(tarball), "-C", str(d)], timeout=p.timeout).seconds)
    }
    out["git_status"] = m.phase(
        lambda: (
            run(
                ["git", "-c", "safe.directory=*", "-C", str(d), "status", "--porcelain"], timeout=p.timeout
            ).seconds
        )
    )
    if isinstance(t, Meshfs):
        out["untar_durable"] = m.phase(lambda: t.wait_durable("", None, p.timeout))
    elif isinstance(t, Rclone):
        out["untar_durable"] = m.phase(lambda: t.wait_durable_all(p.timeout))
    shutil.rmtree(d, ignore_errors=True)
    if isinstance(t, Meshfs):
        t.wait_durable("", None, 600)
    return out


def sparse(t: Target, m: Meter, p: Params) -> dict[str, Measure]:
    path = t.root / p.sparse
    if isinstance(t, Local):
        path = path.resolve()
        drop_page_cache([path])
    before = t.fetched()
    ms = m.phase(lambda: probe("sparse", str(path), "0.01", "65536", "1234", timeout=p.timeout))
    after = t.fetched()
    if before is not None and after is not None:
        ms.extra["fetched"] = after - before
    return {"read": ms}


ROWS: dict[str, Callable[[Target, Meter, Params], dict[str, Measure]]] = {
    "seq_write": seq_write,
    "seq_read": seq_read,
    "rand4k": rand4k,
    "rand256k": rand256k,
    "ttfb": ttfb,
    "meta": meta,
    "ls": ls,
    "untar": untar,
    "sparse": sparse,
}
CURL_ROWS = {"seq_write", "seq_read", "ttfb"}


def applies(row: str, t: Target) -> bool:
    return row in CURL_ROWS if isinstance(t, Curl) else True


def check_row(row: str) -> None:
    if row not in ROWS:
        raise BenchError(f"unknown row {row!r} (one of {', '.join(ROWS)})")
