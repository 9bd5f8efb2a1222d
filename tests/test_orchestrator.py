"""The orchestrator against a real Postgres and a real object store, with scripted stages:
transient failures are retried with backoff and recorded, permanent ones are not, a job's
deadline ends it, failed/cancelled/deleted work leaves no objects behind, and a queued job gets
an estimated start."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

import gateway.metrics
from gateway.convert import estimated_wait
from gateway.db import models
from gateway.db.engine import make_engine, make_sessionmaker
from gateway.metrics import GatewayMetrics
from gateway.orchestrator import Orchestrator, retryable
from gateway.pipeline import Stage, StageContext, StageResult
from gateway.purges import Purger
from gateway.runs import Runs
from gateway.settings import GatewaySettings
from gateway.store import StagePlan, Store
from reelmill.v1 import job_pb2, media_pb2, pipeline_pb2
from runtime.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    ReelmillError,
    ResourceExhausted,
    Unavailable,
)
from runtime.storage import ObjectStore
from runtime.storage.local import LocalObjectStore

OWNER = "alice"


@dataclass
class Scripted(Stage):
    """A stage whose attempts fail with the scripted errors, then succeed (writing and
    recording one artifact under the job's prefix)."""

    name: str
    objects: ObjectStore
    failures: list[ReelmillError] = field(default_factory=list)
    depends_on: tuple[str, ...] = ()
    #: Seconds each attempt takes before its outcome.
    seconds: float = 0.0
    #: Object the stage writes before failing (a partial output nobody records).
    leaves_partial: bool = False
    calls: int = 0

    async def run(self, ctx: StageContext) -> StageResult:
        self.calls += 1
        await ctx.report(0.5, "working")
        await asyncio.sleep(self.seconds)
        if self.failures:
            if self.leaves_partial:
                await self.objects.put_bytes(
                    f"{ctx.output_prefix}{self.name}/partial.bin", b"half", content_type="x/y"
                )
            raise self.failures.pop(0)
        stored = await self.objects.put_bytes(
            f"{ctx.output_prefix}{self.name}/out.bin", self.name.encode(), content_type="x/y"
        )
        artifact = media_pb2.Artifact(
            name=f"{self.name}/out.bin",
            kind=media_pb2.ARTIFACT_KIND_THUMBNAIL,
            object=media_pb2.ObjectRef(bucket=stored.bucket, key=stored.key),
            content_type="x/y",
            size_bytes=stored.size,
            sha256=stored.sha256,
        )
        return StageResult(outputs={"ok": True}, artifacts=[artifact])


@dataclass
class Harness:
    sessions: async_sessionmaker[AsyncSession]
    store: Store
    objects: ObjectStore
    settings: GatewaySettings

    async def video(self) -> str:
        video_id = str(uuid.uuid4())
        stored = await self.objects.put_bytes(
            f"videos/{video_id}/source", b"video", content_type="video/mp4"
        )
        await self.store.add_video(
            OWNER,
            media_pb2.Video(
                id=video_id,
                filename="clip.mp4",
                content_type="video/mp4",
                size_bytes=stored.size,
                sha256=stored.sha256,
                object=media_pb2.ObjectRef(bucket=stored.bucket, key=stored.key),
            ),
        )
        return video_id

    async def job(
        self, stages: Sequence[Stage], video_id: str | None = None, timeout: float | None = None
    ) -> str:
        job, _ = await self.store.create_job(
            OWNER,
            video_id=video_id or await self.video(),
            source_url=None,
            spec=pipeline_pb2.PipelineSpec(),
            request_id="",
            labels={},
            stages=[StagePlan(s.name, s.depends_on, "PENDING") for s in stages],
            timeout=timedelta(seconds=timeout) if timeout is not None else None,
        )
        return job.id

    @contextlib.asynccontextmanager
    async def running(self, stages: Sequence[Stage]) -> AsyncIterator[Orchestrator]:
        orchestrator = Orchestrator(
            self.settings,
            Runs(self.sessions, f"test-{uuid.uuid4().hex[:6]}", purge_delay=timedelta(0)),
            stages,
        )
        task = asyncio.create_task(orchestrator.run())
        try:
            yield orchestrator
        finally:
            orchestrator.draining = True
            orchestrator.wake.set()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def until(self, job_id: str, done: Callable[[job_pb2.Job], bool]) -> job_pb2.Job:
        for _ in range(400):
            job = await self.store.get_job(OWNER, job_id)
            if done(job):
                return job
            await asyncio.sleep(0.05)
        raise AssertionError(f"job never reached the expected state: {job}")

    async def finished(self, job_id: str) -> job_pb2.Job:
        return await self.until(
            job_id,
            lambda j: (
                j.state
                in (
                    job_pb2.JOB_STATE_SUCCEEDED,
                    job_pb2.JOB_STATE_FAILED,
                    job_pb2.JOB_STATE_CANCELLED,
                )
            ),
        )

    async def events(self, job_id: str) -> list[job_pb2.JobEvent]:
        return await self.store.events_after(uuid.UUID(job_id), 0)

    async def keys(self, prefix: str) -> list[str]:
        return sorted(await self.objects.list_keys(prefix))


@pytest_asyncio.fixture
async def harness(database_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    settings = GatewaySettings(
        database_url=database_url,
        jwt_secret="x" * 32,
        storage_dir=tmp_path / "objects",
        retry_initial_backoff_seconds=0.05,
        retry_max_backoff_seconds=0.2,
        stage_max_attempts=3,
        poll_seconds=0.1,
        progress_interval_seconds=0,
        max_concurrent_jobs=2,
    )
    engine = make_engine(database_url)
    sessions = make_sessionmaker(engine)
    objects = LocalObjectStore(tmp_path / "objects")
    store = Store(sessions, purge_delay=timedelta(0), slots_per_worker=2)
    try:
        yield Harness(sessions, store, objects, settings)
    finally:
        await objects.close()
        await engine.dispose()


def stage_of(job: job_pb2.Job, name: str) -> job_pb2.Stage:
    return next(s for s in job.stages if s.name == name)


# -- retries ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        Unavailable("transcode is restarting"),
        DeadlineExceeded("call timed out"),
        ResourceExhausted("all slots busy", reason="BUSY"),
    ],
    ids=["unavailable", "deadline", "exhausted"],
)
async def test_transient_failures_are_retried_and_recorded(
    harness: Harness, error: ReelmillError
) -> None:
    stage = Scripted("transcode", harness.objects, failures=[error, error])
    job_id = await harness.job([stage])
    async with harness.running([stage]):
        job = await harness.finished(job_id)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED
    assert stage.calls == 3
    transcode = stage_of(job, "transcode")
    assert transcode.attempts == 3
    assert transcode.state == job_pb2.STAGE_STATE_SUCCEEDED
    assert not transcode.HasField("error")  # cleared once an attempt succeeded
    retrying = [
        e.stage_updated
        for e in await harness.events(job_id)
        if e.WhichOneof("payload") == "stage_updated"
        and e.stage_updated.stage.state == job_pb2.STAGE_STATE_RETRYING
    ]
    assert len(retrying) == 2
    assert retrying[0].stage.error.code == error.code.name
    assert retrying[0].stage.error.reason == error.reason
    assert "retrying in" in retrying[0].message


async def test_stage_attempts_and_retries_are_measured(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    monkeypatch.setattr(gateway.metrics, "instruments", GatewayMetrics(provider.get_meter("test")))
    stage = Scripted("transcode", harness.objects, failures=[Unavailable("down")] * 2)
    job_id = await harness.job([stage])
    async with harness.running([stage]):
        assert (await harness.finished(job_id)).state == job_pb2.JOB_STATE_SUCCEEDED
    found: dict[tuple[str, ...], Any] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    key = (metric.name, *sorted(f"{k}={v}" for k, v in point.attributes.items()))
                    found[key] = point
    provider.shutdown()
    duration = "reelmill.stage.duration"
    assert found[(duration, "outcome=failed", "stage=transcode")].count == 2
    assert found[(duration, "outcome=succeeded", "stage=transcode")].count == 1
    assert found[("reelmill.stage.retries", "code=UNAVAILABLE", "stage=transcode")].value == 2


async def test_permanent_failure_is_not_retried(harness: Harness) -> None:
    stage = Scripted(
        "probe", harness.objects, failures=[InvalidArgument("not a video", reason="NOT_A_VIDEO")]
    )
    job_id = await harness.job([stage])
    async with harness.running([stage]):
        job = await harness.finished(job_id)
    assert job.state == job_pb2.JOB_STATE_FAILED
    assert stage.calls == 1
    assert stage_of(job, "probe").attempts == 1
    assert job.error.code == "INVALID_ARGUMENT" and job.error.reason == "NOT_A_VIDEO"


async def test_exhausted_retries_fail_the_job_with_the_last_error(harness: Harness) -> None:
    failures: list[ReelmillError] = [
        Unavailable("first"),
        Unavailable("second"),
        Unavailable("third", reason="STILL_DOWN"),
    ]
    stage = Scripted("transcribe", harness.objects, failures=failures)
    job_id = await harness.job([stage])
    async with harness.running([stage]):
        job = await harness.finished(job_id)
    assert job.state == job_pb2.JOB_STATE_FAILED
    assert stage.calls == 3  # stage_max_attempts
    transcribe = stage_of(job, "transcribe")
    assert transcribe.attempts == 3
    assert transcribe.state == job_pb2.STAGE_STATE_FAILED
    assert (transcribe.error.reason, transcribe.error.message) == ("STILL_DOWN", "third")
    assert job.error.reason == "STILL_DOWN"


def test_retry_policy() -> None:
    assert retryable(Unavailable("x"))
    assert retryable(DeadlineExceeded("x"))
    assert retryable(ResourceExhausted("x"))
    assert not retryable(ResourceExhausted("too big", reason="DOWNLOAD_TOO_LARGE"))
    assert not retryable(DeadlineExceeded("slow", reason="DOWNLOAD_TIMEOUT"))
    assert not retryable(DeadlineExceeded("no budget left", reason="STAGE_TIMEOUT"))
    for permanent in (InvalidArgument("x"), FailedPrecondition("x"), NotFound("x"), Internal("x")):
        assert not retryable(permanent)


def test_backoff_is_capped_and_jittered(harness: Harness) -> None:
    settings = harness.settings.model_copy(
        update={"retry_initial_backoff_seconds": 1.0, "retry_max_backoff_seconds": 8.0}
    )
    orchestrator = Orchestrator(settings, Runs(harness.sessions, "w"), [])
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 8.0)]:
        delays = {orchestrator.retry_backoff.delay(attempt) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays), (attempt, delays)
        assert len(delays) > 1  # jittered


# -- deadline --------------------------------------------------------------------------------


async def test_job_deadline_fails_the_job_and_stops_its_stage(harness: Harness) -> None:
    stage = Scripted("transcode", harness.objects, seconds=30)
    job_id = await harness.job([stage], timeout=1.0)
    created = await harness.store.get_job(OWNER, job_id)
    assert created.deadline.ToDatetime() > created.create_time.ToDatetime()
    async with harness.running([stage]):
        job = await harness.finished(job_id)
    assert job.state == job_pb2.JOB_STATE_FAILED
    assert (job.error.code, job.error.reason) == ("DEADLINE_EXCEEDED", "JOB_DEADLINE_EXCEEDED")
    assert stage_of(job, "transcode").state == job_pb2.STAGE_STATE_CANCELLED


@dataclass
class Slow(Stage):
    """A stage whose work takes ``needs`` seconds and that honours its call's deadline as a
    service does: past ``ctx.timeout`` it gives up with DEADLINE_EXCEEDED."""

    name: str
    needs: float
    timeouts: list[float] = field(default_factory=list)
    depends_on: tuple[str, ...] = ()

    async def run(self, ctx: StageContext) -> StageResult:
        self.timeouts.append(ctx.timeout)
        try:
            await asyncio.wait_for(asyncio.sleep(self.needs), ctx.timeout)
        except TimeoutError:
            raise DeadlineExceeded("Deadline Exceeded") from None
        return StageResult(outputs={"ok": True})


async def test_an_attempt_that_used_its_whole_budget_is_retried_with_twice_the_budget(
    harness: Harness,
) -> None:
    stage = Slow("transcode", needs=0.6)
    job_id = await harness.job([stage])
    harness.settings = harness.settings.model_copy(update={"stage_timeout_seconds": 0.4})
    async with harness.running([stage]):
        job = await harness.finished(job_id)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED, job.error
    assert stage.timeouts == [0.4, 0.8]
    assert stage_of(job, "transcode").attempts == 2


async def test_a_stage_bounded_by_the_job_deadline_is_not_retried_with_the_same_budget(
    harness: Harness,
) -> None:
    # The first attempt gets its 3 s budget (the job has 4 s); it times out with under a
    # second of the job left: a second attempt could only have less, so there is none.
    stage = Slow("transcode", needs=60)
    job_id = await harness.job([stage], timeout=4.0)
    harness.settings = harness.settings.model_copy(update={"stage_timeout_seconds": 3.0})
    async with harness.running([stage]):
        job = await harness.finished(job_id)
    assert job.state == job_pb2.JOB_STATE_FAILED
    assert (job.error.code, job.error.reason) == ("DEADLINE_EXCEEDED", "STAGE_TIMEOUT")
    assert len(stage.timeouts) == 1 and 2.0 < stage.timeouts[0] <= 3.0
    assert stage_of(job, "transcode").attempts == 1


async def test_an_early_deadline_exceeded_is_an_ordinary_transient_failure(
    harness: Harness,
) -> None:
    stage = Scripted("transcode", harness.objects, failures=[DeadlineExceeded("upstream")])
    job_id = await harness.job([stage])
    async with harness.running([stage]):
        job = await harness.finished(job_id)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED
    assert stage_of(job, "transcode").attempts == 2


# -- purges ----------------------------------------------------------------------------------


async def test_failed_job_keeps_recorded_artifacts_and_loses_partial_ones(
    harness: Harness,
) -> None:
    probe = Scripted("probe", harness.objects)
    transcode = Scripted(
        "transcode",
        harness.objects,
        depends_on=("probe",),
        failures=[InvalidArgument("broken stream")],
        leaves_partial=True,
    )
    job_id = await harness.job([probe, transcode])
    async with harness.running([probe, transcode]):
        job = await harness.finished(job_id)
    assert job.state == job_pb2.JOB_STATE_FAILED
    prefix = f"jobs/{job_id}/"
    assert await harness.keys(prefix) == [
        f"{prefix}probe/out.bin",
        f"{prefix}transcode/partial.bin",
    ]

    result = await Purger(harness.sessions, harness.objects, interval=1).sweep()
    assert (result.purges, result.objects) == (1, 1)
    assert await harness.keys(prefix) == [f"{prefix}probe/out.bin"]
    assert [a.name for a in (await harness.store.get_job(OWNER, job_id)).artifacts] == [
        "probe/out.bin"
    ]
    assert (await Purger(harness.sessions, harness.objects, interval=1).sweep()).purges == 0


async def test_purge_waits_for_its_delay(harness: Harness) -> None:
    stage = Scripted("probe", harness.objects, seconds=30)
    store = Store(harness.sessions, purge_delay=timedelta(hours=1))
    job_id = await harness.job([stage])
    await harness.objects.put_bytes(f"jobs/{job_id}/probe/late.bin", b"x", content_type="x/y")
    await store.cancel_job(OWNER, job_id)
    assert (await Purger(harness.sessions, harness.objects, interval=1).sweep()).purges == 0
    assert await harness.keys(f"jobs/{job_id}/") == [f"jobs/{job_id}/probe/late.bin"]


async def test_cancelled_job_stops_and_leaves_nothing(harness: Harness) -> None:
    stage = Scripted("transcode", harness.objects, seconds=30)
    job_id = await harness.job([stage])
    async with harness.running([stage]) as orchestrator:
        await harness.until(job_id, lambda j: j.state == job_pb2.JOB_STATE_RUNNING)
        await harness.objects.put_bytes(
            f"jobs/{job_id}/transcode/seg_0.ts", b"x", content_type="x/y"
        )
        await harness.store.cancel_job(OWNER, job_id)
        orchestrator.on_cancelled(job_id)  # the NOTIFY a gateway would hear
        for _ in range(100):
            if not orchestrator.running:
                break
            await asyncio.sleep(0.05)
        assert not orchestrator.running
    await Purger(harness.sessions, harness.objects, interval=1).sweep()
    assert await harness.keys(f"jobs/{job_id}/") == []


async def test_delete_video_cancels_its_jobs_and_purges_everything(harness: Harness) -> None:
    video_id = await harness.video()
    other_video = await harness.video()
    done_stage = Scripted("probe", harness.objects)
    finished_job = await harness.job([done_stage], video_id=video_id)
    async with harness.running([done_stage]):
        assert (await harness.finished(finished_job)).state == job_pb2.JOB_STATE_SUCCEEDED
    queued_job = await harness.job([done_stage], video_id=video_id)
    untouched_job = await harness.job([done_stage], video_id=other_video)

    cancelled, artifacts = await harness.store.delete_video(OWNER, video_id)
    assert (cancelled, artifacts) == (1, 1)
    with pytest.raises(NotFound):
        await harness.store.get_video(OWNER, video_id)
    for job_id in (finished_job, queued_job):
        with pytest.raises(NotFound):
            await harness.store.get_job(OWNER, job_id)
    await harness.store.get_job(OWNER, untouched_job)
    with pytest.raises(NotFound):  # not twice
        await harness.store.delete_video(OWNER, video_id)

    await Purger(harness.sessions, harness.objects, interval=1).sweep()
    assert await harness.keys(f"videos/{video_id}/") == []
    assert await harness.keys(f"jobs/{finished_job}/") == []
    assert await harness.keys(f"videos/{other_video}/") == [f"videos/{other_video}/source"]


async def test_another_owner_cannot_delete_a_video(harness: Harness) -> None:
    video_id = await harness.video()
    with pytest.raises(NotFound):
        await harness.store.delete_video("mallory", video_id)
    await harness.store.get_video(OWNER, video_id)


# -- estimated start -------------------------------------------------------------------------


def test_estimated_wait() -> None:
    assert estimated_wait(position=1, running=0, slots=2, mean_seconds=60) == 0
    assert estimated_wait(position=1, running=1, slots=2, mean_seconds=60) == 0
    assert estimated_wait(position=1, running=2, slots=2, mean_seconds=60) == 30
    assert estimated_wait(position=3, running=2, slots=2, mean_seconds=60) == 90
    assert estimated_wait(position=3, running=4, slots=4, mean_seconds=60) == 45


async def test_queued_job_has_position_and_estimated_start(harness: Harness) -> None:
    stage = Scripted("probe", harness.objects)
    # History: two jobs that took 100 s each.
    for _ in range(2):
        job_id = await harness.job([stage])
        async with harness.sessions.begin() as session:
            await session.execute(
                update(models.Job)
                .where(models.Job.id == uuid.UUID(job_id))
                .values(
                    state="SUCCEEDED",
                    start_time=text("now() - interval '100 seconds'"),
                    end_time=text("now()"),
                )
            )
    queued = [await harness.job([stage]) for _ in range(3)]
    jobs = [await harness.store.get_job(OWNER, job_id) for job_id in queued]
    assert [j.queue_position for j in jobs] == [1, 2, 3]
    # Two slots (one worker assumed): the first two start now; the third once one job has
    # finished, at two jobs per 100 s.
    waits = [
        (j.estimated_start_time.ToDatetime() - j.create_time.ToDatetime()).total_seconds()
        for j in jobs
    ]
    assert waits[0] < 5 and waits[1] < 5
    assert 45 < waits[2] < 55


# -- a run whose outcome cannot be recorded --------------------------------------------------


class UnrecordableFinish(Runs):
    """Runs whose ``finish`` of one job fails twice (as SUCCEEDED, then as FAILED: internal
    error) with an error that is no disconnect, so nothing retries it."""

    def __init__(self, *args: Any, failing: uuid.UUID, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failing = failing
        self.failures = 0

    async def finish(
        self, job_id: uuid.UUID, state: str, error: job_pb2.JobError | None = None
    ) -> None:
        if job_id == self.failing and self.failures < 2:
            self.failures += 1
            raise RuntimeError("the outcome could not be written")
        await super().finish(job_id, state, error)


async def test_a_job_whose_end_cannot_be_recorded_does_not_stop_the_others(
    harness: Harness,
) -> None:
    first = Scripted("probe", harness.objects)
    unlucky = await harness.job([first])
    other = await harness.job([first])
    runs = UnrecordableFinish(
        harness.sessions, "test-unrecordable", purge_delay=timedelta(0), failing=uuid.UUID(unlucky)
    )
    settings = harness.settings.model_copy(update={"lease_seconds": 2.0})
    orchestrator = Orchestrator(settings, runs, [first])
    task = asyncio.create_task(orchestrator.run())
    try:
        done = await harness.finished(other)
        assert done.state == job_pb2.JOB_STATE_SUCCEEDED
        # The unlucky job stays claimed until its lease expires, then is resumed (its stage is
        # already done) and finished; the claim loop kept going all along.
        resumed = await harness.finished(unlucky)
        assert resumed.state == job_pb2.JOB_STATE_SUCCEEDED
        assert runs.failures == 2
        assert not task.done()
    finally:
        orchestrator.draining = True
        orchestrator.wake.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
