"""The metadata: title, description, tags, chapters (topic segments) and summary from the
transcript and the text shown on screen (either may be missing: a silent video still has its
on-screen text); the shots, when the scenes stage ran, are a hint for the topic boundaries."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.convert import to_json
from gateway.pipeline.base import (
    Stage,
    StageContext,
    StageResult,
    artifact_names,
    call_unary,
    digest,
    spec_inputs,
)
from reelmill.v1 import metadata_service_pb2, metadata_service_pb2_grpc, pipeline_pb2


class MetadataStage(Stage):
    name = "metadata"
    #: Runs after both when they run, and on whichever of them produced something.
    waits_for = ("transcribe", "scenes", "ocr")
    service = "metadata"
    stub_class = metadata_service_pb2_grpc.MetadataServiceStub

    job_fields = ("metadata",)

    def enabled(self, spec: pipeline_pb2.PipelineSpec) -> bool:
        return not spec.metadata.disabled

    def fingerprint_inputs(self, ctx: StageContext) -> Mapping[str, Any] | None:
        # Everything the request below carries, as digests of what the upstream stages made.
        return {
            "transcript": digest(ctx.fields.get("transcript")),
            "on_screen_text": digest(ctx.fields.get("on_screen_text")),
            "scenes": digest(ctx.fields.get("scenes")),
            "media_info": digest(ctx.fields.get("media_info")),
            "filename": ctx.video.filename,
            "spec": spec_inputs(ctx.job.spec.metadata),
        }

    def skip_reason(self, ctx: StageContext) -> str | None:
        if "transcript" in ctx.fields or ctx.on_screen_text.entries:
            return None
        return "there is no transcript and no on-screen text"

    async def run(self, ctx: StageContext) -> StageResult:
        await ctx.report(0.0, "generating")
        response = await call_unary(
            self.stub.GenerateMetadata(
                metadata_service_pb2.GenerateMetadataRequest(
                    transcript=ctx.transcript,
                    media_info=ctx.media_info,
                    spec=ctx.job.spec.metadata,
                    output_prefix=ctx.output_prefix,
                    filename=ctx.video.filename,
                    on_screen_text=ctx.on_screen_text,
                    scenes=ctx.scenes,
                ),
                timeout=ctx.timeout,
            )
        )
        return StageResult(
            outputs={"artifacts": artifact_names(response.artifacts), "cached": response.cached},
            artifacts=list(response.artifacts),
            job_fields={"metadata": to_json(response.metadata)},
        )
