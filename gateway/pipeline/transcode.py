"""The transcode: renditions (MP4 ladder, HLS, WebM), thumbnails, storyboard and clips."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.pipeline.base import (
    Stage,
    StageContext,
    StageResult,
    artifact_names,
    follow_stream,
    has_video,
    spec_inputs,
)
from reelmill.v1 import pipeline_pb2, transcode_service_pb2, transcode_service_pb2_grpc


class TranscodeStage(Stage):
    name = "transcode"
    depends_on = ("probe",)
    service = "transcode"
    stub_class = transcode_service_pb2_grpc.TranscodeServiceStub

    def enabled(self, spec: pipeline_pb2.PipelineSpec) -> bool:
        return not spec.transcode.disabled

    def fingerprint_inputs(self, ctx: StageContext) -> Mapping[str, Any] | None:
        return {"source": ctx.video.sha256, "spec": spec_inputs(ctx.job.spec.transcode)}

    def skip_reason(self, ctx: StageContext) -> str | None:
        if not has_video(ctx.media_info) and not ctx.job.spec.transcode.clips:
            return "the source has no video stream"
        return None

    async def run(self, ctx: StageContext) -> StageResult:
        call = self.stub.Transcode(
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
            outputs={"artifacts": artifact_names(result.artifacts)},
            artifacts=list(result.artifacts),
        )
