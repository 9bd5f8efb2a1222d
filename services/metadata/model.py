"""The metadata service's data: what goes in, what was asked for, what comes out.

Frozen dataclasses with no gRPC or protobuf in them; ``convert`` maps the wire types.
Times are seconds from the start of the video.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TypeAlias

from runtime import artifacts


class Engine(enum.Enum):
    EXTRACTIVE = "extractive"
    GEMINI = "gemini"


@dataclass(frozen=True)
class TimedText:
    """One transcript segment."""

    start: float
    end: float
    text: str


@dataclass(frozen=True)
class Source:
    """Everything the generators may use."""

    segments: tuple[TimedText, ...]
    #: Seconds; 0 when unknown.
    duration: float
    #: "" when unknown.
    language: str = ""
    filename: str = ""
    width: int = 0
    height: int = 0
    has_video: bool = True
    #: The text shown on screen (the OCR stage's entries), each line once, in order of
    #: appearance.
    on_screen: tuple[TimedText, ...] = ()

    @property
    def text(self) -> str:
        return " ".join(segment.text.strip() for segment in self.segments if segment.text.strip())

    @property
    def screen_text(self) -> str:
        return " ".join(line.text.strip() for line in self.on_screen if line.text.strip())


@dataclass(frozen=True)
class MetadataOptions:
    #: ``None`` lets the service choose (Gemini when configured, else extractive).
    engine: Engine | None = None
    max_tags: int = 10
    #: The caller's JSON Schema as text, or "".
    json_schema: str = ""
    prompt: str = ""


@dataclass(frozen=True)
class Chapter:
    start: float
    title: str


@dataclass(frozen=True)
class Metadata:
    title: str
    description: str
    tags: tuple[str, ...]
    keywords: tuple[str, ...]
    chapters: tuple[Chapter, ...]
    summary: str
    show_notes: str
    engine: str
    model: str
    #: JSON text that validates against the caller's schema, or "".
    custom_json: str = ""


class ArtifactKind(enum.Enum):
    METADATA_JSON = "metadata.json"
    CUSTOM_METADATA_JSON = "custom.json"


#: A stored output, e.g. "metadata/metadata.json" under the output prefix.
Artifact: TypeAlias = artifacts.Artifact[ArtifactKind]


@dataclass(frozen=True)
class Outcome:
    metadata: Metadata
    artifacts: tuple[Artifact, ...]
    cached: bool
