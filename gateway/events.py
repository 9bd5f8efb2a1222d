"""Live job events for watchers: one LISTEN connection per gateway process, fanned out in
process.

A notification names a job and a sequence. For jobs somebody here is watching, the hub loads
the new events once (one query per notification, however many watchers) into that job's
``Feed`` and wakes its watchers. A watcher takes events from the feed when the feed holds the
next sequence it needs, and reads the journal otherwise (its backlog after reconnecting, or a
gap), so it sees every event exactly once, in order. If the listening connection drops, the
hub reconnects and tells every feed to re-read, since notifications may have been missed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import asyncpg

from gateway.convert import is_terminal
from gateway.journal import EVENTS_CHANNEL, parse_event_notification
from reelmill.retry import Backoff
from reelmill.v1 import job_pb2, job_service_pb2
from runtime.errors import NotFound, Unavailable

log = logging.getLogger(__name__)

FEED_CAPACITY = 256
#: How often an idle listening connection is probed.
LIVENESS_SECONDS = 15.0
#: Waits before the listener reconnects (reset by every connection made).
RECONNECT_BACKOFF = Backoff(initial=0.2, maximum=5.0)

LoadEvents = Callable[[uuid.UUID, int], Awaitable[list[job_pb2.JobEvent]]]


class Feed:
    """Recent events of one job, shared by its watchers in this process."""

    def __init__(self) -> None:
        #: Responses built once per event and shared by every watcher.
        self.events: collections.deque[job_service_pb2.WatchJobResponse] = collections.deque(
            maxlen=FEED_CAPACITY
        )
        self.latest = 0
        #: Watchers waiting for news, each on its own future (no lock to hand around).
        self.waiting: set[asyncio.Future[None]] = set()
        self.watchers = 0
        self.fetching = False
        self.pending = False

    def after(self, sequence: int) -> list[job_service_pb2.WatchJobResponse] | None:
        """Events after ``sequence`` if the feed holds the very next one; else None."""
        if not self.events or self.events[0].event.sequence > sequence + 1:
            return None
        # The feed holds contiguous sequences, so the next one sits at a known index.
        start = sequence + 1 - self.events[0].event.sequence
        return list(itertools.islice(self.events, start, None))

    def publish(self, events: list[job_pb2.JobEvent]) -> None:
        for event in events:
            if event.sequence > self.latest:
                self.events.append(job_service_pb2.WatchJobResponse(event=event))
                self.latest = event.sequence
        self._wake()

    def reset(self) -> None:
        """Forgets the buffered events: watchers re-read the journal."""
        self.events.clear()
        self._wake()

    def _wake(self) -> None:
        for waiter in self.waiting:
            if not waiter.done():
                waiter.set_result(None)
        self.waiting.clear()

    async def wait_past(self, sequence: int) -> None:
        """Returns once the feed knows of an event after ``sequence`` (or was reset)."""
        if self.latest > sequence:
            return
        waiter = asyncio.get_running_loop().create_future()
        self.waiting.add(waiter)
        try:
            await waiter
        finally:
            self.waiting.discard(waiter)


class EventHub:
    def __init__(
        self,
        dsn: str,
        load_events: LoadEvents,
        job_exists: Callable[[uuid.UUID], Awaitable[bool]] | None = None,
    ) -> None:
        self.dsn = dsn
        self.load_events = load_events
        #: Asked when a watcher is woken but finds nothing new: a deleted job ends its streams.
        self.job_exists = job_exists
        self.feeds: dict[uuid.UUID, Feed] = {}
        #: The channels this process listens to: name -> callbacks(payload). Job events are
        #: one of them; ``on`` adds the others.
        self.channels: dict[str, list[Callable[[str], None]]] = {EVENTS_CHANNEL: [self._on_event]}
        self.connected = asyncio.Event()
        self.closing = False
        self._tasks: set[asyncio.Task[None]] = set()

    # listening --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Keeps one LISTEN connection open for the life of the process."""
        failures = 0
        while True:
            connection: asyncpg.Connection | None = None
            try:
                connection = await asyncpg.connect(self.dsn)
                closed = asyncio.Event()
                connection.add_termination_listener(functools.partial(_set_event, closed))
                for channel, callbacks in self.channels.items():
                    await connection.add_listener(channel, _dispatch(callbacks))
                self.connected.set()
                failures = 0
                # Anything between the last connection's loss and now may have been missed.
                for feed in self.feeds.values():
                    feed.reset()
                while not closed.is_set():
                    try:
                        await asyncio.wait_for(closed.wait(), LIVENESS_SECONDS)
                    except TimeoutError:
                        # A silent network failure never closes the socket: probe it.
                        await connection.execute("SELECT 1", timeout=LIVENESS_SECONDS)
                log.warning("event listener connection lost; reconnecting")
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("event listener cannot connect: %s", exc)
            finally:
                self.connected.clear()
                if connection is not None and not connection.is_closed():
                    with contextlib.suppress(Exception):
                        await asyncio.shield(connection.close(timeout=2))
            failures += 1
            await asyncio.sleep(RECONNECT_BACKOFF.delay(failures))

    def close(self) -> None:
        """Ends every watch stream with UNAVAILABLE (shutdown): clients reconnect, to another
        replica, with the last sequence they saw."""
        self.closing = True
        for feed in self.feeds.values():
            feed.reset()

    def on(self, channel: str, callback: Callable[[str], None]) -> None:
        """Calls ``callback(payload)`` for every notification on ``channel`` (register before
        ``run``)."""
        self.channels.setdefault(channel, []).append(callback)

    async def check(self) -> None:
        if not self.connected.is_set():
            raise ConnectionError("event listener not connected")

    def _on_event(self, payload: str) -> None:
        try:
            job_id, sequence = parse_event_notification(payload)
        except ValueError:
            log.warning("malformed event notification %r", payload)
            return
        feed = self.feeds.get(job_id)
        if feed is None or sequence <= feed.latest:
            return
        if feed.latest == 0:
            # Watchers already read everything before this from the journal.
            feed.latest = sequence - 1
        if feed.fetching:
            feed.pending = True
            return
        task = asyncio.create_task(self._fetch(job_id, feed), name=f"feed-{job_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fetch(self, job_id: uuid.UUID, feed: Feed) -> None:
        feed.fetching = True
        try:
            while True:
                feed.pending = False
                try:
                    events = await self.load_events(job_id, feed.latest)
                except Exception:
                    log.exception("loading events of job %s failed", job_id)
                    feed.reset()
                    return
                feed.publish(events)
                if not feed.pending:
                    return
        finally:
            feed.fetching = False

    # watching ---------------------------------------------------------------------------------

    async def watch(
        self, job_id: uuid.UUID, after: int
    ) -> AsyncIterator[job_service_pb2.WatchJobResponse]:
        """Every event of the job after ``after``, in order, each once; ends after the
        terminal event that is the job's last (a retried job's events go on after an earlier
        one). Cancelling the consumer unsubscribes cleanly."""
        feed = self.feeds.get(job_id)
        if feed is None:
            feed = self.feeds[job_id] = Feed()
        feed.watchers += 1
        try:
            last = after
            gap = False
            woken = False
            while True:
                batch = None if gap else feed.after(last)
                live = batch is not None
                if batch is None:
                    batch = [
                        job_service_pb2.WatchJobResponse(event=event)
                        for event in await self.load_events(job_id, last)
                    ]
                gap = False
                for response in batch:
                    if response.event.sequence != last + 1:
                        gap = True  # re-read from the journal
                        break
                    yield response
                    last = response.event.sequence
                    # The job's last event so far ends the stream: from the feed, when the
                    # feed knows of nothing after it (no query per watcher: a job's thousands
                    # of watchers end together); read from the journal, when the journal has
                    # nothing after it (a retried job's events go on).
                    if (
                        is_terminal(response.event)
                        and batch[-1] is response
                        and (
                            (live and feed.latest <= last)
                            or not await self.load_events(job_id, last)
                        )
                    ):
                        return
                if batch:
                    woken = False
                    continue
                if woken and self.job_exists is not None and not await self.job_exists(job_id):
                    raise NotFound(f"job {job_id} was deleted", reason="JOB_NOT_FOUND")
                # No timer: a lost listener connection resets every feed, which wakes its
                # watchers to re-read the journal.
                await feed.wait_past(last)
                woken = True
                if self.closing:
                    raise Unavailable(
                        "the server is shutting down; reconnect with after_sequence",
                        reason="SHUTTING_DOWN",
                    )
        finally:
            feed.watchers -= 1
            if feed.watchers == 0 and self.feeds.get(job_id) is feed:
                del self.feeds[job_id]

    async def watch_many(
        self, cursors: Mapping[uuid.UUID, int]
    ) -> AsyncIterator[job_service_pb2.WatchJobResponse]:
        """The events of every job in ``cursors`` after its cursor (as ``watch``), each job's
        in order while jobs interleave; ends once every job's stream has ended. A job deleted
        meanwhile just ends its part; any other failure (shutdown) ends the whole stream."""
        merged: asyncio.Queue[job_service_pb2.WatchJobResponse | Exception | None] = asyncio.Queue(
            maxsize=FEED_CAPACITY
        )

        async def pump(job_id: uuid.UUID, after: int) -> None:
            try:
                async for response in self.watch(job_id, after):
                    await merged.put(response)
            except NotFound:
                pass
            except Exception as exc:
                await merged.put(exc)
                return
            await merged.put(None)

        pumps = [
            asyncio.create_task(pump(job_id, after), name=f"watch-{job_id}")
            for job_id, after in cursors.items()
        ]
        try:
            running = len(pumps)
            while running:
                item = await merged.get()
                if item is None:
                    running -= 1
                elif isinstance(item, Exception):
                    raise item
                else:
                    yield item
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)


def _dispatch(callbacks: list[Callable[[str], None]]) -> Callable[[object, int, str, str], None]:
    def handler(_conn: object, _pid: int, _channel: str, payload: str) -> None:
        for callback in callbacks:
            callback(payload)

    return handler


def _set_event(event: asyncio.Event, _connection: object) -> None:
    event.set()
