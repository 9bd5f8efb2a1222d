"""The metadata: title, description, tags, chapters and summary from the transcript."""

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
    depends_on = ("transcribe",)
    service = "metadata"
    stub_class = metadata_service_pb2_grpc.MetadataServiceStub

    job_fields = ("metadata",)

    def enabled(self, spec: pipeline_pb2.PipelineSpec) -> bool:
        return not spec.metadata.disabled

    def fingerprint_inputs(self, ctx: StageContext) -> Mapping[str, Any] | None:
        # Everything the request below carries, as digests of what the upstream stages made.
        return {
            "transcript": digest(ctx.fields.get("transcript")),
            "media_info": digest(ctx.fields.get("media_info")),
            "filename": ctx.video.filename,
            "spec": spec_inputs(ctx.job.spec.metadata),
        }

    def skip_reason(self, ctx: StageContext) -> str | None:
        return None if "transcript" in ctx.fields else "there is no transcript"

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
                ),
                timeout=ctx.timeout,
            )
        )
        return StageResult(
            outputs={"artifacts": artifact_names(response.artifacts), "cached": response.cached},
            artifacts=list(response.artifacts),
            job_fields={"metadata": to_json(response.metadata)},
        )
