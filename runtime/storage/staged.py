"""The two-phase write state machine both backends share.

    open ──write()──> open ──commit()──> committing ──> committed
      │                                      │
      └──────────── abort() ─────────────────┴──> aborted

Blocking work runs in a thread pool and is never abandoned: a cancelled ``write``/``commit``
lets its thread finish (the call is shielded), and ``abort`` first waits for every thread still
running for this writer, so nothing touches a file or an upload after it has been discarded.

``commit`` runs as its own task. If the caller is cancelled while it runs, the commit still
finishes; the ``abort`` that follows (``__aexit__``) then removes the object again, because a
commit that never returned to its caller must not leave anything visible.

``abort`` never raises for backend failures: it logs them, and the leftovers are collected later
by ``ObjectStore.abort_incomplete_writes``.
"""

from __future__ import annotations

import abc
import asyncio
import functools
import hashlib
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, Literal, TypeVar

from runtime.storage.base import ObjectWriter, StoredObject
from runtime.tasks import start_detached

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Chunks at least this large are hashed in a worker thread rather than on the event loop.
HASH_IN_THREAD_BYTES = 256 * 1024

State = Literal["open", "committing", "committed", "aborted"]


def _retrieve(future: asyncio.Future[Any]) -> None:
    # Marks an exception as retrieved: whoever needs it re-raises it through the future.
    if not future.cancelled():
        future.exception()


class StagedWriter(ObjectWriter):
    """Base of the backends' writers; subclasses implement the four ``_`` hooks."""

    def __init__(
        self, key: str, *, bucket: str, content_type: str, executor: Executor | None
    ) -> None:
        self.key = key
        self.bucket = bucket
        self.size = 0
        #: Recorded with the object; may be changed until ``commit()``.
        self.content_type = content_type
        self._executor = executor
        self._hasher = hashlib.sha256()
        self._state: State = "open"
        self._inflight: set[asyncio.Future[Any]] = set()
        self._commit_task: asyncio.Task[StoredObject] | None = None
        self._abort_task: asyncio.Task[None] | None = None

    # -- hooks -------------------------------------------------------------------------------

    @abc.abstractmethod
    async def _write(self, data: bytes) -> None:
        """Takes ``data`` (already counted and hashed)."""

    @abc.abstractmethod
    async def _commit(self) -> StoredObject:
        """Makes the object visible."""

    @abc.abstractmethod
    async def _discard(self) -> None:
        """Removes what an uncommitted write left (no thread of this writer is running)."""

    @abc.abstractmethod
    async def _undo_commit(self) -> None:
        """Removes the object a commit made visible that never reached its caller."""

    def _translate(self, exc: BaseException) -> BaseException:
        """The domain error for a backend exception (identity by default)."""
        return exc

    # -- helpers -----------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Runs blocking ``fn`` in the pool; if the caller is cancelled, the thread finishes."""
        future = self._spawn(fn, *args, **kwargs)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            translated = self._translate(exc)
            if translated is exc:
                raise
            raise translated from exc

    def _spawn(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> asyncio.Future[T]:
        """Starts blocking ``fn`` in the pool and tracks it until it ends."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))
        self._inflight.add(future)
        future.add_done_callback(self._inflight.discard)
        future.add_done_callback(_retrieve)
        return future

    async def _drain(self) -> None:
        """Waits for every thread still running for this writer."""
        while self._inflight:
            await asyncio.wait(set(self._inflight))

    # -- ObjectWriter ------------------------------------------------------------------------

    @property
    def sha256(self) -> str:
        return self._hasher.hexdigest()

    async def write(self, data: bytes) -> None:
        if self._state != "open":
            raise RuntimeError(f"write to a writer that is {self._state}")
        if not data:
            return
        if len(data) >= HASH_IN_THREAD_BYTES:
            await self._run(self._hasher.update, data)
        else:
            self._hasher.update(data)
        self.size += len(data)
        await self._write(data)

    async def commit(self) -> StoredObject:
        if self._state != "open":
            raise RuntimeError(f"commit of a writer that is {self._state}")
        self._state = "committing"
        self._commit_task = start_detached(self._commit(), name=f"commit {self.key}")
        stored = await asyncio.shield(self._commit_task)
        self._state = "committed"
        return stored

    async def abort(self) -> None:
        if self._state == "committed":
            return
        if self._abort_task is None:
            self._abort_task = start_detached(self._abort(), name=f"abort {self.key}")
        await asyncio.shield(self._abort_task)

    async def _abort(self) -> None:
        try:
            committed = False
            if self._commit_task is not None:
                await asyncio.wait([self._commit_task])
                committed = (
                    not self._commit_task.cancelled() and self._commit_task.exception() is None
                )
            self._state = "aborted"
            await self._drain()
            if committed:
                await self._undo_commit()
            else:
                await self._discard()
        except Exception:
            log.warning(
                "could not clean up an aborted write; abort_incomplete_writes will",
                extra={"key": self.key},
                exc_info=True,
            )
