"""The on-screen text: OCR of the shots' keyframes and of frames inside long shots, lines
deduplicated into timed entries (VisionService). Follows the scenes stage, whose shots it
reads."""

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


class OcrStage(Stage):
    name = "ocr"
    depends_on = ("scenes",)
    service = "vision"
    stub_class = vision_service_pb2_grpc.VisionServiceStub
    #: The job column the stage sets.
    job_fields = ("on_screen_text",)

    def enabled(self, spec: pipeline_pb2.PipelineSpec) -> bool:
        return not spec.ocr.disabled

    def fingerprint_inputs(self, ctx: StageContext) -> Mapping[str, Any] | None:
        return {"source": ctx.video.sha256, "spec": to_json(ctx.job.spec.ocr)}

    def skip_reason(self, ctx: StageContext) -> str | None:
        if not has_video(ctx.media_info):
            return "the source has no video stream"
        return None if "scenes" in ctx.fields else "there are no shots"

    async def run(self, ctx: StageContext) -> StageResult:
        call = self.stub.ReadText(
            vision_service_pb2.ReadTextRequest(
                source=ctx.source,
                media_info=ctx.media_info,
                scenes=ctx.scenes,
                spec=ctx.job.spec.ocr,
                output_prefix=ctx.output_prefix,
            ),
            timeout=ctx.timeout,
        )
        result = await follow_stream(call, ctx)
        return StageResult(
            outputs={
                "artifacts": artifact_names(result.artifacts),
                "entries": len(result.text.entries),
                "frames_examined": result.text.frames_examined,
            },
            artifacts=list(result.artifacts),
            job_fields={"on_screen_text": to_json(result.text)},
        )
