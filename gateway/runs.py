"""What the orchestrator writes while it runs jobs: claims, leases, stage state, results.

Every write is fenced by the lease: it applies only while this worker holds the job and the
job is still running, so a worker that lost its lease (or whose job was cancelled) can never
overwrite what another replica or a cancel wrote. A fenced write that finds nothing to update
raises ``LeaseLost``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ParamSpec, TypeVar

from asyncpg import exceptions as asyncpg_exc
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.convert import (
    artifact_to_proto,
    from_json,
    stage_to_proto,
    to_json,
    video_to_proto,
)
from gateway.db import models
from gateway.journal import append_event, state_event
from gateway.purges import request_job_purge
from gateway.queue import CLAIM
from reelmill.retry import Backoff, retry
from reelmill.v1 import job_pb2, media_pb2, pipeline_pb2
from runtime.errors import Unavailable

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

#: How long a runner write keeps retrying while the database is unreachable. Meanwhile the
#: lease may expire and another replica take the job; the fence then ends this run.
DISCONNECT_RETRY_SECONDS = 300.0
DISCONNECT_BACKOFF = Backoff(initial=0.2, maximum=5.0)
#: Artifact rows per statement (10 parameters each, well under Postgres's 32,767).
ARTIFACT_ROWS = 1000


class LeaseLost(Exception):
    """The job is no longer this worker's to run (lease taken over, or job cancelled)."""


class SourceGone(Exception):
    """The job a stage would reuse was deleted before the reuse was recorded."""


#: asyncpg errors that mean the server went away or is not accepting sessions yet (restart,
#: failover): class 08 (connection exceptions), 57P01 admin shutdown, 57P02 crash shutdown,
#: 57P03 cannot connect now ("the database system is starting up / shutting down").
_UNREACHABLE = (
    asyncpg_exc.PostgresConnectionError,
    asyncpg_exc.AdminShutdownError,
    asyncpg_exc.CrashShutdownError,
    asyncpg_exc.CannotConnectNowError,
    OSError,
    sa_exc.TimeoutError,
)


def disconnected(exc: BaseException) -> bool:
    """Whether ``exc`` means the database could not be reached (restart, failover, network),
    as opposed to a statement that failed on its own."""
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError):
            return True
    # SQLAlchemy wraps asyncpg's error in its DBAPI adapter's (``exc.orig``), which carries the
    # asyncpg one as its cause: look down the whole chain.
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, _UNREACHABLE):
            return True
        seen.add(id(current))
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return False


def database_unavailable(exc: BaseException) -> Unavailable | None:
    """A handler's error when the database cannot be reached: UNAVAILABLE, for the caller to
    retry (registered with ``runtime.errors.register_translation``)."""
    if disconnected(exc):
        return Unavailable("the database is unreachable; try again", reason="DATABASE_UNAVAILABLE")
    return None


def survives_disconnects(
    method: Callable[P, Awaitable[T]],
) -> Callable[P, Awaitable[T]]:
    """Retries a one-transaction runner write while the database is unreachable: a Postgres
    restart mid-job delays the job instead of failing it."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        def told(_retry: int, exc: Exception, _delay: float) -> None:
            log.warning("database unreachable; retrying %s: %s", method.__name__, exc)

        return await retry(
            functools.partial(method, *args, **kwargs),
            retry_on=disconnected,
            backoff=DISCONNECT_BACKOFF,
            deadline=asyncio.get_running_loop().time() + DISCONNECT_RETRY_SECONDS,
            on_retry=told,
        )

    return wrapper


@dataclass(frozen=True)
class StageRow:
    name: str
    state: str
    depends_on: tuple[str, ...]
    attempts: int
    outputs: dict[str, Any] | None
    #: What determined the outputs of a finished stage (``gateway.reuse``), if recorded.
    fingerprint: str | None = None


@dataclass(frozen=True)
class Reusable:
    """A stage that succeeded in an earlier job, whose outputs another job may copy."""

    job_id: uuid.UUID
    outputs: dict[str, Any]
    artifacts: tuple[media_pb2.Artifact, ...]
    #: The job columns the stage set (media_info, transcript, metadata), by name.
    fields: dict[str, Any]


@dataclass(frozen=True)
class ClaimedJob:
    id: uuid.UUID
    owner: str
    state: str
    spec: pipeline_pb2.PipelineSpec
    video: media_pb2.Video | None
    source_url: str | None
    #: Job-level results so far (JSON): media_info, transcript, metadata, scenes,
    #: on_screen_text, clips.
    fields: dict[str, Any]
    stages: tuple[StageRow, ...]
    #: When the job fails with DEADLINE_EXCEEDED if still running.
    deadline: datetime | None = None
    #: The trace context of the CreateJob call, which every run continues.
    trace_context: dict[str, Any] | None = None
    #: How many times the job has been claimed (this run included).
    runs: int = 1


class Runs:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        worker: str,
        *,
        purge_delay: timedelta = timedelta(seconds=30),
    ) -> None:
        self.sessions = sessions
        self.worker = worker
        #: How long after a job fails its leftovers are purged.
        self.purge_delay = purge_delay

    async def claim(
        self, limit: int, lease: timedelta, busy: Collection[uuid.UUID] = ()
    ) -> list[ClaimedJob]:
        """Claims up to ``limit`` jobs in the queue's order (``gateway.queue``), leaving out
        ``busy`` ones (this worker's runs that are still ending)."""
        params = {
            "worker": self.worker,
            "lease": lease.total_seconds(),
            "limit": limit,
            "busy": list(busy),
        }
        async with self.sessions.begin() as session:
            ids = (await session.execute(CLAIM, params)).scalars().all()
        return [await self.load(job_id) for job_id in ids]

    async def load(self, job_id: uuid.UUID) -> ClaimedJob:
        async with self.sessions() as session:
            job = await session.get_one(models.Job, job_id)
            video = await session.get(models.Video, job.video_id) if job.video_id else None
            stages = (
                await session.scalars(
                    select(models.JobStage)
                    .where(models.JobStage.job_id == job_id)
                    .order_by(models.JobStage.position)
                )
            ).all()
        return ClaimedJob(
            id=job.id,
            owner=job.owner,
            state=job.state,
            spec=from_json(job.spec, pipeline_pb2.PipelineSpec),
            video=video_to_proto(video) if video is not None else None,
            source_url=job.source_url,
            fields={
                name: value
                for name, value in (
                    ("media_info", job.media_info),
                    ("transcript", job.transcript),
                    ("metadata", job.metadata_),
                    ("scenes", job.scenes),
                    ("on_screen_text", job.on_screen_text),
                    ("clips", job.clips),
                )
                if value
            },
            stages=tuple(
                StageRow(
                    s.name,
                    s.state,
                    tuple(s.depends_on or ()),
                    s.attempts,
                    s.outputs,
                    s.fingerprint,
                )
                for s in stages
            ),
            deadline=job.deadline,
            trace_context=job.trace_context,
            runs=job.attempts,
        )

    async def find_reusable(
        self,
        owner: str,
        stage: str,
        fingerprint: str,
        *,
        exclude: uuid.UUID,
        fields: Sequence[str] = (),
    ) -> Reusable | None:
        """The latest success of ``stage`` with ``fingerprint`` in another job of ``owner``:
        its outputs, artifacts and the job columns named by ``fields``."""
        columns = models.Job.__table__.c  # keyed by column name ("metadata")
        async with self.sessions() as session:
            found = (
                await session.execute(
                    select(
                        models.JobStage.job_id,
                        models.JobStage.outputs,
                        *(columns[name] for name in fields),
                    )
                    .join(models.Job, models.Job.id == models.JobStage.job_id)
                    .where(
                        models.JobStage.fingerprint == fingerprint,
                        models.JobStage.state == "SUCCEEDED",
                        models.JobStage.name == stage,
                        models.Job.owner == owner,
                        models.JobStage.job_id != exclude,
                    )
                    .order_by(models.JobStage.end_time.desc())
                    .limit(1)
                )
            ).first()
            if found is None:
                return None
            artifacts = (
                await session.scalars(
                    select(models.Artifact)
                    .where(models.Artifact.job_id == found.job_id, models.Artifact.stage == stage)
                    .order_by(models.Artifact.name)
                )
            ).all()
        values = {name: value for name, value in zip(fields, found[2:], strict=True) if value}
        return Reusable(
            job_id=found.job_id,
            outputs=dict(found.outputs or {}),
            artifacts=tuple(artifact_to_proto(a) for a in artifacts),
            fields=values,
        )

    async def _fence(self, session: AsyncSession, job_id: uuid.UUID) -> models.Job:
        job = (
            await session.scalars(
                select(models.Job)
                .where(
                    models.Job.id == job_id,
                    models.Job.lease_owner == self.worker,
                    models.Job.state.in_(("QUEUED", "RUNNING")),
                )
                .with_for_update()
            )
        ).one_or_none()
        if job is None:
            raise LeaseLost(str(job_id))
        return job

    async def renew(self, job_id: uuid.UUID, lease: timedelta) -> None:
        async with self.sessions.begin() as session:
            result = await session.execute(
                update(models.Job)
                .where(
                    models.Job.id == job_id,
                    models.Job.lease_owner == self.worker,
                    models.Job.state.in_(("QUEUED", "RUNNING")),
                )
                .values(lease_expires_at=func.now() + lease)
                .returning(models.Job.id)
            )
            if result.scalar_one_or_none() is None:
                raise LeaseLost(str(job_id))

    @survives_disconnects
    async def release(self, job_id: uuid.UUID) -> None:
        """Hands a job back (graceful shutdown): another replica may claim it at once."""
        async with self.sessions.begin() as session:
            await session.execute(
                update(models.Job)
                .where(models.Job.id == job_id, models.Job.lease_owner == self.worker)
                .values(lease_expires_at=func.now() - timedelta(seconds=1))
            )

    @survives_disconnects
    async def start(self, job_id: uuid.UUID) -> None:
        async with self.sessions.begin() as session:
            job = await self._fence(session, job_id)
            if job.state == "QUEUED":
                job.state = "RUNNING"
                job.start_time = func.now()
                await append_event(session, job_id, state_event("RUNNING"))
            # A resumed job: stages that were running (or waiting to retry) when the last
            # worker stopped run again.
            await session.execute(
                update(models.JobStage)
                .where(
                    models.JobStage.job_id == job_id,
                    models.JobStage.state.in_(("RUNNING", "RETRYING")),
                )
                .values(state="PENDING", progress=0.0)
            )

    @survives_disconnects
    async def update_stage(
        self,
        job_id: uuid.UUID,
        name: str,
        *,
        state: str,
        progress: float | None = None,
        message: str = "",
        error: job_pb2.JobError | None = None,
        outputs: dict[str, Any] | None = None,
        artifacts: Sequence[media_pb2.Artifact] = (),
        job_fields: dict[str, Any] | None = None,
        video: media_pb2.Video | None = None,
        started: bool = False,
        fingerprint: str | None = None,
        reused_from: uuid.UUID | None = None,
    ) -> int:
        """Records a stage's new state (and what it produced) with its event, atomically;
        returns the event's sequence. ``fingerprint`` records what determined the outputs;
        ``reused_from`` says they are that job's same stage's (it never ran); ``SourceGone``
        when that job no longer exists."""
        async with self.sessions.begin() as session:
            job = await self._fence(session, job_id)
            if video is not None:
                await self._put_video(session, job.owner, video)
            stage = await session.get_one(models.JobStage, (job_id, name), with_for_update=True)
            stage.state = state
            if progress is not None:
                stage.progress = progress
            if started:
                # A new attempt; the last attempt's error stays visible until one succeeds.
                if stage.start_time is None:
                    stage.start_time = func.now()
                stage.attempts = stage.attempts + 1
                stage.end_time = None
            if state in ("SUCCEEDED", "FAILED", "SKIPPED", "CANCELLED"):
                stage.end_time = func.now()
            if state == "SUCCEEDED":
                stage.progress = 1.0
                stage.error = None
            if error is not None:
                stage.error = to_json(error)
            if outputs is not None:
                stage.outputs = outputs
            if fingerprint is not None:
                stage.fingerprint = fingerprint
            if reused_from is not None:
                # The earlier job stays until this commits: its deletion waits, and then finds
                # this job's rows naming its objects (the purge keeps them).
                source = await session.scalar(
                    select(models.Job.id)
                    .where(models.Job.id == reused_from)
                    .with_for_update(read=True, key_share=True)
                )
                if source is None:
                    raise SourceGone(str(reused_from))
                stage.reused_from = reused_from
                if stage.start_time is None:
                    stage.start_time = func.now()
            await self._put_artifacts(session, job_id, name, artifacts)
            if job_fields:
                columns = models.Job.__table__.c  # keyed by column name ("metadata")
                await session.execute(
                    update(models.Job)
                    .where(models.Job.id == job_id)
                    .values({columns[name]: value for name, value in job_fields.items()})
                    .execution_options(synchronize_session=False)
                )
            await session.flush()
            await session.refresh(stage)
            event = job_pb2.JobEvent(
                stage_updated=job_pb2.StageUpdated(
                    stage=stage_to_proto(stage), message=message, artifacts=list(artifacts)
                )
            )
            return await append_event(session, job_id, event)

    async def _put_video(self, session: AsyncSession, owner: str, video: media_pb2.Video) -> None:
        values = {
            "owner": owner,
            "filename": video.filename,
            "content_type": video.content_type,
            "size_bytes": video.size_bytes,
            "sha256": video.sha256,
            "bucket": video.object.bucket,
            "object_key": video.object.key,
            "media_info": to_json(video.media_info),
            "source_url": video.source_url or None,
        }
        # A fixed id per job: a retried import replaces its row.
        await session.execute(
            insert(models.Video)
            .values(id=uuid.UUID(video.id), **values)
            .on_conflict_do_update(index_elements=["id"], set_=values)
        )

    async def _put_artifacts(
        self,
        session: AsyncSession,
        job_id: uuid.UUID,
        stage: str,
        artifacts: Sequence[media_pb2.Artifact],
    ) -> None:
        """Records a stage's artifacts, a statement per ``ARTIFACT_ROWS`` of them (a name given
        twice keeps the last)."""
        unique = {artifact.name: artifact for artifact in artifacts}
        rows = [
            {
                "job_id": job_id,
                "name": artifact.name,
                "kind": media_pb2.ArtifactKind.Name(artifact.kind),
                "stage": stage,
                "bucket": artifact.object.bucket,
                "object_key": artifact.object.key,
                "content_type": artifact.content_type,
                "size_bytes": artifact.size_bytes,
                "sha256": artifact.sha256,
                "attributes": dict(artifact.attributes),
            }
            for artifact in unique.values()
        ]
        replaced = ("kind", "stage", "bucket", "object_key", "content_type", "size_bytes")
        for start in range(0, len(rows), ARTIFACT_ROWS):
            statement = insert(models.Artifact).values(rows[start : start + ARTIFACT_ROWS])
            # Deterministic names: a retried stage overwrites its artifacts, adding none.
            await session.execute(
                statement.on_conflict_do_update(
                    index_elements=["job_id", "name"],
                    set_={
                        column: statement.excluded[column]
                        for column in (*replaced, "sha256", "attributes")
                    },
                )
            )

    @survives_disconnects
    async def finish(
        self, job_id: uuid.UUID, state: str, error: job_pb2.JobError | None = None
    ) -> None:
        """Ends the job (SUCCEEDED/FAILED) with the terminal event carrying the whole job."""
        async with self.sessions.begin() as session:
            job = await self._fence(session, job_id)
            job.state = state
            job.end_time = func.now()
            job.lease_owner = None
            job.lease_expires_at = None
            if error is not None:
                job.error = to_json(error)
            if state == "FAILED":
                await request_job_purge(session, job, reason="job_failed", delay=self.purge_delay)
                await session.execute(
                    update(models.JobStage)
                    .where(
                        models.JobStage.job_id == job_id,
                        models.JobStage.state.in_(models.OPEN_STAGE_STATES),
                    )
                    .values(state="CANCELLED", end_time=func.now())
                )
            await append_event(session, job_id, state_event(state, error), with_job=True)
