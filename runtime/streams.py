"""Streaming calls: ending client streams so that the caller learns why, and tying the work
behind a server stream to the call.

``relay``: grpc's asyncio server does not close a streaming handler's generator when the call
is cancelled while the handler waits to send (a slow reader, a full flow-control window): the
generator stays suspended at its ``yield`` until the garbage collector finalises it, so work
that only stops when the generator closes (ffmpeg, a decoding thread) would outlive the call
for as long as something refers to it. ``relay`` runs the work in a task of its own that a
done-callback of the call cancels, however the call ends.

``drain``: ending client-streaming calls so that the caller learns why.

A server that answers a client-streaming call (an upload) while the client is still sending
makes grpc's asyncio client lose the answer: the client's next write fails and replaces the
server's status with a local INTERNAL "Internal error from Core" (grpc/grpc#36066, fixed by the
still-open grpc/grpc#43486). So a server refusing an upload first reads — and discards — what
the client is still sending, up to a bound, and answers once the client has half-closed. The
client then sees the precise status. Beyond the bound (a client that keeps sending far more
than it declared, or too slowly) the server answers anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import grpc

from runtime.logs import log_context

T = TypeVar("T")

log = logging.getLogger(__name__)

#: Read at most this much past a refusal when the declared size is unknown.
DEFAULT_DRAIN_BYTES = 16 * 1024 * 1024
#: Slack over the declared size: the client may send a little more than it declared.
DRAIN_SLACK_BYTES = 1024 * 1024
DRAIN_SECONDS = 30.0
#: A client silent this long has stopped sending: answer it now.
DRAIN_IDLE_SECONDS = 1.0


async def drain(
    messages: AsyncIterator[Any],
    *,
    declared_bytes: int | None = None,
    seconds: float = DRAIN_SECONDS,
    idle_seconds: float = DRAIN_IDLE_SECONDS,
) -> bool:
    """Reads and discards the rest of ``messages``; True when the client half-closed within
    the bounds: at most ``declared_bytes`` plus some slack (or a default), ``seconds`` in all,
    and ``idle_seconds`` between two messages (a client that stopped sending is not waited
    for)."""
    limit = DEFAULT_DRAIN_BYTES
    if declared_bytes is not None and declared_bytes >= 0:
        limit = declared_bytes + DRAIN_SLACK_BYTES
    read = 0
    ended = False
    try:
        async with asyncio.timeout(seconds):
            while read <= limit:
                message = await asyncio.wait_for(anext(messages, None), idle_seconds)
                if message is None:
                    ended = True
                    break
                read += message.ByteSize()
    except TimeoutError:
        pass
    except Exception:  # the client went away or sent garbage: nothing left to protect
        return False
    if not ended:
        log.info("answering before the client finished sending", extra={"drained_bytes": read})
    return ended


async def relay(
    updates: AsyncIterator[T],
    context: grpc.aio.ServicerContext[Any, Any],
    *,
    stage: str | None = None,
) -> AsyncIterator[T]:
    """Yields what ``updates`` yields, running it in a task tied to the call: the call's end
    (cancel, deadline, error, or a normal finish) cancels the task, which closes ``updates``
    (stopping its work and removing its scratch). One update is buffered, so a slow reader
    still slows the work. ``stage`` tags the work's log lines. The work's exception is raised
    here, to be mapped to a status as any handler's."""
    queue: asyncio.Queue[T] = asyncio.Queue(maxsize=1)

    async def produce() -> None:
        with log_context(stage=stage):
            async with contextlib.aclosing(updates):  # type: ignore[type-var]
                async for update in updates:
                    await queue.put(update)

    work = asyncio.create_task(produce(), name=f"relay-{stage or 'work'}")

    def stop(_: Any) -> None:
        work.cancel()

    context.add_done_callback(stop)  # type: ignore[arg-type]  # (a class in the stubs)
    getter: asyncio.Task[T] | None = None
    try:
        while True:
            getter = asyncio.create_task(queue.get())
            await asyncio.wait({getter, work}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                yield getter.result()
                continue
            while not queue.empty():
                yield queue.get_nowait()
            work.result()  # the work's failure, if it failed
            return
    finally:
        pending = [task for task in (getter, work) if task is not None]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
