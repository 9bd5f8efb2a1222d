"""The scenes: shots, cuts, dissolves and fades, with a keyframe per shot (VisionService)."""

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
    has_video,
)
from reelmill.v1 import pipeline_pb2, vision_service_pb2, vision_service_pb2_grpc


class ScenesStage(Stage):
    name = "scenes"
    depends_on = ("probe",)
    service = "vision"
    stub_class = vision_service_pb2_grpc.VisionServiceStub
    #: The job column the stage sets.
    job_fields = ("scenes",)

    def enabled(self, spec: pipeline_pb2.PipelineSpec) -> bool:
        return not spec.scenes.disabled

    def fingerprint_inputs(self, ctx: StageContext) -> Mapping[str, Any] | None:
        return {"source": ctx.video.sha256, "spec": to_json(ctx.job.spec.scenes)}

    def skip_reason(self, ctx: StageContext) -> str | None:
        return None if has_video(ctx.media_info) else "the source has no video stream"

    async def run(self, ctx: StageContext) -> StageResult:
        call = self.stub.DetectShots(
            vision_service_pb2.DetectShotsRequest(
                source=ctx.source,
                media_info=ctx.media_info,
                spec=ctx.job.spec.scenes,
                output_prefix=ctx.output_prefix,
            ),
            timeout=ctx.timeout,
        )
        result = await follow_stream(call, ctx)
        scenes = result.scenes
        return StageResult(
            outputs={
                "artifacts": artifact_names(result.artifacts),
                "shots": len(scenes.shots),
                "transitions": len(scenes.transitions),
            },
            artifacts=list(result.artifacts),
            job_fields={"scenes": to_json(scenes)},
        )
