"""Graceful shutdown with a job in flight: the gateway hands the job back and another replica
finishes it; a watcher sees every event exactly once."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from reelmill.client import ReelmillClient
from reelmill.v1 import job_pb2, job_service_pb2
from runtime.errors import error_info
from tests.media import make_clip
from tests.servers import PostgresServer
from tests.suite import PROBE_ONLY, Suite, run_suite, token

pytestmark = pytest.mark.e2e


async def read_until_closed(call: grpc.aio.UnaryStreamCall, seen: list[int]) -> None:  # type: ignore[type-arg]
    while True:
        response = await call.read()
        assert response is not grpc.aio.EOF, "the stream ended without a status"
        seen.append(response.event.sequence)


@pytest.fixture
def suite(postgres: PostgresServer, database_url: str, tmp_path: Path) -> Iterator[Suite]:
    env = {
        "REELMILL_DATABASE_URL": database_url,
        "REELMILL_STORAGE_DIR": str(tmp_path / "objects"),
        "REELMILL_GRACE_SECONDS": "4",
    }
    with run_suite(env, gateways=1) as running:
        yield running


async def test_sigterm_hands_a_running_job_to_another_gateway(suite: Suite, tmp_path: Path) -> None:
    owner = token()
    first = suite.processes["gateway"][0]
    ingest = suite.processes["ingest"][0].proc
    async with ReelmillClient(first.address, token=owner) as client:
        video = await client.upload_file(make_clip(tmp_path / "a.mp4", seconds=1))
        ingest.send_signal(signal.SIGSTOP)  # the probe call hangs: the job stays in flight
        try:
            job = await client.create_job(video.id, spec=PROBE_ONLY)
            for _ in range(100):
                stage = (await client.get_job(job.id)).stages[0]
                if stage.state == job_pb2.STAGE_STATE_RUNNING:
                    break
                await asyncio.sleep(0.1)
            assert stage.state == job_pb2.STAGE_STATE_RUNNING
            second = suite.add("gateway", "gateway")
            watcher = client.stub.WatchJob(
                job_service_pb2.WatchJobRequest(job_id=job.id), metadata=client._metadata
            )
            seen = [(await watcher.read()).event.sequence]
            began = time.monotonic()
            first.proc.send_signal(signal.SIGTERM)
            # A watcher on the draining gateway is told to go elsewhere, not left hanging.
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await read_until_closed(watcher, seen)
            assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
            assert error_info(ended.value).reason == "SHUTTING_DOWN"
            code = await asyncio.to_thread(first.proc.wait, 30)
            assert code == 0, first.output()[-3000:]
            assert time.monotonic() - began < 4 + 5  # within the grace period (plus start-up slack)
        finally:
            ingest.send_signal(signal.SIGCONT)
    async with ReelmillClient(second.address, token=owner) as client:
        events = [e async for e in client.watch_job(job.id, after_sequence=seen[-1])]
        resumed = seen + [e.sequence for e in events]
        assert resumed == list(range(1, len(resumed) + 1))  # nothing lost, nothing twice
        events = [e async for e in client.watch_job(job.id)]
        done = await client.get_job(job.id)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done
    assert done.stages[0].attempts == 2
    assert f'"job_id": "{job.id}"' in second.output()
    assert '"reason": "drain"' in first.output()
