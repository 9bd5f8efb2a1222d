"""Batches, RetryJob and reuse through real processes (gateway, ingest, transcode, transcribe,
metadata as subprocesses; real Postgres; SeaweedFS), through ``ReelmillClient`` and the CLI:

- a batch with a malformed item is refused whole; one whose video is missing, or whose URL
  fails at import, isolates that item, and the rest succeed; ListJobs filters by batch; a
  repeated call creates nothing;
- a 200-item batch watched to the end with WatchBatch, disconnecting half-way and resuming
  with per-job cursors: every event exactly once, in order;
- RetryJob of a job that failed (its metadata service gone) keeps its finished stages and their
  artifacts (no encoder or transcription runs again), runs the rest with a fresh budget, and
  WatchJob from the start streams through the failure to the new end;
- a resubmission of the same file reuses every stage (no call reaches transcode or transcribe:
  their metrics count none), its artifacts the very objects of the first job, downloadable
  byte for byte; another spec recomputes the stage it changes; another owner's identical file
  recomputes everything;
- ``reelmill submit a.mp4 b.mp4 --watch``: one bar per job and a summary.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from reelmill.client import ReelmillClient, job_request
from reelmill.v1 import job_pb2, job_service_pb2, pipeline_pb2
from runtime.errors import error_info
from tests.conftest import SuiteEnv
from tests.media import make_clip
from tests.scrape import scrape
from tests.servers import free_port
from tests.suite import PROBE_ONLY, Suite, run_suite, token

pytestmark = pytest.mark.e2e

SERVICES = ("ingest", "transcode", "transcribe", "metadata")
#: A small job with every encoder: one 120p rendition, the audio, the transcript, metadata.
SMALL = pipeline_pb2.PipelineSpec(
    transcode=pipeline_pb2.TranscodeSpec(
        ladder=[pipeline_pb2.LadderRung(height=120)],
        hls=False,
        thumbnails=pipeline_pb2.ThumbnailSpec(enabled=False),
        storyboard=pipeline_pb2.StoryboardSpec(enabled=False),
    ),
    scenes=pipeline_pb2.ScenesSpec(disabled=True),
)
TERMINAL = (job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED)


class _Missing(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def missing_url() -> Iterator[str]:
    """A URL on this machine that answers 404: an import that fails."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Missing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/gone.mp4"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="module")
def suite(suite_env: SuiteEnv, missing_url: str) -> Iterator[Suite]:
    port = missing_url.rsplit(":", 1)[1].split("/")[0]
    metrics = {name: f"127.0.0.1:{free_port()}" for name in ("transcode", "transcribe")}
    env = {
        **suite_env("s3"),
        "REELMILL_MAX_CONCURRENT_JOBS": "16",
        "REELMILL_OWNER_MAX_ACTIVE_JOBS": "1000",
        "REELMILL_OWNER_REQUESTS_PER_SECOND": "0",
        "REELMILL_URL_IMPORT_ALLOW_HOSTS": "127.0.0.1",
        "REELMILL_URL_IMPORT_ALLOWED_PORTS": f"80,443,{port}",
        "REELMILL_URL_IMPORT_ATTEMPTS": "1",
        "REELMILL_STAGE_MAX_ATTEMPTS": "2",
    }

    def extra(name: str) -> dict[str, str]:
        return {"REELMILL_METRICS_LISTEN": metrics[name]} if name in metrics else {}

    with run_suite(env, extra=extra, services=SERVICES) as running:
        running.metrics = metrics  # type: ignore[attr-defined]
        yield running


@pytest.fixture
async def client(suite: Suite) -> AsyncIterator[ReelmillClient]:
    async with ReelmillClient(suite.gateway, token=token("batcher")) as c:
        yield c


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(
        tmp_path_factory.mktemp("media") / "clip.mp4", seconds=2, width=160, height=120
    )


async def to_the_end(client: ReelmillClient, job_id: str) -> job_pb2.Job:
    final = None
    async for event in client.watch_job(job_id):
        if event.HasField("job"):
            final = event.job
    assert final is not None
    return final


def reason(error: grpc.aio.AioRpcError) -> str:
    info = error_info(error)
    return info.reason if info is not None else ""


def calls(suite: Suite, service: str, method: str) -> float:
    """How many calls of ``method`` the process of ``service`` has served, by its metrics."""
    samples = scrape(suite.metrics[service])  # type: ignore[attr-defined]
    wanted = f"reelmill.v1.{method}"
    return sum(
        count
        for labels, count in samples.get("reelmill_rpc_server_duration_seconds_count", {}).items()
        if ("method", wanted) in labels
    )


# -- batches ---------------------------------------------------------------------------------


async def test_a_batch_with_a_malformed_item_is_refused_whole(
    client: ReelmillClient, clip: Path
) -> None:
    video = await client.upload_file(clip)
    requests = [
        job_request(video.id, spec=PROBE_ONLY, request_id="whole-0"),
        job_request(url="ftp://example.com/a.mp4", request_id="whole-1"),
        job_request(video.id, spec=PROBE_ONLY, request_id="whole-2", priority=101),
    ]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await client.batch_create_jobs(requests)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(refused.value)
    assert info is not None and info.reason == "BAD_BATCH_REQUEST"
    assert dict(info.metadata) == {"indexes": "1,2", "reasons": "BAD_URL,BAD_PRIORITY"}
    assert "requests[1]" in (refused.value.details() or "")
    jobs, _ = await client.list_jobs()
    assert not [j for j in jobs if j.request_id.startswith("whole-")]  # nothing created


async def test_a_batch_isolates_a_missing_video_and_a_failing_import(
    client: ReelmillClient, clip: Path, missing_url: str
) -> None:
    video = await client.upload_file(clip)
    requests = [
        job_request(video.id, spec=PROBE_ONLY, request_id="iso-0", labels={"n": "0"}),
        job_request(str(uuid.uuid4()), spec=PROBE_ONLY, request_id="iso-1"),
        job_request(url=missing_url, spec=PROBE_ONLY, request_id="iso-2"),
        job_request(video.id, spec=PROBE_ONLY, request_id="iso-3", priority=7),
    ]
    response = await client.batch_create_jobs(requests)
    outcomes = [r.WhichOneof("outcome") for r in response.results]
    assert outcomes == ["job", "error", "job", "job"]
    assert [r.created for r in response.results] == [True, False, True, True]
    assert (response.results[1].error.code, response.results[1].error.reason) == (
        "NOT_FOUND",
        "VIDEO_NOT_FOUND",
    )
    jobs = [r.job for r in response.results if r.HasField("job")]
    assert {j.batch_id for j in jobs} == {response.batch_id}
    assert jobs[2].priority == 7 and jobs[0].labels == {"n": "0"}

    ended = {}
    async for event in client.watch_batch(response.batch_id):
        if event.HasField("job"):
            ended[event.job_id] = event.job
    assert {job_id: job.state for job_id, job in ended.items()} == {
        jobs[0].id: job_pb2.JOB_STATE_SUCCEEDED,
        jobs[1].id: job_pb2.JOB_STATE_FAILED,
        jobs[2].id: job_pb2.JOB_STATE_SUCCEEDED,
    }
    assert ended[jobs[1].id].error.code == "NOT_FOUND"  # the 404, for that item alone
    listed, _ = await client.list_jobs(batch_id=response.batch_id)
    assert sorted(j.id for j in listed) == sorted(j.id for j in jobs)

    again = await client.batch_create_jobs(requests)
    assert again.batch_id == response.batch_id
    assert [r.created for r in again.results] == [False, False, False, False]
    assert [r.job.id for r in again.results if r.HasField("job")] == [j.id for j in jobs]


async def test_a_200_item_batch_watched_to_the_end_across_a_reconnect(
    client: ReelmillClient, clip: Path
) -> None:
    video = await client.upload_file(clip)
    requests = [job_request(video.id, spec=PROBE_ONLY, request_id=f"big-{n}") for n in range(200)]
    response = await client.batch_create_jobs(requests)
    assert all(r.created for r in response.results)
    ids = {r.job.id for r in response.results}

    seen: dict[str, list[int]] = {job_id: [] for job_id in ids}
    ended: set[str] = set()
    first = client.stub.WatchBatch(
        job_service_pb2.WatchBatchRequest(batch_id=response.batch_id), metadata=client._metadata
    )
    async for message in first:  # about half, then the connection goes
        seen[message.event.job_id].append(message.event.sequence)
        if message.event.HasField("job"):
            ended.add(message.event.job_id)
        if sum(map(len, seen.values())) >= 500:
            break
    first.cancel()
    cursors = {job_id: max(s) for job_id, s in seen.items() if s}
    async for event in client.watch_batch(response.batch_id, after_sequences=cursors):
        seen[event.job_id].append(event.sequence)
        if event.HasField("job"):
            assert event.job.state == job_pb2.JOB_STATE_SUCCEEDED
            ended.add(event.job_id)
    # Every job's events exactly once and in order, from its first to its terminal one.
    for job_id, sequences in seen.items():
        assert sequences == list(range(1, len(sequences) + 1)), job_id
    assert ended == ids
    jobs, _ = await client.list_jobs(batch_id=response.batch_id, page_size=500)
    assert len(jobs) == 200
    assert {j.state for j in jobs} == {job_pb2.JOB_STATE_SUCCEEDED}
    for job in jobs:
        assert seen[job.id][-1] == job.last_event_sequence


async def test_a_batch_of_another_owner_is_not_found(client: ReelmillClient, suite: Suite) -> None:
    jobs, _ = await client.list_jobs(page_size=1)
    batch_id = jobs[0].batch_id
    assert batch_id
    async with ReelmillClient(suite.gateway, token=token("stranger")) as other:
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            async for _ in other.watch_batch(batch_id):
                pass
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        assert reason(missing.value) == "BATCH_NOT_FOUND"
        listed, _ = await other.list_jobs(batch_id=batch_id)
        assert listed == []


# -- retry -----------------------------------------------------------------------------------


async def test_retry_keeps_finished_stages_and_continues_the_sequence(
    suite: Suite, client: ReelmillClient, clip: Path
) -> None:
    video = await client.upload_file(clip)
    spec = pipeline_pb2.PipelineSpec()
    spec.CopyFrom(SMALL)
    spec.reuse = False
    metadata = suite.processes["metadata"][0]
    suite.kill(metadata)  # the metadata stage fails for good (its attempts run out)
    try:
        job = await client.create_job(video.id, spec=spec)
        failed = await to_the_end(client, job.id)
    finally:
        suite.restart(metadata)
    assert failed.state == job_pb2.JOB_STATE_FAILED
    stages = {s.name: s for s in failed.stages}
    assert stages["metadata"].state == job_pb2.STAGE_STATE_FAILED
    assert stages["metadata"].error.code == "UNAVAILABLE"
    finished = {"probe", "transcode", "audio", "transcribe"}
    assert all(stages[n].state == job_pb2.STAGE_STATE_SUCCEEDED for n in finished)
    kept = {a.name: a for a in failed.artifacts}
    assert {a.stage for a in kept.values()} == {"transcode", "audio", "transcribe"}
    methods = (
        ("transcode", "TranscodeService/Transcode"),
        ("transcode", "TranscodeService/ExtractAudio"),
        ("transcribe", "TranscribeService/Transcribe"),
    )
    work = [await asyncio.to_thread(calls, suite, s, m) for s, m in methods]

    retried = await client.retry_job(job.id)
    assert retried.state == job_pb2.JOB_STATE_QUEUED
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await client.retry_job(job.id)  # queued, running or succeeded: not retryable
    assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason(again.value) == "JOB_NOT_RETRYABLE"

    events = [e async for e in client.watch_job(job.id)]  # from the start, through the failure
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    done = events[-1].job
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done.error
    states = [
        e.job_state_changed.state for e in events if e.WhichOneof("payload") == "job_state_changed"
    ]
    assert states == [
        job_pb2.JOB_STATE_QUEUED,
        job_pb2.JOB_STATE_RUNNING,
        job_pb2.JOB_STATE_FAILED,
        job_pb2.JOB_STATE_QUEUED,
        job_pb2.JOB_STATE_RUNNING,
        job_pb2.JOB_STATE_SUCCEEDED,
    ]
    after = {s.name: s for s in done.stages}
    assert all(after[n].attempts == stages[n].attempts for n in finished)  # not run again
    assert after["metadata"].state == job_pb2.STAGE_STATE_SUCCEEDED
    # A fresh budget: the last run used both attempts (REELMILL_STAGE_MAX_ATTEMPTS=2), and the
    # retried stage still gets up to two (the first may meet the restarted service's channel
    # still reconnecting).
    assert 1 <= after["metadata"].attempts <= 2
    assert done.metadata.title
    for name, artifact in kept.items():
        assert next(a for a in done.artifacts if a.name == name) == artifact  # kept as it was
    assert [await asyncio.to_thread(calls, suite, s, m) for s, m in methods] == work


# -- reuse -----------------------------------------------------------------------------------


async def download(client: ReelmillClient, job: job_pb2.Job, name: str, path: Path) -> bytes:
    await client.download_artifact(job.id, name, path)
    return await asyncio.to_thread(path.read_bytes)


async def test_a_resubmission_reuses_everything_and_runs_no_encoder(
    suite: Suite, client: ReelmillClient, tmp_path: Path
) -> None:
    clip = make_clip(tmp_path / "reuse.mp4", seconds=3, width=176, height=144)
    video = await client.upload_file(clip)
    first = await to_the_end(client, (await client.create_job(video.id, spec=SMALL)).id)
    assert first.state == job_pb2.JOB_STATE_SUCCEEDED, first.error
    assert not any(s.reused_from_job_id for s in first.stages)
    methods = (
        ("transcode", "TranscodeService/Transcode"),
        ("transcode", "TranscodeService/ExtractAudio"),
        ("transcribe", "TranscribeService/Transcribe"),
    )
    before = [await asyncio.to_thread(calls, suite, s, m) for s, m in methods]
    assert all(before)

    again = await client.upload_file(clip)  # the same file, uploaded again: a new video
    second = await to_the_end(client, (await client.create_job(again.id, spec=SMALL)).id)
    assert second.state == job_pb2.JOB_STATE_SUCCEEDED, second.error
    assert [await asyncio.to_thread(calls, suite, s, m) for s, m in methods] == before
    ran = [s.name for s in second.stages if s.state == job_pb2.STAGE_STATE_SUCCEEDED]
    assert ran and all(
        s.reused_from_job_id == first.id
        for s in second.stages
        if s.state == job_pb2.STAGE_STATE_SUCCEEDED
    ), second.stages
    assert second.transcript == first.transcript and second.metadata == first.metadata
    assert second.media_info == first.media_info
    old = {a.name: a for a in first.artifacts}
    assert sorted(old) == sorted(a.name for a in second.artifacts)
    for artifact in second.artifacts:  # the very objects of the first job: no copy
        assert (artifact.object, artifact.sha256, artifact.size_bytes) == (
            old[artifact.name].object,
            old[artifact.name].sha256,
            old[artifact.name].size_bytes,
        )
    rendition = next(a.name for a in second.artifacts if a.name.startswith("renditions/"))
    mine = await download(client, second, rendition, tmp_path / "mine.mp4")
    theirs = await download(client, first, rendition, tmp_path / "theirs.mp4")
    assert mine == theirs and hashlib.sha256(mine).hexdigest() == old[rendition].sha256

    # Another rendition height: the transcode runs, the audio branch is still reused.
    taller = pipeline_pb2.PipelineSpec()
    taller.CopyFrom(SMALL)
    taller.transcode.ladder[0].height = 96
    third = await to_the_end(client, (await client.create_job(again.id, spec=taller)).id)
    assert third.state == job_pb2.JOB_STATE_SUCCEEDED, third.error
    stages = {s.name: s for s in third.stages}
    assert not stages["transcode"].reused_from_job_id
    assert stages["audio"].reused_from_job_id and stages["transcribe"].reused_from_job_id
    now = [await asyncio.to_thread(calls, suite, s, m) for s, m in methods]
    assert now == [before[0] + 1, before[1], before[2]]

    # Another owner's identical file: nothing of this owner's is reused.
    async with ReelmillClient(suite.gateway, token=token("someone-else")) as other:
        theirs_video = await other.upload_file(clip)
        assert theirs_video.sha256 == again.sha256
        fourth = await to_the_end(other, (await other.create_job(theirs_video.id, spec=SMALL)).id)
    assert fourth.state == job_pb2.JOB_STATE_SUCCEEDED, fourth.error
    assert not any(s.reused_from_job_id for s in fourth.stages)
    assert all(a.object.key.startswith(f"jobs/{fourth.id}/") for a in fourth.artifacts)
    assert [await asyncio.to_thread(calls, suite, s, m) for s, m in methods] == [
        now[0] + 1,
        now[1] + 1,
        now[2] + 1,
    ]


# -- the CLI ---------------------------------------------------------------------------------


def test_cli_submits_several_files_as_one_batch(suite: Suite, tmp_path: Path) -> None:
    files = [
        make_clip(tmp_path / f"{name}.mp4", seconds=1, width=160, height=120)
        for name in ("first", "second")
    ]
    spec = tmp_path / "probe-only.json"
    spec.write_text(
        json.dumps(
            {
                "transcode": {"disabled": True},
                "audio": {"disabled": True},
                "scenes": {"disabled": True},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("REELMILL_")}
    env |= {
        "REELMILL_GATEWAY": suite.gateway,
        "REELMILL_TOKEN": token("cli-user"),
        "REELMILL_HOME": str(tmp_path / "home"),
        "COLUMNS": "200",
    }
    result = subprocess.run(
        [sys.executable, "-m", "reelmill.cli.main", "submit", *map(str, files), "--watch",
         "--spec", str(spec), "--priority", "3", "--label", "via=cli"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "batch " in output and output.count("job ") >= 2
    assert "first.mp4" in output and "second.mp4" in output
    assert "2 succeeded" in output, output
    batch_id = output.split("batch ", 1)[1].split()[0]
    listing = subprocess.run(
        [sys.executable, "-m", "reelmill.cli.main", "jobs", "ls", "--batch", batch_id],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.count("SUCCEEDED") == 2 and "via=cli" in listing.stdout
