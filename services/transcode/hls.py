"""HLS playlists (pure): reading the media playlists ffmpeg wrote, writing the master playlist.

ffmpeg's hls muxer writes each variant's media playlist; the master playlist is ours, because
its BANDWIDTH must be the *peak* segment bit rate (RFC 8216 section 4.3.4.2), which only the
finished segments tell: ``variant_bandwidth`` measures it from their sizes and durations.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

AAC_LC = "mp4a.40.2"


@dataclass(frozen=True)
class PlaylistSegment:
    uri: str
    duration: float


@dataclass(frozen=True)
class MediaPlaylist:
    target_duration: int
    segments: tuple[PlaylistSegment, ...]
    ended: bool

    @property
    def duration(self) -> float:
        return sum(segment.duration for segment in self.segments)


def parse_media_playlist(text: str) -> MediaPlaylist:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines or lines[0] != "#EXTM3U":
        raise ValueError("not an M3U8 playlist")
    target = 0
    ended = False
    pending: float | None = None
    segments: list[PlaylistSegment] = []
    for line in lines[1:]:
        if line.startswith("#EXT-X-TARGETDURATION:"):
            target = int(line.split(":", 1)[1])
        elif line.startswith("#EXTINF:"):
            pending = float(line.split(":", 1)[1].split(",", 1)[0])
        elif line == "#EXT-X-ENDLIST":
            ended = True
        elif not line.startswith("#"):
            if pending is None:
                raise ValueError(f"segment {line!r} has no #EXTINF")
            segments.append(PlaylistSegment(line, pending))
            pending = None
    return MediaPlaylist(target, tuple(segments), ended)


@dataclass(frozen=True)
class Variant:
    uri: str
    #: Peak segment bit rate, bits/s.
    bandwidth: int
    #: Whole-playlist average bit rate, bits/s.
    average_bandwidth: int
    width: int
    height: int
    codecs: tuple[str, ...]
    frame_rate: float


def variant_bandwidth(playlist: MediaPlaylist, sizes: Sequence[int]) -> tuple[int, int]:
    """(peak, average) bits per second of a variant from its segments' byte sizes."""
    if not playlist.segments:
        return 0, 0
    rates = [
        size * 8 / max(segment.duration, 0.001)
        for segment, size in zip(playlist.segments, sizes, strict=True)
    ]
    average = sum(sizes) * 8 / max(playlist.duration, 0.001)
    return math.ceil(max(rates)), math.ceil(average)


def avc1_codec(avcc: bytes) -> str:
    """The RFC 6381 codec string (``avc1.PPCCLL``) from an ``avcC`` box's payload (an H.264
    stream's extradata in MP4): profile, constraint flags and level, in hex."""
    if len(avcc) < 4 or avcc[0] != 1:
        raise ValueError("not an avcC record")
    return f"avc1.{avcc[1]:02x}{avcc[2]:02x}{avcc[3]:02x}"


def render_master_playlist(variants: Sequence[Variant]) -> str:
    """The master playlist, variants in the given order (the first is where players start)."""
    lines = ["#EXTM3U", "#EXT-X-VERSION:6", "#EXT-X-INDEPENDENT-SEGMENTS"]
    for variant in variants:
        attributes = [
            f"BANDWIDTH={variant.bandwidth}",
            f"AVERAGE-BANDWIDTH={variant.average_bandwidth}",
            f"RESOLUTION={variant.width}x{variant.height}",
            f'CODECS="{",".join(variant.codecs)}"',
        ]
        if variant.frame_rate > 0:
            attributes.append(f"FRAME-RATE={variant.frame_rate:.3f}")
        lines.append("#EXT-X-STREAM-INF:" + ",".join(attributes))
        lines.append(variant.uri)
    return "\n".join(lines) + "\n"


_ATTRIBUTE = re.compile(r'([A-Z0-9-]+)=("[^"]*"|[^,]*)')


def parse_master_playlist(text: str) -> tuple[Variant, ...]:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines or lines[0] != "#EXTM3U":
        raise ValueError("not an M3U8 playlist")
    variants = []
    pending: dict[str, str] | None = None
    for line in lines[1:]:
        if line.startswith("#EXT-X-STREAM-INF:"):
            pending = {k: v.strip('"') for k, v in _ATTRIBUTE.findall(line.split(":", 1)[1])}
        elif not line.startswith("#") and pending is not None:
            width, _, height = pending.get("RESOLUTION", "0x0").partition("x")
            variants.append(
                Variant(
                    uri=line,
                    bandwidth=int(pending["BANDWIDTH"]),
                    average_bandwidth=int(pending.get("AVERAGE-BANDWIDTH", "0")),
                    width=int(width),
                    height=int(height),
                    codecs=tuple(pending.get("CODECS", "").split(",")),
                    frame_rate=float(pending.get("FRAME-RATE", "0")),
                )
            )
            pending = None
    return tuple(variants)
