"""TranscodeService.CutClips: the pure planning (names, ranges, captions), then real ffmpeg on
generated media and the real 720p video, through the core (``Transcoder.cut_clips`` on a
``LocalObjectStore``) and through a real grpc.aio server."""

from __future__ import annotations

import argparse
import asyncio
import html
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import av
import grpc
import psutil
import pytest
import webvtt

from gateway.pipeline.clips import name_of, resolve_clips, sentence_spans
from reelmill.cli import batch, render
from reelmill.v1 import (
    job_pb2,
    media_pb2,
    pipeline_pb2,
    transcode_service_pb2,
    transcode_service_pb2_grpc,
)
from runtime.captions import render_vtt
from runtime.durations import duration_message, seconds
from runtime.errors import InvalidArgument, NotFound, ReelmillError, error_info
from runtime.ffmpeg import ffmpeg_path
from runtime.progress import ProgressUpdate
from runtime.server import build_server
from runtime.storage.local import LocalObjectStore
from services.transcode import clip_plan, messages
from services.transcode.ffmpeg_runner import FfmpegRunner
from services.transcode.model import (
    Artifact,
    ArtifactKind,
    AudioInfo,
    ClipContainer,
    ClipOptions,
    ClipRequest,
    ClipsOutcome,
    Cue,
    CutClip,
    SourceInfo,
    VideoInfo,
)
from services.transcode.server import build_service
from services.transcode.settings import TranscodeSettings
from services.transcode.transcoder import SourceRef, Transcoder, TranscoderConfig
from services.transcribe import formats
from services.transcribe.model import Segment, Transcript
from tests.test_transcode import FAST, _put, scratch, store, transcoder

# The transcoder's fixtures are the transcode tests' own.
__all__ = ["scratch", "store", "transcoder"]
FPS = 25
FRAME = 1 / FPS
#: Keyframes of the generated source: every 2 s (``-g 50``), with B-frames.
GOP = 2.0
#: A transcript of the generated source's 10 s.
CUES = (
    Cue(0.4, 2.6, "First we look at the plan."),
    Cue(2.6, 4.3, "Then the cut, & how <it> lands."),
    Cue(4.3, 6.9, "The next part starts here."),
    Cue(7.2, 9.8, "And the end."),
)


# --- pure planning ---------------------------------------------------------------------------


def _source(codec: str = "h264", audio: str = "aac", duration: float = 10.0) -> SourceInfo:
    return SourceInfo("mov", duration, VideoInfo(641, 361, 25.0, 0, codec), AudioInfo(audio))


def _requests(*ranges: ClipOptions) -> list[ClipRequest]:
    return [ClipRequest(f"clip-{i}", r) for i, r in enumerate(ranges)]


def test_plans_clamp_the_end_and_reencode_what_cannot_be_copied() -> None:
    plans = clip_plan.plan_clips(
        _requests(
            ClipOptions(2, None),
            ClipOptions(1, 50, ClipContainer.WEBM),
            ClipOptions(1, 3, frame_accurate=True),
        ),
        _source(),
    )
    assert plans[0].end == 10 and not plans[0].encode and plans[0].size == (641, 361)
    # H.264 cannot go into WebM: re-encoded (so frame-accurate), at an even size.
    assert plans[1].end == 10 and plans[1].encode and plans[1].size == (640, 360)
    assert plans[2].encode and plans[2].frame_accurate
    assert [p.video_name for p in plans] == [
        "clips/clip-0.mp4",
        "clips/clip-1.webm",
        "clips/clip-2.mp4",
    ]
    vp9 = clip_plan.plan_clips(
        _requests(ClipOptions(1, 2, ClipContainer.WEBM)), _source("vp9", "opus")
    )
    assert not vp9[0].encode  # VP9/Opus copies into WebM
    audio_only = SourceInfo("mov", 4.0, None, AudioInfo("aac"))
    (plan,) = clip_plan.plan_clips(_requests(ClipOptions(1, 2)), audio_only)
    assert plan.size is None and not plan.encode


@pytest.mark.parametrize(
    ("requests", "reason"),
    [
        ([], "NO_CLIPS"),
        (_requests(*[ClipOptions(0, 1)] * 201), "TOO_MANY_CLIPS"),
        ([ClipRequest("", ClipOptions(0, 1))], "INVALID_CLIP_NAME"),
        ([ClipRequest("Upper", ClipOptions(0, 1))], "INVALID_CLIP_NAME"),
        ([ClipRequest("../x", ClipOptions(0, 1))], "INVALID_CLIP_NAME"),
        ([ClipRequest("a" * 65, ClipOptions(0, 1))], "INVALID_CLIP_NAME"),
        (
            [ClipRequest("a", ClipOptions(0, 1)), ClipRequest("a", ClipOptions(1, 2))],
            "INVALID_CLIP_NAME",
        ),
        (_requests(ClipOptions(-0.5, 2)), "INVALID_CLIP_RANGE"),
        (_requests(ClipOptions(10, 12)), "INVALID_CLIP_RANGE"),  # starts at the end
        (_requests(ClipOptions(3, 3)), "INVALID_CLIP_RANGE"),
        (_requests(ClipOptions(3, 2)), "INVALID_CLIP_RANGE"),
        (_requests(ClipOptions(3, 3.01)), "INVALID_CLIP_RANGE"),  # shorter than a frame
    ],
)
def test_bad_requests_are_refused_before_any_work(requests: list[ClipRequest], reason: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        clip_plan.plan_clips(requests, _source())
    assert caught.value.reason == reason
    assert len(str(caught.value)) < 200  # names are cut short in messages


def test_two_hundred_clips_are_allowed() -> None:
    assert len(clip_plan.plan_clips(_requests(*[ClipOptions(0, 1)] * 200), _source())) == 200


def test_an_unknown_container_is_refused() -> None:
    spec = pipeline_pb2.ClipSpec(end=duration_message(1), container=7)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument) as caught:
        messages.clip_requests([transcode_service_pb2.ClipRequest(spec=spec, name="a")])
    assert caught.value.reason == "INVALID_CLIP_CONTAINER"


def test_caption_cues_are_the_overlapping_cues_clipped_and_shifted() -> None:
    assert clip_plan.caption_cues(CUES, 2.0, 5.12) == [
        Cue(0.0, 0.6, CUES[0].text),
        Cue(0.6, 2.3, CUES[1].text),
        Cue(2.3, 3.12, CUES[2].text),
    ]
    # Touching a cue's end is no overlap; a gap between cues is left empty.
    assert clip_plan.caption_cues(CUES, 6.9, 7.2) == []
    assert clip_plan.caption_cues(CUES, 7.0, 8.0, at=0.04) == [Cue(0.24, 1.04, CUES[3].text)]


def test_clip_captions_and_transcripts_share_one_vtt_writer() -> None:
    segments = tuple(Segment(i, c.start, c.end, c.text) for i, c in enumerate(CUES))
    transcript = Transcript("en", 1.0, 10.0, segments, "faster-whisper", "tiny.en")
    assert formats.to_vtt(transcript) == render_vtt((c.start, c.end, c.text) for c in CUES)
    assert "&amp; how &lt;it&gt; lands" in render_vtt([(0, 1, "& how <it> lands")])
    assert render_vtt([(0, 1, "a --> b\n c")]).splitlines()[3] == "a -&gt; b c"


# --- media -----------------------------------------------------------------------------------


def _ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_path(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


@dataclass(frozen=True)
class Sources:
    #: 10 s, 320x180, 25 fps H.264 (a keyframe every 2 s, B-frames) and AAC.
    gop: Path
    #: The same as VP9/Opus WebM.
    webm: Path
    audio_only: Path
    #: 30 s at 640x360, for a cancel mid-encode.
    long: Path


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Sources:
    root = tmp_path_factory.mktemp("clips-media")
    gop = root / "gop.mp4"
    _ffmpeg(
        *("-f", "lavfi", "-i", f"testsrc2=size=320x180:rate={FPS}:duration=10"),
        *("-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:duration=10"),
        *("-c:v", "libx264", "-preset", "ultrafast", "-g", "50", "-keyint_min", "50"),
        *("-sc_threshold", "0", "-bf", "2", "-pix_fmt", "yuv420p"),
        *("-c:a", "aac", "-movflags", "+faststart", str(gop)),
    )
    webm = root / "vp9.webm"
    _ffmpeg(
        *("-i", str(gop), "-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8"),
        *("-g", "50", "-c:a", "libopus", str(webm)),
    )
    audio_only = root / "audio.m4a"
    _ffmpeg("-i", str(gop), "-vn", "-c:a", "copy", str(audio_only))
    long = root / "long.mp4"
    _ffmpeg(
        *("-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25:duration=30"),
        *("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(long)),
    )
    return Sources(gop, webm, audio_only, long)


async def _cut(
    transcoder: Transcoder,
    source: SourceRef,
    requests: list[ClipRequest],
    cues: tuple[Cue, ...] | None = CUES,
    prefix: str = "jobs/j1/",
) -> tuple[list[ProgressUpdate], ClipsOutcome]:
    progress: list[ProgressUpdate] = []
    outcome = None
    async for update in transcoder.cut_clips(source, None, requests, cues, prefix):
        if isinstance(update, ProgressUpdate):
            assert outcome is None
            progress.append(update)
        else:
            outcome = update
    assert isinstance(outcome, ClipsOutcome)
    fractions = [update.fraction for update in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    return progress, outcome


async def _local(store: LocalObjectStore, artifact: Artifact) -> Path:
    return Path(await store.media_url(artifact.key))


def _by_name(outcome: ClipsOutcome) -> dict[str, Artifact]:
    return {artifact.name: artifact for artifact in outcome.artifacts}


def keyframe_times(path: Path) -> list[float]:
    """Every keyframe of the first video stream, by demuxing the whole file (independent of
    the service's index seek)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sorted(
            float(packet.pts * stream.time_base)
            for packet in container.demux(stream)
            if packet.pts is not None and packet.is_keyframe
        )


@dataclass(frozen=True)
class Media:
    video_codec: str
    audio_codec: str
    width: int
    height: int
    #: Presentation times of every video frame, decoded.
    frames: list[float]

    @property
    def span(self) -> float:
        return self.frames[-1] + FRAME - self.frames[0] if self.frames else 0.0


def _media(path: Path) -> Media:
    with av.open(str(path)) as container:
        video = container.streams.video[0] if container.streams.video else None
        audio = container.streams.audio[0] if container.streams.audio else None
        frames = sorted(float(f.time) for f in container.decode(video)) if video else []
        return Media(
            video.codec_context.name if video else "",
            audio.codec_context.name if audio else "",
            video.codec_context.width if video else 0,
            video.codec_context.height if video else 0,
            frames,
        )


def _vtt(path: Path) -> list[tuple[float, float, str]]:
    """The cues of a WebVTT file: times in seconds, text unescaped (its own small parser:
    webvtt-py's ``start_in_seconds`` drops the milliseconds)."""

    def seconds(stamp: str) -> float:
        hours, minutes, rest = stamp.strip().split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(rest)

    lines = path.read_text("utf-8").splitlines()
    assert lines[0] == "WEBVTT"
    assert len(webvtt.read(str(path))) == sum("-->" in line for line in lines)  # well formed
    cues = []
    for index, line in enumerate(lines):
        if "-->" in line:
            start, end = line.split("-->")
            cues.append((seconds(start), seconds(end), html.unescape(lines[index + 1])))
    return cues


def _expected_cues(clip: CutClip) -> list[tuple[float, float, str]]:
    """The transcript's segments that overlap the clip's file, clipped to it and shifted by
    its start (computed here from CUES, not by the service's code)."""
    expected = []
    for cue in CUES:
        if cue.end > clip.cut_start and cue.start < clip.cut_end:
            start = max(cue.start, clip.cut_start) - clip.cut_start
            end = min(cue.end, clip.cut_end) - clip.cut_start
            expected.append((start, end, cue.text))
    return expected


def _same_cues(
    found: list[tuple[float, float, str]], expected: list[tuple[float, float, str]]
) -> None:
    assert [text for _, _, text in found] == [text for _, _, text in expected]
    for (start, end, _), (want_start, want_end, _) in zip(found, expected, strict=True):
        assert abs(start - want_start) <= 0.001 and abs(end - want_end) <= 0.001


def _listing(directory: Path) -> list[Path]:
    return list(directory.iterdir()) if directory.exists() else []


def _ffmpeg_children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if "ffmpeg" in p.name()]


# --- real clips ------------------------------------------------------------------------------


async def test_copy_accurate_and_webm_clips_with_posters_and_captions(
    transcoder: Transcoder, store: LocalObjectStore, scratch: Path, sources: Sources
) -> None:
    source = await _put(store, sources.gop)
    requests = [
        ClipRequest("fast", ClipOptions(3.0, 5.0), "The cut", "How it lands", "kp-1"),
        ClipRequest("exact", ClipOptions(3.0, 5.0, frame_accurate=True)),
        ClipRequest("web", ClipOptions(4.5, 6.5, ClipContainer.WEBM)),
        ClipRequest("tail", ClipOptions(8.7, None)),  # to the end
        ClipRequest("late", ClipOptions(7.9, 60.0, frame_accurate=True)),  # end clamps
    ]
    progress, outcome = await _cut(transcoder, source, requests)
    assert {u.message for u in progress} >= {"cutting clip 1 of 5 (fast)", "storing 15 files"}
    clips = {clip.name: clip for clip in outcome.clips}
    assert [clip.index for clip in outcome.clips] == [0, 1, 2, 3, 4]
    artifacts = _by_name(outcome)
    keyframes = keyframe_times(sources.gop)
    assert keyframes == [0.0, 2.0, 4.0, 6.0, 8.0]

    # Copy: starts at the keyframe at or before the start, the file holds [cut_start, cut_end).
    fast = clips["fast"]
    assert fast.cut_start == max(k for k in keyframes if k <= 3.0) == 2.0
    assert (fast.start, fast.end, fast.title, fast.description, fast.knowledge_id) == (
        3.0,
        5.0,
        "The cut",
        "How it lands",
        "kp-1",
    )
    fast_media = _media(await _local(store, artifacts["clips/fast.mp4"]))
    assert fast_media.frames[0] == 0.0  # the file starts at its first frame
    assert abs(fast_media.span - (fast.cut_end - fast.cut_start)) <= 0.001
    assert 0 <= fast_media.span - (fast.end - fast.start) <= GOP + 2 * FRAME
    assert fast.cut_end >= fast.end
    assert (fast_media.video_codec, fast_media.audio_codec) == ("h264", "aac")
    attributes = artifacts["clips/fast.mp4"].attributes
    assert attributes["mode"] == "copy" and attributes["cut_start_seconds"] == "2.000000"
    assert artifacts["clips/fast.mp4"].kind is ArtifactKind.CLIP
    assert artifacts["clips/fast.mp4"].stage == "clips"

    # Frame-accurate: exactly the frames asked for.
    exact = clips["exact"]
    assert (exact.cut_start, exact.cut_end) == (3.0, 5.0)
    exact_media = _media(await _local(store, artifacts["clips/exact.mp4"]))
    assert len(exact_media.frames) == 50 and abs(exact_media.span - 2.0) <= FRAME
    assert artifacts["clips/exact.mp4"].attributes["mode"] == "encode"

    # WebM of an H.264 source: re-encoded VP9/Opus, so on the exact frames too.
    web = clips["web"]
    assert web.video == "clips/web.webm" and (web.cut_start, web.cut_end) == (4.5, 6.5)
    web_media = _media(await _local(store, artifacts["clips/web.webm"]))
    assert (web_media.video_codec, web_media.audio_codec) == ("vp9", "opus")
    assert abs(web_media.span - 2.0) <= FRAME
    assert artifacts["clips/web.webm"].content_type == "video/webm"

    # Ends: unset is the source's end, past it clamps to it.
    assert clips["tail"].end == 10.0 and clips["tail"].cut_start == 8.0
    assert abs(clips["tail"].cut_end - 10.0) <= FRAME
    late = clips["late"]
    assert late.end == 10.0 and abs(late.cut_end - 10.0) <= FRAME
    assert len(_media(await _local(store, artifacts["clips/late.mp4"])).frames) == 53

    for clip in outcome.clips:
        # A poster from inside the clip: a decodable JPEG of the clip's size.
        assert clip.poster == f"clips/{clip.name}.jpg"
        poster = artifacts[clip.poster]
        assert poster.kind is ArtifactKind.CLIP_POSTER and poster.content_type == "image/jpeg"
        path = await _local(store, poster)
        assert path.read_bytes()[:3] == b"\xff\xd8\xff"
        still = _media(path)
        assert still.video_codec == "mjpeg" and (still.width, still.height) == (320, 180)
        # Captions: the transcript's overlapping segments, shifted to the clip's start.
        assert clip.captions == f"clips/{clip.name}.vtt"
        captions = artifacts[clip.captions]
        assert captions.kind is ArtifactKind.CLIP_VTT and captions.content_type == "text/vtt"
        cues = _vtt(await _local(store, captions))
        _same_cues(cues, _expected_cues(clip))
        assert cues and cues[0][0] == 0.0
    assert _vtt(await _local(store, artifacts["clips/fast.vtt"]))[1][2] == CUES[1].text

    # Everything stored is an artifact; scratch is gone.
    assert sorted(await store.list_keys("jobs/j1/")) == sorted(a.key for a in outcome.artifacts)
    assert len(outcome.artifacts) == 15
    assert _listing(scratch) == []


async def test_copy_of_a_webm_source_and_without_captions(
    transcoder: Transcoder, store: LocalObjectStore, sources: Sources
) -> None:
    source = await _put(store, sources.webm)
    requests = [ClipRequest("vp9", ClipOptions(5.0, 7.5, ClipContainer.WEBM))]
    _, outcome = await _cut(transcoder, source, requests, cues=None)
    (clip,) = outcome.clips
    assert clip.captions == "" and "clips/vp9.vtt" not in _by_name(outcome)
    artifact = _by_name(outcome)["clips/vp9.webm"]
    assert artifact.attributes["mode"] == "copy"
    media = _media(await _local(store, artifact))
    assert (media.video_codec, media.audio_codec) == ("vp9", "opus")
    assert clip.cut_start == max(k for k in keyframe_times(sources.webm) if k <= 5.0)
    assert abs(media.span - (clip.cut_end - clip.cut_start)) <= 0.002
    assert 0 <= (clip.cut_end - clip.cut_start) - 2.5 <= GOP + 2 * FRAME


async def test_audio_only_source(
    transcoder: Transcoder, store: LocalObjectStore, sources: Sources
) -> None:
    source = await _put(store, sources.audio_only)
    requests = [
        ClipRequest("copy", ClipOptions(2.5, 4.0)),
        ClipRequest("exact", ClipOptions(2.5, 4.0, frame_accurate=True)),
    ]
    _, outcome = await _cut(transcoder, source, requests)
    artifacts = _by_name(outcome)
    assert sorted(artifacts) == [
        "clips/copy.mp4",
        "clips/copy.vtt",
        "clips/exact.mp4",
        "clips/exact.vtt",
    ]  # no poster without video
    for clip in outcome.clips:
        assert clip.poster == ""
        assert clip.cut_start <= 2.5 and abs(clip.cut_end - 4.0) <= 0.05
        with av.open(str(await _local(store, artifacts[clip.video]))) as container:
            assert not container.streams.video
            assert container.streams.audio[0].codec_context.name == "aac"
            duration = (container.duration or 0) / av.time_base
        assert abs(duration - (clip.cut_end - clip.cut_start)) <= 0.05


async def test_real_video_at_ntsc_rate(
    transcoder: Transcoder, store: LocalObjectStore, shared_media: Path
) -> None:
    """The real 24 s 720p video (29.97 fps, no audio): a keyframe cut lands on the keyframe at
    or before the start, a frame-accurate one within a frame of the range."""
    path = shared_media / "video" / "testvideo.mp4"
    source = await _put(store, path)
    requests = [
        ClipRequest("fast", ClipOptions(5.0, 7.0)),
        ClipRequest("exact", ClipOptions(5.0, 7.0, frame_accurate=True)),
    ]
    _, outcome = await _cut(transcoder, source, requests, cues=None)
    fast, exact = outcome.clips
    assert (exact.cut_start, exact.start) == (5.0, 5.0)
    frame = 1001 / 30000
    keyframes = keyframe_times(path)
    assert fast.cut_start == pytest.approx(max(k for k in keyframes if k <= 5.0), abs=1e-6)
    artifacts = _by_name(outcome)
    fast_media = _media(await _local(store, artifacts["clips/fast.mp4"]))
    assert (fast_media.width, fast_media.height) == (1280, 720)
    assert abs(fast_media.span - (fast.cut_end - fast.cut_start)) <= frame
    assert fast.cut_end >= 7.0 - frame
    exact_media = _media(await _local(store, artifacts["clips/exact.mp4"]))
    assert abs(exact_media.span - 2.0) <= frame and (exact_media.width, exact_media.height) == (
        1280,
        720,
    )
    still = _media(await _local(store, artifacts["clips/exact.jpg"]))
    assert (still.width, still.height) == (1280, 720)


@pytest.mark.parametrize(
    ("requests", "reason"),
    [
        ([ClipRequest("Bad Name", ClipOptions(1, 2))], "INVALID_CLIP_NAME"),
        ([ClipRequest("a", ClipOptions(10.5, 12))], "INVALID_CLIP_RANGE"),
        (
            [ClipRequest("a", ClipOptions(1, 2)), ClipRequest("b", ClipOptions(4, 3))],
            "INVALID_CLIP_RANGE",
        ),
        (_requests(*[ClipOptions(0, 1)] * 201), "TOO_MANY_CLIPS"),
    ],
)
async def test_bad_requests_leave_nothing(
    transcoder: Transcoder,
    store: LocalObjectStore,
    scratch: Path,
    sources: Sources,
    requests: list[ClipRequest],
    reason: str,
) -> None:
    source = await _put(store, sources.gop)
    with pytest.raises(InvalidArgument) as caught:
        await _cut(transcoder, source, requests, prefix="jobs/bad/")
    assert caught.value.reason == reason
    assert await store.list_keys("jobs/bad/") == []
    assert _listing(scratch) == []


async def test_a_missing_source_and_a_bad_prefix(
    transcoder: Transcoder, store: LocalObjectStore
) -> None:
    with pytest.raises(ReelmillError) as caught:
        await _cut(transcoder, SourceRef("videos/none/source"), _requests(ClipOptions(0, 1)))
    assert isinstance(caught.value, NotFound) and caught.value.reason == "OBJECT_NOT_FOUND"
    with pytest.raises(InvalidArgument) as caught:
        await _cut(transcoder, SourceRef("x"), _requests(ClipOptions(0, 1)), prefix="../x/")
    assert caught.value.reason == "INVALID_OUTPUT_PREFIX"


async def test_cancel_stops_ffmpeg_and_leaves_nothing(
    store: LocalObjectStore, scratch: Path, sources: Sources
) -> None:
    config = TranscoderConfig(scratch_dir=scratch, preset="medium", encoder=FAST)
    transcoder = Transcoder(store, FfmpegRunner(ffmpeg_path()), config)
    source = await _put(store, sources.long)
    requests = [
        ClipRequest("quick", ClipOptions(0, 2)),  # copied and stored in scratch first
        ClipRequest("slow", ClipOptions(1, 29, frame_accurate=True)),
    ]
    started = asyncio.Event()

    async def consume() -> None:
        async for update in transcoder.cut_clips(source, None, requests, None, "jobs/c/"):
            if isinstance(update, ProgressUpdate) and "slow" in update.message:
                started.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 30)
    for _ in range(100):
        if _ffmpeg_children():
            break
        await asyncio.sleep(0.05)
    assert _ffmpeg_children() and len(_listing(scratch)) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _ffmpeg_children() == []
    assert _listing(scratch) == []
    assert await store.list_keys("jobs/c/") == []


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


def _clip_request(
    name: str, start: float, end: float, **fields: object
) -> transcode_service_pb2.ClipRequest:
    spec = pipeline_pb2.ClipSpec(start=duration_message(start), end=duration_message(end), **fields)  # type: ignore[arg-type]
    return transcode_service_pb2.ClipRequest(spec=spec, name=name)


async def test_grpc_cut_clips_streams_progress_then_clips(
    stub: transcode_service_pb2_grpc.TranscodeServiceStub, store: LocalObjectStore, sources: Sources
) -> None:
    await _put(store, sources.gop, "videos/g/source")
    transcript = media_pb2.Transcript(
        segments=[
            media_pb2.Segment(id=i, start_seconds=c.start, end_seconds=c.end, text=c.text)
            for i, c in enumerate(CUES)
        ]
    )
    request = transcode_service_pb2.CutClipsRequest(
        source=media_pb2.ObjectRef(key="videos/g/source"),
        clips=[
            _clip_request("chapter-1", 3.0, 5.0, title="The cut", knowledge_id="chapter-1"),
            _clip_request(
                "chapter-2", 5.0, 7.0, container=pipeline_pb2.CLIP_CONTAINER_WEBM, description="d"
            ),
        ],
        transcript=transcript,
        output_prefix="jobs/g/",
    )
    responses = [response async for response in stub.CutClips(request, timeout=60)]
    assert [r.WhichOneof("update") for r in responses][-1] == "result"
    assert all(r.WhichOneof("update") == "progress" for r in responses[:-1])
    result = responses[-1].result
    first, second = result.clips
    assert (first.index, first.knowledge_id, first.title) == (0, "chapter-1", "The cut")
    assert (first.start_seconds, first.end_seconds, first.cut_start_seconds) == (3.0, 5.0, 2.0)
    assert first.cut_end_seconds >= 5.0
    assert (first.video, first.poster, first.captions) == (
        "clips/chapter-1.mp4",
        "clips/chapter-1.jpg",
        "clips/chapter-1.vtt",
    )
    assert (second.index, second.description, second.video) == (1, "d", "clips/chapter-2.webm")
    assert (second.cut_start_seconds, second.cut_end_seconds) == (5.0, 7.0)
    kinds = {a.name: a.kind for a in result.artifacts}
    assert kinds == {
        "clips/chapter-1.mp4": media_pb2.ARTIFACT_KIND_CLIP,
        "clips/chapter-1.jpg": media_pb2.ARTIFACT_KIND_CLIP_POSTER,
        "clips/chapter-1.vtt": media_pb2.ARTIFACT_KIND_CLIP_VTT,
        "clips/chapter-2.webm": media_pb2.ARTIFACT_KIND_CLIP,
        "clips/chapter-2.jpg": media_pb2.ARTIFACT_KIND_CLIP_POSTER,
        "clips/chapter-2.vtt": media_pb2.ARTIFACT_KIND_CLIP_VTT,
    }
    for artifact in result.artifacts:
        assert artifact.stage == "clips" and artifact.object.key == "jobs/g/" + artifact.name
        assert artifact.size_bytes == (await store.stat(artifact.object.key)).size

    bad = transcode_service_pb2.CutClipsRequest(
        source=media_pb2.ObjectRef(key="videos/g/source"),
        clips=[_clip_request("ok", 1, 2), _clip_request("no/slash", 2, 3)],
        output_prefix="jobs/bad/",
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stub.CutClips(bad, timeout=30):
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(caught.value)
    assert info is not None and info.reason == "INVALID_CLIP_NAME"
    assert await store.list_keys("jobs/bad/") == []


# --- the clips stage's ranges (gateway/pipeline/clips.py) ------------------------------------


def _transcript(*segments: tuple[float, float, str]) -> media_pb2.Transcript:
    return media_pb2.Transcript(
        segments=[
            media_pb2.Segment(id=i, start_seconds=s, end_seconds=e, text=t)
            for i, (s, e, t) in enumerate(segments)
        ]
    )


def _ranges(requests: list[transcode_service_pb2.ClipRequest]) -> list[tuple[str, float, float]]:
    return [(r.name, seconds(r.spec.start), seconds(r.spec.end)) for r in requests]


def test_chapters_then_ranges_then_the_transcode_clips() -> None:
    metadata = media_pb2.VideoMetadata(
        chapters=[
            media_pb2.Chapter(
                start_seconds=0, end_seconds=40, title="Intro", summary="S1", id="chapter-1"
            ),
            media_pb2.Chapter(start_seconds=40, end_seconds=95.5, title="Kp", id="KP.Two"),
            media_pb2.Chapter(start_seconds=95.5, title="No end, no id"),  # from before ends
        ]
    )
    spec = pipeline_pb2.PipelineSpec(
        clips=pipeline_pb2.ClipsSpec(
            by_chapters=True,
            container=pipeline_pb2.CLIP_CONTAINER_WEBM,
            ranges=[
                pipeline_pb2.ClipSpec(start=duration_message(1), end=duration_message(2)),
                pipeline_pb2.ClipSpec(
                    start=duration_message(3), end=duration_message(4), knowledge_id="kp.two"
                ),
            ],
        ),
        transcode=pipeline_pb2.TranscodeSpec(
            clips=[pipeline_pb2.ClipSpec(start=duration_message(5), frame_accurate=True)]
        ),
    )
    requests = resolve_clips(spec, metadata, media_pb2.Transcript(), 120.0)
    assert _ranges(requests) == [
        ("chapter-1", 0, 40),
        ("kp-two", 40, 95.5),
        ("chapter-3", 95.5, 120),
        ("range-1", 1, 2),
        ("kp-two-2", 3, 4),  # the same name sanitised: made unique
        ("clip_000", 5, 0),  # as it was asked (end unset: the source's end)
    ]
    first, second, third = requests[:3]
    assert (first.spec.title, first.spec.description, first.spec.knowledge_id) == (
        "Intro",
        "S1",
        "chapter-1",
    )
    assert second.spec.knowledge_id == "KP.Two" and third.spec.knowledge_id == "chapter-3"
    assert {r.spec.container for r in requests[:3]} == {pipeline_pb2.CLIP_CONTAINER_WEBM}
    assert requests[3].spec.container == pipeline_pb2.CLIP_CONTAINER_UNSPECIFIED
    assert requests[5].spec.frame_accurate and not requests[5].spec.HasField("end")
    assert all(clip_plan.NAME.fullmatch(r.name) for r in requests)
    # No chapters (no speech): the ranges alone; nothing asked: nothing.
    assert [
        r.name for r in resolve_clips(spec, media_pb2.VideoMetadata(), media_pb2.Transcript(), 120)
    ] == [
        "range-1",
        "kp-two",
        "clip_000",
    ]
    spec.transcode.disabled = True
    assert [r.name for r in resolve_clips(spec, metadata, media_pb2.Transcript(), 120)][
        -1
    ] == "kp-two-2"
    assert resolve_clips(pipeline_pb2.PipelineSpec(), metadata, media_pb2.Transcript(), 120) == []


def test_names_from_knowledge_ids() -> None:
    assert name_of("Intro.Part_1", "x") == "intro-part_1"
    assert name_of("..", "range-2") == "range-2"
    assert name_of("ü" * 3 + "a" * 80, "x") == "a" * 64
    assert clip_plan.NAME.fullmatch(name_of("A" * 64 + ".", "x"))


def test_padding_to_sentences() -> None:
    transcript = _transcript(
        (0.0, 2.0, "We begin here,"),
        (2.0, 4.5, "and this is one sentence."),
        (5.0, 7.0, "Is this the second?"),
        (7.0, 9.0, '"Yes!"'),
        (9.5, 11.0, "a trailing fragment"),
    )
    assert sentence_spans(transcript.segments) == [(0.0, 4.5), (5.0, 7.0), (7.0, 9.0), (9.5, 11.0)]
    spec = pipeline_pb2.PipelineSpec(
        clips=pipeline_pb2.ClipsSpec(
            pad_to_sentences=True,
            ranges=[
                pipeline_pb2.ClipSpec(start=duration_message(3), end=duration_message(6)),
                pipeline_pb2.ClipSpec(start=duration_message(4.7), end=duration_message(9.2)),
                pipeline_pb2.ClipSpec(start=duration_message(10), end=duration_message(12)),
            ],
        )
    )
    assert _ranges(resolve_clips(spec, media_pb2.VideoMetadata(), transcript, 10.5)) == [
        ("range-1", 0.0, 7.0),  # back to the sentence's start, on to the next one's end
        ("range-2", 4.7, 9.2),  # both ends in pauses: unchanged
        ("range-3", 9.5, 10.5),  # never past the video's end
    ]
    spec.clips.pad_to_sentences = False
    assert _ranges(resolve_clips(spec, media_pb2.VideoMetadata(), transcript, 10.5))[0] == (
        "range-1",
        3.0,
        6.0,
    )


# --- the CLI ---------------------------------------------------------------------------------


def test_submit_asks_for_chapter_clips_and_jobs_get_shows_them(tmp_path: Path) -> None:
    spec_file = tmp_path / "spec.json"
    spec_file.write_text('{"transcode": {"disabled": true}}')
    spec = batch.spec_of(argparse.Namespace(spec=str(spec_file), clips_by_chapters=True))
    assert spec.clips.by_chapters and spec.transcode.disabled
    assert not batch.spec_of(argparse.Namespace()).clips.by_chapters
    job = job_pb2.Job(
        id="j1",
        clips=[
            media_pb2.Clip(
                index=0,
                knowledge_id="chapter-1",
                title="Volcanoes",
                start_seconds=0,
                end_seconds=44.9,
                cut_start_seconds=0,
                cut_end_seconds=45.0,
                video="clips/chapter-1.mp4",
            )
        ],
    )
    with render.console.capture() as captured:
        render.show_job(job)
    shown = captured.get()
    assert "clips 1" in shown and "chapter-1" in shown and "Volcanoes" in shown
    assert "00:00-00:44" in shown and "clips/chapter-1.mp4" in shown
