"""Rich output for jobs: live per-stage progress bars and result summaries."""

from __future__ import annotations

from collections.abc import AsyncIterator

from google.protobuf import json_format, timestamp_pb2
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from reelmill.v1 import job_pb2, media_pb2

console = Console(highlight=False)


def state_name(state: int) -> str:
    return job_pb2.JobState.Name(state).removeprefix("JOB_STATE_")  # type: ignore[arg-type]


def stage_state_name(state: int) -> str:
    return job_pb2.StageState.Name(state).removeprefix("STAGE_STATE_")  # type: ignore[arg-type]


async def follow(events: AsyncIterator[job_pb2.JobEvent]) -> job_pb2.Job | None:
    """Shows live progress until the terminal event; returns the final job."""
    final: job_pb2.Job | None = None
    with Progress(
        TextColumn("{task.description:<12}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TextColumn("{task.fields[status]:<10}"),
        TextColumn("{task.fields[message]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        tasks: dict[str, TaskID] = {}
        job_line = progress.add_task("job", total=None, status="…", message="")
        async for event in events:
            kind = event.WhichOneof("payload")
            if kind == "job_state_changed":
                state = state_name(event.job_state_changed.state)
                message = event.job_state_changed.error.message
                progress.update(job_line, status=state, message=message)
            elif kind == "stage_updated":
                stage = event.stage_updated.stage
                if stage.name not in tasks:
                    tasks[stage.name] = progress.add_task(
                        stage.name, total=1.0, status="", message=""
                    )
                progress.update(
                    tasks[stage.name],
                    completed=stage.progress,
                    status=stage_state_name(stage.state),
                    message=(stage.error.message or event.stage_updated.message)[:60],
                )
            if event.HasField("job"):
                final = event.job
        progress.update(job_line, total=1.0, completed=1.0)
    return final


def show_job(job: job_pb2.Job) -> None:
    console.print(
        f"[bold]job[/] {job.id}  state [bold]{state_name(job.state)}[/]"
        f"  video {job.video_id or job.source_url}"
    )
    if job.error.message:
        console.print(f"[red]error[/] {job.error.code} {job.error.reason}: {job.error.message}")
    if job.queue_position:
        line = f"queued at position {job.queue_position}"
        if job.HasField("estimated_start_time"):
            line += f", expected to start around {_clock(job.estimated_start_time)}"
        console.print(line)
    if job.HasField("deadline"):
        console.print(f"deadline {_clock(job.deadline)}")
    stages = Table("stage", "state", "progress", "attempts", "error", box=None)
    for stage in job.stages:
        stages.add_row(
            stage.name,
            stage_state_name(stage.state),
            f"{stage.progress:.0%}",
            str(stage.attempts),
            stage.error.message,
        )
    console.print(stages)
    if job.HasField("media_info"):
        show_media(job.media_info)
    if job.artifacts:
        artifacts = Table("artifact", "kind", "bytes", "content type", box=None)
        for artifact in job.artifacts:
            artifacts.add_row(
                artifact.name,
                media_pb2.ArtifactKind.Name(artifact.kind).removeprefix("ARTIFACT_KIND_"),
                f"{artifact.size_bytes:,}",
                artifact.content_type,
            )
        console.print(artifacts)


def _clock(stamp: timestamp_pb2.Timestamp) -> str:
    return str(stamp.ToDatetime().replace(microsecond=0).isoformat()) + "Z"


def show_media(info: media_pb2.MediaInfo) -> None:
    duration = info.duration.ToTimedelta().total_seconds()
    console.print(f"media: {info.container}, {duration:.2f} s, {info.size_bytes:,} bytes")
    for video in info.video_streams:
        console.print(
            f"  video #{video.index}: {video.codec} {video.width}x{video.height} "
            f"{video.fps:.2f} fps {video.pixel_format}"
        )
    for audio in info.audio_streams:
        console.print(
            f"  audio #{audio.index}: {audio.codec} {audio.channels} ch {audio.sample_rate} Hz"
        )


def as_json(message: job_pb2.Job | media_pb2.Video) -> str:
    return json_format.MessageToJson(message, preserving_proto_field_name=True)
