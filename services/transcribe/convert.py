"""Conversions between the wire messages and the core's dataclasses (protobuf only, no gRPC).

Defaults the contract documents are applied here: a field left unset means "the default", so
the core sees complete options.
"""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import duration_pb2, timestamp_pb2

from reelmill.v1 import media_pb2, pipeline_pb2, transcribe_service_pb2
from services.transcribe.model import (
    Artifact,
    Engine,
    Outcome,
    ProgressUpdate,
    Segment,
    TranscribeOptions,
    Transcript,
)
from services.transcribe.whisper import normalize_language

_ENGINES = {
    pipeline_pb2.TRANSCRIBE_ENGINE_FASTER_WHISPER: Engine.FASTER_WHISPER,
    pipeline_pb2.TRANSCRIBE_ENGINE_GEMINI: Engine.GEMINI,
}


def duration_message(value: float) -> duration_pb2.Duration:
    message = duration_pb2.Duration()
    message.FromNanoseconds(round(value * 1e9))
    return message


def transcribe_options(spec: pipeline_pb2.TranscribeSpec) -> TranscribeOptions:
    return TranscribeOptions(
        engine=_ENGINES.get(spec.engine),
        language=normalize_language(spec.language),
        word_timestamps=spec.word_timestamps if spec.HasField("word_timestamps") else True,
        vad_filter=spec.vad_filter if spec.HasField("vad_filter") else True,
        beam_size=max(spec.beam_size, 0),
    )


def progress_message(update: ProgressUpdate) -> media_pb2.Progress:
    return media_pb2.Progress(
        fraction=update.fraction,
        processed=duration_message(update.processed_seconds),
        speed=update.speed,
        message=update.message,
    )


def segment_message(segment: Segment) -> media_pb2.Segment:
    return media_pb2.Segment(
        id=segment.id,
        start_seconds=segment.start,
        end_seconds=segment.end,
        text=segment.text,
        words=[
            media_pb2.Word(
                start_seconds=w.start, end_seconds=w.end, text=w.text, probability=w.probability
            )
            for w in segment.words
        ],
        avg_logprob=segment.avg_logprob,
        no_speech_probability=segment.no_speech_probability,
    )


def transcript_message(transcript: Transcript) -> media_pb2.Transcript:
    return media_pb2.Transcript(
        language=transcript.language,
        language_probability=transcript.language_probability,
        duration=duration_message(transcript.duration),
        segments=[segment_message(s) for s in transcript.segments],
        engine=transcript.engine,
        model=transcript.model,
    )


def artifact_message(artifact: Artifact, *, now: datetime | None = None) -> media_pb2.Artifact:
    created = timestamp_pb2.Timestamp()
    created.FromDatetime(now or datetime.now(UTC))
    return media_pb2.Artifact(
        name=artifact.name,
        kind=media_pb2.ArtifactKind.Value("ARTIFACT_KIND_" + artifact.kind.name),
        object=media_pb2.ObjectRef(bucket=artifact.bucket, key=artifact.key),
        content_type=artifact.content_type,
        size_bytes=artifact.size,
        sha256=artifact.sha256,
        attributes=dict(artifact.attributes),
        stage="transcribe",
        create_time=created,
    )


def result_message(outcome: Outcome) -> transcribe_service_pb2.TranscribeResult:
    now = datetime.now(UTC)
    return transcribe_service_pb2.TranscribeResult(
        transcript=transcript_message(outcome.transcript),
        artifacts=[artifact_message(a, now=now) for a in outcome.artifacts],
        cached=outcome.cached,
    )
