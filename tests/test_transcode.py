"""TranscodeService: pure planning, then real ffmpeg on generated clips and a real video, through
the core (``Transcoder`` on a ``LocalObjectStore``) and through a real grpc.aio server."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import grpc
import psutil
import pytest
from google.protobuf import duration_pb2

from reelmill.v1 import media_pb2, pipeline_pb2, transcode_service_pb2, transcode_service_pb2_grpc
from runtime.durations import duration_message
from runtime.errors import InvalidArgument, ReelmillError, error_info
from runtime.ffmpeg import ffmpeg_path
from runtime.progress import ProgressUpdate
from runtime.server import build_server
from runtime.storage.keys import normalize_prefix
from runtime.storage.local import LocalObjectStore
from runtime.storage.s3 import S3ObjectStore
from services.transcode import hls, messages, plan
from services.transcode.commands import EncoderSettings
from services.transcode.ffmpeg_runner import (
    FfmpegRunner,
    ProgressParser,
    classify_failure,
    source_input_args,
    source_url,
)
from services.transcode.model import (
    Artifact,
    ArtifactKind,
    AudioInfo,
    AudioOptions,
    Outcome,
    RungSpec,
    SourceInfo,
    StoryboardOptions,
    ThumbnailOptions,
    TranscodeOptions,
    VideoInfo,
)
from services.transcode.progress import ProgressTracker
from services.transcode.server import build_service
from services.transcode.settings import TranscodeSettings
from services.transcode.transcoder import (
    SourceRef,
    Transcoder,
    TranscoderConfig,
)
from tests.media import make_clip
from tests.servers import S3Server

FAST = EncoderSettings(vp9_cpu_used=8)


# --- pure planning ---------------------------------------------------------------------------


def _source(width: int, height: int, *, rotation: int = 0, fps: float = 25.0) -> SourceInfo:
    return SourceInfo(
        "mov", 10.0, VideoInfo(width, height, fps, rotation, "h264"), AudioInfo("aac")
    )


def _sizes(info: SourceInfo, heights: tuple[int, ...] = ()) -> list[tuple[str, int, int]]:
    ladder = plan.plan_ladder(
        tuple(RungSpec(h) for h in heights), info, segment_seconds=4, preset="veryfast"
    )
    return [(rung.name, rung.width, rung.height) for rung in ladder.rungs]


def test_ladder_is_capped_at_the_source_and_keeps_aspect() -> None:
    assert _sizes(_source(1920, 1080)) == [
        ("1080p", 1920, 1080),
        ("720p", 1280, 720),
        ("480p", 854, 480),
        ("360p", 640, 360),
    ]
    assert _sizes(_source(1280, 720)) == [
        ("720p", 1280, 720),
        ("480p", 854, 480),
        ("360p", 640, 360),
    ]


def test_ladder_portrait_uses_the_short_side_and_rotation_is_applied() -> None:
    portrait = [("720p", 720, 1280), ("480p", 480, 854), ("360p", 360, 640)]
    assert _sizes(_source(720, 1280)) == portrait
    # Stored landscape with a 90-degree display matrix is shown (and encoded) portrait.
    assert _sizes(_source(1280, 720, rotation=90)) == portrait
    assert _sizes(_source(1280, 720, rotation=270)) == portrait
    assert _sizes(_source(1280, 720, rotation=180))[0] == ("720p", 1280, 720)


def test_ladder_small_or_odd_sources_keep_one_even_rung() -> None:
    assert _sizes(_source(322, 242)) == [("242p", 322, 242)]
    assert _sizes(_source(321, 241)) == [("240p", 320, 240)]
    # Never wider than the source, even when rounding to even would say so.
    assert _sizes(_source(321, 240)) == [("240p", 320, 240)]
    assert _sizes(_source(1000, 1000), (720, 720, 2000)) == [("720p", 720, 720)]
    for name, width, height in _sizes(_source(1917, 1079)):
        assert width % 2 == 0 and height % 2 == 0, name


def test_ladder_rejects_bad_requests() -> None:
    with pytest.raises(InvalidArgument) as caught:
        _sizes(_source(1920, 1080), (8,))
    assert caught.value.reason == "INVALID_LADDER"
    with pytest.raises(InvalidArgument):
        plan.plan_ladder((), _source(640, 360), segment_seconds=0.1, preset="veryfast")
    with pytest.raises(InvalidArgument) as caught:
        plan.plan_ladder((), _source(640, 360), segment_seconds=4, preset="warpspeed")
    assert caught.value.reason == "INVALID_PRESET"


def test_frame_rate_and_gop() -> None:
    assert plan.output_fps(VideoInfo(2, 2, fps=29.97002997)) == Fraction(30000, 1001)
    assert plan.output_fps(VideoInfo(2, 2, fps=17.05)) == 17
    assert plan.output_fps(VideoInfo(2, 2, fps=120)) == 60
    assert plan.output_fps(VideoInfo(2, 2, fps=0)) == 30
    ladder = plan.plan_ladder((), _source(640, 360, fps=29.97), segment_seconds=4, preset="fast")
    assert ladder.gop_frames == 120
    assert plan.default_bitrate_kbps(720, Fraction(30)) == 2800
    assert plan.default_bitrate_kbps(720, Fraction(60)) == 4200


def test_storyboard_cues_cover_the_duration_inside_the_sheets() -> None:
    for duration, interval, columns, rows in [
        (3.02, 1.0, 10, 10),
        (61.0, None, 10, 10),
        (3600.0, None, 10, 10),
        (250.0, 1.0, 5, 4),
        (0.3, None, 10, 10),
    ]:
        info = SourceInfo("mov", duration, VideoInfo(1280, 720, 25))
        options = StoryboardOptions(interval=interval, columns=columns, rows=rows)
        board = plan.plan_storyboard(options, info)
        cues = plan.storyboard_cues(board)
        assert cues[0].start == 0 and math.isclose(cues[-1].end, duration)
        for before, after in itertools.pairwise(cues):
            assert math.isclose(before.end, after.start)
        sheet_width, sheet_height = board.sheet_size
        assert all(c.x >= 0 and c.x + c.width <= sheet_width for c in cues)
        assert all(c.y >= 0 and c.y + c.height <= sheet_height for c in cues)
        assert max(c.sheet for c in cues) == board.sheets - 1
    assert plan.vtt_timestamp(3723.4567) == "01:02:03.457"


def test_thumbnail_times() -> None:
    info = _source(1280, 720)
    thumbs = plan.plan_thumbnails(ThumbnailOptions(count=4, width=4000), info)
    assert thumbs.times == (1.25, 3.75, 6.25, 8.75)
    assert (thumbs.width, thumbs.height) == (1280, 720)  # never upscaled


def test_progress_parser_and_tracker() -> None:
    parser = ProgressParser(duration=4.0)
    lines = "frame=10\nout_time_us=N/A\nspeed=N/A\nprogress=continue\n"
    lines += "out_time_us=2000000\nout_time_ms=2000000\nspeed=1.5x\nprogress=continue\n"
    lines += "out_time_us=9000000\nprogress=end\n"
    updates = [u for line in lines.splitlines() if (u := parser.feed(line)) is not None]
    assert [(u.fraction, u.speed, u.done) for u in updates] == [
        (0.0, 0.0, False),
        (0.5, 1.5, False),
        (1.0, 0.0, True),
    ]
    seen: list[ProgressUpdate] = []
    clock = iter(range(100))
    tracker = ProgressTracker(seen.append, {"a": 3, "b": 1}, clock=lambda: next(clock))
    tracker.begin("a", "step a")
    tracker.update(0.5)
    tracker.update(0.25)  # never backwards
    tracker.begin("b", "step b")
    tracker.update(0.5)
    tracker.finish()
    assert [round(u.fraction, 3) for u in seen] == [0.0, 0.375, 0.75, 0.875, 1.0]


def test_errors_are_sanitized_and_inputs_restricted() -> None:
    error = classify_failure(
        "[in#0] moov atom not found\n/secret/path: Invalid data", reads_source=True
    )
    assert isinstance(error, InvalidArgument) and error.reason == "CORRUPT_SOURCE"
    assert "secret" not in error.message
    assert classify_failure("Format not on whitelist", reads_source=True).reason == (
        "UNSUPPORTED_FORMAT"
    )
    assert classify_failure("moov atom not found", reads_source=False).reason == "INTERNAL"
    assert classify_failure("No space left on device", reads_source=True).reason == "SCRATCH_FULL"
    args = source_input_args(source_url("/tmp/x.mp4"))
    assert args[args.index("-protocol_whitelist") + 1] == "file"
    assert "hls" not in args[args.index("-format_whitelist") + 1].split(",")
    assert args[-2:] == ["-i", "file:/tmp/x.mp4"]
    remote = source_input_args("https://s3.example/b/k?X-Amz-Signature=abc", seek=2)
    assert remote[remote.index("-protocol_whitelist") + 1] == "http,https,tcp,tls"
    assert remote[remote.index("-ss") + 1] == "2.000000"
    # A seek to a keyframe's time rounds up to ffmpeg's microsecond: never onto the one before.
    ntsc = source_input_args("file:/tmp/x.mp4", seek=61 * 1001 / 30000)  # 2.0353666…
    assert ntsc[ntsc.index("-ss") + 1] == "2.035367"
    assert normalize_prefix("jobs/1") == "jobs/1/"
    for bad in ("", "/abs/", "jobs/../x/", "a//b/", "x\n/"):
        with pytest.raises(InvalidArgument):
            normalize_prefix(bad)


def test_hls_playlists_round_trip() -> None:
    playlist = hls.parse_media_playlist(
        "#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:4.0,\nseg_00000.ts\n#EXTINF:2.5,\n"
        "seg_00001.ts\n#EXT-X-ENDLIST\n"
    )
    assert playlist.ended and playlist.duration == 6.5
    assert hls.variant_bandwidth(playlist, [500_000, 500_000]) == (1_600_000, 1_230_770)
    assert hls.avc1_codec(bytes([1, 0x64, 0x00, 0x1F, 0xFF])) == "avc1.64001f"
    variant = hls.Variant("720p/index.m3u8", 3_000_000, 2_500_000, 1280, 720, ("avc1.64001f",), 25)
    assert hls.parse_master_playlist(hls.render_master_playlist([variant])) == (variant,)


def test_messages_apply_the_contract_defaults() -> None:
    options = messages.transcode_options(pipeline_pb2.TranscodeSpec())
    assert options == TranscodeOptions()
    spec = pipeline_pb2.TranscodeSpec(
        ladder=[pipeline_pb2.LadderRung(height=360)],
        hls=False,
        hls_segment_duration=duration_pb2.Duration(seconds=2),
        thumbnails=pipeline_pb2.ThumbnailSpec(enabled=False),
        storyboard=pipeline_pb2.StoryboardSpec(interval=duration_pb2.Duration(nanos=500_000_000)),
        # Cut by the clips stage (CutClips, tests/test_clips.py): Transcode ignores them.
        clips=[pipeline_pb2.ClipSpec(start=duration_pb2.Duration(seconds=1))],
    )
    options = messages.transcode_options(spec)
    assert options.ladder == (RungSpec(360),) and not options.hls
    assert options.hls_segment_seconds == 2 and not options.thumbnails.enabled
    assert options.storyboard.interval == 0.5
    assert options == TranscodeOptions(
        ladder=(RungSpec(360),),
        hls=False,
        hls_segment_seconds=2,
        thumbnails=ThumbnailOptions(enabled=False),
        storyboard=StoryboardOptions(interval=0.5),
    )
    assert messages.source_info(media_pb2.MediaInfo()) is None
    assert messages.audio_options(pipeline_pb2.AudioSpec()).m4a


# --- media fixtures --------------------------------------------------------------------------


def _ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_path(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


@dataclass(frozen=True)
class Clips:
    landscape: Path
    portrait_silent: Path
    odd_444_10bit: Path
    vfr: Path
    rotated: Path
    audio_only: Path
    long: Path
    corrupt: Path
    truncated: Path
    no_moov: Path
    playlist: Path


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Clips:
    root = tmp_path_factory.mktemp("media")
    landscape = make_clip(root / "landscape.mp4", seconds=3, width=640, height=360)
    portrait = make_clip(root / "portrait.mp4", seconds=2, width=360, height=640, audio=False)
    odd = root / "odd.mp4"
    _ffmpeg(
        *("-f", "lavfi", "-i", "testsrc2=size=322x242:rate=25:duration=2"),
        *("-f", "lavfi", "-i", "sine=frequency=300:duration=2"),
        *("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv444p10le", "-c:a", "aac"),
        str(odd),
    )
    vfr = root / "vfr.mp4"
    _ffmpeg(
        *("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30:duration=3"),
        *("-vf", "select='lt(n,30)+not(mod(n,3))'", "-fps_mode", "vfr"),
        *("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"),
        str(vfr),
    )
    plain = make_clip(root / "plain.mp4", seconds=2, width=320, height=240)
    rotated = root / "rotated.mp4"
    _ffmpeg("-display_rotation:v:0", "90", "-i", str(plain), "-c", "copy", str(rotated))
    audio_only = make_clip(root / "audio.m4a", seconds=2, video=False)
    long = make_clip(root / "long.mp4", seconds=20, width=640, height=360, audio=False)
    corrupt = root / "corrupt.mp4"
    corrupt.write_bytes(os.urandom(64 * 1024))
    whole = landscape.read_bytes()
    truncated = root / "truncated.mp4"  # faststart: the header promises 3 s, the data stops early
    truncated.write_bytes(whole[: len(whole) // 3])
    tail_moov = make_clip(root / "tail.mp4", seconds=2, container_args=())
    no_moov = root / "no_moov.mp4"
    no_moov.write_bytes(tail_moov.read_bytes()[: tail_moov.stat().st_size // 2])
    playlist = root / "playlist.mp4"
    playlist.write_text(f"ffconcat version 1.0\nfile {landscape}\n")
    return Clips(
        landscape,
        portrait,
        odd,
        vfr,
        rotated,
        audio_only,
        long,
        corrupt,
        truncated,
        no_moov,
        playlist,
    )


@pytest.fixture
def store(tmp_path: Path) -> LocalObjectStore:
    return LocalObjectStore(tmp_path / "objects")


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    return tmp_path / "scratch"


@pytest.fixture
def transcoder(store: LocalObjectStore, scratch: Path) -> Transcoder:
    config = TranscoderConfig(scratch_dir=scratch, preset="ultrafast", encoder=FAST)
    return Transcoder(store, FfmpegRunner(ffmpeg_path()), config)


async def _put(store: LocalObjectStore, path: Path, key: str = "videos/v1/source") -> SourceRef:
    await store.put_file(key, path, content_type="video/mp4")
    return SourceRef(key)


async def _collect(
    updates: AsyncIterator[ProgressUpdate | Outcome],
) -> tuple[list[ProgressUpdate], Outcome]:
    progress: list[ProgressUpdate] = []
    outcome = None
    async for update in updates:
        if isinstance(update, ProgressUpdate):
            assert outcome is None
            progress.append(update)
        else:
            outcome = update
    assert outcome is not None
    fractions = [update.fraction for update in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    return progress, outcome


async def _local(store: LocalObjectStore, artifact: Artifact) -> Path:
    return Path(await store.media_url(artifact.key))


def _by_name(outcome: Outcome) -> dict[str, Artifact]:
    return {artifact.name: artifact for artifact in outcome.artifacts}


@dataclass(frozen=True)
class Media:
    duration: float
    width: int
    height: int
    video_codec: str
    audio_codec: str
    pix_fmt: str
    pts: list[float]


def _media(path: Path) -> Media:
    with av.open(str(path)) as container:
        video = container.streams.video[0] if container.streams.video else None
        audio = container.streams.audio[0] if container.streams.audio else None
        pts = []
        if video is not None:
            pts = [float(frame.time) for frame in container.decode(video)]
        return Media(
            duration=(container.duration or 0) / av.time_base,
            width=video.codec_context.width if video else 0,
            height=video.codec_context.height if video else 0,
            video_codec=video.codec_context.name if video else "",
            audio_codec=audio.codec_context.name if audio else "",
            pix_fmt=video.codec_context.format.name if video and video.codec_context.format else "",
            pts=pts,
        )


def _listing(directory: Path) -> list[Path]:
    return list(directory.iterdir()) if directory.exists() else []


def _ffmpeg_children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if "ffmpeg" in p.name()]


# --- real transcodes -------------------------------------------------------------------------


async def test_landscape_everything(
    transcoder: Transcoder, store: LocalObjectStore, scratch: Path, clips: Clips
) -> None:
    source = await _put(store, clips.landscape)
    # Every rung encoded, keyframes on the segment grid (passthrough, which would copy the
    # 360p source, is tests/test_passthrough.py's).
    options = TranscodeOptions(
        ladder=(RungSpec(480), RungSpec(360), RungSpec(240)),
        hls_segment_seconds=1.0,
        webm=True,
        thumbnails=ThumbnailOptions(count=3, width=160),
        storyboard=StoryboardOptions(interval=0.5, columns=4),
        passthrough=False,
    )
    progress, outcome = await _collect(transcoder.transcode(source, None, options, "jobs/j1/"))
    assert any(0 < update.fraction < 1 and update.speed > 0 for update in progress)
    assert {update.message for update in progress} >= {"encoding 360p, 240p", "packaging HLS"}
    artifacts = _by_name(outcome)
    frame = 1 / 25

    # The MP4 ladder: 480p dropped (the source is 360p), aspect kept, durations within a frame.
    for name, size in [("360p", (640, 360)), ("240p", (426, 240))]:
        artifact = artifacts[f"renditions/{name}.mp4"]
        assert (
            artifact.kind is ArtifactKind.RENDITION_MP4
            and artifact.key == f"jobs/j1/renditions/{name}.mp4"
        )
        assert artifact.content_type == "video/mp4" and len(artifact.sha256) == 64
        media = _media(await _local(store, artifact))
        assert (media.width, media.height) == size
        assert (media.video_codec, media.audio_codec, media.pix_fmt) == ("h264", "aac", "yuv420p")
        assert abs(media.duration - 3.0) <= 2 * frame
        assert artifact.attributes["width"] == str(size[0])
    assert "renditions/480p.mp4" not in artifacts
    # faststart: the moov box comes before mdat.
    head = (await _local(store, artifacts["renditions/360p.mp4"])).read_bytes()[:4096]
    assert 0 <= head.find(b"moov") < max(head.find(b"mdat"), 4096)

    # HLS: a master playlist with both variants, each decodable, segments starting on keyframes.
    master_path = await _local(store, artifacts["hls/master.m3u8"])
    master = master_path.read_text()
    assert master.startswith("#EXTM3U") and "#EXT-X-INDEPENDENT-SEGMENTS" in master
    variants = hls.parse_master_playlist(master)
    assert [(v.uri, v.width, v.height) for v in variants] == [
        ("360p/index.m3u8", 640, 360),
        ("240p/index.m3u8", 426, 240),
    ]
    boundaries = []
    for variant in variants:
        assert variant.bandwidth >= variant.average_bandwidth > 0
        assert variant.codecs[0].startswith("avc1.") and variant.codecs[1] == "mp4a.40.2"
        playlist_path = master_path.parent / variant.uri
        playlist = hls.parse_media_playlist(playlist_path.read_text())
        assert playlist.ended and abs(playlist.duration - 3.0) <= 2 * frame
        assert len(playlist.segments) == 3
        boundaries.append([segment.duration for segment in playlist.segments])
        for segment in playlist.segments:
            assert f"hls/{variant.uri.split('/')[0]}/{segment.uri}" in artifacts
        segment_path = playlist_path.parent / playlist.segments[1].uri
        with av.open(str(segment_path)) as ts:
            first = next(p for p in ts.demux(ts.streams.video[0]) if p.size)
            assert first.is_keyframe
        with av.open(str(segment_path)) as ts:
            frames = list(ts.decode(ts.streams.video[0]))
        assert frames and (frames[0].width, frames[0].height) == (variant.width, variant.height)
    assert boundaries[0] == boundaries[1]  # the variants switch cleanly at the same times

    # WebM of the top rung.
    webm = _media(await _local(store, artifacts["renditions/360p.webm"]))
    assert (webm.video_codec, webm.audio_codec, webm.width, webm.height) == (
        "vp9",
        "opus",
        640,
        360,
    )
    assert abs(webm.duration - 3.0) <= 2 * frame

    # Poster and thumbnails.
    for name in ("thumbnails/poster.jpg", *(f"thumbnails/thumb_{i:03d}.jpg" for i in range(3))):
        artifact = artifacts[name]
        still = _media(await _local(store, artifact))
        assert (still.width, still.height) == (160, 90) and artifact.content_type == "image/jpeg"
    assert artifacts["thumbnails/poster.jpg"].kind is ArtifactKind.POSTER

    # Storyboard: cues cover the duration, every region inside its sprite.
    vtt = (await _local(store, artifacts["storyboard/storyboard.vtt"])).read_text()
    cues = _parse_vtt(vtt)
    assert cues[0][0] == 0 and math.isclose(cues[-1][1], 3.0, abs_tol=0.001)
    assert all(math.isclose(a[1], b[0]) for a, b in itertools.pairwise(cues))
    assert len(cues) == 6
    for _, _, sprite, (x, y, w, h) in cues:
        sheet = _media(await _local(store, artifacts[f"storyboard/{sprite}"]))
        assert x >= 0 and x + w <= sheet.width and y >= 0 and y + h <= sheet.height
    assert (sheet.width, sheet.height) == (4 * 160, 2 * 90)

    # Everything stored under the prefix is an artifact; scratch is gone.
    assert sorted(await store.list_keys("jobs/j1/")) == sorted(a.key for a in outcome.artifacts)
    assert _listing(scratch) == []


def _parse_vtt(text: str) -> list[tuple[float, float, str, tuple[int, ...]]]:
    def seconds(stamp: str) -> float:
        hours, minutes, rest = stamp.split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(rest)

    lines = text.splitlines()
    assert lines[0] == "WEBVTT"
    cues = []
    for index, line in enumerate(lines):
        if "-->" in line:
            start, end = (part.strip() for part in line.split("-->"))
            sprite, _, region = lines[index + 1].partition("#xywh=")
            cues.append((seconds(start), seconds(end), sprite, tuple(map(int, region.split(",")))))
    return cues


async def test_portrait_without_audio(
    transcoder: Transcoder, store: LocalObjectStore, clips: Clips
) -> None:
    source = await _put(store, clips.portrait_silent)
    options = TranscodeOptions(ladder=(RungSpec(360), RungSpec(240)), hls_segment_seconds=1)
    _, outcome = await _collect(transcoder.transcode(source, None, options, "jobs/p/"))
    artifacts = _by_name(outcome)
    sizes = {}
    for name in ("360p", "240p"):
        media = _media(await _local(store, artifacts[f"renditions/{name}.mp4"]))
        assert media.audio_codec == "" and media.video_codec == "h264"
        sizes[name] = (media.width, media.height)
    assert sizes == {"360p": (360, 640), "240p": (240, 426)}
    master = (await _local(store, artifacts["hls/master.m3u8"])).read_text()
    assert all(len(v.codecs) == 1 for v in hls.parse_master_playlist(master))
    poster = _media(await _local(store, artifacts["thumbnails/poster.jpg"]))
    assert (poster.width, poster.height) == (320, 568)
    # No audio: audio extraction has nothing to do, and says so with an empty result.
    _, audio = await _collect(transcoder.extract_audio(source, None, AudioOptions(), "jobs/p/"))
    assert audio.artifacts == ()


PORTRAIT_720 = {"720p": (720, 1280), "480p": (480, 854), "360p": (360, 640)}
PORTRAIT_1080 = {"1080p": (1080, 1920), **PORTRAIT_720}
LANDSCAPE_1080 = {
    "1080p": (1920, 1080),
    "720p": (1280, 720),
    "480p": (854, 480),
    "360p": (640, 360),
}


@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [(720, 1280, PORTRAIT_720), (1080, 1920, PORTRAIT_1080), (1920, 1080, LANDSCAPE_1080)],
    ids=["portrait-720x1280", "portrait-1080x1920", "landscape-1920x1080"],
)
async def test_default_ladder_rungs_are_short_sides(
    transcoder: Transcoder,
    store: LocalObjectStore,
    tmp_path: Path,
    width: int,
    height: int,
    expected: dict[str, tuple[int, int]],
) -> None:
    """A rung is named by its short side, as players label video: 720p is 720x1280 for a
    portrait source. A 720x1280 source gets no 1080p (its short side, 1080, is above the
    source's 720: that would upscale), whatever its 1280 pixels of height."""
    clip = make_clip(tmp_path / "source.mp4", seconds=1, width=width, height=height, audio=False)
    source = await _put(store, clip)
    options = TranscodeOptions(
        hls=False,
        thumbnails=ThumbnailOptions(enabled=False),
        storyboard=StoryboardOptions(enabled=False),
    )
    _, outcome = await _collect(transcoder.transcode(source, None, options, "jobs/l/"))
    renditions = [a for a in outcome.artifacts if a.kind is ArtifactKind.RENDITION_MP4]
    assert [a.name for a in renditions] == [f"renditions/{name}.mp4" for name in expected]
    sizes = {}
    for artifact in renditions:
        media = _media(await _local(store, artifact))
        sizes[artifact.attributes["rung"]] = (media.width, media.height)
    assert sizes == expected


async def test_odd_size_10bit_444_becomes_even_yuv420p(
    transcoder: Transcoder, store: LocalObjectStore, clips: Clips
) -> None:
    source = await _put(store, clips.odd_444_10bit)
    options = TranscodeOptions(hls=False, storyboard=StoryboardOptions(enabled=False))
    _, outcome = await _collect(transcoder.transcode(source, None, options, "jobs/o/"))
    artifacts = _by_name(outcome)
    assert [a.name for a in outcome.artifacts if a.kind is ArtifactKind.RENDITION_MP4] == [
        "renditions/242p.mp4"
    ]
    media = _media(await _local(store, artifacts["renditions/242p.mp4"]))
    assert (media.width, media.height, media.pix_fmt) == (322, 242, "yuv420p")
    thumb = _media(await _local(store, artifacts["thumbnails/thumb_000.jpg"]))
    assert thumb.width % 2 == 0 and thumb.height % 2 == 0


async def test_vfr_source_gives_constant_frame_rate(
    transcoder: Transcoder, store: LocalObjectStore, clips: Clips
) -> None:
    source = await _put(store, clips.vfr)
    options = TranscodeOptions(
        hls=False,
        thumbnails=ThumbnailOptions(enabled=False),
        storyboard=StoryboardOptions(enabled=False),
    )
    _, outcome = await _collect(transcoder.transcode(source, None, options, "jobs/v/"))
    rendition = outcome.artifacts[0]
    assert rendition.attributes["fps"] == "17.000"  # the source's 17.05 average, snapped
    media = _media(await _local(store, rendition))
    steps = {round(b - a, 4) for a, b in zip(media.pts, media.pts[1:], strict=False)}
    assert steps == {round(1 / 17, 4)}
    assert abs(media.duration - 2.933) <= 2 / 17


async def test_rotation_metadata_is_applied(
    transcoder: Transcoder, store: LocalObjectStore, clips: Clips
) -> None:
    source = await _put(store, clips.rotated)
    options = TranscodeOptions(hls=False, storyboard=StoryboardOptions(enabled=False))
    _, outcome = await _collect(transcoder.transcode(source, None, options, "jobs/r/"))
    artifacts = _by_name(outcome)
    media = _media(await _local(store, artifacts["renditions/240p.mp4"]))
    assert (media.width, media.height) == (240, 320)
    poster = _media(await _local(store, artifacts["thumbnails/poster.jpg"]))
    assert (poster.width, poster.height) == (240, 320)


async def test_audio_only_source(
    transcoder: Transcoder, store: LocalObjectStore, clips: Clips
) -> None:
    source = await _put(store, clips.audio_only)
    options = TranscodeOptions(webm=True)
    _, outcome = await _collect(transcoder.transcode(source, None, options, "jobs/a/"))
    assert outcome.artifacts == ()  # no video outputs (its clips are CutClips')

    _, audio = await _collect(transcoder.extract_audio(source, None, AudioOptions(), "jobs/a/"))
    artifacts = _by_name(audio)
    wav = artifacts["audio/audio.wav"]
    assert wav.kind is ArtifactKind.AUDIO_WAV and wav.content_type == "audio/wav"
    assert wav.stage == "audio"
    with av.open(str(await _local(store, wav))) as container:
        stream = container.streams.audio[0]
        assert (stream.codec_context.name, stream.codec_context.sample_rate) == ("pcm_s16le", 16000)
        assert stream.codec_context.channels == 1
        samples = sum(frame.samples for frame in container.decode(stream))
    assert abs(samples / 16000 - 2.0) <= 0.03
    m4a = _media(await _local(store, artifacts["audio/audio.m4a"]))
    assert m4a.audio_codec == "aac" and abs(m4a.duration - 2.0) <= 0.05


async def test_real_video(
    transcoder: Transcoder, store: LocalObjectStore, shared_media: Path
) -> None:
    """The real 24 s 720p clip (no audio): a small rung, stills and storyboard."""
    source = await _put(store, shared_media / "video" / "testvideo.mp4")
    options = TranscodeOptions(
        ladder=(RungSpec(144),), hls=False, thumbnails=ThumbnailOptions(count=2)
    )
    _, outcome = await _collect(transcoder.transcode(source, None, options, "jobs/real/"))
    artifacts = _by_name(outcome)
    frame = 1001 / 30000
    media = _media(await _local(store, artifacts["renditions/144p.mp4"]))
    assert (media.width, media.height, media.audio_codec) == (256, 144, "")
    assert abs(media.duration - 24.023) <= 2 * frame
    vtt = (await _local(store, artifacts["storyboard/storyboard.vtt"])).read_text()
    cues = _parse_vtt(vtt)
    assert len(cues) == 25 and math.isclose(cues[-1][1], 24.023, abs_tol=0.001)
    assert not any(name.startswith("clips/") for name in artifacts)


@pytest.mark.parametrize(
    ("clip", "reason"),
    [
        ("corrupt", "CORRUPT_SOURCE"),
        ("no_moov", "CORRUPT_SOURCE"),
        ("truncated", "TRUNCATED_SOURCE"),
        ("playlist", "UNSUPPORTED_FORMAT"),
    ],
)
async def test_bad_sources_fail_cleanly(
    transcoder: Transcoder,
    store: LocalObjectStore,
    scratch: Path,
    clips: Clips,
    clip: str,
    reason: str,
) -> None:
    source = await _put(store, getattr(clips, clip))
    with pytest.raises(InvalidArgument) as caught:
        await _collect(transcoder.transcode(source, None, TranscodeOptions(), "jobs/bad/"))
    assert caught.value.reason == reason
    assert await store.list_keys("jobs/bad/") == []
    assert _listing(scratch) == []


async def test_corrupt_source_with_a_lying_probe_fails_in_ffmpeg(
    transcoder: Transcoder, store: LocalObjectStore, clips: Clips
) -> None:
    source = await _put(store, clips.corrupt)
    claimed = SourceInfo("mov,mp4,m4a,3gp,3g2,mj2", 3.0, VideoInfo(640, 360, 25, codec="h264"))
    with pytest.raises(ReelmillError) as caught:
        await _collect(transcoder.transcode(source, claimed, TranscodeOptions(), "jobs/bad/"))
    assert isinstance(caught.value, InvalidArgument) and caught.value.reason == "CORRUPT_SOURCE"


async def test_cancel_stops_ffmpeg_and_removes_scratch(
    store: LocalObjectStore, scratch: Path, clips: Clips
) -> None:
    config = TranscoderConfig(scratch_dir=scratch, preset="medium", encoder=FAST)
    transcoder = Transcoder(store, FfmpegRunner(ffmpeg_path()), config)
    source = await _put(store, clips.long)
    started = asyncio.Event()

    async def consume() -> None:
        async for update in transcoder.transcode(source, None, TranscodeOptions(), "jobs/c/"):
            if isinstance(update, ProgressUpdate) and update.fraction > 0:
                started.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 30)
    assert _ffmpeg_children() and len(_listing(scratch)) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _ffmpeg_children() == []
    assert _listing(scratch) == []
    assert await store.list_keys("jobs/c/") == []


async def test_runner_iterates_progress(tmp_path: Path, clips: Clips) -> None:
    runner = FfmpegRunner(ffmpeg_path())
    args = [*source_input_args(source_url(str(clips.landscape))), "-map", "0:a", "-f", "wav"]
    args.append(str(tmp_path / "out.wav"))
    updates = [update async for update in runner.iter_progress(args, duration=3.0)]
    assert updates[-1].done and updates[-1].fraction == 1.0
    assert abs(updates[-1].out_time - 3.0) < 0.05
    await runner.check()


async def test_cancel_stops_ffmpeg_blocked_on_a_stalled_source(clips: Clips) -> None:
    """ffmpeg acts on its first SIGTERM between packets only: blocked reading from a server
    that stopped sending (a slow S3), it carries on until a second signal. A cancel stops it
    without waiting ``terminate_timeout`` for the SIGKILL."""
    data = clips.long.read_bytes()
    release = asyncio.Event()

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        head = f"HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\nContent-Length: {len(data)}\r\n\r\n"
        writer.write(head.encode() + data[: len(data) // 2])
        await writer.drain()
        await release.wait()
        writer.close()

    server = await asyncio.start_server(stall, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    runner = FfmpegRunner(ffmpeg_path(), terminate_timeout=600)
    out_times: list[float] = []
    args = [*source_input_args(f"http://127.0.0.1:{port}/long.mp4"), "-f", "null", "-"]
    task = asyncio.create_task(
        runner.run(args, duration=20, on_progress=lambda update: out_times.append(update.out_time))
    )
    try:
        # Stalled: it has written output (so it is past its start) and no longer advances.
        for _ in range(600):
            if len(out_times) >= 2 and out_times[-1] == out_times[-2] > 0:
                break
            await asyncio.sleep(0.1)
        assert out_times and out_times[-1] > 0 and _ffmpeg_children()
        task.cancel()
        # Well short of the 30 s after which ffmpeg gives up on the read (-rw_timeout) itself.
        await asyncio.wait({task}, timeout=15)
        assert task.cancelled(), "ffmpeg still runs after the cancel"
        assert _ffmpeg_children() == []
    finally:
        for process in _ffmpeg_children():
            with contextlib.suppress(psutil.Error):
                process.kill()
        await asyncio.wait({task})
        release.set()
        server.close()
        await server.wait_closed()


# --- over gRPC -------------------------------------------------------------------------------


@pytest.fixture
async def stub(
    tmp_path: Path, store: LocalObjectStore
) -> AsyncIterator[transcode_service_pb2_grpc.TranscodeServiceStub]:
    settings = TranscodeSettings(
        storage_dir=tmp_path / "objects",
        scratch_dir=tmp_path / "scratch",
        transcode_preset="ultrafast",
        vp9_cpu_used=8,
    )
    spec = build_service(settings, store)
    server = build_server(settings)
    spec.register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield transcode_service_pb2_grpc.TranscodeServiceStub(channel)
    finally:
        await server.stop(0)


def _media_info(width: int, height: int, seconds: float) -> media_pb2.MediaInfo:
    duration = duration_message(seconds)
    return media_pb2.MediaInfo(
        container="mov,mp4,m4a,3gp,3g2,mj2",
        duration=duration,
        video_streams=[
            media_pb2.VideoStream(
                codec="h264", width=width, height=height, fps=25, duration=duration
            )
        ],
        audio_streams=[
            media_pb2.AudioStream(codec="aac", channels=1, sample_rate=48000, duration=duration)
        ],
    )


async def test_grpc_transcode_streams_progress_then_result(
    stub: transcode_service_pb2_grpc.TranscodeServiceStub, store: LocalObjectStore, clips: Clips
) -> None:
    await _put(store, clips.landscape, "videos/g/source")
    request = transcode_service_pb2.TranscodeRequest(
        source=media_pb2.ObjectRef(key="videos/g/source"),
        media_info=_media_info(640, 360, 3.0),
        spec=pipeline_pb2.TranscodeSpec(
            ladder=[pipeline_pb2.LadderRung(height=240)],
            storyboard=pipeline_pb2.StoryboardSpec(enabled=False),
            thumbnails=pipeline_pb2.ThumbnailSpec(count=1),
        ),
        output_prefix="jobs/g/",
    )
    responses = [response async for response in stub.Transcode(request, timeout=60)]
    assert [r.WhichOneof("update") for r in responses][-1] == "result"
    assert all(r.WhichOneof("update") == "progress" for r in responses[:-1])
    fractions = [r.progress.fraction for r in responses[:-1]]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    artifacts = {a.name: a for a in responses[-1].result.artifacts}
    assert set(artifacts) >= {
        "renditions/240p.mp4",
        "hls/master.m3u8",
        "hls/240p/index.m3u8",
        "hls/240p/seg_00000.ts",
        "thumbnails/poster.jpg",
        "thumbnails/thumb_000.jpg",
    }
    rendition = artifacts["renditions/240p.mp4"]
    assert rendition.kind == media_pb2.ARTIFACT_KIND_RENDITION_MP4
    assert (
        rendition.object.key == "jobs/g/renditions/240p.mp4" and rendition.object.bucket == "local"
    )
    assert rendition.attributes["height"] == "240" and rendition.stage == "transcode"
    assert rendition.size_bytes == (await store.stat(rendition.object.key)).size

    audio = [
        response
        async for response in stub.ExtractAudio(
            transcode_service_pb2.ExtractAudioRequest(
                source=media_pb2.ObjectRef(key="videos/g/source"),
                spec=pipeline_pb2.AudioSpec(m4a=False),
                output_prefix="jobs/g/",
            ),
            timeout=60,
        )
    ]
    names = [a.name for a in audio[-1].result.artifacts]
    assert names == ["audio/audio.wav"]


async def test_grpc_errors_and_client_cancel(
    stub: transcode_service_pb2_grpc.TranscodeServiceStub,
    store: LocalObjectStore,
    tmp_path: Path,
    clips: Clips,
) -> None:
    await _put(store, clips.corrupt, "videos/bad/source")
    call = stub.Transcode(
        transcode_service_pb2.TranscodeRequest(
            source=media_pb2.ObjectRef(key="videos/bad/source"), output_prefix="jobs/bad/"
        ),
        timeout=30,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(caught.value)
    assert info is not None and info.reason == "CORRUPT_SOURCE"

    missing = stub.Transcode(
        transcode_service_pb2.TranscodeRequest(
            source=media_pb2.ObjectRef(key="videos/none/source"), output_prefix="jobs/x/"
        ),
        timeout=30,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in missing:
            pass
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    # The client walks away mid-transcode: the server stops ffmpeg and removes scratch.
    await _put(store, clips.long, "videos/long/source")
    call = stub.Transcode(
        transcode_service_pb2.TranscodeRequest(
            source=media_pb2.ObjectRef(key="videos/long/source"),
            spec=pipeline_pb2.TranscodeSpec(preset="medium"),
            output_prefix="jobs/long/",
        ),
        timeout=60,
    )
    async for response in call:
        if response.progress.fraction > 0:
            break
    assert _ffmpeg_children()
    call.cancel()
    for _ in range(100):
        if not _ffmpeg_children():
            break
        await asyncio.sleep(0.1)
    assert _ffmpeg_children() == []
    scratch = tmp_path / "scratch"
    for _ in range(50):
        if _listing(scratch) == []:
            break
        await asyncio.sleep(0.1)
    assert _listing(scratch) == []


async def test_s3_source_is_read_through_a_presigned_url(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path, clips: Clips
) -> None:
    store = S3ObjectStore(
        endpoint=s3_server.endpoint,
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
        bucket=s3_bucket,
    )
    try:
        config = TranscoderConfig(scratch_dir=tmp_path / "scratch", preset="ultrafast")
        transcoder = Transcoder(store, FfmpegRunner(ffmpeg_path()), config)
        await store.put_file("videos/s3/source", clips.landscape, content_type="video/mp4")
        source = SourceRef("videos/s3/source", s3_bucket)
        options = TranscodeOptions(ladder=(RungSpec(144),), hls_segment_seconds=1.5)
        _, outcome = await _collect(transcoder.transcode(source, None, options, "jobs/s3/"))
        keys = {artifact.key for artifact in outcome.artifacts}
        assert {"jobs/s3/renditions/144p.mp4", "jobs/s3/hls/master.m3u8"} <= keys
        assert sorted(await store.list_keys("jobs/s3/")) == sorted(keys)
        info = await store.stat("jobs/s3/renditions/144p.mp4")
        assert info.content_type == "video/mp4"
        _, audio = await _collect(
            transcoder.extract_audio(source, None, AudioOptions(), "jobs/s3/")
        )
        assert [a.name for a in audio.artifacts] == ["audio/audio.wav", "audio/audio.m4a"]
        with pytest.raises(ReelmillError) as caught:
            await _collect(
                transcoder.transcode(SourceRef("videos/s3/source", "other"), None, options, "x/")
            )
        assert caught.value.reason == "UNKNOWN_BUCKET"
    finally:
        await store.close()
