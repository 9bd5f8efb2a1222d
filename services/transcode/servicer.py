"""TranscodeService over gRPC: messages in, ``Transcoder`` calls, messages out.

Every RPC streams ``progress`` updates and ends with one ``result``. Errors are raised as
``runtime.errors`` exceptions and mapped to statuses by the shared interceptor. A cancelled
call (client cancel, deadline) ends the transcoder's work through ``runtime.streams.relay``,
which stops ffmpeg and removes scratch however the call ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from reelmill.v1 import transcode_service_pb2 as pb
from reelmill.v1 import transcode_service_pb2_grpc as pb_grpc
from runtime.artifacts import artifact_messages
from runtime.progress import ProgressUpdate, progress_message
from runtime.streams import relay
from services.transcode import messages
from services.transcode.transcoder import SourceRef, Transcoder


class TranscodeServicer(pb_grpc.TranscodeServiceServicer):
    def __init__(self, transcoder: Transcoder) -> None:
        self._transcoder = transcoder

    async def Transcode(
        self, request: pb.TranscodeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.TranscodeResponse]:
        if request.spec.disabled:
            yield pb.TranscodeResponse(result=pb.TranscodeResult())
            return
        updates = self._transcoder.transcode(
            SourceRef(request.source.key, request.source.bucket),
            messages.source_info(request.media_info),
            messages.transcode_options(request.spec, request.scenes),
            request.output_prefix,
        )
        async for update in relay(updates, context, stage="transcode"):
            if isinstance(update, ProgressUpdate):
                yield pb.TranscodeResponse(progress=progress_message(update))
            else:
                yield pb.TranscodeResponse(
                    result=pb.TranscodeResult(artifacts=artifact_messages(update.artifacts))
                )

    async def ExtractStills(
        self, request: pb.ExtractStillsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.ExtractStillsResponse]:
        updates = self._transcoder.extract_stills(
            SourceRef(request.source.key, request.source.bucket),
            messages.source_info(request.media_info),
            messages.thumbnail_options(request.spec),
            messages.shot_stills(request.scenes),
            request.output_prefix,
        )
        async for update in relay(updates, context, stage="stills"):
            if isinstance(update, ProgressUpdate):
                yield pb.ExtractStillsResponse(progress=progress_message(update))
            else:
                yield pb.ExtractStillsResponse(
                    result=pb.ExtractStillsResult(artifacts=artifact_messages(update.artifacts))
                )

    async def CutClips(
        self, request: pb.CutClipsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.CutClipsResponse]:
        updates = self._transcoder.cut_clips(
            SourceRef(request.source.key, request.source.bucket),
            messages.source_info(request.media_info),
            messages.clip_requests(request.clips),
            messages.transcript_cues(request.transcript),
            request.output_prefix,
        )
        async for update in relay(updates, context, stage="clips"):
            if isinstance(update, ProgressUpdate):
                yield pb.CutClipsResponse(progress=progress_message(update))
            else:
                yield pb.CutClipsResponse(
                    result=pb.CutClipsResult(
                        clips=[messages.clip_message(clip) for clip in update.clips],
                        artifacts=artifact_messages(update.artifacts),
                    )
                )

    async def ExtractAudio(
        self, request: pb.ExtractAudioRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.ExtractAudioResponse]:
        if request.spec.disabled:
            yield pb.ExtractAudioResponse(result=pb.ExtractAudioResult())
            return
        updates = self._transcoder.extract_audio(
            SourceRef(request.source.key, request.source.bucket),
            messages.source_info(request.media_info),
            messages.audio_options(request.spec),
            request.output_prefix,
        )
        async for update in relay(updates, context, stage="audio"):
            if isinstance(update, ProgressUpdate):
                yield pb.ExtractAudioResponse(progress=progress_message(update))
            else:
                yield pb.ExtractAudioResponse(
                    result=pb.ExtractAudioResult(artifacts=artifact_messages(update.artifacts))
                )
