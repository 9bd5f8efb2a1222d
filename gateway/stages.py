"""The pipeline's stages. Each calls one internal service through its stub, passing object
references (never bytes), and reports what it produced. The DAG is declared here, once."""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc

from gateway.convert import from_json, to_json
from gateway.runs import ClaimedJob, StageRow
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
    def source(self) -> media_pb2.ObjectRef:
        if self.job.video is None:
            raise FailedPrecondition("the job's video no longer exists", reason="VIDEO_DELETED")
        return self.job.video.object


@dataclass(frozen=True)
class StageResult:
    outputs: dict[str, Any] = field(default_factory=dict)
    artifacts: list[media_pb2.Artifact] = field(default_factory=list)
    #: Columns of the job to set with the stage's success (media_info, transcript, metadata).
    job_fields: dict[str, Any] = field(default_factory=dict)


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
                    filename=ctx.job.video.filename if ctx.job.video is not None else "",
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


def stage_states(stages: tuple[Stage, ...], spec: pipeline_pb2.PipelineSpec) -> dict[str, str]:
    """Initial state of each stage: PENDING, or SKIPPED when the spec (or a skipped
    dependency) switches it off."""
    states: dict[str, str] = {}
    for stage in stages:
        skipped = not stage.enabled(spec) or any(states[d] == "SKIPPED" for d in stage.depends_on)
        states[stage.name] = "SKIPPED" if skipped else "PENDING"
    return states


def finished(row: StageRow) -> bool:
    return row.state in ("SUCCEEDED", "SKIPPED")
