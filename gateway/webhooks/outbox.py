"""The webhook outbox: deliveries written in the same transaction as the job event.

``enqueue`` runs inside ``gateway.journal.append_event``: when the event is a webhook event
(``events.event_type``) and the job's owner has active endpoints subscribed to it, it inserts
one ``webhook_deliveries`` row per endpoint, with a snapshot of the payload's data, and a
``NOTIFY`` that wakes the delivery workers at commit. The event and its deliveries commit or
roll back together: a crash can neither lose a delivery nor invent one for an event that
never happened. Events that are not webhook events (progress) cost nothing here; the others
cost one indexed look-up of the owner's endpoints.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.convert import to_json
from gateway.db import models
from gateway.db import webhooks as tables
from gateway.webhooks.events import TERMINAL_TYPES, event_type
from reelmill.v1 import job_pb2

#: NOTIFY channel that wakes every gateway's delivery worker.
DUE_CHANNEL = "reelmill_webhooks_due"

#: ``load_job(session, job_id, full=False)``: the job in the BASIC view.
LoadJob = Callable[..., Awaitable[job_pb2.Job]]


def basic_view(job: job_pb2.Job) -> job_pb2.Job:
    """The job as ``JOB_VIEW_BASIC`` shows it: no artifacts, no transcript segments."""
    basic = job_pb2.Job()
    basic.CopyFrom(job)
    del basic.artifacts[:]
    if basic.HasField("transcript"):
        del basic.transcript.segments[:]
    return basic


def payload_data(
    job_id: uuid.UUID, sequence: int, event: job_pb2.JobEvent, job: job_pb2.Job, kind: str
) -> dict[str, Any]:
    """What a delivery's ``data`` holds: the event, the job (BASIC view) and, for a finished
    job, its artifacts (the worker adds their URLs when it sends)."""
    bare = job_pb2.JobEvent()
    bare.CopyFrom(event)
    bare.ClearField("job")
    bare.job_id = str(job_id)
    bare.sequence = sequence
    data: dict[str, Any] = {
        "job_id": str(job_id),
        "sequence": sequence,
        "event": to_json(bare),
        "job": to_json(basic_view(job)),
    }
    if kind in TERMINAL_TYPES:
        data["artifacts"] = [to_json(artifact) for artifact in job.artifacts]
    return data


async def enqueue(
    session: AsyncSession,
    job_id: uuid.UUID,
    sequence: int,
    event: job_pb2.JobEvent,
    load_job: LoadJob,
) -> int:
    """Adds the event's deliveries to the outbox in the current transaction; how many."""
    kind = event_type(event)
    if kind is None:
        return 0
    owner = select(models.Job.owner).where(models.Job.id == job_id).scalar_subquery()
    endpoints = (
        await session.scalars(
            select(tables.WebhookEndpoint.id).where(
                tables.WebhookEndpoint.owner == owner,
                tables.WebhookEndpoint.state == "ACTIVE",
                tables.WebhookEndpoint.event_types.contains([kind]),
            )
        )
    ).all()
    if not endpoints:
        return 0
    if event.HasField("job"):
        job = event.job
    else:
        await session.flush()  # the job as this transaction leaves it
        job = await load_job(session, job_id, full=False)
    data = payload_data(job_id, sequence, event, job, kind)
    await session.execute(
        insert(tables.WebhookDelivery)
        .values(
            [
                {
                    "id": uuid.uuid4(),
                    "endpoint_id": endpoint,
                    "job_id": job_id,
                    "sequence": sequence,
                    "event_type": kind,
                    "payload": data,
                }
                for endpoint in endpoints
            ]
        )
        .on_conflict_do_nothing(index_elements=["endpoint_id", "job_id", "sequence"])
    )
    await session.execute(select(func.pg_notify(DUE_CHANNEL, "")))
    return len(endpoints)
