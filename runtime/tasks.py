"""Work that must run to its end even when its caller is cancelled.

A cleanup (remove a scratch directory, delete a partial upload, join a worker thread, commit or
abort a write) runs as its own task, awaited through ``asyncio.shield``: cancelling the caller
(grpc.aio may cancel a handler more than once when its client goes away) cancels only the wait,
and the ``CancelledError`` still propagates to the caller. asyncio keeps only weak references to
tasks, so every such task is referenced here until it ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

#: Tasks that may outlive a cancelled caller, referenced until they end.
_running: set[asyncio.Task[Any]] = set()


def start_detached(coro: Coroutine[Any, Any, T], *, name: str | None = None) -> asyncio.Task[T]:
    """``coro`` as a task that is kept alive until it ends, whoever awaits it."""
    task = asyncio.create_task(coro, name=name)
    _running.add(task)
    task.add_done_callback(_running.discard)
    return task


async def shielded(coro: Coroutine[Any, Any, T], *, name: str | None = None) -> T:
    """``coro``'s result; run to the end even if the caller is cancelled (again) meanwhile."""
    return await asyncio.shield(start_detached(coro, name=name))
