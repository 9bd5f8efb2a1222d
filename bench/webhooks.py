"""Webhook delivery latency with 1,000 jobs finishing, beside WatchJob in the same run.

One gateway process (its own delivery worker, default settings), a real receiver on
127.0.0.1 in a process of its own (``python -m tests.webhook_receiver``; every signature is
checked afterwards with the receiver's own code), and one WatchJob stream per job. The jobs are
probe-only jobs whose events this benchmark writes exactly as the orchestrator does (``Runs``,
under a lease it holds, so the gateway's orchestrator leaves them alone). Each job then
finishes (``Runs.finish``: the terminal event and its outbox row in one transaction), paced at
a fixed rate (open loop). Measured from the event's time — Postgres ``now()`` of the
transaction that commits it, which both the webhook payload (``timestamp``) and the WatchJob
event (``create_time``) carry, a few ms before the COMMIT returns — to:

- webhook: the receiver process having the signed POST of ``job.succeeded``;
- WatchJob: the job's watcher having the same terminal event (a stream held open: the fastest
  way to learn of the end, and what a webhook spares the caller from holding).

Two rounds: paced (``--rate``, 100 jobs/s) and a burst (every job finished as fast as the
writers can).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc

from bench.common import percentile, table
from gateway.db.engine import make_engine, make_sessionmaker, migrate
from gateway.runs import Runs
from gateway.store import StagePlan, Store
from reelmill.client import ReelmillClient
from reelmill.v1 import job_service_pb2, job_service_pb2_grpc, media_pb2, pipeline_pb2
from reelmill.v1 import webhook_service_pb2 as pb
from tests.servers import run_postgres, stop_process
from tests.suite import INTERNAL_TOKEN, JWT_SECRET, ROOT, Suite, token
from tests.webhook_receiver import receiver_verifies


async def _jobs(store: Store, runs: Runs, owner: str, count: int) -> list[uuid.UUID]:
    """``count`` probe-only jobs, leased to this benchmark, their probe done."""
    video_id = str(uuid.uuid4())
    await store.add_video(
        owner,
        media_pb2.Video(
            id=video_id,
            filename="bench.mp4",
            content_type="video/mp4",
            size_bytes=1,
            sha256="0" * 64,
            object=media_pb2.ObjectRef(key=f"videos/{video_id}/source"),
        ),
    )
    ids: list[uuid.UUID] = []

    async def one() -> None:
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

    for start in range(0, count, 50):
        await asyncio.gather(*(one() for _ in range(min(50, count - start))))
    claimed = 0
    while claimed < count:
        got = len(await runs.claim(200, timedelta(hours=1)))
        if not got:
            raise RuntimeError("jobs claimed by someone else")
        claimed += got

    async def ready(job_id: uuid.UUID) -> None:
        await runs.start(job_id)
        await runs.update_stage(job_id, "probe", state="RUNNING", started=True)
        await runs.update_stage(job_id, "probe", state="SUCCEEDED")

    for start in range(0, count, 50):
        await asyncio.gather(*(ready(j) for j in ids[start : start + 50]))
    return ids


@dataclass
class ReceiverProcess:
    """The receiver in its own process, and what it wrote down."""

    proc: subprocess.Popen[str]
    port: int
    log: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[dict[str, Any]]:
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        found = [json.loads(line) for line in lines if line]
        return [r for r in found if r["path"] == path]


def _event_time(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


async def _round(
    address: str,
    receiver: ReceiverProcess,
    path: str,
    secret: str,
    runs: Runs,
    owner: str,
    ids: list[uuid.UUID],
    rate: float | None,
) -> dict[str, float]:
    metadata = (("authorization", f"Bearer {token(owner)}"),)
    channel = grpc.aio.insecure_channel(address)
    stub = job_service_pb2_grpc.JobServiceStub(channel)
    watched: dict[str, float] = {}
    subscribed = asyncio.Event()
    open_streams = 0

    async def watch(job_id: uuid.UUID) -> None:
        nonlocal open_streams
        last = (
            await stub.GetJob(job_service_pb2.GetJobRequest(job_id=str(job_id)), metadata=metadata)
        ).job.last_event_sequence
        call = stub.WatchJob(
            job_service_pb2.WatchJobRequest(job_id=str(job_id), after_sequence=last),
            metadata=metadata,
        )
        open_streams += 1
        if open_streams == len(ids):
            subscribed.set()
        async for response in call:
            if response.event.HasField("job"):
                arrived = time.time()
                created = response.event.create_time.ToDatetime(tzinfo=UTC).timestamp()
                watched[str(job_id)] = arrived - created
                return

    watchers = [asyncio.create_task(watch(j)) for j in ids]
    await asyncio.wait_for(subscribed.wait(), 300)
    await asyncio.sleep(1.0)  # every stream in its live phase

    async def finish(job_id: uuid.UUID) -> None:
        await runs.finish(job_id, "SUCCEEDED")

    began = time.perf_counter()
    if rate is None:
        writers = 16
        for start in range(0, len(ids), writers):
            await asyncio.gather(*(finish(j) for j in ids[start : start + writers]))
    else:
        # On schedule, with at most 16 writers at once: a machine that cannot commit that
        # fast shows a lower achieved rate (printed) instead of a pile of waiting writers.
        writing = asyncio.Semaphore(16)

        async def paced(job_id: uuid.UUID) -> None:
            async with writing:
                await finish(job_id)

        pending = []
        for n, job_id in enumerate(ids):
            delay = began + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await writing.acquire()  # wait for a writer (the schedule slips, it is shown)
            writing.release()
            pending.append(asyncio.create_task(paced(job_id)))
        await asyncio.gather(*pending)
    finish_seconds = time.perf_counter() - began
    await asyncio.wait_for(asyncio.gather(*watchers), 300)
    wanted = {str(j) for j in ids}
    for _ in range(3000):
        got = receiver.at(path)
        if {json.loads(r["body"])["data"]["job_id"] for r in got} >= wanted:
            break
        await asyncio.sleep(0.1)
    drained = time.perf_counter() - began
    await channel.close()
    first: dict[str, float] = {}
    verified = 0
    for request in got:
        payload = json.loads(request["body"])
        verified += receiver_verifies([secret], request["headers"], request["body"].encode())
        job_id = payload["data"]["job_id"]
        first.setdefault(job_id, request["at"] - _event_time(payload["timestamp"]))
    hooks = [first[j] for j in wanted]
    streams = [watched[j] for j in wanted]
    return {
        "jobs": len(wanted),
        "verified": verified,
        "requests": len(got),
        "finish_seconds": finish_seconds,
        "drain_seconds": drained,
        "hook_p50": percentile(hooks, 50),
        "hook_p99": percentile(hooks, 99),
        "hook_max": max(hooks),
        "watch_p50": percentile(streams, 50),
        "watch_p99": percentile(streams, 99),
        "watch_max": max(streams),
    }


async def _run(
    suite: Suite, url: str, receiver: ReceiverProcess, jobs: int, rate: float
) -> list[dict[str, Any]]:
    engine = make_engine(url, pool_size=20)
    await migrate(engine)
    sessions = make_sessionmaker(engine)
    store, runs = Store(sessions), Runs(sessions, "bench-writer")
    owner = f"bench-{uuid.uuid4().hex[:6]}"
    rounds = (("paced", rate), ("burst", None))
    results = []
    try:
        # Leased before the gateway starts: its orchestrator leaves them alone.
        batches = [await _jobs(store, runs, owner, jobs) for _ in rounds]
        address = (await asyncio.to_thread(suite.add, "gateway", "gateway")).address
        for (name, pace), ids in zip(rounds, batches, strict=True):
            path = f"/{name}"
            async with ReelmillClient(address, token=token(owner)) as client:
                endpoint, secret = await client.create_webhook_endpoint(
                    receiver.url(path), event_types=[pb.WEBHOOK_EVENT_TYPE_JOB_SUCCEEDED]
                )
            result = await _round(address, receiver, path, secret, runs, owner, ids, pace)
            async with ReelmillClient(address, token=token(owner)) as client:
                await client.delete_webhook_endpoint(endpoint.id)  # the next round's alone
            results.append({"round": name, **result})
    finally:
        await engine.dispose()
    return results


def _spread(result: dict[str, Any], name: str) -> str:
    ms = 1000.0
    p50, p99, top = (result[f"{name}_{q}"] * ms for q in ("p50", "p99", "max"))
    return f"{p50:.1f} / {p99:.1f} / {top:.0f}"


def main(quick: bool = False, jobs: int | None = None, rate: float | None = None) -> None:
    count = jobs or (100 if quick else 1000)
    pace = rate or (50.0 if quick else 100.0)
    with run_postgres() as pg, tempfile.TemporaryDirectory(prefix="bench-webhooks-") as tmp:
        url = pg.url(pg.create_database("bench"))
        log = Path(tmp) / "received.jsonl"
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.webhook_receiver", str(log)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        receiver = ReceiverProcess(proc, int(proc.stdout.readline()), log)
        (Path(tmp) / "logs").mkdir()
        suite = Suite(
            env={
                "REELMILL_JWT_SECRET": JWT_SECRET,
                "REELMILL_INTERNAL_TOKEN": INTERNAL_TOKEN,
                "REELMILL_OWNER_REQUESTS_PER_SECOND": "0",  # one owner drives the whole load
                "REELMILL_DATABASE_URL": url,
                "REELMILL_STORAGE_DIR": str(Path(tmp) / "objects"),
                "REELMILL_LOG_LEVEL": "WARNING",
                "REELMILL_WEBHOOK_SECRET_KEY": base64.b64encode(b"b" * 32).decode(),
                "REELMILL_WEBHOOK_ALLOW_HOSTS": "127.0.0.1",
                "REELMILL_WEBHOOK_ALLOWED_PORTS": f"80,443,{receiver.port}",
            },
            logs=Path(tmp) / "logs",
        )
        try:
            results = asyncio.run(_run(suite, url, receiver, count, pace))
        finally:
            suite.stop()
            stop_process(proc)
    rows = []
    for r in results:
        achieved = r["jobs"] / r["finish_seconds"]
        how = (
            f"{pace:g} jobs/s asked, {achieved:.0f} done"
            if r["round"] == "paced"
            else f"16 writers, {achieved:.0f} jobs/s"
        )
        rows.append(
            [
                f"{r['round']} ({how})",
                f"{r['jobs']}",
                _spread(r, "hook"),
                _spread(r, "watch"),
                f"{r['verified']}/{r['requests']}",
                f"{r['finish_seconds']:.1f} s / {r['drain_seconds']:.1f} s",
            ]
        )
    print(
        table(
            "Webhook delivery vs WatchJob: terminal event (its transaction's time) -> caller, "
            "one gateway (ms, p50 / p99 / max)",
            [
                "round",
                "jobs",
                "webhook (POST received)",
                "WatchJob (event received)",
                "signatures ok",
                "finished in / all delivered in",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.webhooks")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--jobs", type=int)
    parser.add_argument("--rate", type=float, help="jobs finished per second in the paced round")
    args = parser.parse_args()
    main(quick=args.quick, jobs=args.jobs, rate=args.rate)
