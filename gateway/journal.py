"""Appending job events: in the caller's transaction, numbered per job, announced with NOTIFY,
and (``gateway.webhooks.outbox``) queued for the owner's webhook endpoints that want it.

The sequence comes from ``jobs.last_event_sequence``, bumped with an UPDATE that row-locks the
job until commit, so events of one job commit in sequence order with no gaps. ``pg_notify`` is
transactional: watchers on every replica hear of an event only once it is committed.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import bindparam, func, insert, select, text, update
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.convert import job_from_record, to_json
from gateway.db import models
from gateway.queue import QUEUE_POSITION
from gateway.webhooks import outbox as webhook_outbox
from reelmill.v1 import job_pb2

EVENTS_CHANNEL = "reelmill_job_events"
QUEUE_CHANNEL = "reelmill_jobs_queued"
CANCEL_CHANNEL = "reelmill_jobs_cancelled"


#: One job's columns, stages, artifacts, queue position and the inputs of its estimated start
#: (``{position}``: the queue-position subquery of the job ``j``).
_JOB_SELECT = """
    SELECT j.id, j.owner, j.video_id, j.source_url, j.spec, j.state, j.labels, j.request_id,
           j.error, j.media_info, j.metadata, j.attempts, j.last_event_sequence,
           j.priority, j.batch_id, j.clips,
           j.create_time, j.start_time, j.end_time, j.update_time, j.deadline, now() AS now,
           CASE WHEN :full THEN j.transcript ELSE j.transcript - 'segments' END AS transcript,
           CASE WHEN :full THEN j.scenes ELSE j.scenes - 'shots' - 'transitions' END AS scenes,
           CASE WHEN :full THEN j.on_screen_text ELSE j.on_screen_text - 'entries' END
                AS on_screen_text,
           COALESCE((SELECT json_agg(json_build_object(
                                'name', s.name, 'position', s.position, 'state', s.state,
                                'progress', s.progress, 'attempts', s.attempts,
                                'error', s.error, 'start_time', s.start_time,
                                'end_time', s.end_time, 'depends_on', s.depends_on,
                                'reused_from', s.reused_from,
                                'outputs', json_build_object('cached', s.outputs -> 'cached'))
                              ORDER BY s.position)
                       FROM job_stages s WHERE s.job_id = j.id), '[]') AS stages_json,
           CASE WHEN :full THEN
                COALESCE((SELECT json_agg(a ORDER BY a.name)
                            FROM artifacts a WHERE a.job_id = j.id), '[]')
                ELSE '[]' END AS artifacts_json,
           CASE WHEN :position AND j.state = 'QUEUED' AND j.lease_owner IS NULL THEN
                COALESCE(({position}), 0)
                ELSE 0 END AS queue_position,
           CASE WHEN j.state = 'QUEUED' AND :estimate THEN
                (SELECT count(*) FROM jobs r
                  WHERE r.lease_owner IS NOT NULL AND r.state = 'RUNNING')
                ELSE 0 END AS running_jobs,
           CASE WHEN j.state = 'QUEUED' AND :estimate THEN
                (SELECT count(DISTINCT w.lease_owner) FROM jobs w
                  WHERE w.lease_owner IS NOT NULL AND w.state = 'RUNNING'
                    AND w.lease_expires_at > now())
                ELSE 0 END AS live_workers,
           CASE WHEN j.state = 'QUEUED' AND :estimate THEN
                (SELECT avg(extract(epoch FROM d.end_time - d.start_time))
                   FROM (SELECT end_time, start_time FROM jobs
                          WHERE state = 'SUCCEEDED' AND start_time IS NOT NULL
                          ORDER BY end_time DESC LIMIT 50) d)
                END AS mean_job_seconds
      FROM jobs j
"""

_LOAD_JOB = text(
    _JOB_SELECT.format(position=QUEUE_POSITION.text)
    + " WHERE j.id = :id AND (CAST(:owner AS text) IS NULL OR j.owner = :owner)"
)
#: The same for many jobs (a page of ListJobs) in one round trip: each queued one's position
#: is ``QUEUE_POSITION`` of that row.
_LOAD_JOBS = text(
    _JOB_SELECT.format(position=QUEUE_POSITION.text.replace(":id", "j.id"))
    + " WHERE j.id = ANY(:ids)"
).bindparams(bindparam("ids", type_=ARRAY(UUID(as_uuid=True))))


async def load_job(
    session: AsyncSession,
    job_id: uuid.UUID,
    *,
    owner: str | None = None,
    full: bool = True,
    slots_per_worker: int | None = None,
    position: bool = True,
) -> job_pb2.Job:
    """The job (stages, artifacts, queue position, estimated start) in one round trip;
    ``full=False`` leaves out the transcript's segments, the shots and transitions, the
    on-screen text's entries and the artifacts. Raises
    ``LookupError`` when there is no such job (of ``owner``, when given)."""
    # The estimate's three aggregates run only for a caller that shows it (GetJob).
    params = {
        "id": job_id,
        "owner": owner,
        "full": full,
        "estimate": bool(slots_per_worker),
        "position": position,
    }
    row = (await session.execute(_LOAD_JOB, params)).mappings().first()
    if row is None:
        raise LookupError(str(job_id))
    return job_from_record(row, slots_per_worker=slots_per_worker)


async def load_jobs(
    session: AsyncSession, job_ids: Sequence[uuid.UUID], *, full: bool = False
) -> list[job_pb2.Job]:
    """``load_job`` of many jobs in one statement (without the estimated start), in the order
    of ``job_ids``; a job that does not exist is left out."""
    if not job_ids:
        return []
    params = {"ids": list(job_ids), "full": full, "estimate": False, "position": True}
    rows = {row["id"]: row for row in (await session.execute(_LOAD_JOBS, params)).mappings()}
    return [job_from_record(rows[job_id]) for job_id in job_ids if job_id in rows]


async def append_event(
    session: AsyncSession, job_id: uuid.UUID, event: job_pb2.JobEvent, *, with_job: bool = False
) -> int:
    """Adds ``event`` to the job's journal in the current transaction; returns its sequence.
    With ``with_job`` the event carries the whole job as it stands after this transaction."""
    sequence = (
        await session.execute(
            update(models.Job)
            .where(models.Job.id == job_id)
            .values(last_event_sequence=models.Job.last_event_sequence + 1, update_time=func.now())
            .returning(models.Job.last_event_sequence)
        )
    ).scalar_one()
    if with_job:
        await session.flush()
        event.job.CopyFrom(await load_job(session, job_id))
    payload = event.WhichOneof("payload") or "none"
    session.add(
        models.JobEvent(job_id=job_id, sequence=sequence, type=payload, payload=to_json(event))
    )
    # The webhook deliveries of this event commit (or roll back) with it.
    await webhook_outbox.enqueue(session, job_id, int(sequence), event, load_job)
    await notify_event(session, job_id, sequence)
    return int(sequence)


async def append_events(
    session: AsyncSession, job_ids: Sequence[uuid.UUID], event: job_pb2.JobEvent
) -> None:
    """``append_event`` of the same ``event`` (without the job) to many jobs (a batch's first
    events) in one statement per step rather than per job."""
    if not job_ids:
        return
    sequences = dict(
        (
            await session.execute(
                update(models.Job)
                .where(models.Job.id.in_(job_ids))
                .values(
                    last_event_sequence=models.Job.last_event_sequence + 1, update_time=func.now()
                )
                .returning(models.Job.id, models.Job.last_event_sequence)
                .execution_options(synchronize_session=False)
            )
        ).all()
    )
    payload = event.WhichOneof("payload") or "none"
    document = to_json(event)
    await session.execute(
        insert(models.JobEvent),
        [
            {"job_id": job_id, "sequence": sequences[job_id], "type": payload, "payload": document}
            for job_id in job_ids
        ],
    )
    for job_id in job_ids:
        await webhook_outbox.enqueue(session, job_id, int(sequences[job_id]), event, load_job)
    await session.execute(
        _NOTIFY_EVENTS,
        {
            "channel": EVENTS_CHANNEL,
            "notices": [f"{job_id}:{sequences[job_id]}" for job_id in job_ids],
        },
    )


_NOTIFY_EVENTS = text("SELECT pg_notify(:channel, n) FROM unnest(CAST(:notices AS text[])) AS n")


async def notify_event(session: AsyncSession, job_id: uuid.UUID, sequence: int) -> None:
    """Tells every replica's watchers, at commit, that the job has an event ``sequence``."""
    await session.execute(select(func.pg_notify(EVENTS_CHANNEL, f"{job_id}:{sequence}")))


def parse_event_notification(payload: str) -> tuple[uuid.UUID, int]:
    """The (job id, sequence) an ``EVENTS_CHANNEL`` payload names; ValueError when malformed."""
    job_text, _, sequence_text = payload.partition(":")
    try:
        return uuid.UUID(job_text), int(sequence_text)
    except ValueError:
        raise ValueError(f"not an event notification: {payload[:100]!r}") from None


def state_event(state: str, error: job_pb2.JobError | None = None) -> job_pb2.JobEvent:
    return job_pb2.JobEvent(
        job_state_changed=job_pb2.JobStateChanged(
            state=job_pb2.JobState.Value(f"JOB_STATE_{state}"), error=error
        )
    )
