"""The transcode: renditions (MP4 ladder, HLS, WebM) and storyboard. The poster and thumbnails
are the stills stage's (``stills.py``): they wait for the shots, the ladder does not; the clips
(``TranscodeSpec.clips`` too) are the clips stage's (``clips.py``), cut from the source."""

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
        return {"source": ctx.video.sha256, "spec": spec_inputs(self._spec(ctx))}

    def skip_reason(self, ctx: StageContext) -> str | None:
        return None if has_video(ctx.media_info) else "the source has no video stream"

    @staticmethod
    def _spec(ctx: StageContext) -> pipeline_pb2.TranscodeSpec:
        """The job's transcode spec without the stills and the clips, which the stills and
        clips stages take."""
        spec = pipeline_pb2.TranscodeSpec()
        spec.CopyFrom(ctx.job.spec.transcode)
        spec.thumbnails.enabled = False
        del spec.clips[:]
        return spec

    async def run(self, ctx: StageContext) -> StageResult:
        call = self.stub.Transcode(
            transcode_service_pb2.TranscodeRequest(
                source=ctx.source,
                media_info=ctx.media_info,
                spec=self._spec(ctx),
                output_prefix=ctx.output_prefix,
            ),
            timeout=ctx.timeout,
        )
        result = await follow_stream(call, ctx)
        return StageResult(
            outputs={"artifacts": artifact_names(result.artifacts)},
            artifacts=list(result.artifacts),
        )
