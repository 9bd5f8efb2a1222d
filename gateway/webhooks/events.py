"""Which job events are webhook events, and their names (Standard Webhooks ``type``)."""

from __future__ import annotations

from typing import TypeAlias

from reelmill.v1 import job_pb2, webhook_service_pb2
from reelmill.webhooks import event_type_name

EventType: TypeAlias = webhook_service_pb2.WebhookEventType.ValueType

#: Wire name of each event type, as the payload's ``type`` and in the database.
NAMES: dict[EventType, str] = {
    value: event_type_name(name)
    for name, value in webhook_service_pb2.WebhookEventType.items()
    if value != webhook_service_pb2.WEBHOOK_EVENT_TYPE_UNSPECIFIED
}
BY_NAME: dict[str, EventType] = {name: value for value, name in NAMES.items()}
#: What an endpoint created without event types receives.
DEFAULT_TYPES = ("job.succeeded", "job.failed", "job.cancelled")
#: Events whose payload carries the finished job's artifacts (with URLs).
TERMINAL_TYPES = frozenset(DEFAULT_TYPES)

_JOB_STATES = {
    job_pb2.JOB_STATE_QUEUED: "job.queued",
    job_pb2.JOB_STATE_RUNNING: "job.started",
    job_pb2.JOB_STATE_SUCCEEDED: "job.succeeded",
    job_pb2.JOB_STATE_FAILED: "job.failed",
    job_pb2.JOB_STATE_CANCELLED: "job.cancelled",
}
_FINISHED_STAGES = frozenset(
    {job_pb2.STAGE_STATE_SUCCEEDED, job_pb2.STAGE_STATE_FAILED, job_pb2.STAGE_STATE_SKIPPED}
)


def event_type(event: job_pb2.JobEvent) -> str | None:
    """The webhook event type of a job event, or None (progress, retries: never delivered)."""
    kind = event.WhichOneof("payload")
    if kind == "job_state_changed":
        return _JOB_STATES.get(event.job_state_changed.state)
    if kind == "stage_updated" and event.stage_updated.stage.state in _FINISHED_STAGES:
        return "stage.finished"
    return None
