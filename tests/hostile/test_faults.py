"""Faults on the network (issue 9): the real mount of a private Reva stack, with one fault proxy
(tests/faultproxy.py) in front of the gateway (gRPC) and one in front of the data gateway (HTTP; the
stack advertises the proxy's URL in its transfer answers, REVA_DATAGATEWAY_ADVERTISE).

Under added latency, bandwidth caps, closed and reset connections (also mid-transfer) and a server that
stops answering: operations stay correct or fail with EIO within the configured timeouts (never hang,
never wrong bytes), written data reaches the server once the fault clears, and the mount recovers by
itself. Every file-system call runs bounded (hostilekit.bounded): a hang fails the test instead of
blocking it. The server's view is read over WebDAV after the fault is cleared (ocdav's own transfers
also go through the data proxy).

Private stack: REVA_INSTANCE=faults, REVA_PORT_OFFSET=440; run the suite under
`flock /tmp/meshfs-private-stacks.lock ...` (see the notes of the test runner).
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import threading
import time
import types
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from faultproxy import FaultProxy, serve_in_thread
from hostilekit import ServerView, bounded
from rig import PrivateStack, wait_for

pytestmark = [pytest.mark.fuse]

INSTANCE, OFFSET = "faults", 440
CALL_TIMEOUT = 2.0
UNAVAILABLE_TIMEOUT = 4.0
TRANSFER_TIMEOUT = 5.0
OPTIONS = (
    f"call_timeout={CALL_TIMEOUT:g}s,unavailable_timeout={UNAVAILABLE_TIMEOUT:g}s,"
    f"transfer_timeout={TRANSFER_TIMEOUT:g}s,dir_poll_interval=0,upload_delay=0"
)
# a metadata operation on a dead gateway fails within unavailable_timeout (+ the call running then)
META_EIO_BOUND = UNAVAILABLE_TIMEOUT + CALL_TIMEOUT + 3.0
# a read on a dead data gateway: no progress for transfer_timeout, then the retry budget
DATA_EIO_BOUND = TRANSFER_TIMEOUT + UNAVAILABLE_TIMEOUT + CALL_TIMEOUT + 5.0
HANG = 180.0  # a call still blocked after this is reported as a hang (the bounds above are checked after)
RECOVER_BOUND = 30.0  # after the fault clears, the mount works again within this (no remount)
MB = 1_000_000
T = TypeVar("T")


@dataclass
class Rig:
    gw: FaultProxy  # in front of the gateway
    data: FaultProxy  # in front of the data gateway
    server: ServerView
    mount: Any  # conftest.Mount
    make_mount: Callable[[], Any]

    @property
    def mp(self) -> Path:
        return Path(self.mount.mp)

    def home(self, rel: str = "") -> Path:
        return self.mp / "home" / rel

    def daemon_died(self) -> str | None:
        """None while the mount is up; else why the daemon went (its last ERROR log line)."""
        from conftest import mounted  # type: ignore[import-not-found]

        if mounted(self.mp):
            return None
        log = Path(self.mount.cache) / "daemon.log"
        errors = [ln for ln in log.read_text(errors="replace").splitlines() if " ERROR " in ln]
        return errors[-1] if errors else "the mount is gone (no ERROR line in daemon.log)"

    def remount(self) -> None:
        self.mount.close()
        self.mount = self.make_mount()

    def sync(self, rel: str, timeout: float) -> tuple[int, str]:
        """`meshfs sync` of a path; (exit code, stderr); bounded."""
        from conftest import meshfs  # type: ignore[import-not-found]

        done = meshfs("sync", os.fspath(self.home(rel)), "--timeout", f"{timeout:g}", timeout=timeout + 30)
        return done.returncode, done.stderr.strip()


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    from conftest import Mount  # type: ignore[import-not-found]

    gw = FaultProxy(0, name="gateway")
    data = FaultProxy(0, name="datagateway")
    stack = PrivateStack(INSTANCE, OFFSET)
    gw.target = ("127.0.0.1", stack.gateway_port)
    data.target = ("127.0.0.1", stack.http_port)
    with serve_in_thread(gw, data):
        stack.extra["REVA_DATAGATEWAY_ADVERTISE"] = f"http://127.0.0.1:{data.port}/data"
        stack.revactl("down", timeout=60)  # a leftover of ours (it may advertise an older proxy)
        stack.up()
        try:
            assert stack.env_vars["REVA_DATAGATEWAY_ADVERTISED"].endswith(f":{data.port}/data")
            reva = types.SimpleNamespace(
                gateway=f"127.0.0.1:{gw.port}",
                users=[types.SimpleNamespace(username="einstein", password="relativity")],
            )

            def make_mount() -> Any:
                return Mount(tmp_path_factory.mktemp("faults"), reva, options=OPTIONS)

            server = ServerView(stack.env_vars["REVA_HTTP_URL"], "einstein", "relativity")
            rig = Rig(gw, data, server, make_mount(), make_mount)
            try:
                yield rig
            finally:
                gw.clear()
                data.clear()
                rig.mount.close()
        finally:
            stack.revactl("reset", timeout=60)  # ours: down + wipe (the tests upload tens of MB)


@pytest.fixture
def d(rig: Rig) -> Iterator[str]:
    """A fresh folder made on the server (the mount has never seen it: reads of its files are cold)."""
    rig.gw.clear()
    rig.data.clear()
    name = f"fault-{uuid.uuid4().hex[:10]}"
    rig.server.mkcol(name)
    yield name
    rig.gw.clear()
    rig.data.clear()
    died = rig.daemon_died()
    if died is not None:  # a product bug: report it here, and give the next tests a fresh mount
        rig.remount()
        pytest.fail(f"the meshfs daemon exited during the test: {died}", pytrace=False)
    # the mount must have recovered by itself whatever the test did
    wait_for(lambda: os.path.isdir(rig.home(name)), RECOVER_BOUND, "the mount recovered after the test")


def call(fn: Callable[..., T], *args: Any, limit: float) -> T:
    """A file-system call expected to succeed, bounded (a hang fails the test); returns its value."""
    result, _ = bounded(fn, *args, limit=limit)
    if isinstance(result, BaseException):
        raise result
    return result


def timed(fn: Callable[..., T], *args: Any, limit: float) -> tuple[T, float]:
    """call() and the seconds it took."""
    result, took = bounded(fn, *args, limit=limit)
    if isinstance(result, BaseException):
        raise result
    return result, took


def blob(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_file(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def expect_ok_or_eio(result: bytes | BaseException, want: bytes, what: str) -> str:
    """A read under a fault: the right bytes or EIO, nothing else (never short or wrong data)."""
    if isinstance(result, OSError):
        assert result.errno == errno.EIO, f"{what}: {result!r}, expected the data or EIO"
        return "EIO"
    if isinstance(result, BaseException):
        raise result
    assert len(result) == len(want), f"{what}: {len(result)} bytes read, the file has {len(want)}"
    assert result == want, f"{what}: WRONG BYTES read"
    return "ok"


def synced_to_server(rig: Rig, d: str, name: str, want: bytes, timeout: float = 60.0) -> None:
    """After the fault cleared: `meshfs sync` succeeds and the server holds exactly `want`."""
    code, err = rig.sync(d, timeout)
    assert code == 0, f"sync after the fault cleared: {err}"
    assert sha(rig.server.get(f"{d}/{name}")) == sha(want), f"{d}/{name}: the server holds other bytes"


# ---- latency --------------------------------------------------------------------------------------


def test_added_latency_on_gateway_and_data_gateway_keeps_operations_correct(rig: Rig, d: str) -> None:
    cold = blob(1 * MB, 1)
    rig.server.put(f"{d}/cold", cold)
    rig.gw.set(latency=0.05)
    rig.data.set(latency=0.05)
    down0, up0 = rig.data.bytes_down, rig.data.bytes_up
    base = rig.home(d)
    assert call(read_file, base / "cold", limit=60) == cold
    assert rig.data.bytes_down - down0 >= len(cold), "the cold read did not go through the data proxy"
    small, big = b"hello under latency", blob(2 * MB, 2)
    call(write_file, base / "small", small, limit=60)
    call(write_file, base / "big", big, limit=60)
    call(os.mkdir, base / "sub", limit=30)
    call(os.rename, base / "small", base / "sub" / "small", limit=30)
    assert sorted(call(os.listdir, base, limit=30)) == ["big", "cold", "sub"]
    assert call(read_file, base / "sub" / "small", limit=30) == small
    code, err = rig.sync(d, 120)
    assert code == 0, err
    assert rig.data.bytes_up - up0 >= len(big), "the upload did not go through the data proxy"
    call(os.unlink, base / "cold", limit=30)
    rig.gw.clear()
    rig.data.clear()
    assert rig.server.get(f"{d}/sub/small") == small
    assert sha(rig.server.get(f"{d}/big")) == sha(big)
    assert sorted(rig.server.listdir(d)) == ["big", "sub"]


# ---- bandwidth caps -------------------------------------------------------------------------------

RATE = 2 * MB  # bytes/s, each direction of the data path


def test_bandwidth_cap_read_and_write_of_a_few_mb_finish_within_their_bound(rig: Rig, d: str) -> None:
    size = 4 * MB
    cold, new = blob(size, 3), blob(size, 4)
    rig.server.put(f"{d}/cold", cold)
    rig.data.set(rate=RATE)
    least, bound = size / RATE * 0.8, size / RATE * 3 + 15
    got, took = timed(read_file, rig.home(d) / "cold", limit=bound + 30)
    assert got == cold
    assert least <= took <= bound, f"cold read of {size} B at {RATE} B/s took {took:.1f} s"
    call(write_file, rig.home(d) / "new", new, limit=60)
    (code, err), took = timed(rig.sync, d, bound, limit=bound + 40)
    assert code == 0, err
    assert least <= took <= bound, f"upload of {size} B at {RATE} B/s took {took:.1f} s"
    rig.data.clear()
    assert sha(rig.server.get(f"{d}/new")) == sha(new)


def test_bandwidth_cap_an_upload_longer_than_the_transfer_timeout_keeps_going(rig: Rig, d: str) -> None:
    """16 MB at 2 MB/s = 8 s > transfer_timeout (5 s): a slow transfer that progresses is never aborted."""
    size = 16 * MB
    data = blob(size, 5)
    rig.data.set(rate=RATE)
    call(write_file, rig.home(d) / "big", data, limit=120)
    cuts = rig.data.cuts
    (code, err), took = timed(rig.sync, d, 120, limit=180)
    assert code == 0, err
    assert took >= size / RATE * 0.8, f"{took:.1f} s: the cap did not apply"
    assert rig.data.cuts == cuts
    rig.data.clear()
    assert sha(rig.server.get(f"{d}/big")) == sha(data)


@pytest.mark.long
def test_bandwidth_cap_a_large_upload_at_1mbs_completes(rig: Rig, d: str) -> None:
    size = 48 * MB
    data = blob(size, 6)
    rig.data.set(rate=1 * MB)
    call(write_file, rig.home(d) / "large", data, limit=300)
    (code, err), took = timed(rig.sync, d, 300, limit=400)
    assert code == 0, err
    assert took >= size / MB * 0.8
    rig.data.clear()
    assert sha(rig.server.get(f"{d}/large")) == sha(data)


# ---- connections dropped or reset mid-transfer ----------------------------------------------------


@pytest.mark.parametrize("how", ["close", "reset"])
def test_upload_cut_mid_transfer_completes_after_the_fault(rig: Rig, d: str, how: str) -> None:
    data = blob(8 * MB, 7)
    rig.data.arm_cut(2 * MB, "up", how)  # type: ignore[arg-type]
    call(write_file, rig.home(d) / "f", data, limit=60)
    code, err = rig.sync(d, 90)
    assert not rig.data.armed, "the upload never crossed the armed cut"
    assert code == 0, f"upload did not complete after a {how} at 2 MB: {err}"
    synced_to_server(rig, d, "f", data)


@pytest.mark.parametrize("how", ["close", "reset"])
def test_read_cut_mid_transfer_is_right_or_eio_never_wrong(rig: Rig, d: str, how: str) -> None:
    data = blob(8 * MB, 8)
    rig.server.put(f"{d}/f", data)
    rig.data.arm_cut(2 * MB, "down", how)  # type: ignore[arg-type]
    got, took = bounded(read_file, rig.home(d) / "f", limit=DATA_EIO_BOUND + 30)
    outcome = expect_ok_or_eio(got, data, f"read cut by {how} at 2 MB")
    print(f"read cut by {how} at 2 MB: {outcome} after {took:.1f} s")
    assert not rig.data.armed, "the read never crossed the armed cut"
    assert took <= DATA_EIO_BOUND, f"{outcome} only after {took:.1f} s"
    assert call(read_file, rig.home(d) / "f", limit=60) == data


@pytest.mark.parametrize("how", ["close", "reset"])
def test_data_gateway_refusing_service_then_back_upload_completes(rig: Rig, d: str, how: str) -> None:
    """Every data connection closed/reset for a while: the write returns (write-back), sync cannot
    finish; once the data gateway answers again the upload completes."""
    data = blob(3 * MB, 9)
    rig.data.set(how)  # type: ignore[arg-type]
    call(write_file, rig.home(d) / "f", data, limit=30)
    code, _ = rig.sync(d, 6)
    assert code != 0, "sync claimed success while every data connection failed"
    assert call(os.stat, rig.home(d) / "f", limit=15).st_size == len(data)  # the mount stays usable
    rig.data.clear()
    synced_to_server(rig, d, "f", data, timeout=90)


@pytest.mark.parametrize("how", ["close", "reset"])
def test_gateway_dropping_connections_gives_eio_then_recovers(rig: Rig, d: str, how: str) -> None:
    rig.server.put(f"{d}/f", b"x")
    rig.gw.set(how)  # type: ignore[arg-type]
    result, took = bounded(os.listdir, rig.home(d), limit=META_EIO_BOUND + 30)
    assert isinstance(result, OSError) and result.errno == errno.EIO, f"listdir under {how}: {result!r}"
    assert took <= META_EIO_BOUND, f"EIO only after {took:.1f} s (bound {META_EIO_BOUND:g} s)"
    rig.gw.clear()
    listing = wait_for(
        lambda: os.listdir(rig.home(d)), RECOVER_BOUND, "listing after the fault", retry_on=(OSError,)
    )
    assert listing == ["f"]
    assert call(read_file, rig.home(d) / "f", limit=30) == b"x"


# ---- a server that stops answering (black hole) ---------------------------------------------------


def test_gateway_black_hole_eio_in_bounded_time_and_recovery(rig: Rig, d: str) -> None:
    rig.server.put(f"{d}/f", b"y")
    rig.gw.set("blackhole")
    result, took = bounded(os.listdir, rig.home(d), limit=META_EIO_BOUND + 60)
    assert isinstance(result, OSError) and result.errno == errno.EIO, f"listdir on a black hole: {result!r}"
    assert took <= META_EIO_BOUND, f"EIO only after {took:.1f} s (bound {META_EIO_BOUND:g} s)"
    rig.gw.set("forward")
    listing = wait_for(
        lambda: os.listdir(rig.home(d)), RECOVER_BOUND, "listing after the black hole", retry_on=(OSError,)
    )
    assert listing == ["f"]
    call(write_file, rig.home(d) / "g", b"after", limit=30)
    synced_to_server(rig, d, "g", b"after")


def assert_data_bound(took: float, outcome: str) -> None:
    """Reads on a dead data gateway must answer within transfer_timeout + unavailable_timeout (+ slack):
    a read making no progress for unavailable_timeout stops retrying (it once took 55-83 s: four
    retries of transfer_timeout each)."""
    assert took <= DATA_EIO_BOUND, f"{outcome} only after {took:.1f} s (bound {DATA_EIO_BOUND:g} s)"


def test_data_gateway_black_hole_cold_read_is_eio_in_bounded_time(rig: Rig, d: str) -> None:
    data = blob(1 * MB, 10)
    rig.server.put(f"{d}/f", data)
    assert call(os.listdir, rig.home(d), limit=30) == ["f"]  # metadata known, content not
    rig.data.set("blackhole")
    got, took = bounded(read_file, rig.home(d) / "f", limit=HANG)
    assert isinstance(got, OSError) and got.errno == errno.EIO, f"read on a black hole: {got!r}"
    assert_data_bound(took, "EIO")
    rig.data.set("forward")
    assert wait_for(
        lambda: read_file(rig.home(d) / "f") == data,
        RECOVER_BOUND,
        "read after the black hole",
        retry_on=(OSError,),
    )


def test_data_gateway_black_hole_mid_read_is_right_or_eio(rig: Rig, d: str) -> None:
    data = blob(8 * MB, 11)
    rig.server.put(f"{d}/f", data)
    rig.data.set(rate=2 * MB)  # slow enough to fall into the hole mid-file
    start = rig.data.bytes_down
    box: list[bytes | BaseException] = []
    reader = threading.Thread(target=lambda: box.append(_catch(read_file, rig.home(d) / "f")), daemon=True)
    reader.start()
    rig.data.wait_for(lambda: rig.data.bytes_down - start >= 2 * MB, 60, "2 MB of the read passed")
    rig.data.set("blackhole")
    t0 = time.monotonic()
    reader.join(HANG)
    took = time.monotonic() - t0
    assert not reader.is_alive(), f"the read hung in the black hole for > {HANG:g} s"
    outcome = expect_ok_or_eio(box[0], data, "read into a black hole")
    print(f"read into a black hole after 2 MB: {outcome} after {took:.1f} s")
    rig.data.clear()
    # right after the fault clears, the next read works (the stall memory that makes the READs of
    # the failing read(2) fail fast must not turn away a server that answers again)
    assert call(read_file, rig.home(d) / "f", limit=60) == data
    # checked last, so that a slow answer does not hide whether the mount recovers. The read(2)
    # spans several READs (the kernel retries a failed readahead page with a synchronous READ): once
    # one READ stalled for unavailable_timeout, the next ones probe the server briefly instead of
    # each waiting transfer_timeout again (it took 20 s before that, 83 s before the per-read bound)
    assert_data_bound(took, outcome)


def _catch(fn: Callable[..., bytes], *args: Any) -> bytes | BaseException:
    try:
        return fn(*args)
    except BaseException as exc:
        return exc


def test_data_gateway_black_hole_during_upload_then_back(rig: Rig, d: str) -> None:
    data = blob(4 * MB, 12)
    rig.data.set("blackhole")
    _, took = timed(write_file, rig.home(d) / "f", data, limit=30)
    assert took < 15, f"write + close waited {took:.1f} s for a dead server (write-back should not)"
    code, _ = rig.sync(d, 8)
    assert code != 0, "sync claimed success while the data gateway was a black hole"
    rig.data.set("forward")
    synced_to_server(rig, d, "f", data, timeout=90)


# ---- moving and deleting files whose upload is on the wire -----------------------------------------


def test_rename_over_and_unlink_while_their_uploads_are_on_the_wire(rig: Rig, d: str) -> None:
    """With the data path capped at 2 MB/s, a file is renamed over another and a second one unlinked
    while their uploads are running. The uploads must be let finish (or stop between chunks), never
    abandoned mid-request: an abandoned request reaching the server after the Move or Delete made Reva
    write a node without its parent, after which the whole folder stopped listing (found by the soak).
    """
    big, other, gone = blob(4 * MB, 1), blob(1000, 2), blob(3 * MB, 3)
    call(write_file, rig.home(f"{d}/other"), other, limit=60)
    synced_to_server(rig, d, "other", other)
    rig.data.set(rate=2 * MB)
    start = rig.data.bytes_up
    call(write_file, rig.home(f"{d}/big"), big, limit=60)
    call(write_file, rig.home(f"{d}/gone"), gone, limit=60)
    wait_for(lambda: rig.data.bytes_up - start > MB, 30, "the uploads to be on the wire")
    call(os.rename, rig.home(f"{d}/big"), rig.home(f"{d}/other"), limit=60)
    call(os.unlink, rig.home(f"{d}/gone"), limit=60)
    rig.data.clear()
    synced_to_server(rig, d, "other", big)
    assert sorted(rig.server.listdir(d)) == ["other"]
    assert sorted(call(os.listdir, rig.home(d), limit=30)) == ["other"]
