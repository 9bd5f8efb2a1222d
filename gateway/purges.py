"""Purging what failed, cancelled and deleted work left in the object store.

A job that fails or is cancelled, and a video that is deleted, enqueue ``purges`` rows in the
same transaction as the state change: an object-store prefix to empty once ``not_before`` has
passed. The delay lets services that are still stopping a cancelled call finish their last
write first, so nothing they commit afterwards survives. A purge keeps every object that an
artifact row still names: a failed job's own recorded artifacts (it keeps what its finished
stages produced), and the objects of a deleted job that other jobs reuse (``gateway.reuse``:
their rows name them; when the last of those jobs is deleted, its deletion purges that prefix
again). Everything else under the prefix goes — outputs of the failed stage, objects a crashed
process committed but never recorded — together with unfinished multipart uploads under it.

``Purger`` runs in every gateway replica; rows are taken with ``FOR UPDATE SKIP LOCKED``, so
replicas share the work and a row is removed only after its objects are gone (a replica that
dies mid-purge leaves the row for the next sweep).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.db import models
from gateway.keys import imported_video_id, job_prefix, video_prefix
from reelmill.retry import Backoff
from runtime.storage import ObjectStore
from runtime.storage.keys import normalize_prefix

log = logging.getLogger(__name__)

#: A purge that keeps failing (storage down) is retried at most this many times.
MAX_PURGE_ATTEMPTS = 20
#: Waits before those retries: 1 s before the first, doubling up to 10 minutes (jittered).
PURGE_BACKOFF = Backoff(initial=1.0, maximum=600.0)


async def request_purge(
    session: AsyncSession,
    prefix: str,
    *,
    reason: str,
    delay: timedelta,
    keep_artifacts_of: uuid.UUID | None = None,
) -> None:
    """Enqueues a purge in the caller's transaction."""
    await session.execute(
        insert(models.Purge).values(
            prefix=normalize_prefix(prefix),
            job_id=keep_artifacts_of,
            reason=reason,
            not_before=func.now() + delay,
        )
    )


async def request_job_purge(
    session: AsyncSession, job: models.Job, *, reason: str, delay: timedelta
) -> None:
    """A failed or cancelled job: its unrecorded outputs go, and so does the half-imported
    video of a URL job whose import never finished."""
    await request_purge(
        session, job_prefix(job.id), reason=reason, delay=delay, keep_artifacts_of=job.id
    )
    if job.source_url is not None:
        video_id = imported_video_id(job.id)
        if await session.get(models.Video, video_id) is None:
            await request_purge(session, video_prefix(video_id), reason=reason, delay=delay)


async def cancel_job_purges(session: AsyncSession, job: models.Job) -> int:
    """A job that runs again (RetryJob): the purges its end queued go, in the caller's
    transaction, so none of them deletes what the job writes from now on. A purge being carried
    out right now holds its row locked: this waits for it to finish. Returns how many went."""
    prefixes = []
    if job.source_url is not None:
        prefixes.append(normalize_prefix(video_prefix(imported_video_id(job.id))))
    result = await session.execute(
        delete(models.Purge)
        .where(
            (models.Purge.job_id == job.id)
            | (
                models.Purge.job_id.is_(None)
                & models.Purge.prefix.in_(prefixes)
                & models.Purge.reason.in_(("job_failed", "job_cancelled"))
            )
        )
        .returning(models.Purge.id)
    )
    return len(result.all())


def named_under(prefix: str) -> ColumnElement[bool]:
    """Artifact rows naming an object under ``prefix``: a LIKE whose pattern is written into
    the statement, so that the planner reads ``ix_artifacts_object_key`` for it."""
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    pattern: BindParameter[str] = bindparam("prefix_pattern", escaped + "%", literal_execute=True)
    return models.Artifact.object_key.like(pattern, escape="\\")


@dataclass(frozen=True)
class PurgeResult:
    purges: int
    objects: int


class Purger:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        objects: ObjectStore,
        *,
        interval: float,
        batch: int = 20,
    ) -> None:
        self.sessions = sessions
        self.objects = objects
        self.interval = interval
        self.batch = batch

    async def run(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception as exc:  # database or storage down: the next sweep retries
                log.warning("purge sweep failed: %s", exc)
            await asyncio.sleep(self.interval)

    async def sweep(self) -> PurgeResult:
        """Carries out every purge that is due; returns how many and how many objects went."""
        purges = removed = 0
        while True:
            done, objects = await self._sweep_batch()
            purges += done
            removed += objects
            if done < self.batch:
                break
        if purges:
            log.info("purged", extra={"purges": purges, "objects": removed})
        return PurgeResult(purges, removed)

    async def _sweep_batch(self) -> tuple[int, int]:
        removed = 0
        async with self.sessions.begin() as session:
            rows = (
                await session.scalars(
                    select(models.Purge)
                    .where(models.Purge.not_before <= func.now())
                    .order_by(models.Purge.id)
                    .limit(self.batch)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            for row in rows:
                try:
                    removed += await self._purge(session, row)
                except Exception as exc:
                    log.warning("purging %s failed: %s", row.prefix, exc)
                    retry = row.attempts + 1 < MAX_PURGE_ATTEMPTS
                    wait = timedelta(seconds=PURGE_BACKOFF.delay(row.attempts + 1))
                    await session.execute(
                        update(models.Purge)
                        .where(models.Purge.id == row.id)
                        .values(attempts=row.attempts + 1, not_before=func.now() + wait)
                        if retry
                        else delete(models.Purge).where(models.Purge.id == row.id)
                    )
                    continue
                await session.execute(delete(models.Purge).where(models.Purge.id == row.id))
        return len(rows), removed

    async def _purge(self, session: AsyncSession, row: models.Purge) -> int:
        # Every object an artifact row names is kept: the purged job's own recorded ones (a
        # failed job keeps what its finished stages made), and those other jobs reuse.
        keep = set(
            (
                await session.scalars(
                    select(models.Artifact.object_key).where(named_under(row.prefix))
                )
            ).all()
        )
        keys = [key for key in await self.objects.list_keys(row.prefix) if key not in keep]
        for key in keys:
            await self.objects.delete(key)
        await self.objects.abort_incomplete_writes(timedelta(0), prefix=row.prefix)
        if keys:
            log.info(
                "purged objects",
                extra={"prefix": row.prefix, "objects": len(keys), "reason": row.reason},
            )
        return len(keys)
