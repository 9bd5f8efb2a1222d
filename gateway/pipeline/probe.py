"""The probe: reads the stored source's streams and records its media info on the job."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.convert import to_json
from gateway.pipeline.base import Stage, StageContext, StageResult, call_unary
from reelmill.v1 import ingest_service_pb2, ingest_service_pb2_grpc


class ProbeStage(Stage):
    name = "probe"
    depends_on = ("import",)
    service = "ingest"
    stub_class = ingest_service_pb2_grpc.IngestServiceStub
    job_fields = ("media_info",)
    #: The source's sha256 is all the probe reads, however the source came (upload, import).
    reuse_depends_on = ()

    def fingerprint_inputs(self, ctx: StageContext) -> Mapping[str, Any] | None:
        return {"source": ctx.video.sha256}

    async def run(self, ctx: StageContext) -> StageResult:
        await ctx.report(0.0, "probing")
        response = await call_unary(
            self.stub.ProbeVideo(
                ingest_service_pb2.ProbeVideoRequest(object=ctx.source), timeout=ctx.timeout
            )
        )
        return StageResult(job_fields={"media_info": to_json(response.media_info)})
