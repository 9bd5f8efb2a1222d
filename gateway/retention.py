"""Retention: finished jobs older than ``REELMILL_RETENTION_DAYS`` go, with everything of theirs.

Every gateway replica runs ``Retention`` when the setting is above 0 (0, the default, keeps
every job forever). A job is due once it has ended (SUCCEEDED, FAILED or CANCELLED) more than
that many days ago, by its ``end_time``; a queued or running job is never due, whatever its
age. Each sweep deletes due jobs in small batches, one short transaction per batch:

- the batch is picked ``FOR UPDATE SKIP LOCKED`` (``ix_jobs_finished_end_time``, migration
  0011), so replicas sweeping at once take disjoint batches and a job another transaction
  holds (a RetryJob making it QUEUED again) is skipped, and looked at again next sweep;
- the job rows go with their stages, events and artifact rows (``ON DELETE CASCADE``);
- the objects go through the purge queue (``gateway.purges``): the job's own prefix, and the
  prefixes of the jobs whose objects it reused. The purge runs after ``purge_delay`` and, as
  always, keeps every object an artifact row still names: an object a kept job reuses stays
  until the last job naming it is deleted.

Between batches the sweep pauses (``pause``) so that it never holds the table for long and
leaves room for the traffic. Events have no retention of their own: they go with their job.
Videos stay (they are the caller's, deleted with DeleteVideo).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import timedelta

from sqlalchemy import delete, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway import metrics
from gateway.db import models
from gateway.keys import job_prefix, reused_prefix
from runtime.storage.keys import normalize_prefix

log = logging.getLogger(__name__)

#: Jobs deleted per transaction.
BATCH = 500
#: Pause between two batches of one sweep, in seconds.
PAUSE = 0.05


class Retention:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        days: float,
        interval: float,
        purge_delay: timedelta,
        batch: int = BATCH,
        pause: float = PAUSE,
    ) -> None:
        if days <= 0:
            raise ValueError("retention needs a positive number of days")
        self.sessions = sessions
        self.age = timedelta(days=days)
        self.interval = interval
        self.purge_delay = purge_delay
        self.batch = batch
        self.pause = pause

    async def run(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception as exc:  # the database is down: the next sweep retries
                log.warning("retention sweep failed: %s: %s", type(exc).__name__, exc)
            await asyncio.sleep(self.interval)

    async def sweep(self) -> int:
        """Deletes every job that is due, batch by batch; returns how many this call deleted."""
        deleted = 0
        while True:
            done = await self.delete_batch()
            deleted += done
            if done < self.batch:
                break
            await asyncio.sleep(self.pause)
        if deleted:
            log.info("retention deleted jobs", extra={"jobs": deleted})
        return deleted

    async def delete_batch(self) -> int:
        """One transaction: up to ``batch`` due jobs nobody else holds, deleted; their objects
        queued for purging."""
        async with self.sessions.begin() as session:
            ids = list(
                (
                    await session.scalars(
                        select(models.Job.id)
                        .where(
                            models.Job.state.in_(models.TERMINAL_JOB_STATES),
                            models.Job.end_time < func.now() - self.age,
                        )
                        .order_by(models.Job.end_time)
                        .limit(self.batch)
                        .with_for_update(skip_locked=True)
                    )
                ).all()
            )
            if not ids:
                return 0
            await self._purge_objects(session, ids)
            await session.execute(
                delete(models.Job)
                .where(models.Job.id.in_(ids))
                .execution_options(synchronize_session=False)
            )
        metrics.jobs_retained(len(ids))
        return len(ids)

    async def _purge_objects(self, session: AsyncSession, ids: list[uuid.UUID]) -> None:
        named = (
            await session.scalars(
                select(models.Artifact.object_key).where(models.Artifact.job_id.in_(ids))
            )
        ).all()
        own = {job_prefix(job_id) for job_id in ids}
        # The purge keeps whatever another job's artifact rows still name; these jobs' rows
        # are gone by the time it runs (deleted below, in this transaction).
        prefixes = sorted(own) + sorted({reused_prefix(key) for key in named} - own - {""})
        await session.execute(
            _REQUEST_PURGES,
            {
                "prefixes": [normalize_prefix(p) for p in prefixes],
                "delay": self.purge_delay.total_seconds(),
            },
        )


#: ``gateway.purges.request_purge`` of many prefixes in one statement.
_REQUEST_PURGES = text(
    """
    INSERT INTO purges (prefix, reason, not_before)
    SELECT p, 'retention', now() + make_interval(secs => :delay)
      FROM unnest(CAST(:prefixes AS text[])) AS p
    """
)
