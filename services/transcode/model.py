"""The transcode service's data: what the source is, what was asked for, what came out.

Frozen dataclasses with no gRPC or protobuf in them; ``messages`` converts to and from the
wire types, so the core modules (``plan``, ``commands``, ``transcoder``) work on these alone.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TypeAlias

from runtime import artifacts


@dataclass(frozen=True)
class VideoInfo:
    """The source's first video stream, as probed (stored size, before rotation)."""

    width: int
    height: int
    #: Average frames per second; 0 when unknown.
    fps: float = 0.0
    #: Display rotation in degrees (0, 90, 180, 270); ffmpeg applies it when decoding.
    rotation: int = 0
    codec: str = ""
    pixel_format: str = ""
    bit_rate: int = 0
    #: Seconds; 0 when unknown.
    duration: float = 0.0
    #: Codec profile as the decoder names it ("High", "Constrained Baseline"); "" unknown.
    profile: str = ""
    #: Codec level (H.264: 31 is 3.1); 0 when unknown.
    level: int = 0

    @property
    def display_size(self) -> tuple[int, int]:
        """Width and height as shown, after rotation."""
        if self.rotation % 180 == 90:
            return self.height, self.width
        return self.width, self.height


@dataclass(frozen=True)
class AudioInfo:
    """The source's first audio stream."""

    codec: str = ""
    channels: int = 0
    sample_rate: int = 0
    bit_rate: int = 0
    #: Seconds; 0 when unknown.
    duration: float = 0.0
    #: Codec profile ("LC" for AAC-LC); "" when unknown.
    profile: str = ""


@dataclass(frozen=True)
class SourceInfo:
    """What the probe found in the source."""

    #: Demuxer name as libavformat reports it, e.g. "mov,mp4,m4a,3gp,3g2,mj2".
    container: str
    #: Seconds; 0 when unknown.
    duration: float
    video: VideoInfo | None = None
    audio: AudioInfo | None = None


@dataclass(frozen=True)
class RungSpec:
    """One requested ladder rung. ``height`` is the short side (see ``plan.plan_ladder``)."""

    height: int
    #: 0 picks one from the height.
    video_bitrate_kbps: int = 0
    #: 0 means 128.
    audio_bitrate_kbps: int = 0


@dataclass(frozen=True)
class ShotStill:
    """A shot the scenes stage found, as far as stills need it: its span and its keyframe."""

    start: float
    end: float
    keyframe: float
    #: Mean luma (0-255) of the keyframe.
    brightness: float = 128.0

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class ThumbnailOptions:
    enabled: bool = True
    #: Evenly spaced thumbnails besides the poster.
    count: int = 5
    width: int = 320


@dataclass(frozen=True)
class StoryboardOptions:
    enabled: bool = True
    #: Seconds between tiles; ``None`` picks one from the duration.
    interval: float | None = None
    tile_width: int = 160
    columns: int = 10
    rows: int = 10


class ClipContainer(enum.Enum):
    MP4 = "mp4"
    WEBM = "webm"


@dataclass(frozen=True)
class ClipOptions:
    """One clip by time range; ``end`` of ``None`` means the end of the source."""

    start: float
    end: float | None = None
    container: ClipContainer = ClipContainer.MP4
    frame_accurate: bool = False


@dataclass(frozen=True)
class ClipRequest:
    """One clip ``Transcoder.cut_clips`` cuts: its range, its name (its files are
    ``clips/{name}.mp4|.webm``, ``.jpg`` and ``.vtt``) and what it is (carried to its result)."""

    name: str
    range: ClipOptions
    title: str = ""
    description: str = ""
    knowledge_id: str = ""


@dataclass(frozen=True)
class Cue:
    """A span of timed text: a transcript segment, or a clip's caption cut from one."""

    start: float
    end: float
    text: str


@dataclass(frozen=True)
class CutClip:
    """A clip as cut: the range asked for, the range the file holds, the names of its
    artifacts (``captions`` empty without a transcript, ``poster`` without video)."""

    index: int
    name: str
    knowledge_id: str
    title: str
    description: str
    start: float
    end: float
    cut_start: float
    cut_end: float
    video: str
    poster: str
    captions: str


@dataclass(frozen=True)
class TranscodeOptions:
    """What ``Transcoder.transcode`` produces; the defaults are the pipeline's defaults."""

    #: Empty uses the default ladder (1080p/720p/480p/360p, short sides; those above the
    #: source's short side are dropped).
    ladder: tuple[RungSpec, ...] = ()
    hls: bool = True
    hls_segment_seconds: float = 4.0
    webm: bool = False
    thumbnails: ThumbnailOptions = field(default_factory=ThumbnailOptions)
    storyboard: StoryboardOptions = field(default_factory=StoryboardOptions)
    #: x264 preset; empty uses the service default.
    preset: str = ""
    #: The source's shots, when the scenes stage found them: stills come from their keyframes.
    shots: tuple[ShotStill, ...] = ()
    #: Copy the source's H.264 as the rung of its size when players take it (``passthrough``).
    passthrough: bool = True


@dataclass(frozen=True)
class AudioOptions:
    """What ``Transcoder.extract_audio`` produces: always the 16 kHz mono WAV, optionally M4A."""

    m4a: bool = True


class ArtifactKind(enum.Enum):
    RENDITION_MP4 = "rendition_mp4"
    HLS_MASTER_PLAYLIST = "hls_master_playlist"
    HLS_VARIANT_PLAYLIST = "hls_variant_playlist"
    HLS_SEGMENT = "hls_segment"
    RENDITION_WEBM = "rendition_webm"
    POSTER = "poster"
    THUMBNAIL = "thumbnail"
    STORYBOARD_SPRITE = "storyboard_sprite"
    STORYBOARD_VTT = "storyboard_vtt"
    AUDIO_WAV = "audio_wav"
    AUDIO_M4A = "audio_m4a"
    CLIP = "clip"
    CLIP_POSTER = "clip_poster"
    CLIP_VTT = "clip_vtt"


#: A stored output; its stage is "transcode", "stills", "audio" or "clips".
Artifact: TypeAlias = artifacts.Artifact[ArtifactKind]


@dataclass(frozen=True)
class Outcome:
    """The end of a request: every artifact it stored."""

    artifacts: tuple[Artifact, ...]


@dataclass(frozen=True)
class ClipsOutcome:
    """The end of a ``cut_clips`` request: the clips, in the order asked, and their files."""

    clips: tuple[CutClip, ...]
    artifacts: tuple[Artifact, ...]
