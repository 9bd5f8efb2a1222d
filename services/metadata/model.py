"""The metadata service's data: what goes in, what was asked for, what comes out.

Frozen dataclasses with no gRPC or protobuf in them; ``convert`` maps the wire types.
Times are seconds from the start of the video.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TypeAlias

from runtime import artifacts


class Overlap(enum.Enum):
    """How the caller's knowledge points may overlap."""

    REFUSE = "refuse"
    MERGE = "merge"
    TRIM = "trim"
    ALLOW = "allow"


@dataclass(frozen=True)
class KnowledgePoint:
    """One point as the caller gave it; exactly one of ``range``, ``segments`` and ``query``."""

    id: str
    title: str = ""
    description: str = ""
    range: tuple[float, float] | None = None
    segments: tuple[int, int] | None = None
    query: str = ""


class Engine(enum.Enum):
    EXTRACTIVE = "extractive"
    GEMINI = "gemini"


@dataclass(frozen=True)
class TimedText:
    """One transcript segment (or one on-screen line)."""

    start: float
    end: float
    text: str
    #: The transcript segment's id (Segment.id); -1 for on-screen lines.
    id: int = -1


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
    #: Where the picture cuts (the scenes stage's shot starts after the first), in seconds.
    shot_cuts: tuple[float, ...] = ()

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
    #: Bounds of a topic segment (chapter), in seconds; max 0 is unbounded.
    min_chapter_seconds: float = 10.0
    max_chapter_seconds: float = 0.0
    #: Fewest chapters when the speech is long enough for that many of the shortest.
    min_chapters: int = 3
    #: The caller's knowledge points: the chapters are these instead of the topics found.
    knowledge_points: tuple[KnowledgePoint, ...] = ()
    overlap: Overlap = Overlap.REFUSE


@dataclass(frozen=True)
class Chapter:
    """One topic segment (knowledge point) of the speech."""

    start: float
    title: str
    #: The next chapter's start, or the end of the speech.
    end: float = 0.0
    summary: str = ""
    keyphrases: tuple[str, ...] = ()
    #: The transcript segments it covers (their ids), in order.
    segment_ids: tuple[int, ...] = ()
    #: Its knowledge id: the caller's knowledge point's, else "chapter-N".
    id: str = ""


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
    #: JSON text shaped by the caller's schema, or "".
    custom_json: str = ""
    #: JSON Pointers of the schema's fields that could not be filled from the content.
    unfilled: tuple[str, ...] = ()
    #: Whether custom_json validates against the schema (no required field unfilled).
    custom_json_complete: bool = False


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
