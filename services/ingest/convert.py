"""Probe results and stored objects as reelmill.v1 messages."""

from __future__ import annotations

from google.protobuf import duration_pb2

from reelmill.v1 import ingest_service_pb2, media_pb2
from runtime.durations import duration_message
from services.ingest.fetch import DownloadProgress
from services.ingest.ingest import IngestedMedia
from services.ingest.probe import MediaInfo


def _duration(seconds: float | None) -> duration_pb2.Duration | None:
    return None if seconds is None else duration_message(seconds)


def media_info(info: MediaInfo) -> media_pb2.MediaInfo:
    return media_pb2.MediaInfo(
        container=info.container,
        duration=_duration(info.duration),
        size_bytes=info.size,
        bit_rate=info.bit_rate,
        video_streams=[
            media_pb2.VideoStream(
                index=v.index,
                codec=v.codec,
                profile=v.profile,
                width=v.width,
                height=v.height,
                fps=v.fps,
                bit_rate=v.bit_rate,
                pixel_format=v.pix_fmt,
                rotation=v.rotation,
                frame_count=v.frame_count,
                duration=_duration(v.duration),
                level=v.level,
            )
            for v in info.video_streams
        ],
        audio_streams=[
            media_pb2.AudioStream(
                index=a.index,
                codec=a.codec,
                channels=a.channels,
                sample_rate=a.sample_rate,
                bit_rate=a.bit_rate,
                duration=_duration(a.duration),
                language=a.language,
                profile=a.profile,
            )
            for a in info.audio_streams
        ],
    )


def ingest_response(result: IngestedMedia) -> ingest_service_pb2.IngestVideoResponse:
    stored = result.object
    return ingest_service_pb2.IngestVideoResponse(
        object=media_pb2.ObjectRef(bucket=stored.bucket, key=stored.key),
        size_bytes=stored.size,
        sha256=stored.sha256,
        content_type=stored.content_type,
        media_info=media_info(result.media),
    )


def import_progress(progress: DownloadProgress) -> ingest_service_pb2.ImportUrlResponse:
    """Bytes so far as a ``Progress`` (the fraction is 0 while the size is unknown)."""
    if progress.total:
        fraction = min(progress.received / progress.total, 1.0)
        message = f"downloaded {progress.received} of {progress.total} bytes"
    else:
        fraction = 0.0
        message = f"downloaded {progress.received} bytes"
    if progress.attempt > 1:
        message += f" (attempt {progress.attempt})"
    return ingest_service_pb2.ImportUrlResponse(
        progress=media_pb2.Progress(fraction=fraction, message=message)
    )


def import_result(result: IngestedMedia) -> ingest_service_pb2.ImportUrlResponse:
    return ingest_service_pb2.ImportUrlResponse(result=ingest_response(result))
