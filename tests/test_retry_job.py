"""RetryJob against a real Postgres and object store, with scripted stages: a failed or
cancelled job runs again skipping the stages that succeeded (their artifacts kept), its other
stages get a fresh attempt budget, its events continue the same sequence, its pending purges are
cancelled in the retry's transaction (one being carried out is waited for), and it gets a fresh
deadline. Other states are refused."""

# ruff: noqa: F811 (the tests take the imported ``harness`` fixture by its name)

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import func, select

from gateway.db import models
from gateway.purges import Purger
from reelmill.v1 import job_pb2
from runtime.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)

# harness: the orchestrator tests' fixture, which the tests below take by its name.
from tests.test_orchestrator import (
    OWNER,
    Harness,
    Scripted,
    Slow,
    harness,  # noqa: F401
    stage_of,
)


async def purges_of(h: Harness, job_id: str) -> int:
    async with h.sessions() as session:
        count = await session.scalar(
            select(func.count())
            .select_from(models.Purge)
            .where(models.Purge.job_id == uuid.UUID(job_id))
        )
    return int(count or 0)


def sequences(events: list[job_pb2.JobEvent]) -> list[int]:
    return [e.sequence for e in events]


def states(events: list[job_pb2.JobEvent]) -> list[str]:
    return [
        job_pb2.JobState.Name(e.job_state_changed.state)
        for e in events
        if e.WhichOneof("payload") == "job_state_changed"
    ]


async def test_retry_skips_what_succeeded_and_continues_the_sequence(harness: Harness) -> None:
    h = harness
    probe = Scripted("probe", h.objects)
    transcode = Scripted(
        "transcode",
        h.objects,
        depends_on=("probe",),
        failures=[InvalidArgument("broken stream")],
        leaves_partial=True,
    )
    job_id = await h.job([probe, transcode])
    async with h.running([probe, transcode]):
        failed = await h.finished(job_id)
        assert failed.state == job_pb2.JOB_STATE_FAILED
        assert await purges_of(h, job_id) == 1
        kept = await h.objects.stat(f"jobs/{job_id}/probe/out.bin")
        before = await h.events(job_id)

        retried = await h.store.retry_job(OWNER, job_id)
        assert retried.state == job_pb2.JOB_STATE_QUEUED
        assert not retried.HasField("error") and not retried.HasField("end_time")
        assert stage_of(retried, "probe").state == job_pb2.STAGE_STATE_SUCCEEDED
        assert stage_of(retried, "transcode").state == job_pb2.STAGE_STATE_PENDING
        assert stage_of(retried, "transcode").attempts == 0
        # The purge its failure queued is gone with the retry (same transaction).
        assert await purges_of(h, job_id) == 0
        done = await h.finished(job_id)

    assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done.error
    assert probe.calls == 1  # not run again
    assert transcode.calls == 2
    assert stage_of(done, "transcode").attempts == 1
    assert {a.name for a in done.artifacts} == {"probe/out.bin", "transcode/out.bin"}
    assert (await h.objects.stat(f"jobs/{job_id}/probe/out.bin")).sha256 == kept.sha256
    events = await h.events(job_id)
    assert events[: len(before)] == before
    assert sequences(events) == list(range(1, len(events) + 1))
    assert states(events) == [
        "JOB_STATE_QUEUED",
        "JOB_STATE_RUNNING",
        "JOB_STATE_FAILED",
        "JOB_STATE_QUEUED",
        "JOB_STATE_RUNNING",
        "JOB_STATE_SUCCEEDED",
    ]
    # Nothing is purged later: every artifact survives a sweep.
    await Purger(h.sessions, h.objects, interval=1).sweep()
    for artifact in done.artifacts:
        assert await h.objects.exists(artifact.object.key)


async def test_a_retried_stage_gets_a_fresh_attempt_budget(harness: Harness) -> None:
    h = harness  # stage_max_attempts = 3
    flaky = Scripted("transcribe", h.objects, failures=[Unavailable("down")] * 3)
    job_id = await h.job([flaky])
    async with h.running([flaky]):
        failed = await h.finished(job_id)
        assert failed.state == job_pb2.JOB_STATE_FAILED
        assert stage_of(failed, "transcribe").attempts == 3
        flaky.failures = [Unavailable("down")] * 2
        await h.store.retry_job(OWNER, job_id)
        done = await h.finished(job_id)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done.error
    assert stage_of(done, "transcribe").attempts == 3  # of the new budget
    assert flaky.calls == 6


async def test_a_cancelled_job_runs_again(harness: Harness) -> None:
    h = harness
    probe = Scripted("probe", h.objects)
    slow = Scripted("transcode", h.objects, depends_on=("probe",), seconds=30)
    job_id = await h.job([probe, slow])
    async with h.running([probe, slow]) as orchestrator:
        await h.until(
            job_id,
            lambda j: stage_of(j, "transcode").state == job_pb2.STAGE_STATE_RUNNING,
        )
        await h.store.cancel_job(OWNER, job_id)
        orchestrator.on_cancelled(job_id)
        slow.seconds = 0
        # Retried at once, while this gateway's run may still be ending: it is not claimed
        # twice.
        await h.store.retry_job(OWNER, job_id)
        done = await h.finished(job_id)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done.error
    assert probe.calls == 1
    assert states(await h.events(job_id))[-4:] == [
        "JOB_STATE_CANCELLED",
        "JOB_STATE_QUEUED",
        "JOB_STATE_RUNNING",
        "JOB_STATE_SUCCEEDED",
    ]


async def test_retry_waits_for_a_purge_being_carried_out(harness: Harness) -> None:
    h = harness
    failing = Scripted("probe", h.objects, failures=[InvalidArgument("no")], leaves_partial=True)
    job_id = await h.job([failing])
    async with h.running([failing]):
        assert (await h.finished(job_id)).state == job_pb2.JOB_STATE_FAILED
    async with h.sessions.begin() as session:
        # A purger holds the row (it is deleting objects).
        await session.execute(
            select(models.Purge).where(models.Purge.job_id == uuid.UUID(job_id)).with_for_update()
        )
        retry = asyncio.create_task(h.store.retry_job(OWNER, job_id))
        done, _ = await asyncio.wait([retry], timeout=0.5)
        assert not done  # blocked on the purge's row
    job = await retry
    assert job.state == job_pb2.JOB_STATE_QUEUED
    assert await purges_of(h, job_id) == 0


async def test_a_retried_job_gets_a_fresh_deadline(harness: Harness) -> None:
    h = harness
    stage = Slow("transcode", needs=30)
    job_id = await h.job([stage], timeout=1.0)
    async with h.running([stage]):
        failed = await h.finished(job_id)
    assert failed.error.reason == "JOB_DEADLINE_EXCEEDED"
    retried = await h.store.retry_job(OWNER, job_id)
    old, new = failed.deadline.ToDatetime(), retried.deadline.ToDatetime()
    assert new > old
    # The job's timeout (1 s) again, counted from the retry.
    assert abs((new - retried.update_time.ToDatetime()).total_seconds() - 1.0) < 0.1


@pytest.mark.parametrize("state", ["QUEUED", "RUNNING", "SUCCEEDED"])
async def test_only_failed_or_cancelled_jobs_are_retried(harness: Harness, state: str) -> None:
    h = harness
    job_id = await h.job([Scripted("probe", h.objects)])
    async with h.sessions.begin() as session:
        job = await session.get_one(models.Job, uuid.UUID(job_id))
        job.state = state
    with pytest.raises(FailedPrecondition) as refused:
        await h.store.retry_job(OWNER, job_id)
    assert refused.value.reason == "JOB_NOT_RETRYABLE"
    assert state in refused.value.message
    assert len(await h.events(job_id)) == 1  # nothing appended


async def test_retry_is_scoped_by_owner_and_by_the_active_job_limit(harness: Harness) -> None:
    h = harness
    failing = Scripted("probe", h.objects, failures=[InvalidArgument("no")])
    job_id = await h.job([failing])
    async with h.running([failing]):
        assert (await h.finished(job_id)).state == job_pb2.JOB_STATE_FAILED
    with pytest.raises(NotFound):
        await h.store.retry_job("mallory", job_id)
    await h.job([failing])  # one active job
    with pytest.raises(ResourceExhausted) as full:
        await h.store.retry_job(OWNER, job_id, max_active=1)
    assert full.value.reason == "TOO_MANY_ACTIVE_JOBS"
    assert (await h.store.get_job(OWNER, job_id)).state == job_pb2.JOB_STATE_FAILED
