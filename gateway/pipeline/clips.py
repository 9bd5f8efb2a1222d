"""The clips: cut from the source after the metadata (TranscodeService.CutClips), so it can
cut one clip per chapter; it needs no ladder, so a job that wants only clips (transcode
disabled) runs probe, audio, transcribe, metadata and clips and encodes nothing else.

What it cuts, in this order (``Clip.index``):

1. ``ClipsSpec.by_chapters``: one clip per chapter of the job's metadata (the topics found in
   the speech, or the caller's knowledge points), with the chapter's title, its summary as the
   description and its id as the knowledge id (``chapter-N`` when it has none); a chapter
   without an end ends where the next starts (the last at the end of the video). ClipsSpec's
   container and accuracy. Named after the knowledge id (lower-cased; other characters than
   ``a-z 0-9 _ -`` become ``-``), so ``chapter-1`` by default.
2. ``ClipsSpec.ranges``, each with its own container and accuracy, named after its knowledge
   id too, else ``range-N``.
3. ``TranscodeSpec.clips`` (unless the transcode is disabled), from before this stage: named
   ``clip_000``, ``clip_001``, … so their files keep the names they had
   (``clips/clip_000.mp4``). ClipsSpec's padding does not apply to them.

A name taken twice gets ``-2``, ``-3``, … ``pad_to_sentences`` widens the chapter clips and the
ranges to the sentences around their ends, a sentence being a run of transcript segments up
to one whose text ends with ``.``, ``!``, ``?`` or ``…`` (closing quotes and brackets aside;
the last segment ends one too): an end that falls inside a sentence moves to that sentence's
edge, within the video. Asked for chapters when there are none (no speech, no knowledge
points), it cuts the ranges alone, and with nothing to cut at all it is skipped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.convert import from_json, to_json
from gateway.pipeline.base import (
    Stage,
    StageContext,
    StageResult,
    artifact_names,
    digest,
    follow_stream,
)
from reelmill.v1 import media_pb2, pipeline_pb2, transcode_service_pb2, transcode_service_pb2_grpc
from runtime.durations import duration_message, seconds

#: What may end a sentence, once closing quotes and brackets are set aside.
SENTENCE_END = re.compile("[.!?\u2026\u3002\uff01\uff1f][\"')\\]\u00bb\u201d\u2019]*$")
_NOT_NAME = re.compile(r"[^a-z0-9_-]+")
MAX_NAME = 64


def wanted(spec: pipeline_pb2.PipelineSpec) -> bool:
    return bool(
        spec.clips.by_chapters
        or spec.clips.ranges
        or (spec.transcode.clips and not spec.transcode.disabled)
    )


def name_of(knowledge_id: str, default: str) -> str:
    """A clip name (1 to 64 of a-z 0-9 _ -) from a knowledge id; ``default`` when nothing of
    it is left."""
    name = _NOT_NAME.sub("-", knowledge_id.lower()).strip("-")[:MAX_NAME].strip("-")
    return name or default


def sentence_spans(segments: Sequence[media_pb2.Segment]) -> list[tuple[float, float]]:
    """The transcript's sentences as (start, end): runs of segments up to one that ends one."""
    spans: list[tuple[float, float]] = []
    start: float | None = None
    for segment in segments:
        if start is None:
            start = segment.start_seconds
        if SENTENCE_END.search(segment.text.strip()):
            spans.append((start, segment.end_seconds))
            start = None
    if start is not None and segments:
        spans.append((start, segments[-1].end_seconds))
    return spans


def pad_to_sentences(
    start: float, end: float, sentences: Sequence[tuple[float, float]], duration: float
) -> tuple[float, float]:
    """``start`` back to the start of the sentence spoken there, ``end`` on to the end of the
    sentence spoken there (an end in a pause, or on a boundary, stays), within the video."""
    for first, last in sentences:
        if first < start < last:
            start = first
        if first < end < last:
            end = last
    start = max(0.0, start)
    return start, min(end, duration) if duration > 0 else end


def _spec(
    start: float,
    end: float,
    container: int,
    frame_accurate: bool,
    *,
    title: str = "",
    description: str = "",
    knowledge_id: str = "",
) -> pipeline_pb2.ClipSpec:
    return pipeline_pb2.ClipSpec(
        start=duration_message(start),
        end=duration_message(end),
        container=container,  # type: ignore[arg-type]
        frame_accurate=frame_accurate,
        title=title,
        description=description,
        knowledge_id=knowledge_id,
    )


def resolve_clips(
    spec: pipeline_pb2.PipelineSpec,
    metadata: media_pb2.VideoMetadata,
    transcript: media_pb2.Transcript,
    duration: float,
) -> list[transcode_service_pb2.ClipRequest]:
    """The clips the job asks for, their ranges final (see the module's docstring)."""
    clips = spec.clips
    sentences = sentence_spans(transcript.segments) if clips.pad_to_sentences else []
    found: list[tuple[str, pipeline_pb2.ClipSpec]] = []

    def padded(start: float, end: float) -> tuple[float, float]:
        if not clips.pad_to_sentences:
            return start, end
        return pad_to_sentences(start, end, sentences, duration)

    if clips.by_chapters:
        chapters = metadata.chapters
        for number, chapter in enumerate(chapters, start=1):
            end = chapter.end_seconds
            if end <= chapter.start_seconds:
                following = chapters[number].start_seconds if number < len(chapters) else duration
                end = following
            if end <= chapter.start_seconds:
                continue  # empty: nothing to cut
            knowledge_id = chapter.id or f"chapter-{number}"
            start, end = padded(chapter.start_seconds, end)
            found.append(
                (
                    name_of(knowledge_id, f"chapter-{number}"),
                    _spec(
                        start,
                        end,
                        clips.container,
                        clips.frame_accurate,
                        title=chapter.title,
                        description=chapter.summary,
                        knowledge_id=knowledge_id,
                    ),
                )
            )
    for number, asked in enumerate(clips.ranges, start=1):
        ranged = pipeline_pb2.ClipSpec()
        ranged.CopyFrom(asked)
        if clips.pad_to_sentences:
            end = seconds(asked.end) if asked.HasField("end") else duration
            start, end = padded(seconds(asked.start), end)
            ranged.start.CopyFrom(duration_message(start))
            ranged.end.CopyFrom(duration_message(end))
        found.append((name_of(asked.knowledge_id, f"range-{number}"), ranged))
    if not spec.transcode.disabled:
        for index, legacy in enumerate(spec.transcode.clips):
            found.append((f"clip_{index:03d}", legacy))
    return [
        transcode_service_pb2.ClipRequest(name=name, spec=clip)
        for name, clip in zip(
            _unique([name for name, _ in found]), (c for _, c in found), strict=True
        )
    ]


def _unique(names: Sequence[str]) -> list[str]:
    taken: set[str] = set()
    unique = []
    for name in names:
        candidate, number = name, 1
        while candidate in taken:
            number += 1
            suffix = f"-{number}"
            candidate = name[: MAX_NAME - len(suffix)] + suffix
        taken.add(candidate)
        unique.append(candidate)
    return unique


def captions_transcript(transcript: media_pb2.Transcript) -> media_pb2.Transcript:
    """What the captions need of the transcript: the segments' times and text, no words."""
    return media_pb2.Transcript(
        language=transcript.language,
        segments=[
            media_pb2.Segment(
                id=segment.id,
                start_seconds=segment.start_seconds,
                end_seconds=segment.end_seconds,
                text=segment.text,
            )
            for segment in transcript.segments
        ],
    )


class ClipsStage(Stage):
    name = "clips"
    #: The source and its media info; the transcript and chapters when those stages run.
    depends_on = ("probe",)
    waits_for = ("transcribe", "metadata")
    service = "transcode"
    stub_class = transcode_service_pb2_grpc.TranscodeServiceStub
    job_fields = ("clips",)
    #: Its inputs are everything it reads (the source, the resolved clips, the transcript and
    #: media info): the upstream stages' fingerprints add nothing.
    reuse_depends_on = ()

    def enabled(self, spec: pipeline_pb2.PipelineSpec) -> bool:
        return wanted(spec)

    @staticmethod
    def _clips(ctx: StageContext) -> list[transcode_service_pb2.ClipRequest]:
        return resolve_clips(
            ctx.job.spec,
            from_json(ctx.fields.get("metadata"), media_pb2.VideoMetadata),
            ctx.transcript,
            seconds(ctx.media_info.duration),
        )

    def fingerprint_inputs(self, ctx: StageContext) -> Mapping[str, Any] | None:
        return {
            "source": ctx.video.sha256,
            "clips": [to_json(clip) for clip in self._clips(ctx)],
            "transcript": digest(to_json(captions_transcript(ctx.transcript))),
            "media_info": digest(ctx.fields.get("media_info")),
        }

    def skip_reason(self, ctx: StageContext) -> str | None:
        if self._clips(ctx):
            return None
        if ctx.job.spec.clips.by_chapters:
            return "there are no chapters to cut (no speech, no knowledge points) and no ranges"
        return "there are no clips to cut"

    async def run(self, ctx: StageContext) -> StageResult:
        clips = self._clips(ctx)
        call = self.stub.CutClips(
            transcode_service_pb2.CutClipsRequest(
                source=ctx.source,
                media_info=ctx.media_info,
                clips=clips,
                transcript=captions_transcript(ctx.transcript),
                output_prefix=ctx.output_prefix,
            ),
            timeout=ctx.timeout,
        )
        result = await follow_stream(call, ctx)
        return StageResult(
            outputs={"artifacts": artifact_names(result.artifacts), "clips": len(result.clips)},
            artifacts=list(result.artifacts),
            job_fields={"clips": [to_json(clip) for clip in result.clips]},
        )
