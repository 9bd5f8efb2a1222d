"""Capped, jittered exponential backoff: the one retry helper of the client and every server.

It lives beside ``reelmill/status.py`` for the same reason: the client (which imports no server
code) reconnects with it too. Standard library only.

The delay before retry ``n`` (1-based) is uniform in ``[c/2, c]`` with
``c = min(maximum, initial * multiplier**(n-1))`` ("equal jitter": never a thundering herd,
never a zero wait). A server's own word (``Retry-After``) raises the delay, up to ``maximum``.
A retry that could not start before a deadline is not made.

``Backoff`` computes delays for loops that keep their own state (the orchestrator writes each
attempt to Postgres; the purger's attempts live in a table); ``retry`` runs a whole loop.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

#: What ``Backoff.delay`` draws uniform numbers from: ``random.uniform`` or a seeded one.
Uniform = Callable[[float, float], float]


@dataclass(frozen=True)
class Backoff:
    """Delays between attempts. ``initial`` is the ceiling of the first retry's delay."""

    initial: float = 0.5
    maximum: float = 10.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.maximum < self.initial or self.multiplier < 1:
            raise ValueError(f"bad backoff {self}")

    def ceiling(self, retry: int) -> float:
        """The largest delay before retry ``retry`` (1-based)."""
        exponent = min(max(retry, 1) - 1, 64)  # past 2**64 every ceiling is the maximum
        return min(self.maximum, self.initial * self.multiplier**exponent)

    def delay(
        self, retry: int, *, retry_after: float | None = None, uniform: Uniform = random.uniform
    ) -> float:
        """The delay before retry ``retry``: jittered in ``[c/2, c]``, at least the server's
        ``retry_after`` (capped at ``maximum``)."""
        ceiling = self.ceiling(retry)
        delay = uniform(ceiling / 2, ceiling)
        if retry_after is not None and retry_after > 0:
            delay = max(delay, min(retry_after, self.maximum))
        return delay


async def retry(
    call: Callable[[], Awaitable[T]],
    *,
    retry_on: Callable[[Exception], bool],
    backoff: Backoff,
    attempts: int | None = None,
    deadline: float | None = None,
    on_retry: Callable[[int, Exception, float], None] | None = None,
    retry_after: Callable[[Exception], float | None] | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    uniform: Uniform = random.uniform,
    clock: Callable[[], float] | None = None,
) -> T:
    """``await call()`` until it succeeds, retrying failures that ``retry_on`` accepts.

    ``attempts`` bounds the calls (None: no bound); ``deadline`` (the event loop's clock) bounds
    the time: a retry whose delay would end past it is not made, and the last failure is raised.
    ``on_retry(retry, error, delay)`` is told before each wait (for logs and state writes).
    ``CancelledError`` is never retried. Failures ``retry_on`` rejects are raised at once.
    ``sleep``, ``uniform`` and ``clock`` (default: the loop's) are seams for tests."""
    now = clock or asyncio.get_running_loop().time
    made = 0
    while True:
        made += 1
        try:
            return await call()
        except Exception as exc:
            if not retry_on(exc) or (attempts is not None and made >= attempts):
                raise
            delay = backoff.delay(
                made, retry_after=retry_after(exc) if retry_after else None, uniform=uniform
            )
            if deadline is not None and now() + delay > deadline:
                raise
            if on_retry is not None:
                on_retry(made, exc, delay)
        await sleep(delay)
