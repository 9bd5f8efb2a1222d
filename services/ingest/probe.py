"""What a media file holds, probed with PyAV, and whether it is whole.

The demuxer only ever sees what it is allowed to (``runtime.demux``, as in every service): a
whitelist of self-contained audio/video container formats (no HLS, DASH, concat, image
sequences, SDP or anything else that names other files or URLs: those are refused before their
demuxer reads a line), and only the ``file`` protocol for local files or ``http(s)`` for
presigned object URLs. Every failure reaches the caller as a short reason of ours; FFmpeg's
own messages only go to the log.

Whole or cut short: a local file's container framing is checked first (``structure``: an MP4
cut before its ``moov`` cannot even be opened, yet it is truncated, not "not a video"), then
every stream's index (sample tables pointing past the end of the file). URLs get the index check
only.

Probing is blocking and runs in a worker thread, bounded by a deadline that FFmpeg's interrupt
callback and our own loops both honour. The first frame of each video stream is decoded, as
PyAV exposes the display matrix (rotation) on frames only.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import av
import av.error
from av.container import InputContainer
from av.stream import Disposition, Stream

from runtime import demux
from runtime.errors import Internal, InvalidArgument, Unavailable
from services.ingest.ranged import open_ranged
from services.ingest.structure import find_external_reference, find_truncation

log = logging.getLogger(__name__)

#: How far the probe reads to find streams' parameters.
PROBE_SIZE = 10 * 1024 * 1024
#: Packets demuxed from the start, at most, to decode each video stream's first frame.
FIRST_FRAME_PACKETS = 600
#: Index entries checked per stream from its end (the ones that sit furthest in the file).
INDEX_TAIL = 1024


@dataclass(frozen=True)
class MediaLimits:
    """What media ingest accepts, beyond being readable (settings of the ingest process)."""

    #: Largest width or height of a video stream, in pixels.
    max_dimension: int = 8192
    #: Longest duration, in seconds.
    max_duration: float = 24 * 3600.0


DEFAULT_LIMITS = MediaLimits()


@dataclass(frozen=True)
class VideoStream:
    index: int
    codec: str
    profile: str
    width: int
    height: int
    #: Average frames per second (0 when unknown).
    fps: float
    bit_rate: int
    pix_fmt: str
    #: Counter-clockwise display rotation from the display matrix (FFmpeg's convention),
    #: normalised to 0, 90, 180 or 270.
    rotation: int
    #: Frames the container declares (0 when it does not say).
    frame_count: int
    #: Seconds, when known.
    duration: float | None
    #: Codec level as the decoder reports it (H.264: 31 is 3.1); 0 when unknown.
    level: int = 0


@dataclass(frozen=True)
class AudioStream:
    index: int
    codec: str
    channels: int
    sample_rate: int
    bit_rate: int
    duration: float | None
    #: ISO 639 language tag, "" when unknown.
    language: str
    #: Codec profile, e.g. "LC"; "" when unknown.
    profile: str = ""


@dataclass(frozen=True)
class MediaInfo:
    #: Demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2".
    container: str
    #: Seconds, when known.
    duration: float | None
    size: int
    bit_rate: int
    video_streams: tuple[VideoStream, ...]
    audio_streams: tuple[AudioStream, ...]
    #: What the bytes are, e.g. "video/mp4".
    content_type: str


def not_a_video(detail: str = "") -> InvalidArgument:
    message = "the upload is not a video or audio file that can be read"
    return InvalidArgument(f"{message}: {detail}" if detail else message, reason="NOT_A_VIDEO")


def truncated(detail: str) -> InvalidArgument:
    return InvalidArgument(f"the media is truncated: {detail}", reason="TRUNCATED_MEDIA")


class _Timeout(Exception):
    pass


async def probe(
    source: Path | str,
    *,
    size: int,
    timeout: float,
    limits: MediaLimits = DEFAULT_LIMITS,
    check_structure: bool = False,
) -> MediaInfo:
    """Probes a local file (``Path``) or an http(s) URL (``str``) of ``size`` bytes. A local
    file's framing is always checked (truncation, external data references); a URL's only
    with ``check_structure`` (read in HTTP ranges).

    Raises ``InvalidArgument`` (NOT_A_VIDEO, TRUNCATED_MEDIA, PROBE_TIMEOUT,
    DIMENSIONS_TOO_LARGE, DURATION_TOO_LONG) for bad media and ``Unavailable`` when a URL
    cannot be read.
    """
    stop = threading.Event()
    deadline = time.monotonic() + timeout
    worker = asyncio.to_thread(
        probe_sync,
        source,
        size=size,
        deadline=deadline,
        stop=stop,
        limits=limits,
        check_structure=check_structure,
    )
    try:
        # The thread stops itself at the deadline; the margin only covers a stuck FFmpeg call.
        return await asyncio.wait_for(worker, timeout + 5.0)
    except TimeoutError:
        raise _timed_out(timeout) from None
    finally:
        stop.set()


def _timed_out(timeout: float) -> InvalidArgument:
    return InvalidArgument(
        f"the media could not be probed within {timeout:g} s", reason="PROBE_TIMEOUT"
    )


def probe_sync(
    source: Path | str,
    *,
    size: int,
    deadline: float,
    stop: threading.Event | None = None,
    limits: MediaLimits = DEFAULT_LIMITS,
    check_structure: bool = False,
) -> MediaInfo:
    """The blocking probe; see ``probe``."""
    stop = stop or threading.Event()
    local = isinstance(source, Path)
    if isinstance(source, Path):
        _check_structure(source, size)
    elif check_structure:
        try:
            with open_ranged(source, size, timeout=max(deadline - time.monotonic(), 0.1)) as handle:
                _check_structure(handle, size)
        except OSError as exc:
            log.info("probe could not read the object's framing: %s", exc)
            raise Unavailable(
                "the object could not be read from storage", reason="STORAGE_UNAVAILABLE"
            ) from None
    remaining = max(deadline - time.monotonic(), 0.1)
    try:
        container = av.open(
            f"file:{source}" if local else str(source),
            mode="r",
            options={
                **demux.pyav_options(remote=not local),
                "probesize": str(PROBE_SIZE),
                # Decoders refuse larger pictures while the streams are probed.
                "max_pixels": str(limits.max_dimension**2),
            },
            metadata_errors="replace",
            timeout=(remaining, remaining),
        )
    except av.error.FFmpegError as exc:
        raise _open_error(exc, local=local, timeout=remaining) from None
    try:
        with container:
            return _describe(container, size=size, deadline=deadline, stop=stop, limits=limits)
    except _Timeout:
        raise _timed_out(remaining) from None
    except av.error.ExitError:
        raise _timed_out(remaining) from None


def _check_structure(source: Path | BinaryIO, size: int) -> None:
    if find_external_reference(source, size):
        raise not_a_video("it refers to media data in other files or at URLs")
    problem = find_truncation(source, size)
    if problem is not None:
        raise truncated(problem)


def _open_error(exc: av.error.FFmpegError, *, local: bool, timeout: float) -> Exception:
    log.info("probe could not open the media: %s", exc)
    if isinstance(exc, (av.error.ExitError, av.error.TimeoutError)):
        return _timed_out(timeout)
    if not local and isinstance(exc, (av.error.HTTPError, av.error.HTTPClientError, OSError)):
        return Unavailable(
            "the object could not be read from storage", reason="STORAGE_UNAVAILABLE"
        )
    if local and isinstance(exc, OSError) and not isinstance(exc, av.error.EOFError):
        return Internal(f"probe could not read its scratch file: {exc}")
    return not_a_video()


def _seconds(stream: Stream) -> float | None:
    """A stream's duration; Matroska keeps it only as a "DURATION" tag ("HH:MM:SS.nnn")."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    tag = next((v for k, v in stream.metadata.items() if k.upper() == "DURATION"), "")
    hours, _, rest = tag.partition(":")
    minutes, _, secs = rest.partition(":")
    try:
        return int(hours) * 3600 + int(minutes) * 60 + float(secs)
    except ValueError:
        return None


def _is_picture(stream: Stream) -> bool:
    return bool(stream.disposition & Disposition.attached_pic)


def _check_limits(
    container: InputContainer,
    videos: Sequence[av.VideoStream],
    audios: Sequence[Stream],
    limits: MediaLimits,
) -> None:
    """Refuses what is too big to handle before any frame is decoded."""
    for stream in videos:
        width, height = stream.codec_context.width or 0, stream.codec_context.height or 0
        if not width or not height:
            # FFmpeg leaves the size unset when the declared one is absurd.
            raise not_a_video(
                f"video stream {stream.index} has no usable picture size (none, or one too "
                "large to decode)"
            )
        if max(width, height) > limits.max_dimension:
            raise InvalidArgument(
                f"video stream {stream.index} is {width}x{height}; the largest side allowed "
                f"is {limits.max_dimension} pixels",
                reason="DIMENSIONS_TOO_LARGE",
            )
    durations = [_seconds(s) or 0.0 for s in (*videos, *audios)]
    if container.duration is not None:
        durations.append(container.duration / av.time_base)
    longest = max(durations, default=0.0)
    if longest > limits.max_duration:
        raise InvalidArgument(
            f"the media lasts {longest:.0f} s; the limit is {limits.max_duration:g} s",
            reason="DURATION_TOO_LONG",
        )


def _describe(
    container: InputContainer,
    *,
    size: int,
    deadline: float,
    stop: threading.Event,
    limits: MediaLimits,
) -> MediaInfo:
    videos = [s for s in container.streams.video if not _is_picture(s)]
    audios = list(container.streams.audio)
    if not videos and not audios:
        raise not_a_video("it has no video or audio stream")
    for stream in (*videos, *audios):
        if stream.codec_context is None:  # an unknown or garbled codec: nothing can decode it
            raise not_a_video(f"stream {stream.index} has a codec that cannot be decoded")
    _check_limits(container, videos, audios, limits)
    _check_index(container.streams, size)
    rotations = _first_frame_rotations(container, videos, deadline=deadline, stop=stop)

    video_streams = tuple(
        VideoStream(
            index=s.index,
            codec=s.codec_context.name or "",
            profile=s.profile or "",
            width=s.codec_context.width or 0,
            height=s.codec_context.height or 0,
            fps=float(s.average_rate or s.guessed_rate or 0),
            bit_rate=int(s.codec_context.bit_rate or 0),
            pix_fmt=s.codec_context.pix_fmt or "",
            rotation=rotations.get(s.index, 0),
            frame_count=int(s.frames or 0),
            duration=_seconds(s),
            level=max(0, int(s.codec_context.level or 0)),
        )
        for s in videos
    )
    audio_streams = tuple(
        AudioStream(
            index=s.index,
            codec=s.codec_context.name or "",
            channels=int(s.codec_context.channels or 0),
            sample_rate=int(s.codec_context.sample_rate or 0),
            bit_rate=int(s.codec_context.bit_rate or 0),
            duration=_seconds(s),
            language="" if (s.language or "und") == "und" else str(s.language),
            profile=s.profile or "",
        )
        for s in audios
    )
    duration = container.duration / av.time_base if container.duration is not None else None
    if duration is None:
        known = [s.duration for s in video_streams if s.duration] + [
            s.duration for s in audio_streams if s.duration
        ]
        duration = max(known, default=None)
    return MediaInfo(
        container=container.format.name,
        duration=duration,
        size=size,
        bit_rate=int(container.bit_rate or 0),
        video_streams=video_streams,
        audio_streams=audio_streams,
        content_type=content_type_for(
            container.format.name,
            has_video=bool(video_streams),
            brand=container.metadata.get("major_brand", ""),
            codecs={s.codec for s in video_streams} | {s.codec for s in audio_streams},
        ),
    )


def _check_index(streams: Iterable[Stream], size: int) -> None:
    """Sample tables that point past the end of the file (an MP4 cut after its ``moov``)."""
    for stream in streams:
        entries = stream.index_entries
        count = len(entries)
        for entry in entries[max(count - INDEX_TAIL, 0) :]:
            if entry.pos >= 0 and entry.size > 0 and entry.pos + entry.size > size:
                raise truncated(
                    f"stream {stream.index} has samples up to byte {entry.pos + entry.size} "
                    f"but the file has {size} bytes"
                )


def _first_frame_rotations(
    container: InputContainer,
    videos: Sequence[Stream],
    *,
    deadline: float,
    stop: threading.Event,
) -> dict[int, int]:
    """Each video stream's display rotation, read from its first decoded frame (PyAV exposes the
    display matrix on frames, not on streams)."""
    found: dict[int, int] = {}
    if not videos:
        return found
    wanted = {s.index for s in videos}
    try:
        for count, packet in enumerate(container.demux(*videos)):
            if stop.is_set() or time.monotonic() > deadline:
                raise _Timeout
            if count >= FIRST_FRAME_PACKETS:
                break
            index = packet.stream.index
            if index not in wanted or index in found:
                continue
            for frame in packet.decode():
                if isinstance(frame, av.VideoFrame):
                    found[index] = round(frame.rotation / 90) * 90 % 360
                    break
            if len(found) == len(wanted):
                break
    except av.error.ExitError:
        raise
    except av.error.FFmpegError as exc:
        # A stream that does not decode at the start still probes; the transcode will judge.
        log.info("could not decode a first frame: %s", exc)
    return found


_CONTENT_TYPES: dict[str, tuple[str, str]] = {
    # demuxer: (with video, audio only)
    "matroska": ("video/x-matroska", "audio/x-matroska"),
    "avi": ("video/x-msvideo", "video/x-msvideo"),
    "flv": ("video/x-flv", "video/x-flv"),
    "mpegts": ("video/mp2t", "video/mp2t"),
    "mpeg": ("video/mpeg", "audio/mpeg"),
    "mpegvideo": ("video/mpeg", "video/mpeg"),
    "asf": ("video/x-ms-asf", "audio/x-ms-wma"),
    "ogg": ("video/ogg", "audio/ogg"),
    "wav": ("audio/wav", "audio/wav"),
    "w64": ("audio/x-w64", "audio/x-w64"),
    "mp3": ("audio/mpeg", "audio/mpeg"),
    "aac": ("audio/aac", "audio/aac"),
    "flac": ("audio/flac", "audio/flac"),
    "mxf": ("application/mxf", "application/mxf"),
    "caf": ("audio/x-caf", "audio/x-caf"),
    "aiff": ("audio/aiff", "audio/aiff"),
    "amr": ("audio/amr", "audio/amr"),
    "wv": ("audio/x-wavpack", "audio/x-wavpack"),
    "ac3": ("audio/ac3", "audio/ac3"),
    "eac3": ("audio/eac3", "audio/eac3"),
    "h264": ("video/h264", "video/h264"),
    "hevc": ("video/h265", "video/h265"),
}
_WEBM_CODECS = {"vp8", "vp9", "av1", "opus", "vorbis"}


def content_type_for(format_name: str, *, has_video: bool, brand: str, codecs: set[str]) -> str:
    """The MIME type of a probed file."""
    names = format_name.split(",")
    brand = brand.strip().lower()
    if "mov" in names:
        if brand == "qt":
            return "video/quicktime"
        if brand.startswith("3g2"):
            return "video/3gpp2" if has_video else "audio/3gpp2"
        if brand.startswith("3gp"):
            return "video/3gpp" if has_video else "audio/3gpp"
        return "video/mp4" if has_video else "audio/mp4"
    if "matroska" in names and codecs and codecs <= _WEBM_CODECS:
        return "video/webm" if has_video else "audio/webm"
    for name in names:
        if name in _CONTENT_TYPES:
            with_video, audio_only = _CONTENT_TYPES[name]
            return with_video if has_video else audio_only
    return "application/octet-stream"
