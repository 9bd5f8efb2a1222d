"""JobService: the public API. Thin: messages in, store/hub/orchestrator calls, messages out."""

from __future__ import annotations

import logging
import mimetypes
import re
import unicodedata
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import Any

import grpc

from gateway.artifact_urls import ArtifactSigner
from gateway.auth import current_owner
from gateway.batches import Batches
from gateway.db.models import TERMINAL_JOB_STATES
from gateway.events import EventHub
from gateway.keys import source_key
from gateway.metrics import watching
from gateway.pipeline import Stage, plan_stages
from gateway.queue import MAX_PRIORITY, MIN_PRIORITY
from gateway.settings import GatewaySettings
from gateway.store import NewJob, Store, page_size, parse_id
from gateway.uploads import ResumableUploads
from reelmill.v1 import (
    ingest_service_pb2,
    ingest_service_pb2_grpc,
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    media_pb2,
)
from runtime.errors import (
    InvalidArgument,
    ReelmillError,
    ResourceExhausted,
    from_rpc_error,
)
from runtime.metrics import upload_received
from runtime.storage import ObjectStore
from runtime.streams import drain
from runtime.telemetry import current_context

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: Unicode categories dropped from file names: controls, format characters, separators of
#: lines and paragraphs, surrogates, private use, unassigned.
_INVISIBLE = {"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"}
_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_.-]{0,62}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
MAX_LABELS = 64
MAX_URL_EXPIRY = timedelta(days=7)
DEFAULT_URL_EXPIRY = timedelta(hours=1)


def artifact_job_id(job_id: str) -> str:
    """The job id as the store found it (canonical form), for a URL's signature."""
    return str(uuid.UUID(job_id))


def sanitize_filename(name: str) -> str:
    """The last path component, without control or format characters (NUL, bidirectional
    overrides that disguise an extension, zero-width characters, line separators), at most
    255 characters."""
    base = re.split(r"[\\/]", name)[-1]
    base = "".join(c for c in base if unicodedata.category(c) not in _INVISIBLE)
    base = base.strip().lstrip(".")
    return base[:255] or "upload"


def guess_content_type(filename: str) -> str:
    """A media type from the file name's extension; empty lets ingest's probe decide."""
    guessed, _ = mimetypes.guess_type(sanitize_filename(filename))
    return guessed if guessed and guessed.startswith(("video/", "audio/")) else ""


MAX_URL_LENGTH = 2048


def validate_url(url: str) -> str:
    """An http(s) URL with a host; what it may reach is ingest's guard to decide."""
    if len(url) > MAX_URL_LENGTH or _CONTROL.search(url):
        raise InvalidArgument("url is too long or has control characters", reason="BAD_URL")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidArgument("url must be an http or https URL with a host", reason="BAD_URL")
    return url


def validate_priority(priority: int) -> int:
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise InvalidArgument(
            f"priority must be between {MIN_PRIORITY} and {MAX_PRIORITY}, got {priority}",
            reason="BAD_PRIORITY",
            metadata={"min": str(MIN_PRIORITY), "max": str(MAX_PRIORITY)},
        )
    return priority


#: Bad requests of a batch named in its refusal's message.
MAX_PROBLEMS_SHOWN = 10


def invalid_batch(problems: Sequence[tuple[int, InvalidArgument]], size: int) -> InvalidArgument:
    """The refusal of a batch with invalid requests: every one's index and reason in the
    ErrorInfo metadata, the first few in the message."""
    shown = "; ".join(
        f"requests[{index}]: {problem.message} [{problem.reason}]"
        for index, problem in problems[:MAX_PROBLEMS_SHOWN]
    )
    more = len(problems) - MAX_PROBLEMS_SHOWN
    return InvalidArgument(
        f"{len(problems)} of {size} requests are invalid, so none was created: {shown}"
        + (f"; and {more} more" if more > 0 else ""),
        reason="BAD_BATCH_REQUEST",
        metadata={
            "indexes": ",".join(str(index) for index, _ in problems),
            "reasons": ",".join(problem.reason for _, problem in problems),
        },
    )


def validate_labels(labels: dict[str, str]) -> dict[str, str]:
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(f"at most {MAX_LABELS} labels", reason="BAD_LABELS")
    for key, value in labels.items():
        if not _LABEL_KEY.match(key):
            raise InvalidArgument(
                f"label key {key[:70]!r} must match {_LABEL_KEY.pattern}", reason="BAD_LABELS"
            )
        if len(value) > 256 or _CONTROL.search(value):
            raise InvalidArgument(
                f"label {key!r}: value too long or has control characters", reason="BAD_LABELS"
            )
    return dict(labels)


class JobServicer(job_service_pb2_grpc.JobServiceServicer):
    def __init__(
        self,
        settings: GatewaySettings,
        store: Store,
        hub: EventHub,
        objects: ObjectStore,
        ingest: ingest_service_pb2_grpc.IngestServiceStub,
        stages: Sequence[Stage],
        uploads: ResumableUploads,
        *,
        artifact_urls: ArtifactSigner | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.hub = hub
        self.objects = objects
        self.ingest = ingest
        self.stages = tuple(stages)
        self.uploads = uploads
        #: Signs http URLs of the browser port for the local store (``file://`` otherwise).
        self.artifact_urls = artifact_urls
        self.batches = Batches(store.sessions)

    # videos -----------------------------------------------------------------------------------

    async def UploadVideo(
        self, request_iterator: AsyncIterator[job_service_pb2.UploadVideoRequest], context: Context
    ) -> job_service_pb2.UploadVideoResponse:
        owner = current_owner()
        source = aiter(request_iterator)
        first = await anext(source, None)
        if first is None:
            raise InvalidArgument(
                "empty upload stream: send a header, then chunks", reason="MISSING_HEADER"
            )
        header = first.header if first.WhichOneof("part") == "header" else None
        video_id = uuid.uuid4()
        try:
            stored = await self._ingest_upload(owner, first, header, source, video_id)
        except Exception:
            # The client learns why only if it is not still writing (runtime.streams).
            await drain(source, declared_bytes=header.size_bytes if header else None)
            raise
        video = media_pb2.Video(
            id=str(video_id),
            filename=sanitize_filename(header.filename if header is not None else ""),
            content_type=stored.content_type,
            size_bytes=stored.size_bytes,
            sha256=stored.sha256,
            object=stored.object,
            media_info=stored.media_info,
        )
        try:
            video = await self.store.add_video(
                owner, video, max_stored_bytes=self.settings.owner_max_stored_bytes
            )
        except BaseException:
            await self.objects.delete(stored.object.key)
            raise
        log.info("video uploaded", extra={"video_id": video.id, "bytes": video.size_bytes})
        return job_service_pb2.UploadVideoResponse(video=video)

    async def _ingest_upload(
        self,
        owner: str,
        first: job_service_pb2.UploadVideoRequest,
        header: job_service_pb2.UploadHeader | None,
        source: AsyncIterator[job_service_pb2.UploadVideoRequest],
        video_id: uuid.UUID,
    ) -> ingest_service_pb2.IngestVideoResponse:
        """Streams the upload to ingest, which validates the stream's shape (missing or
        duplicate header, sizes) and stores, verifies and probes it; the gateway checks its
        own limits and chooses where the bytes go."""
        if header is not None:
            if header.size_bytes > self.settings.max_upload_bytes:
                raise ResourceExhausted(
                    f"upload of {header.size_bytes} bytes exceeds the limit of "
                    f"{self.settings.max_upload_bytes}",
                    reason="UPLOAD_TOO_LARGE",
                )
            if header.sha256 and not _SHA256.match(header.sha256):
                raise InvalidArgument(
                    "sha256 must be 64 lower-case hex digits", reason="BAD_SHA256"
                )
            # The owner's storage limit, refused at the header, before any byte is stored.
            await self.store.check_storage(
                owner, header.size_bytes, self.settings.owner_max_stored_bytes
            )
        destination = media_pb2.ObjectRef(bucket=self.objects.bucket, key=source_key(video_id))

        async def forward() -> AsyncIterator[ingest_service_pb2.IngestVideoRequest]:
            message: job_service_pb2.UploadVideoRequest | None = first
            while message is not None:
                if message.WhichOneof("part") == "header":
                    yield ingest_service_pb2.IngestVideoRequest(
                        header=ingest_service_pb2.IngestHeader(
                            destination=destination,
                            size_bytes=message.header.size_bytes,
                            sha256=message.header.sha256,
                            content_type=message.header.content_type
                            or guess_content_type(message.header.filename),
                        )
                    )
                else:
                    chunk = message.chunk  # read once: each read of a bytes field copies it
                    upload_received("gateway", len(chunk))
                    yield ingest_service_pb2.IngestVideoRequest(chunk=chunk)
                message = await anext(source, None)

        # A request iterator, not explicit writes: the tracing interceptor on the channel
        # awaits the call's end before handing the call back, so writes would deadlock.
        # Ingest drains what it refuses (runtime.streams), so its status reaches us intact.
        try:
            response: ingest_service_pb2.IngestVideoResponse = await self.ingest.IngestVideo(
                forward(), timeout=self.settings.upload_timeout_seconds
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None
        return response

    # resumable uploads ------------------------------------------------------------------------

    async def StartUpload(
        self, request: job_service_pb2.StartUploadRequest, context: Context
    ) -> job_service_pb2.StartUploadResponse:
        header = request.header
        if header.sha256 and not _SHA256.match(header.sha256):
            raise InvalidArgument("sha256 must be 64 lower-case hex digits", reason="BAD_SHA256")
        upload = await self.uploads.start(
            current_owner(),
            header,
            filename=sanitize_filename(header.filename),
            content_type=header.content_type or guess_content_type(header.filename),
        )
        return job_service_pb2.StartUploadResponse(upload=upload)

    async def WriteUpload(
        self, request_iterator: AsyncIterator[job_service_pb2.WriteUploadRequest], context: Context
    ) -> job_service_pb2.WriteUploadResponse:
        source = aiter(request_iterator)
        try:
            committed = await self.uploads.write(current_owner(), source)
        except Exception:
            # The client learns why only if it is not still writing (runtime.streams).
            await drain(source)
            raise
        return job_service_pb2.WriteUploadResponse(committed_size=committed)

    async def GetUpload(
        self, request: job_service_pb2.GetUploadRequest, context: Context
    ) -> job_service_pb2.GetUploadResponse:
        return job_service_pb2.GetUploadResponse(
            upload=await self.uploads.get(current_owner(), request.upload_id)
        )

    async def FinishUpload(
        self, request: job_service_pb2.FinishUploadRequest, context: Context
    ) -> job_service_pb2.FinishUploadResponse:
        video = await self.uploads.finish(current_owner(), request.upload_id)
        return job_service_pb2.FinishUploadResponse(video=video)

    async def GetVideo(
        self, request: job_service_pb2.GetVideoRequest, context: Context
    ) -> job_service_pb2.GetVideoResponse:
        return job_service_pb2.GetVideoResponse(
            video=await self.store.get_video(current_owner(), request.video_id)
        )

    async def ListVideos(
        self, request: job_service_pb2.ListVideosRequest, context: Context
    ) -> job_service_pb2.ListVideosResponse:
        videos, token = await self.store.list_videos(
            current_owner(), page_size(request.page_size), request.page_token
        )
        return job_service_pb2.ListVideosResponse(videos=videos, next_page_token=token)

    async def DeleteVideo(
        self, request: job_service_pb2.DeleteVideoRequest, context: Context
    ) -> job_service_pb2.DeleteVideoResponse:
        cancelled, artifacts = await self.store.delete_video(current_owner(), request.video_id)
        log.info(
            "video deleted",
            extra={
                "video_id": request.video_id,
                "cancelled_jobs": cancelled,
                "deleted_artifacts": artifacts,
            },
        )
        return job_service_pb2.DeleteVideoResponse(
            cancelled_jobs=cancelled, deleted_artifacts=artifacts
        )

    # jobs -------------------------------------------------------------------------------------

    def _new_job(self, request: job_service_pb2.CreateJobRequest) -> NewJob:
        """The job a request asks for, once every field is checked (INVALID_ARGUMENT)."""
        source = request.WhichOneof("source")
        if source is None:
            raise InvalidArgument("a job needs a source: video_id or url", reason="MISSING_SOURCE")
        if len(request.request_id) > 256:
            raise InvalidArgument(
                "request_id is longer than 256 characters", reason="BAD_REQUEST_ID"
            )
        url = validate_url(request.url) if source == "url" else None
        timeout = self._job_timeout(request)
        return NewJob(
            video_id=str(parse_id(request.video_id, "video_id")) if url is None else None,
            source_url=url,
            spec=request.spec,
            request_id=request.request_id,
            labels=validate_labels(dict(request.labels)),
            stages=tuple(plan_stages(self.stages, request.spec, from_url=url is not None)),
            timeout=timeout,
            trace_context=current_context(),
            priority=validate_priority(request.priority),
        )

    async def CreateJob(
        self, request: job_service_pb2.CreateJobRequest, context: Context
    ) -> job_service_pb2.CreateJobResponse:
        owner = current_owner()
        new = self._new_job(request)
        if new.source_url is not None:
            # An import's size is unknown until it is downloaded: refuse only an owner
            # already at the storage limit.
            await self.store.check_storage(owner, 1, self.settings.owner_max_stored_bytes)
        job, created = await self.store.create_job(
            owner,
            video_id=new.video_id,
            source_url=new.source_url,
            spec=new.spec,
            request_id=new.request_id,
            labels=new.labels,
            stages=new.stages,
            timeout=new.timeout,
            max_active=self.settings.owner_max_active_jobs,
            trace_context=new.trace_context,
            priority=new.priority,
        )
        log.info(
            "job created" if created else "job returned for repeated request_id",
            extra={"job_id": job.id},
        )
        return job_service_pb2.CreateJobResponse(job=job)

    async def BatchCreateJobs(
        self, request: job_service_pb2.BatchCreateJobsRequest, context: Context
    ) -> job_service_pb2.BatchCreateJobsResponse:
        owner = current_owner()
        items = await self._batch_items(owner, request.requests)
        created = await self.batches.create(
            owner, items, max_active=self.settings.owner_max_active_jobs
        )
        results = [
            job_service_pb2.BatchCreateJobResult(
                job=outcome.job, error=outcome.error, created=outcome.created
            )
            for outcome in created.outcomes
        ]
        log.info(
            "batch created",
            extra={
                "batch_id": str(created.batch_id or ""),
                "requests": len(results),
                "jobs_created": sum(o.created for o in created.outcomes),
                "refused": sum(o.error is not None for o in created.outcomes),
            },
        )
        return job_service_pb2.BatchCreateJobsResponse(
            batch_id=str(created.batch_id or ""), results=results
        )

    async def _batch_items(
        self, owner: str, requests: Sequence[job_service_pb2.CreateJobRequest]
    ) -> list[NewJob | job_pb2.JobError]:
        """Every request of a batch checked before anything is written: one that is not valid
        refuses the whole batch, naming every bad request."""
        if not requests:
            raise InvalidArgument("a batch needs at least one request", reason="EMPTY_BATCH")
        limit = self.settings.max_batch_size
        if len(requests) > limit:
            raise InvalidArgument(
                f"a batch holds at most {limit} requests, this one has {len(requests)}",
                reason="BATCH_TOO_LARGE",
                metadata={"max_requests": str(limit)},
            )
        items: list[NewJob | job_pb2.JobError] = []
        problems: list[tuple[int, InvalidArgument]] = []
        seen: dict[str, int] = {}
        for index, item in enumerate(requests):
            try:
                new = self._new_job(item)
                if new.request_id in seen:
                    raise InvalidArgument(
                        f"request_id {new.request_id[:64]!r} is also the one of "
                        f"requests[{seen[new.request_id]}]",
                        reason="DUPLICATE_REQUEST_ID",
                    )
            except InvalidArgument as problem:
                problems.append((index, problem))
                continue
            if new.request_id:
                seen[new.request_id] = index
            items.append(new)
        if problems:
            raise invalid_batch(problems, len(requests))
        if any(isinstance(i, NewJob) and i.source_url is not None for i in items):
            try:
                await self.store.check_storage(owner, 1, self.settings.owner_max_stored_bytes)
            except ResourceExhausted as full:
                # The owner's storage is full: the imports alone are refused.
                error = job_pb2.JobError(
                    code=full.code.name, reason=full.reason, message=full.message
                )
                items = [
                    error if isinstance(i, NewJob) and i.source_url is not None else i
                    for i in items
                ]
        return items

    def _job_timeout(self, request: job_service_pb2.CreateJobRequest) -> timedelta:
        if not request.HasField("timeout"):
            return timedelta(seconds=self.settings.job_timeout_seconds)
        if (
            request.timeout.nanos < 0
            or request.timeout.seconds < 0
            or not (request.timeout.seconds or request.timeout.nanos)
        ):
            raise InvalidArgument("timeout must be positive", reason="BAD_TIMEOUT")
        timeout = request.timeout.ToTimedelta()
        limit = self.settings.max_job_timeout_seconds
        if timeout.total_seconds() > limit:
            raise InvalidArgument(
                f"timeout {timeout.total_seconds():g}s is longer than the maximum {limit:g}s",
                reason="BAD_TIMEOUT",
                metadata={"max_seconds": f"{limit:g}"},
            )
        return timeout

    async def GetJob(
        self, request: job_service_pb2.GetJobRequest, context: Context
    ) -> job_service_pb2.GetJobResponse:
        full = request.view != job_service_pb2.JOB_VIEW_BASIC
        return job_service_pb2.GetJobResponse(
            job=await self.store.get_job(current_owner(), request.job_id, full=full)
        )

    async def ListJobs(
        self, request: job_service_pb2.ListJobsRequest, context: Context
    ) -> job_service_pb2.ListJobsResponse:
        states = []
        for state in request.states:
            if state == job_pb2.JOB_STATE_UNSPECIFIED:
                raise InvalidArgument(
                    "states must not contain JOB_STATE_UNSPECIFIED", reason="BAD_FILTER"
                )
            states.append(job_pb2.JobState.Name(state).removeprefix("JOB_STATE_"))
        jobs, token = await self.store.list_jobs(
            current_owner(),
            size=page_size(request.page_size),
            token=request.page_token,
            states=states,
            labels=dict(request.labels),
            video_id=request.video_id,
            full=request.view == job_service_pb2.JOB_VIEW_FULL,
            batch_id=request.batch_id,
        )
        return job_service_pb2.ListJobsResponse(jobs=jobs, next_page_token=token)

    async def CancelJob(
        self, request: job_service_pb2.CancelJobRequest, context: Context
    ) -> job_service_pb2.CancelJobResponse:
        job = await self.store.cancel_job(current_owner(), request.job_id)
        log.info("job cancelled", extra={"job_id": job.id})
        return job_service_pb2.CancelJobResponse(job=job)

    async def RetryJob(
        self, request: job_service_pb2.RetryJobRequest, context: Context
    ) -> job_service_pb2.RetryJobResponse:
        job = await self.store.retry_job(
            current_owner(), request.job_id, max_active=self.settings.owner_max_active_jobs
        )
        log.info("job retried", extra={"job_id": job.id})
        return job_service_pb2.RetryJobResponse(job=job)

    async def WatchJob(
        self, request: job_service_pb2.WatchJobRequest, context: Context
    ) -> AsyncIterator[job_service_pb2.WatchJobResponse]:
        if request.after_sequence < 0:
            raise InvalidArgument("after_sequence must not be negative", reason="BAD_SEQUENCE")
        with watching():
            job = await self.store.get_job(current_owner(), request.job_id, full=False)
            terminal = job.state in (
                job_pb2.JOB_STATE_SUCCEEDED,
                job_pb2.JOB_STATE_FAILED,
                job_pb2.JOB_STATE_CANCELLED,
            )
            if terminal and request.after_sequence >= job.last_event_sequence:
                return
            async for response in self.hub.watch(uuid.UUID(job.id), request.after_sequence):
                yield response

    async def WatchBatch(
        self, request: job_service_pb2.WatchBatchRequest, context: Context
    ) -> AsyncIterator[job_service_pb2.WatchBatchResponse]:
        if any(after < 0 for after in request.after_sequences.values()):
            raise InvalidArgument("after_sequences must not be negative", reason="BAD_SEQUENCE")
        with watching():
            members = await self.batches.members(current_owner(), request.batch_id)
            known = {str(member.id) for member in members}
            strangers = sorted(set(request.after_sequences) - known)
            if strangers:
                raise InvalidArgument(
                    f"after_sequences names {len(strangers)} job(s) not in batch "
                    f"{request.batch_id}, e.g. {strangers[0][:64]!r}",
                    reason="BAD_SEQUENCE",
                )
            cursors = {}
            for member in members:
                after = request.after_sequences.get(str(member.id), 0)
                if member.state in TERMINAL_JOB_STATES and after >= member.last_event_sequence:
                    continue  # already seen to its end
                cursors[member.id] = after
            async for response in self.hub.watch_many(cursors):
                yield job_service_pb2.WatchBatchResponse(event=response.event)

    # artifacts --------------------------------------------------------------------------------

    async def GetArtifactUrl(
        self, request: job_service_pb2.GetArtifactUrlRequest, context: Context
    ) -> job_service_pb2.GetArtifactUrlResponse:
        artifact = await self.store.get_artifact(
            current_owner(), request.job_id, request.artifact_name
        )
        expires = DEFAULT_URL_EXPIRY
        if request.HasField("expires_in"):
            expires = request.expires_in.ToTimedelta()
            if not timedelta(seconds=1) <= expires <= MAX_URL_EXPIRY:
                raise InvalidArgument(
                    "expires_in must be between 1 s and 7 days", reason="BAD_EXPIRY"
                )
        if self.artifact_urls is not None:
            url = self.artifact_urls.url(
                current_owner(),
                artifact_job_id(request.job_id),
                artifact.name,
                expires.total_seconds(),
            )
        else:
            url = await self.objects.presigned_get_url(artifact.object.key, expires)
        return job_service_pb2.GetArtifactUrlResponse(url=url, artifact=artifact)

    async def DownloadArtifact(
        self, request: job_service_pb2.DownloadArtifactRequest, context: Context
    ) -> AsyncIterator[job_service_pb2.DownloadArtifactResponse]:
        artifact = await self.store.get_artifact(
            current_owner(), request.job_id, request.artifact_name
        )
        yield job_service_pb2.DownloadArtifactResponse(artifact=artifact)
        async for chunk in self.objects.read(artifact.object.key):
            yield job_service_pb2.DownloadArtifactResponse(chunk=chunk)


__all__ = ["JobServicer", "ReelmillError", "sanitize_filename"]
