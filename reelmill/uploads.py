"""Resumable uploads from a file, for the client: start (or pick up) an upload, write from the
committed size, and after a dropped connection — the gateway or ingest died, the network went
away, a write was taken over — ask the server what it committed and go on from there, with
capped, jittered backoff; then finish it. Imports only grpc and the generated stubs.

What a retry may outlive: UNAVAILABLE, INTERNAL and UNKNOWN (a transport failure),
DEADLINE_EXCEEDED, ABORTED (another write took the upload over), CANCELLED by the server,
RESOURCE_EXHAUSTED that says when to retry (a rate limit), and a write refused as
WRITE_OFFSET_MISMATCH or UPLOAD_INCOMPLETE (the client then asks for the committed size).
Everything else (the file is not a video, its SHA-256 is wrong, the storage limit, the upload
expired) is raised at once.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from reelmill.retry import Backoff
from reelmill.status import error_reason, retry_after
from reelmill.v1 import job_service_pb2, job_service_pb2_grpc, media_pb2, upload_pb2

CHUNK_SIZE = 1024 * 1024
#: Waits between attempts; reset whenever an attempt commits more bytes.
RESUME_BACKOFF = Backoff(initial=0.5, maximum=10.0)
#: Failed attempts in a row (with no byte committed in between) before giving up.
MAX_RETRIES = 30

_TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
    }
)
_RESYNC_REASONS = frozenset({"WRITE_OFFSET_MISMATCH", "UPLOAD_INCOMPLETE"})

#: ``on_sent(offset, start)``: told after each chunk is handed to the connection (``offset``
#: bytes of the file are then sent, this attempt began at ``start``); may return an awaitable,
#: which the upload waits for before it sends more.
OnSent = Callable[[int, int], Awaitable[None] | None]


def resumable(error: grpc.aio.AioRpcError) -> bool:
    """Whether an upload that failed with ``error`` may go on after asking the server."""
    if error.code() in _TRANSIENT:
        return True
    if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return retry_after(error) is not None and error_reason(error) != "STORAGE_QUOTA_EXCEEDED"
    return error.code() == grpc.StatusCode.FAILED_PRECONDITION and (
        error_reason(error) in _RESYNC_REASONS
    )


@dataclass(frozen=True)
class Resume:
    """Told to ``on_resume`` before each new attempt."""

    #: What the server has committed (where the next write starts).
    committed_size: int
    size: int
    #: The failure that ended the last attempt.
    error: grpc.aio.AioRpcError
    #: Failed attempts in a row so far.
    retry: int


async def file_chunks(path: Path, offset: int, chunk_size: int) -> AsyncIterator[bytes]:
    """The file's bytes from ``offset``."""
    with path.open("rb") as handle:
        handle.seek(offset)
        while chunk := await asyncio.to_thread(handle.read, chunk_size):
            yield chunk


class FileUpload:
    """One file through a resumable upload; see the module docstring."""

    def __init__(
        self,
        stub: job_service_pb2_grpc.JobServiceStub,
        metadata: tuple[tuple[str, str], ...],
        path: Path,
        *,
        call_timeout: float,
        write_timeout: float | None = None,
        chunk_size: int = CHUNK_SIZE,
        backoff: Backoff = RESUME_BACKOFF,
        max_retries: int = MAX_RETRIES,
        on_sent: OnSent | None = None,
        on_resume: Callable[[Resume], None] | None = None,
    ) -> None:
        self._stub = stub
        self._metadata = metadata
        self._path = path
        self._call_timeout = call_timeout
        self._write_timeout = write_timeout
        self._chunk_size = chunk_size
        self._backoff = backoff
        self._max_retries = max_retries
        self._on_sent = on_sent
        self._on_resume = on_resume

    async def start(self, *, size: int, sha256: str, content_type: str = "") -> upload_pb2.Upload:
        response: job_service_pb2.StartUploadResponse = await self._stub.StartUpload(
            job_service_pb2.StartUploadRequest(
                header=job_service_pb2.UploadHeader(
                    filename=self._path.name,
                    size_bytes=size,
                    sha256=sha256,
                    content_type=content_type,
                )
            ),
            metadata=self._metadata,
            timeout=self._call_timeout,
        )
        return response.upload

    async def get(self, upload_id: str) -> upload_pb2.Upload:
        response: job_service_pb2.GetUploadResponse = await self._stub.GetUpload(
            job_service_pb2.GetUploadRequest(upload_id=upload_id),
            metadata=self._metadata,
            timeout=self._call_timeout,
        )
        return response.upload

    async def write(self, upload_id: str, offset: int) -> int:
        """One WriteUpload of the rest of the file from ``offset``; the committed size."""

        async def requests() -> AsyncIterator[job_service_pb2.WriteUploadRequest]:
            position = offset
            async for chunk in file_chunks(self._path, offset, self._chunk_size):
                yield job_service_pb2.WriteUploadRequest(
                    upload_id=upload_id, write_offset=position, data=chunk
                )
                position += len(chunk)
                if self._on_sent is not None and inspect.isawaitable(
                    sent := self._on_sent(position, offset)
                ):
                    await sent  # the hook may hold the upload back (throttling, tests)

        response: job_service_pb2.WriteUploadResponse = await self._stub.WriteUpload(
            requests(), metadata=self._metadata, timeout=self._write_timeout
        )
        return response.committed_size

    async def finish(self, upload_id: str) -> media_pb2.Video:
        response: job_service_pb2.FinishUploadResponse = await self._stub.FinishUpload(
            job_service_pb2.FinishUploadRequest(upload_id=upload_id),
            metadata=self._metadata,
            # Verifying and probing take longer than an ordinary call.
            timeout=max(self._call_timeout, 300.0),
        )
        return response.video

    async def run(self, upload: upload_pb2.Upload) -> media_pb2.Video:
        """Writes what ``upload`` lacks, resuming after failures, and finishes it."""
        committed, state = upload.committed_size, upload.state
        size = upload.size_bytes
        retries = 0
        while True:
            try:
                if state == upload_pb2.UPLOAD_STATE_ACTIVE and committed < size:
                    before = committed
                    committed = await self.write(upload.id, committed)
                    if committed > before:
                        retries = 0
                    elif committed < size:
                        retries += 1
                        if retries > self._max_retries:
                            raise RuntimeError(f"upload {upload.id} makes no progress")
                if committed >= size or state != upload_pb2.UPLOAD_STATE_ACTIVE:
                    return await self.finish(upload.id)
            except grpc.aio.AioRpcError as error:
                if not resumable(error) or retries >= self._max_retries:
                    raise
                retries += 1
                await asyncio.sleep(self._backoff.delay(retries, retry_after=retry_after(error)))
                try:
                    current = await self.get(upload.id)
                except grpc.aio.AioRpcError as again:
                    if not resumable(again):
                        raise
                    continue  # the gateway is still away: back off again
                if current.committed_size > committed:
                    retries = 0
                committed, state = current.committed_size, current.state
                if self._on_resume is not None:
                    self._on_resume(Resume(committed, size, error, retries))
