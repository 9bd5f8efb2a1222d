"""The vision service's data: what was asked for and what was found.

Frozen dataclasses with no gRPC or protobuf in them; ``messages`` converts to and from the wire
types. Times are seconds from the start of the video, frame numbers 0-based in decoding order.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TypeAlias

from runtime import artifacts


class Detector(enum.Enum):
    ADAPTIVE = "adaptive"
    CONTENT = "content"


@dataclass(frozen=True)
class ShotOptions:
    """What ``Vision.detect_shots`` looks for; the defaults are the pipeline's (PySceneDetect's
    own defaults for the cut detectors)."""

    detector: Detector = Detector.ADAPTIVE
    #: AdaptiveDetector's adaptive_threshold or ContentDetector's threshold; None: default.
    threshold: float | None = None
    #: AdaptiveDetector's min_content_val; None: default (15).
    min_content_value: float | None = None
    #: Shortest shot between two cuts, in seconds; None: 15 frames.
    min_shot_seconds: float | None = None
    #: Also find dissolves and fades.
    gradual: bool = True
    #: Longest dissolve or fade looked for, in seconds.
    max_transition_seconds: float = 2.0


@dataclass(frozen=True)
class OcrOptions:
    """What ``Vision.read_text`` reads."""

    #: Seconds between frames read inside a long shot, besides its keyframe.
    interval: float = 2.0
    #: Lines recognised with less confidence are dropped.
    min_confidence: float = 0.5
    #: Frames are downscaled so that their longest side is at most this many pixels.
    max_side: int = 960


class TransitionKind(enum.Enum):
    CUT = "cut"
    DISSOLVE = "dissolve"
    FADE_OUT = "fade_out"
    FADE_IN = "fade_in"


@dataclass(frozen=True)
class Transition:
    kind: TransitionKind
    start_frame: int
    end_frame: int
    start: float
    end: float


@dataclass(frozen=True)
class Keyframe:
    frame: int
    time: float
    #: Variance of the Laplacian of the luma at analysis size.
    sharpness: float
    #: Mean luma, 0-255.
    brightness: float


@dataclass(frozen=True)
class Shot:
    index: int
    start_frame: int
    #: Inclusive.
    end_frame: int
    start: float
    #: Exclusive: the next shot's start, or the end of the video.
    end: float
    keyframe: Keyframe

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Scenes:
    shots: tuple[Shot, ...]
    transitions: tuple[Transition, ...]
    detector: str
    frame_count: int
    fps: float


@dataclass(frozen=True)
class Box:
    """Fractions of the frame's width and height from its top-left corner."""

    left: float
    top: float
    width: float
    height: float

    def overlap(self, other: Box) -> float:
        """Intersection over the smaller box's area (0..1): a line that grows or shrinks a
        little between two samples still matches itself."""
        width = min(self.left + self.width, other.left + other.width) - max(self.left, other.left)
        height = min(self.top + self.height, other.top + other.height) - max(self.top, other.top)
        if width <= 0 or height <= 0:
            return 0.0
        smaller = min(self.width * self.height, other.width * other.height)
        return width * height / smaller if smaller > 0 else 0.0


@dataclass(frozen=True)
class Line:
    """A line of text one sampled frame shows."""

    text: str
    confidence: float
    box: Box


@dataclass(frozen=True)
class TextEntry:
    text: str
    confidence: float
    box: Box
    first_seen: float
    last_seen: float
    start: float
    end: float
    samples: int


@dataclass(frozen=True)
class OnScreenText:
    entries: tuple[TextEntry, ...]
    frames_examined: int
    engine: str
    model: str


class ArtifactKind(enum.Enum):
    SCENES_JSON = "scenes.json"
    OCR_JSON = "ocr.json"
    OCR_VTT = "ocr.vtt"


#: A stored output; its stage is "scenes" or "ocr".
Artifact: TypeAlias = artifacts.Artifact[ArtifactKind]


@dataclass(frozen=True)
class ShotsOutcome:
    scenes: Scenes
    artifacts: tuple[Artifact, ...]


@dataclass(frozen=True)
class TextOutcome:
    text: OnScreenText
    artifacts: tuple[Artifact, ...]
