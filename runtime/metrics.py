"""OpenTelemetry metrics, per process.

Instruments come from the global meter provider (``opentelemetry.metrics.get_meter``) and may
be made at import: they record nothing until ``setup_metrics`` installs the provider, once per
process, with the readers the settings ask for — OTLP/gRPC export every
``metrics_export_interval_seconds`` when ``otlp_endpoint`` is set (the endpoint tracing uses),
and a Prometheus text endpoint (``GET /metrics``) on ``metrics_listen``. Both may be on. With
neither, the API's no-op provider stays and recording costs next to nothing.

Names carry the ``reelmill.`` prefix and OTel units; Prometheus shows them as the exporter
translates them (``reelmill.upload.size`` in ``By`` is ``reelmill_upload_size_bytes_total``).
Attributes stay few-valued: never a job, video or owner id.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIServer

import grpc
from opentelemetry import metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, Resource
from prometheus_client import CollectorRegistry, start_http_server

from runtime.errors import Handler, wrap_handler
from runtime.settings import ServiceSettings, split_address

log = logging.getLogger(__name__)

_meter = metrics.get_meter("reelmill.runtime")

#: Bucket bounds of the call-duration histogram, in seconds.
RPC_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)

_upload_size = _meter.create_counter(
    "reelmill.upload.size",
    unit="By",
    description="Bytes of uploads received, counted as they arrive (refused uploads included)",
)


def _rpc_duration(meter: metrics.Meter) -> metrics.Histogram:
    return meter.create_histogram(
        "reelmill.rpc.server.duration",
        unit="s",
        description="gRPC calls served, by method and status code",
        explicit_bucket_boundaries_advisory=RPC_BUCKETS,
    )


_rpc_server_duration = _rpc_duration(_meter)


def upload_received(service: str, size: int) -> None:
    """Counts ``size`` bytes of an upload arriving at ``service`` ("gateway", "ingest")."""
    _upload_size.add(size, {"service": service})


def metrics_enabled(settings: ServiceSettings) -> bool:
    """Whether the settings ask for any metrics reader."""
    return bool(settings.otlp_endpoint or settings.metrics_listen)


def build_meter_provider(
    service_name: str,
    *,
    otlp_endpoint: str | None = None,
    export_interval_seconds: float = 60.0,
    registry: CollectorRegistry | None = None,
) -> MeterProvider:
    """A meter provider exporting over OTLP to ``otlp_endpoint`` and, with ``registry``, to a
    Prometheus registry (which ``MetricsEndpoint`` serves); not installed globally."""
    readers: list[MetricReader] = []
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        readers.append(
            PeriodicExportingMetricReader(
                OTLPMetricExporter(endpoint=otlp_endpoint),
                export_interval_millis=export_interval_seconds * 1000,
            )
        )
    if registry is not None:
        readers.append(PrometheusMetricReader(registry=registry))
    resource = Resource.create(
        {SERVICE_NAME: service_name, SERVICE_INSTANCE_ID: f"{socket.gethostname()}:{os.getpid()}"}
    )
    return MeterProvider(metric_readers=readers, resource=resource)


class MetricsEndpoint:
    """``registry`` in the Prometheus text format over HTTP on ``address`` (host:port, port 0
    for any free one), served from a thread until ``close``."""

    def __init__(self, address: str, registry: CollectorRegistry) -> None:
        host, port = split_address(address)
        try:
            self._server: WSGIServer
            self._server, self._thread = start_http_server(port, host, registry=registry)
        except OSError as exc:
            raise OSError(f"cannot serve metrics on {address}: {exc}") from exc
        self.host = host
        self.port = int(self._server.server_port)

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def close(self) -> None:
        """Stops serving and frees the port (safe to call again)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


_provider: MeterProvider | None = None
_endpoint: MetricsEndpoint | None = None
_lock = threading.Lock()


def setup_metrics(service_name: str, settings: ServiceSettings) -> MetricsEndpoint | None:
    """Installs the global meter provider once per process (when a reader is asked for) and
    starts the Prometheus endpoint (``metrics_listen``); returns it. Raises OSError when the
    endpoint's address cannot be bound."""
    global _provider, _endpoint
    with _lock:
        if _provider is not None or not metrics_enabled(settings):
            return _endpoint
        registry = CollectorRegistry() if settings.metrics_listen else None
        endpoint = (
            MetricsEndpoint(settings.metrics_listen, registry)
            if settings.metrics_listen and registry is not None
            else None
        )
        provider = build_meter_provider(
            service_name,
            otlp_endpoint=settings.otlp_endpoint,
            export_interval_seconds=settings.metrics_export_interval_seconds,
            registry=registry,
        )
        metrics.set_meter_provider(provider)
        _provider, _endpoint = provider, endpoint
    if endpoint is not None:
        log.info("metrics listening", extra={"address": endpoint.address})
    return endpoint


def shutdown_metrics() -> None:
    """Stops the Prometheus endpoint and flushes the last OTLP export."""
    if _endpoint is not None:
        _endpoint.close()
    if _provider is not None:
        _provider.shutdown()


# -- gRPC server calls -----------------------------------------------------------------------


class RpcMetricsInterceptor(grpc.aio.ServerInterceptor):
    """Records ``reelmill.rpc.server.duration`` (s) of every call this server handles, by
    ``method`` ("reelmill.v1.JobService/GetJob") and status ``code`` ("OK", "NOT_FOUND").
    Goes before the error mapping, so that it sees the status a domain error became."""

    def __init__(self, meter: metrics.Meter | None = None) -> None:
        self._duration = _rpc_duration(meter) if meter is not None else _rpc_server_duration

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method.lstrip("/")
        return wrap_handler(
            handler,
            functools.partial(self._unary, method),
            functools.partial(self._stream, method),
        )

    @contextlib.contextmanager
    def _measuring(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Iterator[None]:
        """Records the call that runs in the block, with the status it ended with."""
        began = time.monotonic()
        code: grpc.StatusCode | str | None = None
        try:
            yield
            code = context.code()
        except BaseException as exc:
            code = _code_of(exc, context)
            raise
        finally:
            name = code.name if isinstance(code, grpc.StatusCode) else code or "OK"
            self._duration.record(time.monotonic() - began, {"method": method, "code": name})

    def _unary(self, method: str, behavior: Handler) -> Handler:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            with self._measuring(method, context):
                return await behavior(request, context)

        return wrapper

    def _stream(self, method: str, behavior: Handler) -> Handler:
        async def wrapper(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            with self._measuring(method, context):
                responses = behavior(request, context)
                if inspect.isawaitable(responses):
                    await responses  # a handler that writes with context.write
                else:
                    async for response in responses:
                        yield response

        return wrapper


def _code_of(
    exc: BaseException, context: grpc.aio.ServicerContext[Any, Any]
) -> grpc.StatusCode | str:
    if isinstance(exc, grpc.aio.AbortError):
        return context.code() or "UNKNOWN"
    if not isinstance(exc, Exception):
        return "CANCELLED"  # the call ended under the handler (CancelledError, GeneratorExit)
    return "UNKNOWN"
