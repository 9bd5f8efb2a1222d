"""A limit on heavy work per process: a few calls at once, a bounded queue behind them.

Beyond the queue a call fails at once with RESOURCE_EXHAUSTED rather than waiting without
bound; the caller retries, possibly on another replica.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from runtime.errors import Handler, ResourceExhausted, wrap_handler


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


class CallLimitInterceptor(grpc.aio.ServerInterceptor):
    """Holds a slot for every call to the process's own services (health and reflection stay
    free, so probes still answer): at most ``capacity`` calls run, ``max_waiting`` queue, and
    the rest get RESOURCE_EXHAUSTED at once — a saturated process refuses rather than falls
    over, and the gateway's stage retries take the call elsewhere or later."""

    def __init__(self, slots: Slots, prefix: str = "/reelmill.v1.") -> None:
        self.slots = slots
        self.prefix = prefix

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(self.prefix):
            return handler
        slots = self.slots

        def unary(behavior: Handler) -> Handler:
            async def limited(request: Any, context: Any) -> Any:
                async with slots.hold():
                    return await behavior(request, context)

            return limited

        def stream(behavior: Handler) -> Handler:
            async def limited(request: Any, context: Any) -> AsyncIterator[Any]:
                async with slots.hold():
                    async for response in behavior(request, context):
                        yield response

            return limited

        return wrap_handler(handler, unary, stream)
