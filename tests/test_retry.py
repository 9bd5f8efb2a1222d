"""The one backoff helper (reelmill/retry.py): delays, caps, Retry-After, attempts, deadlines."""

from __future__ import annotations

import random

import pytest

from reelmill.retry import Backoff, retry


def test_delay_is_jittered_within_half_to_full_ceiling_and_capped() -> None:
    backoff = Backoff(initial=1.0, maximum=8.0)
    assert [backoff.ceiling(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    rng = random.Random(7)
    for n in range(1, 200):
        delay = backoff.delay(n, uniform=rng.uniform)
        assert backoff.ceiling(n) / 2 <= delay <= backoff.ceiling(n)
    # Huge retry numbers do not overflow.
    assert backoff.ceiling(10_000) == 8.0


def test_retry_after_raises_the_delay_up_to_the_maximum() -> None:
    backoff = Backoff(initial=0.5, maximum=5.0)
    low = lambda a, b: a  # noqa: E731
    assert backoff.delay(1, uniform=low) == 0.25
    assert backoff.delay(1, retry_after=3.0, uniform=low) == 3.0
    assert backoff.delay(1, retry_after=60.0, uniform=low) == 5.0


@pytest.mark.parametrize("bad", [(0.0, 1.0, 2.0), (2.0, 1.0, 2.0), (1.0, 2.0, 0.5)])
def test_bad_backoffs_are_refused(bad: tuple[float, float, float]) -> None:
    with pytest.raises(ValueError, match="bad backoff"):
        Backoff(*bad)


async def test_retry_retries_accepted_failures_then_succeeds() -> None:
    calls: list[int] = []
    told: list[tuple[int, float]] = []
    slept: list[float] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("down")
        return "ok"

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    result = await retry(
        flaky,
        retry_on=lambda e: isinstance(e, ConnectionError),
        backoff=Backoff(initial=1.0, maximum=4.0),
        on_retry=lambda n, e, d: told.append((n, d)),
        sleep=sleep,
        uniform=lambda a, b: b,
    )
    assert result == "ok"
    assert len(calls) == 3
    assert told == [(1, 1.0), (2, 2.0)]
    assert slept == [1.0, 2.0]


async def test_retry_raises_rejected_failures_at_once_and_stops_after_attempts() -> None:
    calls = 0

    async def fails() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("bad input") if calls == 1 else ConnectionError("down")

    with pytest.raises(ValueError, match="bad input"):
        await retry(fails, retry_on=lambda e: isinstance(e, ConnectionError), backoff=Backoff())
    assert calls == 1

    calls = 1  # the next calls fail transiently

    async def no_sleep(_: float) -> None:
        return None

    with pytest.raises(ConnectionError):
        await retry(fails, retry_on=lambda e: True, backoff=Backoff(), attempts=3, sleep=no_sleep)
    assert calls == 4


async def test_retry_makes_no_retry_that_would_end_past_the_deadline() -> None:
    calls = 0
    now = 100.0

    async def down() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError("down")

    async def sleep(seconds: float) -> None:
        nonlocal now
        now += seconds

    with pytest.raises(ConnectionError):
        await retry(
            down,
            retry_on=lambda e: True,
            backoff=Backoff(initial=1.0, maximum=1.0),
            deadline=102.5,
            sleep=sleep,
            uniform=lambda a, b: b,
            clock=lambda: now,
        )
    # At 100, 101 and 102; a fourth would start at 103, past the deadline.
    assert calls == 3
