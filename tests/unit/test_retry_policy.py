"""RetryPolicy: validation, the retry budget and the jittered, capped backoff."""

from __future__ import annotations

import pytest

from meshfs.cs3.retry import RetryPolicy


def test_budget_counts_extra_attempts() -> None:
    p = RetryPolicy(retries=2)
    assert [p.may_retry(a) for a in range(4)] == [True, True, False, False]
    assert not RetryPolicy(retries=0).may_retry(0)


def test_delay_doubles_is_capped_and_jittered_down_to_half() -> None:
    p = RetryPolicy(retries=10, backoff=0.1, backoff_max=0.5)
    for attempt, full in [(0, 0.1), (1, 0.2), (2, 0.4), (3, 0.5), (9, 0.5)]:
        for _ in range(50):
            assert full / 2 <= p.delay(attempt) <= full


@pytest.mark.parametrize(
    ("kw", "msg"),
    [({"retries": -1}, "retries must be ≥ 0"), ({"backoff": 2.0, "backoff_max": 1.0}, "backoff must be")],
)
def test_bad_values_are_refused(kw: dict[str, float], msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        RetryPolicy(**kw)  # type: ignore[arg-type]
