"""meshfs.metrics without a mount: the text page parses with prometheus_client's parser, counters and
histograms add up, the HTTP endpoint answers GET /metrics only, a port in use is one line.

The "mount" here is a small stand-in object with the attributes metrics reads (a unit test).
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from meshfs.config import ConfigError
from meshfs.metrics import CONTENT_TYPE, Metrics, errno_name, serve_metrics


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(fams: dict[str, Any], family: str, name: str, **labels: str) -> float:
    for s in fams[family].samples:
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    raise KeyError(f"{name}{labels} not in {family}")


@dataclass
class Stats:
    limit: int = 1000
    used: int = 300
    dirty_bytes: int = 100
    files: int = 3
    dirty_files: int = 1


@dataclass
class Ops:
    observe: Any = None
    bytes_down: int = 4096


@dataclass
class WriteBack:
    uploaded_bytes: int = 10
    uploads_done: int = 2
    conflicts: list[object] = field(default_factory=lambda: [object()])

    def status(self) -> list[dict[str, object]]:
        return [{"state": "failed"}, {"state": "dirty"}]


class Store:
    def stats(self) -> Stats:
        return Stats()


class Locks:
    def status(self) -> list[dict[str, object]]:
        return [{"lost": False}, {"lost": True}]


class FakeMount:
    def __init__(self) -> None:
        self.operations = Ops()
        self.writeback = WriteBack()
        self.store = Store()
        self.locks = Locks()


def test_errno_names() -> None:
    assert errno_name(0) == "OK" and errno_name(errno.ENOENT) == "ENOENT" and errno_name(99999) == "99999"


def test_counters_and_histograms_parse_and_add_up() -> None:
    m = Metrics()
    for seconds in (0.00005, 0.003, 0.003, 2.0, 100.0):
        m.observe("read", 0, seconds)
    m.observe("lookup", errno.ENOENT, 0.001)
    m.observe('we"ird\\op', errno.EIO, 0.5)
    fams = families(m.render(FakeMount()))
    assert sample(fams, "meshfs_requests", "meshfs_requests_total", op="read", errno="OK") == 5
    assert sample(fams, "meshfs_requests", "meshfs_requests_total", op="lookup", errno="ENOENT") == 1
    assert sample(fams, "meshfs_requests", "meshfs_requests_total", op='we"ird\\op', errno="EIO") == 1
    hist = "meshfs_request_duration_seconds"
    assert fams[hist].type == "histogram"
    assert sample(fams, hist, hist + "_count", op="read") == 5
    assert sample(fams, hist, hist + "_sum", op="read") == pytest.approx(102.00605)
    assert sample(fams, hist, hist + "_bucket", op="read", le="0.0001") == 1
    assert sample(fams, hist, hist + "_bucket", op="read", le="0.005") == 3
    assert sample(fams, hist, hist + "_bucket", op="read", le="60.0") == 4
    assert sample(fams, hist, hist + "_bucket", op="read", le="+Inf") == 5
    buckets = [s.value for s in fams[hist].samples if s.name.endswith("_bucket") and s.labels["op"] == "read"]
    assert buckets == sorted(buckets)  # cumulative


def test_mount_state_gauges() -> None:
    fams = families(Metrics().render(FakeMount()))
    assert sample(fams, "meshfs_cache_used_bytes", "meshfs_cache_used_bytes") == 300
    assert sample(fams, "meshfs_cache_dirty_bytes", "meshfs_cache_dirty_bytes") == 100
    assert sample(fams, "meshfs_upload_queue_depth", "meshfs_upload_queue_depth") == 2
    assert sample(fams, "meshfs_uploads_failing", "meshfs_uploads_failing") == 1
    assert sample(fams, "meshfs_uploads_done", "meshfs_uploads_done_total") == 2
    assert sample(fams, "meshfs_uploaded_bytes", "meshfs_uploaded_bytes_total") == 10
    assert sample(fams, "meshfs_downloaded_bytes", "meshfs_downloaded_bytes_total") == 4096
    assert sample(fams, "meshfs_cache_miss_bytes", "meshfs_cache_miss_bytes_total") == 4096
    assert sample(fams, "meshfs_locks_held", "meshfs_locks_held") == 1
    assert sample(fams, "meshfs_conflicts", "meshfs_conflicts_total") == 1
    assert "meshfs_cache_hit_bytes" not in fams  # MeshOps does not count it (yet): not invented


async def http_get(port: int, path: str, method: str = "GET") -> tuple[str, dict[str, str], str]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                data += chunk
    head, _, body = data.decode().partition("\r\n\r\n")
    status, *lines = head.split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return status, headers, body


async def test_endpoint_serves_metrics_and_hooks_observe() -> None:
    fs = FakeMount()
    seen: list[tuple[str, int, float]] = []
    fs.operations.observe = lambda *a: seen.append(a)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_metrics, fs, 0)
        fs.operations.observe("getattr", 0, 0.001)  # the hook is chained, not replaced
        assert seen == [("getattr", 0, 0.001)]
        status, headers, body = await http_get(port, "/metrics")
        assert status == "HTTP/1.1 200 OK" and headers["content-type"] == CONTENT_TYPE
        assert int(headers["content-length"]) == len(body.encode())
        fams = families(body)
        assert sample(fams, "meshfs_requests", "meshfs_requests_total", op="getattr", errno="OK") == 1
        assert (await http_get(port, "/"))[0] == "HTTP/1.1 404 Not Found"
        assert (await http_get(port, "/metrics", "POST"))[0] == "HTTP/1.1 405 Method Not Allowed"
        status, _, body = await http_get(port, "/metrics", "HEAD")
        assert status == "HTTP/1.1 200 OK" and body == ""
        nursery.cancel_scope.cancel()


async def test_only_loopback_and_port_in_use_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError) as err:
            await serve_metrics(FakeMount(), port)
        assert (
            str(err.value)
            == f"config: metrics_port: cannot listen on 127.0.0.1:{port}: Address already in use"
        )
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_metrics, FakeMount(), 0)
        assert listening_on(port) == {"127.0.0.1"}
        nursery.cancel_scope.cancel()


def listening_on(port: int) -> set[str]:
    """The local addresses with a TCP socket in LISTEN on `port` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, encoding="ascii") as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                hex_addr, hex_port = local.split(":")
                if state == "0A" and int(hex_port, 16) == port:
                    raw = bytes.fromhex(hex_addr)
                    if len(raw) == 4:
                        found.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                    else:
                        words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                        found.add(socket.inet_ntop(socket.AF_INET6, words))
    return found
