"""WatchJob fan-out and GetJob latency on one gateway.

- N concurrent WatchJob streams (default 10,000: 100 jobs x 100 watchers; --quick 100) while
  the jobs emit events: latency from the event's commit (wall clock taken right after COMMIT
  returns) to its receipt by each client (p50/p99). The clients are one process, grpc.aio
  streams multiplexed over a few HTTP/2 connections (``CHANNELS``, each its own subchannel);
  streams are opened at ``OPEN_RATE`` per second (each one costs the gateway a GetJob and a
  journal read), and the emitting starts once the gateway counts them all (its
  ``reelmill.watchers`` metric).
- The gateway's memory: its RSS (psutil) before the streams open, with all of them open, and
  the difference per watcher.
- GetJob latency (p50/p99) under an open-loop load of 200 requests/s.
- The gateway's garbage-collector pauses while the events flow (``reelmill.gc.pause``): how
  many, and the bucket of the longest.

The events are written exactly as the orchestrator writes them (``Runs.update_stage`` under a
lease this benchmark holds, so the gateway's own orchestrator leaves the jobs alone).
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import psutil

from bench.common import percentile, table
from gateway.db.engine import make_engine, make_sessionmaker, migrate
from gateway.runs import Runs
from gateway.store import StagePlan, Store
from reelmill.v1 import job_service_pb2, job_service_pb2_grpc, media_pb2, pipeline_pb2
from runtime import heap
from tests.scrape import scrape
from tests.servers import free_port, run_postgres, stop_process
from tests.suite import INTERNAL_TOKEN, JWT_SECRET, Suite, token

#: HTTP/2 connections the clients' streams are spread over.
CHANNELS = 8
#: Streams opened per second.
OPEN_RATE = 150.0


async def _setup(url: str, owner: str, jobs: int) -> tuple[Runs, dict[uuid.UUID, int]]:
    engine = make_engine(url, pool_size=5)
    await migrate(engine)
    sessions = make_sessionmaker(engine)
    runs = Runs(sessions, "bench-writer")
    return runs, await running_jobs(runs, Store(sessions), owner, jobs)


async def running_jobs(runs: Runs, store: Store, owner: str, count: int) -> dict[uuid.UUID, int]:
    """``count`` jobs of ``owner``, claimed and with their probe stage running: each job's last
    event sequence so far (the watchers then wait for what comes after it)."""
    video_id = str(uuid.uuid4())
    await store.add_video(
        owner,
        media_pb2.Video(
            id=video_id,
            filename="bench.mp4",
            content_type="video/mp4",
            size_bytes=1,
            sha256="0" * 64,
            object=media_pb2.ObjectRef(key="bench"),
        ),
    )
    ids = []
    for _ in range(count):
        job, _ = await store.create_job(
            owner,
            video_id=video_id,
            source_url=None,
            spec=pipeline_pb2.PipelineSpec(),
            request_id="",
            labels={},
            stages=[StagePlan("probe", (), "PENDING")],
        )
        ids.append(uuid.UUID(job.id))
    claimed = await runs.claim(count, timedelta(hours=1))
    assert len(claimed) == count
    last = {}
    for job_id in ids:
        await runs.start(job_id)
        last[job_id] = await runs.update_stage(
            job_id, "probe", state="RUNNING", progress=0.0, started=True
        )
    return last


def _watchers(metrics_address: str) -> int:
    """The gateway's open WatchJob streams, from its /metrics."""
    found = scrape(metrics_address).get("reelmill_watchers", {})
    return int(sum(found.values())) if found else -1


def _gc_pauses(metrics_address: str) -> dict[float, float]:
    """The gateway's ``reelmill.gc.pause`` histogram summed over generations: upper bound
    (seconds, ``inf`` last) -> cumulative count."""
    buckets: dict[float, float] = {}
    for key, count in scrape(metrics_address).get("reelmill_gc_pause_seconds_bucket", {}).items():
        bound = float(dict(key)["le"])
        buckets[bound] = buckets.get(bound, 0.0) + count
    return buckets


def _pauses_between(before: dict[float, float], after: dict[float, float]) -> tuple[int, str]:
    """How many collections paused the gateway between two scrapes, and the bucket the
    longest fell in ("≤ 25 ms")."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = int(counts[-1]) if counts else 0
    longest = ""
    for i, bound in enumerate(bounds):
        below = counts[i - 1] if i else 0.0
        if counts[i] > below:
            longest = "> 2.5 s" if bound == float("inf") else f"<= {bound * 1000:g} ms"
    return total, longest


async def _run(
    suite: Suite,
    url: str,
    watchers_per_job: int,
    jobs: int,
    events_per_job: int,
    rate: float,
    get_rps: float,
    get_seconds: float,
    gc_policy: str,
) -> dict[str, Any]:
    owner = f"bench-{uuid.uuid4().hex[:6]}"
    # The jobs are leased to this benchmark before the gateway starts, so its orchestrator
    # leaves them alone.
    runs, last = await _setup(url, owner, jobs)
    ids = list(last)
    metrics_address = f"127.0.0.1:{free_port()}"
    gateway = await asyncio.to_thread(
        suite.add,
        "gateway",
        "gateway",
        {"REELMILL_METRICS_LISTEN": metrics_address, "REELMILL_GC_POLICY": gc_policy},
    )
    process = psutil.Process(gateway.proc.pid)
    address = gateway.address
    metadata = (("authorization", f"Bearer {token(owner)}"),)
    commit_time: dict[tuple[str, int], float] = {}
    receipts: list[tuple[tuple[str, int], float]] = []
    channels = [
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(CHANNELS)
    ]
    stubs = [job_service_pb2_grpc.JobServiceStub(channel) for channel in channels]
    stub = stubs[0]
    streams = jobs * watchers_per_job
    failures: list[str] = []
    # Warm (one GetJob per job) before measuring the gateway's memory at rest.
    for job_id in ids:
        await stub.GetJob(job_service_pb2.GetJobRequest(job_id=str(job_id)), metadata=metadata)
    await asyncio.sleep(1.0)
    rss_before = process.memory_info().rss

    async def watch(index: int, job_id: uuid.UUID) -> None:
        call = stubs[index % CHANNELS].WatchJob(
            job_service_pb2.WatchJobRequest(job_id=str(job_id), after_sequence=last[job_id]),
            metadata=metadata,
        )
        try:
            async for response in call:
                receipts.append(((response.event.job_id, response.event.sequence), time.time()))
                if response.event.HasField("job"):
                    return
        except grpc.aio.AioRpcError as exc:
            failures.append(f"{exc.code().name}: {exc.details()}")

    opening = time.monotonic()
    watchers = []
    for index in range(streams):
        delay = opening + index / OPEN_RATE - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        watchers.append(asyncio.create_task(watch(index, ids[index % jobs])))
    # Every stream counted by the gateway, and past its journal read.
    for _ in range(600):
        if await asyncio.to_thread(_watchers, metrics_address) + len(failures) >= streams:
            break
        await asyncio.sleep(0.5)
    await asyncio.sleep(3.0)
    open_seconds = time.monotonic() - opening
    rss_open = process.memory_info().rss
    open_watchers = await asyncio.to_thread(_watchers, metrics_address)

    async def emit(job_id: uuid.UUID) -> None:
        await asyncio.sleep(random.uniform(0, 1 / rate))  # jobs do not progress in lockstep
        for step in range(1, events_per_job + 1):
            sequence = await runs.update_stage(
                job_id, "probe", state="RUNNING", progress=step / events_per_job
            )
            commit_time[(str(job_id), sequence)] = time.time()
            await asyncio.sleep(1 / rate)
        await runs.update_stage(job_id, "probe", state="SUCCEEDED")
        await runs.finish(job_id, "SUCCEEDED")

    pauses_before = await asyncio.to_thread(_gc_pauses, metrics_address)
    began = time.monotonic()
    await asyncio.gather(*(emit(j) for j in ids))
    await asyncio.wait_for(asyncio.gather(*watchers), 300)
    emit_seconds = time.monotonic() - began
    pauses = _pauses_between(pauses_before, await asyncio.to_thread(_gc_pauses, metrics_address))
    latencies = [t - commit_time[key] for key, t in receipts if key in commit_time]

    # GetJob at a fixed arrival rate (open loop: requests are sent on schedule, not after
    # the previous answer).
    get_latencies: list[float] = []

    async def one_get(job_id: uuid.UUID) -> None:
        sent = time.perf_counter()
        await stub.GetJob(job_service_pb2.GetJobRequest(job_id=str(job_id)), metadata=metadata)
        get_latencies.append(time.perf_counter() - sent)

    pending = []
    total = int(get_rps * get_seconds)
    start = time.perf_counter()
    for i in range(total):
        delay = start + i / get_rps - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        pending.append(asyncio.create_task(one_get(ids[i % len(ids)])))
    await asyncio.gather(*pending)
    for channel in channels:
        await channel.close()
    await asyncio.to_thread(stop_process, gateway.proc)
    return {
        "streams": streams,
        "open_watchers": open_watchers,
        "open_seconds": open_seconds,
        "failures": len(failures),
        "failure": failures[0] if failures else "",
        "rss_before": rss_before,
        "rss_open": rss_open,
        "deliveries": len(latencies),
        "expected": streams * events_per_job,
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "max": max(latencies) if latencies else float("nan"),
        "emit_seconds": emit_seconds,
        "gc_pauses": pauses,
        "get_n": len(get_latencies),
        "get_p50": percentile(get_latencies, 50),
        "get_p99": percentile(get_latencies, 99),
    }


#: The gateway's collector policies compared (``REELMILL_GC_POLICY``).
POLICIES = ("cpython", "server")


def main(
    quick: bool = False,
    jobs: int | None = None,
    per_job: int | None = None,
    events: int | None = None,
    rate: float | None = None,
    client_gc: str = "server",
    rounds: int = 1,
) -> None:
    """``jobs`` x ``per_job`` streams; each job emits ``events`` at ``rate`` per second. A
    gateway with each collector policy in turn, ``rounds`` times, side by side. ``client_gc``:
    the client process's collector, ``server`` (``runtime.heap.settle``) or ``default``."""
    jobs = jobs or (4 if quick else 100)
    per_job = per_job or (25 if quick else 100)
    events = events or (5 if quick else 10)
    rate = rate or (5.0 if quick else 0.5)
    if client_gc == "server":
        # The one client process stands in for 10,000 callers, each with a small heap of its
        # own: its collector gets the servers' policy, or its full collections of all the
        # streams' objects would be measured as the gateway's latency.
        heap.settle()
    runs: list[tuple[str, dict[str, Any]]] = []
    with run_postgres() as pg, tempfile.TemporaryDirectory(prefix="bench-watch-") as tmp:
        import asyncpg

        async def create_db() -> None:
            conn = await asyncpg.connect(pg.dsn())
            await conn.execute("CREATE DATABASE bench")
            await conn.close()

        asyncio.run(create_db())
        url = pg.url("bench")
        (Path(tmp) / "logs").mkdir()
        suite = Suite(
            env={
                "REELMILL_JWT_SECRET": JWT_SECRET,
                "REELMILL_INTERNAL_TOKEN": INTERNAL_TOKEN,
                # One owner drives the whole load: its per-owner request rate is not measured.
                "REELMILL_OWNER_REQUESTS_PER_SECOND": "0",
                "REELMILL_DATABASE_URL": url,
                "REELMILL_STORAGE_DIR": str(Path(tmp) / "objects"),
                "REELMILL_LOG_LEVEL": "WARNING",
            },
            logs=Path(tmp) / "logs",
        )
        try:
            for round_ in range(1, rounds + 1):
                for policy in POLICIES:
                    result = asyncio.run(
                        _run(
                            suite,
                            url,
                            per_job,
                            jobs,
                            events,
                            rate,
                            get_rps=200.0,
                            get_seconds=3.0 if quick else 10.0,
                            gc_policy=policy,
                        )
                    )
                    runs.append((f"{policy} #{round_}" if rounds > 1 else policy, result))
        finally:
            suite.stop()
    ms = 1000.0

    def row(metric: str, cell: Callable[[dict[str, Any]], str], target: str = "") -> list[str]:
        return [metric, *(cell(result) for _, result in runs), target]

    streams = runs[0][1]["streams"]
    print(
        table(
            f"WatchJob fan-out: {streams} concurrent streams on one gateway "
            f"({jobs} jobs x {per_job}; {events} events per job at {rate}/s: "
            f"{jobs * per_job * rate:,.0f} deliveries/s), by the gateway's REELMILL_GC_POLICY "
            f"(client collector: {client_gc})",
            ["metric", *(name for name, _ in runs), "target"],
            [
                row("streams the gateway counted", lambda r: str(r["open_watchers"])),
                row("streams failed", lambda r: f"{r['failures']} {r['failure']}".strip(), "0"),
                row("time to open them", lambda r: f"{r['open_seconds']:.1f} s"),
                row("gateway RSS before", lambda r: f"{r['rss_before'] / 2**20:.0f} MiB"),
                row("gateway RSS, all open", lambda r: f"{r['rss_open'] / 2**20:.0f} MiB"),
                row(
                    "memory per watcher",
                    lambda r: f"{(r['rss_open'] - r['rss_before']) / r['streams'] / 1024:.1f} KiB",
                ),
                row("events delivered", lambda r: f"{r['deliveries']}/{r['expected']}", "all"),
                row("commit -> receipt p50", lambda r: f"{r['p50'] * ms:.1f} ms"),
                row("commit -> receipt p99", lambda r: f"{r['p99'] * ms:.1f} ms", "<= 250 ms"),
                row("commit -> receipt max", lambda r: f"{r['max'] * ms:.1f} ms"),
                row(
                    "gateway GC pauses while events flowed",
                    lambda r: f"{r['gc_pauses'][0]}, longest {r['gc_pauses'][1] or '-'}",
                ),
                row("GetJob @200/s p50", lambda r: f"{r['get_p50'] * ms:.2f} ms"),
                row("GetJob @200/s p99", lambda r: f"{r['get_p99'] * ms:.2f} ms", "<= 10 ms"),
                row("GetJob requests", lambda r: str(r["get_n"])),
            ],
        )
    )


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.watch")
    parser.add_argument("--quick", action="store_true", help="100 streams")
    parser.add_argument("--jobs", type=int)
    parser.add_argument("--watchers-per-job", type=int)
    parser.add_argument("--events", type=int, help="events per job")
    parser.add_argument("--rate", type=float, help="events per second per job")
    parser.add_argument(
        "--client-gc",
        choices=("server", "default"),
        default="server",
        help="the client process's garbage collector: the servers' policy or CPython's",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="each policy this many times, alternated"
    )
    args = parser.parse_args()
    main(
        args.quick,
        args.jobs,
        args.watchers_per_job,
        args.events,
        args.rate,
        args.client_gc,
        args.rounds,
    )
