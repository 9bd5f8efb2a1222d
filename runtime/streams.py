"""Ending client-streaming calls so that the caller learns why.

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
import logging
from collections.abc import AsyncIterator
from typing import Any

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
