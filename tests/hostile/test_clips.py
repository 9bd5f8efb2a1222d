"""The hostile corpus of TranscodeService.CutClips: bad names, ranges, counts, containers,
sources, buckets and prefixes sent straight to a real transcode process (as only the gateway
may: with the internal token) over a real S3 bucket. The gateway's clips stage only sends
ranges it resolved; the service must not rely on that. Each case gets its status and reason;
nothing is stored under the output prefix, no scratch is left, no local file named by a
playlist is read, and the process still serves."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from reelmill.v1 import media_pb2, pipeline_pb2, transcode_service_pb2
from reelmill.v1 import transcode_service_pb2_grpc as transcode_grpc
from runtime.durations import duration_message
from runtime.errors import error_info
from tests.conftest import SuiteEnv
from tests.media import make_clip
from tests.servers import S3Server, entries_under
from tests.suite import INTERNAL_TOKEN, Suite, run_suite

PREFIX = "jobs/hostile-clips/"
AUTH = [("authorization", f"Bearer {INTERNAL_TOKEN}")]
SECRET = "clips-secret-marker-2c9e"
#: The good source's length.
SECONDS = 4.0


@dataclass
class Transcode:
    suite: Suite
    s3: S3Server
    bucket: str
    scratch: Path

    @property
    def address(self) -> str:
        return self.suite.processes["transcode"][0].address

    def put(self, key: str, data: bytes) -> None:
        self.s3.client().put_object(self.bucket, key, io.BytesIO(data), len(data))

    def keys(self, prefix: str = "") -> set[str]:
        client = self.s3.client()
        return {
            o.object_name for o in client.list_objects(self.bucket, prefix=prefix, recursive=True)
        }


@pytest.fixture(scope="module")
def transcode(
    suite_env: SuiteEnv, s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Transcode]:
    with run_suite(suite_env("s3"), services=("transcode",)) as suite:
        found = Transcode(
            suite=suite,
            s3=s3_server,
            bucket=suite.env["REELMILL_S3_BUCKET"],
            scratch=Path(suite.env["REELMILL_SCRATCH_DIR"]),
        )
        root = tmp_path_factory.mktemp("clips-hostile")
        good = make_clip(root / "good.mp4", seconds=SECONDS, width=160, height=120).read_bytes()
        secret = root / "secret.mp4"
        secret.write_bytes(good)
        (root / "marker.txt").write_text(SECRET)
        sources = {
            "good": good,
            "text": b"this is not a video, it only says so\n" * 200,
            "truncated": good[: len(good) // 3],
            "hls-naming-a-local-file": (
                f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\n{secret}\n#EXT-X-ENDLIST\n"
            ).encode(),
            "ffconcat-naming-a-local-file": f"ffconcat version 1.0\nfile '{secret}'\n".encode(),
        }
        for name, data in sources.items():
            found.put(f"sources/{name}.mp4", data)
        yield found


def clip(
    name: str = "a", start: float = 1.0, end: float | None = 2.0, **fields: Any
) -> transcode_service_pb2.ClipRequest:
    spec = pipeline_pb2.ClipSpec(start=duration_message(start), **fields)
    if end is not None:
        spec.end.CopyFrom(duration_message(end))
    return transcode_service_pb2.ClipRequest(spec=spec, name=name)


def lying_media(seconds: float) -> media_pb2.MediaInfo:
    """A probe that claims ``seconds`` of H.264/AAC."""
    duration = duration_message(seconds)
    return media_pb2.MediaInfo(
        container="mov,mp4,m4a,3gp,3g2,mj2",
        duration=duration,
        video_streams=[media_pb2.VideoStream(codec="h264", width=160, height=120, fps=25)],
        audio_streams=[media_pb2.AudioStream(codec="aac", channels=1, sample_rate=48000)],
    )


#: name -> (request changes, expected code, reason). The source is the good one, the clips
#: one good clip, the prefix PREFIX, unless a case says otherwise.
CASES: dict[str, tuple[dict[str, Any], str, str]] = {
    "name-empty": ({"clips": [clip("")]}, "INVALID_ARGUMENT", "INVALID_CLIP_NAME"),
    "name-upper-case": ({"clips": [clip("Intro")]}, "INVALID_ARGUMENT", "INVALID_CLIP_NAME"),
    "name-path": ({"clips": [clip("../../etc/x")]}, "INVALID_ARGUMENT", "INVALID_CLIP_NAME"),
    "name-slash": ({"clips": [clip("a/b")]}, "INVALID_ARGUMENT", "INVALID_CLIP_NAME"),
    "name-dot": ({"clips": [clip("a.mp4")]}, "INVALID_ARGUMENT", "INVALID_CLIP_NAME"),
    "name-nul": ({"clips": [clip("a\x00b")]}, "INVALID_ARGUMENT", "INVALID_CLIP_NAME"),
    "name-unicode": ({"clips": [clip("clíp")]}, "INVALID_ARGUMENT", "INVALID_CLIP_NAME"),
    "name-too-long": ({"clips": [clip("a" * 65)]}, "INVALID_ARGUMENT", "INVALID_CLIP_NAME"),
    "name-twice": (
        {"clips": [clip("a"), clip("b", 2, 3), clip("a", 3, 4)]},
        "INVALID_ARGUMENT",
        "INVALID_CLIP_NAME",
    ),
    "start-at-the-end": (
        {"clips": [clip(start=SECONDS, end=SECONDS + 1)]},
        "INVALID_ARGUMENT",
        "INVALID_CLIP_RANGE",
    ),
    "start-past-the-end": (
        {"clips": [clip(start=3600, end=3700)]},
        "INVALID_ARGUMENT",
        "INVALID_CLIP_RANGE",
    ),
    "end-before-start": (
        {"clips": [clip(start=3, end=2)]},
        "INVALID_ARGUMENT",
        "INVALID_CLIP_RANGE",
    ),
    "end-at-start": ({"clips": [clip(start=2, end=2)]}, "INVALID_ARGUMENT", "INVALID_CLIP_RANGE"),
    "end-negative": ({"clips": [clip(start=0, end=-1)]}, "INVALID_ARGUMENT", "INVALID_CLIP_RANGE"),
    "negative-start": (
        {"clips": [clip(start=-1, end=2)]},
        "INVALID_ARGUMENT",
        "INVALID_CLIP_RANGE",
    ),
    "huge-negative-start": (
        {"clips": [clip(start=-(10**9), end=1)]},
        "INVALID_ARGUMENT",
        "INVALID_CLIP_RANGE",
    ),
    "bad-second-of-two": (
        {"clips": [clip("ok"), clip("bad", 3, 1)]},
        "INVALID_ARGUMENT",
        "INVALID_CLIP_RANGE",
    ),
    "too-many-clips": (
        {"clips": [clip(f"c{i}", 0, 1) for i in range(201)]},
        "INVALID_ARGUMENT",
        "TOO_MANY_CLIPS",
    ),
    "far-too-many-clips": (
        {"clips": [clip(f"c{i}", 0, 1) for i in range(20_000)]},
        "INVALID_ARGUMENT",
        "TOO_MANY_CLIPS",
    ),
    "no-clips": ({"clips": []}, "INVALID_ARGUMENT", "NO_CLIPS"),
    "unknown-container": (
        {"clips": [clip(container=9)]},
        "INVALID_ARGUMENT",
        "INVALID_CLIP_CONTAINER",
    ),
    "missing-source": ({"key": "sources/nothing-here.mp4"}, "NOT_FOUND", "OBJECT_NOT_FOUND"),
    "empty-key": ({"key": ""}, "INVALID_ARGUMENT", "MISSING_SOURCE"),
    "path-key": ({"key": "../../etc/passwd"}, "INVALID_ARGUMENT", "BAD_OBJECT_KEY"),
    "other-bucket": ({"bucket": "someone-else"}, "FAILED_PRECONDITION", "UNKNOWN_BUCKET"),
    "no-prefix": ({"prefix": ""}, "INVALID_ARGUMENT", "INVALID_OUTPUT_PREFIX"),
    "prefix-escape": ({"prefix": "../jobs/"}, "INVALID_ARGUMENT", "INVALID_OUTPUT_PREFIX"),
    "prefix-inner-escape": (
        {"prefix": "jobs/x/../../etc/"},
        "INVALID_ARGUMENT",
        "INVALID_OUTPUT_PREFIX",
    ),
    "prefix-absolute": ({"prefix": "/etc/"}, "INVALID_ARGUMENT", "INVALID_OUTPUT_PREFIX"),
    "prefix-control": ({"prefix": "jobs/\n/"}, "INVALID_ARGUMENT", "INVALID_OUTPUT_PREFIX"),
    "text-source": ({"key": "sources/text.mp4"}, "INVALID_ARGUMENT", "CORRUPT_SOURCE"),
    "hls-naming-a-local-file": (
        {"key": "sources/hls-naming-a-local-file.mp4"},
        "INVALID_ARGUMENT",
        "CORRUPT_SOURCE",
    ),
    # A demuxer libavformat knows, but not one on the whitelist: never followed.
    "ffconcat-naming-a-local-file": (
        {"key": "sources/ffconcat-naming-a-local-file.mp4"},
        "INVALID_ARGUMENT",
        "UNSUPPORTED_FORMAT",
    ),
    # Its header says 4 s, its data stops after a third: a clip near the end finds nothing.
    "truncated-source": (
        {"key": "sources/truncated.mp4", "clips": [clip(start=3.0, end=3.9, frame_accurate=True)]},
        "INVALID_ARGUMENT",
        "TRUNCATED_SOURCE",
    ),
    # A probe that lies: the range is inside what it claims, not inside the file.
    "lying-probe": (
        {"media": lying_media(600), "clips": [clip(start=300, end=310)]},
        "INVALID_ARGUMENT",
        "TRUNCATED_SOURCE",
    ),
}


def call(transcode: Transcode, changes: dict[str, Any]) -> grpc.RpcError | None:
    request = transcode_service_pb2.CutClipsRequest(
        source=media_pb2.ObjectRef(
            key=changes.get("key", "sources/good.mp4"), bucket=changes.get("bucket", "")
        ),
        clips=changes.get("clips", [clip()]),
        output_prefix=changes.get("prefix", PREFIX),
        transcript=media_pb2.Transcript(
            segments=[media_pb2.Segment(start_seconds=0.5, end_seconds=1.5, text="hello")]
        ),
    )
    if "media" in changes:
        request.media_info.CopyFrom(changes["media"])
    with grpc.insecure_channel(
        transcode.address, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
    ) as channel:
        try:
            list(
                transcode_grpc.TranscodeServiceStub(channel).CutClips(
                    request, metadata=AUTH, timeout=60
                )
            )
        except grpc.RpcError as exc:
            return exc
    return None


def test_the_corpus_is_big_enough() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_cut_clips(transcode: Transcode, name: str) -> None:
    changes, code, reason = CASES[name]
    error = call(transcode, changes)
    assert error is not None, "the call succeeded"
    assert error.code().name == code, error.details()  # type: ignore[attr-defined]
    info = error_info(error)
    assert info is not None and info.reason == reason, (info, error.details())  # type: ignore[attr-defined]
    details = error.details() or ""  # type: ignore[attr-defined]
    assert "Traceback" not in details and "ffmpeg" not in details.lower() and len(details) < 400
    assert transcode.keys(PREFIX) == set()


def test_a_good_request_still_works_and_nothing_is_left(transcode: Transcode) -> None:
    """After the corpus: a good request is served, nothing of the bad ones was stored, scratch
    is empty, the marker a playlist pointed next to was never read, and the process serves."""
    assert call(transcode, {"prefix": "jobs/good/", "clips": [clip(), clip("b", 0, 4)]}) is None
    assert transcode.keys("jobs/good/") == {
        f"jobs/good/clips/{n}.{ext}" for n in ("a", "b") for ext in ("mp4", "jpg", "vtt")
    }
    assert transcode.keys(PREFIX) == set()
    assert entries_under(transcode.scratch) == []
    log = transcode.suite.processes["transcode"][0].output()
    assert SECRET not in log and "Traceback" not in log
    with grpc.insecure_channel(transcode.address) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="reelmill.v1.TranscodeService"), timeout=5
        )
    assert status.status == health_pb2.HealthCheckResponse.SERVING
