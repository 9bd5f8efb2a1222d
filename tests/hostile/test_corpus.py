"""The hostile corpus: broken, lying and dangerous uploads through the gateway's UploadVideo
(real gateway and ingest processes, S3), each with its precise status. After every case nothing
is half-stored, the scratch directory is empty, and at the end both processes still serve."""

from __future__ import annotations

import http.server
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from reelmill.v1 import job_service_pb2 as pb
from runtime.errors import error_info
from tests.hostile import crafted
from tests.hostile.conftest import (
    MAX_MESSAGE_MIB,
    MAX_UPLOAD_BYTES,
    Hostile,
    Media,
    chunk,
    chunks,
    header,
    sha256,
    whole,
)

INVALID = grpc.StatusCode.INVALID_ARGUMENT
OK = grpc.StatusCode.OK
MARKER = "REELMILL-SECRET-7f3a9c51e2"


@dataclass(frozen=True)
class Expect:
    code: grpc.StatusCode
    #: The ErrorInfo reason ("" when the status comes from the transport and carries none).
    reason: str = ""
    #: A substring of the status message.
    text: str = ""
    #: For accepted uploads: the file name the video keeps.
    filename: str | None = None


def refused(reason: str, text: str = "") -> Expect:
    return Expect(INVALID, reason, text)


@dataclass(frozen=True)
class Inputs:
    media: Media
    #: A file whose content must never leave this machine's disk.
    secret: Path
    #: A URL on a local HTTP server that records every request.
    url: str


Messages = list[pb.UploadVideoRequest]


def _hls(target: str) -> bytes:
    return (
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:0\n"
        f"#EXTINF:10.0,\n{target}\n#EXT-X-ENDLIST\n"
    ).encode()


def _concat(target: str) -> bytes:
    return f"ffconcat version 1.0\nfile '{target}'\n".encode()


def _sdp(port: int) -> bytes:
    return (
        "v=0\no=- 0 0 IN IP4 127.0.0.1\ns=x\nc=IN IP4 127.0.0.1\nt=0 0\n"
        f"m=video {port} RTP/AVP 96\na=rtpmap:96 H264/90000\n"
    ).encode()


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _mp4(data: bytes) -> Messages:
    return whole(data, filename="movie.mp4")


#: name -> (messages from the inputs, expected outcome)
CASES: dict[str, tuple[Callable[[Inputs], Messages], Expect]] = {
    # -- not media at all
    "zero_bytes": (lambda i: [header(0)], refused("EMPTY_UPLOAD", "zero bytes")),
    "random_bytes": (
        lambda i: _mp4(random.Random(1).randbytes(100_000)),
        refused("NOT_A_VIDEO"),
    ),
    "random_bytes_declared_mp4": (
        lambda i: whole(random.Random(2).randbytes(5000), content_type="video/mp4"),
        refused("NOT_A_VIDEO"),
    ),
    "text": (lambda i: _mp4(b"hello, this is not a video\n" * 500), refused("NOT_A_VIDEO")),
    "png": (lambda i: _mp4(crafted.png()), refused("NOT_A_VIDEO")),
    "jpeg": (lambda i: _mp4(i.media.jpeg), refused("NOT_A_VIDEO")),
    "subtitles_only": (
        lambda i: _mp4(i.media.subtitles_only),
        refused("NOT_A_VIDEO", "no video or audio stream"),
    ),
    # -- broken MP4s
    "truncated_faststart": (
        lambda i: _mp4(_half(i.media.good)),
        refused("TRUNCATED_MEDIA", "truncated"),
    ),
    "truncated_before_moov": (
        lambda i: _mp4(_half(i.media.moov_last)),
        refused("TRUNCATED_MEDIA", "'mdat' box at byte"),
    ),
    "first_100_bytes": (lambda i: _mp4(i.media.good[:100]), refused("TRUNCATED_MEDIA")),
    "corrupt_moov": (
        lambda i: _mp4(crafted.corrupt_box(i.media.moov_last, b"moov", seed=1)),
        refused("NOT_A_VIDEO"),
    ),
    "corrupt_sample_table": (
        lambda i: _mp4(crafted.corrupt_box(i.media.moov_last, b"stbl", seed=1)),
        refused("NOT_A_VIDEO", "cannot be decoded"),
    ),
    "moov_renamed": (
        lambda i: _mp4(crafted.rename_box(i.media.moov_last, b"moov", b"junk")),
        refused("TRUNCATED_MEDIA", "never finalised"),
    ),
    "external_data_reference_file": (
        lambda i: _mp4(crafted.external_data_reference(i.media.moov_last, b"file:///etc/passwd")),
        refused("NOT_A_VIDEO", "other files or at URLs"),
    ),
    "external_data_reference_url": (
        lambda i: _mp4(crafted.external_data_reference(i.media.moov_last, i.url.encode())),
        refused("NOT_A_VIDEO", "other files or at URLs"),
    ),
    # -- extreme dimensions and durations
    "wide_16384x16": (
        lambda i: whole(crafted.avi_dimensions(i.media.raw_avi, 16384, 16), filename="a.avi"),
        refused("DIMENSIONS_TOO_LARGE", "16384x16"),
    ),
    "huge_16384x16384": (
        lambda i: whole(crafted.avi_dimensions(i.media.raw_avi, 16384, 16384), filename="a.avi"),
        refused("NOT_A_VIDEO", "no usable picture size"),
    ),
    "one_pixel": (lambda i: _mp4(i.media.one_pixel), Expect(OK, filename="movie.mp4")),
    "three_hours_in_kilobytes": (
        lambda i: _mp4(i.media.three_hours),
        refused("DURATION_TOO_LONG", "10800 s"),
    ),
    "claims_a_hundred_hours": (
        lambda i: _mp4(crafted.claimed_duration(i.media.video_only, 36_000)),
        refused("DURATION_TOO_LONG", "360000 s"),
    ),
    "audio_only": (lambda i: _mp4(i.media.audio_only), Expect(OK, filename="movie.mp4")),
    # -- playlists and descriptions that name other files or URLs
    "hls_local_path": (lambda i: _mp4(_hls(str(i.secret))), refused("NOT_A_VIDEO")),
    "hls_file_url": (lambda i: _mp4(_hls(f"file://{i.secret}")), refused("NOT_A_VIDEO")),
    "hls_etc_passwd": (lambda i: _mp4(_hls("/etc/passwd")), refused("NOT_A_VIDEO")),
    "hls_http_url": (lambda i: _mp4(_hls(i.url)), refused("NOT_A_VIDEO")),
    "hls_master_playlist": (
        lambda i: _mp4(f"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1000\n{i.url}/index.m3u8\n".encode()),
        refused("NOT_A_VIDEO"),
    ),
    "concat_local_path": (lambda i: _mp4(_concat(str(i.secret))), refused("NOT_A_VIDEO")),
    "concat_file_url": (lambda i: _mp4(_concat(f"file:{i.secret}")), refused("NOT_A_VIDEO")),
    "concat_http_url": (lambda i: _mp4(_concat(i.url)), refused("NOT_A_VIDEO")),
    "sdp": (lambda i: _mp4(_sdp(5004)), refused("NOT_A_VIDEO")),
    "playlist_declared_as_playlist": (
        lambda i: whole(_hls(i.url), content_type="application/vnd.apple.mpegurl"),
        refused("INVALID_CONTENT_TYPE", "not a video or audio type"),
    ),
    # -- lying headers
    "declared_too_small": (
        lambda i: [header(10), *chunks(i.media.good)],
        refused("SIZE_MISMATCH", "more bytes"),
    ),
    "declared_too_big": (
        lambda i: [header(len(i.media.good) + 1), *chunks(i.media.good)],
        refused("TRUNCATED_UPLOAD"),
    ),
    "declared_over_the_limit": (
        lambda i: [header(MAX_UPLOAD_BYTES + 1), *chunks(i.media.good)],
        Expect(grpc.StatusCode.RESOURCE_EXHAUSTED, "UPLOAD_TOO_LARGE", "exceeds the limit"),
    ),
    "declared_negative": (
        lambda i: [header(-5), *chunks(i.media.good)],
        refused("INVALID_SIZE", "negative"),
    ),
    "wrong_sha256": (
        lambda i: whole(i.media.good, sha256=sha256(b"something else")),
        refused("SHA256_MISMATCH", "not the declared"),
    ),
    "malformed_sha256": (lambda i: whole(i.media.good, sha256="abc"), refused("BAD_SHA256")),
    "upper_case_sha256": (
        lambda i: whole(i.media.good, sha256=sha256(i.media.good).upper()),
        refused("BAD_SHA256", "lower-case"),
    ),
    "unknown_content_type": (
        lambda i: whole(i.media.good, content_type="application/x-unknown"),
        refused("INVALID_CONTENT_TYPE"),
    ),
    "html_content_type": (
        lambda i: whole(i.media.good, content_type="text/html"),
        refused("INVALID_CONTENT_TYPE"),
    ),
    "malformed_content_type": (
        lambda i: whole(i.media.good, content_type="video mp4\r\nX-Evil: 1"),
        refused("INVALID_CONTENT_TYPE", "type/subtype"),
    ),
    # -- malformed streams
    "no_messages": (lambda i: [], refused("MISSING_HEADER")),
    "chunks_before_header": (
        lambda i: [*chunks(i.media.good), header(len(i.media.good))],
        refused("MISSING_HEADER"),
    ),
    "two_headers": (
        lambda i: [header(len(i.media.good)), *whole(i.media.good)],
        refused("DUPLICATE_HEADER"),
    ),
    "header_again_at_the_end": (
        lambda i: [*whole(i.media.good), header(len(i.media.good))],
        refused("DUPLICATE_HEADER"),
    ),
    "oversize_chunk": (
        lambda i: [header(3 * 1024 * 1024), chunk(b"\0" * (MAX_MESSAGE_MIB * 1024 * 1024 + 1))],
        Expect(grpc.StatusCode.RESOURCE_EXHAUSTED, "", "larger than"),
    ),
    "fewer_bytes_than_declared": (
        lambda i: [header(len(i.media.good)), *chunks(_half(i.media.good))],
        refused("TRUNCATED_UPLOAD", "ended after"),
    ),
    "empty_chunk_spam_only": (
        lambda i: [header(len(i.media.good)), *[chunk(b"")] * 2000],
        refused("EMPTY_UPLOAD"),
    ),
    "empty_chunk_spam_between": (
        lambda i: [
            header(len(i.media.good)),
            *[m for c in chunks(i.media.good, 1024) for m in (c, *[chunk(b"")] * 20)],
        ],
        Expect(OK, filename="clip.mp4"),
    ),
    "tiny_chunks": (
        lambda i: [header(len(i.media.good)), *chunks(i.media.good, 7)],
        Expect(OK, filename="clip.mp4"),
    ),
    # -- file names (kept as a sanitised last path component)
    "filename_dot_dot": (
        lambda i: whole(i.media.good, filename="../../../etc/passwd"),
        Expect(OK, filename="passwd"),
    ),
    "filename_nul": (
        lambda i: whole(i.media.good, filename="a\x00b.mp4"),
        Expect(OK, filename="ab.mp4"),
    ),
    "filename_rtl_override": (
        lambda i: whole(i.media.good, filename="invoice\u202e4pm.exe"),
        Expect(OK, filename="invoice4pm.exe"),
    ),
    "filename_control_chars": (
        lambda i: whole(i.media.good, filename="\x1b[31mred\x07\n.mp4"),
        Expect(OK, filename="[31mred.mp4"),
    ),
    "filename_zero_width_and_separators": (
        lambda i: whole(i.media.good, filename="a\u200bb\u2028c\ufeff.mp4"),
        Expect(OK, filename="abc.mp4"),
    ),
    "filename_emoji": (
        lambda i: whole(i.media.good, filename="🎬 premiere 🎥.mp4"),
        Expect(OK, filename="🎬 premiere 🎥.mp4"),
    ),
    "filename_very_long": (
        lambda i: whole(i.media.good, filename="é" * 10_000 + ".mp4"),
        Expect(OK, filename="é" * 255),
    ),
    "filename_windows_path": (
        lambda i: whole(i.media.good, filename="C:\\Users\\x\\..\\clip.mp4"),
        Expect(OK, filename="clip.mp4"),
    ),
    "filename_only_dots": (
        lambda i: whole(i.media.good, filename=".."),
        Expect(OK, filename="upload"),
    ),
}


class _Recorder(http.server.BaseHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self) -> None:
        _Recorder.requests.append(self.path)
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def http_trap() -> Iterator[tuple[str, list[str]]]:
    """A local HTTP server that records requests: no hostile input may make us call it."""
    _Recorder.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/segment.ts", _Recorder.requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="module")
def inputs(
    media: Media, tmp_path_factory: pytest.TempPathFactory, http_trap: tuple[str, list[str]]
) -> Inputs:
    secret = tmp_path_factory.mktemp("secret") / "secret.ts"
    secret.write_text(f"{MARKER}\n" * 100)
    return Inputs(media=media, secret=secret, url=http_trap[0])


def run_case(hostile: Hostile, messages: Messages, expect: Expect) -> None:
    before = hostile.objects()
    try:
        response = hostile.upload(messages)
    except grpc.RpcError as error:
        code, details = error.code(), error.details() or ""  # type: ignore[attr-defined]
        assert code != grpc.StatusCode.INTERNAL, details
        assert (code, details) and code == expect.code, (code, details)
        assert expect.text in details, details
        info = error_info(error)
        assert (info.reason if info else "") == expect.reason, (info, details)
        assert "Traceback" not in details and "ffmpeg" not in details.lower()
        assert hostile.objects() == before
    else:
        assert expect.code == OK, response
        video = response.video
        assert video.filename == expect.filename
        assert hostile.objects() == {*before, f"videos/{video.id}/source"}
    assert hostile.incomplete_uploads() == []
    assert hostile.scratch_left() == []


def test_the_corpus_is_big_enough() -> None:
    assert len(CASES) >= 40


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_upload(hostile: Hostile, inputs: Inputs, name: str) -> None:
    build, expect = CASES[name]
    run_case(hostile, build(inputs), expect)


def test_no_local_file_or_url_is_read(
    hostile: Hostile, inputs: Inputs, http_trap: tuple[str, list[str]]
) -> None:
    """Playlists renamed .mp4 that name a secret file, file:// URLs and a URL on a local
    server: all refused, the server never called, the secret in no object and no log."""
    playlists = [name for name in CASES if name.startswith(("hls_", "concat_", "external_"))]
    for name in playlists:
        build, expect = CASES[name]
        run_case(hostile, build(inputs), expect)
    _, requests = http_trap
    assert requests == []
    for key, data in hostile.read_objects().items():
        assert MARKER.encode() not in data, key
    logs = hostile.logs()
    assert logs  # the processes do log
    assert MARKER not in logs


def test_still_serving_and_clean_afterwards(hostile: Hostile, inputs: Inputs) -> None:
    """Runs last in this module: after the whole corpus both processes are healthy, a good
    upload still works, and nothing was logged as an internal error."""
    from grpc_health.v1 import health_pb2

    assert set(hostile.serving().values()) == {health_pb2.HealthCheckResponse.SERVING}
    run_case(hostile, whole(inputs.media.good), Expect(OK, filename="clip.mp4"))
    logs = hostile.logs()
    assert "unhandled error" not in logs
    assert '"levelname": "ERROR"' not in logs and '"level": "ERROR"' not in logs
    assert hostile.scratch_left() == []
