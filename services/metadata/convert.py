"""Conversions between the wire messages and the core's dataclasses (protobuf only, no gRPC).

Defaults the contract documents are applied here: a field left unset means "the default"."""

from __future__ import annotations

from reelmill.v1 import media_pb2, metadata_service_pb2, pipeline_pb2, vision_pb2
from runtime.artifacts import artifact_messages
from runtime.durations import seconds
from services.metadata.model import (
    Chapter,
    Engine,
    KnowledgePoint,
    Metadata,
    MetadataOptions,
    Outcome,
    Overlap,
    Source,
    TimedText,
)

_OVERLAPS = {
    pipeline_pb2.OVERLAP_POLICY_MERGE: Overlap.MERGE,
    pipeline_pb2.OVERLAP_POLICY_TRIM: Overlap.TRIM,
    pipeline_pb2.OVERLAP_POLICY_ALLOW: Overlap.ALLOW,
}

_ENGINES = {
    pipeline_pb2.METADATA_ENGINE_EXTRACTIVE: Engine.EXTRACTIVE,
    pipeline_pb2.METADATA_ENGINE_GEMINI: Engine.GEMINI,
}


def on_screen_lines(text: vision_pb2.OnScreenText | None) -> tuple[TimedText, ...]:
    """Each distinct on-screen line once (the first time it appears), in order of appearance."""
    lines: dict[str, TimedText] = {}
    for entry in sorted(text.entries if text is not None else (), key=lambda e: e.start_seconds):
        words = " ".join(entry.text.split())
        if words and words.casefold() not in lines:
            end = max(entry.end_seconds, entry.start_seconds)
            lines[words.casefold()] = TimedText(max(entry.start_seconds, 0.0), end, words)
    return tuple(lines.values())


def shot_cuts(scenes: vision_pb2.Scenes | None) -> tuple[float, ...]:
    """Where the picture cuts: every shot's start but the first (and never at 0)."""
    starts = sorted(s.start_seconds for s in (scenes.shots if scenes is not None else ()))
    return tuple(start for start in starts if start > 0)


def source(
    transcript: media_pb2.Transcript,
    media: media_pb2.MediaInfo,
    filename: str,
    on_screen_text: vision_pb2.OnScreenText | None = None,
    scenes: vision_pb2.Scenes | None = None,
) -> Source:
    segments = tuple(
        sorted(
            (
                TimedText(
                    max(s.start_seconds, 0.0), max(s.end_seconds, s.start_seconds), s.text, s.id
                )
                for s in transcript.segments
                if s.text.strip()
            ),
            key=lambda s: (s.start, s.end),
        )
    )
    duration = seconds(media.duration) or seconds(transcript.duration)
    if not duration and segments:
        duration = segments[-1].end
    width = height = 0
    if media.video_streams:
        video = media.video_streams[0]
        width, height = video.width, video.height
        if video.rotation % 180 == 90:
            width, height = height, width
    known_streams = bool(media.video_streams or media.audio_streams)
    return Source(
        segments=segments,
        duration=duration,
        language=transcript.language,
        filename=filename,
        width=width,
        height=height,
        has_video=bool(media.video_streams) if known_streams else True,
        on_screen=on_screen_lines(on_screen_text),
        shot_cuts=shot_cuts(scenes),
    )


def options(spec: pipeline_pb2.MetadataSpec) -> MetadataOptions:
    defaults = MetadataOptions()
    return MetadataOptions(
        engine=_ENGINES.get(spec.engine),
        max_tags=spec.max_tags,
        json_schema=spec.json_schema,
        prompt=spec.prompt,
        min_chapter_seconds=(
            seconds(spec.min_chapter_duration)
            if spec.HasField("min_chapter_duration")
            else defaults.min_chapter_seconds
        ),
        max_chapter_seconds=seconds(spec.max_chapter_duration),
        min_chapters=spec.min_chapters if spec.HasField("min_chapters") else defaults.min_chapters,
        knowledge_points=tuple(knowledge_point(p) for p in spec.knowledge_points),
        overlap=_OVERLAPS.get(spec.overlap_policy, Overlap.REFUSE),
    )


def knowledge_point(point: pipeline_pb2.KnowledgePoint) -> KnowledgePoint:
    place = point.WhichOneof("span")
    return KnowledgePoint(
        id=point.id,
        title=point.title,
        description=point.description,
        range=(seconds(point.range.start), seconds(point.range.end)) if place == "range" else None,
        segments=(
            (point.segments.first_segment_id, point.segments.last_segment_id)
            if place == "segments"
            else None
        ),
        query=point.query if place == "query" else "",
    )


def chapter_message(chapter: Chapter) -> media_pb2.Chapter:
    return media_pb2.Chapter(
        start_seconds=chapter.start,
        title=chapter.title,
        end_seconds=chapter.end,
        summary=chapter.summary,
        keyphrases=list(chapter.keyphrases),
        segment_ids=list(chapter.segment_ids),
        id=chapter.id,
    )


def metadata_message(metadata: Metadata) -> media_pb2.VideoMetadata:
    return media_pb2.VideoMetadata(
        title=metadata.title,
        description=metadata.description,
        tags=list(metadata.tags),
        keywords=list(metadata.keywords),
        chapters=[chapter_message(c) for c in metadata.chapters],
        summary=metadata.summary,
        show_notes=metadata.show_notes,
        custom_json=metadata.custom_json,
        engine=metadata.engine,
        model=metadata.model,
        unfilled=list(metadata.unfilled),
        custom_json_complete=metadata.custom_json_complete,
    )


def response(outcome: Outcome) -> metadata_service_pb2.GenerateMetadataResponse:
    return metadata_service_pb2.GenerateMetadataResponse(
        metadata=metadata_message(outcome.metadata),
        artifacts=artifact_messages(outcome.artifacts),
        cached=outcome.cached,
    )
