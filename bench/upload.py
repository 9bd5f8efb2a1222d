"""Upload throughput and memory: gateway -> ingest -> S3 (a SeaweedFS server on loopback)
against a direct minio-py ``put_object`` of the same file to the same server, and the
resumable upload (StartUpload, WriteUpload, FinishUpload) against the one-shot UploadVideo on
the same gateway and ingest, in one run.

For each size, fresh gateway and ingest processes are started; the resumable uploads run
first, so the peak RSS (VmHWM) read after them is theirs, and the one after the one-shot
uploads is the larger of the two. Each way is timed ``RUNS`` times, alternating, and the
median is shown; a ratio is the median of the rounds' own ratios (each round runs the three
ways back to back), so a neighbour's load that comes and goes falls on both sides of each.
The files are real videos (raw frames in Matroska), since ingest refuses
anything else.
"""

from __future__ import annotations

import asyncio
import resource
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psutil

from bench.common import table
from reelmill.client import ReelmillClient
from runtime.ffmpeg import ffmpeg_path
from tests.servers import run_postgres, run_seaweedfs
from tests.suite import run_suite, token

MIB = 1024 * 1024
#: Uploads of each kind per size (alternating); the median is shown.
RUNS = 5
CPU_COLUMNS = ("client", "gateway", "ingest", "s3")
FRAME = 1280 * 720 * 3 // 2  # yuv420p


def make_video(path: Path, size: int) -> Path:
    frames = max(1, size // FRAME)
    subprocess.run(
        [
            ffmpeg_path(),
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=1280x720:rate=25",
            "-frames:v",
            str(frames),
            "-c:v",
            "rawvideo",
            "-pix_fmt",
            "yuv420p",
            str(path),
        ],
        check=True,
    )
    return path


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each process (``"client"``: this one, its own threads only)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    found = {"client": own.ru_utime + own.ru_stime}
    for name, pid in pids.items():
        times = psutil.Process(pid).cpu_times()
        found[name] = times.user + times.system
    return found


def measured(
    run: Callable[[], float], pids: dict[str, int], cpu: dict[str, list[dict[str, float]]], way: str
) -> float:
    """``run()``'s wall seconds; its CPU seconds per process go to ``cpu[way]``."""
    before = cpu_seconds(pids)
    elapsed = run()
    after = cpu_seconds(pids)
    cpu.setdefault(way, []).append({k: after[k] - before[k] for k in after})
    return elapsed


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(quick: bool = False) -> None:
    sizes = (
        [(32 * MIB, "32 MiB"), (64 * MIB, "64 MiB")]
        if quick
        else [(200 * MIB, "200 MiB"), (1024 * MIB, "1 GiB")]
    )
    rows = []
    cpu_rows = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-upload-") as tmp,
        run_seaweedfs() as weed,
        run_postgres() as pg,
    ):
        workdir = Path(tmp)
        s3 = weed.server
        client = s3.client()
        assert weed.process is not None
        weed_pid = weed.process.pid
        for size, label in sizes:
            video = make_video(workdir / f"{label.replace(' ', '')}.mkv", size)
            actual = video.stat().st_size
            bucket = f"bench-{uuid.uuid4().hex[:8]}"
            client.make_bucket(bucket)

            def direct_put(path: Path = video, bucket: str = bucket) -> float:
                began = time.perf_counter()
                client.fput_object(bucket, "direct", str(path), part_size=16 * MIB)
                elapsed = time.perf_counter() - began
                client.remove_object(bucket, "direct")
                return elapsed

            env = {
                **s3.env(bucket),
                "REELMILL_DATABASE_URL": pg.url(pg.create_database("bench")),
                "REELMILL_LOG_LEVEL": "WARNING",
            }
            with run_suite(env, services=("ingest",)) as suite:
                gateway = suite.processes["gateway"][0]
                ingest = suite.processes["ingest"][0]

                pids = (gateway.proc.pid, ingest.proc.pid)

                def peaks(pids: tuple[int, int] = pids) -> tuple[float, float]:
                    return peak_rss_mib(pids[0]), peak_rss_mib(pids[1])

                base = peaks()

                async def upload(
                    resumable: bool, path: Path = video, address: str = gateway.address
                ) -> float:
                    async with ReelmillClient(address, token=token()) as rm:
                        start = time.perf_counter()
                        await rm.upload_file(path, verify_sha256=False, resumable=resumable)
                        return time.perf_counter() - start

                # Where the CPU goes, per process: this one (the client), the gateway, ingest
                # and the S3 server.
                procs = {"gateway": pids[0], "ingest": pids[1], "s3": weed_pid}
                cpu: dict[str, list[dict[str, float]]] = {}

                def one_shot_upload() -> float:
                    return asyncio.run(upload(False))

                def resumable_upload() -> float:
                    return asyncio.run(upload(True))

                # Alternated, so that a neighbour's load falls on each way alike.
                directs = [measured(direct_put, procs, cpu, "direct put")]
                resumable = [measured(resumable_upload, procs, cpu, "resumable")]
                after_resumable = peaks()
                one_shot = [measured(one_shot_upload, procs, cpu, "UploadVideo")]
                for _ in range(RUNS - 1):
                    directs.append(measured(direct_put, procs, cpu, "direct put"))
                    resumable.append(measured(resumable_upload, procs, cpu, "resumable"))
                    one_shot.append(measured(one_shot_upload, procs, cpu, "UploadVideo"))
                after_both = peaks()
            gib = actual / (1024 * MIB)
            for way, samples in cpu.items():
                per = {k: statistics.median(s[k] for s in samples) / gib for k in samples[0]}
                cpu_rows.append(
                    [
                        label,
                        way,
                        *(f"{per[k]:.2f}" for k in CPU_COLUMNS),
                        f"{sum(per.values()):.2f}",
                    ]
                )
            direct = statistics.median(directs)
            ours, again = statistics.median(one_shot), statistics.median(resumable)

            def paired(fast: list[float], slow: list[float]) -> float:
                """Median over rounds of fast/slow time (slow's throughput / fast's)."""
                return statistics.median(f / s for f, s in zip(fast, slow, strict=True))

            rows.append(
                [
                    label,
                    f"{actual / MIB / direct:.0f}",
                    f"{actual / MIB / ours:.0f}",
                    f"{paired(directs, one_shot):.2f}",
                    f"{actual / MIB / again:.0f}",
                    f"{paired(directs, resumable):.2f}",
                    f"{paired(one_shot, resumable):.2f}",
                    f"{base[0]:.0f} -> {after_resumable[0]:.0f} -> {after_both[0]:.0f}",
                    f"{base[1]:.0f} -> {after_resumable[1]:.0f} -> {after_both[1]:.0f}",
                ]
            )
            video.unlink()
    print(
        table(
            "Upload: gateway -> ingest -> S3 vs direct minio put, and resumable vs one-shot on "
            f"the same server (MiB/s, median of {RUNS}; ratios: median of the rounds' ratios; "
            "peak RSS MiB idle -> after the resumable uploads -> after both)",
            [
                "size",
                "direct put",
                "UploadVideo",
                "vs direct (target >= 0.9)",
                "resumable",
                "resumable vs direct",
                "resumable vs UploadVideo (target >= 0.95)",
                "gateway RSS",
                "ingest RSS",
            ],
            rows,
        )
    )
    print()
    print(
        table(
            f"Upload CPU: seconds per GiB of each process (median of {RUNS}); the machine's cores "
            "are shared by all of them",
            ["size", "way", "client", "gateway", "ingest", "S3 server", "total"],
            cpu_rows,
        )
    )
