"""The hostile corpus of VisionService (and of TranscodeService.ExtractStills, the stills from
its shots): broken, lying and dangerous sources and requests sent straight to a real process
(as only the gateway may: with the internal token) over a real S3 bucket. Ingest refuses most
of these before a job starts; the services must not rely on that. Each case gets its status
and reason; nothing is stored under the output prefix, no scratch is left, no local file named
by a playlist is read, and the process still serves."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from reelmill.v1 import (
    media_pb2,
    pipeline_pb2,
    transcode_service_pb2,
    vision_pb2,
    vision_service_pb2,
)
from reelmill.v1 import transcode_service_pb2_grpc as transcode_grpc
from reelmill.v1 import vision_service_pb2_grpc as vision_grpc
from runtime.durations import duration_message
from runtime.errors import error_info
from tests.conftest import SuiteEnv
from tests.hostile.conftest import Media
from tests.servers import S3Server, entries_under
from tests.suite import INTERNAL_TOKEN, Suite, run_suite
from tests.vision_media import make_cuts_clip

PREFIX = "jobs/hostile/"
AUTH = [("authorization", f"Bearer {INTERNAL_TOKEN}")]
SECRET = "vision-secret-marker-7f3a"


@dataclass
class Vision:
    suite: Suite
    s3: S3Server
    bucket: str
    scratch: Path

    @property
    def address(self) -> str:
        return self.suite.processes["vision"][0].address

    def put(self, key: str, data: bytes) -> None:
        import io

        self.s3.client().put_object(self.bucket, key, io.BytesIO(data), len(data))

    def keys(self, prefix: str = "") -> set[str]:
        client = self.s3.client()
        return {
            o.object_name for o in client.list_objects(self.bucket, prefix=prefix, recursive=True)
        }


@pytest.fixture(scope="module")
def vision(suite_env: SuiteEnv, s3_server: S3Server) -> Iterator[Vision]:
    with run_suite(suite_env("s3"), services=("vision", "transcode")) as suite:
        yield Vision(
            suite=suite,
            s3=s3_server,
            bucket=suite.env["REELMILL_S3_BUCKET"],
            scratch=Path(suite.env["REELMILL_SCRATCH_DIR"]),
        )


def corrupt_middle(data: bytes) -> bytes:
    body = bytearray(data)
    start = data.find(b"mdat") + (len(data) - data.find(b"mdat")) // 2
    rng = random.Random(7)
    for index in range(start, len(body)):
        body[index] = rng.randrange(256)
    return bytes(body)


@pytest.fixture(scope="module")
def sources(
    vision: Vision, media: Media, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, bytes]:
    root = tmp_path_factory.mktemp("vision-hostile")
    make_cuts_clip(root / "ok.mp4", [60, 60], size="320x180")
    good = (root / "ok.mp4").read_bytes()
    secret = root / "secret.ts"
    secret.write_bytes(media.segment)
    (root / "marker.txt").write_text(SECRET)
    found = {
        "zero-bytes": b"",
        "random-bytes": random.Random(3).randbytes(64 * 1024),
        "text": b"hello, this is not a video\n" * 100,
        "jpeg": media.jpeg,
        "audio-only": media.audio_only,
        "subtitles-only": media.subtitles_only,
        "corrupt-mid-file": corrupt_middle(good),
        "truncated": good[: len(good) // 2],
        "hls-naming-a-local-file": (
            f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\n{secret}\n#EXT-X-ENDLIST\n"
        ).encode(),
        "ffconcat-naming-a-local-file": f"ffconcat version 1.0\nfile '{secret}'\n".encode(),
    }
    for name, data in found.items():
        vision.put(f"sources/{name}.mp4", data)
    return found


#: Source cases: (object, expected code, reason), for both RPCs.
SOURCES = {
    "zero-bytes": ("INVALID_ARGUMENT", "NOT_A_VIDEO"),
    "random-bytes": ("INVALID_ARGUMENT", "NOT_A_VIDEO"),
    "text": ("INVALID_ARGUMENT", "NOT_A_VIDEO"),
    "jpeg": ("INVALID_ARGUMENT", "NOT_A_VIDEO"),
    "audio-only": ("INVALID_ARGUMENT", "NOT_A_VIDEO"),
    "subtitles-only": ("INVALID_ARGUMENT", "NOT_A_VIDEO"),
    "corrupt-mid-file": ("INVALID_ARGUMENT", "CORRUPT_VIDEO"),
    "truncated": ("INVALID_ARGUMENT", "TRUNCATED_SOURCE"),
    "hls-naming-a-local-file": ("INVALID_ARGUMENT", "NOT_A_VIDEO"),
    "ffconcat-naming-a-local-file": ("INVALID_ARGUMENT", "NOT_A_VIDEO"),
}
#: Request cases: (what to change, expected code, reason).
REQUESTS = {
    "missing-object": ({"key": "sources/nothing-here.mp4"}, "NOT_FOUND", ""),
    "empty-key": ({"key": ""}, "INVALID_ARGUMENT", "MISSING_OBJECT_KEY"),
    "path-key": ({"key": "../../etc/passwd"}, "INVALID_ARGUMENT", "BAD_OBJECT_KEY"),
    "other-bucket": ({"bucket": "someone-else"}, "INVALID_ARGUMENT", "UNKNOWN_BUCKET"),
    "no-prefix": ({"prefix": ""}, "INVALID_ARGUMENT", "INVALID_OUTPUT_PREFIX"),
    "prefix-escape": ({"prefix": "../jobs/"}, "INVALID_ARGUMENT", "INVALID_OUTPUT_PREFIX"),
}
SCENE_SPECS = {
    "threshold": pipeline_pb2.ScenesSpec(threshold=1000),
    "min-content": pipeline_pb2.ScenesSpec(min_content_value=-5),
    "detector": pipeline_pb2.ScenesSpec(detector=42),  # type: ignore[arg-type]
    "transition": pipeline_pb2.ScenesSpec(max_transition_duration=duration_message(60)),
    "min-shot": pipeline_pb2.ScenesSpec(min_shot_duration=duration_message(-1)),
}
OCR_SPECS = {
    "interval": pipeline_pb2.OcrSpec(interval=duration_message(0.01)),
    "long-interval": pipeline_pb2.OcrSpec(interval=duration_message(3600)),
    "confidence": pipeline_pb2.OcrSpec(min_confidence=2.0),
    "side": pipeline_pb2.OcrSpec(max_side=100_000),
}
#: A duration the truncated source declares (its probe would say so).
MEDIA = media_pb2.MediaInfo(duration=duration_message(4.8))


def call(
    vision: Vision,
    rpc: str,
    *,
    key: str,
    bucket: str = "",
    prefix: str = PREFIX,
    scenes_spec: pipeline_pb2.ScenesSpec | None = None,
    ocr_spec: pipeline_pb2.OcrSpec | None = None,
) -> grpc.RpcError | None:
    source = media_pb2.ObjectRef(bucket=bucket, key=key)
    with grpc.insecure_channel(vision.address) as channel:
        stub = vision_grpc.VisionServiceStub(channel)
        try:
            if rpc == "DetectShots":
                request = vision_service_pb2.DetectShotsRequest(
                    source=source, media_info=MEDIA, spec=scenes_spec, output_prefix=prefix
                )
                list(stub.DetectShots(request, metadata=AUTH, timeout=60))
            else:
                scenes = vision_pb2.Scenes()
                request2 = vision_service_pb2.ReadTextRequest(
                    source=source, media_info=MEDIA, scenes=scenes, spec=ocr_spec,
                    output_prefix=prefix,
                )  # fmt: skip
                list(stub.ReadText(request2, metadata=AUTH, timeout=60))
        except grpc.RpcError as exc:
            return exc
    return None


def check(error: grpc.RpcError | None, code: str, reason: str) -> None:
    assert error is not None, "the call succeeded"
    assert error.code().name == code, error.details()  # type: ignore[attr-defined]
    if reason:
        info = error_info(error)
        assert info is not None and info.reason == reason, (info, error.details())  # type: ignore[attr-defined]
    details = error.details() or ""  # type: ignore[attr-defined]
    assert "Traceback" not in details and "av.error" not in details


def test_the_corpus_is_big_enough() -> None:
    assert 2 * (len(SOURCES) + len(REQUESTS)) + len(SCENE_SPECS) + len(OCR_SPECS) >= 40


@pytest.mark.parametrize("rpc", ["DetectShots", "ReadText"])
@pytest.mark.parametrize("name", list(SOURCES))
def test_hostile_source(vision: Vision, sources: dict[str, bytes], rpc: str, name: str) -> None:
    code, reason = SOURCES[name]
    check(call(vision, rpc, key=f"sources/{name}.mp4"), code, reason)


@pytest.mark.parametrize("rpc", ["DetectShots", "ReadText"])
@pytest.mark.parametrize("name", list(REQUESTS))
def test_hostile_request(vision: Vision, sources: dict[str, bytes], rpc: str, name: str) -> None:
    change, code, reason = REQUESTS[name]
    fields = {"key": "sources/text.mp4", **change}
    check(call(vision, rpc, **fields), code, reason)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", list(SCENE_SPECS))
def test_hostile_scenes_spec(vision: Vision, sources: dict[str, bytes], name: str) -> None:
    error = call(vision, "DetectShots", key="sources/text.mp4", scenes_spec=SCENE_SPECS[name])
    check(error, "INVALID_ARGUMENT", "INVALID_SCENES_SPEC")


@pytest.mark.parametrize("name", list(OCR_SPECS))
def test_hostile_ocr_spec(vision: Vision, sources: dict[str, bytes], name: str) -> None:
    check(
        call(vision, "ReadText", key="sources/text.mp4", ocr_spec=OCR_SPECS[name]),
        "INVALID_ARGUMENT",
        "INVALID_OCR_SPEC",
    )


#: ExtractStills: (source, spec, shots, prefix changes) -> expected code, reason.
STILLS = {
    # (transcode's own reason for a source its probe cannot read)
    "text": ({"key": "sources/text.mp4"}, "INVALID_ARGUMENT", "CORRUPT_SOURCE"),
    "hls-naming-a-local-file": (
        {"key": "sources/hls-naming-a-local-file.mp4"},
        "INVALID_ARGUMENT",
        "CORRUPT_SOURCE",
    ),
    "missing-object": ({"key": "sources/nothing-here.mp4"}, "NOT_FOUND", ""),
    "other-bucket": ({"bucket": "someone-else"}, "FAILED_PRECONDITION", "UNKNOWN_BUCKET"),
    "no-prefix": ({"prefix": ""}, "INVALID_ARGUMENT", "INVALID_OUTPUT_PREFIX"),
    "too-many": ({"count": 10_000}, "INVALID_ARGUMENT", "INVALID_THUMBNAILS"),
    "too-narrow": ({"width": 2}, "INVALID_ARGUMENT", "INVALID_THUMBNAILS"),
}


@pytest.mark.parametrize("name", list(STILLS))
def test_hostile_stills(vision: Vision, sources: dict[str, bytes], name: str) -> None:
    change, code, reason = STILLS[name]
    fields: dict[str, object] = {"key": "sources/corrupt-mid-file.mp4", **change}
    address = vision.suite.processes["transcode"][0].address
    request = transcode_service_pb2.ExtractStillsRequest(
        source=media_pb2.ObjectRef(key=str(fields["key"]), bucket=str(fields.get("bucket", ""))),
        spec=pipeline_pb2.ThumbnailSpec(
            count=int(fields.get("count", 3)),  # type: ignore[call-overload]
            width=int(fields.get("width", 160)),  # type: ignore[call-overload]
        ),
        scenes=vision_pb2.Scenes(
            shots=[vision_pb2.Shot(start_seconds=0, end_seconds=2, keyframe_seconds=1)]
        ),
        output_prefix=str(fields.get("prefix", PREFIX)),
    )
    error = None
    with grpc.insecure_channel(address) as channel:
        try:
            list(
                transcode_grpc.TranscodeServiceStub(channel).ExtractStills(
                    request, metadata=AUTH, timeout=60
                )
            )
        except grpc.RpcError as exc:
            error = exc
    check(error, code, reason)


def test_nothing_stored_no_scratch_no_secret_and_still_serving(
    vision: Vision, sources: dict[str, bytes]
) -> None:
    assert vision.keys(PREFIX) == set()
    assert entries_under(vision.scratch) == []
    log = vision.suite.processes["vision"][0].output()
    assert SECRET not in log and "Traceback" not in log
    with grpc.insecure_channel(vision.address) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="reelmill.v1.VisionService"), timeout=5
        )
    assert status.status == health_pb2.HealthCheckResponse.SERVING
