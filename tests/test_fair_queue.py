"""The queue's order on a real Postgres: priority orders an owner's own jobs, owners take turns
(fewest jobs held first, then the one served least recently), abandoned jobs come first, the
queue position GetJob shows follows the same order, and the claim runs on indexes over a
table of 100,000 jobs."""

# ruff: noqa: F811 (the tests take the imported ``harness`` fixture by its name)

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import bindparam, text, update
from sqlalchemy.dialects.postgresql import ARRAY, UUID

from gateway.db import models
from gateway.orchestrator import Orchestrator
from gateway.queue import CLAIM, queue_position_sql
from gateway.runs import Runs
from gateway.store import StagePlan
from reelmill.v1 import job_pb2, pipeline_pb2
from tests.test_orchestrator import (
    Harness,
    Scripted,
    harness,  # noqa: F401
)

# harness: the orchestrator tests' fixture, which the tests below take by its name.
from tests.test_reuse import upload

LEASE = timedelta(seconds=30)


async def add_job(h: Harness, owner: str, priority: int = 0, stages: tuple[str, ...] = ()) -> str:
    job, _ = await h.store.create_job(
        owner,
        video_id=await upload(h, owner),
        source_url=None,
        spec=pipeline_pb2.PipelineSpec(),
        request_id="",
        labels={},
        stages=[StagePlan(name, (), "PENDING") for name in stages],
        priority=priority,
    )
    return job.id


async def claim_one(runs: Runs) -> str:
    claimed = await runs.claim(1, LEASE)
    assert len(claimed) == 1
    return str(claimed[0].id)


async def position(h: Harness, owner: str, job_id: str) -> int:
    return (await h.store.get_job(owner, job_id)).queue_position


async def test_priority_orders_an_owners_jobs_and_owners_take_turns(harness: Harness) -> None:
    h = harness
    a = [await add_job(h, "ann", p) for p in (0, 0, 5, 0, -3)]
    b = [await add_job(h, "bob")]
    c = [await add_job(h, "cyd"), await add_job(h, "cyd")]
    runs = Runs(h.sessions, "worker-1")
    order = []
    for _ in range(8):
        job_id = await claim_one(runs)
        order.append(job_id)
        await runs.finish(uuid.UUID(job_id), "SUCCEEDED")  # nothing held: only recency decides
    assert await runs.claim(1, LEASE) == []
    # Nobody served yet: ann (by name) with her priority-5 job, then bob, then cyd. Then the
    # least recently served first: ann again, cyd, and ann's rest in her own order.
    assert order == [a[2], b[0], c[0], a[0], c[1], a[1], a[3], a[4]]


async def test_a_big_batch_does_not_starve_another_owners_single_job(harness: Harness) -> None:
    h = harness
    batch = [await add_job(h, "ann") for _ in range(20)]
    runs = Runs(h.sessions, "worker-1")
    held = [str(j.id) for j in await runs.claim(4, LEASE)]
    assert held == batch[:4] or set(held) == set(batch[:4])
    single = await add_job(h, "bob")
    # Bob holds nothing, ann holds 4: bob's job is next, and GetJob says so.
    assert await position(h, "bob", single) == 1
    assert await position(h, "ann", batch[4]) == 2
    assert await claim_one(runs) == single
    await runs.finish(uuid.UUID(held[0]), "SUCCEEDED")
    assert await claim_one(runs) == batch[4]


async def test_claim_order_with_held_jobs_and_queue_positions(harness: Harness) -> None:
    h = harness
    ann = [await add_job(h, "ann") for _ in range(4)]
    runs = Runs(h.sessions, "worker-1")
    assert await claim_one(runs) == ann[0]  # ann holds one job now
    bob = [await add_job(h, "bob") for _ in range(2)]
    # Turns: bob 1, 2 (never served); ann 2, 3, 4 (one held). Bob wins the tie at turn 2.
    positions = [await position(h, "bob", j) for j in bob]
    positions += [await position(h, "ann", j) for j in ann[1:]]
    assert positions == [1, 2, 3, 4, 5]
    assert (await h.store.get_job("ann", ann[0])).queue_position == 0  # claimed
    # The job at position 1 is the one the claim takes.
    assert await claim_one(runs) == bob[0]


async def test_positions_beyond_the_exact_ones_are_estimates(harness: Harness) -> None:
    """Owners take turns (never served: by name): ann 1, bob 1, cyd 1, ann 2, ... With positions
    exact up to 5, the first five are exact and the others estimates above 5 (here, with
    owners of the same size, even right)."""
    h = harness
    jobs = {owner: [await add_job(h, owner) for _ in range(4)] for owner in ("ann", "bob", "cyd")}
    order = [jobs[owner][i] for i in range(4) for owner in ("ann", "bob", "cyd")]

    async def positions(exact: int) -> list[int]:
        async with h.sessions() as session:
            return [
                int(
                    (await session.execute(text(queue_position_sql(exact)), {"id": j})).scalar_one()
                )
                for j in order
            ]

    assert await positions(10_000) == list(range(1, 13))
    assert [await position(h, "cyd", jobs["cyd"][3])] == [12]  # GetJob's, the same
    estimated = await positions(5)
    assert estimated[:6] == [1, 2, 3, 4, 5, 6]  # counted in full: within the exact range
    assert all(p > 5 for p in estimated[6:]), estimated
    assert estimated[-1] == 12  # ann's 4 ahead of it, scaled to the three owners


async def test_abandoned_jobs_come_first(harness: Harness) -> None:
    h = harness
    waiting = await add_job(h, "ann")
    lost = await add_job(h, "bob")
    gone = Runs(h.sessions, "worker-gone")
    async with h.sessions.begin() as session:  # claimed by a worker that then died
        await session.execute(
            update(models.Job)
            .where(models.Job.id == uuid.UUID(lost))
            .values(
                lease_owner=gone.worker,
                lease_expires_at=text("now() - interval '1 second'"),
                state="RUNNING",
            )
        )
    assert await position(h, "ann", waiting) == 2
    runs = Runs(h.sessions, "worker-1")
    assert await claim_one(runs) == lost
    assert await claim_one(runs) == waiting


async def test_a_busy_job_is_not_claimed_by_the_worker_still_ending_it(harness: Harness) -> None:
    h = harness
    job_id = await add_job(h, "ann")
    runs = Runs(h.sessions, "worker-1")
    assert await runs.claim(1, LEASE, busy=[uuid.UUID(job_id)]) == []
    assert await claim_one(runs) == job_id


async def test_priority_is_bounded(harness: Harness) -> None:
    h = harness
    from sqlalchemy.exc import IntegrityError

    with pytest.raises(IntegrityError, match="ck_jobs_priority"):
        await add_job(h, "ann", priority=101)


async def test_orchestrator_runs_another_owners_job_before_the_rest_of_a_batch(
    harness: Harness,
) -> None:
    h = harness
    stage = Scripted("probe", h.objects, seconds=0.3)
    settings = h.settings.model_copy(update={"max_concurrent_jobs": 1})
    batch = [await add_job(h, "ann", stages=("probe",)) for _ in range(6)]
    orchestrator = Orchestrator(settings, Runs(h.sessions, "worker-1"), [stage])
    task = asyncio.create_task(orchestrator.run())
    try:
        await h_until_running(h, "ann", batch[0])
        single = await add_job(h, "bob", stages=("probe",))
        done = await h_until_done(h, "bob", single)
        started = [
            (await h.store.get_job("ann", j)).start_time.ToDatetime()
            for j in batch[1:3]
            if (await h.store.get_job("ann", j)).HasField("start_time")
        ]
        # Bob's job ran right after the one that was running: before ann's second.
        assert all(done.start_time.ToDatetime() < s for s in started)
        assert len(started) <= 1
    finally:
        orchestrator.draining = True
        orchestrator.wake.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def h_until_running(h: Harness, owner: str, job_id: str) -> None:
    for _ in range(200):
        if (await h.store.get_job(owner, job_id)).state == job_pb2.JOB_STATE_RUNNING:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the job never started")


async def h_until_done(h: Harness, owner: str, job_id: str) -> job_pb2.Job:
    for _ in range(400):
        job = await h.store.get_job(owner, job_id)
        if job.state == job_pb2.JOB_STATE_SUCCEEDED:
            return job
        await asyncio.sleep(0.02)
    raise AssertionError("the job never finished")


async def test_the_claim_uses_indexes_on_100k_jobs(harness: Harness) -> None:
    """100,000 queued jobs of 100 owners, 20 of them held: the claim's plan reads indexes,
    never the whole table."""
    h = harness
    async with h.sessions.begin() as session:
        await session.execute(
            text(
                """
                INSERT INTO jobs (id, owner, spec, state, labels, priority, create_time,
                                  lease_owner, lease_expires_at, claim_time)
                SELECT gen_random_uuid(), 'owner-' || (n % 100), '{}', 'QUEUED', '{}',
                       (n % 7) - 3, now() - make_interval(secs => n),
                       CASE WHEN n <= 20 THEN 'w' END,
                       CASE WHEN n <= 20 THEN now() + interval '1 minute' END,
                       CASE WHEN n <= 20 THEN now() END
                  FROM generate_series(1, 100000) AS n
                """
            )
        )
        await session.execute(text("ANALYZE jobs"))
    async with h.sessions.begin() as session:
        plan = "\n".join(
            row[0]
            for row in await session.execute(
                text("EXPLAIN (ANALYZE, COSTS OFF) " + CLAIM.text).bindparams(
                    bindparam("busy", type_=ARRAY(UUID(as_uuid=True)))
                ),
                {"worker": "x", "lease": 30, "limit": 4, "busy": []},
            )
        )
        await session.rollback()
    assert "Seq Scan on jobs" not in plan, plan
    assert "ix_jobs_waiting" in plan and "ix_jobs_leased" in plan, plan
