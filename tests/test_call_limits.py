"""A saturated process refuses with RESOURCE_EXHAUSTED (and keeps answering health) instead
of piling up work: the per-process call limit of ``runtime.server.build_server``."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from runtime.errors import error_info
from runtime.server import build_server
from runtime.settings import ServiceSettings

SLOW = "/reelmill.v1.LimitProbe/Slow"


async def test_calls_beyond_capacity_and_queue_are_refused_while_health_answers() -> None:
    release = asyncio.Event()
    two_running = asyncio.Event()
    started = 0

    async def slow(request: bytes, context: Any) -> bytes:
        nonlocal started
        started += 1
        if started == 2:
            two_running.set()
        await release.wait()
        return request

    settings = ServiceSettings(max_concurrent_calls=2, max_queued_calls=1)
    server = build_server(settings)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "reelmill.v1.LimitProbe", {"Slow": grpc.unary_unary_rpc_method_handler(slow)}
            ),
        )
    )
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    await checker.set("", health_pb2.HealthCheckResponse.SERVING)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary(SLOW)
            running = [asyncio.ensure_future(call(b"x", timeout=30)) for _ in range(2)]
            await asyncio.wait_for(two_running.wait(), 10)
            # Two run; of two more, one queues and the other is refused at once.
            more = [asyncio.ensure_future(call(b"x", timeout=30)) for _ in range(2)]
            done, _ = await asyncio.wait(more, return_when=asyncio.FIRST_COMPLETED)
            refused = done.pop().exception()
            assert isinstance(refused, grpc.aio.AioRpcError)
            assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            info = error_info(refused)
            assert info is not None and info.reason == "SERVICE_BUSY"
            assert started == 2
            status = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=5
            )
            assert status.status == health_pb2.HealthCheckResponse.SERVING
            release.set()
            outcomes = await asyncio.gather(*running, *more, return_exceptions=True)
            assert outcomes.count(b"x") == 3  # the queued call ran once a slot freed
            assert started == 3
            # Capacity is back: a new call runs.
            assert await call(b"z", timeout=30) == b"z"
    finally:
        await server.stop(0)


async def test_health_watch_streams_through_the_shared_interceptors() -> None:
    """Health's Watch writes with ``context.write`` rather than yielding: the shared
    interceptors (error mapping, call metrics, limits) must pass such a stream through."""
    server = build_server(ServiceSettings())
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    await checker.set("", health_pb2.HealthCheckResponse.SERVING)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=""), timeout=10
            )
            first = await watch.read()
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            await checker.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
            second = await watch.read()
            assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
            watch.cancel()
    finally:
        await server.stop(0)
