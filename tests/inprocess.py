"""A service's real grpc.aio server, in the test process, on 127.0.0.1 port 0."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc

from runtime.internal_auth import InternalAuth
from runtime.server import ServiceSpec, build_server, listen
from runtime.settings import ServiceSettings


@contextlib.asynccontextmanager
async def serve_at(
    spec: ServiceSpec, settings: ServiceSettings, auth: InternalAuth | None = None
) -> AsyncIterator[str]:
    """Serves ``spec`` (with the production interceptors, and ``auth`` as ``run_service``
    installs it) and yields its address.

    Health, reflection and background tasks are left out: they belong to ``run_service``.
    """
    server = build_server(settings, auth.server_interceptors() if auth else ())
    spec.register(server)
    port = listen(server, "127.0.0.1:0", auth.server_credentials() if auth else None)
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)
        if spec.on_close is not None:
            await spec.on_close()


@contextlib.asynccontextmanager
async def serve(spec: ServiceSpec, settings: ServiceSettings) -> AsyncIterator[grpc.aio.Channel]:
    """Serves ``spec`` without internal authentication and yields a plain channel to it."""
    async with serve_at(spec, settings) as address:
        channel = grpc.aio.insecure_channel(address)
        try:
            yield channel
        finally:
            await channel.close()
