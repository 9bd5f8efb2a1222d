"""The hostile-input harness: gateway + ingest as real processes on a fresh database, a fresh
S3 bucket (SeaweedFS), their own scratch and log directories, with small limits so that lying
headers stay cheap."""

from __future__ import annotations

import hashlib
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from reelmill.v1 import job_service_pb2 as pb
from reelmill.v1 import job_service_pb2_grpc
from runtime.ffmpeg import ffmpeg_path
from tests.conftest import SuiteEnv
from tests.servers import S3Server, entries_under
from tests.suite import Suite, run_suite, token

#: Limits the harness runs with (the settings under test; README documents them).
MAX_UPLOAD_BYTES = 32 * 1024 * 1024
MAX_MESSAGE_MIB = 1
MAX_DURATION_SECONDS = 7200
MAX_VIDEO_DIMENSION = 8192


@dataclass
class Hostile:
    suite: Suite
    s3: S3Server
    bucket: str
    scratch: Path

    @property
    def address(self) -> str:
        return self.suite.gateway

    def stub(self, channel: grpc.Channel) -> job_service_pb2_grpc.JobServiceStub:
        return job_service_pb2_grpc.JobServiceStub(channel)

    def upload(
        self, messages: Iterable[pb.UploadVideoRequest], *, owner: str = "hostile"
    ) -> pb.UploadVideoResponse:
        """UploadVideo through the gateway (sync stub; raises ``grpc.RpcError``)."""
        with grpc.insecure_channel(self.address) as channel:
            response: pb.UploadVideoResponse = self.stub(channel).UploadVideo(
                iter(list(messages)),
                metadata=[("authorization", f"Bearer {token(owner)}")],
                timeout=60,
            )
            return response

    def objects(self) -> set[str]:
        client = self.s3.client()
        return {o.object_name for o in client.list_objects(self.bucket, recursive=True)}

    def incomplete_uploads(self) -> list[str]:
        client = self.s3.client()
        uploads = client._list_multipart_uploads(self.bucket)
        return [u.object_name for u in uploads.uploads]

    def read_objects(self) -> dict[str, bytes]:
        client = self.s3.client()
        found = {}
        for key in self.objects():
            response = client.get_object(self.bucket, key)
            try:
                found[key] = response.read()
            finally:
                response.close()
                response.release_conn()
        return found

    def scratch_left(self, wait: float = 10.0) -> list[str]:
        """What remains in the scratch directory once in-flight cleanups had ``wait`` s to
        finish (an upload the gateway aborted is cleaned up as ingest sees the cancel)."""
        deadline = time.monotonic() + wait
        while True:
            left = [str(p.relative_to(self.scratch)) for p in entries_under(self.scratch)]
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.05)

    def logs(self) -> str:
        return "\n".join(p.output() for ps in self.suite.processes.values() for p in ps)

    def serving(self) -> dict[str, int]:
        statuses = {}
        for name, processes in self.suite.processes.items():
            for process in processes:
                with grpc.insecure_channel(process.address) as channel:
                    stub = health_pb2_grpc.HealthStub(channel)
                    statuses[name] = stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status
        return statuses


@pytest.fixture(scope="module")
def hostile(suite_env: SuiteEnv, s3_server: S3Server) -> Iterator[Hostile]:
    """Gateway and ingest only, on a fresh database and bucket, with the limits above."""
    limits = {
        "REELMILL_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
        "REELMILL_MAX_MESSAGE_MIB": str(MAX_MESSAGE_MIB),
        "REELMILL_MAX_DURATION_SECONDS": str(MAX_DURATION_SECONDS),
        "REELMILL_MAX_VIDEO_DIMENSION": str(MAX_VIDEO_DIMENSION),
        "REELMILL_PROBE_TIMEOUT_SECONDS": "30",
    }
    with run_suite({**suite_env("s3"), **limits}, services=("ingest",)) as suite:
        yield Hostile(
            suite=suite,
            s3=s3_server,
            bucket=suite.env["REELMILL_S3_BUCKET"],
            scratch=Path(suite.env["REELMILL_SCRATCH_DIR"]),
        )


# -- media -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Media:
    #: A small, whole H.264/AAC MP4 (faststart).
    good: bytes
    #: The same with its moov after mdat (crafted edits keep offsets valid).
    moov_last: bytes
    #: Video only, moov last.
    video_only: bytes
    #: 1x1 pixels, yuv444p.
    one_pixel: bytes
    #: 16x16, one frame a minute for three hours: a few kilobytes.
    three_hours: bytes
    #: Audio only (AAC in MP4).
    audio_only: bytes
    #: A subtitle track and nothing else.
    subtitles_only: bytes
    #: Raw video in AVI (dimensions easy to lie about).
    raw_avi: bytes
    #: A JPEG picture.
    jpeg: bytes
    #: An MPEG-TS segment (what playlists name).
    segment: bytes


def _ffmpeg(*args: str | Path) -> None:
    subprocess.run(
        [ffmpeg_path(), "-hide_banner", "-loglevel", "error", "-y", *map(str, args)], check=True
    )


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    root = tmp_path_factory.mktemp("hostile-media")
    h264 = ("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p")
    av_in = (
        *("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=10:duration=1"),
        *("-f", "lavfi", "-i", "sine=frequency=440:duration=1"),
    )
    _ffmpeg(*av_in, *h264, "-c:a", "aac", "-movflags", "+faststart", root / "good.mp4")
    _ffmpeg(*av_in, *h264, "-c:a", "aac", root / "moov_last.mp4")
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=10:duration=1", *h264, root / "v.mp4")
    _ffmpeg(
        *("-f", "lavfi", "-i", "color=red:size=1x1:rate=5:duration=1"),
        *("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv444p", root / "1x1.mp4"),
    )
    _ffmpeg("-f", "lavfi", "-i", "color=red:size=16x16:rate=1/60:duration=10800", *h264,
            root / "3h.mp4")  # fmt: skip
    _ffmpeg("-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac", root / "a.m4a")
    (root / "s.srt").write_text("1\n00:00:00,000 --> 00:00:01,000\nhello\n")
    _ffmpeg("-i", root / "s.srt", "-c:s", "mov_text", root / "subs.mp4")
    _ffmpeg("-f", "lavfi", "-i", "color=red:size=64x64:rate=5:duration=0.2",
            "-c:v", "rawvideo", "-pix_fmt", "gray", root / "raw.avi")  # fmt: skip
    _ffmpeg("-f", "lavfi", "-i", "color=red:size=32x32", "-frames:v", "1", root / "p.jpg")
    _ffmpeg(*av_in, *h264, "-c:a", "aac", root / "seg.ts")

    def read(name: str) -> bytes:
        return (root / name).read_bytes()

    return Media(
        good=read("good.mp4"),
        moov_last=read("moov_last.mp4"),
        video_only=read("v.mp4"),
        one_pixel=read("1x1.mp4"),
        three_hours=read("3h.mp4"),
        audio_only=read("a.m4a"),
        subtitles_only=read("subs.mp4"),
        raw_avi=read("raw.avi"),
        jpeg=read("p.jpg"),
        segment=read("seg.ts"),
    )


# -- messages --------------------------------------------------------------------------------


def header(
    size: int, *, filename: str = "clip.mp4", sha256: str = "", content_type: str = ""
) -> pb.UploadVideoRequest:
    return pb.UploadVideoRequest(
        header=pb.UploadHeader(
            filename=filename, size_bytes=size, sha256=sha256, content_type=content_type
        )
    )


def chunk(data: bytes) -> pb.UploadVideoRequest:
    return pb.UploadVideoRequest(chunk=data)


def chunks(data: bytes, size: int = 64 * 1024) -> list[pb.UploadVideoRequest]:
    return [chunk(data[i : i + size]) for i in range(0, len(data), size)]


def whole(data: bytes, **fields: str) -> list[pb.UploadVideoRequest]:
    """A well-formed upload of ``data``."""
    return [header(len(data), **fields), *chunks(data)]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
