"""Retention (``gateway.retention``) against a real Postgres and a real S3 server: finished jobs
older than the setting go with their stages, events, artifact rows and objects; a running,
a queued and a recent job stay whatever their age; an object a kept job reuses stays; two
gateways sweeping at once delete each job once, without errors; a deleted job is NOT_FOUND."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta

import pytest
import pytest_asyncio
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

import gateway.metrics
from gateway.db import models
from gateway.db.engine import make_engine, make_sessionmaker
from gateway.metrics import GatewayMetrics
from gateway.purges import Purger
from gateway.retention import Retention
from gateway.runs import Runs
from gateway.settings import GatewaySettings
from gateway.store import StagePlan, Store
from reelmill.v1 import job_pb2, media_pb2, pipeline_pb2
from runtime.errors import NotFound
from runtime.storage import ObjectStore, open_store
from tests.conftest import FreshBucket
from tests.servers import S3Server
from tests.test_metrics import points

OWNER = "alice"
STAGES = [StagePlan("probe", (), "PENDING"), StagePlan("transcode", ("probe",), "PENDING")]


@dataclass
class Harness:
    sessions: async_sessionmaker[AsyncSession]
    store: Store
    runs: Runs
    objects: ObjectStore

    async def create(self) -> uuid.UUID:
        job, _ = await self.store.create_job(
            OWNER,
            video_id=None,
            source_url="https://media.example.com/in.mp4",
            spec=pipeline_pb2.PipelineSpec(),
            request_id="",
            labels={},
            stages=STAGES,
        )
        return uuid.UUID(job.id)

    async def start(self) -> uuid.UUID:
        """A new job, claimed and running (the only queued one)."""
        job_id = await self.create()
        claimed = await self.runs.claim(1, timedelta(minutes=5))
        assert [c.id for c in claimed] == [job_id]
        await self.runs.start(job_id)
        return job_id

    async def artifact(self, job_id: uuid.UUID, name: str, key: str | None = None) -> str:
        """Stores an object (under the job's prefix unless ``key``) and records it as the
        job's artifact ``name``; returns its key."""
        key = key or f"jobs/{job_id}/{name}"
        if key.startswith(f"jobs/{job_id}/"):
            await self.objects.put_bytes(key, b"made by " + name.encode(), content_type="x/y")
        stored = await self.objects.stat(key)
        await self.runs.update_stage(
            job_id,
            name.partition("/")[0],
            state="SUCCEEDED",
            artifacts=[
                media_pb2.Artifact(
                    name=name,
                    kind=media_pb2.ARTIFACT_KIND_THUMBNAIL,
                    object=media_pb2.ObjectRef(bucket=self.objects.bucket, key=key),
                    content_type="x/y",
                    size_bytes=stored.size,
                    sha256=stored.sha256 or "",
                    stage=name.partition("/")[0],
                )
            ],
        )
        return key

    async def finished(self, state: str = "SUCCEEDED", *, days_ago: float) -> uuid.UUID:
        """A job that ran (one artifact, a stray unrecorded object) and ended ``days_ago``."""
        job_id = await self.start()
        await self.artifact(job_id, "probe/info.json")
        await self.objects.put_bytes(f"jobs/{job_id}/transcode/stray.bin", b"x", content_type="x/y")
        error = job_pb2.JobError(code="INTERNAL", message="boom") if state == "FAILED" else None
        await self.runs.finish(job_id, state, error)
        await self.age(job_id, days_ago)
        return job_id

    async def age(self, job_id: uuid.UUID, days: float) -> None:
        async with self.sessions.begin() as session:
            await session.execute(
                text(
                    "UPDATE jobs SET create_time = create_time - make_interval(days => :d),"
                    " end_time = end_time - make_interval(days => :d) WHERE id = :id"
                ),
                {"d": days, "id": job_id},
            )

    async def rows(self, job_id: uuid.UUID) -> dict[str, int]:
        async with self.sessions() as session:
            return {
                model.__tablename__: int(
                    await session.scalar(
                        select(func.count()).select_from(model).where(model.job_id == job_id)
                    )
                    or 0
                )
                for model in (models.JobStage, models.JobEvent, models.Artifact)
            } | {
                "jobs": int(
                    await session.scalar(
                        select(func.count()).select_from(models.Job).where(models.Job.id == job_id)
                    )
                    or 0
                )
            }


@pytest_asyncio.fixture
async def harness(
    database_url: str, fresh_bucket: FreshBucket, seaweedfs: Callable[[], S3Server]
) -> AsyncIterator[Harness]:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in seaweedfs().env(fresh_bucket()).items():
            patch.setenv(name, value)
        settings = GatewaySettings(jwt_secret="x" * 32)
    engine = make_engine(database_url)
    sessions = make_sessionmaker(engine)
    objects = open_store(settings)
    try:
        yield Harness(
            sessions,
            Store(sessions, purge_delay=timedelta(0)),
            Runs(sessions, "w", purge_delay=timedelta(0)),
            objects,
        )
    finally:
        await objects.close()
        await engine.dispose()


def retention(
    h: Harness, sessions: async_sessionmaker[AsyncSession] | None = None, **kw: int
) -> Retention:
    return Retention(
        sessions or h.sessions, days=30, interval=60, purge_delay=timedelta(0), pause=0, **kw
    )


async def test_old_finished_jobs_go_with_everything_and_the_rest_stays(harness: Harness) -> None:
    h = harness
    old = await h.finished("SUCCEEDED", days_ago=40)
    old_failed = await h.finished("FAILED", days_ago=31)
    # Reused: a kept job names one of an old job's objects.
    reused_from = await h.finished("SUCCEEDED", days_ago=60)
    recent = await h.finished("SUCCEEDED", days_ago=1)
    kept = await h.start()
    reused_key = await h.artifact(
        kept, "transcode/out.bin", key=f"jobs/{reused_from}/probe/info.json"
    )
    await h.runs.finish(kept, "SUCCEEDED")
    running = await h.start()  # started long ago, still running
    await h.age(running, 90)
    queued = await h.create()
    await h.age(queued, 90)
    before = {job_id: await h.rows(job_id) for job_id in (old, old_failed, recent, kept, running)}
    assert all(before[old][table] > 0 for table in ("job_stages", "job_events", "artifacts"))

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            gateway.metrics, "instruments", GatewayMetrics(provider.get_meter("reelmill.gateway"))
        )
        assert await retention(h).sweep() == 3
        assert await retention(h).sweep() == 0  # nothing more is due
    [counted] = points(reader, "reelmill.retention.jobs").values()
    assert counted.value == 3
    provider.shutdown()
    await Purger(h.sessions, h.objects, interval=1).sweep()

    for gone in (old, old_failed, reused_from):
        assert await h.rows(gone) == {"jobs": 0, "job_stages": 0, "job_events": 0, "artifacts": 0}
        with pytest.raises(NotFound):
            await h.store.get_job(OWNER, str(gone))
    assert await h.objects.list_keys(f"jobs/{old}/") == []
    assert await h.objects.list_keys(f"jobs/{old_failed}/") == []
    # Only the object the kept job names is left of the reused job.
    assert await h.objects.list_keys(f"jobs/{reused_from}/") == [reused_key]
    for stays in (recent, kept, running):
        assert await h.rows(stays) == before[stays]
    assert await h.objects.list_keys(f"jobs/{recent}/") == [
        f"jobs/{recent}/probe/info.json",
        f"jobs/{recent}/transcode/stray.bin",
    ]
    assert (await h.store.get_job(OWNER, str(queued))).state == job_pb2.JOB_STATE_QUEUED
    assert (await h.store.get_job(OWNER, str(running))).state == job_pb2.JOB_STATE_RUNNING
    kept_job = await h.store.get_job(OWNER, str(kept))
    assert [a.object.key for a in kept_job.artifacts] == [reused_key]

    # When the kept job goes too, so does the object it reused.
    await h.age(kept, 45)
    assert await retention(h).sweep() == 1
    await Purger(h.sessions, h.objects, interval=1).sweep()
    assert await h.objects.list_keys(f"jobs/{reused_from}/") == []
    assert await h.objects.list_keys(f"jobs/{kept}/") == []


async def test_two_gateways_sweeping_at_once_delete_each_job_once(
    harness: Harness, database_url: str
) -> None:
    h = harness
    jobs = [await h.create() for _ in range(40)]
    async with h.sessions.begin() as session:
        await session.execute(
            text(
                "UPDATE jobs SET state = 'SUCCEEDED', end_time = now() - interval '40 days'"
                " WHERE id = ANY(:ids)"
            ),
            {"ids": jobs},
        )
    other = make_engine(database_url)
    try:
        first, second = await asyncio.gather(
            retention(h, batch=3).sweep(),
            retention(h, make_sessionmaker(other), batch=3).sweep(),
        )
    finally:
        await other.dispose()
    assert first + second == len(jobs)
    async with h.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(models.Job)) == 0
        prefixes = (
            await session.scalars(
                select(models.Purge.prefix).where(models.Purge.reason == "retention")
            )
        ).all()
    assert sorted(prefixes) == sorted(f"jobs/{job_id}/" for job_id in jobs)  # one purge each
