"""The gateway served in this process, to look inside it: a client that cancels WatchJob
leaves no watcher, feed or task behind."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest_asyncio

from gateway.server import Gateway, assemble
from gateway.settings import GatewaySettings
from reelmill.client import ReelmillClient
from reelmill.v1 import job_service_pb2, media_pb2, pipeline_pb2
from runtime.server import build_server
from tests.suite import INTERNAL_TOKEN, JWT_SECRET, token


@pytest_asyncio.fixture
async def gateway(database_url: str, tmp_path: Path) -> AsyncIterator[tuple[Gateway, str]]:
    settings = GatewaySettings(
        database_url=database_url,
        jwt_secret=JWT_SECRET,
        internal_token=INTERNAL_TOKEN,
        storage_dir=tmp_path / "objects",
        ingest_target="127.0.0.1:9",  # nothing listens: no job here needs a service
        max_concurrent_jobs=1,
    )
    parts = await assemble(settings)
    server = build_server(settings, parts.spec.interceptors)
    parts.spec.register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    listener = asyncio.create_task(parts.hub.run())
    await asyncio.wait_for(parts.hub.connected.wait(), 10)
    try:
        yield parts, f"127.0.0.1:{port}"
    finally:
        await server.stop(0)
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        if parts.spec.on_close is not None:
            await parts.spec.on_close()


async def test_client_cancelling_watch_leaves_no_task_behind(
    gateway: tuple[Gateway, str],
) -> None:
    parts, address = gateway
    owner = f"owner-{uuid.uuid4().hex[:6]}"
    video_id = str(uuid.uuid4())
    await parts.store.add_video(
        owner,
        media_pb2.Video(
            id=video_id,
            filename="a.mp4",
            content_type="video/mp4",
            size_bytes=1,
            sha256="0" * 64,
            object=media_pb2.ObjectRef(key="k"),
        ),
    )
    job, _ = await parts.store.create_job(
        owner,
        video_id=video_id,
        source_url=None,
        spec=pipeline_pb2.PipelineSpec(),
        request_id="",
        labels={},
        stages=[],
    )
    tasks_before = {t.get_name() for t in asyncio.all_tasks()}
    async with ReelmillClient(address, token=token(owner)) as client:
        calls = [
            client.stub.WatchJob(
                job_service_pb2.WatchJobRequest(job_id=job.id), metadata=client._metadata
            )
            for _ in range(20)
        ]
        for call in calls:
            first = await call.read()
            assert first.event.sequence == 1  # the QUEUED event, then the stream waits
        assert sum(feed.watchers for feed in parts.hub.feeds.values()) == 20
        for call in calls:
            call.cancel()
        for _ in range(50):
            if not parts.hub.feeds:
                break
            await asyncio.sleep(0.05)
    assert parts.hub.feeds == {}
    await asyncio.sleep(0.1)
    leftover = {t.get_name() for t in asyncio.all_tasks()} - tasks_before
    assert not any("WatchJob" in name or name.startswith("feed-") for name in leftover), leftover
    assert [await c.code() for c in calls] == [grpc.StatusCode.CANCELLED] * len(calls)


async def test_client_lists_videos_page_by_page(gateway: tuple[Gateway, str]) -> None:
    parts, address = gateway
    owner = f"owner-{uuid.uuid4().hex[:6]}"
    ids = []
    for n in range(3):
        video_id = str(uuid.uuid4())
        ids.append(video_id)
        await parts.store.add_video(
            owner,
            media_pb2.Video(
                id=video_id,
                filename=f"{n}.mp4",
                content_type="video/mp4",
                size_bytes=1,
                sha256="0" * 64,
                object=media_pb2.ObjectRef(key=f"k{n}"),
            ),
        )
    async with ReelmillClient(address, token=token(owner)) as client:
        first, next_token = await client.list_videos(page_size=2)
        rest, last_token = await client.list_videos(page_size=2, page_token=next_token)
    assert next_token and not last_token
    assert [v.id for v in first + rest] == ids[::-1]  # newest first
