"""The data plane's stall memory (StallWatch) and how Transfer.read_range uses it: after a read stalled
(no progress for the gateway's unavailable_timeout), reads in the next unavailable_timeout seconds
*probe* (a short timeout, no retry when they get nothing), so a read(2) the kernel splits into several
READs fails after one stall plus a short probe per READ; any progress ends it, and a slow but live
server keeps working. No network: a scripted fake replaces the one HTTP attempt, time is trio's
autojump clock."""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import trio

from meshfs.cs3.retry import StallWatch
from meshfs.cs3.transfer import Transfer, _Transient
from meshfs.cs3.types import DownloadTicket, Secret
from meshfs.errors import ServerUnavailable, Timeout

READ_TIMEOUT = 5.0  # transfer_timeout of the hostile suite
LIMIT = 4.0  # unavailable_timeout of the hostile suite
PROBE = 2.0
MB = 1 << 20


# ---- the state machine alone ----------------------------------------------------------------------


def test_stall_watch_window_progress_and_expiry() -> None:
    w = StallWatch()
    assert not w.suspect(0.0, LIMIT)  # nothing stalled yet
    w.stalled(10.0)
    assert w.suspect(10.0, LIMIT) and w.suspect(13.9, LIMIT)
    assert not w.suspect(14.0, LIMIT)  # the window is over: full timeouts again
    assert not w.suspect(14.5, LIMIT)
    w.stalled(20.0)
    w.progressed()  # a byte from any read: the server is alive
    assert not w.suspect(20.5, LIMIT)
    w.stalled(30.0)
    assert not w.suspect(30.5, None)  # no unavailable bound configured: never suspect


# ---- read_range against a scripted server ---------------------------------------------------------


class FakeGateway:
    def __init__(self, unavailable_timeout: float | None) -> None:
        self.unavailable_timeout = unavailable_timeout

    async def access_token(self) -> Secret:
        return Secret("tok")

    async def authenticate(self, stale: Secret | None = None) -> None:
        raise AssertionError("no login expected")


@dataclass
class FakeServer:
    """Answers each GET according to `mode`: 'ok' (the bytes asked for after `first_byte` s),
    'hole' (nothing, ever), 'refuse' (connection refused at once). `partial` bytes flow before a hole
    swallows an attempt that is already running. Records the timeout each attempt was given."""

    mode: str = "ok"
    first_byte: float = 0.01
    timeouts: list[float] = field(default_factory=list)
    script: Callable[[int | None, float | None], Awaitable[int]] | None = None  # replaces the modes

    async def attempt(self, tr: Transfer, want: int | None, read_timeout: float | None) -> int:
        if self.script is not None:
            return await self.script(want, read_timeout)
        waits = READ_TIMEOUT if read_timeout is None else read_timeout
        self.timeouts.append(waits)
        if self.mode == "refuse":
            raise _Transient(ServerUnavailable("refused", op="read"))
        if self.mode == "hole" or self.first_byte >= waits:
            await trio.sleep(waits)
            raise _Transient(Timeout("data server did not answer in time", op="read"))
        await trio.sleep(self.first_byte)
        return MB if want is None else want


def transfer(server: FakeServer, limit: float | None = LIMIT, **kw: float) -> Transfer:
    tr = Transfer(
        FakeGateway(limit),  # type: ignore[arg-type]
        read_timeout=READ_TIMEOUT,
        probe_timeout=PROBE,
        backoff=0.01,
        backoff_max=0.01,
        **kw,  # type: ignore[arg-type]
    )

    async def in_thread(get: functools.partial[int]) -> int:
        # read_range's one HTTP attempt: a partial of Transfer._get, run as get(stop) in a thread
        assert get.func == tr._get
        args = inspect.signature(tr._get).bind_partial(*get.args, **get.keywords).arguments
        return await server.attempt(tr, args["want"], args.get("read_timeout"))

    tr._in_thread = in_thread  # type: ignore[method-assign,assignment]
    return tr


TICKET = DownloadTicket("http://data.invalid/f", Secret("t"), math.inf)


async def timed_read(tr: Transfer, length: int = MB) -> tuple[int | BaseException, float]:
    t0 = trio.current_time()
    try:
        got: int | BaseException = await tr.read_range(TICKET, -1, offset=0, length=length, path="f")
    except (Timeout, ServerUnavailable) as e:
        got = e
    return got, trio.current_time() - t0


async def test_reads_after_a_stall_probe_briefly_then_work_again_at_once(autojump_clock) -> None:  # type: ignore[no-untyped-def]
    server = FakeServer("hole")
    tr = transfer(server)
    # the first read waits a whole read timeout (no byte for LIMIT: stalled), then one probe on a
    # fresh connection (a hung connection is not yet a dead server), then gives up
    got, took = await timed_read(tr)
    assert isinstance(got, Timeout)
    assert server.timeouts == [READ_TIMEOUT, PROBE]
    assert READ_TIMEOUT + PROBE <= took < READ_TIMEOUT + PROBE + 0.5
    # the READs that follow (the kernel's retry of the failed page) each fail after one probe
    for _ in range(int(LIMIT / PROBE) - 1):  # all well inside the window
        server.timeouts.clear()
        got, took = await timed_read(tr)
        assert isinstance(got, Timeout) and server.timeouts == [PROBE]
        assert took < PROBE + 0.1
    await trio.sleep(LIMIT)  # nothing for a while: the window closes
    # after the window, a read waits the full timeout again (and its stall opens a new window)
    server.timeouts.clear()
    got, took = await timed_read(tr)
    assert isinstance(got, Timeout) and server.timeouts == [READ_TIMEOUT, PROBE]
    # the server answers again: the very next read works, and the memory of the stall is gone
    server.mode = "ok"
    server.timeouts.clear()
    assert (await timed_read(tr))[0] == MB
    assert server.timeouts == [PROBE]
    server.timeouts.clear()
    assert (await timed_read(tr))[0] == MB
    assert server.timeouts == [READ_TIMEOUT]


async def test_a_black_hole_mid_read_ends_in_one_timeout_and_one_probe(autojump_clock) -> None:  # type: ignore[no-untyped-def]
    """The hostile case: bytes flowed, then nothing. The timeout says the last byte is READ_TIMEOUT
    old (≥ LIMIT: stalled), so the read does not spend a second full timeout before failing."""
    server = FakeServer("hole")
    tr = transfer(server)

    async def bytes_then_hole(want: int | None, t: float | None) -> int:
        # 256 KiB arrive, then the hole swallows the connection; every later attempt gets nothing
        server.script = None
        await trio.sleep(READ_TIMEOUT)
        server.timeouts.append(READ_TIMEOUT)
        raise _Transient(Timeout("data server did not answer in time", op="read"), 256 << 10)

    server.script = bytes_then_hole
    got, took = await timed_read(tr)
    assert isinstance(got, Timeout)
    assert server.timeouts == [READ_TIMEOUT, PROBE]
    assert took < READ_TIMEOUT + PROBE + 0.5
    assert tr.stalls.suspect(trio.current_time(), LIMIT)


async def test_a_slow_first_byte_after_a_stall_costs_at_most_the_window(autojump_clock) -> None:  # type: ignore[no-untyped-def]
    """A server that is alive but takes longer than probe_timeout to answer: reads in the window after
    a stall fail fast, the failed probes do not extend the window, and after it the full timeout
    applies again and the read succeeds."""
    server = FakeServer("hole")
    tr = transfer(server)
    await timed_read(tr)  # the stall
    stalled_at = trio.current_time()
    server.mode, server.first_byte = "ok", 3.0  # slower than a probe, within the read timeout
    while trio.current_time() - stalled_at < LIMIT - PROBE:  # reads that start inside the window
        got, _ = await timed_read(tr)
        assert isinstance(got, Timeout), "a probe waited longer than probe_timeout"
    await trio.sleep(PROBE)  # past the window, which the failed probes did not extend
    server.timeouts.clear()
    got, took = await timed_read(tr)
    assert got == MB and server.timeouts == [READ_TIMEOUT] and took == pytest.approx(3.0, abs=0.1)


async def test_a_slow_link_that_progresses_never_probes(autojump_clock) -> None:  # type: ignore[no-untyped-def]
    """Cuts with progress (a slow, flaky link) are retried with the full timeout, forever as long as
    bytes arrive; nothing marks the server as stalled."""
    server = FakeServer("ok")
    tr = transfer(server)
    left = [4]

    async def cut_after_progress(want: int | None, t: float | None) -> int:
        server.timeouts.append(READ_TIMEOUT if t is None else t)
        await trio.sleep(3.0)  # slower than LIMIT overall, but bytes keep coming
        if left[0]:
            left[0] -= 1
            raise _Transient(ServerUnavailable("download cut short", op="read"), 64 << 10)
        return MB if want is None else want

    server.script = cut_after_progress
    got, _ = await timed_read(tr, 4 * (64 << 10) + MB)
    assert got == 4 * (64 << 10) + MB
    assert server.timeouts == [READ_TIMEOUT] * 5
    assert not tr.stalls.suspect(trio.current_time(), LIMIT)


async def test_refused_connections_stall_then_fail_fast(autojump_clock) -> None:  # type: ignore[no-untyped-def]
    server = FakeServer("refuse")
    tr = transfer(server, retries=10_000)  # the unavailable bound ends it, not the budget
    got, took = await timed_read(tr)
    assert isinstance(got, ServerUnavailable) and LIMIT <= took < LIMIT + 1.0
    server.timeouts.clear()
    got, took = await timed_read(tr)
    assert isinstance(got, ServerUnavailable) and server.timeouts == [PROBE] and took < 0.1


async def test_without_an_unavailable_bound_nothing_changes(autojump_clock) -> None:  # type: ignore[no-untyped-def]
    """No unavailable_timeout: the retry budget alone ends a read, every attempt with the full timeout."""
    server = FakeServer("hole")
    tr = transfer(server, limit=None, retries=2)
    for _ in range(2):
        server.timeouts.clear()
        got, _ = await timed_read(tr)
        assert isinstance(got, Timeout) and server.timeouts == [READ_TIMEOUT] * 3


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_probe_timeout_must_be_positive(bad: float) -> None:
    with pytest.raises(ValueError, match="probe_timeout must be > 0"):
        Transfer(FakeGateway(LIMIT), probe_timeout=bad)  # type: ignore[arg-type]
