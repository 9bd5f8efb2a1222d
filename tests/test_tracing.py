"""One trace per job: the CreateJob call's span is the root; every run of the job, on any
gateway, is its child; every stage attempt is a span (job_id, stage, attempt) whose children
are the services' spans. Real processes export over OTLP to an in-memory collector."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from pathlib import Path

import asyncpg
import pytest
from opentelemetry.proto.trace.v1 import trace_pb2

from reelmill.client import ReelmillClient
from reelmill.v1 import job_pb2
from runtime.ffmpeg import ffmpeg_path
from tests.otlp import Span, run_collector
from tests.suite import run_suite, token

pytestmark = pytest.mark.e2e

SERVER = trace_pb2.Span.SPAN_KIND_SERVER
CLIENT = trace_pb2.Span.SPAN_KIND_CLIENT
SERVICES = ("ingest", "transcode", "transcribe", "metadata")


@pytest.fixture(scope="module")
def talk(tmp_path_factory: pytest.TempPathFactory, shared_media: Path) -> Path:
    """Three seconds of video over real speech, so every service has work to do."""
    path = tmp_path_factory.mktemp("tracing") / "talk.mp4"
    subprocess.run(
        [ffmpeg_path(), "-hide_banner", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=10",
         "-i", str(shared_media / "speech" / "jfk.flac"),
         "-t", "3", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(path)],
        check=True,
    )  # fmt: skip
    return path


def stage_spans(spans: list[Span], job_id: str, stage: str) -> list[Span]:
    return sorted(
        (
            s
            for s in spans
            if s.attributes.get("reelmill.job_id") == job_id
            and s.attributes.get("reelmill.stage") == stage
        ),
        key=lambda s: int(s.attributes["reelmill.attempt"]),
    )


async def lease_owner_pid(database_url: str, job_id: str) -> int:
    dsn = database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    conn = await asyncpg.connect(dsn)
    try:
        owner = await conn.fetchval("SELECT lease_owner FROM jobs WHERE id = $1", uuid.UUID(job_id))
    finally:
        await conn.close()
    assert owner, "the job is not claimed"
    return int(owner.split(":")[1])


async def test_one_trace_connects_a_job_across_a_retry_and_a_gateway_takeover(
    database_url: str, tmp_path: Path, talk: Path
) -> None:
    owner = token("tracer")
    with run_collector() as collector:
        env = {
            "REELMILL_DATABASE_URL": database_url,
            "REELMILL_STORAGE_BACKEND": "local",
            "REELMILL_STORAGE_DIR": str(tmp_path / "objects"),
            "REELMILL_OTLP_ENDPOINT": collector.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "REELMILL_STAGE_MAX_ATTEMPTS": "10",
        }
        with run_suite(env, gateways=2) as suite:
            transcode = suite.processes["transcode"][0]
            async with ReelmillClient(suite.gateway, token=owner) as first:
                video = await first.upload_file(talk)
                # Transcode is down: its stages fail UNAVAILABLE and are retried.
                suite.kill(transcode)
                job = await first.create_job(video.id)

            def retried_twice(spans: list[Span]) -> bool:
                attempts = stage_spans(spans, job.id, "transcode")
                return len(attempts) >= 2 and all(s.error for s in attempts)

            await asyncio.to_thread(collector.wait_for, retried_twice)
            # Then the gateway running the job dies; the other one takes it over.
            pid = await lease_owner_pid(database_url, job.id)
            gateways = suite.processes["gateway"]
            (running,) = [g for g in gateways if g.proc.pid == pid]
            (survivor,) = [g for g in gateways if g is not running]
            suite.kill(running)
            await asyncio.to_thread(suite.restart, transcode)
            async with ReelmillClient(survivor.address, token=owner) as client:
                async with asyncio.timeout(180):
                    async for event in client.watch_job(job.id, max_reconnects=60):
                        last = event
                assert last.job.state == job_pb2.JOB_STATE_SUCCEEDED, last.job.error

            def complete(spans: list[Span]) -> bool:
                # The run's span ends after its last stage, whichever that is (metadata and
                # the stills finish in either order).
                run_ended = any(
                    s.name == "job.run" and s.attributes.get("reelmill.job_id") == job.id
                    for s in spans
                )
                if not (run_ended and stage_spans(spans, job.id, "metadata")):
                    return False
                # Every service's spans of this job's trace arrived (each process exports on
                # its own schedule: another trace's span of a service proves nothing).
                traces = {
                    s.trace_id for s in spans if s.attributes.get("reelmill.job_id") == job.id
                }
                return all(
                    any(s.service == service and s.kind == SERVER and s.trace_id in traces
                        for s in spans)
                    for service in SERVICES
                )  # fmt: skip

            spans = await asyncio.to_thread(collector.wait_for, complete)

    (create,) = [s for s in spans if s.name.endswith("JobService/CreateJob") and s.kind == SERVER]
    assert create.parent_id == "", "CreateJob is the root of the job's trace"
    trace = [s for s in spans if s.trace_id == create.trace_id]
    by_id = {s.span_id: s for s in trace}

    # Every span that names the job is in the one trace.
    named = [s for s in spans if s.attributes.get("reelmill.job_id") == job.id]
    assert named and all(s.trace_id == create.trace_id for s in named)

    # The retry: attempts 1 and 2 failed on the first gateway; a later one succeeded.
    transcodes = stage_spans(spans, job.id, "transcode")
    assert [int(s.attributes["reelmill.attempt"]) for s in transcodes[:2]] == [1, 2]
    assert transcodes[0].error and transcodes[1].error and not transcodes[-1].error
    assert transcodes[0].instance == transcodes[1].instance == running_instance(spans, create)

    # The takeover: the survivor's run is a child of CreateJob, and the successful attempt is
    # a child of that run; the killed gateway's attempts share its (unexported) run.
    runs = [s for s in trace if s.name == "job.run"]
    assert runs and all(r.parent_id == create.span_id for r in runs)
    assert transcodes[-1].instance != transcodes[0].instance
    assert by_id[transcodes[-1].parent_id].name == "job.run"
    assert transcodes[0].parent_id == transcodes[1].parent_id

    # Every service's work hangs under a stage attempt of this job: server span, its parent
    # the gateway's client span, whose parent is the stage span.
    for service in SERVICES:
        served = [s for s in trace if s.service == service and s.kind == SERVER]
        assert served, f"no {service} span in the job's trace"
        for span in served:
            call = by_id[span.parent_id]
            assert call.kind == CLIENT and call.service == "gateway"
            stage = by_id[call.parent_id]
            assert stage.attributes["reelmill.job_id"] == job.id, (service, stage.name)
            assert stage.name == f"stage {stage.attributes['reelmill.stage']}"


def running_instance(spans: list[Span], create: Span) -> str:
    """The gateway that ran the first attempts: the one whose probe span exists."""
    probes = [s for s in spans if s.trace_id == create.trace_id and s.name == "stage probe"]
    assert probes
    return probes[0].instance
