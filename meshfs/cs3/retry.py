"""How the CS3 client retries transport failures: one value shared by the gateway and the data plane.

Owns: RetryPolicy (how many extra attempts, and the jittered exponential backoff between them).
Must not import: grpc, urllib3, cs3apis (it is plain arithmetic), vfs/, fuse/, cache/.
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
