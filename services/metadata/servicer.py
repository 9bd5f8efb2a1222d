"""The MetadataService servicer: messages in, ``MetadataGenerator`` calls, messages out.

Errors are domain exceptions; ``runtime.errors.ErrorMappingInterceptor`` maps them to statuses.
"""

from __future__ import annotations

from typing import Any

import grpc

from reelmill.v1 import metadata_service_pb2 as pb
from reelmill.v1 import metadata_service_pb2_grpc as pb_grpc
from runtime.logs import log_context
from services.metadata import convert
from services.metadata.generator import MetadataGenerator


class MetadataServicer(pb_grpc.MetadataServiceServicer):
    def __init__(self, generator: MetadataGenerator) -> None:
        self._generator = generator

    async def GenerateMetadata(
        self, request: pb.GenerateMetadataRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GenerateMetadataResponse:
        if request.spec.disabled:
            return pb.GenerateMetadataResponse()
        with log_context(stage="metadata"):
            outcome = await self._generator.generate(
                convert.source(
                    request.transcript,
                    request.media_info,
                    request.filename,
                    request.on_screen_text,
                    request.scenes,
                ),
                convert.options(request.spec),
                request.output_prefix,
            )
        return convert.response(outcome)
