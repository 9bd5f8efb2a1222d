"""Rich output for jobs: live per-stage progress bars and result summaries."""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Mapping, Sequence

from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from reelmill.uploads import Resume
from reelmill.v1 import job_pb2, media_pb2

console = Console(highlight=False)


def state_name(state: int) -> str:
    return job_pb2.JobState.Name(state).removeprefix("JOB_STATE_")  # type: ignore[arg-type]


def stage_state_name(state: int) -> str:
    return job_pb2.StageState.Name(state).removeprefix("STAGE_STATE_")  # type: ignore[arg-type]


def bars(width: int) -> Progress:
    """Live bars: a name ``width`` wide, the bar, its percentage, a state and a message."""
    return Progress(
        TextColumn(f"{{task.description:<{width}}}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TextColumn("{task.fields[status]:<10}"),
        TextColumn("{task.fields[message]}"),
        TimeElapsedColumn(),
        console=console,
    )


async def follow(events: AsyncIterator[job_pb2.JobEvent]) -> job_pb2.Job | None:
    """Shows live progress until the terminal event; returns the final job."""
    final: job_pb2.Job | None = None
    with bars(12) as progress:
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


#: Stage states whose stage counts as done in a job's bar.
_DONE_STAGES = frozenset({job_pb2.STAGE_STATE_SUCCEEDED, job_pb2.STAGE_STATE_SKIPPED})


async def follow_batch(
    events: AsyncIterator[job_pb2.JobEvent],
    jobs: Mapping[str, job_pb2.Job],
    names: Mapping[str, str],
) -> dict[str, job_pb2.Job]:
    """One live bar per job of a batch (``jobs`` as created, named by ``names``): the share
    of its stages done, its state, what it is doing. Returns each job as its terminal event
    left it."""
    finals: dict[str, job_pb2.Job] = {}
    width = max(4, min(32, max((len(name) for name in names.values()), default=4)))
    with bars(width) as progress:
        lines = {
            job_id: progress.add_task(
                names.get(job_id, job_id)[:width], total=1.0, status="QUEUED", message=""
            )
            for job_id in jobs
        }
        done: dict[str, dict[str, float]] = {job_id: {} for job_id in jobs}
        for job_id, job in jobs.items():
            for stage in job.stages:
                done[job_id][stage.name] = 1.0 if stage.state in _DONE_STAGES else 0.0
        async for event in events:
            job_id = event.job_id
            if job_id not in lines:
                continue
            kind = event.WhichOneof("payload")
            if kind == "job_state_changed":
                progress.update(
                    lines[job_id],
                    status=state_name(event.job_state_changed.state),
                    message=event.job_state_changed.error.message[:60],
                )
            elif kind == "stage_updated":
                stage = event.stage_updated.stage
                stages = done[job_id]
                stages[stage.name] = 1.0 if stage.state in _DONE_STAGES else stage.progress
                detail = stage.error.message or event.stage_updated.message
                progress.update(
                    lines[job_id],
                    completed=sum(stages.values()) / max(len(stages), 1),
                    message=f"{stage.name}: {detail}"[:60],
                )
            if event.HasField("job"):
                finals[job_id] = event.job
                if event.job.state == job_pb2.JOB_STATE_SUCCEEDED:
                    progress.update(lines[job_id], completed=1.0)
    return finals


def show_batch(jobs: Sequence[job_pb2.Job], names: Mapping[str, str]) -> None:
    """A table of a batch's jobs (state, time taken, stages reused, error), then the count
    per state."""
    table = Table("job", "source", "state", "seconds", "reused", "error", box=None)
    for job in jobs:
        seconds = ""
        if job.HasField("start_time") and job.HasField("end_time"):
            seconds = f"{(job.end_time.ToNanoseconds() - job.start_time.ToNanoseconds()) / 1e9:.1f}"
        reused = sum(1 for stage in job.stages if stage.reused_from_job_id)
        table.add_row(
            job.id,
            names.get(job.id, job.video_id or job.source_url),
            state_name(job.state),
            seconds,
            f"{reused}/{len(job.stages)}" if reused else "",
            f"{job.error.reason}: {job.error.message}" if job.error.message else "",
        )
    console.print(table)
    counts = collections.Counter(state_name(job.state) for job in jobs)
    console.print(", ".join(f"{count} {state.lower()}" for state, count in sorted(counts.items())))


def show_job(job: job_pb2.Job, *, every_artifact: bool = False) -> None:
    """Everything about a job (``jobs get``); its artifacts by group, or one row each."""
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
    if job.priority or job.batch_id:
        console.print(
            f"priority {job.priority}" + (f"  batch {job.batch_id}" if job.batch_id else "")
        )
    show_stages(job)
    if job.HasField("media_info"):
        show_media(job.media_info)
    if job.HasField("scenes") or job.HasField("on_screen_text"):
        show_vision(job)
    if job.HasField("metadata"):
        show_metadata(job.metadata)
    if job.clips:
        show_clips(job.clips)
    if job.artifacts:
        if every_artifact:
            show_artifact_table(job.artifacts)
        else:
            show_artifacts(job.artifacts)


def show_stages(job: job_pb2.Job) -> None:
    stages = Table("stage", "state", "progress", "attempts", "error", box=None)
    for stage in job.stages:
        stages.add_row(
            stage.name,
            stage_state_name(stage.state)
            + (f" (reused from {stage.reused_from_job_id})" if stage.reused_from_job_id else ""),
            f"{stage.progress:.0%}",
            str(stage.attempts),
            stage.error.message,
        )
    console.print(stages)


def show_artifact_table(artifacts: Sequence[media_pb2.Artifact]) -> None:
    """One row per artifact (``jobs get --artifacts``)."""
    table = Table("artifact", "kind", "bytes", "content type", box=None)
    for artifact in artifacts:
        table.add_row(
            artifact.name,
            media_pb2.ArtifactKind.Name(artifact.kind).removeprefix("ARTIFACT_KIND_"),
            f"{artifact.size_bytes:,}",
            artifact.content_type,
        )
    console.print(table)


_K = media_pb2.ArtifactKind
#: The groups ``show_artifacts`` prints, in order, and the kinds in each.
ARTIFACT_GROUPS: tuple[tuple[str, frozenset[int]], ...] = (
    ("renditions", frozenset({_K.ARTIFACT_KIND_RENDITION_MP4, _K.ARTIFACT_KIND_RENDITION_WEBM})),
    (
        "HLS",
        frozenset(
            {
                _K.ARTIFACT_KIND_HLS_MASTER_PLAYLIST,
                _K.ARTIFACT_KIND_HLS_VARIANT_PLAYLIST,
                _K.ARTIFACT_KIND_HLS_SEGMENT,
            }
        ),
    ),
    (
        "stills",
        frozenset(
            {
                _K.ARTIFACT_KIND_POSTER,
                _K.ARTIFACT_KIND_THUMBNAIL,
                _K.ARTIFACT_KIND_STORYBOARD_SPRITE,
                _K.ARTIFACT_KIND_STORYBOARD_VTT,
            }
        ),
    ),
    ("audio", frozenset({_K.ARTIFACT_KIND_AUDIO_WAV, _K.ARTIFACT_KIND_AUDIO_M4A})),
    (
        "transcripts",
        frozenset(
            {
                _K.ARTIFACT_KIND_TRANSCRIPT_JSON,
                _K.ARTIFACT_KIND_TRANSCRIPT_VTT,
                _K.ARTIFACT_KIND_TRANSCRIPT_SRT,
                _K.ARTIFACT_KIND_TRANSCRIPT_TXT,
            }
        ),
    ),
    (
        "clips",
        frozenset({_K.ARTIFACT_KIND_CLIP, _K.ARTIFACT_KIND_CLIP_POSTER, _K.ARTIFACT_KIND_CLIP_VTT}),
    ),
    (
        "descriptions",
        frozenset(
            {
                _K.ARTIFACT_KIND_METADATA_JSON,
                _K.ARTIFACT_KIND_CUSTOM_METADATA_JSON,
                _K.ARTIFACT_KIND_SCENES_JSON,
                _K.ARTIFACT_KIND_OCR_JSON,
                _K.ARTIFACT_KIND_OCR_VTT,
            }
        ),
    ),
)


def size(count: int) -> str:
    """ "812 B", "45.1 kB", "3.2 MB"."""
    value = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


#: How a still or clip kind is counted: (one, many).
_COUNTED = {
    _K.ARTIFACT_KIND_POSTER: ("poster", "posters"),
    _K.ARTIFACT_KIND_THUMBNAIL: ("thumbnail", "thumbnails"),
    _K.ARTIFACT_KIND_STORYBOARD_SPRITE: ("storyboard sprite", "storyboard sprites"),
    _K.ARTIFACT_KIND_STORYBOARD_VTT: ("storyboard index (VTT)", "storyboard indexes (VTT)"),
    _K.ARTIFACT_KIND_CLIP: ("clip", "clips"),
    _K.ARTIFACT_KIND_CLIP_POSTER: ("clip poster", "clip posters"),
    _K.ARTIFACT_KIND_CLIP_VTT: ("clip caption file", "clip caption files"),
}


def _counted(members: Sequence[media_pb2.Artifact]) -> str:
    counts = collections.Counter(a.kind for a in members)
    return ", ".join(
        f"{n} {_COUNTED[kind][0 if n == 1 else 1]}"
        for kind, n in counts.items()
        if kind in _COUNTED
    )


def artifact_groups(artifacts: Sequence[media_pb2.Artifact]) -> list[tuple[str, str]]:
    """(group, one line saying what is in it) for the groups ``artifacts`` has: renditions
    with their sizes, the HLS playlist with each variant's segment count, stills, audio,
    transcripts, clips and descriptions counted or named; the rest by name."""
    grouped: dict[str, list[media_pb2.Artifact]] = collections.defaultdict(list)
    for artifact in artifacts:
        group = next((name for name, kinds in ARTIFACT_GROUPS if artifact.kind in kinds), "other")
        grouped[group].append(artifact)
    lines = []
    for group in [name for name, _ in ARTIFACT_GROUPS] + ["other"]:
        members = grouped.get(group)
        if not members:
            continue
        if group == "HLS":
            lines.append((group, _hls(members)))
        elif group in ("stills", "clips"):
            lines.append((group, _counted(members)))
        else:
            lines.append((group, ", ".join(f"{a.name} ({size(a.size_bytes)})" for a in members)))
    return lines


def _hls(members: Sequence[media_pb2.Artifact]) -> str:
    def folder(name: str) -> str:
        return name.rsplit("/", 1)[0] if "/" in name else ""

    masters = [a.name for a in members if a.kind == _K.ARTIFACT_KIND_HLS_MASTER_PLAYLIST]
    segments = collections.Counter(
        folder(a.name) for a in members if a.kind == _K.ARTIFACT_KIND_HLS_SEGMENT
    )
    variants = [
        f"{a.name} ({segments.get(folder(a.name), 0)} segments)"
        for a in members
        if a.kind == _K.ARTIFACT_KIND_HLS_VARIANT_PLAYLIST
    ]
    return ", ".join(masters + variants)


def show_artifacts(artifacts: Sequence[media_pb2.Artifact]) -> None:
    """The artifacts by group, one line each (``jobs get --artifacts`` lists every one)."""
    table = Table(box=None, show_header=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    for group, line in artifact_groups(artifacts):
        table.add_row(group, line)
    console.print(f"[bold]artifacts[/] {len(artifacts)}")
    console.print(table)


def show_vision(job: job_pb2.Job) -> None:
    """How many shots and transitions, and the distinct lines of on-screen text."""
    parts = []
    if job.HasField("scenes"):
        scenes = job.scenes
        parts.append(f"{len(scenes.shots)} shots, {len(scenes.transitions)} transitions")
    if job.HasField("on_screen_text"):
        text = job.on_screen_text
        parts.append(f"{len(text.entries)} lines of on-screen text")
    console.print("[bold]vision[/] " + "; ".join(parts))
    for entry in list(job.on_screen_text.entries)[:10]:
        console.print(
            f"  {timecode(entry.start_seconds)}-{timecode(entry.end_seconds)} {entry.text}"
        )


def show_metadata(metadata: media_pb2.VideoMetadata) -> None:
    console.print(f"[bold]title[/] {metadata.title}")
    if metadata.tags:
        console.print("[bold]tags[/] " + ", ".join(metadata.tags))
    if metadata.summary:
        console.print(f"[bold]summary[/] {metadata.summary}")
    show_chapters(metadata.chapters)
    if metadata.unfilled:
        console.print("[yellow]schema fields not filled[/] " + ", ".join(metadata.unfilled))


def show_chapters(chapters: Sequence[media_pb2.Chapter]) -> None:
    """The chapters with their times, ids and first keyphrases."""
    if not chapters:
        return
    table = Table("start", "end", "id", "chapter", "keyphrases", box=None)
    for chapter in chapters:
        table.add_row(
            timecode(chapter.start_seconds),
            timecode(chapter.end_seconds),
            chapter.id,
            chapter.title,
            ", ".join(chapter.keyphrases[:3]),
        )
    console.print(table)


def show_clips(clips: Sequence[media_pb2.Clip]) -> None:
    """Each clip: the range asked for, the range cut (a keyframe cut starts earlier), what it
    is, and its video (``reelmill artifacts get JOB NAME`` downloads it)."""
    table = Table("#", "range", "cut", "knowledge id", "title", "video", box=None)
    for clip in clips:
        table.add_row(
            str(clip.index),
            f"{timecode(clip.start_seconds)}-{timecode(clip.end_seconds)}",
            f"{clip.cut_start_seconds:.2f}-{clip.cut_end_seconds:.2f} s",
            clip.knowledge_id,
            clip.title,
            clip.video,
        )
    console.print(f"[bold]clips[/] {len(clips)}")
    console.print(table)


def timecode(seconds: float) -> str:
    """ "1:02:03" or "02:03"."""
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def _clock(stamp: timestamp_pb2.Timestamp) -> str:
    return str(stamp.ToDatetime().replace(microsecond=0).isoformat()) + "Z"


def resuming(resume: Resume) -> None:
    """One line per resumption of an upload (``ReelmillClient.upload_file``'s ``on_resume``)."""
    code = resume.error.code().name
    console.print(
        f"  connection lost ({code}); resuming at {resume.committed_size:,} of "
        f"{resume.size:,} bytes (retry {resume.retry})"
    )


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


def as_json(message: Message) -> str:
    """Protobuf JSON with the protos' field names (what ``--json`` prints)."""
    return json_format.MessageToJson(message, preserving_proto_field_name=True)
