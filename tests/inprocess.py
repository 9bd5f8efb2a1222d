"""A service's real grpc.aio server, in the test process, on 127.0.0.1 port 0."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc

from runtime.server import ServiceSpec, build_server
from runtime.settings import ServiceSettings


@contextlib.asynccontextmanager
async def serve(spec: ServiceSpec, settings: ServiceSettings) -> AsyncIterator[grpc.aio.Channel]:
    """Serves ``spec`` (with the production interceptors) and yields a channel to it.

    Health, reflection and background tasks are left out: they belong to ``run_service``.
    """
    server = build_server(settings)
    spec.register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel
    finally:
        await channel.close()
        await server.stop(0)
        if spec.on_close is not None:
            await spec.on_close()
