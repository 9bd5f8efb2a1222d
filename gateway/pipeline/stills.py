"""The stills: the poster and thumbnails, from the keyframes of the shots the scenes stage
found (by time when it did not run), through TranscodeService.ExtractStills. A few seeks, so
the ladder encodes beside it instead of waiting for the shots."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.pipeline.base import (
    Stage,
    StageContext,
    StageResult,
    artifact_names,
    digest,
    follow_stream,
    has_video,
    spec_inputs,
)
from reelmill.v1 import pipeline_pb2, transcode_service_pb2, transcode_service_pb2_grpc


def wanted(spec: pipeline_pb2.PipelineSpec) -> bool:
    thumbs = spec.transcode.thumbnails
    return not spec.transcode.disabled and (not thumbs.HasField("enabled") or thumbs.enabled)


class StillsStage(Stage):
    name = "stills"
    depends_on = ("probe",)
    waits_for = ("scenes",)
    service = "transcode"
    stub_class = transcode_service_pb2_grpc.TranscodeServiceStub

    def enabled(self, spec: pipeline_pb2.PipelineSpec) -> bool:
        return wanted(spec)

    def fingerprint_inputs(self, ctx: StageContext) -> Mapping[str, Any] | None:
        return {
            "source": ctx.video.sha256,
            "spec": spec_inputs(ctx.job.spec.transcode.thumbnails),
            "scenes": digest(ctx.fields.get("scenes")),
        }

    def skip_reason(self, ctx: StageContext) -> str | None:
        return None if has_video(ctx.media_info) else "the source has no video stream"

    async def run(self, ctx: StageContext) -> StageResult:
        call = self.stub.ExtractStills(
            transcode_service_pb2.ExtractStillsRequest(
                source=ctx.source,
                media_info=ctx.media_info,
                spec=ctx.job.spec.transcode.thumbnails,
                scenes=ctx.scenes,
                output_prefix=ctx.output_prefix,
            ),
            timeout=ctx.timeout,
        )
        result = await follow_stream(call, ctx)
        return StageResult(
            outputs={"artifacts": artifact_names(result.artifacts)},
            artifacts=list(result.artifacts),
        )
