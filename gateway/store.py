"""What the public API reads and writes: videos and jobs, always scoped by owner.

Another owner's resources look exactly like missing ones (NOT_FOUND). The per-owner limits
that need the database (active jobs, stored bytes) are checked here, serialised per owner by a
transaction-scoped advisory lock so concurrent requests on any replica cannot both slip under
a limit.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Select, delete, func, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway import snapshots
from gateway.convert import artifact_to_proto, event_from_row, to_json, video_to_proto
from gateway.db import models
from gateway.journal import (
    CANCEL_CHANNEL,
    QUEUE_CHANNEL,
    append_event,
    append_events,
    load_job,
    load_jobs,
    notify_event,
    state_event,
)
from gateway.keys import job_prefix, reused_prefix, video_prefix
from gateway.purges import cancel_job_purges, request_job_purge, request_purge
from reelmill.v1 import job_pb2, media_pb2, pipeline_pb2
from runtime.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
ACTIVE_JOB_STATES = ("QUEUED", "RUNNING")
#: Suggested wait when the owner has too many active jobs: about how long a short job takes.
ACTIVE_JOBS_RETRY_AFTER = 30.0
#: Suggested wait when the owner's storage is full: stored videos are not freed by time
#: (deleting videos is not available yet), so only much later, after an operator acts.
STORAGE_RETRY_AFTER = 3600.0


@dataclass(frozen=True)
class StagePlan:
    name: str
    depends_on: tuple[str, ...]
    #: "PENDING", or "SKIPPED" when the spec disables it.
    state: str


def parse_id(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidArgument(
            f"{what} must be a UUID, got {value[:64]!r}", reason="BAD_ID"
        ) from None


def page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument("page_size must not be negative", reason="BAD_PAGE_SIZE")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _fingerprint(filters: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(filters, sort_keys=True).encode()).hexdigest()[:16]


def encode_page_token(
    create_time: datetime, row_id: uuid.UUID | str, filters: dict[str, Any]
) -> str:
    raw = json.dumps({"t": create_time.isoformat(), "i": str(row_id), "f": _fingerprint(filters)})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_page_token(
    token: str, filters: dict[str, Any], parse_row_id: Callable[[str], Any] = uuid.UUID
) -> tuple[datetime, Any] | None:
    if not token:
        return None
    try:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        position = (datetime.fromisoformat(raw["t"]), parse_row_id(raw["i"]))
        fingerprint = raw["f"]
    except (ValueError, KeyError, TypeError):
        raise InvalidArgument("page_token is not valid", reason="BAD_PAGE_TOKEN") from None
    if fingerprint != _fingerprint(filters):
        raise InvalidArgument(
            "page_token was issued for a different filter", reason="BAD_PAGE_TOKEN"
        )
    return position


PagedModel = TypeVar("PagedModel", models.Video, models.Job, models.ApiKey)


async def keyset_page(
    session: AsyncSession,
    query: Select[PagedModel],
    model: type[PagedModel],
    size: int,
    token: str,
    filters: dict[str, Any],
    parse_row_id: Callable[[str], Any] = uuid.UUID,
    *,
    columns: bool = False,
) -> tuple[list[Any], str]:
    """One page, newest first, continuing after the token's (create_time, id) position: the
    model's rows, or with ``columns`` the rows of a query of columns (``id`` and
    ``create_time`` among them)."""
    if (position := decode_page_token(token, filters, parse_row_id)) is not None:
        query = query.where(tuple_(model.create_time, model.id) < tuple_(*position))
    query = query.order_by(model.create_time.desc(), model.id.desc()).limit(size + 1)
    result = await session.execute(query)
    rows = list(result.all() if columns else result.scalars().all())
    if len(rows) <= size:
        return rows, ""
    rows = rows[:size]
    last: Any = rows[-1]
    return rows, encode_page_token(last.create_time, last.id, filters)


async def lock_owner(session: AsyncSession, what: str, owner: str) -> None:
    """Serialises ``what`` for one owner until the transaction ends (all replicas)."""
    key = func.hashtextextended(f"reelmill.{what}:{owner}", 0)
    await session.execute(select(func.pg_advisory_xact_lock(key)))


async def stored_bytes(
    session: AsyncSession, owner: str, *, excluding_upload: uuid.UUID | None = None
) -> int:
    """The owner's videos' bytes, plus the declared sizes of their unfinished resumable
    uploads (space they reserved at StartUpload), except ``excluding_upload``'s."""
    videos = await session.scalar(
        select(func.coalesce(func.sum(models.Video.size_bytes), 0)).where(
            models.Video.owner == owner
        )
    )
    reserved = select(func.coalesce(func.sum(models.Upload.size_bytes), 0)).where(
        models.Upload.owner == owner, models.Upload.state != "FINISHED"
    )
    if excluding_upload is not None:
        reserved = reserved.where(models.Upload.id != excluding_upload)
    return int(videos or 0) + int(await session.scalar(reserved) or 0)


def storage_full(used: int, incoming: int, limit: int) -> ResourceExhausted:
    return ResourceExhausted(
        f"storage limit reached: {used} of {limit} bytes stored, this upload needs {incoming} "
        "more; delete videos (DeleteVideo) to free space",
        reason="STORAGE_QUOTA_EXCEEDED",
        metadata={"limit_bytes": str(limit), "used_bytes": str(used)},
        retry_after=STORAGE_RETRY_AFTER,
    )


@dataclass(frozen=True)
class NewJob:
    """A job to create: what CreateJob (or one item of BatchCreateJobs) asked for."""

    video_id: str | None
    source_url: str | None
    spec: pipeline_pb2.PipelineSpec
    request_id: str
    labels: dict[str, str]
    stages: tuple[StagePlan, ...]
    timeout: timedelta | None = None
    trace_context: dict[str, str] | None = None
    priority: int = 0


async def active_jobs(session: AsyncSession, owner: str) -> int:
    return int(
        await session.scalar(
            select(func.count())
            .select_from(models.Job)
            .where(models.Job.owner == owner, models.Job.state.in_(ACTIVE_JOB_STATES))
        )
        or 0
    )


async def check_active(session: AsyncSession, owner: str, max_active: int, adding: int = 1) -> None:
    """RESOURCE_EXHAUSTED unless ``adding`` more active jobs fit the owner's ``max_active``
    (hold ``lock_owner(session, "jobs", owner)``)."""
    active = await active_jobs(session, owner)
    if active + adding > max_active:
        more = "" if adding == 1 else f", and this call adds {adding}"
        raise ResourceExhausted(
            f"too many active jobs: {active} queued or running{more}, the limit is "
            f"{max_active}; retry when some have finished",
            reason="TOO_MANY_ACTIVE_JOBS",
            metadata={"limit": str(max_active), "active": str(active)},
            retry_after=ACTIVE_JOBS_RETRY_AFTER,
        )


async def insert_jobs(
    session: AsyncSession,
    owner: str,
    jobs: Sequence[NewJob],
    *,
    batch_id: uuid.UUID | None = None,
) -> list[uuid.UUID | None]:
    """Inserts queued jobs (one statement for the jobs, one for their stages) and each one's
    first event; returns their ids, None for a job whose request_id the owner already used
    (nothing inserted for it). The caller announces them on QUEUE_CHANNEL."""
    if not jobs:
        return []
    ids = [uuid.uuid4() for _ in jobs]
    rows = [
        {
            "id": job_id,
            "owner": owner,
            "video_id": uuid.UUID(new.video_id) if new.video_id else None,
            "source_url": new.source_url,
            "spec": to_json(new.spec),
            "state": "QUEUED",
            "labels": new.labels,
            "request_id": new.request_id or None,
            "deadline": func.now() + new.timeout if new.timeout is not None else None,
            "trace_context": new.trace_context or None,
            "priority": new.priority,
            "batch_id": batch_id,
        }
        for job_id, new in zip(ids, jobs, strict=True)
    ]
    inserted = set(
        (
            await session.execute(
                insert(models.Job)
                .values(rows)
                .on_conflict_do_nothing(
                    index_elements=["owner", "request_id"],
                    index_where=models.Job.request_id.is_not(None),
                )
                .returning(models.Job.id)
            )
        ).scalars()
    )
    stages = [
        {
            "job_id": job_id,
            "name": plan.name,
            "position": position,
            "depends_on": list(plan.depends_on),
            "state": plan.state,
        }
        for job_id, new in zip(ids, jobs, strict=True)
        if job_id in inserted
        for position, plan in enumerate(new.stages)
    ]
    if stages:
        await session.execute(insert(models.JobStage), stages)
    created = [job_id for job_id in ids if job_id in inserted]
    await append_events(session, created, state_event("QUEUED"))
    return [job_id if job_id in inserted else None for job_id in ids]


async def insert_job(
    session: AsyncSession, owner: str, new: NewJob, *, batch_id: uuid.UUID | None = None
) -> uuid.UUID | None:
    """``insert_jobs`` of one job."""
    return (await insert_jobs(session, owner, [new], batch_id=batch_id))[0]


async def insert_video(
    session: AsyncSession,
    owner: str,
    video: media_pb2.Video,
    *,
    max_stored_bytes: int = 0,
    excluding_upload: uuid.UUID | None = None,
) -> media_pb2.Video:
    """Inserts a stored video in the caller's transaction; with ``max_stored_bytes``, refuses
    one that would take the owner beyond it (serialised per owner). ``excluding_upload``: the
    resumable upload becoming this video, whose reservation no longer counts."""
    if max_stored_bytes:
        await lock_owner(session, "videos", owner)
        used = await stored_bytes(session, owner, excluding_upload=excluding_upload)
        if used + video.size_bytes > max_stored_bytes:
            raise storage_full(used, video.size_bytes, max_stored_bytes)
    row = models.Video(
        id=uuid.UUID(video.id),
        owner=owner,
        filename=video.filename,
        content_type=video.content_type,
        size_bytes=video.size_bytes,
        sha256=video.sha256,
        bucket=video.object.bucket,
        object_key=video.object.key,
        media_info=to_json(video.media_info),
        source_url=video.source_url or None,
    )
    session.add(row)
    await session.flush()
    await session.refresh(row)
    return video_to_proto(row)


class Store:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        purge_delay: timedelta = timedelta(seconds=30),
        slots_per_worker: int | None = None,
    ) -> None:
        self.sessions = sessions
        #: How long after a cancel or delete its objects are purged.
        self.purge_delay = purge_delay
        #: Jobs one gateway runs at once (for the estimated start of queued jobs).
        self.slots_per_worker = slots_per_worker

    # videos -----------------------------------------------------------------------------------

    async def check_storage(self, owner: str, incoming: int, limit: int) -> None:
        """Raises RESOURCE_EXHAUSTED unless ``incoming`` more bytes fit the owner's ``limit``
        (0: unlimited)."""
        if not limit:
            return
        async with self.sessions() as session:
            used = await stored_bytes(session, owner)
        if used + incoming > limit:
            raise storage_full(used, incoming, limit)

    async def add_video(
        self, owner: str, video: media_pb2.Video, *, max_stored_bytes: int = 0
    ) -> media_pb2.Video:
        """Records a stored video; with ``max_stored_bytes``, refuses one that would take the
        owner beyond it (checked again here: uploads run concurrently)."""
        async with self.sessions.begin() as session:
            return await insert_video(session, owner, video, max_stored_bytes=max_stored_bytes)

    async def _video_row(
        self, session: AsyncSession, owner: str, video_id: str, *, lock: bool = False
    ) -> models.Video:
        row = await session.get(
            models.Video, parse_id(video_id, "video_id"), with_for_update=lock or None
        )
        if row is None or row.owner != owner:
            raise NotFound(f"video {video_id} not found", reason="VIDEO_NOT_FOUND")
        return row

    async def get_video(self, owner: str, video_id: str) -> media_pb2.Video:
        async with self.sessions() as session:
            return video_to_proto(await self._video_row(session, owner, video_id))

    async def list_videos(
        self, owner: str, size: int, token: str
    ) -> tuple[list[media_pb2.Video], str]:
        filters: dict[str, Any] = {"kind": "videos"}
        query = select(models.Video).where(models.Video.owner == owner)
        async with self.sessions() as session:
            rows, next_token = await keyset_page(session, query, models.Video, size, token, filters)
        return [video_to_proto(r) for r in rows], next_token

    async def delete_video(self, owner: str, video_id: str) -> tuple[int, int]:
        """Deletes a video with every job that processed it: running and queued jobs are
        cancelled first (their runners stop), then the rows go, and the video's and the jobs'
        objects are queued for purging. Returns (jobs cancelled, artifacts deleted)."""
        async with self.sessions.begin() as session:
            video = await self._video_row(session, owner, video_id, lock=True)
            jobs = (
                await session.scalars(
                    select(models.Job)
                    .where(models.Job.video_id == video.id)
                    .order_by(models.Job.id)
                    .with_for_update()
                )
            ).all()
            cancelled = 0
            for job in jobs:
                if job.state not in models.TERMINAL_JOB_STATES:
                    cancelled += 1
                    await session.execute(select(func.pg_notify(CANCEL_CHANNEL, str(job.id))))
                # Wakes the job's watchers on every replica: they find it gone (NOT_FOUND).
                await notify_event(session, job.id, job.last_event_sequence + 1)
                await request_purge(
                    session, job_prefix(job.id), reason="video_deleted", delay=self.purge_delay
                )
            artifacts = 0
            if jobs:
                ids = [job.id for job in jobs]
                named = (
                    await session.scalars(
                        select(models.Artifact.object_key).where(models.Artifact.job_id.in_(ids))
                    )
                ).all()
                artifacts = len(named)
                # Objects these jobs reused from other jobs (under those jobs' prefixes): purged
                # too, unless some other artifact row still names them.
                own = {job_prefix(job_id) for job_id in ids}
                for prefix in sorted({reused_prefix(key) for key in named} - own - {""}):
                    await request_purge(
                        session, prefix, reason="video_deleted", delay=self.purge_delay
                    )
                # Stages, events and artifact rows go with their jobs (ON DELETE CASCADE).
                await session.execute(delete(models.Job).where(models.Job.id.in_(ids)))
            await request_purge(
                session, video_prefix(video.id), reason="video_deleted", delay=self.purge_delay
            )
            await session.delete(video)
        return cancelled, artifacts

    async def job_exists(self, job_id: uuid.UUID) -> bool:
        async with self.sessions() as session:
            return await session.get(models.Job, job_id) is not None

    # jobs -------------------------------------------------------------------------------------

    async def create_job(
        self,
        owner: str,
        *,
        video_id: str | None,
        source_url: str | None,
        spec: pipeline_pb2.PipelineSpec,
        request_id: str,
        labels: dict[str, str],
        stages: Sequence[StagePlan],
        timeout: timedelta | None = None,
        max_active: int = 0,
        trace_context: dict[str, str] | None = None,
        priority: int = 0,
    ) -> tuple[job_pb2.Job, bool]:
        """Creates a queued job, or returns the caller's earlier job with the same request_id.
        The boolean says whether it was created now. With ``max_active``, a new job beyond
        that many queued or running jobs of the owner is refused (a repeated request_id still
        returns its job)."""
        new = NewJob(
            video_id=video_id,
            source_url=source_url,
            spec=spec,
            request_id=request_id,
            labels=labels,
            stages=tuple(stages),
            timeout=timeout,
            trace_context=trace_context,
            priority=priority,
        )
        async with self.sessions.begin() as session:
            if video_id is not None:
                await self._video_row(session, owner, video_id)
            if max_active:
                await lock_owner(session, "jobs", owner)
                if request_id:
                    existing_id = await session.scalar(
                        select(models.Job.id).where(
                            models.Job.owner == owner, models.Job.request_id == request_id
                        )
                    )
                    if existing_id is not None:
                        return await self._load(session, existing_id), False
                await check_active(session, owner, max_active)
            job_id = await insert_job(session, owner, new)
            if job_id is None:
                existing = (
                    await session.scalars(
                        select(models.Job.id).where(
                            models.Job.owner == owner, models.Job.request_id == request_id
                        )
                    )
                ).one()
                return await self._load(session, existing), False
            await session.execute(select(func.pg_notify(QUEUE_CHANNEL, str(job_id))))
            return await self._load(session, job_id), True

    async def _load(
        self, session: AsyncSession, job_id: uuid.UUID, *, full: bool = True
    ) -> job_pb2.Job:
        return await load_job(session, job_id, full=full)

    async def _job_row(
        self, session: AsyncSession, owner: str, job_id: str, *, lock: bool = False
    ) -> models.Job:
        query = select(models.Job).where(models.Job.id == parse_id(job_id, "job_id"))
        if lock:
            query = query.with_for_update()
        row = (await session.scalars(query)).one_or_none()
        if row is None or row.owner != owner:
            raise NotFound(f"job {job_id} not found", reason="JOB_NOT_FOUND")
        return row

    async def get_job(self, owner: str, job_id: str, *, full: bool = True) -> job_pb2.Job:
        async with self.sessions() as session:
            try:
                job = await load_job(
                    session,
                    parse_id(job_id, "job_id"),
                    owner=owner,
                    full=full,
                    slots_per_worker=self.slots_per_worker,
                )
            except LookupError:
                raise NotFound(f"job {job_id} not found", reason="JOB_NOT_FOUND") from None
            return job

    async def list_jobs(
        self,
        owner: str,
        *,
        size: int,
        token: str,
        states: Sequence[str],
        labels: dict[str, str],
        video_id: str,
        full: bool = False,
        batch_id: str = "",
    ) -> tuple[list[job_pb2.Job], str]:
        filters: dict[str, Any] = {
            "kind": "jobs",
            "states": sorted(states),
            "labels": labels,
            "video": video_id,
        }
        if batch_id:
            filters["batch"] = batch_id
        # The page's positions, and (BASIC view) each job's version and the snapshot kept of
        # it; the jobs without a usable one are loaded in one statement below.
        columns: list[Any] = [models.Job.id, models.Job.create_time]
        if not full:
            columns += [
                models.Job.state,
                snapshots.VERSION.label("version"),
                models.JobSnapshot.format,
                models.JobSnapshot.version.label("snapshot_version"),
                models.JobSnapshot.body,
            ]
        query = select(*columns)
        if not full:
            query = query.outerjoin(models.JobSnapshot, models.JobSnapshot.job_id == models.Job.id)
        query = query.where(models.Job.owner == owner)
        if states:
            query = query.where(models.Job.state.in_(states))
        if labels:
            query = query.where(models.Job.labels.contains(labels))
        if video_id:
            query = query.where(models.Job.video_id == parse_id(video_id, "video_id"))
        if batch_id:
            query = query.where(models.Job.batch_id == parse_id(batch_id, "batch_id"))
        async with self.sessions() as session:
            rows, next_token = await keyset_page(
                session, query, models.Job, size, token, filters, columns=True
            )
            kept = {
                r.id: snapshots.parse(r.body)
                for r in rows
                if not full and snapshots.usable(r.state, r.version, r.format, r.snapshot_version)
            }
            missing = [r.id for r in rows if r.id not in kept]
            loaded = {
                uuid.UUID(job.id): job for job in await load_jobs(session, missing, full=full)
            }
        if not full:
            await snapshots.store(
                self.sessions,
                [
                    (r.id, r.version, loaded[r.id])
                    for r in rows
                    if r.id in loaded and r.state in models.TERMINAL_JOB_STATES
                ],
            )
        jobs = (kept[r.id] if r.id in kept else loaded.get(r.id) for r in rows)
        return [job for job in jobs if job is not None], next_token

    async def cancel_job(self, owner: str, job_id: str) -> job_pb2.Job:
        async with self.sessions.begin() as session:
            row = await self._job_row(session, owner, job_id, lock=True)
            if row.state in models.TERMINAL_JOB_STATES:
                raise FailedPrecondition(
                    f"job {job_id} already ended ({row.state})", reason="JOB_ALREADY_ENDED"
                )
            await session.execute(
                update(models.Job)
                .where(models.Job.id == row.id)
                .values(
                    state="CANCELLED", end_time=func.now(), lease_owner=None, lease_expires_at=None
                )
            )
            await session.execute(
                update(models.JobStage)
                .where(
                    models.JobStage.job_id == row.id,
                    models.JobStage.state.in_(models.OPEN_STAGE_STATES),
                )
                .values(state="CANCELLED", end_time=func.now())
            )
            await request_job_purge(session, row, reason="job_cancelled", delay=self.purge_delay)
            await append_event(session, row.id, state_event("CANCELLED"), with_job=True)
            await session.execute(select(func.pg_notify(CANCEL_CHANNEL, str(row.id))))
        return await self.get_job(owner, job_id)

    async def retry_job(self, owner: str, job_id: str, *, max_active: int = 0) -> job_pb2.Job:
        """Queues a failed or cancelled job again: its succeeded (and skipped) stages stay as
        they are, with their artifacts; the others start over with no attempts. The job gets
        a fresh deadline (its timeout again, from now) and its pending purges are cancelled in
        the same transaction, so nothing it writes from now on is purged. FAILED_PRECONDITION
        for a job that has not ended, or that succeeded."""
        async with self.sessions.begin() as session:
            if max_active:
                await lock_owner(session, "jobs", owner)
            row = await self._job_row(session, owner, job_id, lock=True)
            if row.state not in ("FAILED", "CANCELLED"):
                raise FailedPrecondition(
                    f"job {job_id} is {row.state}: only a failed or cancelled job can be retried",
                    reason="JOB_NOT_RETRYABLE",
                    metadata={"state": row.state},
                )
            if max_active:
                await check_active(session, owner, max_active)
            await session.execute(
                update(models.JobStage)
                .where(
                    models.JobStage.job_id == row.id,
                    models.JobStage.state.not_in(("SUCCEEDED", "SKIPPED")),
                )
                .values(
                    state="PENDING",
                    progress=0.0,
                    attempts=0,
                    error=None,
                    outputs=None,
                    start_time=None,
                    end_time=None,
                    fingerprint=None,
                    reused_from=None,
                )
            )
            await cancel_job_purges(session, row)
            timeout = (row.deadline - row.create_time) if row.deadline is not None else None
            await session.execute(
                update(models.Job)
                .where(models.Job.id == row.id)
                .values(
                    state="QUEUED",
                    error=None,
                    end_time=None,
                    lease_owner=None,
                    lease_expires_at=None,
                    deadline=func.now() + timeout if timeout is not None else None,
                )
            )
            await append_event(session, row.id, state_event("QUEUED"))
            await session.execute(select(func.pg_notify(QUEUE_CHANNEL, str(row.id))))
        return await self.get_job(owner, job_id)

    async def events_after(
        self, job_id: uuid.UUID, after: int, limit: int = 500
    ) -> list[job_pb2.JobEvent]:
        query = (
            select(
                models.JobEvent.job_id,
                models.JobEvent.sequence,
                models.JobEvent.payload,
                models.JobEvent.create_time,
            )
            .where(models.JobEvent.job_id == job_id, models.JobEvent.sequence > after)
            .order_by(models.JobEvent.sequence)
            .limit(limit)
        )
        async with self.sessions() as session:
            rows = (await session.execute(query)).all()
        return [event_from_row(r) for r in rows]

    async def get_artifact(self, owner: str, job_id: str, name: str) -> media_pb2.Artifact:
        async with self.sessions() as session:
            row = await self._job_row(session, owner, job_id)
            artifact = await session.get(models.Artifact, (row.id, name))
            if artifact is None:
                raise NotFound(
                    f"job {job_id} has no artifact {name[:200]!r}", reason="ARTIFACT_NOT_FOUND"
                )
            return artifact_to_proto(artifact)
