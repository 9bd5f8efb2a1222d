"""Jobs per minute for a batch of short clips, with one vs two replicas of every internal
service, and the orchestration overhead per job (issue 5) — side by side in one run.

Input: ``--jobs`` copies (12 by default, 6 with ``--quick``) of a generated 320x240 25 fps
testsrc2 clip whose audio is real speech (``../shared/media/speech/jfk.flac``, 11 s), H.264/AAC
in MP4, each uploaded as its own video (uploads are not timed).

For each configuration the suite is started as the end-to-end tests start it (ephemeral
Postgres, local-directory storage, the services as subprocesses, one gateway running up to
``REELMILL_MAX_CONCURRENT_JOBS`` = 4 jobs at once, round-robin over the replicas); all jobs are
created at once with the default spec (probe, transcode, audio, transcribe, metadata), and the
batch is timed from the first ``CreateJob`` to the last job's end.

Reported per configuration: jobs per minute; per job (mean and p95) the time queued, the time
running, and the orchestration overhead — running time minus the critical path of the job's
own stage durations (each stage's start to end, longest dependency chain), i.e. what the
gateway adds between and around stages; and the peak RSS of each kind of process (sampled
every 0.2 s, summed over replicas).

This machine has two cores and a transcode already uses both, so a second replica of each
service cannot double throughput; it shows how much overlap (of one job's I/O and waits with
another's encoding) the extra replicas buy. Wall-clock figures on a shared machine also measure
the neighbours: one run, no repeats.

    python -m bench.throughput [--quick] [--jobs N]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench.common import mean, percentile, table
from bench.pipeline import _stage_seconds, suite_env
from reelmill.client import ReelmillClient
from reelmill.v1 import job_pb2, pipeline_pb2
from tests.conftest import SHARED_MEDIA
from tests.media import make_speech_clip
from tests.servers import run_postgres
from tests.suite import Suite, run_suite, token

SPEECH = SHARED_MEDIA / "speech" / "jfk.flac"
MAX_CONCURRENT_JOBS = 4


@dataclass
class Batch:
    replicas: int
    jobs: int
    seconds: float
    queued: list[float]
    running: list[float]
    overhead: list[float]
    peak_rss_mib: dict[str, float] = field(default_factory=dict)

    @property
    def per_minute(self) -> float:
        return self.jobs / self.seconds * 60


def critical_path(job: job_pb2.Job) -> float:
    """The longest chain of stage durations through the job's dependency graph."""
    stages = {s.name: s for s in job.stages if s.state == job_pb2.STAGE_STATE_SUCCEEDED}
    finish: dict[str, float] = {}

    def longest(name: str) -> float:
        if name not in finish:
            before = [longest(d) for d in stages[name].depends_on if d in stages]
            finish[name] = max(before, default=0.0) + _stage_seconds(stages[name])
        return finish[name]

    return max((longest(name) for name in stages), default=0.0)


class RssSampler:
    """Peak resident memory per process kind (replicas summed), sampled in a thread."""

    def __init__(self, suite: Suite, interval: float = 0.2) -> None:
        self.pids = {
            name: [p.proc.pid for p in processes] for name, processes in suite.processes.items()
        }
        self.interval = interval
        self.peak: dict[str, float] = defaultdict(float)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self, pid: int) -> int:
        try:
            process = psutil.Process(pid)
            children = process.children(recursive=True)  # ffmpeg, ffprobe
            return process.memory_info().rss + sum(c.memory_info().rss for c in children)
        except psutil.Error:
            return 0

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for name, pids in self.pids.items():
                total = sum(self._rss(pid) for pid in pids) / 2**20
                self.peak[name] = max(self.peak[name], total)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def _batch(suite: Suite, clips: list[Path], replicas: int) -> Batch:
    async with ReelmillClient(suite.gateway, token=token()) as client:
        videos = [await client.upload_file(clip) for clip in clips]

        async def to_the_end(job_id: str) -> None:
            async for _ in client.watch_job(job_id):
                pass

        with RssSampler(suite) as sampler:
            started = time.perf_counter()
            jobs = await asyncio.gather(
                *(client.create_job(v.id, spec=pipeline_pb2.PipelineSpec()) for v in videos)
            )
            await asyncio.wait_for(asyncio.gather(*(to_the_end(j.id) for j in jobs)), 1800)
            seconds = time.perf_counter() - started
        done = [await client.get_job(job.id) for job in jobs]
    failed = [j for j in done if j.state != job_pb2.JOB_STATE_SUCCEEDED]
    if failed:
        error = failed[0].error
        raise RuntimeError(
            f"{len(failed)} jobs did not succeed: {error.code} {error.reason}: {error.message}"
        )

    def span(start: object, end: object) -> float:
        return (end.ToNanoseconds() - start.ToNanoseconds()) / 1e9  # type: ignore[attr-defined]

    return Batch(
        replicas=replicas,
        jobs=len(done),
        seconds=seconds,
        queued=[span(j.create_time, j.start_time) for j in done],
        running=[span(j.start_time, j.end_time) for j in done],
        overhead=[span(j.start_time, j.end_time) - critical_path(j) for j in done],
        peak_rss_mib=dict(sampler.peak),
    )


def run_batch(clips: list[Path], replicas: int) -> Batch:
    with run_postgres() as postgres, tempfile.TemporaryDirectory(prefix="bench-objects-") as tmp:
        env = {
            **suite_env(postgres, tmp),
            "REELMILL_MAX_CONCURRENT_JOBS": str(MAX_CONCURRENT_JOBS),
        }
        with run_suite(env, replicas=replicas) as suite:
            return asyncio.run(_batch(suite, clips, replicas))


def _s(values: list[float]) -> str:
    return f"{mean(values):.2f} / {percentile(values, 95):.2f}"


def main(quick: bool = False, jobs: int | None = None) -> None:
    count = jobs or (6 if quick else 12)
    with tempfile.TemporaryDirectory(prefix="bench-clips-") as tmp:
        clip = make_speech_clip(Path(tmp) / "clip.mp4", SPEECH)
        clips = [clip] * count
        batches = [run_batch(clips, replicas) for replicas in (1, 2)]
    rows: list[list[object]] = []
    for batch in batches:
        rows.append(
            [
                f"{batch.replicas} of each service",
                batch.jobs,
                f"{batch.seconds:.1f}",
                f"{batch.per_minute:.1f}",
                _s(batch.queued),
                _s(batch.running),
                _s(batch.overhead),
            ]
        )
    print(
        table(
            f"throughput: {count} jobs of an 11 s 320x240 speech clip, full pipeline, "
            f"gateway runs {MAX_CONCURRENT_JOBS} at once",
            [
                "configuration",
                "jobs",
                "batch s",
                "jobs/min",
                "queued s mean/p95",
                "running s mean/p95",
                "overhead s mean/p95",
            ],
            rows,
        )
    )
    print(f"2 replicas vs 1: {batches[1].per_minute / batches[0].per_minute:.2f}x jobs/min")
    kinds = sorted({k for b in batches for k in b.peak_rss_mib})
    print(
        table(
            "peak RSS in MiB (replicas summed, children such as ffmpeg included)",
            ["process", *(f"{b.replicas} replica(s)" for b in batches)],
            [[k, *(f"{b.peak_rss_mib.get(k, 0):.0f}" for b in batches)] for k in kinds],
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.throughput")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--jobs", type=int)
    args = parser.parse_args()
    main(quick=args.quick, jobs=args.jobs)
