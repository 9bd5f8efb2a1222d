"""Pure planning of ``CutClips``: which clips, cut how, and each one's captions.

Nothing here runs ffmpeg or touches files; ``commands.clip_command`` turns a ``ClipPlan`` into
arguments and ``clip_steps`` runs them.

Validation
    Names are 1 to 64 of ``a-z 0-9 _ -`` and unique in the request (they name the files:
    ``clips/{name}.mp4``), at most ``MAX_CLIPS`` clips (``TOO_MANY_CLIPS``), every range
    ``INVALID_CLIP_RANGE`` unless: start >= 0, start before the source's end (when it is known),
    and end (clamped to the source's end; unset means that end) at least ``MIN_CLIP_SECONDS``
    after start. Everything is checked before any work starts.

Accuracy
    A fast clip copies the streams and so must start on a keyframe: it starts at the keyframe at
    or before ``start`` (``cut_start``, looked up in the source's index) and ends where ``end``
    falls. A frame-accurate clip is re-encoded and starts and ends on the frames asked for, at
    the source's own display size (even) and its frame rate made constant. WebM can carry only
    VP8/VP9/AV1 video and Opus/Vorbis audio: a WebM clip of an H.264 source (the usual case) is
    always re-encoded (VP9/Opus), and so frame-accurate whatever was asked.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from runtime.errors import InvalidArgument
from services.transcode.model import (
    AudioInfo,
    ClipContainer,
    ClipRequest,
    Cue,
    SourceInfo,
    VideoInfo,
)
from services.transcode.plan import even_floor, output_fps

MAX_CLIPS = 200
#: The shortest clip (one frame at 25 fps).
MIN_CLIP_SECONDS = 0.04
NAME = re.compile(r"[a-z0-9_-]{1,64}")
#: Video codecs a fast (stream-copy) clip may carry, per container.
COPYABLE_VIDEO = {
    ClipContainer.MP4: frozenset({"h264", "hevc", "av1", "vp9", "mpeg4"}),
    ClipContainer.WEBM: frozenset({"vp8", "vp9", "av1"}),
}
COPYABLE_AUDIO = {
    ClipContainer.MP4: frozenset({"aac", "mp3", "opus", "ac3", "eac3", "alac", "flac"}),
    ClipContainer.WEBM: frozenset({"opus", "vorbis"}),
}


@dataclass(frozen=True)
class ClipPlan:
    index: int
    name: str
    #: The range asked for, end clamped to the source's.
    start: float
    end: float
    container: ClipContainer
    #: Re-encode (frame-accurate, or the codecs cannot be copied into the container).
    encode: bool
    frame_accurate: bool
    #: Display size of the clip's frames (the source's; even when re-encoded); None without
    #: video.
    size: tuple[int, int] | None
    #: The constant frame rate of a re-encode; None without video.
    fps: Fraction | None
    title: str = ""
    description: str = ""
    knowledge_id: str = ""

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def video_name(self) -> str:
        return f"clips/{self.name}.{self.container.value}"

    @property
    def poster_name(self) -> str:
        return f"clips/{self.name}.jpg"

    @property
    def captions_name(self) -> str:
        return f"clips/{self.name}.vtt"


def check_requests(requests: Sequence[ClipRequest]) -> None:
    """What can be checked without the source: the count and the names."""
    if not requests:
        raise InvalidArgument("at least one clip is required", reason="NO_CLIPS")
    if len(requests) > MAX_CLIPS:
        raise InvalidArgument(
            f"at most {MAX_CLIPS} clips per request, got {len(requests)}", reason="TOO_MANY_CLIPS"
        )
    seen: set[str] = set()
    for index, request in enumerate(requests):
        if not NAME.fullmatch(request.name):
            raise InvalidArgument(
                f"clip {index}: the name must be 1 to 64 of a-z 0-9 _ -, got {request.name[:80]!r}",
                reason="INVALID_CLIP_NAME",
            )
        if request.name in seen:
            raise InvalidArgument(
                f"clip {index}: the name {request.name!r} is used twice", reason="INVALID_CLIP_NAME"
            )
        seen.add(request.name)


def _copyable(container: ClipContainer, video: VideoInfo | None, audio: AudioInfo | None) -> bool:
    if video is not None and video.codec not in COPYABLE_VIDEO[container]:
        return False
    return audio is None or audio.codec in COPYABLE_AUDIO[container]


def plan_clips(requests: Sequence[ClipRequest], source: SourceInfo) -> tuple[ClipPlan, ...]:
    """Validated clips (see the module's docstring); ``end`` past the source is clamped to its
    end. A fast clip whose codecs the container cannot carry is re-encoded instead."""
    check_requests(requests)
    if source.video is None and source.audio is None:
        raise InvalidArgument("the source has no audio or video stream", reason="NO_STREAMS")
    duration = source.duration
    video = source.video
    size = fps = None
    if video is not None:
        size = video.display_size
        fps = output_fps(video)
    plans = []
    for index, request in enumerate(requests):
        clip = request.range
        if clip.end is None:
            end = duration
        else:
            end = min(clip.end, duration) if duration > 0 else clip.end
        if clip.start < 0 or (duration > 0 and clip.start >= duration):
            raise InvalidArgument(
                f"clip {index} ({request.name}) starts at {clip.start:.3f} s, outside the source "
                f"(0 to {duration:.3f} s)",
                reason="INVALID_CLIP_RANGE",
            )
        if end - clip.start < MIN_CLIP_SECONDS:
            raise InvalidArgument(
                f"clip {index} ({request.name}) must end at least {MIN_CLIP_SECONDS} s after it "
                f"starts ({clip.start:.3f} s to {end:.3f} s)",
                reason="INVALID_CLIP_RANGE",
            )
        encode = clip.frame_accurate or not _copyable(clip.container, video, source.audio)
        clip_size = size
        if encode and size is not None:
            clip_size = (even_floor(size[0]), even_floor(size[1]))
        plans.append(
            ClipPlan(
                index=index,
                name=request.name,
                start=clip.start,
                end=end,
                container=clip.container,
                encode=encode,
                frame_accurate=clip.frame_accurate,
                size=clip_size,
                fps=fps,
                title=request.title,
                description=request.description,
                knowledge_id=request.knowledge_id,
            )
        )
    return tuple(plans)


def caption_cues(cues: Sequence[Cue], start: float, end: float, *, at: float = 0.0) -> list[Cue]:
    """A clip's captions: the cues overlapping ``[start, end)`` (the range of the source the
    clip's file holds), clipped to it and shifted so that ``start`` falls at ``at`` (where the
    file's first frame is shown: 0 in every file the service writes); the text is the cue's
    own."""
    found = []
    for cue in cues:
        if cue.end <= start or cue.start >= end:
            continue
        begin = round(max(cue.start, start) - start + at, 3)
        finish = round(min(cue.end, end) - start + at, 3)
        if finish > begin:
            found.append(Cue(begin, finish, cue.text))
    return found


def poster_time(span: float) -> float:
    """Where in a clip's file its poster is taken: the middle, away from the cut's edges (a
    copied clip's first frames may lie before the range asked for)."""
    return round(max(span, 0.0) / 2, 3)
