"""Fault tests: real processes, real Postgres, a real S3 server, real media.

Processes are SIGKILLed at random (seeded) moments mid-job and restarted on the same port;
two gateways hand a job over when the one running it dies; Postgres and the S3 server are
restarted mid-job; fifty short jobs run at once. Whatever happens, every job ends (SUCCEEDED,
or FAILED for a transient reason once its retries ran out), its events are numbered 1..N
without gap or repeat, its artifact rows and the objects under ``jobs/{id}/`` match one to
one, and nothing is left in scratch or as an unfinished multipart upload.

Everything runs on the s3 backend (the local store is not affected by S3 restarts, and S3 is
where unfinished multipart uploads can be left behind).

Run with ``-s`` to see the kills and the memory table of the fifty-job run; set
``REELMILL_FAULTS_REPORT`` to also write that table as JSON, and ``REELMILL_FAULTS_LOGS`` to
a directory to keep the processes' logs of a failed test there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import psutil
import pytest
from minio import Minio

from reelmill.client import ReelmillClient
from reelmill.v1 import job_pb2, pipeline_pb2
from runtime.ffmpeg import ffmpeg_path
from tests.conftest import FreshBucket, SuiteEnv
from tests.media import make_clip, make_speech_clip
from tests.servers import (
    S3Server,
    restart_postgres,
    run_postgres,
    run_seaweedfs,
)
from tests.suite import Process, Suite, run_suite, token

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

#: Codes a job may fail with when faults outlast its retries (anything else is a bug).
TRANSIENT_CODES = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"}
#: Generous bound on any one wait; never an assertion about speed.
PATIENCE = 240.0

#: The whole pipeline, kept small: one low rung, HLS, one thumbnail, a storyboard, the audio
#: branch with transcription and metadata. Never reused from an earlier job of the same clip:
#: every job does its work, which the faults interrupt.
SMALL = pipeline_pb2.PipelineSpec(
    reuse=False,
    transcode=pipeline_pb2.TranscodeSpec(
        ladder=[pipeline_pb2.LadderRung(height=120)],
        thumbnails=pipeline_pb2.ThumbnailSpec(count=1, width=160),
        preset="ultrafast",
    ),
    transcribe=pipeline_pb2.TranscribeSpec(beam_size=1),
)
#: Short leases and backoffs so that faults resolve within seconds.
FAST = {
    "REELMILL_LEASE_SECONDS": "3",
    "REELMILL_POLL_SECONDS": "0.5",
    "REELMILL_RETRY_INITIAL_BACKOFF_SECONDS": "0.2",
    "REELMILL_RETRY_MAX_BACKOFF_SECONDS": "1",
    "REELMILL_STAGE_MAX_ATTEMPTS": "6",
    "REELMILL_PURGE_DELAY_SECONDS": "0.5",
    "REELMILL_PURGE_INTERVAL_SECONDS": "0.5",
    "REELMILL_GRACE_SECONDS": "2",
    "REELMILL_S3_PART_SIZE_MIB": "5",
    "REELMILL_WHISPER_CPU_THREADS": "1",
    "REELMILL_FFMPEG_THREADS": "1",
}

#: Result caches off (each process's and the shared one): every job does all of its work.
UNCACHED = {"REELMILL_CACHE_ENTRIES": "0", "REELMILL_AI_CACHE": "off"}


# fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory, shared_media: Path) -> Path:
    """A 3-second video whose audio is speech, so every stage has work to do."""
    root = tmp_path_factory.mktemp("faults-media")
    words = root / "jfk3.wav"
    subprocess.run(
        [ffmpeg_path(), "-hide_banner", "-loglevel", "error", "-y",
         "-i", str(shared_media / "speech" / "jfk.flac"), "-t", "3", str(words)],
        check=True,
    )  # fmt: skip
    return make_speech_clip(root / "jfk3.mp4", words)


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("faults-clip") / "one.mp4", seconds=2)


@pytest.fixture
def env(suite_env: SuiteEnv) -> dict[str, str]:
    """A fresh database and a fresh bucket on the session's S3 server."""
    return suite_env("s3")


@contextlib.contextmanager
def running(env: dict[str, str], *, gateways: int = 1, **extra: str) -> Iterator[Suite]:
    """A suite on ``env`` (a database and storage) with FAST timings."""
    with run_suite({**FAST, **env, **extra}, gateways=gateways) as suite:
        try:
            yield suite
        except BaseException:
            # The suite's logs go with it; keep them where asked for a post-mortem.
            if keep := os.environ.get("REELMILL_FAULTS_LOGS"):
                shutil.copytree(suite.logs, Path(keep) / suite.logs.name)
            raise


def dsn_of(suite: Suite) -> str:
    """The suite's database, for asyncpg."""
    url = suite.env["REELMILL_DATABASE_URL"]
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


# what must hold after any fault ----------------------------------------------------------------


def s3_client(suite: Suite) -> Minio:
    """A client of the suite's S3 server (every test here runs on the s3 backend)."""
    return S3Server(
        endpoint=suite.env["REELMILL_S3_ENDPOINT"],
        access_key=suite.env["REELMILL_S3_ACCESS_KEY"],
        secret_key=suite.env["REELMILL_S3_SECRET_KEY"],
    ).client()


def stored_keys(suite: Suite, prefix: str) -> set[str]:
    objects = s3_client(suite).list_objects(
        suite.env["REELMILL_S3_BUCKET"], prefix=prefix, recursive=True
    )
    return {o.object_name for o in objects if o.object_name is not None}


def incomplete_uploads(suite: Suite) -> list[str]:
    result = s3_client(suite)._list_multipart_uploads(suite.env["REELMILL_S3_BUCKET"])
    return [upload.object_name for upload in result.uploads]


def scratch_left(suite: Suite) -> list[Path]:
    return list(Path(suite.env["REELMILL_SCRATCH_DIR"]).iterdir())


async def eventually(check: Any, what: str, timeout: float = 60.0) -> None:
    """Polls ``check`` (a function, sync or async) until it returns something true; a
    bounded wait for a state, never an assertion about speed."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still not so after {timeout:.0f}s")
        await asyncio.sleep(0.25)


async def check_job(
    suite: Suite, dsn: str, job_id: str, seen: list[int], client: ReelmillClient
) -> job_pb2.Job:
    """Everything that must hold for a finished job, whatever happened to it."""
    conn = await asyncpg.connect(dsn)
    try:
        key = uuid.UUID(job_id)
        row = await conn.fetchrow("SELECT state, error FROM jobs WHERE id = $1", key)
        assert row is not None
        sequences = [
            r["sequence"]
            for r in await conn.fetch(
                "SELECT sequence FROM job_events WHERE job_id = $1 ORDER BY sequence", key
            )
        ]
        # the journal: 1..N; the watcher: the same, each once, whatever reconnects it made
        assert sequences == list(range(1, len(sequences) + 1))
        assert seen == sequences, (seen, sequences)
        if row["state"] == "FAILED":
            error = json.loads(row["error"]) if isinstance(row["error"], str) else row["error"]
            assert error["code"] in TRANSIENT_CODES, error  # retries ran out, nothing else
        else:
            assert row["state"] == "SUCCEEDED", row

        async def purged() -> bool:
            pending = await conn.fetchval(
                "SELECT count(*) FROM purges WHERE prefix = $1", f"jobs/{job_id}/"
            )
            return pending == 0

        await eventually(purged, f"purges of {job_id}")
        rows = await conn.fetch("SELECT name, object_key FROM artifacts WHERE job_id = $1", key)
    finally:
        await conn.close()
    keys = [r["object_key"] for r in rows]
    assert len(keys) == len(set(keys)), "two artifacts share an object"
    stored = stored_keys(suite, f"jobs/{job_id}/")
    assert stored == set(keys), {
        "orphans": sorted(stored - set(keys)),
        "missing": sorted(set(keys) - stored),
    }
    if row["state"] == "SUCCEEDED":
        assert keys, "a succeeded job with no artifacts"
    return await client.get_job(job_id)


async def check_clean(suite: Suite, *, killed: tuple[Process, ...] = ()) -> None:
    """No scratch leftovers, no unfinished uploads, every process (but ``killed``) still up."""
    await eventually(lambda: not scratch_left(suite), f"scratch empty: {scratch_left(suite)}")
    await eventually(lambda: not incomplete_uploads(suite), "no incomplete uploads")
    for name, processes in suite.processes.items():
        for process in processes:
            if process in killed:
                continue
            assert process.proc.poll() is None, f"{name} died:\n{process.output()[-3000:]}"


async def watch(client: ReelmillClient, job_id: str, seen: list[int]) -> job_pb2.JobEvent:
    last = None
    async for event in client.watch_job(job_id, max_reconnects=60):
        seen.append(event.sequence)
        last = event
    assert last is not None and last.job.state in (
        job_pb2.JOB_STATE_SUCCEEDED,
        job_pb2.JOB_STATE_FAILED,
    ), last
    return last


# 1. SIGKILL every kind of process, many times, at random moments -------------------------------

KINDS = ("ingest", "transcode", "transcribe", "metadata", "gateway")
ROUNDS = 6


async def kill_and_restart(suite: Suite, process: Process, pause: float) -> Process:
    suite.kill(process)
    if pause:
        await asyncio.sleep(pause)
    return await asyncio.to_thread(suite.restart, process)


async def chaos(suite: Suite, rng: random.Random, stop: asyncio.Event, log: list[str]) -> None:
    order = rng.sample(KINDS, len(KINDS))
    turn = 0
    while True:
        try:
            await asyncio.wait_for(stop.wait(), rng.uniform(0.2, 1.5))
            return
        except TimeoutError:
            pass
        kind = order[turn % len(order)]
        turn += 1
        process = rng.choice(suite.processes[kind])
        pause = rng.choice((0.0, 0.0, rng.uniform(0.3, 2.0)))
        began = time.monotonic()
        await kill_and_restart(suite, process, pause)
        log.append(f"{kind} killed, back after {time.monotonic() - began:.1f}s")


async def test_sigkill_any_process_mid_job(env: dict[str, str], speech: Path) -> None:
    rng = random.Random(5)
    with running(env) as suite:
        dsn = dsn_of(suite)
        kills: list[str] = []
        outcomes: list[str] = []
        async with ReelmillClient(suite.gateway, token=token()) as client:
            video = await client.upload_file(speech)
            round_ = 0
            # ROUNDS rounds, and more (up to three times as many) until every kind was killed
            while round_ < ROUNDS or (killed_kinds(kills) != set(KINDS) and round_ < 3 * ROUNDS):
                round_ += 1
                jobs = [await client.create_job(video.id, spec=SMALL) for _ in range(3)]
                seen: dict[str, list[int]] = {job.id: [] for job in jobs}
                stop = asyncio.Event()
                monkey = asyncio.create_task(chaos(suite, rng, stop, kills))
                try:
                    async with asyncio.timeout(PATIENCE):
                        await asyncio.gather(*(watch(client, j.id, seen[j.id]) for j in jobs))
                finally:
                    stop.set()
                    await monkey
                for job in jobs:
                    done = await check_job(suite, dsn, job.id, seen[job.id], client)
                    retried = {s.name: s.attempts for s in done.stages if s.attempts > 1}
                    outcomes.append(f"{job_pb2.JobState.Name(done.state)} {retried}")
                print(f"round {round_}: {len(kills)} kills so far; {outcomes[-len(jobs) :]}")
        await check_clean(suite)
        print("\n".join(kills))
        assert killed_kinds(kills) == set(KINDS)


def killed_kinds(kills: list[str]) -> set[str]:
    return {kill.split()[0] for kill in kills}


async def test_sigkill_ingest_mid_upload_leaves_no_multipart_upload(
    env: dict[str, str],
) -> None:
    """An upload larger than a part is a multipart upload in S3: killed mid-way, ingest can
    neither finish nor abort it, so its next life's sweep must."""
    # Leftovers count as stale after 10 s here (a day by default); the upload is killed well
    # before its own ingest would take it for one.
    extra = {"REELMILL_STALE_AFTER_SECONDS": "10", "REELMILL_SWEEP_INTERVAL_SECONDS": "1"}
    with running(env, **extra) as suite:
        part = 5 * 2**20  # REELMILL_S3_PART_SIZE_MIB
        sent = asyncio.Event()
        hold = asyncio.Event()

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(2 * part // 2**20 + 1):  # two parts and a bit: parts go up at once
                yield os.urandom(2**20)
            sent.set()
            await hold.wait()

        async with ReelmillClient(suite.gateway, token=token()) as client:
            upload = asyncio.create_task(client.upload(chunks(), filename="big.mp4", size=4 * part))
            try:
                await sent.wait()
                await eventually(lambda: incomplete_uploads(suite), "a multipart upload begun")
                assert not scratch_left(suite)  # the bytes go to S3 only, not to scratch too
                ingest = suite.processes["ingest"][0]
                suite.kill(ingest)
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await upload
                assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
            finally:
                hold.set()
                upload.cancel()
                await asyncio.gather(upload, return_exceptions=True)
            assert incomplete_uploads(suite)  # what the kill left
            await asyncio.to_thread(suite.restart, ingest)
            await check_clean(suite)  # swept: no multipart upload
            assert not stored_keys(suite, "videos/")


async def test_hung_service_exhausts_retries_and_its_late_writes_are_purged(
    env: dict[str, str], short_clip: Path
) -> None:
    """Transcode frozen (SIGSTOP) for longer than every attempt's deadline: the job fails with
    DEADLINE_EXCEEDED once its retries run out. Thawed, transcode finds its calls cancelled;
    whatever it had written or still writes under the job's prefix goes with the purge, so
    the artifacts of the stages that finished and the stored objects still match."""
    extra = {"REELMILL_STAGE_TIMEOUT_SECONDS": "4", "REELMILL_STAGE_MAX_ATTEMPTS": "2"}
    with running(env, **extra) as suite:
        transcode = suite.processes["transcode"][0]
        spec = pipeline_pb2.PipelineSpec(
            transcode=pipeline_pb2.TranscodeSpec(ladder=[pipeline_pb2.LadderRung(height=120)]),
            audio=pipeline_pb2.AudioSpec(disabled=True),  # it would call transcode too
        )
        async with ReelmillClient(suite.gateway, token=token()) as client:
            video = await client.upload_file(short_clip)
            transcode.proc.send_signal(signal.SIGSTOP)
            try:
                job = await client.create_job(video.id, spec=spec)
                seen: list[int] = []
                async with asyncio.timeout(PATIENCE):
                    last = await watch(client, job.id, seen)
            finally:
                transcode.proc.send_signal(signal.SIGCONT)
            assert last.job.state == job_pb2.JOB_STATE_FAILED
            assert last.job.error.code == "DEADLINE_EXCEEDED", last.job.error
            stages = {s.name: s for s in last.job.stages}
            assert stages["transcode"].attempts == 2
            assert stages["transcode"].state == job_pb2.STAGE_STATE_FAILED
            # the thawed service's scratch is gone once it has noticed the cancelled calls
            await eventually(lambda: not scratch_left(suite), "transcode cleaned up")
            await asyncio.sleep(2)  # room for a late write, before checking for orphans
            await check_job(suite, dsn_of(suite), job.id, seen, client)
        await check_clean(suite)


# 2. two gateways: SIGKILL the one running a job --------------------------------------------------


async def lease_owner_pid(dsn: str, job_id: str) -> int | None:
    conn = await asyncpg.connect(dsn)
    try:
        owner = await conn.fetchval(
            "SELECT lease_owner FROM jobs WHERE id = $1 AND state = 'RUNNING'", uuid.UUID(job_id)
        )
    finally:
        await conn.close()
    return int(owner.split(":")[1]) if owner else None


async def test_surviving_gateway_resumes_a_killed_gateways_job(
    env: dict[str, str], speech: Path
) -> None:
    with running(env, gateways=2) as suite:
        dsn = dsn_of(suite)
        first, second = suite.processes["gateway"]
        owner = token()
        # Transcode frozen: the transcode stage is surely in flight when the gateway dies.
        transcode = suite.processes["transcode"][0].proc
        transcode.send_signal(signal.SIGSTOP)
        try:
            async with ReelmillClient(first.address, token=owner) as client:
                video = await client.upload_file(speech)
                job = await client.create_job(video.id, spec=SMALL)
                await eventually(lambda: stage_running(client, job.id, "transcode"), "transcoding")
                pid = await lease_owner_pid(dsn, job.id)
            doomed, survivor = (first, second) if pid == first.proc.pid else (second, first)
            assert pid == doomed.proc.pid
            # The watcher prefers the doomed gateway; when it dies, it reconnects (pick-first
            # moves on to the survivor) and resumes after the last sequence it saw.
            target = f"ipv4:{doomed.address},{survivor.address}"
            seen: list[int] = []
            async with ReelmillClient(target, token=owner) as watcher:
                watching = asyncio.create_task(watch(watcher, job.id, seen))
                await eventually(lambda: len(seen) >= 2, "the watcher sees events")
                suite.kill(doomed)
                killed_at = time.monotonic()
                before = len(seen)
                transcode.send_signal(signal.SIGCONT)
                await eventually(lambda: resumed_by(survivor, job.id), "resumed by the survivor")
                takeover = time.monotonic() - killed_at
                async with asyncio.timeout(PATIENCE):
                    last = await watching
        finally:
            transcode.send_signal(signal.SIGCONT)
        assert last.job.state == job_pb2.JOB_STATE_SUCCEEDED, last.job.error
        assert len(seen) > before  # events after the kill reached the reconnected watcher
        async with ReelmillClient(survivor.address, token=owner) as client:
            done = await check_job(suite, dsn, job.id, seen, client)
        assert done.state == job_pb2.JOB_STATE_SUCCEEDED
        transcode = next(s for s in done.stages if s.name == "transcode")
        assert transcode.attempts >= 2  # cut short with its gateway, run again by the survivor
        conn = await asyncpg.connect(dsn)
        try:
            claims = await conn.fetchval(
                "SELECT attempts FROM jobs WHERE id = $1", uuid.UUID(job.id)
            )
        finally:
            await conn.close()
        assert claims == 2  # claimed by the doomed gateway, then once by the survivor
        print(f"\njob taken over {takeover:.1f}s after its gateway was killed (lease: 3s)")
        await check_clean(suite, killed=(doomed,))


def resumed_by(gateway: Process, job_id: str) -> bool:
    return any(
        f'"job_id": "{job_id}"' in line and '"resumed": true' in line
        for line in gateway.output().splitlines()
        if "job started" in line
    )


# 3. Postgres and the S3 server restarted mid-job -------------------------------------------------


async def stage_running(client: ReelmillClient, job_id: str, stage: str) -> bool:
    current = await client.get_job(job_id)
    return any(s.name == stage and s.state == job_pb2.STAGE_STATE_RUNNING for s in current.stages)


async def faults_mid_jobs(
    suite: Suite,
    clip: Path,
    jobs: int,
    *,
    while_transcoding: Callable[[], Awaitable[str]],
    while_transcribing: Callable[[], Awaitable[str]],
) -> None:
    """``jobs`` SMALL jobs of ``clip``: ``while_transcoding`` once the first transcodes,
    ``while_transcribing`` once the last transcribes (each says what it did); every job must
    succeed and check out. Run the suite with ``UNCACHED``: a transcript cached from an
    earlier job of the same clip ends the last job's transcribe stage before anyone sees it
    running."""
    async with ReelmillClient(suite.gateway, token=token()) as client:
        video = await client.upload_file(clip)
        created = [await client.create_job(video.id, spec=SMALL) for _ in range(jobs)]
        seen: dict[str, list[int]] = {job.id: [] for job in created}
        watching = asyncio.gather(*(watch(client, j.id, seen[j.id]) for j in created))
        try:
            await eventually(
                lambda: stage_running(client, created[0].id, "transcode"), "transcoding"
            )
            print(f"\n{await while_transcoding()} while transcoding")
            await eventually(
                lambda: stage_running(client, created[-1].id, "transcribe"), "transcribing"
            )
            print(f"{await while_transcribing()} while transcribing")
            async with asyncio.timeout(PATIENCE):
                await watching
        finally:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
        for job in created:
            done = await check_job(suite, dsn_of(suite), job.id, seen[job.id], client)
            assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done.error
            print(job.id, {s.name: s.attempts for s in done.stages if s.attempts > 1})


async def test_postgres_restart_mid_job(
    s3_server: S3Server, fresh_bucket: FreshBucket, speech: Path
) -> None:
    # A Postgres of its own: the session's is shared with the other tests.
    with run_postgres() as postgres:

        async def restart(down: float) -> str:
            await asyncio.to_thread(restart_postgres, postgres, down=down)
            return f"Postgres restarted ({down}s down)"

        env = {"REELMILL_DATABASE_URL": postgres.url("postgres"), **s3_server.env(fresh_bucket())}
        with running(env, gateways=2, **UNCACHED) as suite:
            await faults_mid_jobs(
                suite,
                speech,
                3,
                while_transcoding=lambda: restart(2.0),
                while_transcribing=lambda: restart(0.5),
            )
            logs = "".join(p.output() for p in suite.processes["gateway"])
            assert "event listener connection lost" in logs  # the restarts were felt
            await check_clean(suite)


async def test_s3_outage_and_restart_mid_job(database_url: str, speech: Path) -> None:
    """An S3 server of its own (the session's is shared with the other tests): first an
    outage (SIGSTOP for longer than a stage's S3 calls take, then SIGCONT), then a SIGKILL and
    a restart on the same data directory and ports. The suite creates its bucket."""
    with run_seaweedfs() as weed:

        async def freeze() -> str:
            assert weed.process is not None
            weed.process.send_signal(signal.SIGSTOP)
            try:
                await asyncio.sleep(6)
            finally:
                weed.process.send_signal(signal.SIGCONT)
            return "S3 frozen for 6s"

        async def kill_and_restart() -> str:
            weed.kill()
            began = time.monotonic()
            await asyncio.sleep(1.0)
            await asyncio.to_thread(weed.start)
            return f"S3 killed, back after {time.monotonic() - began:.1f}s (1s down)"

        env = {"REELMILL_DATABASE_URL": database_url, **weed.server.env("faults-s3-restart")}
        with running(env, gateways=1, **UNCACHED) as suite:
            await faults_mid_jobs(
                suite, speech, 2, while_transcoding=freeze, while_transcribing=kill_and_restart
            )
            await check_clean(suite)


# 4. fifty short jobs at once, with peak memory per process -------------------------------------

CONCURRENT_JOBS = 50


class MemorySampler:
    """Peak RSS of each suite process (alone, and with its children such as ffmpeg), sampled
    every ``interval`` seconds in a thread."""

    def __init__(self, suite: Suite, interval: float = 0.2) -> None:
        self.suite = suite
        self.interval = interval
        self.peaks: dict[str, dict[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for name, processes in self.suite.processes.items():
                for index, process in enumerate(processes):
                    label = f"{name}-{index + 1}" if len(processes) > 1 else name
                    try:
                        proc = psutil.Process(process.proc.pid)
                        own = proc.memory_info().rss
                        tree = own + sum(c.memory_info().rss for c in proc.children(recursive=True))
                    except psutil.Error:
                        continue
                    peak = self.peaks.setdefault(label, {"rss_mib": 0.0, "with_children_mib": 0.0})
                    peak["rss_mib"] = max(peak["rss_mib"], own / 2**20)
                    peak["with_children_mib"] = max(peak["with_children_mib"], tree / 2**20)

    def table(self) -> str:
        lines = [f"{'process':<14}{'peak RSS MiB':>14}{'with children':>16}"]
        for label, peak in sorted(self.peaks.items()):
            lines.append(f"{label:<14}{peak['rss_mib']:>14.1f}{peak['with_children_mib']:>16.1f}")
        return "\n".join(lines)


async def test_fifty_concurrent_short_jobs(env: dict[str, str], short_clip: Path) -> None:
    extra = {"REELMILL_MAX_CONCURRENT_JOBS": "8", **UNCACHED}
    with running(env, gateways=2, **extra) as suite:
        dsn = dsn_of(suite)
        began = time.monotonic()
        with MemorySampler(suite) as sampler:
            async with ReelmillClient(suite.gateway, token=token()) as client:
                video = await client.upload_file(short_clip)
                # the whole default pipeline (ladder capped at the source, HLS, thumbnails,
                # storyboard, audio, transcript, metadata), with the result caches and reuse
                # off
                jobs = await asyncio.gather(
                    *(
                        client.create_job(video.id, spec=pipeline_pb2.PipelineSpec(reuse=False))
                        for _ in range(CONCURRENT_JOBS)
                    )
                )
                seen: dict[str, list[int]] = {job.id: [] for job in jobs}
                async with asyncio.timeout(PATIENCE * 2):
                    await asyncio.gather(*(watch(client, j.id, seen[j.id]) for j in jobs))
                elapsed = time.monotonic() - began
                for job in jobs:
                    done = await check_job(suite, dsn, job.id, seen[job.id], client)
                    assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done.error
                    assert {
                        s.name for s in done.stages if s.state == job_pb2.STAGE_STATE_SKIPPED
                    } <= {
                        "metadata",  # a sine tone has no words to describe
                        "clips",  # none asked for
                    }
        await check_clean(suite)
    print(f"\n{CONCURRENT_JOBS} jobs done in {elapsed:.0f}s\n{sampler.table()}")
    if path := os.environ.get("REELMILL_FAULTS_REPORT"):
        report = {"jobs": CONCURRENT_JOBS, "seconds": round(elapsed, 1), "peaks": sampler.peaks}
        await asyncio.to_thread(Path(path).write_text, json.dumps(report, indent=2))
