"""Blocking producers in a worker thread, their items on the event loop through a bounded queue.

``produce_in_thread`` runs ``produce(put, stop)`` in a dedicated, named thread. ``put`` hands an
item to the loop, blocking the thread while the queue is full (back-pressure: a slow consumer
slows the producer instead of growing memory). When the consumer stops (it finished, failed or
was cancelled) the stop flag is set; the producer sees it between items (``stop.is_set()``, and
``put`` raises ``Stopped``), and the consumer waits, shielded from further cancellation, until
the thread has ended, so a cancelled call leaves no work running behind it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from opentelemetry import metrics

from runtime.tasks import shielded

log = logging.getLogger(__name__)

_live_workers = metrics.get_meter("reelmill.runtime").create_up_down_counter(
    "reelmill.worker.threads",
    unit="{thread}",
    description="Worker threads alive, by kind (a cancelled call's thread ends before it returns)",
)

T = TypeVar("T")

#: How often a producer blocked on a full queue looks at its stop flag.
_POLL_SECONDS = 0.05


class Stopped(Exception):
    """Raised by ``put`` in the producer once the consumer has gone away."""


class _End:
    pass


_END = _End()


@dataclass(frozen=True)
class _Failed:
    error: BaseException


@dataclass(frozen=True)
class _Item(Generic[T]):
    value: T


Put = Callable[[T], None]


async def produce_in_thread(
    produce: Callable[[Put[T], threading.Event], None],
    *,
    name: str,
    queue_size: int,
    kind: str | None = None,
    join_timeout: float = 60.0,
) -> AsyncGenerator[T, None]:
    """Yields what ``produce`` puts, in order; re-raises what it raises. ``kind`` (``name`` when
    not given; keep it few-valued) labels the thread in ``reelmill.worker.threads``."""
    attributes = {"kind": kind or name}
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[_Item[T] | _Failed | _End] = asyncio.Queue(queue_size)
    stop = threading.Event()
    ended: asyncio.Future[None] = loop.create_future()

    def put_raw(item: _Item[T] | _Failed | _End) -> None:
        if stop.is_set():
            raise Stopped
        try:
            future = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
        except RuntimeError:  # the loop is closed
            raise Stopped from None
        while True:
            try:
                future.result(timeout=_POLL_SECONDS)
                return
            except concurrent.futures.TimeoutError:
                if stop.is_set():
                    future.cancel()
                    raise Stopped from None
            except concurrent.futures.CancelledError:
                raise Stopped from None

    def put(value: T) -> None:
        put_raw(_Item(value))

    def mark_ended() -> None:
        if not ended.done():
            ended.set_result(None)

    def body() -> None:
        _live_workers.add(1, attributes)
        try:
            produce(put, stop)
            put_raw(_END)
        except Stopped:
            pass
        except BaseException as exc:  # handed to the consumer, which re-raises it
            try:
                put_raw(_Failed(exc))
            except Stopped:
                if not isinstance(exc, Stopped):
                    log.info("worker failed after its consumer left: %r", exc)
        finally:
            _live_workers.add(-1, attributes)
            # A closed loop has nobody waiting.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(mark_ended)

    thread = threading.Thread(target=body, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = await queue.get()
            if isinstance(item, _End):
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item.value
    finally:
        stop.set()
        await shielded(_join(ended, thread, join_timeout))


async def _join(ended: asyncio.Future[None], thread: threading.Thread, timeout: float) -> None:
    try:
        await asyncio.wait_for(asyncio.shield(ended), timeout)
    except TimeoutError:
        log.error("worker thread did not stop in time", extra={"thread": thread.name})
        return
    # The thread has signalled its very last step; this join returns at once.
    thread.join(timeout=1.0)
