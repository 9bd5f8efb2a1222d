"""A small typed async client for reelmill's public API.

    async with ReelmillClient("127.0.0.1:50051", token=...) as client:
        video = await client.upload_file(Path("talk.mp4"))
        job = await client.create_job(video.id, request_id="talk-1")
        async for event in client.watch_job(job.id):
            ...

``token`` is a bearer JWT or an API key (``rk_…``, from ``create_api_key``); both are sent as
``authorization: Bearer …``.

It imports only grpc and the generated stubs: no server code. ``upload_file`` uses a resumable
upload (``reelmill.uploads``) that goes on by itself after a dropped connection. ``watch_job``
reconnects by itself after transient failures and resumes from the last sequence it saw, so
the caller gets every event exactly once, in order. A call refused by a limit
(RESOURCE_EXHAUSTED) says when to retry: ``retry_after(error)``.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc

from reelmill.retry import Backoff
from reelmill.status import error_reason as error_reason  # part of the client's API
from reelmill.status import retry_after as retry_after
from reelmill.uploads import FileUpload, OnSent, Resume
from reelmill.v1 import (
    api_key_service_pb2,
    api_key_service_pb2_grpc,
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    media_pb2,
    pipeline_pb2,
    upload_pb2,
    webhook_service_pb2,
    webhook_service_pb2_grpc,
)

CHUNK_SIZE = 1024 * 1024
TERMINAL_STATES = frozenset(
    {job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED}
)
_RECONNECT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL})
#: Waits before ``watch_job``'s reconnects (reset by every event received).
_RECONNECT_BACKOFF = Backoff(initial=0.4, maximum=5.0)


def job_request(
    video_id: str = "",
    *,
    url: str = "",
    spec: pipeline_pb2.PipelineSpec | None = None,
    request_id: str = "",
    labels: Mapping[str, str] | None = None,
    timeout: timedelta | None = None,
    priority: int = 0,
) -> job_service_pb2.CreateJobRequest:
    """A CreateJob request (also an item of ``batch_create_jobs``): for an uploaded video
    (``video_id``) or a URL to import (``url``)."""
    if bool(video_id) == bool(url):
        raise ValueError("give exactly one of video_id and url")
    request = job_service_pb2.CreateJobRequest(
        spec=spec, request_id=request_id, labels=dict(labels or {}), priority=priority
    )
    if video_id:
        request.video_id = video_id
    else:
        request.url = url
    if timeout is not None:
        request.timeout.FromTimedelta(timeout)
    return request


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


class ReelmillClient:
    def __init__(
        self,
        target: str,
        *,
        token: str,
        channel: grpc.aio.Channel | None = None,
        timeout: float = 30.0,
    ) -> None:
        self._channel = channel or grpc.aio.insecure_channel(
            target,
            options=[
                ("grpc.max_receive_message_length", 16 * 1024 * 1024),
                ("grpc.keepalive_time_ms", 30_000),
            ],
        )
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._timeout = timeout
        self.stub = job_service_pb2_grpc.JobServiceStub(self._channel)
        self.api_key_stub = api_key_service_pb2_grpc.ApiKeyServiceStub(self._channel)
        self.webhook_stub = webhook_service_pb2_grpc.WebhookServiceStub(self._channel)

    async def __aenter__(self) -> ReelmillClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    # videos -----------------------------------------------------------------------------------

    async def upload(
        self,
        chunks: AsyncIterator[bytes],
        *,
        filename: str,
        size: int,
        sha256: str = "",
        content_type: str = "",
        timeout: float | None = None,
    ) -> media_pb2.Video:
        """Uploads a byte stream of exactly ``size`` bytes."""

        async def requests() -> AsyncIterator[job_service_pb2.UploadVideoRequest]:
            yield job_service_pb2.UploadVideoRequest(
                header=job_service_pb2.UploadHeader(
                    filename=filename, size_bytes=size, sha256=sha256, content_type=content_type
                )
            )
            async for chunk in chunks:
                yield job_service_pb2.UploadVideoRequest(chunk=chunk)

        response: job_service_pb2.UploadVideoResponse = await self.stub.UploadVideo(
            requests(), metadata=self._metadata, timeout=timeout
        )
        return response.video

    async def upload_file(
        self,
        path: Path,
        *,
        verify_sha256: bool = True,
        timeout: float | None = None,
        resumable: bool = True,
        on_sent: OnSent | None = None,
        on_resume: Callable[[Resume], None] | None = None,
    ) -> media_pb2.Video:
        """Uploads a local file (streamed; hashed first when ``verify_sha256``, so the server
        checks it). With ``resumable`` (the default) through a resumable upload that goes on by
        itself after a dropped connection (``reelmill.uploads``): ``timeout`` bounds each write
        call, ``on_sent(offset, start)`` hears of every chunk handed to the connection,
        ``on_resume`` of every resumption. Otherwise one UploadVideo call (``timeout`` its
        deadline)."""
        if resumable:
            started = await self.start_upload(path, verify_sha256=verify_sha256)
            # Just started: nothing to ask the server before writing.
            return await self._file_upload(path, timeout, on_sent, on_resume).run(started)
        sha256 = await asyncio.to_thread(file_sha256, path) if verify_sha256 else ""
        size = (await asyncio.to_thread(path.stat)).st_size

        async def chunks() -> AsyncIterator[bytes]:
            with path.open("rb") as handle:
                while chunk := await asyncio.to_thread(handle.read, CHUNK_SIZE):
                    yield chunk

        return await self.upload(
            chunks(), filename=path.name, size=size, sha256=sha256, timeout=timeout
        )

    def _file_upload(
        self,
        path: Path,
        timeout: float | None,
        on_sent: OnSent | None,
        on_resume: Callable[[Resume], None] | None,
    ) -> FileUpload:
        return FileUpload(
            self.stub,
            self._metadata,
            path,
            call_timeout=self._timeout,
            write_timeout=timeout,
            on_sent=on_sent,
            on_resume=on_resume,
        )

    async def start_upload(self, path: Path, *, verify_sha256: bool = True) -> upload_pb2.Upload:
        """Starts a resumable upload of ``path`` (hashed first when ``verify_sha256``); write
        and finish it with ``resume_upload``."""
        sha256 = await asyncio.to_thread(file_sha256, path) if verify_sha256 else ""
        size = (await asyncio.to_thread(path.stat)).st_size
        upload = self._file_upload(path, None, None, None)
        return await upload.start(size=size, sha256=sha256)

    async def resume_upload(
        self,
        path: Path,
        upload_id: str,
        *,
        timeout: float | None = None,
        on_sent: OnSent | None = None,
        on_resume: Callable[[Resume], None] | None = None,
    ) -> media_pb2.Video:
        """Goes on with a resumable upload of ``path`` started earlier (by this process or
        another): writes what is not committed yet, then finishes it."""
        upload = self._file_upload(path, timeout, on_sent, on_resume)
        return await upload.run(await upload.get(upload_id))

    async def get_upload(self, upload_id: str) -> upload_pb2.Upload:
        """A resumable upload: its committed size and state (and video once finished)."""
        response: job_service_pb2.GetUploadResponse = await self.stub.GetUpload(
            job_service_pb2.GetUploadRequest(upload_id=upload_id),
            metadata=self._metadata,
            timeout=self._timeout,
        )
        return response.upload

    async def list_videos(
        self, *, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[media_pb2.Video], str]:
        """The caller's videos, newest first, and the next page's token ("" after the last)."""
        response: job_service_pb2.ListVideosResponse = await self.stub.ListVideos(
            job_service_pb2.ListVideosRequest(page_size=page_size, page_token=page_token),
            metadata=self._metadata,
            timeout=self._timeout,
        )
        return list(response.videos), response.next_page_token

    async def get_video(self, video_id: str) -> media_pb2.Video:
        response: job_service_pb2.GetVideoResponse = await self.stub.GetVideo(
            job_service_pb2.GetVideoRequest(video_id=video_id),
            metadata=self._metadata,
            timeout=self._timeout,
        )
        return response.video

    async def delete_video(self, video_id: str) -> job_service_pb2.DeleteVideoResponse:
        """Deletes a video with its jobs (running ones are cancelled) and everything they
        produced; the objects are purged shortly after."""
        response: job_service_pb2.DeleteVideoResponse = await self.stub.DeleteVideo(
            job_service_pb2.DeleteVideoRequest(video_id=video_id),
            metadata=self._metadata,
            timeout=self._timeout,
        )
        return response

    # jobs -------------------------------------------------------------------------------------

    async def create_job(
        self,
        video_id: str = "",
        *,
        url: str = "",
        spec: pipeline_pb2.PipelineSpec | None = None,
        request_id: str = "",
        labels: Mapping[str, str] | None = None,
        timeout: timedelta | None = None,
        priority: int = 0,
    ) -> job_pb2.Job:
        """A job for an uploaded video (``video_id``) or for a URL to import (``url``);
        ``timeout`` bounds the whole job, queueing included (default: the server's);
        ``priority`` (-100..100) orders the caller's own queued jobs."""
        request = job_request(
            video_id,
            url=url,
            spec=spec,
            request_id=request_id,
            labels=labels,
            timeout=timeout,
            priority=priority,
        )
        response: job_service_pb2.CreateJobResponse = await self.stub.CreateJob(
            request,
            metadata=self._metadata,
            timeout=self._timeout,
        )
        return response.job

    async def batch_create_jobs(
        self, requests: Sequence[job_service_pb2.CreateJobRequest]
    ) -> job_service_pb2.BatchCreateJobsResponse:
        """Many jobs in one call (build each with ``job_request``): the batch id and, per
        request in order, its job (``created`` false for an earlier job with its request_id)
        or its own error. An invalid request refuses the whole batch (INVALID_ARGUMENT,
        ``BAD_BATCH_REQUEST``, nothing created)."""
        response: job_service_pb2.BatchCreateJobsResponse = await self.stub.BatchCreateJobs(
            job_service_pb2.BatchCreateJobsRequest(requests=list(requests)),
            metadata=self._metadata,
            timeout=self._timeout,
        )
        return response

    async def get_job(
        self,
        job_id: str,
        *,
        view: job_service_pb2.JobView.ValueType = job_service_pb2.JOB_VIEW_FULL,
    ) -> job_pb2.Job:
        response: job_service_pb2.GetJobResponse = await self.stub.GetJob(
            job_service_pb2.GetJobRequest(job_id=job_id, view=view),
            metadata=self._metadata,
            timeout=self._timeout,
        )
        return response.job

    async def list_jobs(
        self,
        *,
        states: list[job_pb2.JobState.ValueType] | None = None,
        labels: Mapping[str, str] | None = None,
        page_size: int = 0,
        page_token: str = "",
        view: job_service_pb2.JobView.ValueType = job_service_pb2.JOB_VIEW_BASIC,
        batch_id: str = "",
    ) -> tuple[list[job_pb2.Job], str]:
        response: job_service_pb2.ListJobsResponse = await self.stub.ListJobs(
            job_service_pb2.ListJobsRequest(
                view=view,
                states=states or [],
                labels=dict(labels or {}),
                page_size=page_size,
                page_token=page_token,
                batch_id=batch_id,
            ),
            metadata=self._metadata,
            timeout=self._timeout,
        )
        return list(response.jobs), response.next_page_token

    async def cancel_job(self, job_id: str) -> job_pb2.Job:
        response: job_service_pb2.CancelJobResponse = await self.stub.CancelJob(
            job_service_pb2.CancelJobRequest(job_id=job_id),
            metadata=self._metadata,
            timeout=self._timeout,
        )
        return response.job

    async def retry_job(self, job_id: str) -> job_pb2.Job:
        """Queues a FAILED or CANCELLED job again: its succeeded stages are kept, the others
        run with a fresh attempt budget and the job with a fresh deadline."""
        response: job_service_pb2.RetryJobResponse = await self.stub.RetryJob(
            job_service_pb2.RetryJobRequest(job_id=job_id),
            metadata=self._metadata,
            timeout=self._timeout,
        )
        return response.job

    def watch_job(
        self, job_id: str, *, after_sequence: int = 0, max_reconnects: int = 20
    ) -> AsyncIterator[job_pb2.JobEvent]:
        """Every event after ``after_sequence`` until the terminal one, reconnecting (and
        resuming) after transient failures."""
        cursors = {job_id: after_sequence}

        def call() -> grpc.aio.UnaryStreamCall[Any, Any]:
            # One job, though the events may spell its id differently (canonical form).
            last = max(cursors.values())
            request = job_service_pb2.WatchJobRequest(job_id=job_id, after_sequence=last)
            stream: grpc.aio.UnaryStreamCall[Any, Any] = self.stub.WatchJob(
                request, metadata=self._metadata
            )
            return stream

        return self._follow(call, cursors, max_reconnects)

    def watch_batch(
        self,
        batch_id: str,
        *,
        after_sequences: Mapping[str, int] | None = None,
        max_reconnects: int = 20,
    ) -> AsyncIterator[job_pb2.JobEvent]:
        """Every event of every job of a batch (each job's in order) until all of them ended,
        reconnecting and resuming each job where it was after transient failures."""
        cursors = dict(after_sequences or {})

        def call() -> grpc.aio.UnaryStreamCall[Any, Any]:
            request = job_service_pb2.WatchBatchRequest(batch_id=batch_id, after_sequences=cursors)
            stream: grpc.aio.UnaryStreamCall[Any, Any] = self.stub.WatchBatch(
                request, metadata=self._metadata
            )
            return stream

        return self._follow(call, cursors, max_reconnects)

    async def _follow(
        self,
        call: Callable[[], grpc.aio.UnaryStreamCall[Any, Any]],
        cursors: dict[str, int],
        max_reconnects: int,
    ) -> AsyncIterator[job_pb2.JobEvent]:
        """The events of a watch stream, each once: ``cursors`` (job id -> last sequence seen)
        moves as events arrive, and ``call()`` reopens the stream from it after a transient
        failure."""
        failures = 0
        while True:
            stream = call()
            try:
                async for response in stream:
                    failures = 0
                    event = response.event
                    if event.sequence <= cursors.get(event.job_id, 0):
                        continue
                    cursors[event.job_id] = event.sequence
                    yield event
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in _RECONNECT_CODES or failures >= max_reconnects:
                    raise
                failures += 1
                await asyncio.sleep(
                    _RECONNECT_BACKOFF.delay(failures, retry_after=retry_after(exc))
                )
            finally:
                stream.cancel()

    # artifacts --------------------------------------------------------------------------------

    async def artifact_url(self, job_id: str, name: str) -> str:
        response: job_service_pb2.GetArtifactUrlResponse = await self.stub.GetArtifactUrl(
            job_service_pb2.GetArtifactUrlRequest(job_id=job_id, artifact_name=name),
            metadata=self._metadata,
            timeout=self._timeout,
        )
        return response.url

    async def download_artifact(self, job_id: str, name: str, path: Path) -> media_pb2.Artifact:
        """Streams an artifact into ``path`` (written to a temporary name, then renamed)."""
        call = self.stub.DownloadArtifact(
            job_service_pb2.DownloadArtifactRequest(job_id=job_id, artifact_name=name),
            metadata=self._metadata,
        )
        artifact = media_pb2.Artifact()
        partial = path.with_name(path.name + ".partial")
        try:
            with partial.open("wb") as handle:
                async for response in call:
                    if response.WhichOneof("part") == "artifact":
                        artifact = response.artifact
                    else:
                        await asyncio.to_thread(handle.write, response.chunk)
            partial.replace(path)
        finally:
            partial.unlink(missing_ok=True)
        return artifact

    # API keys ---------------------------------------------------------------------------------

    async def create_api_key(
        self, display_name: str = ""
    ) -> tuple[api_key_service_pb2.ApiKey, str]:
        """A new API key of the caller and its secret, shown only now. Needs a JWT: a caller
        authenticated with an API key is refused (PERMISSION_DENIED)."""
        response: api_key_service_pb2.CreateApiKeyResponse = await self.api_key_stub.CreateApiKey(
            api_key_service_pb2.CreateApiKeyRequest(display_name=display_name),
            metadata=self._metadata,
            timeout=self._timeout,
        )
        return response.api_key, response.secret

    async def list_api_keys(
        self, *, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[api_key_service_pb2.ApiKey], str]:
        """The caller's API keys (revoked ones too), newest first."""
        response: api_key_service_pb2.ListApiKeysResponse = await self.api_key_stub.ListApiKeys(
            api_key_service_pb2.ListApiKeysRequest(page_size=page_size, page_token=page_token),
            metadata=self._metadata,
            timeout=self._timeout,
        )
        return list(response.api_keys), response.next_page_token

    async def revoke_api_key(self, api_key_id: str) -> api_key_service_pb2.ApiKey:
        response: api_key_service_pb2.RevokeApiKeyResponse = await self.api_key_stub.RevokeApiKey(
            api_key_service_pb2.RevokeApiKeyRequest(api_key_id=api_key_id),
            metadata=self._metadata,
            timeout=self._timeout,
        )
        return response.api_key

    # webhooks ---------------------------------------------------------------------------------

    async def create_webhook_endpoint(
        self,
        url: str,
        *,
        event_types: list[webhook_service_pb2.WebhookEventType.ValueType] | None = None,
        description: str = "",
    ) -> tuple[webhook_service_pb2.WebhookEndpoint, str]:
        """A new endpoint receiving ``event_types`` (default: the jobs that end) and its
        signing secret (``whsec_…``), shown only now."""
        response: webhook_service_pb2.CreateWebhookEndpointResponse = (
            await self.webhook_stub.CreateWebhookEndpoint(
                webhook_service_pb2.CreateWebhookEndpointRequest(
                    url=url, event_types=event_types or [], description=description
                ),
                metadata=self._metadata,
                timeout=self._timeout,
            )
        )
        return response.endpoint, response.secret

    async def list_webhook_endpoints(
        self, *, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[webhook_service_pb2.WebhookEndpoint], str]:
        response: webhook_service_pb2.ListWebhookEndpointsResponse = (
            await self.webhook_stub.ListWebhookEndpoints(
                webhook_service_pb2.ListWebhookEndpointsRequest(
                    page_size=page_size, page_token=page_token
                ),
                metadata=self._metadata,
                timeout=self._timeout,
            )
        )
        return list(response.endpoints), response.next_page_token

    async def delete_webhook_endpoint(self, endpoint_id: str) -> int:
        """Deletes an endpoint; how many of its deliveries were still pending."""
        response: webhook_service_pb2.DeleteWebhookEndpointResponse = (
            await self.webhook_stub.DeleteWebhookEndpoint(
                webhook_service_pb2.DeleteWebhookEndpointRequest(endpoint_id=endpoint_id),
                metadata=self._metadata,
                timeout=self._timeout,
            )
        )
        return response.dropped_deliveries

    async def rotate_webhook_secret(
        self, endpoint_id: str, *, overlap: timedelta | None = None
    ) -> tuple[webhook_service_pb2.WebhookEndpoint, str]:
        """A new signing secret; the old one keeps signing for ``overlap`` (default: the
        server's)."""
        request = webhook_service_pb2.RotateWebhookSecretRequest(endpoint_id=endpoint_id)
        if overlap is not None:
            request.overlap.FromTimedelta(overlap)
        response: webhook_service_pb2.RotateWebhookSecretResponse = (
            await self.webhook_stub.RotateWebhookSecret(
                request, metadata=self._metadata, timeout=self._timeout
            )
        )
        return response.endpoint, response.secret

    async def list_webhook_deliveries(
        self,
        *,
        endpoint_id: str = "",
        job_id: str = "",
        states: list[webhook_service_pb2.WebhookDeliveryState.ValueType] | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> tuple[list[webhook_service_pb2.WebhookDelivery], str]:
        """Deliveries with their attempts, newest first."""
        response: webhook_service_pb2.ListWebhookDeliveriesResponse = (
            await self.webhook_stub.ListWebhookDeliveries(
                webhook_service_pb2.ListWebhookDeliveriesRequest(
                    endpoint_id=endpoint_id,
                    job_id=job_id,
                    states=states or [],
                    page_size=page_size,
                    page_token=page_token,
                ),
                metadata=self._metadata,
                timeout=self._timeout,
            )
        )
        return list(response.deliveries), response.next_page_token

    async def redeliver_webhook(self, delivery_id: str) -> webhook_service_pb2.WebhookDelivery:
        """Sends a delivery again (same webhook-id, a fresh retry schedule)."""
        response: webhook_service_pb2.RedeliverWebhookResponse = (
            await self.webhook_stub.RedeliverWebhook(
                webhook_service_pb2.RedeliverWebhookRequest(delivery_id=delivery_id),
                metadata=self._metadata,
                timeout=self._timeout,
            )
        )
        return response.delivery
