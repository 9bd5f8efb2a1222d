"""The transcription: speech to timed text from the audio stage's WAV."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.convert import to_json
from gateway.pipeline.base import (
    Stage,
    StageContext,
    StageResult,
    artifact_names,
    follow_stream,
    spec_inputs,
)
from reelmill.v1 import (
    media_pb2,
    pipeline_pb2,
    transcribe_service_pb2,
    transcribe_service_pb2_grpc,
)


class TranscribeStage(Stage):
    name = "transcribe"
    depends_on = ("audio",)
    service = "transcribe"
    stub_class = transcribe_service_pb2_grpc.TranscribeServiceStub

    job_fields = ("transcript",)

    def enabled(self, spec: pipeline_pb2.PipelineSpec) -> bool:
        return not spec.transcribe.disabled

    def fingerprint_inputs(self, ctx: StageContext) -> Mapping[str, Any] | None:
        return {
            "audio": ctx.outputs["audio"]["wav"]["sha256"],
            "duration": to_json(ctx.media_info.duration),
            "spec": spec_inputs(ctx.job.spec.transcribe),
        }

    def skip_reason(self, ctx: StageContext) -> str | None:
        return None if "wav" in ctx.outputs.get("audio", {}) else "there is no audio track"

    async def run(self, ctx: StageContext) -> StageResult:
        wav = ctx.outputs["audio"]["wav"]
        call = self.stub.Transcribe(
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
                "artifacts": artifact_names(result.artifacts),
                "segments": len(transcript.segments),
                "language": transcript.language,
                "cached": result.cached,
            },
            artifacts=list(result.artifacts),
            job_fields={"transcript": to_json(transcript)},
        )
