"""runtime.streams.relay ties a server stream's work to the call: when the client cancels
while the handler waits to send (the client stopped reading), the work stops at once, even
though grpc leaves the handler's generator suspended and something still refers to it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from runtime.streams import relay

METHOD = "/reelmill.v1.RelayProbe/Stream"
CHUNK = b"x" * (1024 * 1024)


class Work:
    def __init__(self) -> None:
        self.sent = 0
        self.stopped = asyncio.Event()
        #: What grpc and the garbage collector must not be relied on to close.
        self.kept: list[Any] = []

    async def updates(self) -> AsyncIterator[bytes]:
        try:
            while True:
                self.sent += 1
                yield CHUNK
        finally:
            self.stopped.set()


async def serve(handler: Any) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "reelmill.v1.RelayProbe", {"Stream": grpc.unary_stream_rpc_method_handler(handler)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def test_cancel_while_the_handler_waits_to_send_stops_the_work() -> None:
    work = Work()

    async def handler(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        relayed = relay(work.updates(), context, stage="probe")
        work.kept.append(relayed)
        async for update in relayed:
            yield update

    server, port = await serve(handler)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_stream(METHOD)(b"go", timeout=30)
            assert await call.read() == CHUNK
            # The client stops reading; the server fills the window and waits to send.
            for _ in range(200):
                sent = work.sent
                await asyncio.sleep(0.05)
                if work.sent == sent:
                    break
            assert not work.stopped.is_set()
            call.cancel()
            await asyncio.wait_for(work.stopped.wait(), 10)
    finally:
        await server.stop(0)


async def test_the_works_failure_reaches_the_caller_after_what_it_yielded() -> None:
    async def failing() -> AsyncIterator[bytes]:
        yield b"one"
        yield b"two"
        raise ValueError("corrupt input")

    async def handler(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            async for update in relay(failing(), context):
                yield update
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    server, port = await serve(handler)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_stream(METHOD)(b"go", timeout=30)
            received: list[bytes] = []

            async def read_all() -> None:
                async for message in call:
                    received.append(message)

            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await read_all()
            assert received == [b"one", b"two"]
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert caught.value.details() == "corrupt input"
    finally:
        await server.stop(0)


async def test_a_finished_relay_leaves_no_task() -> None:
    async def three() -> AsyncIterator[int]:
        for n in range(3):
            yield n

    class Context:
        def add_done_callback(self, callback: Any) -> None:
            self.callback = callback

    before = asyncio.all_tasks()
    got = [n async for n in relay(three(), Context())]  # type: ignore[arg-type]
    assert got == [0, 1, 2]
    assert asyncio.all_tasks() == before
