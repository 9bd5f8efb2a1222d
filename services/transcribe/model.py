"""The transcribe service's data: what was asked for and what came out.

Frozen dataclasses with no gRPC or protobuf in them; ``convert`` maps them to and from the wire
types, so the core modules work on these alone. Times are seconds from the start of the audio.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TypeAlias

from runtime import artifacts
from runtime.progress import ProgressUpdate


class Engine(enum.Enum):
    FASTER_WHISPER = "faster-whisper"
    GEMINI = "gemini"


@dataclass(frozen=True)
class TranscribeOptions:
    """What the caller asked for, with the contract's defaults applied."""

    #: ``None`` lets the service choose (Gemini when configured, else faster-whisper).
    engine: Engine | None = None
    #: ISO 639-1 code to force, or "" to detect (multilingual models only).
    language: str = ""
    word_timestamps: bool = True
    vad_filter: bool = True
    #: 0 uses the service default.
    beam_size: int = 0
    #: A transcript the caller already has: kept (checked) instead of recognised.
    given: Transcript | None = None


@dataclass(frozen=True)
class Word:
    start: float
    end: float
    text: str
    probability: float


@dataclass(frozen=True)
class Segment:
    id: int
    start: float
    end: float
    text: str
    words: tuple[Word, ...] = ()
    avg_logprob: float = 0.0
    no_speech_probability: float = 0.0


@dataclass(frozen=True)
class Language:
    """The language an engine decided on, reported before its first segment."""

    code: str
    probability: float


@dataclass(frozen=True)
class Transcript:
    language: str
    language_probability: float
    #: Seconds of audio transcribed.
    duration: float
    segments: tuple[Segment, ...]
    engine: str
    model: str


class ArtifactKind(enum.Enum):
    TRANSCRIPT_JSON = "transcript.json"
    TRANSCRIPT_VTT = "transcript.vtt"
    TRANSCRIPT_SRT = "transcript.srt"
    TRANSCRIPT_TXT = "transcript.txt"


#: A stored output, e.g. "transcript/transcript.vtt" under the output prefix.
Artifact: TypeAlias = artifacts.Artifact[ArtifactKind]


@dataclass(frozen=True)
class SegmentUpdate:
    """A final segment, streamed as soon as it is known (when the caller asked for them)."""

    segment: Segment


@dataclass(frozen=True)
class Outcome:
    transcript: Transcript
    artifacts: tuple[Artifact, ...]
    cached: bool


Update = ProgressUpdate | SegmentUpdate | Outcome
