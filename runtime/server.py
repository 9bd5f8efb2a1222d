"""Server bootstrap shared by every process.

``run_service`` builds a grpc.aio server with the error-mapping, tracing and (when metrics are
on, ``runtime.metrics``) call-metrics interceptors, grpc.health.v1 reflecting real dependency
health, and server reflection (v1 and v1alpha, ``runtime.reflection``); serves the process's
metrics; runs its background tasks in a TaskGroup; and on SIGTERM/SIGINT shuts down
gracefully: health goes
NOT_SERVING, the process stops taking new work (``on_drain``), in-flight calls get
``grace_seconds`` to finish, then the rest is cancelled.

Internal services (every spec not marked ``public``) accept calls only from the gateway, as
``runtime.internal_auth`` configures: a token interceptor, TLS with client certificates, or both.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from runtime import demux, heap
from runtime.errors import ErrorMappingInterceptor
from runtime.internal_auth import InternalAuth
from runtime.metrics import (
    RpcMetricsInterceptor,
    metrics_enabled,
    setup_metrics,
    shutdown_metrics,
)
from runtime.reflection import enable_server_reflection
from runtime.settings import ServiceSettings
from runtime.slots import CallLimitInterceptor, Slots
from runtime.telemetry import server_interceptors, setup_tracing, shutdown_tracing

log = logging.getLogger(__name__)

#: Health service name that is SERVING while the process runs (for liveness probes); the
#: empty name and the gRPC service names are SERVING only while every dependency is healthy.
LIVENESS = "reelmill.liveness"

HealthCheck = Callable[[], Awaitable[None]]
"""Raises when a dependency is unhealthy."""


@dataclass(frozen=True)
class ServiceSpec:
    """What a process contributes to the shared bootstrap."""

    name: str
    #: Fully-qualified gRPC service names, e.g. "reelmill.v1.IngestService".
    service_names: Sequence[str]
    #: Adds the process's servicers to the server.
    register: Callable[[grpc.aio.Server], None]
    #: Dependency checks; health is SERVING only while all pass.
    health_checks: Mapping[str, HealthCheck] = field(default_factory=dict)
    #: Long-running tasks (listeners, workers); if one ends, the process stops.
    background: Sequence[Callable[[], Awaitable[None]]] = ()
    #: Called first on shutdown: stop taking new work.
    on_drain: Callable[[], Awaitable[None]] | None = None
    #: Called last on shutdown: close pools and clients.
    on_close: Callable[[], Awaitable[None]] | None = None
    #: Interceptors after the shared ones (tracing, error mapping), e.g. authentication.
    interceptors: Sequence[grpc.aio.ServerInterceptor] = ()
    #: Whether anyone may connect (the gateway, which authenticates callers itself); the
    #: others accept only the gateway (``runtime.internal_auth``).
    public: bool = False
    #: Long-running tasks like ``background`` that are given the port the gRPC server
    #: listens on (the gateway's browser port, which forwards to it).
    companions: Sequence[Callable[[int], Awaitable[None]]] = ()


class ProcessStopped(Exception):
    """A background task ended; the process stops."""


def build_server(
    settings: ServiceSettings, interceptors: Sequence[grpc.aio.ServerInterceptor] = ()
) -> grpc.aio.Server:
    limit = settings.max_message_mib * 1024 * 1024
    limits: list[grpc.aio.ServerInterceptor] = []
    if settings.max_concurrent_calls:
        limits.append(
            CallLimitInterceptor(
                Slots(
                    settings.max_concurrent_calls,
                    settings.max_queued_calls,
                    busy_message="the service is at capacity; retry later",
                    reason="SERVICE_BUSY",
                )
            )
        )
    # Call metrics outside the error mapping: they see the status an error became.
    measured = [RpcMetricsInterceptor()] if metrics_enabled(settings) else []
    return grpc.aio.server(
        # Authentication before the call limit: a refused caller never takes a slot.
        interceptors=[
            *server_interceptors(),
            *measured,
            ErrorMappingInterceptor(),
            *interceptors,
            *limits,
        ],
        options=[
            ("grpc.max_send_message_length", limit),
            ("grpc.max_receive_message_length", limit),
            ("grpc.so_reuseport", 0),
            # Clients re-resolve (and so reach new replicas) when a connection ages out;
            # calls in flight are not cut (no max_connection_age_grace).
            ("grpc.max_connection_age_ms", int(settings.max_connection_age_seconds * 1000)),
        ],
    )


async def _watch_health(
    health: HealthServicer, spec: ServiceSpec, interval: float, draining: asyncio.Event
) -> None:
    previous: bool | None = None
    while not draining.is_set():
        failures: dict[str, str] = {}
        for name, check in spec.health_checks.items():
            try:
                await asyncio.wait_for(check(), timeout=max(interval, 1.0))
            except Exception as exc:  # a failing dependency, whatever its error
                failures[name] = f"{type(exc).__name__}: {exc}"[:300]
        healthy = not failures
        if draining.is_set():
            return
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if healthy
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *spec.service_names):
            await health.set(name, status)
        if healthy != previous:
            if healthy:
                log.info("healthy")
            else:
                log.warning("unhealthy", extra={"failures": failures})
            previous = healthy
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(draining.wait(), timeout=interval)


def listen(
    server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None
) -> int:
    """Adds ``address`` (TLS when ``credentials``) and returns the port; raises if it cannot."""
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    return port


async def run_service(
    spec: ServiceSpec, settings: ServiceSettings, *, auth: InternalAuth | None = None
) -> None:
    """Serves until SIGTERM/SIGINT (or a background task dies), then drains and returns.

    ``auth`` is the internal authentication of a non-public spec (read from ``settings`` when
    not given)."""
    if not spec.public and auth is None:
        auth = InternalAuth.from_settings(settings)
    internal = None if spec.public else auth
    setup_tracing(spec.name, settings.otlp_endpoint)
    setup_metrics(spec.name, settings)
    # Readers of presigned URLs wait for a restarting store as the store's own calls do.
    demux.configure(readable_wait_seconds=settings.s3_unreachable_retry_seconds)
    server = build_server(
        settings,
        [*(internal.server_interceptors() if internal else ()), *spec.interceptors],
    )
    spec.register(server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    enable_server_reflection(
        [*spec.service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name], server
    )
    port = listen(server, settings.listen, internal.server_credentials() if internal else None)
    host = settings.listen.rsplit(":", 1)[0]
    # Health only, in plain text: for kubelet's probes when the main port needs mTLS.
    health_server: grpc.aio.Server | None = None
    if settings.health_listen:
        health_server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(health, health_server)
        health_port = listen(health_server, settings.health_listen, None)
        await health_server.start()
        log.info(
            "health listening",
            extra={"address": f"{settings.health_listen.rsplit(':', 1)[0]}:{health_port}"},
        )
    # Everything is built and imported: out of the collector's way from here on.
    heap.record_pauses()
    if settings.gc_policy == "server":
        heap.settle()
    await server.start()
    # Liveness says only that the process runs: a dependency outage must not restart it.
    await health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "listening",
        extra={
            "address": f"{host}:{port}",
            "services": list(spec.service_names),
            "internal_auth": "public" if internal is None else internal.mode,
        },
    )

    stop = asyncio.Event()
    draining = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def background(fn: Callable[[], Awaitable[None]]) -> None:
        try:
            await fn()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background task failed", extra={"task": getattr(fn, "__name__", "?")})
            stop.set()
            raise
        if not draining.is_set():
            log.error("background task ended", extra={"task": getattr(fn, "__name__", "?")})
            stop.set()

    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(
                _watch_health(health, spec, settings.health_interval_seconds, draining),
                name="health",
            )
            tasks = [
                group.create_task(background(fn), name=getattr(fn, "__name__", "background"))
                for fn in spec.background
            ]
            tasks += [
                group.create_task(
                    background(functools.partial(fn, port)),
                    name=getattr(fn, "__name__", "companion"),
                )
                for fn in spec.companions
            ]
            await stop.wait()
            log.info("shutting down", extra={"grace_seconds": settings.grace_seconds})
            draining.set()
            began = loop.time()
            await health.enter_graceful_shutdown()
            if spec.on_drain is not None:
                await spec.on_drain()
            # The whole shutdown stays within the grace period, draining included.
            await server.stop(max(settings.grace_seconds - (loop.time() - began), 0.0))
            for task in tasks:
                task.cancel()
    except* Exception as group_error:
        for exc in group_error.exceptions:
            log.error("stopped after failure: %r", exc)
        await server.stop(0)
        raise ProcessStopped("a background task failed") from group_error
    finally:
        if health_server is not None:
            await health_server.stop(0)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if spec.on_close is not None:
            await spec.on_close()
        shutdown_tracing()
        shutdown_metrics()
        log.info("stopped")


SettingsT = TypeVar("SettingsT", bound=ServiceSettings)


def serve_main(
    name: str,
    settings_cls: type[SettingsT],
    build: Callable[[SettingsT], Awaitable[ServiceSpec]],
) -> int:
    """The whole ``__main__`` of a process: load settings (fail fast), set up logging, build
    the service and serve until a signal. Returns the exit code."""
    from runtime.errors import ReelmillError
    from runtime.logs import setup_logging
    from runtime.settings import load_settings

    try:
        settings = load_settings(settings_cls)
    except ReelmillError as exc:
        print(f"{name}: {exc.message}", file=sys.stderr)
        return 2
    setup_logging(name, settings.log_level, settings.log_format)
    try:
        # Every process needs it (the services to check callers, the gateway to call them):
        # refuse to start without it, before building anything.
        auth = InternalAuth.from_settings(settings)
    except ReelmillError as exc:
        log.error("cannot start: %s", exc.message)
        return 2
    if auth.mode == "none":
        log.warning("internal authentication is off: anyone who can connect may call")

    async def main() -> None:
        await run_service(await build(settings), settings, auth=auth)

    try:
        asyncio.run(main())
    except ReelmillError as exc:
        log.error("cannot start: %s", exc.message)
        return 2
    except ProcessStopped:
        return 1
    return 0
