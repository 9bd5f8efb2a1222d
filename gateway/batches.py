"""Batches: many jobs created by one BatchCreateJobs call, listed and watched together.

Semantics (README "Batches"):

- Every item is validated before anything is written (``gateway.servicer``): one malformed
  item (no source, a bad URL, bad labels, timeout or priority, a request_id repeated inside the
  batch) refuses the whole call with INVALID_ARGUMENT naming every bad item, and nothing is
  created. So does a batch larger than ``REELMILL_MAX_BATCH_SIZE``, or one whose new jobs do not
  fit the owner's active-job limit (RESOURCE_EXHAUSTED): limits are the caller's, not an
  item's.
- Once accepted, items are isolated: an item whose video does not exist (or is another
  owner's) gets its own NOT_FOUND outcome and the others are created; an item whose
  request_id names an earlier job of the caller returns that job (``created`` false), whatever
  batch created it. The jobs that are created commit together, in one transaction, under one
  new batch id, and run independently: one failing never fails another.
- A repeated call (same request_ids) creates nothing and answers the batch that created the
  first job it returns, so a caller whose answer was lost retries the same call safely.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.db import models
from gateway.journal import QUEUE_CHANNEL, load_job
from gateway.store import NewJob, check_active, insert_jobs, lock_owner, parse_id
from reelmill.v1 import job_pb2
from runtime.errors import NotFound


@dataclass(frozen=True)
class Outcome:
    """What became of one item: its job (``created`` says whether this call made it) or the
    error of that item alone."""

    job: job_pb2.Job | None = None
    error: job_pb2.JobError | None = None
    created: bool = False


@dataclass(frozen=True)
class Created:
    batch_id: uuid.UUID | None
    outcomes: tuple[Outcome, ...]


@dataclass(frozen=True)
class Member:
    """A job of a batch, as a watcher of the batch needs it."""

    id: uuid.UUID
    state: str
    last_event_sequence: int


class Batches:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    async def create(
        self,
        owner: str,
        items: Sequence[NewJob | job_pb2.JobError],
        *,
        max_active: int = 0,
    ) -> Created:
        """Creates the jobs of a validated batch. An item given as a ``JobError`` (refused
        before, e.g. by the storage limit) keeps that outcome."""
        async with self.sessions.begin() as session:
            await lock_owner(session, "jobs", owner)
            requests = [i.request_id for i in items if isinstance(i, NewJob) and i.request_id]
            existing = await self._existing(session, owner, requests)
            videos = await self._videos(session, owner, items)
            todo: dict[int, NewJob] = {}
            outcomes: dict[int, Outcome] = {}
            for index, item in enumerate(items):
                if isinstance(item, job_pb2.JobError):
                    outcomes[index] = Outcome(error=item)
                elif item.request_id in existing:
                    outcomes[index] = Outcome(
                        job=await self._job(session, existing[item.request_id])
                    )
                elif item.video_id is not None and item.video_id not in videos:
                    outcomes[index] = Outcome(
                        error=job_pb2.JobError(
                            code="NOT_FOUND",
                            reason="VIDEO_NOT_FOUND",
                            message=f"video {item.video_id} not found",
                        )
                    )
                else:
                    todo[index] = item
            if max_active and todo:
                await check_active(session, owner, max_active, adding=len(todo))
            batch_id = uuid.uuid4() if todo else None
            ids = await insert_jobs(session, owner, list(todo.values()), batch_id=batch_id)
            for (index, item), job_id in zip(todo.items(), ids, strict=True):
                if job_id is None:  # an earlier job with this request_id after all
                    earlier = await self._existing(session, owner, [item.request_id])
                    outcomes[index] = Outcome(
                        job=await self._job(session, earlier[item.request_id])
                    )
                else:
                    outcomes[index] = Outcome(job=await self._job(session, job_id), created=True)
            if todo:
                await session.execute(select(func.pg_notify(QUEUE_CHANNEL, str(batch_id))))
            ordered = tuple(outcomes[index] for index in range(len(items)))
        if batch_id is None:  # nothing new: the batch of the first job returned, if any
            first = next((o.job for o in ordered if o.job is not None), None)
            batch_id = uuid.UUID(first.batch_id) if first is not None and first.batch_id else None
        return Created(batch_id, ordered)

    async def members(self, owner: str, batch_id: str) -> list[Member]:
        """The batch's jobs; NOT_FOUND when the owner has none with that batch id."""
        query = (
            select(models.Job.id, models.Job.state, models.Job.last_event_sequence)
            .where(
                models.Job.owner == owner,
                models.Job.batch_id == parse_id(batch_id, "batch_id"),
            )
            .order_by(models.Job.create_time, models.Job.id)
        )
        async with self.sessions() as session:
            rows = (await session.execute(query)).all()
        if not rows:
            raise NotFound(f"batch {batch_id} not found", reason="BATCH_NOT_FOUND")
        return [Member(row.id, row.state, row.last_event_sequence) for row in rows]

    @staticmethod
    async def _existing(
        session: AsyncSession, owner: str, request_ids: Sequence[str]
    ) -> dict[str, uuid.UUID]:
        if not request_ids:
            return {}
        rows = await session.execute(
            select(models.Job.request_id, models.Job.id).where(
                models.Job.owner == owner, models.Job.request_id.in_(request_ids)
            )
        )
        return {str(request_id): job_id for request_id, job_id in rows.all()}

    @staticmethod
    async def _videos(
        session: AsyncSession, owner: str, items: Sequence[NewJob | job_pb2.JobError]
    ) -> set[str]:
        """Which of the items' videos exist and are the owner's."""
        wanted = {
            uuid.UUID(i.video_id) for i in items if isinstance(i, NewJob) and i.video_id is not None
        }
        if not wanted:
            return set()
        found = await session.scalars(
            select(models.Video.id).where(models.Video.owner == owner, models.Video.id.in_(wanted))
        )
        return {str(video_id) for video_id in found.all()}

    @staticmethod
    async def _job(session: AsyncSession, job_id: uuid.UUID) -> job_pb2.Job:
        # The BASIC view without a queue position: a position per item would read the whole
        # queue once per item.
        return await load_job(session, job_id, full=False, position=False)
