"""The audio track: 16 kHz mono WAV for transcription, and an AAC M4A."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.pipeline.base import (
    Stage,
    StageContext,
    StageResult,
    artifact_names,
    follow_stream,
    has_audio,
    spec_inputs,
)
from reelmill.v1 import media_pb2, pipeline_pb2, transcode_service_pb2, transcode_service_pb2_grpc


class AudioStage(Stage):
    name = "audio"
    depends_on = ("probe",)
    service = "transcode"
    stub_class = transcode_service_pb2_grpc.TranscodeServiceStub

    def enabled(self, spec: pipeline_pb2.PipelineSpec) -> bool:
        return not spec.audio.disabled

    def fingerprint_inputs(self, ctx: StageContext) -> Mapping[str, Any] | None:
        return {"source": ctx.video.sha256, "spec": spec_inputs(ctx.job.spec.audio)}

    def skip_reason(self, ctx: StageContext) -> str | None:
        return None if has_audio(ctx.media_info) else "the source has no audio stream"

    async def run(self, ctx: StageContext) -> StageResult:
        call = self.stub.ExtractAudio(
            transcode_service_pb2.ExtractAudioRequest(
                source=ctx.source,
                media_info=ctx.media_info,
                spec=ctx.job.spec.audio,
                output_prefix=ctx.output_prefix,
            ),
            timeout=ctx.timeout,
        )
        result = await follow_stream(call, ctx)
        outputs: dict[str, Any] = {"artifacts": artifact_names(result.artifacts)}
        for artifact in result.artifacts:
            if artifact.kind == media_pb2.ARTIFACT_KIND_AUDIO_WAV:
                outputs["wav"] = {
                    "bucket": artifact.object.bucket,
                    "key": artifact.object.key,
                    "sha256": artifact.sha256,
                }
        return StageResult(outputs=outputs, artifacts=list(result.artifacts))
