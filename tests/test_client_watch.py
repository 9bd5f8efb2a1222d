"""The client's watch_job against a real grpc.aio server that drops the stream: it reconnects
after a jittered wait (longer when the server says when to retry), resumes after the last
sequence it saw, and gives up on codes a reconnect cannot help."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from reelmill.client import ReelmillClient
from reelmill.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc
from runtime.errors import Unavailable, to_status


def event(sequence: int) -> job_service_pb2.WatchJobResponse:
    return job_service_pb2.WatchJobResponse(event=job_pb2.JobEvent(job_id="j", sequence=sequence))


class Flaky(job_service_pb2_grpc.JobServiceServicer):
    """Sends events 1-2 then drops the stream; refuses the next call with a retry delay; then
    sends 2-3 (2 again, as a replica that read the journal late might) and ends."""

    def __init__(self, *, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
        self.code = code
        #: (after_sequence, monotonic time) of each call.
        self.calls: list[tuple[int, float]] = []
        #: Monotonic times the calls failed.
        self.failed: list[float] = []

    async def WatchJob(
        self, request: job_service_pb2.WatchJobRequest, context: Any
    ) -> AsyncIterator[job_service_pb2.WatchJobResponse]:
        self.calls.append((request.after_sequence, time.monotonic()))
        if len(self.calls) == 1:
            yield event(1)
            yield event(2)
            self.failed.append(time.monotonic())
            await context.abort(self.code, "the server is restarting")
        elif len(self.calls) == 2:
            status = to_status(Unavailable("busy", retry_after=1.5))
            self.failed.append(time.monotonic())
            await context.abort(status.code, status.details, status.trailing_metadata)
        else:
            yield event(2)
            yield event(3)


async def watch(servicer: Flaky, **kwargs: Any) -> list[int]:
    server = grpc.aio.server()
    job_service_pb2_grpc.add_JobServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with ReelmillClient(f"127.0.0.1:{port}", token="t") as client:
            return [e.sequence async for e in client.watch_job("j", **kwargs)]
    finally:
        await server.stop(0)


async def test_watch_reconnects_after_a_wait_and_resumes_after_the_last_event() -> None:
    servicer = Flaky()
    assert await watch(servicer) == [1, 2, 3]
    assert [after for after, _ in servicer.calls] == [0, 2, 2]
    waits = [
        start - failed
        for (_, start), failed in zip(servicer.calls[1:], servicer.failed, strict=True)
    ]
    # Never a zero wait (at least half the first ceiling, 0.4 s); the server's RetryInfo
    # (1.5 s) raises the second above its own ceiling (0.8 s).
    assert waits[0] >= 0.2
    assert waits[1] >= 1.5


async def test_watch_gives_up_on_other_codes_and_after_max_reconnects() -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await watch(Flaky(code=grpc.StatusCode.NOT_FOUND))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    servicer = Flaky()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await watch(servicer, max_reconnects=1)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(servicer.calls) == 2
