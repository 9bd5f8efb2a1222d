"""What a person reads when a job ends (``submit --watch``, ``jobs watch``, ``jobs retry
--watch``, ``demo``): how it ended and in how long, the title, duration and language, the first
lines of the transcript, the chapters with their times, the clips, and the artifacts by group.
``reelmill jobs get`` shows everything else (stages, shots, on-screen text, every artifact)."""

from __future__ import annotations

from reelmill.cli import render
from reelmill.v1 import job_pb2

#: Transcript segments shown; the rest are counted.
TRANSCRIPT_LINES = 5


def _seconds(job: job_pb2.Job) -> float | None:
    if job.HasField("start_time") and job.HasField("end_time"):
        return (job.end_time.ToNanoseconds() - job.start_time.ToNanoseconds()) / 1e9
    return None


def _facts(job: job_pb2.Job) -> str:
    """ "0:11, 640x360 h264 25 fps, aac 2 ch, speech in en" """
    parts = []
    info = job.media_info
    if job.HasField("media_info"):
        parts.append(render.timecode(info.duration.ToTimedelta().total_seconds()))
        parts += [f"{v.width}x{v.height} {v.codec} {v.fps:.0f} fps" for v in info.video_streams[:1]]
        parts += [f"{a.codec} {a.channels} ch" for a in info.audio_streams[:1]]
    if job.transcript.language:
        parts.append(f"speech in {job.transcript.language}")
    return ", ".join(parts)


def show_summary(job: job_pb2.Job) -> None:
    console = render.console
    took = _seconds(job)
    console.print(
        f"[bold]job[/] {job.id} [bold]{render.state_name(job.state)}[/]"
        + (f" in {took:.1f} s" if took is not None else "")
    )
    if job.error.message:
        console.print(
            f"[red]error[/] {job.error.code} {job.error.reason}: {job.error.message}",
            highlight=False,
        )
    if job.state != job_pb2.JOB_STATE_SUCCEEDED:
        render.show_stages(job)
    if job.metadata.title:
        console.print(f"[bold]title[/]     {job.metadata.title}")
    if facts := _facts(job):
        console.print(f"[bold]media[/]     {facts}")
    segments = list(job.transcript.segments)
    if segments:
        console.print(f"[bold]transcript[/] ({len(segments)} segments)")
        for segment in segments[:TRANSCRIPT_LINES]:
            console.print(f"  {render.timecode(segment.start_seconds)}  {segment.text.strip()}")
        if len(segments) > TRANSCRIPT_LINES:
            console.print(f"  … {len(segments) - TRANSCRIPT_LINES} more")
    elif job.HasField("transcript"):
        console.print("[bold]transcript[/] no speech found")
    if job.metadata.chapters:
        console.print(f"[bold]chapters[/] {len(job.metadata.chapters)}")
        render.show_chapters(job.metadata.chapters)
    if job.clips:
        render.show_clips(job.clips)
    if job.artifacts:
        render.show_artifacts(job.artifacts)
        console.print(
            f"everything: reelmill jobs get {job.id}; a file: reelmill artifacts get {job.id} NAME",
            soft_wrap=True,
        )
