"""The ingest service end to end: its real grpc.aio server called through the generated stub,
over both storage backends, with real and generated media and hostile uploads."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import grpc
import pytest

from reelmill.v1 import ingest_service_pb2 as pb
from reelmill.v1 import media_pb2
from reelmill.v1.ingest_service_pb2_grpc import IngestServiceStub
from runtime.errors import InvalidArgument, error_info
from runtime.ffmpeg import ffmpeg_path
from runtime.storage import ObjectStore, open_store
from runtime.storage.local import LocalObjectStore
from runtime.storage.s3 import S3ObjectStore
from services.ingest.probe import content_type_for, probe_sync
from services.ingest.server import build_spec
from services.ingest.settings import IngestSettings
from services.ingest.structure import find_truncation
from tests.inprocess import serve
from tests.media import make_clip
from tests.servers import S3Server, entries_under

KEY = "videos/v1/source"


# -- fixtures --------------------------------------------------------------------------------


@dataclass
class Ingest:
    stub: IngestServiceStub
    store: ObjectStore
    settings: IngestSettings

    async def leftovers(self) -> list[str]:
        """Objects, uncommitted writes and scratch files: what a failed upload must not leave."""
        found = [f"object:{key}" for key in await self.store.list_keys("")]
        if isinstance(self.store, S3ObjectStore):
            client = self.store._client
            uploads = await asyncio.to_thread(client._list_multipart_uploads, self.store.bucket)
            found += [f"upload:{u.object_name}" for u in uploads.uploads]
        if isinstance(self.store, LocalObjectStore):
            incomplete = self.store.root / ".incomplete"
            if incomplete.exists():
                found += [f"temp:{p.name}" for p in incomplete.iterdir()]
        scratch = self.settings.scratch_dir
        found += [f"scratch:{p.relative_to(scratch)}" for p in entries_under(scratch)]
        return found


@pytest.fixture(params=["local", "s3"])
async def ingest(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Ingest]:
    common: dict[str, Any] = {
        "scratch_dir": tmp_path / "scratch",
        "probe_timeout_seconds": 30.0,
        "max_upload_bytes": 200 * 1024 * 1024,
    }
    if request.param == "local":
        settings = IngestSettings(
            storage_backend="local", storage_dir=tmp_path / "objects", **common
        )
    else:
        server: S3Server = request.getfixturevalue("s3_server")
        settings = IngestSettings(
            storage_backend="s3",
            s3_endpoint=server.endpoint,
            s3_access_key=server.access_key,
            s3_secret_key=server.secret_key,
            s3_bucket=request.getfixturevalue("s3_bucket"),
            s3_part_size_mib=5,
            **common,
        )
    store = open_store(settings)
    async with serve(build_spec(settings, store), settings) as channel:
        yield Ingest(stub=IngestServiceStub(channel), store=store, settings=settings)


@dataclass(frozen=True)
class Clips:
    with_audio: Path
    no_audio: Path
    portrait: Path
    audio_only: Path
    rotated: Path
    matroska: Path
    moov_at_end: Path
    segment: Path
    noisy: Path


def ffmpeg(*args: str | Path) -> None:
    subprocess.run(
        [ffmpeg_path(), "-hide_banner", "-loglevel", "error", "-y", *map(str, args)], check=True
    )


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Clips:
    root = tmp_path_factory.mktemp("clips")
    with_audio = make_clip(root / "with_audio.mp4", seconds=3)
    rotated = root / "rotated.mp4"
    ffmpeg("-display_rotation", "90", "-i", with_audio, "-c", "copy", rotated)
    segment = root / "segment.ts"
    ffmpeg("-i", with_audio, "-c", "copy", segment)
    noisy = root / "noisy.mp4"  # ~7 MiB: more than one 5 MiB part
    ffmpeg(
        *("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:duration=3"),
        *("-vf", "noise=alls=40:allf=t", "-c:v", "libx264", "-preset", "ultrafast"),
        *("-qp", "10", "-movflags", "+faststart", noisy),
    )
    return Clips(
        with_audio=with_audio,
        no_audio=make_clip(root / "no_audio.mp4", audio=False),
        portrait=make_clip(root / "portrait.mp4", width=240, height=320, audio=False),
        audio_only=make_clip(root / "audio_only.m4a", video=False),
        rotated=rotated,
        matroska=make_clip(root / "clip.mkv", container_args=()),
        moov_at_end=make_clip(root / "moov_at_end.mp4", seconds=4, container_args=()),
        segment=segment,
        noisy=noisy,
    )


# -- helpers ---------------------------------------------------------------------------------


def header(
    size: int, *, key: str = KEY, bucket: str = "", sha256: str = "", content_type: str = ""
) -> pb.IngestVideoRequest:
    return pb.IngestVideoRequest(
        header=pb.IngestHeader(
            destination=media_pb2.ObjectRef(bucket=bucket, key=key),
            size_bytes=size,
            sha256=sha256,
            content_type=content_type,
        )
    )


def chunked(data: bytes, size: int = 64 * 1024) -> Iterator[pb.IngestVideoRequest]:
    for start in range(0, len(data), size):
        yield pb.IngestVideoRequest(chunk=data[start : start + size])


async def stream(*parts: pb.IngestVideoRequest) -> AsyncIterator[pb.IngestVideoRequest]:
    for part in parts:
        yield part


async def upload(
    ingest: Ingest, data: bytes, *, size: int | None = None, **fields: str
) -> pb.IngestVideoResponse:
    declared = len(data) if size is None else size
    response: pb.IngestVideoResponse = await ingest.stub.IngestVideo(
        stream(header(declared, **fields), *chunked(data))
    )
    return response


async def expect_invalid(call: object, reason: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    info = error_info(caught.value)
    assert info is not None and info.reason == reason, (info, caught.value.details())
    return caught.value


def seconds(duration: object) -> float:
    return float(duration.ToNanoseconds()) / 1e9  # type: ignore[attr-defined]


# -- good uploads ----------------------------------------------------------------------------


async def test_real_clip(ingest: Ingest, shared_media: Path) -> None:
    data = (shared_media / "video/testvideo.mp4").read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    response = await upload(ingest, data, sha256=digest.upper())

    assert response.object.key == KEY
    assert response.object.bucket == ingest.store.bucket
    assert response.size_bytes == len(data)
    assert response.sha256 == digest
    assert response.content_type == "video/mp4"
    media = response.media_info
    assert media.container == "mov,mp4,m4a,3gp,3g2,mj2"
    assert media.size_bytes == len(data)
    assert seconds(media.duration) == pytest.approx(24.02, abs=0.01)
    assert media.bit_rate > 0
    assert not media.audio_streams
    [video] = media.video_streams
    assert (video.codec, video.width, video.height) == ("h264", 1280, 720)
    assert video.fps == pytest.approx(29.97, abs=0.01)
    assert video.profile == "High"
    assert video.pixel_format == "yuv420p"
    assert video.frame_count == 720
    assert video.rotation == 0
    assert seconds(video.duration) == pytest.approx(24.02, abs=0.01)

    info = await ingest.store.stat(KEY)
    assert (info.size, info.sha256, info.content_type) == (len(data), digest, "video/mp4")
    assert await ingest.leftovers() == [f"object:{KEY}"]

    probed = await ingest.stub.ProbeVideo(pb.ProbeVideoRequest(object=media_pb2.ObjectRef(key=KEY)))
    assert probed.media_info == media


@pytest.mark.parametrize(
    ("clip", "content_type", "duration", "video", "audio"),
    [
        ("with_audio", "video/mp4", 3.0, ("h264", 320, 240, 25.0, 0), ("aac", 1, 48000)),
        ("no_audio", "video/mp4", 2.0, ("h264", 320, 240, 25.0, 0), None),
        ("portrait", "video/mp4", 2.0, ("h264", 240, 320, 25.0, 0), None),
        ("audio_only", "audio/mp4", 2.0, None, ("aac", 1, 48000)),
        ("rotated", "video/mp4", 3.0, ("h264", 320, 240, 25.0, 90), ("aac", 1, 48000)),
        ("matroska", "video/x-matroska", 2.0, ("h264", 320, 240, 25.0, 0), ("aac", 1, 48000)),
        ("moov_at_end", "video/mp4", 4.0, ("h264", 320, 240, 25.0, 0), ("aac", 1, 48000)),
    ],
)
async def test_generated_clips(
    ingest: Ingest,
    clips: Clips,
    clip: str,
    content_type: str,
    duration: float,
    video: tuple[str, int, int, float, int] | None,
    audio: tuple[str, int, int] | None,
) -> None:
    data = getattr(clips, clip).read_bytes()
    response = await upload(ingest, data)
    media = response.media_info
    assert response.content_type == content_type
    assert response.sha256 == hashlib.sha256(data).hexdigest()
    assert seconds(media.duration) == pytest.approx(duration, abs=0.1)
    if video is None:
        assert not media.video_streams
    else:
        [stream_] = media.video_streams
        assert (
            stream_.codec,
            stream_.width,
            stream_.height,
            stream_.fps,
            stream_.rotation,
        ) == video
    if audio is None:
        assert not media.audio_streams
    else:
        [track] = media.audio_streams
        assert (track.codec, track.channels, track.sample_rate) == audio
        assert seconds(track.duration) > 1.5
    assert await ingest.leftovers() == [f"object:{KEY}"]


async def test_declared_content_type_wins(ingest: Ingest, clips: Clips) -> None:
    response = await upload(
        ingest, clips.no_audio.read_bytes(), content_type="video/vnd.example+mp4"
    )
    assert response.content_type == "video/vnd.example+mp4"
    assert (await ingest.store.stat(KEY)).content_type == "video/vnd.example+mp4"


async def test_upload_larger_than_a_part(ingest: Ingest, clips: Clips) -> None:
    # A multipart upload on S3 (5 MiB parts) while the probe reads the scratch copy.
    data = clips.noisy.read_bytes()
    assert len(data) > 5 * 1024 * 1024
    response = await upload(ingest, data)
    assert response.size_bytes == len(data)
    info = await ingest.store.stat(KEY)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert info.content_type == "video/mp4"
    assert await ingest.leftovers() == [f"object:{KEY}"]


# -- bad uploads -----------------------------------------------------------------------------


def _half(path: Path) -> bytes:
    data = path.read_bytes()
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("random_bytes", "NOT_A_VIDEO"),
        ("text_file", "NOT_A_VIDEO"),
        ("moov_at_end_cut_in_half", "TRUNCATED_MEDIA"),
        ("faststart_cut_in_half", "TRUNCATED_MEDIA"),
        ("matroska_cut_in_half", "TRUNCATED_MEDIA"),
        ("concat_list", "NOT_A_VIDEO"),
    ],
)
async def test_bad_media(ingest: Ingest, clips: Clips, case: str, reason: str) -> None:
    data = {
        "random_bytes": lambda: os.urandom(200_000),
        "text_file": lambda: b"hello, this is not a video\n" * 1000,
        "moov_at_end_cut_in_half": lambda: _half(clips.moov_at_end),
        "faststart_cut_in_half": lambda: _half(clips.with_audio),
        "matroska_cut_in_half": lambda: _half(clips.matroska),
        "concat_list": lambda: f"ffconcat version 1.0\nfile '{clips.segment}'\n".encode(),
    }[case]()
    error = await expect_invalid(upload(ingest, data), reason)
    assert "ffmpeg" not in (error.details() or "").lower()
    assert await ingest.leftovers() == []


@contextlib.contextmanager
def watch_fifo(path: Path) -> Iterator[threading.Event]:
    """Sets the yielded event if anything opens the FIFO at ``path`` for reading."""
    os.mkfifo(path)
    opened = threading.Event()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: no reader
                    raise
            else:
                opened.set()
                os.close(fd)
            stop.wait(0.002)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield opened
    finally:
        stop.set()
        thread.join()


async def test_hls_playlist_renamed_mp4_is_refused_unread(ingest: Ingest, tmp_path: Path) -> None:
    with watch_fifo(tmp_path / "secret.ts") as opened:
        playlist = (
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:0\n"
            f"#EXTINF:10.0,\n{tmp_path / 'secret.ts'}\n#EXT-X-ENDLIST\n"
        ).encode()
        await expect_invalid(upload(ingest, playlist, key="videos/v1/movie.mp4"), "NOT_A_VIDEO")
    assert not opened.is_set()
    assert await ingest.leftovers() == []


async def test_stored_playlist_is_refused_by_the_format_whitelist(
    ingest: Ingest, clips: Clips
) -> None:
    # Named .m3u8 and served as a playlist, FFmpeg *would* pick its HLS demuxer (and read the
    # segment it names); the whitelist refuses the demuxer before it reads anything.
    playlist = (
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n"
        f"#EXTINF:3.0,\n{clips.segment}\n#EXT-X-ENDLIST\n"
    ).encode()
    await ingest.store.put_bytes(
        "lists/index.m3u8", playlist, content_type="application/vnd.apple.mpegurl"
    )
    call = ingest.stub.ProbeVideo(
        pb.ProbeVideoRequest(object=media_pb2.ObjectRef(key="lists/index.m3u8"))
    )
    await expect_invalid(call, "NOT_A_VIDEO")


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("zero_bytes", "EMPTY_UPLOAD"),
        ("header_only", "EMPTY_UPLOAD"),
        ("more_than_declared", "SIZE_MISMATCH"),
        ("fewer_than_declared", "TRUNCATED_UPLOAD"),
        ("sha256_mismatch", "SHA256_MISMATCH"),
        ("bad_sha256", "BAD_SHA256"),
        ("missing_header", "MISSING_HEADER"),
        ("no_messages", "MISSING_HEADER"),
        ("two_headers", "DUPLICATE_HEADER"),
        ("missing_key", "MISSING_OBJECT_KEY"),
        ("bad_key", "BAD_OBJECT_KEY"),
        ("other_bucket", "UNKNOWN_BUCKET"),
        ("negative_size", "INVALID_SIZE"),
        ("bad_content_type", "INVALID_CONTENT_TYPE"),
    ],
)
async def test_bad_uploads(ingest: Ingest, clips: Clips, case: str, reason: str) -> None:
    data = clips.no_audio.read_bytes()
    n = len(data)
    parts: list[pb.IngestVideoRequest] = {
        "zero_bytes": [header(0)],
        "header_only": [header(n)],
        "more_than_declared": [header(n - 1), *chunked(data)],
        "fewer_than_declared": [header(n + 1), *chunked(data)],
        "sha256_mismatch": [header(n, sha256="0" * 64), *chunked(data)],
        "bad_sha256": [header(n, sha256="abc"), *chunked(data)],
        "missing_header": [*chunked(data)],
        "no_messages": [],
        "two_headers": [header(n), *chunked(data[:1000]), header(n), *chunked(data[1000:])],
        "missing_key": [header(n, key=""), *chunked(data)],
        "bad_key": [header(n, key="../../etc/passwd"), *chunked(data)],
        "other_bucket": [header(n, bucket="someone-elses"), *chunked(data)],
        "negative_size": [header(-5), *chunked(data)],
        "bad_content_type": [header(n, content_type="video mp4\n"), *chunked(data)],
    }[case]
    error = await expect_invalid(ingest.stub.IngestVideo(stream(*parts)), reason)
    assert error.details()
    assert await ingest.leftovers() == []


async def test_upload_over_the_limit(ingest: Ingest) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ingest.stub.IngestVideo(stream(header(10**12), *chunked(b"x" * 1000)))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(caught.value)
    assert info is not None and info.reason == "UPLOAD_TOO_LARGE"
    assert await ingest.leftovers() == []


async def test_size_mismatch_fails_as_soon_as_it_happens(ingest: Ingest, clips: Clips) -> None:
    data = clips.no_audio.read_bytes()
    never = asyncio.Event()

    async def requests() -> AsyncIterator[pb.IngestVideoRequest]:
        yield header(1000)
        yield pb.IngestVideoRequest(chunk=data[:1001])
        await never.wait()  # the client never finishes its stream

    await expect_invalid(
        asyncio.wait_for(ingest.stub.IngestVideo(requests()), timeout=10), "SIZE_MISMATCH"
    )
    assert await ingest.leftovers() == []


async def test_failed_upload_keeps_the_previous_object(ingest: Ingest, clips: Clips) -> None:
    good = clips.no_audio.read_bytes()
    await upload(ingest, good)
    await expect_invalid(upload(ingest, _half(clips.with_audio)), "TRUNCATED_MEDIA")
    assert await ingest.leftovers() == [f"object:{KEY}"]
    assert (await ingest.store.stat(KEY)).sha256 == hashlib.sha256(good).hexdigest()


async def test_client_cancel_mid_upload_leaves_nothing(ingest: Ingest) -> None:
    sent = asyncio.Event()
    never = asyncio.Event()

    async def requests() -> AsyncIterator[pb.IngestVideoRequest]:
        yield header(64 * 1024 * 1024)
        for _ in range(12):  # 12 MiB: on S3 a multipart upload is under way
            yield pb.IngestVideoRequest(chunk=os.urandom(1024 * 1024))
        sent.set()
        await never.wait()

    call = ingest.stub.IngestVideo(requests())
    await asyncio.wait_for(sent.wait(), timeout=30)
    await asyncio.sleep(0.3)  # let the server take the chunks in
    # The write is under way in the store (a multipart upload, a staged file); the bytes are
    # not copied to scratch as well.
    under_way = await ingest.leftovers()
    assert any(p.startswith(("upload:", "temp:")) for p in under_way), under_way
    assert not any(p.startswith("scratch:") for p in under_way), under_way
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    for _ in range(100):
        if not await ingest.leftovers():
            break
        await asyncio.sleep(0.05)
    assert await ingest.leftovers() == []


# -- ProbeVideo ------------------------------------------------------------------------------


async def test_probe_missing_object(ingest: Ingest) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ingest.stub.ProbeVideo(
            pb.ProbeVideoRequest(object=media_pb2.ObjectRef(key="videos/none/source"))
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_probe_stored_non_video(ingest: Ingest) -> None:
    await ingest.store.put_bytes("junk", os.urandom(10_000), content_type="video/mp4")
    await expect_invalid(
        ingest.stub.ProbeVideo(pb.ProbeVideoRequest(object=media_pb2.ObjectRef(key="junk"))),
        "NOT_A_VIDEO",
    )


# -- the probe on its own --------------------------------------------------------------------


def test_probe_refuses_playlists_before_reading_them(clips: Clips, tmp_path: Path) -> None:
    playlist = tmp_path / "index.m3u8"
    playlist.write_text(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n"
        f"#EXTINF:3.0,\n{clips.segment}\n#EXT-X-ENDLIST\n"
    )
    # The premise: left to itself, FFmpeg follows the playlist to the file it names.
    with av.open(f"file:{playlist}", options={"protocol_whitelist": "file"}) as container:
        assert container.format.name == "hls" and container.streams.video
    with pytest.raises(InvalidArgument) as caught:
        probe_sync(playlist, size=playlist.stat().st_size, deadline=time.monotonic() + 10)
    assert caught.value.reason == "NOT_A_VIDEO"


def test_probe_finds_samples_past_the_end(clips: Clips, tmp_path: Path) -> None:
    # A faststart MP4 cut in half whose 'mdat' claims to run "to the end of the file" (size 0,
    # as live recorders write it): the framing is fine, the sample tables are not.
    data = bytearray(_half(clips.with_audio))
    mdat = data.index(b"mdat") - 4
    data[mdat : mdat + 4] = b"\0\0\0\0"
    path = tmp_path / "cut.mp4"
    path.write_bytes(bytes(data))
    assert find_truncation(path, len(data)) is None
    with pytest.raises(InvalidArgument) as caught:
        probe_sync(path, size=len(data), deadline=time.monotonic() + 10)
    assert caught.value.reason == "TRUNCATED_MEDIA"


def test_structure_of_whole_files(clips: Clips) -> None:
    for path in (
        clips.with_audio,
        clips.moov_at_end,
        clips.matroska,
        clips.segment,
        clips.audio_only,
    ):
        assert find_truncation(path, path.stat().st_size) is None, path


def test_structure_without_an_index(clips: Clips, tmp_path: Path) -> None:
    data = clips.moov_at_end.read_bytes()
    moov = data.index(b"moov") - 4
    path = tmp_path / "unfinished.mp4"
    path.write_bytes(data[:moov])  # every box whole, but the recording never wrote its 'moov'
    assert "never finalised" in (find_truncation(path, moov) or "")


def test_probe_deadline(clips: Clips) -> None:
    with pytest.raises(InvalidArgument) as caught:
        probe_sync(
            clips.with_audio, size=clips.with_audio.stat().st_size, deadline=time.monotonic()
        )
    assert caught.value.reason == "PROBE_TIMEOUT"


@pytest.mark.parametrize(
    ("name", "video", "brand", "codecs", "expected"),
    [
        ("mov,mp4,m4a,3gp,3g2,mj2", True, "isom", {"h264"}, "video/mp4"),
        ("mov,mp4,m4a,3gp,3g2,mj2", False, "M4A ", {"aac"}, "audio/mp4"),
        ("mov,mp4,m4a,3gp,3g2,mj2", True, "qt  ", {"prores"}, "video/quicktime"),
        ("mov,mp4,m4a,3gp,3g2,mj2", True, "3gp4", {"h263"}, "video/3gpp"),
        ("matroska,webm", True, "", {"vp9", "opus"}, "video/webm"),
        ("matroska,webm", True, "", {"h264", "aac"}, "video/x-matroska"),
        ("mpegts", True, "", {"h264"}, "video/mp2t"),
        ("mp3", False, "", {"mp3"}, "audio/mpeg"),
        ("unknown", True, "", set(), "application/octet-stream"),
    ],
)
def test_content_types(name: str, video: bool, brand: str, codecs: set[str], expected: str) -> None:
    assert content_type_for(name, has_video=video, brand=brand, codecs=codecs) == expected
