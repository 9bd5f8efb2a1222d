"""A limit on heavy work per process: a few calls at once, a bounded queue behind them.

Beyond the queue a call fails at once with RESOURCE_EXHAUSTED rather than waiting without
bound; the caller retries, possibly on another replica.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from runtime.errors import ResourceExhausted


class Slots:
    """At most ``capacity`` holders at once and ``max_waiting`` callers queued behind them;
    beyond that, ``ResourceExhausted`` with ``busy_message`` and ``reason``."""

    def __init__(
        self, capacity: int, max_waiting: int, *, busy_message: str, reason: str = "BUSY"
    ) -> None:
        self._semaphore = asyncio.Semaphore(capacity)
        self._max_waiting = max_waiting
        self._busy_message = busy_message
        self._reason = reason
        self._waiting = 0

    @contextlib.asynccontextmanager
    async def hold(self, on_wait: Callable[[], None] | None = None) -> AsyncIterator[None]:
        """Holds a slot for the block; ``on_wait`` is called first when the caller must queue."""
        if self._semaphore.locked():
            if self._waiting >= self._max_waiting:
                raise ResourceExhausted(self._busy_message, reason=self._reason)
            if on_wait is not None:
                on_wait()
        self._waiting += 1
        try:
            await self._semaphore.acquire()
        finally:
            self._waiting -= 1
        try:
            yield
        finally:
            self._semaphore.release()
