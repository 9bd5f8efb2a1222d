"""VisionService over gRPC: messages in, ``Vision`` calls, messages out.

Both RPCs stream ``progress`` updates and end with one ``result``. Errors are raised as
``runtime.errors`` exceptions and mapped to statuses by the shared interceptor. A cancelled
call (client cancel, deadline, however it ends) cancels the work through ``runtime.streams.relay``,
which closes the core's generator: that stops the worker thread (decoding, OCR) and waits for it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from reelmill.v1 import vision_service_pb2 as pb
from reelmill.v1 import vision_service_pb2_grpc as pb_grpc
from runtime.artifacts import artifact_messages
from runtime.progress import ProgressUpdate, progress_message
from runtime.streams import relay
from services.vision import messages
from services.vision.model import ShotsOutcome, TextOutcome
from services.vision.vision import SourceRef, Vision


class VisionServicer(pb_grpc.VisionServiceServicer):
    def __init__(self, vision: Vision) -> None:
        self._vision = vision

    async def DetectShots(
        self, request: pb.DetectShotsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.DetectShotsResponse]:
        updates = self._vision.detect_shots(
            SourceRef(request.source.key, request.source.bucket),
            messages.video_facts(request.media_info),
            messages.shot_options(request.spec),
            request.output_prefix,
        )
        async for update in relay(updates, context, stage="scenes"):
            if isinstance(update, ProgressUpdate):
                yield pb.DetectShotsResponse(progress=progress_message(update))
            elif isinstance(update, ShotsOutcome):
                yield pb.DetectShotsResponse(
                    result=pb.DetectShotsResult(
                        scenes=messages.scenes_message(update.scenes),
                        artifacts=artifact_messages(update.artifacts),
                    )
                )

    async def ReadText(
        self, request: pb.ReadTextRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.ReadTextResponse]:
        updates = self._vision.read_text(
            SourceRef(request.source.key, request.source.bucket),
            messages.video_facts(request.media_info),
            messages.scenes_from_message(request.scenes),
            messages.ocr_options(request.spec),
            request.output_prefix,
        )
        async for update in relay(updates, context, stage="ocr"):
            if isinstance(update, ProgressUpdate):
                yield pb.ReadTextResponse(progress=progress_message(update))
            elif isinstance(update, TextOutcome):
                yield pb.ReadTextResponse(
                    result=pb.ReadTextResult(
                        text=messages.text_message(update.text),
                        artifacts=artifact_messages(update.artifacts),
                    )
                )
