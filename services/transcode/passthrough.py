"""Passthrough: the rung of the source's own size is the source's H.264 stream, copied.

When the source's video is H.264 that players take, re-encoding it at its own size only costs
time and quality. So that rung is remuxed (``-c:v copy``, ``+faststart``), and the smaller rungs
are encoded with keyframes forced at the source's keyframe times (and nowhere else), so that HLS
packaging, which cuts a stream copy only at keyframes (the first at or after each multiple of
the segment duration), cuts every variant at the same times.

The rule (``decide``), on the probe's facts and a scan of the source's packets (``scan_source``,
demuxing only: no frame is decoded):

- H.264, ``yuv420p``, profile Constrained Baseline, Main or High, level at most 5.1;
- square pixels and no rotation (a copied stream keeps its own sample aspect ratio and display
  matrix, which HLS's MPEG-TS cannot carry);
- a rung whose size is the source's stored size;
- a constant frame rate, or close to it: the frame durations within a quarter of their median
  for 99 % of frames, and that rate within 1 % of the ladder's (so every rung has the same
  frame grid and the forced keyframes land on the source's frames);
- a sane GOP: the first frame a keyframe, keyframes at most ``MAX_GOP_SECONDS`` apart and, on
  average, at least ``MIN_MEAN_GOP_SECONDS`` (an all-intra source would force every frame of
  the smaller rungs to be a keyframe), and few enough to pass to ffmpeg as one list.

Audio is copied into a rung when it is AAC-LC, mono or stereo, 44.1 or 48 kHz, at no more than
a quarter above the rung's audio bit rate; otherwise it is encoded as before.
"""

from __future__ import annotations

import itertools
import logging
import math
import statistics
from dataclasses import dataclass, replace
from fractions import Fraction

import av
import av.error

from runtime import demux
from services.transcode.model import SourceInfo
from services.transcode.plan import LadderPlan, Rung

log = logging.getLogger(__name__)

PROFILES = frozenset({"Constrained Baseline", "Main", "High"})
MAX_LEVEL = 51
MAX_GOP_SECONDS = 10.0
MIN_MEAN_GOP_SECONDS = 0.5
#: Keyframe times passed to ffmpeg in one ``-force_key_frames`` list (one argument, which
#: Linux caps at 128 KiB): about 4.4 h of a 2 s GOP.
MAX_KEYFRAMES = 8000
AUDIO_RATES = frozenset({44100, 48000})


@dataclass(frozen=True)
class SourceScan:
    """What the source's video packets say (``scan_source``)."""

    #: Presentation times of the keyframes, seconds from the container's start, sorted.
    keyframes: tuple[float, ...]
    #: Frames per second from the median frame duration (0 when there are under two frames).
    fps: float
    #: Share of frames whose duration is more than a quarter off the median.
    irregular: float
    first_is_keyframe: bool
    #: Where the last frame ends (seconds from the container's start).
    end: float
    profile: str
    level: int
    pixel_format: str
    square_pixels: bool
    audio_profile: str


def scan_source(url: str, *, timeout: float = 30.0) -> SourceScan:
    """Demuxes the first video stream's packets (no decoding). Blocking; raises what PyAV
    raises on an unreadable source (the caller then encodes as usual)."""
    options = demux.pyav_options(remote=demux.is_remote(url))
    with av.open(url, options=options, timeout=timeout) as container:
        stream = container.streams.video[0]
        for other in container.streams:
            if other.index != stream.index:
                other.discard = av.stream.Discard.all
        base = float(stream.time_base or 0)
        origin = container.start_time / av.time_base if container.start_time else 0.0
        times: list[float] = []
        keyframes: list[float] = []
        for packet in container.demux(stream):
            if packet.pts is None or not packet.size:
                continue
            time = float(packet.pts) * base - origin
            times.append(time)
            if packet.is_keyframe:
                keyframes.append(time)
        times.sort()
        deltas = [b - a for a, b in itertools.pairwise(times) if b > a]
        median = statistics.median(deltas) if deltas else 0.0
        irregular = (
            sum(1 for d in deltas if abs(d - median) > median / 4) / len(deltas) if deltas else 1.0
        )
        context = stream.codec_context
        sar = stream.sample_aspect_ratio
        audio_profile = ""
        if container.streams.audio:
            audio_profile = container.streams.audio[0].profile or ""
        return SourceScan(
            keyframes=tuple(sorted(keyframes)),
            fps=1 / median if median > 0 else 0.0,
            irregular=irregular,
            first_is_keyframe=bool(keyframes) and min(keyframes) <= times[0] + 1e-6,
            end=times[-1] + median if times else 0.0,
            profile=stream.profile or "",
            level=max(0, int(context.level or 0)),
            pixel_format=context.format.name if context.format is not None else "",
            square_pixels=sar is None or sar == 0 or sar == 1,
            audio_profile=audio_profile,
        )


def copy_rung(source: SourceInfo, ladder: LadderPlan) -> Rung | None:
    """The rung that could be the source's stream, judged on the probe alone (before any scan):
    ``None`` when the probe already rules passthrough out."""
    video = source.video
    if video is None or video.codec != "h264" or video.rotation % 360 != 0:
        return None
    if video.pixel_format and video.pixel_format != "yuv420p":
        return None
    if video.profile and video.profile not in PROFILES:
        return None
    if video.level > MAX_LEVEL:
        return None
    return next(
        (r for r in ladder.rungs if (r.width, r.height) == (video.width, video.height)), None
    )


def refusal(scan: SourceScan, ladder: LadderPlan) -> str | None:
    """Why the scanned source may not be copied; ``None`` when it may."""
    if scan.profile not in PROFILES:
        return f"profile {scan.profile or 'unknown'}"
    if not 0 < scan.level <= MAX_LEVEL:
        return f"level {scan.level or 'unknown'}"
    if scan.pixel_format != "yuv420p":
        return f"pixel format {scan.pixel_format or 'unknown'}"
    if not scan.square_pixels:
        return "non-square pixels"
    if scan.irregular > 0.01 or scan.fps <= 0:
        return "a variable frame rate"
    if abs(Fraction(scan.fps) - ladder.fps) > ladder.fps / 100:
        return f"{scan.fps:.3f} fps, not the ladder's {float(ladder.fps):.3f}"
    keys = scan.keyframes
    if not keys or not scan.first_is_keyframe:
        return "no keyframe first"
    if len(keys) > MAX_KEYFRAMES:
        return f"{len(keys)} keyframes"
    gaps = [b - a for a, b in itertools.pairwise((*keys, max(scan.end, keys[-1])))]
    if max(gaps) > MAX_GOP_SECONDS:
        return f"keyframes {max(gaps):.1f} s apart"
    if len(gaps) >= 5 and statistics.fmean(gaps[:-1]) < MIN_MEAN_GOP_SECONDS:
        return "keyframes too close together"
    return None


def audio_copies(source: SourceInfo, scan: SourceScan, ladder: LadderPlan) -> frozenset[str]:
    """The rungs whose audio is the source's AAC, copied."""
    audio = source.audio
    if not ladder.audio or audio is None or audio.codec != "aac":
        return frozenset()
    if (scan.audio_profile or audio.profile) != "LC":
        return frozenset()
    if audio.channels not in (1, 2) or audio.sample_rate not in AUDIO_RATES:
        return frozenset()
    return frozenset(
        rung.name for rung in ladder.rungs if 0 < audio.bit_rate <= rung.audio_bitrate_kbps * 1250
    )


def apply(source: SourceInfo, ladder: LadderPlan, rung: Rung, scan: SourceScan) -> LadderPlan:
    """``ladder`` with ``rung`` copied and the others keyed at the source's keyframes: at most
    one keyframe interval (plus two frames, so x264 adds none of its own) between them."""
    keys = scan.keyframes
    gaps = [b - a for a, b in itertools.pairwise((*keys, max(scan.end, source.duration, keys[-1])))]
    longest = max(gaps)
    return replace(
        ladder,
        copy=rung.name,
        keyframes=keys,
        gop_frames=max(ladder.gop_frames, math.ceil(longest * float(ladder.fps)) + 2),
        copy_audio=audio_copies(source, scan, ladder),
    )
