"""Pure planning: from the probed source and the options to concrete sizes, rates and times.

Nothing here runs ffmpeg or touches files; ``commands`` turns these plans into argument lists.

Sizes
    A rung's number is its *short side*: "720p" is 1280x720 for a landscape source and
    720x1280 for a portrait one, the way players and platforms label portrait video. That keeps
    one ladder meaningful for both orientations (each rung has about the same pixel count
    whichever way the phone was held) and makes "never upscale" a single comparison against
    the source's short side. Sizes are computed after rotation (ffmpeg autorotates when
    decoding), are always even (4:2:0 chroma needs it), and keep the display aspect ratio:
    the long side is the short side times the source ratio, rounded to the nearest even
    number and never past the source.

Timing
    Every rung gets the same constant frame rate (the source's, snapped to a standard rate and
    capped at 60), and a keyframe forced at every multiple of the HLS segment duration, with
    scene-cut keyframes off. The rungs then have keyframes at identical times, so HLS segments
    cut by stream copy start on a keyframe, have the same boundaries in every variant, and a
    player can switch between variants at any segment.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from runtime.captions import vtt_timestamp
from runtime.errors import InvalidArgument
from services.transcode.model import (
    RungSpec,
    ShotStill,
    SourceInfo,
    StoryboardOptions,
    ThumbnailOptions,
    TranscodeOptions,
    VideoInfo,
)

DEFAULT_LADDER: tuple[int, ...] = (1080, 720, 480, 360)
DEFAULT_AUDIO_KBPS = 128
MAX_RUNGS = 8
MIN_RUNG = 16
MAX_RUNG = 4320
MAX_THUMBNAILS = 100
MAX_STORYBOARD_TILES = 10_000
MAX_FPS = 60
X264_PRESETS = frozenset(
    {
        "ultrafast",
        "superfast",
        "veryfast",
        "faster",
        "fast",
        "medium",
        "slow",
        "slower",
        "veryslow",
        "placebo",
    }
)
#: Short side (px) -> default H.264 bit rate (kbit/s) at up to 30 fps; interpolated between.
BITRATE_TABLE: tuple[tuple[int, int], ...] = (
    (144, 200),
    (240, 400),
    (360, 800),
    (480, 1400),
    (720, 2800),
    (1080, 5000),
    (1440, 9000),
    (2160, 16000),
    (4320, 48000),
)
STANDARD_RATES: tuple[Fraction, ...] = (
    Fraction(24000, 1001),
    Fraction(24),
    Fraction(25),
    Fraction(30000, 1001),
    Fraction(30),
    Fraction(48),
    Fraction(50),
    Fraction(60000, 1001),
    Fraction(60),
)
#: Storyboard intervals tried in order when the spec gives none.
NICE_INTERVALS: tuple[float, ...] = (1, 2, 5, 10, 15, 20, 30, 60, 120, 300, 600)


def even_floor(value: float) -> int:
    """The largest even integer <= ``value`` (at least 2)."""
    return max(2, math.floor(value / 2) * 2)


def even_round(value: float) -> int:
    """The nearest even integer (halves round up; at least 2)."""
    return max(2, math.floor(value / 2 + 0.5) * 2)


def fit_short_side(video: VideoInfo, short: int) -> tuple[int, int]:
    """Output (width, height) with short side ``short``, the source's display aspect ratio,
    even and never larger than the source."""
    width, height = video.display_size
    if width >= height:
        return min(even_round(short * width / height), even_floor(width)), short
    return short, min(even_round(short * height / width), even_floor(height))


def fit_width(video: VideoInfo, width: int) -> tuple[int, int]:
    """Output (width, height) of at most ``width`` wide (never upscaled), even, aspect kept."""
    src_width, src_height = video.display_size
    out_width = even_floor(min(width, src_width))
    return out_width, min(even_round(out_width * src_height / src_width), even_floor(src_height))


@dataclass(frozen=True)
class Rung:
    name: str
    width: int
    height: int
    video_bitrate_kbps: int
    audio_bitrate_kbps: int

    @property
    def short_side(self) -> int:
        return min(self.width, self.height)


@dataclass(frozen=True)
class LadderPlan:
    """One decode feeding every rung; the same frame rate and keyframe times in all."""

    rungs: tuple[Rung, ...]
    fps: Fraction
    segment_seconds: float
    #: Frames per segment: the longest GOP x264 may use.
    gop_frames: int
    preset: str
    #: Whether the rungs carry the source's first audio stream.
    audio: bool
    #: The rung that is the source's video stream copied (``passthrough``), if any.
    copy: str | None = None
    #: With ``copy``: the source's keyframe times (seconds), where the other rungs get theirs.
    keyframes: tuple[float, ...] = ()
    #: Rungs whose audio is the source's, copied.
    copy_audio: frozenset[str] = frozenset()

    @property
    def top(self) -> Rung:
        return self.rungs[0]

    @property
    def encoded(self) -> tuple[Rung, ...]:
        """The rungs that are encoded (all but the copied one)."""
        return tuple(rung for rung in self.rungs if rung.name != self.copy)


def default_bitrate_kbps(short: int, fps: Fraction) -> int:
    """A target bit rate for H.264 at ``short``p, interpolated from ``BITRATE_TABLE``;
    half as much again above 30 fps."""
    table = BITRATE_TABLE
    if short <= table[0][0]:
        kbps = table[0][1] * short / table[0][0]
    elif short >= table[-1][0]:
        kbps = float(table[-1][1])
    else:
        kbps = 0.0
        for (low_h, low_k), (high_h, high_k) in itertools.pairwise(table):
            if low_h <= short <= high_h:
                kbps = low_k + (high_k - low_k) * (short - low_h) / (high_h - low_h)
                break
    if fps > 31:
        kbps *= 1.5
    return max(50, round(kbps / 50) * 50)


def output_fps(video: VideoInfo) -> Fraction:
    """A constant output rate: the source's average, halved while above 60, snapped to a
    standard rate when within 0.5% of one, else rounded to whole frames; 30 when unknown.

    Variable-frame-rate sources come out at their average rate, which keeps motion timing
    right while giving every rung the same frame grid."""
    if not video.fps or video.fps <= 0 or not math.isfinite(video.fps):
        return Fraction(30)
    fps = Fraction(video.fps).limit_denominator(1001)
    while fps > MAX_FPS * Fraction(1005, 1000):
        fps /= 2
    nearest = min(STANDARD_RATES, key=lambda standard: abs(fps - standard))
    if abs(fps - nearest) <= nearest * Fraction(5, 1000):
        return nearest
    return Fraction(max(1, round(fps)))


def plan_ladder(
    requested: tuple[RungSpec, ...],
    source: SourceInfo,
    *,
    segment_seconds: float,
    preset: str,
) -> LadderPlan:
    """The rungs to encode, tallest first.

    Rungs whose short side exceeds the source's are dropped (never upscale); when that drops
    them all, one rung at the source's own size (rounded down to even) takes their place.
    Duplicates (same short side) collapse into the first."""
    video = source.video
    if video is None:
        raise InvalidArgument("the source has no video stream", reason="NO_VIDEO_STREAM")
    if video.width < 2 or video.height < 2:
        raise InvalidArgument("the source's video has no usable size", reason="CORRUPT_SOURCE")
    if len(requested) > MAX_RUNGS:
        raise InvalidArgument(f"at most {MAX_RUNGS} ladder rungs", reason="INVALID_LADDER")
    for spec in requested:
        if not MIN_RUNG <= spec.height <= MAX_RUNG:
            raise InvalidArgument(
                f"ladder heights must be {MIN_RUNG} to {MAX_RUNG}, got {spec.height}",
                reason="INVALID_LADDER",
            )
        if spec.video_bitrate_kbps < 0 or spec.audio_bitrate_kbps < 0:
            raise InvalidArgument("bit rates cannot be negative", reason="INVALID_LADDER")
    if preset not in X264_PRESETS:
        raise InvalidArgument(
            f"preset must be one of {', '.join(sorted(X264_PRESETS))}", reason="INVALID_PRESET"
        )
    if not 0.5 <= segment_seconds <= 30:
        raise InvalidArgument(
            "the HLS segment duration must be 0.5 to 30 seconds", reason="INVALID_SEGMENT"
        )
    fps = output_fps(video)
    specs = requested or tuple(RungSpec(height=h) for h in DEFAULT_LADDER)
    source_short = even_floor(min(video.display_size))
    kept = [spec for spec in specs if even_floor(spec.height) <= source_short]
    if not kept:
        tallest = max(specs, key=lambda spec: spec.height)
        kept = [RungSpec(source_short, tallest.video_bitrate_kbps, tallest.audio_bitrate_kbps)]
    rungs: dict[int, Rung] = {}
    for spec in kept:
        short = even_floor(spec.height)
        if short in rungs:
            continue
        width, height = fit_short_side(video, short)
        rungs[short] = Rung(
            name=f"{short}p",
            width=width,
            height=height,
            video_bitrate_kbps=spec.video_bitrate_kbps or default_bitrate_kbps(short, fps),
            audio_bitrate_kbps=spec.audio_bitrate_kbps or DEFAULT_AUDIO_KBPS,
        )
    ordered = tuple(sorted(rungs.values(), key=lambda rung: rung.short_side, reverse=True))
    return LadderPlan(
        rungs=ordered,
        fps=fps,
        segment_seconds=segment_seconds,
        gop_frames=max(1, round(segment_seconds * fps)),
        preset=preset,
        audio=source.audio is not None,
    )


@dataclass(frozen=True)
class ThumbnailPlan:
    poster_time: float
    #: Times of the evenly spaced thumbnails.
    times: tuple[float, ...]
    width: int
    height: int


#: A keyframe darker than this (mean luma) never makes a poster or a thumbnail.
DARK_KEYFRAME = 24.0


def shot_stills(
    shots: Sequence[ShotStill], count: int, duration: float
) -> tuple[float, tuple[float, ...]]:
    """Stills from the shots the scenes stage found: the poster is the keyframe of the longest
    shot whose keyframe is not dark, leaving out the opening and closing shots (where titles and
    credits sit) when there are three or more; the thumbnails are one keyframe per shot, from
    ``count`` shots spread evenly over the list when there are more, and when there are fewer,
    every shot's keyframe and the rest at the middles of equal slices of the video."""
    lit = [s for s in shots if s.brightness >= DARK_KEYFRAME] or list(shots)
    inner = [s for s in lit if s is not shots[0] and s is not shots[-1]] if len(shots) >= 3 else []
    poster = max(inner or lit, key=lambda s: s.duration).keyframe
    if count <= len(lit):
        chosen = [lit[min(len(lit) - 1, int((i + 0.5) * len(lit) / count))] for i in range(count)]
        times = [s.keyframe for s in chosen]
    else:
        times = [s.keyframe for s in lit]
        extra = count - len(times)
        times += [(i + 0.5) * duration / extra for i in range(extra)]
    return round(poster, 3), tuple(sorted(round(t, 3) for t in times))


def plan_thumbnails(
    options: ThumbnailOptions, source: SourceInfo, shots: Sequence[ShotStill] = ()
) -> ThumbnailPlan:
    """With shots, as ``shot_stills`` says. Without: a poster a third of the way in (past
    intros, fade-ins and black first frames; and never the same frame as a thumbnail, since
    1/3 is no slice's middle) and ``count`` stills at the middles of ``count`` equal slices of
    the video (never the very first or very last frame, where seeking is least reliable)."""
    video = source.video
    if video is None:
        raise InvalidArgument("the source has no video stream", reason="NO_VIDEO_STREAM")
    if not 0 <= options.count <= MAX_THUMBNAILS:
        raise InvalidArgument(
            f"thumbnail count must be 0 to {MAX_THUMBNAILS}", reason="INVALID_THUMBNAILS"
        )
    if not 16 <= options.width <= 7680:
        raise InvalidArgument("thumbnail width must be 16 to 7680", reason="INVALID_THUMBNAILS")
    duration = max(source.duration, 0.0)
    width, height = fit_width(video, options.width)
    if shots:
        poster, times = shot_stills(shots, options.count, duration)
        return ThumbnailPlan(poster, times, width, height)
    times = tuple(
        round((index + 0.5) * duration / options.count, 3) for index in range(options.count)
    )
    return ThumbnailPlan(round(duration / 3, 3), times, width, height)


@dataclass(frozen=True)
class StoryboardPlan:
    interval: float
    tile_width: int
    tile_height: int
    columns: int
    rows: int
    #: Tiles in all sheets together: one per started interval.
    tiles: int
    duration: float

    @property
    def per_sheet(self) -> int:
        return self.columns * self.rows

    @property
    def sheets(self) -> int:
        return math.ceil(self.tiles / self.per_sheet)

    @property
    def sheet_size(self) -> tuple[int, int]:
        return self.columns * self.tile_width, self.rows * self.tile_height


def plan_storyboard(options: StoryboardOptions, source: SourceInfo) -> StoryboardPlan:
    """Tiles every ``interval`` seconds; without one, the smallest of ``NICE_INTERVALS`` that
    fits the whole video on one sheet. A single sheet shrinks to the rows (and columns) it
    needs; with several, every sheet has the full grid and the last is padded."""
    video = source.video
    if video is None:
        raise InvalidArgument("the source has no video stream", reason="NO_VIDEO_STREAM")
    if not 16 <= options.tile_width <= 1920:
        raise InvalidArgument("tile width must be 16 to 1920", reason="INVALID_STORYBOARD")
    if not (1 <= options.columns <= 50 and 1 <= options.rows <= 50):
        raise InvalidArgument("columns and rows must be 1 to 50", reason="INVALID_STORYBOARD")
    if options.interval is not None and options.interval < 0.1:
        raise InvalidArgument(
            "the storyboard interval must be at least 0.1 s", reason="INVALID_STORYBOARD"
        )
    duration = max(source.duration, 0.001)
    per_sheet = options.columns * options.rows
    interval = options.interval
    if interval is None:
        interval = next(
            (float(i) for i in NICE_INTERVALS if math.ceil(duration / i) <= per_sheet),
            math.ceil(duration / per_sheet),
        )
    tiles = max(1, math.ceil(duration / interval - 1e-6))
    if tiles > MAX_STORYBOARD_TILES:
        raise InvalidArgument(
            f"the storyboard would have over {MAX_STORYBOARD_TILES} tiles; use a longer interval",
            reason="INVALID_STORYBOARD",
        )
    columns, rows = options.columns, options.rows
    if tiles <= per_sheet:
        columns = min(columns, tiles)
        rows = math.ceil(tiles / columns)
    tile_width, tile_height = fit_width(video, options.tile_width)
    return StoryboardPlan(interval, tile_width, tile_height, columns, rows, tiles, duration)


@dataclass(frozen=True)
class StoryboardCue:
    start: float
    end: float
    sheet: int
    x: int
    y: int
    width: int
    height: int


def storyboard_cues(plan: StoryboardPlan) -> tuple[StoryboardCue, ...]:
    """One cue per tile; together they cover [0, duration] without gaps."""
    cues = []
    for index in range(plan.tiles):
        sheet, position = divmod(index, plan.per_sheet)
        row, column = divmod(position, plan.columns)
        cues.append(
            StoryboardCue(
                start=index * plan.interval,
                end=min((index + 1) * plan.interval, plan.duration),
                sheet=sheet,
                x=column * plan.tile_width,
                y=row * plan.tile_height,
                width=plan.tile_width,
                height=plan.tile_height,
            )
        )
    return tuple(cues)


def render_storyboard_vtt(plan: StoryboardPlan, sheet_names: tuple[str, ...]) -> str:
    """The WebVTT players read: each cue's payload is ``sprite.jpg#xywh=x,y,w,h``, relative to
    the VTT file's own location."""
    lines = ["WEBVTT", ""]
    for cue in storyboard_cues(plan):
        lines.append(f"{vtt_timestamp(cue.start)} --> {vtt_timestamp(cue.end)}")
        lines.append(f"{sheet_names[cue.sheet]}#xywh={cue.x},{cue.y},{cue.width},{cue.height}")
        lines.append("")
    return "\n".join(lines)


@dataclass(frozen=True)
class TranscodePlan:
    """Everything one ``Transcode`` call will produce."""

    ladder: LadderPlan | None
    hls: bool
    webm: bool
    thumbnails: ThumbnailPlan | None
    storyboard: StoryboardPlan | None


def plan_transcode(options: TranscodeOptions, source: SourceInfo, *, preset: str) -> TranscodePlan:
    """Audio-only sources get no outputs here (no ladder, HLS, WebM, stills): their audio is
    the audio stage's, their clips ``CutClips``'."""
    if source.video is None and source.audio is None:
        raise InvalidArgument("the source has no audio or video stream", reason="NO_STREAMS")
    if source.video is None:
        return TranscodePlan(None, False, False, None, None)
    ladder = plan_ladder(
        options.ladder,
        source,
        segment_seconds=options.hls_segment_seconds,
        preset=options.preset or preset,
    )
    thumbnails = None
    if options.thumbnails.enabled:
        thumbnails = plan_thumbnails(options.thumbnails, source, options.shots)
    storyboard = None
    # Without a known duration there is nothing to lay tiles against.
    if options.storyboard.enabled and source.duration > 0:
        storyboard = plan_storyboard(options.storyboard, source)
    return TranscodePlan(
        ladder=ladder,
        hls=options.hls,
        webm=options.webm,
        thumbnails=thumbnails,
        storyboard=storyboard,
    )
