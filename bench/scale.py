"""The gateway at scale (issue 15): a real Postgres filled with N jobs and about 20 x N events
across 1,000 owners, then the gateway's own code paths timed against it, in process.

The fill is set-based SQL (``INSERT ... SELECT ... FROM generate_series``), in the shapes the
gateway writes: jobs in every state (most finished: 92% of the finished succeeded, 5% failed,
3% cancelled; the newest 1% queued, 16 of them running under a live lease), spread over 90
days; the nine stage rows of the default pipeline per job; three artifact rows per succeeded
job; and 20 events per finished job (QUEUED, RUNNING, the stages' updates, the terminal event
carrying the whole job), with payloads made by the gateway's own serialisation of real event
messages (``to_json``), so their sizes are what the journal holds. One owner in four of the
jobs belongs to one of ten big owners (2.5% of the table each), the rest spread over 990.

Then, p50/p99 over many calls with random owners and jobs:

- GetJob (``Store.get_job``, the FULL view, with the queue estimate as the gateway asks it),
  of any job and of a queued one (its queue position);
- ListJobs (``Store.list_jobs``, BASIC view, 50 per page): a first page, and page 50 of a big
  owner reached through its page tokens (the last page when the owner has fewer); each with the
  ended jobs' snapshots kept (``gateway.snapshots``) and with none kept yet, alternating;
- CreateJob (``Store.create_job`` with the default per-owner active-jobs limit);
- the claim (``Runs.claim``: the orchestrator's claim of its next job, then the load of what
  it claimed; committed, so the queue drains by one per call), the claim statement alone
  (``gateway.queue.CLAIM`` in a transaction of its own), and the claim's plan at the largest
  size;
- WatchJob replay (``EventHub.watch`` of a finished job from sequence 0: its stored events, to
  the end of the stream).

GetJob of any job and the replay are timed with
``gateway.protojson.parse`` and with ``json_format.ParseDict`` (the JSONB-to-message converter
it replaced) as the converter, alternating call by call.

One table per table size, side by side::

    python -m bench.scale [--quick] [--sizes 10000,100000,1000000] [--calls N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
from google.protobuf import duration_pb2, json_format
from google.protobuf.message import Message
from sqlalchemy import text

from bench.common import percentile, table
from bench.queue import FAIR_CLAIM
from gateway import protojson
from gateway.convert import to_json
from gateway.db.engine import make_engine, make_sessionmaker, migrate
from gateway.events import EventHub
from gateway.journal import state_event
from gateway.runs import Runs
from gateway.store import StagePlan, Store
from reelmill.v1 import job_pb2, media_pb2, pipeline_pb2
from tests.servers import PostgresServer, run_postgres

SIZES = (10_000, 100_000, 1_000_000)
OWNERS = 1000
BIG_OWNERS = 10
EVENTS_PER_JOB = 20
RUNNING = 16
#: The default pipeline's stages (gateway.pipeline.plan_stages of an empty spec).
STAGES = (
    StagePlan("probe", (), "PENDING"),
    StagePlan("scenes", ("probe",), "PENDING"),
    StagePlan("ocr", ("scenes",), "PENDING"),
    StagePlan("transcode", ("probe",), "PENDING"),
    StagePlan("stills", ("probe", "scenes"), "PENDING"),
    StagePlan("audio", ("probe",), "PENDING"),
    StagePlan("transcribe", ("audio",), "PENDING"),
    StagePlan("metadata", ("transcribe", "scenes", "ocr"), "PENDING"),
    StagePlan("clips", ("probe", "transcribe", "metadata"), "SKIPPED"),
)
ARTIFACTS = (
    ("transcode/720p.mp4", "ARTIFACT_KIND_RENDITION_MP4", "transcode", "video/mp4", 48_000_000),
    ("transcode/hls.m3u8", "ARTIFACT_KIND_HLS_MASTER_PLAYLIST", "transcode", "audio/mpegurl", 600),
    ("stills/poster.jpg", "ARTIFACT_KIND_POSTER", "stills", "image/jpeg", 90_000),
)  # fmt: skip
#: Targets at 1M jobs (issue 15), ms.
TARGETS = {"GetJob": 10.0, "ListJobs": 25.0, "claim": 5.0}


# -- payloads, made by the gateway's serialisation ------------------------------------------


def _media_info() -> media_pb2.MediaInfo:
    return media_pb2.MediaInfo(
        container="mov,mp4,m4a,3gp,3g2,mj2",
        duration=duration_pb2.Duration(seconds=60),
        size_bytes=12_345_678,
        bit_rate=1_650_000,
        video_streams=[
            media_pb2.VideoStream(
                index=0, codec="h264", profile="High", width=1280, height=720, fps=30.0,
                bit_rate=1_500_000, pixel_format="yuv420p", frame_count=1800,
                duration=duration_pb2.Duration(seconds=60),
            )
        ],
    )  # fmt: skip


def _stage(name: str, state: str, progress: float) -> job_pb2.Stage:
    stage = job_pb2.Stage(
        name=name,
        state=job_pb2.StageState.Value(f"STAGE_STATE_{state}"),
        progress=progress,
        attempts=1,
        depends_on=next(p.depends_on for p in STAGES if p.name == name),
    )
    stage.start_time.GetCurrentTime()
    if state in ("SUCCEEDED", "SKIPPED"):
        stage.end_time.GetCurrentTime()
    return stage


def _artifact(job_id: str, name: str) -> media_pb2.Artifact:
    _name, kind, stage, content_type, size = next(a for a in ARTIFACTS if a[0] == name)
    return media_pb2.Artifact(
        name=name,
        kind=media_pb2.ArtifactKind.Value(kind),
        object=media_pb2.ObjectRef(bucket="media", key=f"jobs/{job_id}/{name}"),
        content_type=content_type,
        size_bytes=size,
        sha256="ab" * 32,
        stage=stage,
        attributes={"width": "1280", "height": "720"} if name.endswith(".mp4") else {},
    )


def payloads() -> dict[str, str]:
    """JSON documents of the journal, as ``append_event`` stores them."""
    job_id = str(uuid.uuid4())
    out = {
        "queued": json.dumps(to_json(state_event("QUEUED"))),
        "running": json.dumps(to_json(state_event("RUNNING"))),
    }
    updates = []
    for plan in STAGES[:-1]:
        updates.append(job_pb2.JobEvent(stage_updated=job_pb2.StageUpdated(
            stage=_stage(plan.name, "RUNNING", 0.0))))  # fmt: skip
        artifacts = [_artifact(job_id, a[0]) for a in ARTIFACTS if a[2] == plan.name]
        updates.append(job_pb2.JobEvent(stage_updated=job_pb2.StageUpdated(
            stage=_stage(plan.name, "SUCCEEDED", 1.0), artifacts=artifacts,
            message="")))  # fmt: skip
    # 16 stage updates + the skipped clips stage = 17; + QUEUED, RUNNING, terminal = 20.
    updates.append(job_pb2.JobEvent(stage_updated=job_pb2.StageUpdated(
        stage=_stage("clips", "SKIPPED", 0.0))))  # fmt: skip
    assert len(updates) == EVENTS_PER_JOB - 3
    out["updates"] = json.dumps([to_json(e) for e in updates])
    job = job_pb2.Job(
        id=job_id,
        video_id=str(uuid.uuid4()),
        state=job_pb2.JOB_STATE_SUCCEEDED,
        stages=[_stage(p.name, "SUCCEEDED" if p.state == "PENDING" else "SKIPPED", 1.0)
                for p in STAGES],
        artifacts=[_artifact(job_id, a[0]) for a in ARTIFACTS],
        media_info=_media_info(),
        labels={"env": "prod", "team": "video"},
        last_event_sequence=EVENTS_PER_JOB,
    )  # fmt: skip
    job.create_time.GetCurrentTime()
    job.end_time.GetCurrentTime()
    terminal = state_event("SUCCEEDED")
    terminal.job.CopyFrom(job)
    out["terminal"] = json.dumps(to_json(terminal))
    out["media_info"] = json.dumps(to_json(_media_info()))
    out["spec"] = json.dumps(to_json(pipeline_pb2.PipelineSpec()))
    transcript = media_pb2.Transcript(
        language="en",
        language_probability=0.98,
        duration=duration_pb2.Duration(seconds=60),
        engine="faster-whisper",
        model="small",
        segments=[
            media_pb2.Segment(
                id=i, start_seconds=i * 4.0, end_seconds=i * 4.0 + 3.9,
                text="and the quarterly numbers grew again " * 2, avg_logprob=-0.2,
            )
            for i in range(15)
        ],
    )  # fmt: skip
    out["transcript"] = json.dumps(to_json(transcript))
    return out


# -- the fill --------------------------------------------------------------------------------

_IDS = """
CREATE UNLOGGED TABLE bench_ids AS
SELECT n, gen_random_uuid() AS id,
       CASE WHEN n % 4 = 0 THEN 'owner-' || lpad(((n / 4) % $3)::text, 4, '0')
            ELSE 'owner-' || lpad(($3 + (n::bigint * 7919) % ($2 - $3))::text, 4, '0') END AS owner,
       CASE WHEN n > $1 - $1 / 100 THEN
                 CASE WHEN n <= $1 - $1 / 100 + $4 THEN 'RUNNING' ELSE 'QUEUED' END
            WHEN random() < 0.92 THEN 'SUCCEEDED'
            WHEN random() < 0.6 THEN 'FAILED'
            ELSE 'CANCELLED' END AS state,
       now() - make_interval(secs => ($1 - n)::double precision * 90 * 86400 / $1 + 5)
           AS created
  FROM generate_series(1, $1) AS n
"""

_JOBS = """
INSERT INTO jobs (id, owner, source_url, spec, state, labels, request_id, error, media_info,
                  transcript, metadata, attempts, last_event_sequence, priority,
                  lease_owner, lease_expires_at, claim_time, create_time, start_time,
                  end_time, update_time)
SELECT b.id, b.owner, 'https://media.example.com/in/' || b.n || '.mp4', $3::jsonb, b.state,
       CASE WHEN b.n % 3 = 0 THEN '{"env": "prod"}'::jsonb ELSE '{}'::jsonb END,
       CASE WHEN b.n % 2 = 0 THEN 'req-' || b.n END,
       CASE WHEN b.state = 'FAILED' THEN
            '{"code": "INTERNAL", "message": "transcode failed: exit status 1"}'::jsonb END,
       CASE WHEN b.state IN ('QUEUED') THEN NULL ELSE $4::jsonb END,
       CASE WHEN b.state = 'SUCCEEDED' THEN $5::jsonb END,
       CASE WHEN b.state = 'SUCCEEDED' THEN '{"title": "Quarterly revenue grew"}'::jsonb END,
       CASE WHEN b.state = 'QUEUED' THEN 0 ELSE 1 END,
       CASE b.state WHEN 'QUEUED' THEN 1 WHEN 'RUNNING' THEN 6 ELSE $6 END,
       CASE WHEN b.state = 'QUEUED' THEN (b.n % 3) - 1 ELSE 0 END,
       CASE WHEN b.state = 'RUNNING' THEN 'bench-worker' END,
       CASE WHEN b.state = 'RUNNING' THEN now() + interval '1 hour' END,
       CASE WHEN b.state <> 'QUEUED' THEN b.created + interval '1 second' END,
       b.created,
       CASE WHEN b.state <> 'QUEUED' THEN b.created + interval '2 seconds' END,
       CASE WHEN b.state IN ('SUCCEEDED', 'FAILED', 'CANCELLED')
            THEN b.created + make_interval(secs => 30 + (b.n % 270)) END,
       b.created
  FROM bench_ids b WHERE b.n > $1 AND b.n <= $2
"""

_STAGES = """
INSERT INTO job_stages (job_id, name, position, depends_on, state, progress, attempts,
                        start_time, end_time, fingerprint)
SELECT b.id, s.name, s.position, s.depends_on::jsonb,
       CASE WHEN s.name = 'clips' THEN 'SKIPPED'
            WHEN b.state = 'SUCCEEDED' THEN 'SUCCEEDED'
            WHEN b.state = 'QUEUED' THEN 'PENDING'
            WHEN b.state = 'RUNNING' THEN CASE WHEN s.position < 2 THEN 'SUCCEEDED'
                                               WHEN s.position = 2 THEN 'RUNNING'
                                               ELSE 'PENDING' END
            WHEN b.state = 'FAILED' THEN CASE WHEN s.position < 3 THEN 'SUCCEEDED'
                                              WHEN s.position = 3 THEN 'FAILED'
                                              ELSE 'CANCELLED' END
            ELSE CASE WHEN s.position < 3 THEN 'SUCCEEDED' ELSE 'CANCELLED' END END,
       CASE WHEN b.state = 'SUCCEEDED' THEN 1.0 ELSE 0.0 END,
       CASE WHEN b.state = 'QUEUED' THEN 0 ELSE 1 END,
       CASE WHEN b.state <> 'QUEUED' THEN b.created + interval '3 seconds' END,
       CASE WHEN b.state IN ('SUCCEEDED', 'FAILED', 'CANCELLED')
            THEN b.created + interval '20 seconds' END,
       CASE WHEN b.state = 'SUCCEEDED' AND s.name <> 'clips' THEN md5(b.id::text || s.name) END
  FROM bench_ids b
 CROSS JOIN unnest($3::text[], $4::int[], $5::text[]) AS s(name, position, depends_on)
 WHERE b.n > $1 AND b.n <= $2
"""

_ARTIFACTS = """
INSERT INTO artifacts (job_id, name, kind, stage, bucket, object_key, content_type,
                       size_bytes, sha256, attributes, create_time)
SELECT b.id, a.name, a.kind, a.stage, 'media', 'jobs/' || b.id || '/' || a.name,
       a.content_type, a.size, md5(b.id::text) || md5(a.name), '{}'::jsonb,
       b.created + interval '20 seconds'
  FROM bench_ids b
 CROSS JOIN unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[])
            AS a(name, kind, stage, content_type, size)
 WHERE b.n > $1 AND b.n <= $2 AND b.state = 'SUCCEEDED'
"""

_EVENTS = """
INSERT INTO job_events (job_id, sequence, type, payload, create_time)
SELECT b.id, s.seq,
       CASE WHEN s.seq IN (1, 2) OR s.seq = $6 THEN 'job_state_changed'
            ELSE 'stage_updated' END,
       CASE WHEN s.seq = 1 THEN $3::jsonb
            WHEN s.seq = 2 THEN $4::jsonb
            WHEN s.seq = $6 THEN jsonb_set($7::jsonb, '{job_state_changed,state}',
                                           to_jsonb('JOB_STATE_' || b.state))
            ELSE ($5::jsonb) -> (s.seq - 3) END,
       b.created + make_interval(secs => s.seq)
  FROM bench_ids b
 CROSS JOIN LATERAL generate_series(1, CASE b.state WHEN 'QUEUED' THEN 1 WHEN 'RUNNING' THEN 6
                                                    ELSE $6 END) AS s(seq)
 WHERE b.n > $1 AND b.n <= $2
"""


async def fill(dsn: str, jobs: int) -> dict[str, int]:
    p = payloads()
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("SET synchronous_commit = off")
        await connection.execute("SET maintenance_work_mem = '512MB'")
        await connection.execute("SELECT setseed(0.15)")
        await connection.execute(_IDS, jobs, OWNERS, BIG_OWNERS, RUNNING)
        await connection.execute("CREATE INDEX ON bench_ids (n)")
        chunk = 50_000
        stage_args = (
            [s.name for s in STAGES],
            list(range(len(STAGES))),
            [json.dumps(list(s.depends_on)) for s in STAGES],
        )
        artifact_args = tuple(list(column) for column in zip(*ARTIFACTS, strict=True))
        for low in range(0, jobs, chunk):
            high = min(jobs, low + chunk)
            await connection.execute(
                _JOBS, low, high, p["spec"], p["media_info"], p["transcript"], EVENTS_PER_JOB
            )
            await connection.execute(_STAGES, low, high, *stage_args)
            await connection.execute(_ARTIFACTS, low, high, *artifact_args)
            await connection.execute(
                _EVENTS,
                low,
                high,
                p["queued"],
                p["running"],
                p["updates"],
                EVENTS_PER_JOB,
                p["terminal"],
            )
        await connection.execute("DROP TABLE bench_ids")
        for name in ("jobs", "job_stages", "artifacts", "job_events"):
            await connection.execute(f"VACUUM (ANALYZE) {name}")
        counts = await _counts(connection)
    finally:
        await connection.close()
    return counts


async def _counts(connection: asyncpg.Connection) -> dict[str, int]:
    """The filled database's row counts, queued jobs and size."""
    counts = {
        name: int(await connection.fetchval(f"SELECT count(*) FROM {name}"))
        for name in ("jobs", "job_stages", "artifacts", "job_events")
    }
    counts["queued"] = int(
        await connection.fetchval("SELECT count(*) FROM jobs WHERE state = 'QUEUED'")
    )
    counts["bytes"] = int(await connection.fetchval("SELECT pg_database_size(current_database())"))
    return counts


# -- the measurements ------------------------------------------------------------------------


async def _series(calls: int, one: Callable[[], Awaitable[Any]]) -> list[float]:
    await one()  # warm: connections, plans
    times = []
    for _ in range(calls):
        began = time.perf_counter()
        await one()
        times.append((time.perf_counter() - began) * 1000)
    return times


def _row(label: str, times: list[float], target: str = "") -> list[str]:
    return [label, f"{percentile(times, 50):.2f}", f"{percentile(times, 99):.2f}", target]


def _parse_dict(data: dict[str, Any] | None, cls: type[Message]) -> Message:
    message = cls()
    if data:
        json_format.ParseDict(data, message, ignore_unknown_fields=True)
    return message


async def _paired(calls: int, one: Callable[[], Awaitable[Any]]) -> tuple[list[float], list[float]]:
    """``_series`` of ``one`` with ``gateway.protojson.parse`` as the JSONB converter and with
    ``json_format.ParseDict`` (what it replaced), alternating call by call, so that caches and
    load fall on both alike."""
    fast = protojson.parse
    times: tuple[list[float], list[float]] = ([], [])
    await one()  # warm: connections, plans
    try:
        for call in range(2 * calls):
            protojson.parse = fast if call % 2 == 0 else _parse_dict  # type: ignore[assignment]
            began = time.perf_counter()
            await one()
            times[call % 2].append((time.perf_counter() - began) * 1000)
    finally:
        protojson.parse = fast
    return times


async def _kept_and_converted(
    calls: int,
    one: Callable[[], Awaitable[tuple[str, Callable[[], Awaitable[Any]]]]],
    forget: Callable[[str], Awaitable[Any]],
) -> tuple[list[float], list[float]]:
    """A ListJobs page timed with its ended jobs' snapshots kept (``gateway.snapshots``: listed
    once just before, untimed) and with none (the owner's deleted just before, untimed: the
    conversion and the write of the snapshots are in the time), alternating call by call.
    ``one()`` picks a page and returns (owner, the call listing it)."""
    times: tuple[list[float], list[float]] = ([], [])
    for call in range(2 * calls):
        owner, page = await one()
        if call % 2 == 0:
            await page()
        else:
            await forget(owner)
        began = time.perf_counter()
        await page()
        times[call % 2].append((time.perf_counter() - began) * 1000)
    return times


async def measure(dsn: str, url: str, jobs: int, calls: int) -> tuple[list[list[str]], str]:
    engine = make_engine(url, pool_size=5)
    sessions = make_sessionmaker(engine)
    store = Store(sessions, purge_delay=timedelta(seconds=30), slots_per_worker=4)
    connection = await asyncpg.connect(dsn)
    rng = random.Random(15)
    try:
        sample = await connection.fetch(
            "SELECT id, owner FROM jobs TABLESAMPLE SYSTEM (5) LIMIT 20000"
        )
        if len(sample) < 1000:
            sample = await connection.fetch("SELECT id, owner FROM jobs LIMIT 20000")
        finished = await connection.fetch(
            "SELECT id, owner FROM jobs TABLESAMPLE SYSTEM (5) WHERE state = 'SUCCEEDED' LIMIT 5000"
        )
        queued = await connection.fetch(
            "SELECT id, owner FROM jobs WHERE state = 'QUEUED' AND lease_owner IS NULL"
        )
        owners = [r["owner"] for r in await connection.fetch("SELECT DISTINCT owner FROM jobs")]
        big = [f"owner-{i:04d}" for i in range(BIG_OWNERS)]
        transaction = connection.transaction()
        await transaction.start()
        try:  # the plan of one claim, rolled back
            claim_plan = "\n".join(
                r[0]
                for r in await connection.fetch(
                    "EXPLAIN (ANALYZE, BUFFERS, FORMAT TEXT) " + FAIR_CLAIM, "plan", 30.0, 1, []
                )
            )
        finally:
            await transaction.rollback()
    finally:
        await connection.close()
    rows: list[list[str]] = []

    async def get_any() -> None:
        job = rng.choice(sample)
        await store.get_job(job["owner"], str(job["id"]))

    async def get_queued() -> None:
        job = rng.choice(queued)
        await store.get_job(job["owner"], str(job["id"]))

    ours, before = await _paired(calls, get_any)
    rows.append(_row("GetJob (any job, FULL)", ours, "p99 <= 10"))
    rows.append(_row("  the same with ParseDict", before))
    rows.append(_row("GetJob (a queued job)", await _series(calls, get_queued), "p99 <= 10"))

    async def list_page(owner: str, token: str) -> str:
        _jobs, next_token = await store.list_jobs(
            owner, size=50, token=token, states=[], labels={}, video_id=""
        )
        return next_token

    async def forget(owner: str) -> None:
        async with sessions.begin() as session:
            await session.execute(
                text(
                    "DELETE FROM job_snapshots s USING jobs j "
                    "WHERE s.job_id = j.id AND j.owner = :owner"
                ),
                {"owner": owner},
            )

    async def first_page() -> tuple[str, Callable[[], Awaitable[Any]]]:
        owner = rng.choice(owners)
        return owner, lambda: list_page(owner, "")

    kept, converted = await _kept_and_converted(calls, first_page, forget)
    rows.append(_row("ListJobs first page (50)", kept, "p99 <= 25"))
    rows.append(_row("  the same, no snapshots kept yet", converted))
    # Page 50 of each big owner (or its last), reached through its page tokens.
    deep_tokens: list[tuple[str, str]] = []
    deepest = 0
    for owner in big:
        token, page = "", 1
        while page < 50:
            following = await list_page(owner, token)
            if not following:
                break
            token, page = following, page + 1
        deep_tokens.append((owner, token))
        deepest = max(deepest, page)

    async def deep_page() -> tuple[str, Callable[[], Awaitable[Any]]]:
        owner, token = rng.choice(deep_tokens)
        return owner, lambda: list_page(owner, token)

    kept, converted = await _kept_and_converted(calls, deep_page, forget)
    rows.append(_row(f"ListJobs page {deepest} of a big owner", kept, "p99 <= 25"))
    rows.append(_row("  the same, no snapshots kept yet", converted))

    # Owners under the active-jobs limit (at 1M a big owner has 250 queued: refused).
    small = [owner for owner in owners if owner not in big]

    async def create() -> None:
        await store.create_job(
            rng.choice(small),
            video_id=None,
            source_url="https://media.example.com/new.mp4",
            spec=pipeline_pb2.PipelineSpec(),
            request_id=uuid.uuid4().hex,
            labels={"env": "prod"},
            stages=[StagePlan("import", (), "PENDING"), *STAGES],
            max_active=100,
        )

    rows.append(_row("CreateJob", await _series(calls, create)))

    runs = Runs(sessions, "bench-claimer")

    async def claim() -> None:
        await runs.claim(1, timedelta(hours=1))

    rows.append(_row("claim (Runs.claim of 1, and its load)", await _series(calls, claim)))
    claimer = await asyncpg.connect(dsn)

    async def claim_statement() -> None:  # its own transaction: the commit is in the time
        await claimer.fetch(FAIR_CLAIM, "bench-claimer", 3600.0, 1, [])

    try:
        rows.append(_row("claim statement (of 1)", await _series(calls, claim_statement), "<= 5"))
    finally:
        await claimer.close()
    hub = EventHub(dsn, store.events_after, store.job_exists)

    async def replay() -> None:
        job = rng.choice(finished)
        seen = [r async for r in hub.watch(job["id"], 0)]
        assert len(seen) == EVENTS_PER_JOB, len(seen)

    ours, before = await _paired(calls, replay)
    rows.append(_row(f"WatchJob replay ({EVENTS_PER_JOB} events)", ours))
    rows.append(_row("  the same with ParseDict", before))
    await engine.dispose()
    return rows, claim_plan


async def _existing(server: Any, name: str, *, create: bool) -> bool:
    """Whether database ``name`` exists; with ``create`` it is created when it does not."""
    connection = await asyncpg.connect(server.dsn())
    try:
        found = bool(
            await connection.fetchval("SELECT count(*) FROM pg_database WHERE datname = $1", name)
        )
        if not found and create:
            await connection.execute(f'CREATE DATABASE "{name}"')
        return found
    finally:
        await connection.close()


async def one_size(
    server: Any, name: str, jobs: int, calls: int, *, keep: bool = False
) -> tuple[dict[str, int], list[list[str]], str]:
    """Fills database ``name`` with ``jobs`` jobs and measures it; with ``keep`` a database
    filled by an earlier run is measured again (migrated to this code's schema first) and is
    kept for the next."""
    dsn, url = server.dsn(name), server.url(name)
    refill = not (await _existing(server, name, create=True) and keep)
    engine = make_engine(url)
    await migrate(engine)
    await engine.dispose()
    began = time.monotonic()
    if refill:
        counts = await fill(dsn, jobs)
        counts["fill_seconds"] = int(time.monotonic() - began)
    else:
        connection = await asyncpg.connect(dsn)
        try:
            counts = await _counts(connection)
        finally:
            await connection.close()
        counts["fill_seconds"] = 0
    rows, plan = await measure(dsn, url, jobs, calls)
    if not keep:
        connection = await asyncpg.connect(server.dsn())
        try:
            await connection.execute(f'DROP DATABASE "{name}"')
        finally:
            await connection.close()
    return counts, rows, plan


@contextlib.contextmanager
def _postgres(keep: str) -> Iterator[Any]:
    if not keep:
        with run_postgres() as server:
            yield server
        return
    import pgserver

    data = Path(keep)
    data.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(data, cleanup_mode="stop")
    try:
        yield PostgresServer(socket_dir=data)
    finally:
        server.cleanup()


def main(
    quick: bool = False, sizes: tuple[int, ...] = SIZES, calls: int = 300, keep: str = ""
) -> None:
    sizes = (SIZES[0],) if quick else sizes
    results = []
    with _postgres(keep) as server:
        for jobs in sizes:
            name = f"bench_scale_{jobs}"
            counts, rows, plan = asyncio.run(
                one_size(server, name, jobs, 100 if quick else calls, keep=bool(keep))
            )
            results.append((jobs, counts, rows, plan))
            print(
                f"filled {jobs:,} jobs in {counts['fill_seconds']} s: "
                + ", ".join(f"{k} {v:,}" for k, v in counts.items() if k != "fill_seconds"),
                flush=True,
            )
    tables = []
    for jobs, counts, rows, _plan in results:
        tables.append(
            table(
                f"{jobs:,} jobs, {counts['job_events']:,} events, {counts['queued']:,} queued, "
                f"{OWNERS} owners ({counts['bytes'] / 2**30:.1f} GiB)",
                ("call", "p50 ms", "p99 ms", "target ms"),
                rows,
            ).splitlines()
        )
    # Side by side: one column of tables per size.
    width = [max(len(line) for line in t) for t in tables]
    for i in range(max(len(t) for t in tables)):
        print(
            "   ".join(
                (t[i] if i < len(t) else "").ljust(w) for t, w in zip(tables, width, strict=True)
            ).rstrip()
        )
    print(f"\nplan of the claim at {results[-1][0]:,} jobs:\n{results[-1][3]}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.scale")
    parser.add_argument("--quick", action="store_true", help="10,000 jobs only")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument(
        "--keep",
        default="",
        metavar="DIR",
        help="keep Postgres's data in DIR: a size filled by an earlier run is measured again",
    )
    args = parser.parse_args()
    main(
        quick=args.quick,
        sizes=tuple(int(s) for s in args.sizes.split(",")),
        calls=args.calls,
        keep=args.keep,
    )
