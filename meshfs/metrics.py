"""Prometheus metrics of one mount: request counters and latency histograms, plus gauges read at scrape
time, served as text format 0.0.4 on 127.0.0.1:`metrics_port` (GET /metrics).

Owns: `Metrics` (fed by MeshOps.observe once per FUSE request), the rendering of every metric, and
the small trio HTTP server (`serve_metrics`, started in the daemon nursery by MeshFilesystem.start).
The mount is read duck-typed (operations, writeback, store, locks, gateway, credentials), so this
module does not import vfs/ (which imports it), nor grpc, cs3apis, urllib3, cache/ or fuse/.
"""

from __future__ import annotations

import bisect
import errno as errno_mod
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from meshfs.config import ConfigError

log = logging.getLogger("meshfs.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# request latency buckets, seconds: a page-cache-like hit is ~0.1 ms, a server round trip ~1-50 ms,
# an upload backpressure wait or a blocking lock up to minutes
LATENCY_BUCKETS: tuple[float, ...] = (
    *(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5),
    *(1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
_REQUEST_LIMIT = 8192  # bytes of request head we read
_REQUEST_TIMEOUT = 5.0  # seconds a client gets to send its request


def errno_name(code: int) -> str:
    """The errno label: "OK" for 0, the symbolic name (ENOENT) otherwise, or the number when it has none."""
    if code == 0:
        return "OK"
    return errno_mod.errorcode.get(code, str(code))


@dataclass(slots=True)
class Histogram:
    """Cumulative-bucket histogram of one op's latencies."""

    bounds: Sequence[float]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.bounds)

    def observe(self, value: float) -> None:
        self.total += value
        self.count += 1
        i = bisect.bisect_left(self.bounds, value)  # the first bound >= value ("le")
        if i < len(self.counts):
            self.counts[i] += 1

    def cumulative(self) -> list[int]:
        out, running = [], 0
        for c in self.counts:
            running += c
            out.append(running)
        return out


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _num(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


class Metrics:
    """What one mount counts. `observe` is MeshOps' per-request hook; `render(fs)` is the text page."""

    def __init__(self, buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.buckets = tuple(buckets)
        self.requests: dict[tuple[str, str], int] = {}
        self.latency: dict[str, Histogram] = {}

    def observe(self, op: str, code: int, seconds: float) -> None:
        key = (op, errno_name(code))
        self.requests[key] = self.requests.get(key, 0) + 1
        hist = self.latency.get(op)
        if hist is None:
            hist = self.latency[op] = Histogram(self.buckets)
        hist.observe(max(0.0, seconds))

    def render(self, fs: Any = None) -> str:
        """The exposition text (format 0.0.4) of the counters and of `fs`'s state right now."""
        lines: list[str] = []

        def family(name: str, kind: str, help_text: str, samples: Iterable[tuple[str, str, float]]) -> None:
            rows = list(samples)
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(f"{name}{suffix}{labels} {_num(value)}" for suffix, labels, value in rows)

        def one(name: str, kind: str, help_text: str, value: float | None) -> None:
            if value is not None:
                family(name, kind, help_text, [("", "", value)])

        family(
            "meshfs_requests_total",
            "counter",
            "FUSE requests answered, by operation and errno (OK for success).",
            (("", _labels(op=op, errno=err), n) for (op, err), n in sorted(self.requests.items())),
        )
        hist_rows: list[tuple[str, str, float]] = []
        for op, hist in sorted(self.latency.items()):
            for bound, cum in zip(hist.bounds, hist.cumulative(), strict=True):
                hist_rows.append(("_bucket", _labels(op=op, le=_num(float(bound))), cum))
            hist_rows.append(("_bucket", _labels(op=op, le="+Inf"), hist.count))
            hist_rows.append(("_sum", _labels(op=op), hist.total))
            hist_rows.append(("_count", _labels(op=op), hist.count))
        family(
            "meshfs_request_duration_seconds",
            "histogram",
            "Time from a FUSE request to its answer, by operation.",
            hist_rows,
        )
        if fs is not None:
            self._render_state(fs, one)
        return "\n".join(lines) + "\n"

    @staticmethod
    def _render_state(fs: Any, one: Callable[[str, str, str, float | None], None]) -> None:
        try:
            ops = fs.operations
        except (AttributeError, RuntimeError):  # not started yet
            ops = None
        wb = getattr(fs, "writeback", None)
        store = getattr(fs, "store", None)
        gateway = getattr(fs, "gateway", None)
        creds = getattr(fs, "credentials", None)
        locks = getattr(fs, "locks", None) if ops is not None else None

        down = getattr(ops, "bytes_down", None)
        one("meshfs_downloaded_bytes_total", "counter", "Bytes fetched from the server.", down)
        one(
            "meshfs_uploaded_bytes_total",
            "counter",
            "Bytes stored on the server by uploads.",
            getattr(wb, "uploaded_bytes", None),
        )
        one(
            "meshfs_cache_miss_bytes_total",
            "counter",
            "Bytes that were not in the cache and were fetched from the server.",
            down,
        )
        one(
            "meshfs_cache_hit_bytes_total",
            "counter",
            "Bytes of read requests served from the cache.",
            getattr(ops, "cache_hit_bytes", None),
        )
        one(
            "meshfs_read_bytes_total",
            "counter",
            "Bytes returned to read requests.",
            getattr(ops, "bytes_read", None),
        )
        if store is not None:
            stats = store.stats()
            one(
                "meshfs_cache_used_bytes",
                "gauge",
                "Bytes of file data in the cache (dirty included).",
                stats.used,
            )
            one(
                "meshfs_cache_dirty_bytes", "gauge", "Bytes in the cache not yet uploaded.", stats.dirty_bytes
            )
            one("meshfs_cache_limit_bytes", "gauge", "The configured cache size.", stats.limit)
            one("meshfs_cache_files", "gauge", "Files with a cache entry.", stats.files)
        if wb is not None:
            pending = wb.status()
            one(
                "meshfs_upload_queue_depth",
                "gauge",
                "Files waiting to be uploaded (or uploading).",
                len(pending),
            )
            one(
                "meshfs_uploads_failing",
                "gauge",
                "Pending uploads whose last attempt failed.",
                sum(1 for p in pending if p.get("state") == "failed"),
            )
            one("meshfs_uploads_done_total", "counter", "Uploads completed.", wb.uploads_done)
            one(
                "meshfs_uploads_failed_total",
                "counter",
                "Upload attempts that failed (retried later).",
                getattr(wb, "uploads_failed", None),
            )
            one(
                "meshfs_conflicts_total",
                "counter",
                "Uploads refused because the server copy changed; kept as conflict copies.",
                len(wb.conflicts),
            )
        if locks is not None:
            held = [lease for lease in locks.status() if not lease.get("lost")]
            one(
                "meshfs_locks_held",
                "gauge",
                "CS3 locks this mount holds for local flock/fcntl locks.",
                len(held),
            )
        if gateway is not None:
            one(
                "meshfs_logins_total",
                "counter",
                "Successful logins (first one and token refreshes).",
                getattr(gateway, "auth_count", None),
            )
        if creds is not None and hasattr(creds, "status"):
            auth = creds.status()
            one(
                "meshfs_token_expiry_timestamp_seconds",
                "gauge",
                "Unix time the bearer token in use expires.",
                auth.get("token_expires"),
            )
            one(
                "meshfs_token_command_runs_total",
                "counter",
                "Runs of token_command.",
                auth.get("command_runs"),
            )


# ------------------------------------------------------------------------------------ the server


async def _read_head(stream: trio.abc.Stream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data and b"\n\n" not in data and len(data) < _REQUEST_LIMIT:
        chunk = await stream.receive_some(_REQUEST_LIMIT)
        if not chunk:
            break
        data += chunk
    return data


def _response(status: str, body: str, content_type: str = "text/plain; charset=utf-8") -> bytes:
    payload = body.encode("utf-8")
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(payload)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + payload


async def _handle(stream: trio.SocketStream, metrics: Metrics, fs: Any) -> None:
    try:
        with trio.move_on_after(_REQUEST_TIMEOUT):
            head = await _read_head(stream)
            request_line = head.split(b"\r\n", 1)[0].split(b"\n", 1)[0].decode("latin-1")
            parts = request_line.split()
            if len(parts) < 2:
                reply = _response("400 Bad Request", "bad request\n")
            elif parts[0] not in ("GET", "HEAD"):
                reply = _response("405 Method Not Allowed", "only GET\n")
            elif parts[1].split("?", 1)[0] != "/metrics":
                reply = _response("404 Not Found", "try /metrics\n")
            else:
                try:
                    reply = _response("200 OK", metrics.render(fs), CONTENT_TYPE)
                except Exception:
                    log.exception("metrics: rendering failed")
                    reply = _response("500 Internal Server Error", "rendering failed (see the log)\n")
                if parts[0] == "HEAD":
                    reply = reply.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
            await stream.send_all(reply)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        await stream.aclose()


async def serve_metrics(
    fs: Any,
    port: int,
    *,
    host: str = "127.0.0.1",
    metrics: Metrics | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `fs`'s metrics on http://host:port/metrics until cancelled; `task_status.started(port)`
    reports the port actually bound (useful with port 0). Hooks `fs.operations.observe` (keeping an
    observer already there). ConfigError (one line) when the port cannot be bound."""
    metrics = metrics or Metrics()
    ops = getattr(fs, "operations", None)
    if ops is not None:
        previous: Callable[[str, int, float], None] | None = ops.observe

        def observe(op: str, code: int, seconds: float) -> None:
            metrics.observe(op, code, seconds)
            if previous is not None:
                previous(op, code, seconds)

        ops.observe = observe
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as e:
        raise ConfigError(
            f"config: metrics_port: cannot listen on {host}:{port}: {e.strerror or e}"
        ) from None
    bound = listeners[0].socket.getsockname()[1]
    log.info("metrics on http://%s:%d/metrics", host, bound)

    async def handler(stream: trio.SocketStream) -> None:
        await _handle(stream, metrics, fs)

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handler, listeners)
        task_status.started(bound)
