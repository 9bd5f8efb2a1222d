"""Upload throughput and memory: gateway -> ingest -> S3 (a SeaweedFS server on loopback)
against a direct minio-py ``put_object`` of the same file to the same server, in one run.

For each size, fresh gateway and ingest processes are started so their peak RSS (VmHWM)
belongs to that upload alone. The files are real videos (raw frames in Matroska), since
ingest refuses anything else.
"""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from bench.common import table
from reelmill.client import ReelmillClient
from runtime.ffmpeg import ffmpeg_path
from tests.servers import run_postgres, run_seaweedfs
from tests.suite import run_suite, token

MIB = 1024 * 1024
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
    with (
        tempfile.TemporaryDirectory(prefix="bench-upload-") as tmp,
        run_seaweedfs() as weed,
        run_postgres() as pg,
    ):
        workdir = Path(tmp)
        s3 = weed.server
        client = s3.client()
        for size, label in sizes:
            video = make_video(workdir / f"{label.replace(' ', '')}.mkv", size)
            actual = video.stat().st_size
            bucket = f"bench-{uuid.uuid4().hex[:8]}"
            client.make_bucket(bucket)

            began = time.perf_counter()
            client.fput_object(bucket, "direct", str(video), part_size=16 * MIB)
            direct = time.perf_counter() - began
            client.remove_object(bucket, "direct")

            env = {
                **s3.env(bucket),
                "REELMILL_DATABASE_URL": pg.url(pg.create_database("bench")),
                "REELMILL_LOG_LEVEL": "WARNING",
            }
            with run_suite(env) as suite:
                gateway = suite.processes["gateway"][0]
                ingest = suite.processes["ingest"][0]
                base_gw, base_in = peak_rss_mib(gateway.proc.pid), peak_rss_mib(ingest.proc.pid)

                async def upload(path: Path = video, address: str = gateway.address) -> float:
                    async with ReelmillClient(address, token=token()) as rm:
                        start = time.perf_counter()
                        await rm.upload_file(path, verify_sha256=False)
                        return time.perf_counter() - start

                ours = asyncio.run(upload())
                gw_peak, in_peak = peak_rss_mib(gateway.proc.pid), peak_rss_mib(ingest.proc.pid)
            rows.append(
                [
                    label,
                    f"{actual / MIB / direct:.0f}",
                    f"{actual / MIB / ours:.0f}",
                    f"{direct / ours:.2f}",
                    f"{base_gw:.0f} -> {gw_peak:.0f}",
                    f"{base_in:.0f} -> {in_peak:.0f}",
                ]
            )
            video.unlink()
    print(
        table(
            "Upload: gateway -> ingest -> S3 vs direct minio put "
            "(MiB/s; peak RSS MiB idle -> after)",
            [
                "size",
                "direct put",
                "reelmill",
                "ratio (target >= 0.8)",
                "gateway RSS",
                "ingest RSS",
            ],
            rows,
        )
    )
