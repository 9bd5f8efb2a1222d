"""Resumable uploads through the gateway: the record in Postgres (``records``), the bytes
through ingest, which stores them as durable parts; the gateway never holds more than the
messages in flight.

- ``start``: the header checked as UploadVideo's (size limit, SHA-256 format, the owner's
  storage limit, which the upload's declared size counts against until it finishes or
  expires), a row, then ingest begins the object store's resumable write.
- ``write``: takes the upload over at the committed size and streams the caller's bytes to
  ingest; each part ingest reports durable is recorded (fenced by the take-over) as it
  arrives, so the committed size is true whatever process dies next. A bad message (another
  upload's id, an offset that does not follow on, bytes past the declared size) ends the
  forwarding; the parts already under way are still recorded, and the refusal names the
  committed size it leaves.
- ``finish``: verifies, completes and probes through ingest, then records the video and the
  upload as finished in one transaction. A permanent refusal (SHA256_MISMATCH, NOT_A_VIDEO,
  the storage limit) discards the upload and everything it stored; a transient one leaves it
  FINISHING for the caller's retry. Finishing a finished upload returns its video.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import grpc
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.keys import source_key
from gateway.settings import GatewaySettings
from gateway.uploads.records import FinishClaim, UploadRecords, WriteClaim
from reelmill.v1 import ingest_service_pb2, job_service_pb2, media_pb2, upload_pb2
from reelmill.v1.ingest_service_pb2_grpc import IngestServiceStub
from runtime.errors import (
    FailedPrecondition,
    InvalidArgument,
    OutOfRange,
    ReelmillError,
    ResourceExhausted,
    from_rpc_error,
)
from runtime.metrics import upload_received
from runtime.storage import ObjectStore

log = logging.getLogger(__name__)


def _target(claim: WriteClaim | FinishClaim) -> ingest_service_pb2.PartsTarget:
    target = claim.target
    return ingest_service_pb2.PartsTarget(
        destination=media_pb2.ObjectRef(bucket=target.bucket, key=target.key),
        write_token=target.token,
        size_bytes=target.size,
        part_size=target.part_size,
    )


class ResumableUploads:
    def __init__(
        self,
        settings: GatewaySettings,
        sessions: async_sessionmaker[AsyncSession],
        objects: ObjectStore,
        ingest: IngestServiceStub,
    ) -> None:
        self.settings = settings
        self.objects = objects
        self.ingest = ingest
        self.records = UploadRecords(
            sessions,
            expiry=timedelta(seconds=settings.upload_expiry_seconds),
            purge_delay=timedelta(seconds=settings.purge_delay_seconds),
        )

    async def _call(self, method: Any, request: Any) -> Any:
        try:
            return await method(request, timeout=self.settings.upload_timeout_seconds)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None

    # -- start ---------------------------------------------------------------------------------

    async def start(
        self, owner: str, header: job_service_pb2.UploadHeader, *, filename: str, content_type: str
    ) -> upload_pb2.Upload:
        """A new upload for ``header`` (``filename`` sanitised, ``content_type`` declared or
        guessed by the caller)."""
        if header.size_bytes > self.settings.max_upload_bytes:
            raise ResourceExhausted(
                f"upload of {header.size_bytes} bytes exceeds the limit of "
                f"{self.settings.max_upload_bytes}",
                reason="UPLOAD_TOO_LARGE",
            )
        if header.size_bytes < 0:
            raise InvalidArgument("size_bytes must not be negative", reason="INVALID_SIZE")
        if header.size_bytes == 0:
            raise InvalidArgument(
                "a resumable upload needs its exact size (size_bytes)", reason="EMPTY_UPLOAD"
            )
        video_id = uuid.uuid4()
        key = source_key(video_id)
        upload_id = await self.records.create(
            owner,
            video_id=video_id,
            bucket=self.objects.bucket,
            key=key,
            filename=filename,
            content_type=content_type,
            size=header.size_bytes,
            sha256=header.sha256,
            max_stored_bytes=self.settings.owner_max_stored_bytes,
        )
        request = ingest_service_pb2.StartResumableWriteRequest(
            header=ingest_service_pb2.IngestHeader(
                destination=media_pb2.ObjectRef(bucket=self.objects.bucket, key=key),
                size_bytes=header.size_bytes,
                sha256=header.sha256,
                content_type=content_type,
            )
        )
        try:
            started: ingest_service_pb2.StartResumableWriteResponse = await self._call(
                self.ingest.StartResumableWrite, request
            )
        except BaseException:
            await asyncio.shield(
                self.records.discard(upload_id, video_id, reason="upload_not_started")
            )
            raise
        upload = await self.records.started(
            owner, upload_id, token=started.write_token, part_size=started.part_size
        )
        log.info(
            "upload started",
            extra={
                "upload_id": upload.id,
                "size": upload.size_bytes,
                "part_size": upload.part_size,
            },
        )
        return upload

    # -- write ---------------------------------------------------------------------------------

    async def write(
        self, owner: str, requests: AsyncIterator[job_service_pb2.WriteUploadRequest]
    ) -> int:
        """Writes the stream's bytes; returns the committed size once it ended."""
        source = aiter(requests)
        first = await anext(source, None)
        if first is None or not first.upload_id:
            raise InvalidArgument(
                "the first message must name the upload (upload_id)", reason="MISSING_UPLOAD_ID"
            )
        claim = await self.records.claim_write(owner, first.upload_id, first.write_offset)
        #: Why forwarding stopped early: the error's class, reason and message.
        refusal: tuple[type[ReelmillError], str, str] | None = None
        size = claim.target.size

        async def forward() -> AsyncIterator[ingest_service_pb2.WritePartsRequest]:
            nonlocal refusal
            yield ingest_service_pb2.WritePartsRequest(
                header=ingest_service_pb2.PartsHeader(
                    target=_target(claim),
                    write_offset=claim.committed,
                    hash_state=claim.hash_state,
                )
            )
            expected = claim.committed
            message: job_service_pb2.WriteUploadRequest | None = first
            while message is not None:
                if message.upload_id and message.upload_id != first.upload_id:
                    refusal = (
                        InvalidArgument,
                        "UPLOAD_ID_CHANGED",
                        "every message of a write must name the same upload",
                    )
                    return
                if message.write_offset != expected:
                    refusal = (
                        FailedPrecondition,
                        "WRITE_OFFSET_MISMATCH",
                        f"write_offset {message.write_offset} does not follow on from the "
                        f"{expected} bytes written so far",
                    )
                    return
                data = message.data  # read once: each read of a bytes field copies it
                if expected + len(data) > size:
                    refusal = (
                        OutOfRange,
                        "WRITE_PAST_END",
                        f"{len(data)} bytes at offset {expected} run past the declared "
                        f"size of {size} bytes",
                    )
                    return
                if data:
                    upload_received("gateway", len(data))
                    expected += len(data)
                    yield ingest_service_pb2.WritePartsRequest(chunk=data)
                message = await anext(source, None)

        committed = claim.committed
        # A request iterator, not explicit writes: the tracing interceptor on the channel
        # awaits the call's end before handing the call back, so writes would deadlock.
        call = self.ingest.WriteParts(forward(), timeout=self.settings.upload_timeout_seconds)
        try:
            async for response in call:
                part = response.part
                await self.records.record_part(
                    claim,
                    part.part_number,
                    etag=part.etag,
                    end=part.committed_size,
                    hash_state=part.hash_state,
                )
                committed = part.committed_size
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            call.cancel()
        if refusal is not None:
            kind, reason, message = refusal
            raise kind(
                f"{message}; {committed} bytes are committed, resume from there",
                reason=reason,
                metadata={"committed_size": str(committed), "size_bytes": str(size)},
            )
        return committed

    # -- read ----------------------------------------------------------------------------------

    async def get(self, owner: str, upload_id: str) -> upload_pb2.Upload:
        return await self.records.get(owner, upload_id)

    # -- finish --------------------------------------------------------------------------------

    async def finish(self, owner: str, upload_id: str) -> media_pb2.Video:
        claim = await self.records.claim_finish(owner, upload_id)
        if claim is None:
            video = await self.records.finished_video(owner, upload_id)
            assert video is not None
            return video
        target = claim.target
        request = ingest_service_pb2.CompleteResumableWriteRequest(
            target=_target(claim),
            parts=[
                ingest_service_pb2.CommittedPart(part_number=p.number, etag=p.etag)
                for p in claim.parts
            ],
            hash_state=claim.hash_state,
            sha256=claim.sha256,
            content_type=claim.content_type,
        )
        try:
            response: ingest_service_pb2.CompleteResumableWriteResponse = await self._call(
                self.ingest.CompleteResumableWrite, request
            )
            stored = response.video
            video = media_pb2.Video(
                id=str(target.video_id),
                filename=claim.filename,
                content_type=stored.content_type,
                size_bytes=stored.size_bytes,
                sha256=stored.sha256,
                object=stored.object,
                media_info=stored.media_info,
            )
            video = await self.records.finish(
                owner, claim, video, max_stored_bytes=self.settings.owner_max_stored_bytes
            )
        except ReelmillError as exc:
            if exc.transient or exc.reason == "UPLOAD_SUPERSEDED":
                raise
            # Nothing a retry could change: the upload and everything it stored go.
            await asyncio.shield(
                self.records.discard(target.upload_id, target.video_id, reason="upload_refused")
            )
            raise
        log.info(
            "upload finished",
            extra={"upload_id": upload_id, "video_id": video.id, "bytes": video.size_bytes},
        )
        return video

    # -- expiry --------------------------------------------------------------------------------

    async def run_expiry(self) -> None:
        """Removes expired uploads every purge interval (their bytes go with the purges)."""
        while True:
            try:
                removed = await self.records.sweep_expired()
                if removed:
                    log.info("expired uploads removed", extra={"uploads": removed})
            except Exception as exc:  # database down: the next sweep retries
                log.warning("upload expiry sweep failed: %s", exc)
            await asyncio.sleep(self.settings.purge_interval_seconds)
