"""Metrics: the readers and the Prometheus endpoint (runtime/metrics.py), the gateway's and the
call instruments read back through an in-memory reader, and the whole suite as real processes
scraped over HTTP while a job runs."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry

import gateway.metrics
from gateway.db.engine import make_engine, make_sessionmaker
from gateway.metrics import GatewayMetrics, JobCounter
from reelmill.client import ReelmillClient
from reelmill.v1 import job_pb2, job_service_pb2, pipeline_pb2
from runtime import heap
from runtime.errors import ErrorMappingInterceptor, InvalidArgument, NotFound
from runtime.metrics import MetricsEndpoint, RpcMetricsInterceptor, build_meter_provider
from runtime.settings import ServiceSettings, load_settings
from tests.conftest import SuiteEnv
from tests.media import make_clip
from tests.scrape import Labels, labels, scrape, value
from tests.servers import free_port
from tests.suite import PROBE_ONLY, Suite, run_suite, token

# -- reading metrics back ------------------------------------------------------------------


def points(reader: InMemoryMetricReader, name: str) -> dict[Labels, Any]:
    """The data points of metric ``name``, by their attributes."""
    data = reader.get_metrics_data()
    found: dict[Labels, Any] = {}
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    for point in metric.data.data_points:
                        attributes = (point.attributes or {}).items()
                        found[frozenset((k, str(v)) for k, v in attributes)] = point
    return found


# -- runtime/metrics.py: readers and endpoint ----------------------------------------------


class Collector(metrics_service_pb2_grpc.MetricsServiceServicer):
    """An OTLP/gRPC metrics receiver on loopback: what a collector would be sent."""

    def __init__(self) -> None:
        self.requests: list[metrics_service_pb2.ExportMetricsServiceRequest] = []

    def Export(
        self, request: metrics_service_pb2.ExportMetricsServiceRequest, context: Any
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        self.requests.append(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()

    def sums(self, name: str) -> list[float]:
        return [
            point.as_double or point.as_int
            for request in self.requests
            for resource in request.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == name
            for point in metric.sum.data_points
        ]


@pytest.fixture
def collector() -> Iterator[tuple[str, Collector]]:
    receiver = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(receiver, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}", receiver
    finally:
        server.stop(0)


def can_connect(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.settimeout(2)
        return sock.connect_ex((host, port)) == 0


def test_both_readers_at_once_and_the_endpoint_binds_only_its_address(
    collector: tuple[str, Collector],
) -> None:
    endpoint_url, receiver = collector
    registry = CollectorRegistry()
    provider = build_meter_provider(
        "test-service", otlp_endpoint=endpoint_url, export_interval_seconds=60, registry=registry
    )
    endpoint = MetricsEndpoint("127.0.0.1:0", registry)
    try:
        assert endpoint.host == "127.0.0.1" and endpoint.port > 0
        # Bound to exactly the address given: the same port on another loopback address is shut.
        assert can_connect("127.0.0.1", endpoint.port)
        assert not can_connect("127.0.0.2", endpoint.port)

        counter = provider.get_meter("test").create_counter("reelmill.test.things", unit="By")
        counter.add(7, {"service": "test"})
        samples = scrape(endpoint.address)
        assert value(samples, "reelmill_test_things_bytes_total", service="test") == 7
        (info,) = samples["target_info"]
        assert ("service_name", "test-service") in info
    finally:
        endpoint.close()
        provider.shutdown()  # the last OTLP export
    assert receiver.sums("reelmill.test.things") == [7]
    # Shut down, nothing answers on the port, and it is free for the next process.
    assert not can_connect("127.0.0.1", endpoint.port)
    endpoint.close()  # again: harmless
    again = MetricsEndpoint(f"127.0.0.1:{endpoint.port}", registry)
    try:
        assert scrape(again.address) == {}  # the provider is gone from the registry
    finally:
        again.close()


def test_the_endpoint_serves_ipv6_and_refuses_a_taken_port() -> None:
    registry = CollectorRegistry()
    if socket.has_ipv6:
        with contextlib.suppress(OSError):
            v6 = MetricsEndpoint("[::1]:0", registry)
            try:
                assert v6.address == f"[::1]:{v6.port}"
                assert "target_info" not in scrape(v6.address)  # an empty registry
            finally:
                v6.close()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            MetricsEndpoint(f"127.0.0.1:{port}", registry)


def test_metrics_listen_must_be_host_and_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REELMILL_METRICS_LISTEN", "")
    assert load_settings(ServiceSettings).metrics_listen is None
    monkeypatch.setenv("REELMILL_METRICS_LISTEN", "[::]:9464")
    assert load_settings(ServiceSettings).metrics_listen == "[::]:9464"
    for bad in ("9464", "0.0.0.0:", ":9464", "0.0.0.0:http", "0.0.0.0:70000"):
        monkeypatch.setenv("REELMILL_METRICS_LISTEN", bad)
        with pytest.raises(InvalidArgument, match="REELMILL_METRICS_LISTEN"):
            load_settings(ServiceSettings)


# -- instruments -----------------------------------------------------------------------------


def test_stage_finished_and_stage_retried() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    instruments = GatewayMetrics(provider.get_meter("reelmill.gateway"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gateway.metrics, "instruments", instruments)
        gateway.metrics.stage_finished("probe", "succeeded", 0.3)
        gateway.metrics.stage_finished("probe", "succeeded", 42.0)
        gateway.metrics.stage_finished("transcode", "failed", 7200.0)
        gateway.metrics.stage_retried("transcode", "UNAVAILABLE")
        gateway.metrics.stage_retried("transcode", "UNAVAILABLE")
        gateway.metrics.stage_retried("probe", "DEADLINE_EXCEEDED")
    durations = points(reader, "reelmill.stage.duration")
    assert set(durations) == {
        labels(stage="probe", outcome="succeeded"),
        labels(stage="transcode", outcome="failed"),
    }
    probe = durations[labels(stage="probe", outcome="succeeded")]
    assert (probe.count, probe.sum) == (2, pytest.approx(42.3))
    bounds = list(probe.explicit_bounds)
    assert bounds == list(gateway.metrics.STAGE_BUCKETS)
    assert probe.bucket_counts[bounds.index(0.5)] == 1  # 0.3 s: in (0.25, 0.5]
    assert probe.bucket_counts[bounds.index(60)] == 1  # 42 s: in (30, 60]
    transcode = durations[labels(stage="transcode", outcome="failed")]
    assert transcode.bucket_counts[bounds.index(7200)] == 1
    retries = points(reader, "reelmill.stage.retries")
    assert {k: p.value for k, p in retries.items()} == {
        labels(stage="transcode", code="UNAVAILABLE"): 2,
        labels(stage="probe", code="DEADLINE_EXCEEDED"): 1,
    }
    provider.shutdown()


def test_collector_pauses_by_generation() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    recorder = heap.PauseRecorder(provider.get_meter("reelmill.runtime"))
    enabled = gc.isenabled()
    gc.disable()  # only the collections asked for below
    gc.callbacks.append(recorder)
    try:
        gc.collect(0)
        gc.collect(0)
        gc.collect(2)
    finally:
        gc.callbacks.remove(recorder)
        if enabled:
            gc.enable()
    pauses = points(reader, "reelmill.gc.pause")
    assert {key: point.count for key, point in pauses.items()} == {
        labels(generation="0"): 2,
        labels(generation="2"): 1,
    }
    full = pauses[labels(generation="2")]
    assert list(full.explicit_bounds) == list(heap.PAUSE_BUCKETS)
    assert 0 < full.sum < 60
    provider.shutdown()


def test_settle_freezes_start_up_and_sets_the_server_thresholds() -> None:
    # In a process of its own: freezing the test process's heap would outlive the test.
    script = (
        "import gc, json; import gateway.server; from runtime import heap; "
        "before = gc.get_freeze_count(); heap.settle(); "
        "print(json.dumps([before, gc.get_freeze_count(), gc.get_threshold()]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    before, frozen, thresholds = json.loads(done.stdout.splitlines()[-1])
    assert before == 0
    # The gateway's modules, classes and functions: never traversed again.
    assert frozen > 50_000
    assert tuple(thresholds) == heap.THRESHOLDS


def test_jobs_queue_depth_and_watchers_gauges() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    instruments = GatewayMetrics(provider.get_meter("reelmill.gateway"))
    # No count yet: no job series (rather than made-up zeros); no watchers open.
    assert points(reader, "reelmill.jobs") == {}
    assert points(reader, "reelmill.queue.depth") == {}
    assert [p.value for p in points(reader, "reelmill.watchers").values()] == [0]

    instruments.job_counts = {"QUEUED": 3, "SUCCEEDED": 10}
    with instruments.watching(), instruments.watching():
        jobs = {k: p.value for k, p in points(reader, "reelmill.jobs").items()}
        assert jobs == {
            labels(state="QUEUED"): 3,
            labels(state="RUNNING"): 0,
            labels(state="SUCCEEDED"): 10,
            labels(state="FAILED"): 0,
            labels(state="CANCELLED"): 0,
        }
        assert [p.value for p in points(reader, "reelmill.queue.depth").values()] == [3]
        assert [p.value for p in points(reader, "reelmill.watchers").values()] == [2]
    assert [p.value for p in points(reader, "reelmill.watchers").values()] == [0]
    provider.shutdown()


async def test_job_counter_survives_an_unreachable_database() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    instruments = GatewayMetrics(provider.get_meter("reelmill.gateway"))
    instruments.job_counts = {"QUEUED": 1}  # from before the outage
    engine = make_engine(f"postgresql+asyncpg://nobody@127.0.0.1:{free_port()}/none")
    counter = JobCounter(make_sessionmaker(engine), interval=0.05, into=instruments)
    task = asyncio.create_task(counter.run())
    try:
        for _ in range(200):
            if instruments.job_counts is None:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # a few more failed rounds
        assert not task.done()
        assert instruments.job_counts is None
        assert points(reader, "reelmill.jobs") == {}
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await engine.dispose()
        provider.shutdown()


async def test_call_metrics_by_method_and_code() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    # Health's Watch writes with context.write rather than yielding; ErrorMappingInterceptor
    # handles only generators, so it is left out here.
    server = grpc.aio.server(interceptors=[RpcMetricsInterceptor(provider.get_meter("test"))])
    health = HealthServicer()
    await health.set("up", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            await stub.Check(health_pb2.HealthCheckRequest(service="up"), timeout=5)
            await stub.Check(health_pb2.HealthCheckRequest(service="up"), timeout=5)
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Check(health_pb2.HealthCheckRequest(service="missing"), timeout=5)
            watch = stub.Watch(health_pb2.HealthCheckRequest(service="up"))
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            watch.cancel()
            deadline = time.monotonic() + 5
            method = "grpc.health.v1.Health/Watch"
            while labels(method=method, code="CANCELLED") not in points(
                reader, "reelmill.rpc.server.duration"
            ):
                assert time.monotonic() < deadline, points(reader, "reelmill.rpc.server.duration")
                await asyncio.sleep(0.05)
    finally:
        await server.stop(0)
    calls = {k: p.count for k, p in points(reader, "reelmill.rpc.server.duration").items()}
    assert calls == {
        labels(method="grpc.health.v1.Health/Check", code="OK"): 2,
        labels(method="grpc.health.v1.Health/Check", code="NOT_FOUND"): 1,
        labels(method="grpc.health.v1.Health/Watch", code="CANCELLED"): 1,
    }
    provider.shutdown()


# -- the suite as real processes, scraped ----------------------------------------------------


class StallingMedia:
    """Serves one clip over HTTP on loopback, holding every request until ``release``: a URL
    import that keeps its job RUNNING for as long as the test needs."""

    def __init__(self, body: bytes, port: int) -> None:
        self.released = threading.Event()
        self.requested = threading.Event()
        media = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                media.requested.set()
                media.released.wait(timeout=120)
                self.send_response(200)
                self.send_header("Content-Type", "video/mp4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(OSError):
                    self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{port}/remote.mp4"
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self.released.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)


PROCESS_NAMES = ("gateway", "ingest", "transcode", "transcribe", "metadata", "vision")


@pytest.fixture
def metered(suite_env: SuiteEnv) -> Iterator[tuple[Suite, dict[str, str], int]]:
    """The suite with a metrics endpoint per process: (suite, name -> address, media port)."""
    media_port = free_port()
    addresses = {name: f"127.0.0.1:{free_port()}" for name in PROCESS_NAMES}
    env = {
        **suite_env("local"),
        "REELMILL_JOB_METRICS_INTERVAL_SECONDS": "0.2",
        "REELMILL_URL_IMPORT_ALLOW_HOSTS": "127.0.0.1",
        "REELMILL_URL_IMPORT_ALLOWED_PORTS": f"80,443,{media_port}",
    }

    def endpoint(name: str) -> dict[str, str]:
        return {"REELMILL_METRICS_LISTEN": addresses[name]}

    with run_suite(env, extra=endpoint) as suite:
        yield suite, addresses, media_port


async def eventually(
    check: Callable[[], Any], timeout: float = 15.0, what: str = "the metric"
) -> None:
    """Waits until ``check()`` holds (scrapes are threads' work: off the event loop)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await asyncio.to_thread(check)
        if last is True:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what} never held; last: {last!r}")


@pytest.mark.e2e
async def test_every_process_serves_metrics_that_follow_a_job(
    metered: tuple[Suite, dict[str, str], int], tmp_path: Path
) -> None:
    suite, addresses, media_port = metered
    for name in PROCESS_NAMES:
        samples = await asyncio.to_thread(scrape, addresses[name])
        (info,) = samples["target_info"]
        assert ("service_name", name) in info, (name, info)
        # Every process settled its collector before serving (runtime.heap): the full
        # collection before the freeze was recorded.
        full = value(samples, "reelmill_gc_pause_seconds_count", generation="2")
        assert full is not None and full >= 1, (name, full)

    def gateway() -> dict[str, dict[Labels, float]]:
        return scrape(addresses["gateway"])

    def jobs(state: str) -> float | None:
        return value(gateway(), "reelmill_jobs", state=state)

    # An upload: its bytes at the gateway and at ingest.
    clip = make_clip(tmp_path / "clip.mp4", seconds=1, width=160, height=120)
    size = clip.stat().st_size
    async with ReelmillClient(suite.gateway, token=token()) as client:
        video = await client.upload_file(clip, resumable=False)
        assert video.size_bytes == size
        at_gateway = await asyncio.to_thread(gateway)
        assert value(at_gateway, "reelmill_upload_size_bytes_total", service="gateway") == size
        at_ingest = await asyncio.to_thread(scrape, addresses["ingest"])
        assert value(at_ingest, "reelmill_upload_size_bytes_total", service="ingest") == size
        upload = "reelmill.v1.JobService/UploadVideo"
        assert (
            value(
                at_gateway, "reelmill_rpc_server_duration_seconds_count", method=upload, code="OK"
            )
            == 1
        )
        ingest = "reelmill.v1.IngestService/IngestVideo"
        assert (
            value(at_ingest, "reelmill_rpc_server_duration_seconds_count", method=ingest, code="OK")
            == 1
        )
        # The same bytes again through a resumable upload: counted once more, as they arrive.
        again = await client.upload_file(clip)
        assert again.sha256 == video.sha256
        at_gateway = await asyncio.to_thread(gateway)
        assert value(at_gateway, "reelmill_upload_size_bytes_total", service="gateway") == 2 * size
        at_ingest = await asyncio.to_thread(scrape, addresses["ingest"])
        assert value(at_ingest, "reelmill_upload_size_bytes_total", service="ingest") == 2 * size
        for samples, method in (
            (at_gateway, "reelmill.v1.JobService/WriteUpload"),
            (at_ingest, "reelmill.v1.IngestService/WriteParts"),
        ):
            count = value(
                samples, "reelmill_rpc_server_duration_seconds_count", method=method, code="OK"
            )
            assert count == 1, method

        # A job to its end; the counts follow within the gauge's interval.
        job = await client.create_job(video.id, spec=PROBE_ONLY)
        events = [e async for e in client.watch_job(job.id)]
        assert events[-1].job.state == job_pb2.JOB_STATE_SUCCEEDED
        await eventually(lambda: jobs("SUCCEEDED") == 1, what="1 job succeeded")
        after = await asyncio.to_thread(gateway)
        assert value(after, "reelmill_queue_depth") == 0
        assert value(after, "reelmill_jobs", state="RUNNING") == 0
        assert value(after, "reelmill_watchers") == 0
        probes = "reelmill_stage_duration_seconds_count"
        assert value(after, probes, stage="probe", outcome="succeeded") == 1

        # A URL import held by the media server: the job stays RUNNING while it is watched.
        media = StallingMedia(clip.read_bytes(), media_port)
        try:
            # The same bytes as the first job: reuse off, so its probe really runs (and counts).
            no_reuse = pipeline_pb2.PipelineSpec()
            no_reuse.CopyFrom(PROBE_ONLY)
            no_reuse.reuse = False
            held = await client.create_job(url=media.url, spec=no_reuse)
            call = client.stub.WatchJob(
                job_service_pb2.WatchJobRequest(job_id=held.id), metadata=client._metadata
            )
            first = await call.read()
            assert first.event.sequence == 1
            await eventually(lambda: value(gateway(), "reelmill_watchers") == 1, what="1 watcher")
            await asyncio.to_thread(media.requested.wait, 30)
            await eventually(lambda: jobs("RUNNING") == 1, what="1 job running")
            assert value(await asyncio.to_thread(gateway), "reelmill_queue_depth") == 0
            # The client cancels: the stream closes on the server too.
            call.cancel()
            await eventually(lambda: value(gateway(), "reelmill_watchers") == 0, what="0 left")

            # Watched again, to its end this time.
            async def to_end() -> list[job_pb2.JobEvent]:
                return [e async for e in client.watch_job(held.id)]

            watching = asyncio.create_task(to_end())
            await eventually(lambda: value(gateway(), "reelmill_watchers") == 1, what="again")
            media.released.set()
            events = await asyncio.wait_for(watching, 60)
            assert events[-1].job.state == job_pb2.JOB_STATE_SUCCEEDED, events[-1].job.error
        finally:
            media.close()
        assert value(await asyncio.to_thread(gateway), "reelmill_watchers") == 0
        await eventually(lambda: jobs("SUCCEEDED") == 2, what="2 jobs succeeded")
        final = await asyncio.to_thread(gateway)
        assert value(final, "reelmill_jobs", state="RUNNING") == 0
        assert value(final, "reelmill_queue_depth") == 0
        assert value(final, probes, stage="probe", outcome="succeeded") == 2
        assert value(final, probes, stage="import", outcome="succeeded") == 1
        assert not final.get("reelmill_stage_retries_total")  # nothing was retried
        # A URL import is no upload.
        assert value(final, "reelmill_upload_size_bytes_total", service="gateway") == 2 * size
    # Each process's endpoint stops with it (the suite's SIGTERM).
    suite.stop()
    for name in PROCESS_NAMES:
        host, port = addresses[name].rsplit(":", 1)
        assert not can_connect(host, int(port)), name


async def test_call_metrics_see_the_status_a_domain_error_became() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])

    async def fail(request: bytes, context: Any) -> bytes:
        raise NotFound("no such thing", reason="THING_NOT_FOUND")

    handler = grpc.method_handlers_generic_handler(
        "test.Things", {"Get": grpc.unary_unary_rpc_method_handler(fail)}
    )
    server = grpc.aio.server(
        interceptors=[RpcMetricsInterceptor(provider.get_meter("test")), ErrorMappingInterceptor()]
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call: Any = channel.unary_unary("/test.Things/Get")
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call(b"", timeout=5)
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await server.stop(0)
    calls = {k: p.count for k, p in points(reader, "reelmill.rpc.server.duration").items()}
    assert calls == {labels(method="test.Things/Get", code="NOT_FOUND"): 1}
    provider.shutdown()
