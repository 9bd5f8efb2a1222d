"""The pipeline's stages. Each calls one internal service through its stub, passing object
references (never bytes), and reports what it produced. The DAG is declared here, once."""

from __future__ import annotations

import abc
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from gateway.convert import from_json, to_json
from gateway.runs import ClaimedJob, StageRow
from gateway.store import StagePlan
from reelmill.v1 import (
    ingest_service_pb2,
    ingest_service_pb2_grpc,
    media_pb2,
    metadata_service_pb2,
    metadata_service_pb2_grpc,
    pipeline_pb2,
    transcode_service_pb2,
    transcode_service_pb2_grpc,
    transcribe_service_pb2,
    transcribe_service_pb2_grpc,
)
from runtime.errors import FailedPrecondition, Unavailable, from_rpc_error

Report = Callable[[float, str], Awaitable[None]]


@dataclass(frozen=True)
class StageContext:
    job: ClaimedJob
    #: Outputs of every finished stage, by stage name.
    outputs: Mapping[str, Mapping[str, Any]]
    #: Job-level results so far (protobuf JSON): media_info, transcript, metadata.
    fields: Mapping[str, Any]
    #: Reports progress (fraction 0..1, message); throttled before it is persisted.
    report: Report
    #: Deadline of each call, in seconds.
    timeout: float

    @property
    def output_prefix(self) -> str:
        return f"jobs/{self.job.id}/"

    @property
    def media_info(self) -> media_pb2.MediaInfo:
        return from_json(self.fields.get("media_info"), media_pb2.MediaInfo)

    @property
    def transcript(self) -> media_pb2.Transcript:
        return from_json(self.fields.get("transcript"), media_pb2.Transcript)

    @property
    def video(self) -> media_pb2.Video:
        """The video the job processes: uploaded before, or imported by the import stage."""
        if self.job.video is not None:
            return self.job.video
        if "video" in self.outputs.get("import", {}):
            return from_json(dict(self.outputs["import"]["video"]), media_pb2.Video)
        raise FailedPrecondition("the job's video no longer exists", reason="VIDEO_DELETED")

    @property
    def source(self) -> media_pb2.ObjectRef:
        return self.video.object


@dataclass(frozen=True)
class StageResult:
    outputs: dict[str, Any] = field(default_factory=dict)
    artifacts: list[media_pb2.Artifact] = field(default_factory=list)
    #: Columns of the job to set with the stage's success (media_info, transcript, metadata).
    job_fields: dict[str, Any] = field(default_factory=dict)
    #: A video the stage brought in (URL import), recorded with the stage's success.
    video: media_pb2.Video | None = None


class Stage(abc.ABC):
    name: str
    depends_on: tuple[str, ...] = ()

    def enabled(self, spec: pipeline_pb2.PipelineSpec) -> bool:
        """Whether the job's spec asks for this stage at all."""
        return True

    def skip_reason(self, ctx: StageContext) -> str | None:
        """Why the stage has nothing to do for this job (e.g. no audio track), if so."""
        return None

    @abc.abstractmethod
    async def run(self, ctx: StageContext) -> StageResult: ...


IMPORT_NAMESPACE = uuid.UUID("6f1c9a7e-2b1d-4c8e-9a55-3c2f0d7b9e41")


def imported_video_id(job_id: uuid.UUID) -> uuid.UUID:
    """The id of a job's imported video: fixed per job, so a retried import overwrites its
    object and row instead of adding new ones."""
    return uuid.uuid5(IMPORT_NAMESPACE, str(job_id))


def filename_from_url(url: str) -> str:
    path = urllib.parse.urlsplit(url).path
    name = urllib.parse.unquote(path.rsplit("/", 1)[-1])
    return name or urllib.parse.urlsplit(url).hostname or "import"


class ImportStage(Stage):
    """Downloads a job's URL into the store (through ingest's guarded fetcher) and records the
    video. Only jobs created from a URL have this stage; their probe waits for it."""

    name = "import"

    def __init__(self, channel: grpc.aio.Channel, bucket: str) -> None:
        self.ingest = ingest_service_pb2_grpc.IngestServiceStub(channel)
        self.bucket = bucket

    async def run(self, ctx: StageContext) -> StageResult:
        url = ctx.job.source_url or ""
        video_id = imported_video_id(ctx.job.id)
        call = self.ingest.ImportUrl(
            ingest_service_pb2.ImportUrlRequest(
                url=url,
                destination=media_pb2.ObjectRef(
                    bucket=self.bucket, key=f"videos/{video_id}/source"
                ),
            ),
            timeout=ctx.timeout,
        )
        result = await follow_stream(call, ctx)
        video = media_pb2.Video(
            id=str(video_id),
            filename=filename_from_url(url)[:255],
            content_type=result.content_type,
            size_bytes=result.size_bytes,
            sha256=result.sha256,
            object=result.object,
            media_info=result.media_info,
            source_url=url,
        )
        return StageResult(
            outputs={"video": to_json(video)}, job_fields={"video_id": video_id}, video=video
        )


class ProbeStage(Stage):
    """Probes the stored source and records its media info on the job."""

    name = "probe"

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.ingest = ingest_service_pb2_grpc.IngestServiceStub(channel)

    async def run(self, ctx: StageContext) -> StageResult:
        await ctx.report(0.0, "probing")
        try:
            response = await self.ingest.ProbeVideo(
                ingest_service_pb2.ProbeVideoRequest(object=ctx.source), timeout=ctx.timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None
        return StageResult(job_fields={"media_info": to_json(response.media_info)})


async def follow_stream(call: Any, ctx: StageContext) -> Any:
    """Consumes a stage's server stream: progress goes to ``ctx.report``; returns the
    ``result``. Cancelling the stage cancels the call, which stops the service's work."""
    try:
        async for response in call:
            kind = response.WhichOneof("update")
            if kind == "progress":
                await ctx.report(response.progress.fraction, response.progress.message)
            elif kind == "result":
                return response.result
    except grpc.aio.AioRpcError as exc:
        raise from_rpc_error(exc) from None
    finally:
        call.cancel()
    raise Unavailable("the service ended the stream without a result", reason="NO_RESULT")


def has_video(info: media_pb2.MediaInfo) -> bool:
    return len(info.video_streams) > 0


def has_audio(info: media_pb2.MediaInfo) -> bool:
    return len(info.audio_streams) > 0


class TranscodeStage(Stage):
    """Renditions (MP4 ladder, HLS, WebM), thumbnails, storyboard and clips."""

    name = "transcode"
    depends_on = ("probe",)

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.transcode = transcode_service_pb2_grpc.TranscodeServiceStub(channel)

    def enabled(self, spec: pipeline_pb2.PipelineSpec) -> bool:
        return not spec.transcode.disabled

    def skip_reason(self, ctx: StageContext) -> str | None:
        info = ctx.media_info
        if not has_video(info) and not ctx.job.spec.transcode.clips:
            return "the source has no video stream"
        return None

    async def run(self, ctx: StageContext) -> StageResult:
        call = self.transcode.Transcode(
            transcode_service_pb2.TranscodeRequest(
                source=ctx.source,
                media_info=ctx.media_info,
                spec=ctx.job.spec.transcode,
                output_prefix=ctx.output_prefix,
            ),
            timeout=ctx.timeout,
        )
        result = await follow_stream(call, ctx)
        return StageResult(
            outputs={"artifacts": [a.name for a in result.artifacts]},
            artifacts=list(result.artifacts),
        )


class AudioStage(Stage):
    """The audio track: 16 kHz mono WAV for transcription, and an AAC M4A."""

    name = "audio"
    depends_on = ("probe",)

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.transcode = transcode_service_pb2_grpc.TranscodeServiceStub(channel)

    def enabled(self, spec: pipeline_pb2.PipelineSpec) -> bool:
        return not spec.audio.disabled

    def skip_reason(self, ctx: StageContext) -> str | None:
        return None if has_audio(ctx.media_info) else "the source has no audio stream"

    async def run(self, ctx: StageContext) -> StageResult:
        call = self.transcode.ExtractAudio(
            transcode_service_pb2.ExtractAudioRequest(
                source=ctx.source,
                media_info=ctx.media_info,
                spec=ctx.job.spec.audio,
                output_prefix=ctx.output_prefix,
            ),
            timeout=ctx.timeout,
        )
        result = await follow_stream(call, ctx)
        outputs: dict[str, Any] = {"artifacts": [a.name for a in result.artifacts]}
        for artifact in result.artifacts:
            if artifact.kind == media_pb2.ARTIFACT_KIND_AUDIO_WAV:
                outputs["wav"] = {
                    "bucket": artifact.object.bucket,
                    "key": artifact.object.key,
                    "sha256": artifact.sha256,
                }
        return StageResult(outputs=outputs, artifacts=list(result.artifacts))


class TranscribeStage(Stage):
    """Speech to timed text from the audio stage's WAV."""

    name = "transcribe"
    depends_on = ("audio",)

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.transcribe = transcribe_service_pb2_grpc.TranscribeServiceStub(channel)

    def enabled(self, spec: pipeline_pb2.PipelineSpec) -> bool:
        return not spec.transcribe.disabled

    def skip_reason(self, ctx: StageContext) -> str | None:
        return None if "wav" in ctx.outputs.get("audio", {}) else "there is no audio track"

    async def run(self, ctx: StageContext) -> StageResult:
        wav = ctx.outputs["audio"]["wav"]
        call = self.transcribe.Transcribe(
            transcribe_service_pb2.TranscribeRequest(
                audio=media_pb2.ObjectRef(bucket=wav["bucket"], key=wav["key"]),
                duration=ctx.media_info.duration,
                spec=ctx.job.spec.transcribe,
                output_prefix=ctx.output_prefix,
            ),
            timeout=ctx.timeout,
        )
        result = await follow_stream(call, ctx)
        transcript = result.transcript
        return StageResult(
            outputs={
                "artifacts": [a.name for a in result.artifacts],
                "segments": len(transcript.segments),
                "language": transcript.language,
                "cached": result.cached,
            },
            artifacts=list(result.artifacts),
            job_fields={"transcript": to_json(transcript)},
        )


class MetadataStage(Stage):
    """Title, description, tags, chapters and summary from the transcript."""

    name = "metadata"
    depends_on = ("transcribe",)

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.metadata = metadata_service_pb2_grpc.MetadataServiceStub(channel)

    def enabled(self, spec: pipeline_pb2.PipelineSpec) -> bool:
        return not spec.metadata.disabled

    def skip_reason(self, ctx: StageContext) -> str | None:
        return None if "transcript" in ctx.fields else "there is no transcript"

    async def run(self, ctx: StageContext) -> StageResult:
        await ctx.report(0.0, "generating")
        try:
            response = await self.metadata.GenerateMetadata(
                metadata_service_pb2.GenerateMetadataRequest(
                    transcript=ctx.transcript,
                    media_info=ctx.media_info,
                    spec=ctx.job.spec.metadata,
                    output_prefix=ctx.output_prefix,
                    filename=ctx.video.filename,
                ),
                timeout=ctx.timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None
        return StageResult(
            outputs={"artifacts": [a.name for a in response.artifacts], "cached": response.cached},
            artifacts=list(response.artifacts),
            job_fields={"metadata": to_json(response.metadata)},
        )


def plan_stages(
    stages: Sequence[Stage], spec: pipeline_pb2.PipelineSpec, *, from_url: bool
) -> list[StagePlan]:
    """The stages of a new job, with their dependencies and initial states: a job from a URL
    starts with the import, which its probe waits for; a stage switched off by the spec (or
    whose dependency is) starts SKIPPED."""
    plans: list[StagePlan] = []
    states: dict[str, str] = {}
    for stage in stages:
        if stage.name == ImportStage.name and not from_url:
            continue
        depends_on = ("import",) if from_url and stage.name == ProbeStage.name else stage.depends_on
        skipped = not stage.enabled(spec) or any(states[d] == "SKIPPED" for d in depends_on)
        states[stage.name] = "SKIPPED" if skipped else "PENDING"
        plans.append(StagePlan(stage.name, depends_on, states[stage.name]))
    return plans


def finished(row: StageRow) -> bool:
    return row.state in ("SUCCEEDED", "SKIPPED")
