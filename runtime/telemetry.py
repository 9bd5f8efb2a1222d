"""OpenTelemetry tracing. Spans are always created (their ids go into the logs); they are
exported only when an OTLP endpoint is configured. gRPC trace context travels in metadata
through the server and client interceptors; a job's lives in its row (``current_context`` when
it is created, ``context_from`` when it runs), so every run of it continues one trace."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor
from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

_provider: TracerProvider | None = None


def setup_tracing(service_name: str, otlp_endpoint: str | None) -> TracerProvider:
    """Installs the global tracer provider once per process."""
    global _provider
    if _provider is not None:
        return _provider
    resource = Resource.create(
        {SERVICE_NAME: service_name, SERVICE_INSTANCE_ID: f"{socket.gethostname()}:{os.getpid()}"}
    )
    provider = TracerProvider(resource=resource)
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint)))
    trace.set_tracer_provider(provider)
    _provider = provider
    return provider


def shutdown_tracing() -> None:
    if _provider is not None:
        _provider.shutdown()


def server_interceptors() -> list[Any]:
    return [aio_server_interceptor()]  # type: ignore[no-untyped-call]


def client_interceptors() -> list[Any]:
    return list(aio_client_interceptors())  # type: ignore[no-untyped-call]


def current_context() -> dict[str, str]:
    """The current trace context as W3C headers (``traceparent``, ``tracestate``): what a job
    stores so that its runs continue the trace of the call that created it."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def context_from(carrier: Mapping[str, Any] | None) -> context.Context:
    """A context whose parent span is the one ``carrier`` names (a new trace when empty)."""
    return propagate.extract({str(k): str(v) for k, v in (carrier or {}).items()})
