"""How the CS3 client retries transport failures: one value shared by the gateway and the data plane.

Owns: RetryPolicy (how many extra attempts, and the jittered exponential backoff between them) and
StallWatch (whether a server recently stopped answering, so that new requests probe it briefly instead
of each waiting the full timeout).
Must not import: grpc, urllib3, cs3apis, trio (it is plain arithmetic on times the caller passes in),
vfs/, fuse/, cache/.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """retries: extra attempts after the first; the pause before attempt n+1 is
    min(backoff_max, backoff * 2**n), jittered down to half of it so clients do not retry in step."""

    retries: int = 4
    backoff: float = 0.2
    backoff_max: float = 5.0

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries must be ≥ 0, got {self.retries}")
        if self.backoff < 0 or self.backoff_max < self.backoff:
            raise ValueError(
                f"backoff must be ≥ 0 and ≤ backoff_max, got {self.backoff} and {self.backoff_max}"
            )

    def may_retry(self, attempt: int) -> bool:
        """Whether a failure of attempt number `attempt` (0 = the first) may be retried."""
        return attempt < self.retries

    def delay(self, attempt: int) -> float:
        """Seconds to wait after the failed attempt number `attempt` (0 = the first)."""
        return min(self.backoff_max, self.backoff * 2.0**attempt) * (0.5 + random.random() / 2)


class StallWatch:
    """Memory of the last stall of one server: a request that made no progress at all for the
    unavailable bound. For `window` seconds after it (until some request makes progress again),
    the server is *suspect*: the caller gives new attempts a short timeout and does not retry an
    attempt that got nothing, so a burst of requests on a dead server fails in about one short
    timeout each instead of one full stall each. Any progress (a byte, a status line) clears it
    at once, and a failed suspect attempt does not extend the window: a server that is merely slow
    to answer loses at most `window` seconds of short timeouts, never more.

    Times are whatever clock the caller uses (the data plane passes trio.current_time()).
    """

    __slots__ = ("_stalled_at",)

    def __init__(self) -> None:
        self._stalled_at: float | None = None

    def stalled(self, now: float) -> None:
        """A request went `window` without any progress and gave up."""
        self._stalled_at = now

    def progressed(self) -> None:
        """The server sent something: it is alive."""
        self._stalled_at = None

    def suspect(self, now: float, window: float | None) -> bool:
        """Whether the last stall is less than `window` seconds old with no progress since
        (never, when window is None: no unavailable bound configured)."""
        if self._stalled_at is None or window is None:
            return False
        if now - self._stalled_at >= window:
            self._stalled_at = None  # expired: the next request gets the full timeout again
            return False
        return True
