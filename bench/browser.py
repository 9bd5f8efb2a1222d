"""The browser port against native gRPC, side by side in one run on one gateway:

- WatchJob: N concurrent streams (default 1,000: 10 jobs x 100 watchers; --quick 50) over
  native gRPC (grpc.aio, multiplexed over a few HTTP/2 connections), then N more over the
  browser port's Connect server streaming (``application/connect+proto``; HTTP/1.1, so one
  TCP connection per stream, as browsers open them), while the jobs emit events: latency from
  the event's commit to its receipt by each client, p50/p99, and the p99 ratio.
- Uploads: MiB/s of one resumable-upload write of 64 MiB (--quick 8 MiB) over native
  WriteUpload (1 MiB messages) against ``PUT /uploads/{id}`` on the browser port (the body
  written in 1 MiB pieces), both into the same ingest and local store; each twice,
  alternating, the better of the two kept.

The events are written as the orchestrator writes them (``Runs.update_stage`` under a lease
this benchmark holds, so the gateway's orchestrator leaves the jobs alone). The clients are
one asyncio process; the HTTP/1.1 client is a minimal one (chunked responses, envelopes).
"""

from __future__ import annotations

import asyncio
import os
import random
import struct
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import grpc

from bench.common import percentile, table
from bench.watch import running_jobs
from gateway.db.engine import make_engine, make_sessionmaker, migrate
from gateway.runs import Runs
from gateway.store import Store
from reelmill.v1 import job_service_pb2, job_service_pb2_grpc
from tests.servers import free_port, run_postgres
from tests.suite import INTERNAL_TOKEN, JWT_SECRET, Suite, token

CHANNELS = 8
OPEN_RATE = 200.0
MIB = 1024 * 1024


async def _read_chunked(reader: asyncio.StreamReader) -> Any:
    """Yields the body of a chunked HTTP/1.1 response as it arrives."""
    while True:
        line = await reader.readline()
        size = int(line.strip().split(b";")[0], 16)
        if size == 0:
            await reader.readline()
            return
        data = await reader.readexactly(size)
        await reader.readexactly(2)
        yield data


async def _connect_watch(
    port: int, bearer: str, job_id: uuid.UUID, after: int, on_event: Any
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        message = job_service_pb2.WatchJobRequest(
            job_id=str(job_id), after_sequence=after
        ).SerializeToString()
        body = struct.pack(">BI", 0, len(message)) + message
        writer.write(
            (
                "POST /reelmill.v1.JobService/WatchJob HTTP/1.1\r\nhost: 127.0.0.1\r\n"
                "content-type: application/connect+proto\r\n"
                f"authorization: Bearer {bearer}\r\ncontent-length: {len(body)}\r\n\r\n"
            ).encode()
            + body
        )
        await writer.drain()
        status = await reader.readline()
        assert b" 200 " in status, status
        chunked = False
        while (line := await reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower():
                chunked = True
        assert chunked
        pending = b""
        async for data in _read_chunked(reader):
            pending += data
            while len(pending) >= 5:
                flags, length = struct.unpack(">BI", pending[:5])
                if len(pending) < 5 + length:
                    break
                frame, pending = pending[5 : 5 + length], pending[5 + length :]
                if flags & 0x02:
                    assert frame in (b"{}", b""), frame
                    return
                response = job_service_pb2.WatchJobResponse.FromString(frame)
                on_event(response)
    finally:
        writer.close()


async def _watch_round(
    mode: str,
    runs: Runs,
    last: dict[uuid.UUID, int],
    owner: str,
    jobs: int,
    per_job: int,
    events: int,
    rate: float,
    grpc_address: str,
    browser_port: int,
) -> dict[str, Any]:
    ids = list(last)
    bearer = token(owner)
    metadata = (("authorization", f"Bearer {bearer}"),)
    commit_time: dict[tuple[str, int], float] = {}
    receipts: list[tuple[tuple[str, int], float]] = []
    failures: list[str] = []
    channels = [
        grpc.aio.insecure_channel(grpc_address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(CHANNELS)
    ]
    stubs = [job_service_pb2_grpc.JobServiceStub(channel) for channel in channels]
    opened = [0]

    def on_event(response: job_service_pb2.WatchJobResponse) -> None:
        receipts.append(((response.event.job_id, response.event.sequence), time.time()))

    async def watch(index: int, job_id: uuid.UUID) -> None:
        try:
            if mode == "native":
                call = stubs[index % CHANNELS].WatchJob(
                    job_service_pb2.WatchJobRequest(
                        job_id=str(job_id), after_sequence=last[job_id]
                    ),
                    metadata=metadata,
                )
                opened[0] += 1
                async for response in call:
                    on_event(response)
            else:
                opened[0] += 1
                await _connect_watch(browser_port, bearer, job_id, last[job_id], on_event)
        except Exception as exc:  # counted and shown
            failures.append(f"{type(exc).__name__}: {exc}"[:200])

    start = time.monotonic()
    tasks = []
    for index in range(jobs * per_job):
        delay = start + index / OPEN_RATE - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(watch(index, ids[index % jobs])))
    await asyncio.sleep(3.0)  # every stream past its GetJob and journal read

    async def emit(job_id: uuid.UUID) -> None:
        await asyncio.sleep(random.uniform(0, 1 / rate))
        for step in range(1, events + 1):
            sequence = await runs.update_stage(
                job_id, "probe", state="RUNNING", progress=step / events
            )
            commit_time[(str(job_id), sequence)] = time.time()
            await asyncio.sleep(1 / rate)
        await runs.update_stage(job_id, "probe", state="SUCCEEDED")
        await runs.finish(job_id, "SUCCEEDED")

    await asyncio.gather(*(emit(j) for j in ids))
    await asyncio.wait_for(asyncio.gather(*tasks), 300)
    for channel in channels:
        await channel.close()
    latencies = [t - commit_time[key] for key, t in receipts if key in commit_time]
    return {
        "streams": jobs * per_job,
        "failures": len(failures),
        "failure": failures[0] if failures else "",
        "delivered": len(latencies),
        "expected": jobs * per_job * events,
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
    }


async def _upload_round(mode: str, grpc_address: str, browser_port: int, size: int) -> float:
    owner = f"bench-up-{uuid.uuid4().hex[:6]}"
    bearer = token(owner)
    metadata = (("authorization", f"Bearer {bearer}"),)
    data = os.urandom(MIB)
    async with grpc.aio.insecure_channel(grpc_address) as channel:
        stub = job_service_pb2_grpc.JobServiceStub(channel)
        started = await stub.StartUpload(
            job_service_pb2.StartUploadRequest(
                header=job_service_pb2.UploadHeader(filename="bench.bin", size_bytes=size)
            ),
            metadata=metadata,
        )
        upload_id = started.upload.id
        began = time.perf_counter()
        if mode == "native":

            async def messages() -> Any:
                for index in range(size // MIB):
                    yield job_service_pb2.WriteUploadRequest(
                        upload_id=upload_id if index == 0 else "",
                        write_offset=index * MIB,
                        data=data,
                    )

            response = await stub.WriteUpload(messages(), metadata=metadata)
            committed = response.committed_size
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", browser_port)
            writer.write(
                (
                    f"PUT /uploads/{upload_id}?offset=0 HTTP/1.1\r\nhost: 127.0.0.1\r\n"
                    f"authorization: Bearer {bearer}\r\n"
                    "content-type: application/octet-stream\r\n"
                    f"content-length: {size}\r\n\r\n"
                ).encode()
            )
            for _ in range(size // MIB):
                writer.write(data)
                await writer.drain()
            status = await reader.readline()
            assert b" 200 " in status, status
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            import json

            committed = int(json.loads(await reader.readexactly(length))["committedSize"])
            writer.close()
        seconds = time.perf_counter() - began
    assert committed == size, (mode, committed, size)
    return size / MIB / seconds


async def _run(suite: Suite, url: str, quick: bool) -> dict[str, Any]:
    engine = make_engine(url, pool_size=5)
    await migrate(engine)
    sessions = make_sessionmaker(engine)
    store = Store(sessions)
    runs = Runs(sessions, "bench-writer")
    browser_port = free_port()
    jobs, per_job = (2, 25) if quick else (10, 100)
    events, rate = (5, 5.0) if quick else (10, 1.0)
    # Leased to this benchmark before the gateway starts, so its orchestrator leaves them.
    owners = {mode: f"bench-{mode}-{uuid.uuid4().hex[:6]}" for mode in ("native", "browser")}
    prepared = {
        mode: await running_jobs(runs, store, owner, jobs) for mode, owner in owners.items()
    }
    await asyncio.to_thread(suite.add, "ingest", "services.ingest")
    gateway = await asyncio.to_thread(
        suite.add,
        "gateway",
        "gateway",
        {"REELMILL_BROWSER_LISTEN": f"127.0.0.1:{browser_port}"},
    )
    size = (8 if quick else 64) * MIB
    result: dict[str, Any] = {}
    for mode, owner in owners.items():
        result[mode] = await _watch_round(
            mode,
            runs,
            prepared[mode],
            owner,
            jobs,
            per_job,
            events,
            rate,
            gateway.address,
            browser_port,
        )
    # Each twice, alternating, the better kept: the first write also warms ingest's path.
    for mode in ("native", "browser", "native", "browser"):
        rate_mib = await _upload_round(mode, gateway.address, browser_port, size)
        result[f"{mode}_upload"] = max(result.get(f"{mode}_upload", 0.0), rate_mib)
    result["upload_mib"] = size // MIB
    await engine.dispose()
    return result


def main(quick: bool = False) -> None:
    with run_postgres() as pg, tempfile.TemporaryDirectory(prefix="bench-browser-") as tmp:
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
                "REELMILL_OWNER_REQUESTS_PER_SECOND": "0",
                "REELMILL_DATABASE_URL": url,
                "REELMILL_STORAGE_BACKEND": "local",
                "REELMILL_STORAGE_DIR": str(Path(tmp) / "objects"),
                "REELMILL_SCRATCH_DIR": str(Path(tmp) / "scratch"),
                "REELMILL_LOG_LEVEL": "WARNING",
            },
            logs=Path(tmp) / "logs",
        )
        try:
            result = asyncio.run(_run(suite, url, quick))
        finally:
            suite.stop()
    ms = 1000.0
    native, browser = result["native"], result["browser"]
    rows = []
    for label, key, fmt in (
        ("streams", "streams", "{}"),
        ("streams failed", "failures", "{}"),
        ("events delivered", "delivered", "{}"),
        ("commit -> receipt p50", "p50", "ms"),
        ("commit -> receipt p99", "p99", "ms"),
    ):
        a, b = native[key], browser[key]
        if fmt == "ms":
            rows.append([label, f"{a * ms:.1f} ms", f"{b * ms:.1f} ms", f"{b / a:.2f}x"])
        else:
            rows.append([label, str(a), str(b), ""])
    rows.append(["events expected", str(native["expected"]), str(browser["expected"]), ""])
    if browser["failure"] or native["failure"]:
        rows.append(["first failure", native["failure"], browser["failure"], ""])
    rows.append(
        [
            f"upload {result['upload_mib']} MiB (resumable write)",
            f"{result['native_upload']:.0f} MiB/s",
            f"{result['browser_upload']:.0f} MiB/s",
            f"{result['browser_upload'] / result['native_upload']:.2f}x",
        ]
    )
    print(
        table(
            "Browser port (Connect over HTTP/1.1) vs native gRPC, one gateway, same run",
            ["metric", "native gRPC", "browser port", "browser / native"],
            rows,
        )
    )
