"""The import: downloads a job's URL into the store (through ingest's guarded fetcher) and
records the video. Only jobs created from a URL have it; their probe waits for it."""

from __future__ import annotations

import urllib.parse
from typing import Self

import grpc

from gateway.convert import to_json
from gateway.keys import imported_video_id, source_key
from gateway.pipeline.base import Stage, StageContext, StageResult, Wiring, follow_stream
from reelmill.v1 import ingest_service_pb2, ingest_service_pb2_grpc, media_pb2


def filename_from_url(url: str) -> str:
    path = urllib.parse.urlsplit(url).path
    name = urllib.parse.unquote(path.rsplit("/", 1)[-1])
    return name or urllib.parse.urlsplit(url).hostname or "import"


class ImportStage(Stage):
    name = "import"
    service = "ingest"
    stub_class = ingest_service_pb2_grpc.IngestServiceStub

    def __init__(self, channel: grpc.aio.Channel, bucket: str) -> None:
        super().__init__(channel)
        self.bucket = bucket

    @classmethod
    def build(cls, wiring: Wiring) -> Self:
        return cls(wiring.channels[cls.service], wiring.bucket)

    def planned(self, *, from_url: bool) -> bool:
        return from_url

    async def run(self, ctx: StageContext) -> StageResult:
        url = ctx.job.source_url or ""
        video_id = imported_video_id(ctx.job.id)
        call = self.stub.ImportUrl(
            ingest_service_pb2.ImportUrlRequest(
                url=url,
                destination=media_pb2.ObjectRef(bucket=self.bucket, key=source_key(video_id)),
            ),
            timeout=ctx.timeout,
        )
        result = await follow_stream(call, ctx)
        video = media_pb2.Video(
            id=str(video_id),
            filename=filename_from_url(url)[:255],
            content_type=result.content_type,
            size_bytes=result.size_bytes,
            sha256=result.sha256,
            object=result.object,
            media_info=result.media_info,
            source_url=url,
        )
        return StageResult(
            outputs={"video": to_json(video)}, job_fields={"video_id": video_id}, video=video
        )
