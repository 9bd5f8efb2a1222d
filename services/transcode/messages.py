"""Conversions between the wire messages and the core's dataclasses (protobuf only, no gRPC).

Defaults the contract documents are applied here: a field left unset means "the default", so
the core sees complete options.
"""

from __future__ import annotations

from collections.abc import Sequence

from reelmill.v1 import media_pb2, pipeline_pb2, transcode_service_pb2, vision_pb2
from runtime.durations import seconds
from runtime.errors import InvalidArgument
from services.transcode.model import (
    AudioInfo,
    AudioOptions,
    ClipContainer,
    ClipOptions,
    ClipRequest,
    Cue,
    CutClip,
    RungSpec,
    ShotStill,
    SourceInfo,
    StoryboardOptions,
    ThumbnailOptions,
    TranscodeOptions,
    VideoInfo,
)

DEFAULT_SEGMENT_SECONDS = 4.0


def source_info(media: media_pb2.MediaInfo) -> SourceInfo | None:
    """The core's view of a probe result; ``None`` when the request carried none (the
    service then probes the source itself)."""
    if not media.video_streams and not media.audio_streams:
        return None
    video = audio = None
    if media.video_streams:
        stream = media.video_streams[0]
        video = VideoInfo(
            width=stream.width,
            height=stream.height,
            fps=stream.fps,
            rotation=stream.rotation % 360,
            codec=stream.codec,
            pixel_format=stream.pixel_format,
            bit_rate=stream.bit_rate,
            duration=seconds(stream.duration),
            profile=stream.profile,
            level=stream.level,
        )
    if media.audio_streams:
        track = media.audio_streams[0]
        audio = AudioInfo(
            codec=track.codec,
            channels=track.channels,
            sample_rate=track.sample_rate,
            bit_rate=track.bit_rate,
            duration=seconds(track.duration),
            profile=track.profile,
        )
    return SourceInfo(media.container, seconds(media.duration), video, audio)


def thumbnail_options(thumbs: pipeline_pb2.ThumbnailSpec) -> ThumbnailOptions:
    return ThumbnailOptions(
        enabled=thumbs.enabled if thumbs.HasField("enabled") else True,
        count=thumbs.count or 5,
        width=thumbs.width or 320,
    )


def shot_stills(scenes: vision_pb2.Scenes | None) -> tuple[ShotStill, ...]:
    return tuple(
        ShotStill(s.start_seconds, s.end_seconds, s.keyframe_seconds, s.keyframe_brightness)
        for s in (scenes.shots if scenes is not None else ())
        if s.end_seconds > s.start_seconds
    )


def transcode_options(
    spec: pipeline_pb2.TranscodeSpec, scenes: vision_pb2.Scenes | None = None
) -> TranscodeOptions:
    board = spec.storyboard
    return TranscodeOptions(
        ladder=tuple(
            RungSpec(rung.height, rung.video_bitrate_kbps, rung.audio_bitrate_kbps)
            for rung in spec.ladder
        ),
        hls=spec.hls if spec.HasField("hls") else True,
        hls_segment_seconds=(
            seconds(spec.hls_segment_duration)
            if spec.HasField("hls_segment_duration")
            else DEFAULT_SEGMENT_SECONDS
        ),
        webm=spec.webm if spec.HasField("webm") else False,
        thumbnails=thumbnail_options(spec.thumbnails),
        storyboard=StoryboardOptions(
            enabled=board.enabled if board.HasField("enabled") else True,
            interval=seconds(board.interval) if board.HasField("interval") else None,
            tile_width=board.tile_width or 160,
            columns=board.columns or 10,
            rows=board.rows or 10,
        ),
        preset=spec.preset,
        shots=shot_stills(scenes),
        passthrough=spec.passthrough if spec.HasField("passthrough") else True,
    )


def audio_options(spec: pipeline_pb2.AudioSpec) -> AudioOptions:
    return AudioOptions(m4a=spec.m4a if spec.HasField("m4a") else True)


_CONTAINERS = {
    pipeline_pb2.CLIP_CONTAINER_UNSPECIFIED: ClipContainer.MP4,
    pipeline_pb2.CLIP_CONTAINER_MP4: ClipContainer.MP4,
    pipeline_pb2.CLIP_CONTAINER_WEBM: ClipContainer.WEBM,
}


def clip_options(clip: pipeline_pb2.ClipSpec, index: int = 0) -> ClipOptions:
    """A ``ClipSpec``'s range; an unknown container value is refused."""
    container = _CONTAINERS.get(clip.container)
    if container is None:
        raise InvalidArgument(
            f"clip {index}: unknown container {clip.container}", reason="INVALID_CLIP_CONTAINER"
        )
    return ClipOptions(
        start=seconds(clip.start),
        end=seconds(clip.end) if clip.HasField("end") else None,
        container=container,
        frame_accurate=clip.frame_accurate,
    )


def clip_requests(
    clips: Sequence[transcode_service_pb2.ClipRequest],
) -> tuple[ClipRequest, ...]:
    return tuple(
        ClipRequest(
            name=clip.name,
            range=clip_options(clip.spec, index),
            title=clip.spec.title,
            description=clip.spec.description,
            knowledge_id=clip.spec.knowledge_id,
        )
        for index, clip in enumerate(clips)
    )


def transcript_cues(transcript: media_pb2.Transcript) -> tuple[Cue, ...] | None:
    """The transcript's segments as caption cues; None when the request carries none (then no
    clip gets captions)."""
    if not transcript.segments:
        return None
    return tuple(
        Cue(segment.start_seconds, segment.end_seconds, segment.text)
        for segment in transcript.segments
    )


def clip_message(clip: CutClip) -> media_pb2.Clip:
    return media_pb2.Clip(
        index=clip.index,
        knowledge_id=clip.knowledge_id,
        title=clip.title,
        description=clip.description,
        start_seconds=clip.start,
        end_seconds=clip.end,
        cut_start_seconds=clip.cut_start,
        cut_end_seconds=clip.cut_end,
        video=clip.video,
        poster=clip.poster,
        captions=clip.captions,
    )
