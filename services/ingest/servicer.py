"""The IngestService servicer: messages in, core calls, messages out.

Errors are domain exceptions; ``runtime.errors.ErrorMappingInterceptor`` turns them into
statuses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from reelmill.v1 import ingest_service_pb2, ingest_service_pb2_grpc
from runtime.errors import InvalidArgument
from runtime.metrics import upload_received
from runtime.storage.base import Part
from runtime.streams import drain, relay
from services.ingest import convert
from services.ingest.fetch import DownloadProgress
from services.ingest.ingest import Ingestor, UploadHeader
from services.ingest.resumable import PartsTarget, ResumableWrites
from services.ingest.url_import import ImportRequest, UrlImporter

Context = grpc.aio.ServicerContext[Any, Any]


async def read_upload(
    requests: AsyncIterator[ingest_service_pb2.IngestVideoRequest],
) -> tuple[UploadHeader, AsyncIterator[bytes]]:
    """Splits an upload stream into its header and its chunks, enforcing their order."""
    iterator = aiter(requests)
    try:
        first = await anext(iterator)
    except StopAsyncIteration:
        raise InvalidArgument(
            "the stream ended before its header", reason="MISSING_HEADER"
        ) from None
    if first.WhichOneof("part") != "header":
        raise InvalidArgument(
            "the first message must be a header, not a chunk", reason="MISSING_HEADER"
        )
    header = first.header
    received = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal received
        async for request in iterator:
            if request.WhichOneof("part") == "header":
                raise InvalidArgument(
                    f"a second header arrived after {received} bytes", reason="DUPLICATE_HEADER"
                )
            # Read once: each read of a bytes field is a copy of it.
            if chunk := request.chunk:
                received += len(chunk)
                upload_received("ingest", len(chunk))
                yield chunk

    return upload_header(header), chunks()


def upload_header(header: ingest_service_pb2.IngestHeader) -> UploadHeader:
    return UploadHeader(
        key=header.destination.key,
        bucket=header.destination.bucket,
        size=header.size_bytes,
        sha256=header.sha256,
        content_type=header.content_type,
    )


def parts_target(message: ingest_service_pb2.PartsTarget) -> PartsTarget:
    return PartsTarget(
        key=message.destination.key,
        bucket=message.destination.bucket,
        token=message.write_token,
        size=message.size_bytes,
        part_size=message.part_size,
    )


class IngestServicer(ingest_service_pb2_grpc.IngestServiceServicer):
    def __init__(
        self, ingestor: Ingestor, importer: UrlImporter, resumable: ResumableWrites
    ) -> None:
        self._ingestor = ingestor
        self._importer = importer
        self._resumable = resumable

    async def IngestVideo(
        self,
        request_iterator: AsyncIterator[ingest_service_pb2.IngestVideoRequest],
        context: Context,
    ) -> ingest_service_pb2.IngestVideoResponse:
        iterator = aiter(request_iterator)
        declared: int | None = None
        try:
            header, chunks = await read_upload(iterator)
            declared = header.size
            result = await self._ingestor.ingest(header, chunks)
        except Exception:
            # The caller learns why only if it is not still writing (runtime.streams).
            await drain(iterator, declared_bytes=declared)
            raise
        return convert.ingest_response(result)

    async def StartResumableWrite(
        self, request: ingest_service_pb2.StartResumableWriteRequest, context: Context
    ) -> ingest_service_pb2.StartResumableWriteResponse:
        token, part_size = await self._resumable.start(upload_header(request.header))
        return ingest_service_pb2.StartResumableWriteResponse(
            write_token=token, part_size=part_size
        )

    async def WriteParts(
        self,
        request_iterator: AsyncIterator[ingest_service_pb2.WritePartsRequest],
        context: Context,
    ) -> AsyncIterator[ingest_service_pb2.WritePartsResponse]:
        iterator = aiter(request_iterator)
        first = await anext(iterator, None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidArgument("the first message must be a header", reason="MISSING_HEADER")
        header = first.header

        async def chunks() -> AsyncIterator[bytes]:
            async for request in iterator:
                if request.WhichOneof("part") == "header":
                    raise InvalidArgument("a second header arrived", reason="DUPLICATE_HEADER")
                if chunk := request.chunk:  # read once (a copy each time)
                    upload_received("ingest", len(chunk))
                    yield chunk

        parts = self._resumable.write(
            parts_target(header.target),
            offset=header.write_offset,
            hash_state=header.hash_state,
            chunks=chunks(),
        )
        # In a task tied to the call: however the gateway goes away, the write stops.
        async for part in relay(parts, context):
            yield ingest_service_pb2.WritePartsResponse(
                part=ingest_service_pb2.CommittedPart(
                    part_number=part.number,
                    etag=part.etag,
                    committed_size=part.committed_size,
                    hash_state=part.hash_state,
                )
            )

    async def CompleteResumableWrite(
        self, request: ingest_service_pb2.CompleteResumableWriteRequest, context: Context
    ) -> ingest_service_pb2.CompleteResumableWriteResponse:
        result = await self._resumable.finish(
            parts_target(request.target),
            parts=[Part(number=p.part_number, etag=p.etag) for p in request.parts],
            hash_state=request.hash_state,
            sha256=request.sha256,
            content_type=request.content_type,
        )
        return ingest_service_pb2.CompleteResumableWriteResponse(
            video=convert.ingest_response(result)
        )

    async def ProbeVideo(
        self, request: ingest_service_pb2.ProbeVideoRequest, context: Context
    ) -> ingest_service_pb2.ProbeVideoResponse:
        media = await self._ingestor.probe_object(request.object.bucket, request.object.key)
        return ingest_service_pb2.ProbeVideoResponse(media_info=convert.media_info(media))

    async def ImportUrl(
        self, request: ingest_service_pb2.ImportUrlRequest, context: Context
    ) -> AsyncIterator[ingest_service_pb2.ImportUrlResponse]:
        timeout = request.timeout.ToNanoseconds() / 1e9 if request.HasField("timeout") else 0.0
        import_request = ImportRequest(
            url=request.url,
            key=request.destination.key,
            bucket=request.destination.bucket,
            max_bytes=request.max_bytes,
            timeout=timeout or None,
            caller_remaining=context.time_remaining(),
        )
        async for update in relay(self._importer.import_url(import_request), context):
            if isinstance(update, DownloadProgress):
                yield convert.import_progress(update)
            else:
                yield convert.import_result(update)
