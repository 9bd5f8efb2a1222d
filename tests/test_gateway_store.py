"""The gateway's state in a real Postgres: idempotent creation, pagination, cancel, claims,
leases, and the event journal with LISTEN/NOTIFY fan-out."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.events import EventHub
from gateway.journal import parse_event_notification
from gateway.queue import CLAIM
from gateway.runs import LeaseLost, Runs
from gateway.store import StagePlan, Store
from reelmill.v1 import job_pb2, media_pb2, pipeline_pb2
from runtime.errors import FailedPrecondition, InvalidArgument, NotFound

STAGES = [StagePlan("probe", (), "PENDING")]
LEASE = timedelta(seconds=30)


@pytest.fixture
def store(sessions: async_sessionmaker[AsyncSession]) -> Store:
    return Store(sessions)


async def add_video(store: Store, owner: str = "alice") -> str:
    video_id = str(uuid.uuid4())
    await store.add_video(
        owner,
        media_pb2.Video(
            id=video_id,
            filename="clip.mp4",
            content_type="video/mp4",
            size_bytes=10,
            sha256="0" * 64,
            object=media_pb2.ObjectRef(bucket="b", key=f"videos/{video_id}/source"),
        ),
    )
    return video_id


async def create(
    store: Store,
    video_id: str,
    owner: str = "alice",
    request_id: str = "",
    labels: dict[str, str] | None = None,
) -> tuple[job_pb2.Job, bool]:
    return await store.create_job(
        owner,
        video_id=video_id,
        source_url=None,
        spec=pipeline_pb2.PipelineSpec(),
        request_id=request_id,
        labels=labels or {},
        stages=STAGES,
    )


async def test_create_job_is_idempotent_per_owner(store: Store) -> None:
    video = await add_video(store)
    first, created = await create(store, video, request_id="r-1")
    again, created_again = await create(store, video, request_id="r-1")
    other, _ = await create(store, video, request_id="r-2")
    assert created and not created_again
    assert again.id == first.id
    assert other.id != first.id
    bob_video = await add_video(store, "bob")
    bobs, bob_created = await create(store, bob_video, owner="bob", request_id="r-1")
    assert bob_created and bobs.id != first.id


async def test_new_job_is_queued_with_its_first_event(store: Store) -> None:
    job, _ = await create(store, await add_video(store))
    assert job.state == job_pb2.JOB_STATE_QUEUED
    assert [s.name for s in job.stages] == ["probe"]
    assert job.queue_position == 1
    events = await store.events_after(uuid.UUID(job.id), 0)
    assert [e.sequence for e in events] == [1]
    assert events[0].job_state_changed.state == job_pb2.JOB_STATE_QUEUED


async def test_other_owners_resources_are_not_found(store: Store) -> None:
    video = await add_video(store)
    job, _ = await create(store, video)
    with pytest.raises(NotFound):
        await store.get_job("mallory", job.id)
    with pytest.raises(NotFound):
        await store.get_video("mallory", video)
    with pytest.raises(NotFound):
        await create(store, video, owner="mallory")
    with pytest.raises(NotFound):
        await store.cancel_job("mallory", job.id)
    with pytest.raises(InvalidArgument):
        await store.get_job("alice", "not-a-uuid")


async def test_list_jobs_pages_newest_first_without_overlap(store: Store) -> None:
    video = await add_video(store)
    created = [(await create(store, video, labels={"n": str(i % 2)}))[0].id for i in range(7)]
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        jobs, token = await store.list_jobs(
            "alice", size=3, token=token, states=[], labels={}, video_id=""
        )
        seen += [j.id for j in jobs]
        pages += 1
        if not token:
            break
    assert pages == 3
    assert seen == list(reversed(created))
    odd, _ = await store.list_jobs(
        "alice", size=50, token="", states=[], labels={"n": "1"}, video_id=""
    )
    assert [j.id for j in odd] == [j for i, j in reversed(list(enumerate(created))) if i % 2]
    _, token = await store.list_jobs("alice", size=2, token="", states=[], labels={}, video_id="")
    with pytest.raises(InvalidArgument, match="different filter"):
        await store.list_jobs(
            "alice", size=2, token=token, states=["QUEUED"], labels={}, video_id=""
        )
    with pytest.raises(InvalidArgument):
        await store.list_jobs("alice", size=2, token="garbage!", states=[], labels={}, video_id="")


async def test_list_jobs_filters_by_state(store: Store) -> None:
    video = await add_video(store)
    keep, _ = await create(store, video)
    gone, _ = await create(store, video)
    await store.cancel_job("alice", gone.id)
    queued, _ = await store.list_jobs(
        "alice", size=10, token="", states=["QUEUED"], labels={}, video_id=""
    )
    cancelled, _ = await store.list_jobs(
        "alice", size=10, token="", states=["CANCELLED"], labels={}, video_id=""
    )
    assert [j.id for j in queued] == [keep.id]
    assert [j.id for j in cancelled] == [gone.id]


async def test_cancel_ends_job_and_refuses_twice(store: Store) -> None:
    job, _ = await create(store, await add_video(store))
    cancelled = await store.cancel_job("alice", job.id)
    assert cancelled.state == job_pb2.JOB_STATE_CANCELLED
    assert cancelled.stages[0].state == job_pb2.STAGE_STATE_CANCELLED
    events = await store.events_after(uuid.UUID(job.id), 0)
    assert events[-1].job_state_changed.state == job_pb2.JOB_STATE_CANCELLED
    assert events[-1].job.state == job_pb2.JOB_STATE_CANCELLED  # terminal event carries the job
    with pytest.raises(FailedPrecondition):
        await store.cancel_job("alice", job.id)


async def test_concurrent_claims_never_share_a_job(
    sessions: async_sessionmaker[AsyncSession], store: Store
) -> None:
    video = await add_video(store)
    ids = {(await create(store, video))[0].id for _ in range(10)}
    workers = [Runs(sessions, f"w{i}") for i in range(4)]
    claims = await asyncio.gather(*(w.claim(5, timedelta(seconds=30)) for w in workers))
    claimed = [str(job.id) for batch in claims for job in batch]
    assert sorted(claimed) == sorted(ids)  # every job once, none twice


async def test_a_claim_takes_the_next_jobs_while_another_claim_holds_the_first(
    sessions: async_sessionmaker[AsyncSession], store: Store
) -> None:
    """A replica claiming while another replica's claim of the same owner's first jobs is not
    yet committed skips those (locked) and takes the next ones, instead of coming away empty
    while jobs wait: the claim reads spare candidates beyond its limit from each owner. (Its
    write of the owner's queue summary then waits for the first claim to commit.)"""
    video = await add_video(store)
    ids = [(await create(store, video))[0].id for _ in range(10)]
    params = {"worker": "first", "lease": 30.0, "limit": 5, "busy": []}
    async with sessions.begin() as held:  # the first replica's claim, not yet committed
        first = [str(i) for i in (await held.execute(CLAIM, params)).scalars().all()]
        second_claim = asyncio.create_task(Runs(sessions, "second").claim(5, LEASE))
        await blocked_or_done(second_claim, sessions)
    second = [str(job.id) for job in await second_claim]
    assert len(first) == 5 and len(second) == 5
    assert sorted(first + second) == sorted(ids)


async def blocked_or_done(
    task: asyncio.Task[Any], sessions: async_sessionmaker[AsyncSession]
) -> None:
    """Returns once ``task`` has ended or a statement on the database waits for a lock."""
    while not task.done() and not await waits_for_a_lock(sessions):
        await asyncio.wait({task}, timeout=0.02)


async def waits_for_a_lock(sessions: async_sessionmaker[AsyncSession]) -> bool:
    async with sessions() as session:
        waiting = await session.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )
    return bool(waiting)


async def test_expired_lease_lets_another_worker_take_over(
    sessions: async_sessionmaker[AsyncSession], store: Store
) -> None:
    job, _ = await create(store, await add_video(store))
    first, second = Runs(sessions, "first"), Runs(sessions, "second")
    [claimed] = await first.claim(1, timedelta(seconds=1))
    await first.start(claimed.id)
    assert await second.claim(1, timedelta(seconds=30)) == []
    await asyncio.sleep(1.2)
    [taken] = await second.claim(1, timedelta(seconds=30))
    assert str(taken.id) == job.id and taken.state == "RUNNING"
    with pytest.raises(LeaseLost):
        await first.renew(claimed.id, timedelta(seconds=30))
    with pytest.raises(LeaseLost):
        await first.update_stage(claimed.id, "probe", state="RUNNING", progress=0.5)
    await second.update_stage(taken.id, "probe", state="SUCCEEDED", started=True)
    await second.finish(taken.id, "SUCCEEDED")
    done = await store.get_job("alice", job.id)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED
    assert done.stages[0].state == job_pb2.STAGE_STATE_SUCCEEDED


async def test_cancelled_job_fences_out_its_runner(
    sessions: async_sessionmaker[AsyncSession], store: Store
) -> None:
    job, _ = await create(store, await add_video(store))
    runner = Runs(sessions, "w")
    [claimed] = await runner.claim(1, timedelta(seconds=30))
    await runner.start(claimed.id)
    await store.cancel_job("alice", job.id)
    with pytest.raises(LeaseLost):
        await runner.finish(claimed.id, "SUCCEEDED")
    assert (await store.get_job("alice", job.id)).state == job_pb2.JOB_STATE_CANCELLED


async def _collect(hub: EventHub, job_id: uuid.UUID, after: int) -> list[job_pb2.JobEvent]:
    return [response.event async for response in hub.watch(job_id, after)]


async def test_watchers_get_each_event_once_in_order_live_and_resumed(
    sessions: async_sessionmaker[AsyncSession], store: Store, database_url: str
) -> None:
    job, _ = await create(store, await add_video(store))
    job_id = uuid.UUID(job.id)
    dsn = database_url.replace("postgresql+asyncpg", "postgresql")
    hub = EventHub(dsn, store.events_after)
    listener = asyncio.create_task(hub.run())
    try:
        await asyncio.wait_for(hub.connected.wait(), 10)
        runner = Runs(sessions, "w")
        [claimed] = await runner.claim(1, timedelta(seconds=30))
        from_start = asyncio.create_task(_collect(hub, job_id, 0))
        await asyncio.sleep(0.1)
        await runner.start(job_id)
        await runner.update_stage(job_id, "probe", state="RUNNING", progress=0.0, started=True)
        mid = asyncio.create_task(_collect(hub, job_id, 2))
        for step in range(1, 20):
            await runner.update_stage(job_id, "probe", state="RUNNING", progress=step / 20)
        await runner.update_stage(job_id, "probe", state="SUCCEEDED")
        await runner.finish(claimed.id, "SUCCEEDED")
        everything = await asyncio.wait_for(from_start, 10)
        resumed = await asyncio.wait_for(mid, 10)
        last = everything[-1].sequence
        assert [e.sequence for e in everything] == list(range(1, last + 1))
        assert [e.sequence for e in resumed] == list(range(3, last + 1))
        assert everything[-1].job.state == job_pb2.JOB_STATE_SUCCEEDED
        # A late watcher replays from the journal and ends at the terminal event.
        late = await asyncio.wait_for(_collect(hub, job_id, last - 2), 10)
        assert [e.sequence for e in late] == [last - 1, last]
        assert hub.feeds == {}  # every watcher unsubscribed
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)


async def test_cancelled_watcher_unsubscribes(store: Store, database_url: str) -> None:
    job, _ = await create(store, await add_video(store))
    hub = EventHub(database_url.replace("postgresql+asyncpg", "postgresql"), store.events_after)
    listener = asyncio.create_task(hub.run())
    try:
        await asyncio.wait_for(hub.connected.wait(), 10)
        watcher = asyncio.create_task(_collect(hub, uuid.UUID(job.id), 0))
        await asyncio.sleep(0.3)
        assert len(hub.feeds) == 1
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        assert hub.feeds == {}
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)


async def test_deleting_the_video_ends_its_jobs_watchers(store: Store, database_url: str) -> None:
    """delete_video announces an event past the last one, so watchers on every replica wake,
    find the job gone, and end with NOT_FOUND."""
    video_id = await add_video(store)
    job, _ = await create(store, video_id)
    dsn = database_url.replace("postgresql+asyncpg", "postgresql")
    hub = EventHub(dsn, store.events_after, store.job_exists)
    listener = asyncio.create_task(hub.run())
    try:
        await asyncio.wait_for(hub.connected.wait(), 10)
        watcher = asyncio.create_task(_collect(hub, uuid.UUID(job.id), 0))
        await asyncio.sleep(0.3)
        assert not watcher.done()
        await store.delete_video("alice", video_id)
        with pytest.raises(NotFound) as caught:
            await asyncio.wait_for(watcher, 10)
        assert caught.value.reason == "JOB_NOT_FOUND"
        assert hub.feeds == {}
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)


def test_an_event_notification_names_the_job_and_the_sequence() -> None:
    job_id = uuid.uuid4()
    assert parse_event_notification(f"{job_id}:7") == (job_id, 7)
    for malformed in ("", str(job_id), f"{job_id}:x", "not-a-uuid:1"):
        with pytest.raises(ValueError, match="not an event notification"):
            parse_event_notification(malformed)


async def _list(store: Store, owner: str = "alice", *, full: bool = False) -> list[job_pb2.Job]:
    jobs, _ = await store.list_jobs(
        owner, size=50, token="", states=[], labels={}, video_id="", full=full
    )
    return jobs


async def _snapshots(store: Store) -> dict[str, bytes]:
    async with store.sessions() as session:
        rows = await session.execute(text("SELECT job_id, body FROM job_snapshots"))
        return {str(job_id): bytes(body) for job_id, body in rows}


async def _forge(store: Store, job_id: str, **values: str) -> None:
    """Replaces a job's snapshot body with the listed message changed, so a test can tell a
    page served from the snapshot from one converted again."""
    async with store.sessions.begin() as session:
        body = await session.scalar(
            text("SELECT body FROM job_snapshots WHERE job_id = :id"), {"id": job_id}
        )
        forged = job_pb2.Job.FromString(body)
        for name, value in values.items():
            setattr(forged, name, value)
        await session.execute(
            text("UPDATE job_snapshots SET body = :body WHERE job_id = :id"),
            {"id": job_id, "body": forged.SerializeToString()},
        )


async def test_list_jobs_keeps_ended_jobs_and_never_serves_a_changed_one(store: Store) -> None:
    video = await add_video(store)
    queued, _ = await create(store, video)
    cancelled, _ = await create(store, video)
    finished, _ = await create(store, video)
    await store.cancel_job("alice", cancelled.id)
    async with store.sessions.begin() as session:
        await session.execute(
            text("UPDATE jobs SET state = 'SUCCEEDED', end_time = now() WHERE id = :id"),
            {"id": finished.id},
        )
        await session.execute(
            text("UPDATE job_stages SET state = 'SUCCEEDED', progress = 1 WHERE job_id = :id"),
            {"id": finished.id},
        )

    first = await _list(store)
    # Only the ended jobs are kept, each as the very message the conversion made.
    kept = await _snapshots(store)
    assert sorted(kept) == sorted([cancelled.id, finished.id])
    by_id = {job.id: job for job in first}
    for job_id, body in kept.items():
        assert job_pb2.Job.FromString(body) == by_id[job_id]
    assert by_id[finished.id].stages[0].state == job_pb2.STAGE_STATE_SUCCEEDED
    assert await _list(store) == first
    assert [j.id for j in first] == [finished.id, cancelled.id, queued.id]

    # A page of ended jobs is served from the snapshots...
    await _forge(store, finished.id, request_id="from-the-snapshot")
    assert (await _list(store))[0].request_id == "from-the-snapshot"
    # ...but not in the FULL view, which has the artifacts,
    assert (await _list(store, full=True))[0].request_id == ""
    # nor once a stage of the job changed (any writer, no invalidation needed),
    async with store.sessions.begin() as session:
        await session.execute(
            text("UPDATE job_stages SET attempts = 3 WHERE job_id = :id"), {"id": finished.id}
        )
    relisted = await _list(store)
    assert relisted[0].request_id == "" and relisted[0].stages[0].attempts == 3
    # nor once the job's row changed,
    await _forge(store, finished.id, request_id="from-the-snapshot")
    async with store.sessions.begin() as session:
        await session.execute(
            text("""UPDATE jobs SET labels = '{"k": "v"}' WHERE id = :id"""), {"id": finished.id}
        )
    relisted = await _list(store)
    assert relisted[0].request_id == "" and dict(relisted[0].labels) == {"k": "v"}
    # nor when another conversion or other protos made it.
    await _forge(store, finished.id, request_id="from-the-snapshot")
    async with store.sessions.begin() as session:
        await session.execute(
            text("UPDATE job_snapshots SET format = 'an-older-format' WHERE job_id = :id"),
            {"id": finished.id},
        )
    assert (await _list(store))[0].request_id == ""

    # A retried job is queued again, and listed as such.
    retried = await store.retry_job("alice", cancelled.id)
    assert retried.state == job_pb2.JOB_STATE_QUEUED
    states = {j.id: j.state for j in await _list(store)}
    assert states[cancelled.id] == job_pb2.JOB_STATE_QUEUED
    # (Its snapshot of the cancelled job is still stored, and unused: no longer its version.)
    stale = job_pb2.Job.FromString((await _snapshots(store))[cancelled.id])
    assert stale.state == job_pb2.JOB_STATE_CANCELLED

    # Deleting the jobs deletes their snapshots.
    await store.delete_video("alice", video)
    assert await _snapshots(store) == {}
