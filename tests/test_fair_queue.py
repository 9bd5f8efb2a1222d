"""The queue's order on a real Postgres: priority orders an owner's own jobs, owners take turns
(fewest jobs held first, then the one served least recently), abandoned jobs come first, the
queue position GetJob shows follows the same order, and the claim runs on indexes over a
table of 100,000 jobs."""

# ruff: noqa: F811 (the tests take the imported ``harness`` fixture by its name)

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import bindparam, select, text, update
from sqlalchemy.dialects.postgresql import ARRAY, UUID

from gateway.db import models
from gateway.orchestrator import Orchestrator
from gateway.queue import CLAIM, queue_position_sql
from gateway.runs import Runs
from gateway.store import StagePlan
from reelmill.v1 import job_pb2, pipeline_pb2
from tests.test_gateway_store import blocked_or_done
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


async def test_positions_follow_the_turns_and_an_owners_own_depth_is_capped(
    harness: Harness,
) -> None:
    """Owners take turns (never served: by name): ann 1, bob 1, cyd 1, ann 2, ... Every
    position is exact; a job deeper in its own owner's queue than ``exact`` counts as that
    owner's ``exact``-th."""
    h = harness
    jobs = {owner: [await add_job(h, owner) for _ in range(4)] for owner in ("ann", "bob", "cyd")}
    order = [jobs[owner][i] for i in range(4) for owner in ("ann", "bob", "cyd")]

    async def positions(exact: int, ids: list[str]) -> list[int]:
        async with h.sessions() as session:
            return [
                int(
                    (await session.execute(text(queue_position_sql(exact)), {"id": j})).scalar_one()
                )
                for j in ids
            ]

    assert await positions(10_000, order) == list(range(1, 13))
    assert [await position(h, "cyd", jobs["cyd"][3])] == [12]  # GetJob's, the same
    # cyd's 3rd and 4th count as her 2nd: the position of her 2nd.
    assert await positions(2, jobs["cyd"]) == [3, 6, 6, 6]


async def summary(h: Harness) -> dict[str, tuple[int, Any]]:
    async with h.sessions() as session:
        rows = await session.scalars(select(models.JobQueueOwner))
        return {r.owner: (r.waiting, r.served) for r in rows if r.waiting}


async def recount(h: Harness, served: dict[str, float]) -> dict[str, tuple[int, Any]]:
    """The summary recounted from the jobs (``served``: the last claims seen, kept through
    deletions as the summary keeps them)."""
    async with h.sessions() as session:
        rows = await session.execute(
            text(
                """
                SELECT owner,
                       count(*) FILTER (WHERE state = 'QUEUED' AND lease_owner IS NULL) AS waiting,
                       max(claim_time) AS served
                  FROM jobs GROUP BY owner
                """
            )
        )
        counted = {}
        for r in rows:
            if r.served is not None:
                served[r.owner] = max(served.get(r.owner, float("-inf")), r.served.timestamp())
            if r.waiting:
                counted[r.owner] = (r.waiting, served.get(r.owner))
        return counted


async def dump(h: Harness) -> str:
    async with h.sessions() as session:
        rows = await session.execute(
            text(
                "SELECT left(id::text, 8), owner, priority, create_time, state, lease_owner, "
                "lease_expires_at < now(), claim_time FROM jobs "
                "ORDER BY owner, priority DESC, create_time, id"
            )
        )
        owners = await session.execute(text("SELECT * FROM job_queue_owners"))
        return "\n".join(map(str, [*rows, *owners]))


async def modelled_positions(h: Harness, served: dict[str, float]) -> dict[str, int]:
    """Every waiting job's position by the rule in ``gateway.queue``'s docstring, computed
    from the jobs in Python: abandoned jobs first, then turn (live jobs held + rank in the
    owner's own order), then the owner served least recently (never first), then by name.
    ``served`` carries each owner's last claim from call to call: it stays when the job that
    had it is deleted."""
    async with h.sessions() as session:
        rows = (
            await session.execute(
                text(
                    """
                    SELECT id::text, owner, priority, create_time, state, lease_owner,
                           lease_expires_at < now() AS expired, claim_time FROM jobs
                    """
                )
            )
        ).all()
    active = [r for r in rows if r.state in ("QUEUED", "RUNNING")]
    abandoned = sum(1 for r in active if r.lease_owner is not None and r.expired)
    live: dict[str, int] = {}
    for r in active:
        if r.lease_owner is not None and not r.expired:
            live[r.owner] = live.get(r.owner, 0) + 1
    for r in rows:
        if r.claim_time is not None:
            served[r.owner] = max(served.get(r.owner, float("-inf")), r.claim_time.timestamp())
    waiting: dict[str, list[Any]] = {}
    for r in active:
        if r.state == "QUEUED" and r.lease_owner is None:
            waiting.setdefault(r.owner, []).append(r)
    keys = []
    for owner, mine in waiting.items():
        mine.sort(key=lambda r: (-r.priority, r.create_time, r.id))
        for rank, r in enumerate(mine, 1):
            turn = live.get(owner, 0) + rank
            keys.append(((turn, served.get(owner, float("-inf")), owner, rank), r.id))
    keys.sort()
    return {job_id: abandoned + place for place, (_key, job_id) in enumerate(keys, 1)}


async def test_the_summary_and_positions_follow_every_change_to_the_jobs(
    harness: Harness,
) -> None:
    """Seeded random steps through the gateway's own code and plain SQL (jobs created one by
    one and many in one statement, claims of several owners' jobs at once, finishes, cancels,
    leases running out, deletions): after each, the triggers' summary equals a recount of the
    jobs, and every waiting job's GetJob position equals the rule computed in Python."""
    import random

    h = harness
    rng = random.Random(20261202)
    owners = ("ann", "bob", "cyd", "dee")
    workers = [Runs(h.sessions, f"worker-{i}") for i in range(2)]
    held: list[str] = []
    jobs: dict[str, str] = {}  # job id -> owner
    served: dict[str, float] = {}
    for step in range(70):
        action = rng.choice(
            ["create", "create", "many", "claim", "claim", "finish", "cancel", "expire", "delete"]
        )
        if action == "create":
            owner = rng.choice(owners)
            jobs[await add_job(h, owner, rng.randint(-2, 2))] = owner
        elif action == "many":
            owner = rng.choice(owners)
            async with h.sessions.begin() as session:
                created = await session.execute(
                    text(
                        """
                        INSERT INTO jobs (id, owner, spec, state, labels, priority, create_time)
                        SELECT gen_random_uuid(), :owner, '{}', 'QUEUED', '{}', n % 3 - 1,
                               now() + make_interval(secs => n)
                          FROM generate_series(1, :n) AS n
                        RETURNING id::text
                        """
                    ),
                    {"owner": owner, "n": rng.randint(2, 6)},
                )
                jobs.update({job_id: owner for job_id in created.scalars()})
        elif action == "claim":
            claimed = await rng.choice(workers).claim(rng.randint(1, 3), LEASE)
            held += [str(c.id) for c in claimed]
        elif action == "finish" and held:
            job_id = held.pop(rng.randrange(len(held)))
            async with h.sessions.begin() as session:
                await session.execute(
                    update(models.Job)
                    .where(models.Job.id == uuid.UUID(job_id))
                    .values(state=rng.choice(["SUCCEEDED", "FAILED"]), lease_owner=None,
                            lease_expires_at=None)
                )  # fmt: skip
        elif action == "cancel" and jobs:
            job_id = rng.choice(sorted(jobs))
            job = await h.store.get_job(jobs[job_id], job_id)
            if job.state in (job_pb2.JOB_STATE_QUEUED, job_pb2.JOB_STATE_RUNNING):
                await h.store.cancel_job(jobs[job_id], job_id)
        elif action == "expire" and held:
            async with h.sessions.begin() as session:
                await session.execute(
                    update(models.Job)
                    .where(models.Job.id == uuid.UUID(rng.choice(held)))
                    .values(lease_expires_at=text("now() - interval '1 second'"))
                )
        elif action == "delete" and jobs:
            owner = rng.choice(owners)
            async with h.sessions.begin() as session:
                deleted = await session.execute(
                    text("DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE owner = :owner "
                         "ORDER BY random() LIMIT 2) RETURNING id::text"),
                    {"owner": owner},
                )  # fmt: skip
                for job_id in deleted.scalars():
                    jobs.pop(job_id, None)
                    if job_id in held:
                        held.remove(job_id)
        expected_summary = await recount(h, served)
        shown_summary = {
            owner: (waiting, None if last is None else last.timestamp())
            for owner, (waiting, last) in (await summary(h)).items()
        }
        assert shown_summary == expected_summary, (step, action)
        expected = await modelled_positions(h, served)
        shown = {
            job_id: (await h.store.get_job(owner, job_id)).queue_position
            for job_id, owner in jobs.items()
            if job_id in expected
        }
        expected = {job_id: expected[job_id] for job_id in shown}
        assert shown == expected, (step, action, await dump(h))
    assert len(jobs) > 40 and held, "the steps did too little to show anything"


async def test_a_racing_claim_takes_the_next_jobs_in_the_queues_order(harness: Harness) -> None:
    """A claim while another replica's claim of 25 is not yet committed takes jobs 26-28 of the
    queue's order (GetJob's positions), with owners holding different numbers of jobs: the
    claim reads exactly the candidates it needs, its spares included, from each owner."""
    h = harness
    jobs = {owner: [await add_job(h, owner) for _ in range(20)] for owner in ("ann", "bob", "cyd")}
    held = jobs["ann"][:5] + jobs["cyd"][:2]  # ann holds 5 jobs, cyd 2, bob none
    async with h.sessions.begin() as session:
        await session.execute(
            update(models.Job)
            .where(models.Job.id.in_([uuid.UUID(j) for j in held]))
            .values(
                lease_owner="worker-0",
                lease_expires_at=text("now() + interval '1 hour'"),
                claim_time=text("now()"),
            )
        )
    waiting = [(owner, j) for owner, ids in jobs.items() for j in ids if j not in held]
    positions = {j: await position(h, owner, j) for owner, j in waiting}
    order = sorted(positions, key=positions.__getitem__)
    assert [positions[j] for j in order] == list(range(1, 54))
    params = {"worker": "worker-1", "lease": 30.0, "limit": 25, "busy": []}
    async with h.sessions.begin() as session:  # worker-1's claim, not yet committed
        first = {str(i) for i in (await session.execute(CLAIM, params)).scalars().all()}
        second_claim = asyncio.create_task(Runs(h.sessions, "worker-2").claim(3, LEASE))
        await blocked_or_done(second_claim, h.sessions)
    second = {str(job.id) for job in await second_claim}
    assert first == set(order[:25])
    assert second == set(order[25:28])


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
