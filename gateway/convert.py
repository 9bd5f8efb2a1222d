"""Rows <-> protobuf messages. JSONB columns hold protobuf JSON (field names as in the protos)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, TypeVar

from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message

from gateway import protojson
from gateway.db import models
from reelmill.v1 import job_pb2, media_pb2, pipeline_pb2, vision_pb2

M = TypeVar("M", bound=Message)


def to_json(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def from_json(data: dict[str, Any] | None, cls: type[M]) -> M:
    """``ParseDict``'s message, at a fraction of its cost (``gateway.protojson``)."""
    return protojson.parse(data, cls)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    """``Timestamp.FromDatetime`` in integer arithmetic (a quarter of its cost: a page of jobs
    converts hundreds). A naive ``value`` is taken as UTC, as ``FromDatetime`` takes it."""
    if value is None:
        return None
    delta = (value if value.tzinfo is not None else value.replace(tzinfo=UTC)) - _EPOCH
    return timestamp_pb2.Timestamp(
        seconds=delta.days * 86_400 + delta.seconds, nanos=delta.microseconds * 1000
    )


def video_to_proto(row: models.Video) -> media_pb2.Video:
    return media_pb2.Video(
        id=str(row.id),
        filename=row.filename,
        content_type=row.content_type,
        size_bytes=row.size_bytes,
        sha256=row.sha256,
        object=media_pb2.ObjectRef(bucket=row.bucket, key=row.object_key),
        media_info=from_json(row.media_info, media_pb2.MediaInfo),
        create_time=timestamp(row.create_time),
        source_url=row.source_url or "",
    )


#: Stored state names (``SUCCEEDED``) to enum values, looked up once rather than per row.
_STAGE_STATES = {
    name.removeprefix("STAGE_STATE_"): value for name, value in job_pb2.StageState.items()
}


def stage_to_proto(row: models.JobStage) -> job_pb2.Stage:
    return job_pb2.Stage(
        name=row.name,
        state=_STAGE_STATES[row.state],
        progress=row.progress,
        attempts=row.attempts,
        error=from_json(row.error, job_pb2.JobError) if row.error else None,
        start_time=timestamp(row.start_time),
        end_time=timestamp(row.end_time),
        depends_on=list(row.depends_on or []),
        reused_from_job_id=str(row.reused_from) if row.reused_from else "",
        cached=bool((row.outputs or {}).get("cached")),
    )


def artifact_to_proto(row: models.Artifact) -> media_pb2.Artifact:
    return media_pb2.Artifact(
        name=row.name,
        kind=media_pb2.ArtifactKind.Value(row.kind),
        object=media_pb2.ObjectRef(bucket=row.bucket, key=row.object_key),
        content_type=row.content_type,
        size_bytes=row.size_bytes,
        sha256=row.sha256,
        attributes={k: str(v) for k, v in (row.attributes or {}).items()},
        stage=row.stage,
        create_time=timestamp(row.create_time),
    )


def job_to_proto(
    row: models.Job,
    stages: list[Any],
    artifacts: list[Any],
    queue_position: int = 0,
) -> job_pb2.Job:
    return job_pb2.Job(
        id=str(row.id),
        video_id=str(row.video_id) if row.video_id else "",
        source_url=row.source_url or "",
        spec=from_json(row.spec, pipeline_pb2.PipelineSpec),
        state=job_pb2.JobState.Value(f"JOB_STATE_{row.state}"),
        stages=[stage_to_proto(s) for s in sorted(stages, key=lambda s: s.position)],
        labels={k: str(v) for k, v in (row.labels or {}).items()},
        request_id=row.request_id or "",
        create_time=timestamp(row.create_time),
        start_time=timestamp(row.start_time),
        end_time=timestamp(row.end_time),
        update_time=timestamp(row.update_time),
        error=from_json(row.error, job_pb2.JobError) if row.error else None,
        media_info=from_json(row.media_info, media_pb2.MediaInfo) if row.media_info else None,
        artifacts=[artifact_to_proto(a) for a in sorted(artifacts, key=lambda a: a.name)],
        transcript=from_json(row.transcript, media_pb2.Transcript) if row.transcript else None,
        metadata=from_json(row.metadata_, media_pb2.VideoMetadata) if row.metadata_ else None,
        scenes=from_json(row.scenes, vision_pb2.Scenes) if row.scenes else None,
        on_screen_text=(
            from_json(row.on_screen_text, vision_pb2.OnScreenText) if row.on_screen_text else None
        ),
        clips=[from_json(clip, media_pb2.Clip) for clip in row.clips or ()],
        queue_position=queue_position,
        last_event_sequence=row.last_event_sequence,
        deadline=timestamp(row.deadline),
        priority=row.priority,
        batch_id=str(row.batch_id) if row.batch_id else "",
    )


def _record(data: dict[str, Any], *times: str) -> Any:
    """A JSON-aggregated row as an object with attributes, timestamps parsed."""
    values = dict(data)
    for name in times:
        if values.get(name):
            values[name] = datetime.fromisoformat(values[name])
    return SimpleNamespace(**values)


def job_from_record(row: Any, *, slots_per_worker: int | None = None) -> job_pb2.Job:
    """A job from the single-query load (jobs.* plus aggregated stages and artifacts). With
    ``slots_per_worker`` (jobs one gateway runs at once), a queued job gets an estimated start."""
    job: Any = SimpleNamespace(**dict(row))
    job.metadata_ = row["metadata"]
    stages = [_record(s, "start_time", "end_time") for s in row["stages_json"]]
    artifacts = [_record(a, "create_time") for a in row["artifacts_json"]]
    proto = job_to_proto(job, stages, artifacts, int(row["queue_position"]))
    if slots_per_worker and proto.queue_position and row["mean_job_seconds"] is not None:
        wait = estimated_wait(
            position=proto.queue_position,
            running=int(row["running_jobs"]),
            slots=slots_per_worker * max(int(row["live_workers"]), 1),
            mean_seconds=float(row["mean_job_seconds"]),
        )
        proto.estimated_start_time.FromDatetime(row["now"] + timedelta(seconds=wait))
    return proto


def estimated_wait(*, position: int, running: int, slots: int, mean_seconds: float) -> float:
    """Seconds until the job at queue ``position`` (1-based) starts. Jobs finish at
    ``slots / mean_seconds`` per second; the job starts once enough of those ahead of it
    (running and queued) have finished to free a slot. A job that fits a free slot starts at
    once."""
    ahead = running + position - 1
    if ahead < slots:
        return 0.0
    return (ahead - slots + 1) / slots * mean_seconds


def event_from_row(row: Any) -> job_pb2.JobEvent:
    event = from_json(row.payload, job_pb2.JobEvent)
    event.job_id = str(row.job_id)
    event.sequence = row.sequence
    event.create_time.FromDatetime(row.create_time)
    return event


def job_state_name(state: int) -> str:
    return job_pb2.JobState.Name(state).removeprefix("JOB_STATE_")  # type: ignore[arg-type]


def is_terminal(event: job_pb2.JobEvent) -> bool:
    return (
        event.WhichOneof("payload") == "job_state_changed"
        and job_state_name(event.job_state_changed.state) in models.TERMINAL_JOB_STATES
    )
