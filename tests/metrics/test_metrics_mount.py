"""The metrics endpoint of a real mount (through the CLI, against the private dev Reva): scraped,
parsed with prometheus_client's parser, and its counters move after file operations.
"""

from __future__ import annotations

import os
import socket
import urllib.request
import uuid
from typing import Any

import pytest
from authrig import MountRig, one_line, webdav, write_secret
from prometheus_client.parser import text_string_to_metric_families
from rig import free_port

pytestmark = [pytest.mark.fuse, pytest.mark.reva]



def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = response.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def mount_with_metrics(rig: MountRig, *options: str) -> int:
    port = free_port()
    password = write_secret(rig.root / "password", rig.stack.password)
    done = rig.mount(
        "--password-file", os.fspath(password), "-o", ",".join([f"metrics_port={port}", *options])
    )
    assert done.returncode == 0, done.stderr
    return port


def test_metrics_move_after_file_operations(mrig: MountRig) -> None:
    # passthrough off: a new file's WRITEs would go to the cache file without reaching the daemon
    port = mount_with_metrics(mrig, "upload_delay=0s", "passthrough=false")
    written = f"metrics-w-{uuid.uuid4().hex[:8]}.bin"
    remote = f"metrics-r-{uuid.uuid4().hex[:8]}.bin"
    remote_body = os.urandom(300_000)
    assert webdav(mrig.stack, "PUT", remote, remote_body)[0] in (201, 204)
    try:
        before = scrape(port)
        body = os.urandom(200_000)
        (mrig.home / written).write_bytes(body)
        done = mrig.meshfs("sync", os.fspath(mrig.home / written))
        assert done.returncode == 0, done.stderr
        assert (mrig.home / remote).read_bytes() == remote_body
        with pytest.raises(PermissionError):  # the root is a virtual, read-only container
            os.mkdir(mrig.mountpoint / f"metrics-{uuid.uuid4().hex[:8]}")
        after = scrape(port)

        def moved(name: str, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        assert moved("meshfs_requests_total", op="create", errno="OK") >= 1
        assert moved("meshfs_requests_total", op="write", errno="OK") >= 1
        assert moved("meshfs_requests_total", op="read", errno="OK") >= 1
        assert moved("meshfs_requests_total", op="mkdir", errno="EPERM") == 1
        assert moved("meshfs_request_duration_seconds_count", op="read") >= 1
        assert moved("meshfs_request_duration_seconds_bucket", op="read", le="+Inf") >= 1
        assert moved("meshfs_uploaded_bytes_total") >= len(body)
        assert moved("meshfs_uploads_done_total") >= 1
        assert moved("meshfs_downloaded_bytes_total") >= len(remote_body)
        assert moved("meshfs_cache_miss_bytes_total") >= len(remote_body)
        assert value(after, "meshfs_cache_used_bytes") >= len(remote_body)
        assert value(after, "meshfs_upload_queue_depth") == 0
        assert value(after, "meshfs_logins_total") >= 1
    finally:
        webdav(mrig.stack, "DELETE", written)
        webdav(mrig.stack, "DELETE", remote)


def test_metrics_port_in_use_stops_the_mount_with_one_line(mrig: MountRig) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        password = write_secret(mrig.root / "password", mrig.stack.password)
        done = mrig.mount("--password-file", os.fspath(password), "-o", f"metrics_port={port}")
    assert done.returncode == 1
    assert f"metrics_port: cannot listen on 127.0.0.1:{port}" in one_line(done.stderr)
