"""The TranscribeService servicer: messages in, ``Transcriber`` calls, messages out.

The RPC streams ``progress`` (and ``segment`` updates when asked), then one ``result``. Errors
are domain exceptions that ``runtime.errors.ErrorMappingInterceptor`` maps to statuses. A
cancelled call (client cancel, deadline) ends the transcriber's work through
``runtime.streams.relay``, which stops the decoding thread however the call ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from reelmill.v1 import transcribe_service_pb2 as pb
from reelmill.v1 import transcribe_service_pb2_grpc as pb_grpc
from runtime.durations import seconds
from runtime.progress import ProgressUpdate, progress_message
from runtime.streams import relay
from services.transcribe import convert
from services.transcribe.model import Outcome, SegmentUpdate
from services.transcribe.transcriber import AudioRef, Transcriber


class TranscribeServicer(pb_grpc.TranscribeServiceServicer):
    def __init__(self, transcriber: Transcriber) -> None:
        self._transcriber = transcriber

    async def Transcribe(
        self, request: pb.TranscribeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.TranscribeResponse]:
        if request.spec.disabled:
            yield pb.TranscribeResponse(result=pb.TranscribeResult())
            return
        updates = self._transcriber.transcribe(
            AudioRef(request.audio.key, request.audio.bucket),
            convert.transcribe_options(request.spec),
            request.output_prefix,
            stream_segments=request.stream_segments,
            duration=seconds(request.duration),
        )
        async for update in relay(updates, context, stage="transcribe"):
            if isinstance(update, ProgressUpdate):
                yield pb.TranscribeResponse(progress=progress_message(update))
            elif isinstance(update, SegmentUpdate):
                yield pb.TranscribeResponse(segment=convert.segment_message(update.segment))
            elif isinstance(update, Outcome):
                yield pb.TranscribeResponse(result=convert.result_message(update))
