"""Conversions between the wire messages and the core's dataclasses (protobuf only, no gRPC).

Defaults the contract documents are applied here: a field left unset means "the default", so
the core sees complete options.
"""

from __future__ import annotations

from reelmill.v1 import media_pb2, pipeline_pb2, transcribe_service_pb2
from runtime.artifacts import artifact_messages
from runtime.durations import duration_message, seconds
from services.transcribe.model import (
    Engine,
    Outcome,
    Segment,
    TranscribeOptions,
    Transcript,
    Word,
)
from services.transcribe.whisper import normalize_language

_ENGINES = {
    pipeline_pb2.TRANSCRIBE_ENGINE_FASTER_WHISPER: Engine.FASTER_WHISPER,
    pipeline_pb2.TRANSCRIBE_ENGINE_GEMINI: Engine.GEMINI,
}


def transcribe_options(spec: pipeline_pb2.TranscribeSpec) -> TranscribeOptions:
    return TranscribeOptions(
        engine=_ENGINES.get(spec.engine),
        language=normalize_language(spec.language),
        word_timestamps=spec.word_timestamps if spec.HasField("word_timestamps") else True,
        vad_filter=spec.vad_filter if spec.HasField("vad_filter") else True,
        beam_size=max(spec.beam_size, 0),
        given=transcript(spec.transcript) if spec.HasField("transcript") else None,
    )


def transcript(message: media_pb2.Transcript) -> Transcript:
    return Transcript(
        language=message.language,
        language_probability=message.language_probability,
        duration=seconds(message.duration),
        segments=tuple(
            Segment(
                id=s.id,
                start=s.start_seconds,
                end=s.end_seconds,
                text=s.text,
                words=tuple(
                    Word(w.start_seconds, w.end_seconds, w.text, w.probability) for w in s.words
                ),
                avg_logprob=s.avg_logprob,
                no_speech_probability=s.no_speech_probability,
            )
            for s in message.segments
        ),
        engine=message.engine,
        model=message.model,
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


def result_message(outcome: Outcome) -> transcribe_service_pb2.TranscribeResult:
    return transcribe_service_pb2.TranscribeResult(
        transcript=transcript_message(outcome.transcript),
        artifacts=artifact_messages(outcome.artifacts),
        cached=outcome.cached,
    )
