"""Probing with PyAV (blocking: call these through ``asyncio.to_thread``).

``probe_source`` is the fallback when a request carries no ``MediaInfo``; it opens the source
with the same protocol and format whitelists as ffmpeg. ``inspect_output`` reads what a step
wrote, for the artifact attributes and the HLS codec strings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import av.error

from runtime import demux
from runtime.errors import InvalidArgument, NotFound, Unavailable
from services.transcode.model import AudioInfo, SourceInfo, VideoInfo

log = logging.getLogger(__name__)


def probe_source(url: str, *, timeout: float = 30.0) -> SourceInfo:
    """Probes an untrusted source (``url`` as ``ffmpeg_runner.source_url`` returns it)."""
    options = demux.pyav_options(remote=demux.is_remote(url))
    try:
        container = av.open(url, options=options, timeout=timeout)
    except (av.error.FileNotFoundError, av.error.HTTPNotFoundError):
        raise NotFound("the source could not be found", reason="SOURCE_NOT_FOUND") from None
    except av.error.ArgumentError:
        raise InvalidArgument(
            "the source is not a media format the service accepts", reason="UNSUPPORTED_FORMAT"
        ) from None
    except (av.error.HTTPError, av.error.TimeoutError, TimeoutError, ConnectionError) as exc:
        log.warning("source unreadable", extra={"error": type(exc).__name__})
        raise Unavailable(
            "the source could not be read; try again", reason="SOURCE_UNAVAILABLE"
        ) from None
    except (av.error.FFmpegError, OSError):
        raise demux.unless_unreachable(url, corrupt()) from None
    with container:
        duration = container.duration / av.time_base if container.duration else 0.0
        video = audio = None
        if container.streams.video:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            rotation = 0
            with contextlib.suppress(av.error.FFmpegError, StopIteration, ValueError):
                rotation = int(next(container.decode(stream)).rotation) % 360
            video = VideoInfo(
                width=stream.codec_context.width,
                height=stream.codec_context.height,
                fps=float(rate) if rate else 0.0,
                rotation=rotation,
                codec=stream.codec_context.name,
                pixel_format=_pixel_format(stream),
                bit_rate=stream.codec_context.bit_rate or 0,
                duration=_seconds(stream),
                profile=stream.profile or "",
                level=max(0, int(stream.codec_context.level or 0)),
            )
        if container.streams.audio:
            track = container.streams.audio[0]
            audio = AudioInfo(
                codec=track.codec_context.name,
                channels=track.codec_context.channels,
                sample_rate=track.codec_context.sample_rate,
                bit_rate=track.codec_context.bit_rate or 0,
                duration=_seconds(track),
                profile=track.profile or "",
            )
        return SourceInfo(container.format.name, duration, video, audio)


def _pixel_format(stream: av.VideoStream) -> str:
    fmt = stream.codec_context.format
    return fmt.name if fmt is not None else ""


def _seconds(stream: av.stream.Stream) -> float:
    if stream.duration is None or stream.time_base is None:
        return 0.0
    return float(stream.duration * stream.time_base)


@dataclass(frozen=True)
class OutputFacts:
    duration: float
    bit_rate: int
    video_codec: str = ""
    width: int = 0
    height: int = 0
    fps: float = 0.0
    #: The video stream's extradata (an ``avcC`` record for H.264 in MP4).
    video_extradata: bytes = b""
    audio_codec: str = ""
    channels: int = 0
    sample_rate: int = 0

    def attributes(self) -> dict[str, str]:
        """The artifact attributes these facts give."""
        facts = {"duration_seconds": f"{self.duration:.3f}", "bit_rate": str(self.bit_rate)}
        if self.video_codec:
            facts |= {
                "codec": self.video_codec,
                "width": str(self.width),
                "height": str(self.height),
            }
            if self.fps:
                facts["fps"] = f"{self.fps:.3f}"
        if self.audio_codec:
            facts |= {
                "audio_codec": self.audio_codec,
                "channels": str(self.channels),
                "sample_rate": str(self.sample_rate),
            }
            if not self.video_codec:
                facts["codec"] = self.audio_codec
        return facts


def inspect_output(path: Path) -> OutputFacts:
    """Facts about a file the service wrote (trusted)."""
    with av.open(str(path)) as container:
        duration = container.duration / av.time_base if container.duration else 0.0
        bit_rate = container.bit_rate or (
            round(path.stat().st_size * 8 / duration) if duration else 0
        )
        facts = OutputFacts(duration=duration, bit_rate=bit_rate)
        if container.streams.video:
            video = container.streams.video[0]
            rate = video.average_rate or video.guessed_rate
            facts = dataclasses.replace(
                facts,
                video_codec=video.codec_context.name,
                width=video.codec_context.width,
                height=video.codec_context.height,
                fps=float(rate) if rate else 0.0,
                video_extradata=bytes(video.codec_context.extradata or b""),
            )
        if container.streams.audio:
            audio = container.streams.audio[0]
            facts = dataclasses.replace(
                facts,
                audio_codec=audio.codec_context.name,
                channels=audio.codec_context.channels,
                sample_rate=audio.codec_context.sample_rate,
            )
        return facts


def image_size(path: Path) -> tuple[int, int]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return stream.codec_context.width, stream.codec_context.height


def keyframes_at_or_before(
    url: str, times: Sequence[float], *, timeout: float = 30.0
) -> list[float]:
    """For each time (seconds from the source's start), the time of the keyframe at or before
    it: where a stream copy cut there starts. Found by seeking in the source's index, as
    ffmpeg's own input seek does (``-ss`` is relative to the container's start time, and so
    are these), reading one packet per time. The first video stream's keyframes, or the first
    audio stream's packets for an audio-only source."""
    options = demux.pyav_options(remote=demux.is_remote(url))
    try:
        container = av.open(url, options=options, timeout=timeout)
    except (av.error.FileNotFoundError, av.error.HTTPNotFoundError):
        raise NotFound("the source could not be found", reason="SOURCE_NOT_FOUND") from None
    except (av.error.HTTPError, av.error.TimeoutError, TimeoutError, ConnectionError):
        raise Unavailable(
            "the source could not be read; try again", reason="SOURCE_UNAVAILABLE"
        ) from None
    except (av.error.FFmpegError, OSError):
        raise demux.unless_unreachable(url, corrupt()) from None
    with container:
        streams = container.streams.video or container.streams.audio
        if not streams:
            raise InvalidArgument("the source has no audio or video stream", reason="NO_STREAMS")
        stream = streams[0]
        base = stream.time_base
        if base is None:
            raise InvalidArgument("the source has no time base", reason="CORRUPT_SOURCE")
        origin = container.start_time / av.time_base if container.start_time else 0.0
        found = []
        try:
            for time in times:
                found.append(
                    _keyframe_before(container, stream, float(base), origin + time) - origin
                )
        except InvalidArgument as exc:
            raise demux.unless_unreachable(url, exc) from None
        return found


def _keyframe_before(
    container: av.container.InputContainer, stream: av.stream.Stream, base: float, time: float
) -> float:
    target = math.floor(time / base + 1e-6)
    try:
        container.seek(target, stream=stream, backward=True, any_frame=False)
        for packet in container.demux(stream):
            if packet.pts is not None and packet.is_keyframe:
                return float(packet.pts) * base
    except (av.error.FFmpegError, OSError):
        pass
    raise corrupt()


def corrupt() -> InvalidArgument:
    return InvalidArgument(
        "the source could not be decoded; it is corrupt or not a supported video",
        reason="CORRUPT_SOURCE",
    )


def media_span(path: Path) -> tuple[float, float]:
    """Where a file the service wrote (trusted) starts and how long it lasts, from its packets:
    the first video frame's time and the end of the last (or the audio's, without video)."""
    with av.open(str(path)) as container:
        streams = container.streams.video or container.streams.audio
        if not streams:
            return 0.0, 0.0
        stream = streams[0]
        base = float(stream.time_base or 0)
        first = last = None
        for packet in container.demux(stream):
            if packet.pts is None:
                continue
            start = float(packet.pts) * base
            stop = start + float(packet.duration or 0) * base
            first = start if first is None else min(first, start)
            last = stop if last is None else max(last, stop)
        if first is None or last is None:
            return 0.0, 0.0
        return first, last - first


def decode_lead(path: Path, packets: int = 200) -> float:
    """How far (seconds) a file the service wrote (trusted) has timestamps before zero: the
    earliest decode time of its first ``packets`` packets, negated (B-frames' reordering
    delay, AAC priming), 0 when none is negative."""
    earliest = 0.0
    with av.open(str(path)) as container:
        for index, packet in enumerate(container.demux()):
            if index >= packets:
                break
            stamp = packet.dts if packet.dts is not None else packet.pts
            if stamp is not None and packet.time_base is not None:
                earliest = min(earliest, float(stamp * packet.time_base))
    return -earliest
