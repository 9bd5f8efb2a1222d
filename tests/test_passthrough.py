"""Passthrough (issue 15): the rung of the source's size is the source's H.264 copied, the
other rungs keyed at the source's keyframes, so HLS variants cut at the same times."""

from __future__ import annotations

import itertools
import subprocess
import time
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import pytest

from reelmill.v1 import pipeline_pb2
from runtime.ffmpeg import ffmpeg_path
from runtime.storage.local import LocalObjectStore
from services.ingest import convert
from services.ingest.probe import probe_sync
from services.transcode import commands, hls, messages, passthrough
from services.transcode.model import (
    ArtifactKind,
    AudioInfo,
    RungSpec,
    SourceInfo,
    StoryboardOptions,
    ThumbnailOptions,
    TranscodeOptions,
    VideoInfo,
)
from services.transcode.plan import LadderPlan, plan_ladder
from services.transcode.transcoder import Transcoder
from tests.test_transcode import _by_name, _collect, _local, _put, scratch, store, transcoder

__all__ = ["scratch", "store", "transcoder"]

FPS = 25
#: The source's keyframes: irregular, so that only following them can align the variants.
KEYFRAMES = (0.0, 1.32, 3.08, 4.4)
SECONDS = 6
#: With 1 s segments HLS cuts a stream copy at the first keyframe at or after each second.
CUTS = (1.32, 3.08, 4.4)


def _ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_path(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def _source(path: Path, *video: str, size: str = "640x360", seconds: int = SECONDS) -> Path:
    _ffmpeg(
        *("-f", "lavfi", "-i", f"testsrc2=size={size}:rate={FPS}:duration={seconds}"),
        *("-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}"),
        *video,
        *("-c:a", "aac", "-b:a", "96k", "-movflags", "+faststart", str(path)),
    )
    return path


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("passthrough")
    keyed = ("-force_key_frames", ",".join(f"{t}" for t in KEYFRAMES), "-sc_threshold", "0")
    # B-frames (veryfast, High) in the copied source; the test transcoder's ultrafast rungs have
    # none: their different decode leads must not shift one variant against another.
    h264 = ("-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-g", "250")
    return {
        "good": _source(root / "good.mp4", *h264, *keyed),
        "yuv444p": _source(
            root / "yuv444p.mp4", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv444p"
        ),
        "10bit": _source(
            root / "10bit.mp4", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p10le"
        ),
        "vp9": _source(
            root / "vp9.mp4", "-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8"
        ),
        # One keyframe in 12 s: a player could not start or seek anywhere but at the start.
        "huge_gop": _source(root / "huge_gop.mp4", *h264, "-g", "600", seconds=12),
    }


LADDER = (RungSpec(360), RungSpec(240), RungSpec(180))
OPTIONS = TranscodeOptions(
    ladder=LADDER,
    hls_segment_seconds=1.0,
    thumbnails=ThumbnailOptions(enabled=False),
    storyboard=StoryboardOptions(interval=1.0),
)


def _packets(path: Path) -> list[tuple[int | None, int, bool]]:
    with av.open(str(path)) as container:
        return [
            (packet.pts, packet.size, packet.is_keyframe)
            for packet in container.demux(container.streams.video[0])
            if packet.size
        ]


def _keyframe_times(path: Path) -> list[float]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        base = stream.time_base or 0
        return sorted(
            float(p.pts * base)
            for p in container.demux(stream)
            if p.size and p.is_keyframe and p.pts is not None
        )


def _first_pts(segment: Path) -> float:
    """The first presentation time of a segment's video."""
    with av.open(str(segment)) as ts:
        stream = ts.streams.video[0]
        base = stream.time_base or 0
        return min(float(p.pts * base) for p in ts.demux(stream) if p.pts is not None and p.size)


async def test_the_top_rung_is_the_source_copied_and_hls_variants_align(
    transcoder: Transcoder, store: LocalObjectStore, sources: dict[str, Path]
) -> None:
    source = await _put(store, sources["good"])
    progress, outcome = await _collect(transcoder.transcode(source, None, OPTIONS, "jobs/p/"))
    assert "encoding 360p (copied), 240p, 180p" in {update.message for update in progress}
    artifacts = _by_name(outcome)
    top = artifacts["renditions/360p.mp4"]
    assert top.attributes["passthrough"] == "true"
    assert top.attributes["audio_passthrough"] == "true"  # AAC-LC stereo at 96k <= 128k
    top_path = await _local(store, top)

    # The copied rung is the source's video, packet for packet, and plays.
    assert _packets(top_path) == _packets(sources["good"])
    with av.open(str(top_path)) as container:
        frames = list(container.decode(container.streams.video[0]))
    assert len(frames) == SECONDS * FPS and (frames[0].width, frames[0].height) == (640, 360)
    # +faststart: the moov box before mdat.
    head = top_path.read_bytes()[:65536]
    assert 0 <= head.find(b"moov") < head.find(b"mdat")

    # The encoded rungs have keyframes at the source's keyframes, and only there.
    for name, size in [("240p", (426, 240)), ("180p", (320, 180))]:
        artifact = artifacts[f"renditions/{name}.mp4"]
        assert "passthrough" not in artifact.attributes
        assert (artifact.attributes["width"], artifact.attributes["height"]) == tuple(
            map(str, size)
        )
        keys = _keyframe_times(await _local(store, artifact))
        assert keys == pytest.approx(list(KEYFRAMES), abs=0.5 / FPS)

    # HLS: every variant's segments have the same boundaries (durations and first PTS, within
    # a frame), at the source's keyframes.
    master_path = await _local(store, artifacts["hls/master.m3u8"])
    variants = hls.parse_master_playlist(master_path.read_text())
    assert [v.uri for v in variants] == ["360p/index.m3u8", "240p/index.m3u8", "180p/index.m3u8"]
    layouts = []
    for variant in variants:
        playlist_path = master_path.parent / variant.uri
        playlist = hls.parse_media_playlist(playlist_path.read_text())
        starts = [_first_pts(playlist_path.parent / s.uri) for s in playlist.segments]
        layouts.append(([s.duration for s in playlist.segments], starts))
        assert variant.codecs[1] == "mp4a.40.2"
    durations, starts = layouts[0]
    assert len(durations) == len(CUTS) + 1
    cut_times = [sum(durations[: i + 1]) for i in range(len(CUTS))]
    assert cut_times == pytest.approx(list(CUTS), abs=1 / FPS)
    assert [b - a for a, b in itertools.pairwise(starts)] == pytest.approx(
        durations[:-1], abs=1 / FPS
    )
    for other_durations, other_starts in layouts[1:]:
        assert other_durations == pytest.approx(durations, abs=1 / FPS)
        assert other_starts == pytest.approx(starts, abs=1 / FPS)
    # The storyboard still comes from the decode the lower rungs share.
    assert "storyboard/storyboard.vtt" in artifacts


async def test_passthrough_off_reencodes_every_rung(
    transcoder: Transcoder, store: LocalObjectStore, sources: dict[str, Path]
) -> None:
    source = await _put(store, sources["good"])
    options = replace(OPTIONS, passthrough=False, hls_segment_seconds=2.0)
    _, outcome = await _collect(transcoder.transcode(source, None, options, "jobs/off/"))
    artifacts = _by_name(outcome)
    top = artifacts["renditions/360p.mp4"]
    assert "passthrough" not in top.attributes and "audio_passthrough" not in top.attributes
    top_path = await _local(store, top)
    assert _packets(top_path) != _packets(sources["good"])
    # Keyframes on the segment grid, not the source's.
    assert _keyframe_times(top_path) == pytest.approx([0.0, 2.0, 4.0], abs=0.5 / FPS)


@pytest.mark.parametrize("name", ["yuv444p", "10bit", "vp9", "huge_gop"])
async def test_sources_players_would_not_take_are_reencoded(
    transcoder: Transcoder, store: LocalObjectStore, sources: dict[str, Path], name: str
) -> None:
    source = await _put(store, sources[name])
    options = TranscodeOptions(
        ladder=(RungSpec(360),),
        hls=False,
        thumbnails=ThumbnailOptions(enabled=False),
        storyboard=StoryboardOptions(enabled=False),
    )
    _, outcome = await _collect(transcoder.transcode(source, None, options, f"jobs/{name}/"))
    rendition = outcome.artifacts[0]
    assert rendition.kind is ArtifactKind.RENDITION_MP4
    assert "passthrough" not in rendition.attributes
    path = await _local(store, rendition)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.format is not None
        assert stream.codec_context.format.name == "yuv420p"
    assert _packets(path) != _packets(sources[name])


# --- the rule, on its own --------------------------------------------------------------------

VIDEO = VideoInfo(
    640, 360, fps=25.0, codec="h264", pixel_format="yuv420p", profile="High", level=30
)
INFO = SourceInfo("mov,mp4", 6.0, VIDEO, AudioInfo("aac", 2, 48000, 96000, 6.0, "LC"))
SCAN = passthrough.SourceScan(
    keyframes=KEYFRAMES,
    fps=25.0,
    irregular=0.0,
    first_is_keyframe=True,
    end=6.0,
    profile="High",
    level=30,
    pixel_format="yuv420p",
    square_pixels=True,
    audio_profile="LC",
)


def _ladder(info: SourceInfo = INFO) -> LadderPlan:
    return plan_ladder(LADDER, info, segment_seconds=1.0, preset="ultrafast")


def test_the_rule() -> None:
    ladder = _ladder()
    assert passthrough.copy_rung(INFO, ladder) == ladder.rungs[0]
    assert passthrough.refusal(SCAN, ladder) is None
    for change, reason in [
        ({"profile": "High 4:4:4 Predictive"}, "profile"),
        ({"profile": "High 10"}, "profile"),
        ({"level": 52}, "level"),
        ({"level": 0}, "level"),
        ({"pixel_format": "yuvj420p"}, "pixel format"),
        ({"square_pixels": False}, "non-square"),
        ({"irregular": 0.05}, "variable frame rate"),
        ({"fps": 30.0}, "fps"),
        ({"first_is_keyframe": False}, "keyframe first"),
        ({"keyframes": (0.0, 10.5)}, "apart"),
        ({"keyframes": (0.0,), "end": 12.0}, "apart"),
        ({"keyframes": tuple(i / 25 for i in range(150))}, "too close"),
    ]:
        refused = passthrough.refusal(replace(SCAN, **change), ladder)  # type: ignore[arg-type]
        assert refused is not None and reason in refused, change
    # The probe alone rules out: another codec, rotation, a size no rung has.
    for video in [
        replace(VIDEO, codec="vp9"),
        replace(VIDEO, rotation=90),
        replace(VIDEO, pixel_format="yuv444p"),
        replace(VIDEO, width=641),  # an odd width: the rung is 640 wide
    ]:
        info = replace(INFO, video=video)
        assert passthrough.copy_rung(info, _ladder(info)) is None, video


def test_audio_is_copied_only_when_fit() -> None:
    ladder = _ladder()
    assert passthrough.audio_copies(INFO, SCAN, ladder) == {"360p", "240p", "180p"}
    assert INFO.audio is not None
    for audio in [
        replace(INFO.audio, codec="mp3"),
        replace(INFO.audio, channels=6),
        replace(INFO.audio, sample_rate=22050),
        replace(INFO.audio, bit_rate=320_000),
    ]:
        assert passthrough.audio_copies(replace(INFO, audio=audio), SCAN, ladder) == set()
    assert passthrough.audio_copies(INFO, replace(SCAN, audio_profile="HE-AAC"), ladder) == set()


def test_the_plan_and_the_command() -> None:
    ladder = passthrough.apply(INFO, _ladder(), _ladder().rungs[0], SCAN)
    assert ladder.copy == "360p" and ladder.keyframes == KEYFRAMES
    assert [rung.name for rung in ladder.encoded] == ["240p", "180p"]
    assert ladder.fps == Fraction(25)
    assert ladder.gop_frames >= round(1.76 * 25) + 2  # no keyframe x264 would add itself
    files = {rung.name: Path(f"/out/{rung.name}.mp4") for rung in ladder.rungs}
    args = commands.ladder_command("file:/in.mp4", ladder, files, commands.EncoderSettings())
    assert args.count("libx264") == 2 and "split=2[s0][s1]" in " ".join(args)
    forced = args[args.index("-force_key_frames") + 1].split(",")
    assert [float(t) for t in forced] == pytest.approx([0.0, 1.31, 3.07, 4.39])
    # The copied rung's output comes first: its video and (fit) audio copied, +faststart.
    copied = args[: args.index("/out/360p.mp4")]
    output = copied[len(copied) - 1 - copied[::-1].index("0:v:0") - 1 :]
    assert output[:6] == ["-map", "0:v:0", "-map", "0:a:0", "-c:v", "copy"]
    assert output[6:8] == ["-c:a", "copy"] and "+faststart" in output


def test_the_spec_switch() -> None:
    assert messages.transcode_options(pipeline_pb2.TranscodeSpec()).passthrough is True
    spec = pipeline_pb2.TranscodeSpec(passthrough=False)
    assert messages.transcode_options(spec).passthrough is False


def test_the_probe_reports_the_level_and_the_audio_profile(sources: dict[str, Path]) -> None:
    """What the rule needs reaches the transcode service in MediaInfo (ingest's probe)."""
    path = sources["good"]
    info = probe_sync(path, size=path.stat().st_size, deadline=time.monotonic() + 30)
    media = convert.media_info(info)
    video, audio = media.video_streams[0], media.audio_streams[0]
    assert (video.codec, video.profile, video.pixel_format) == ("h264", "High", "yuv420p")
    assert 10 <= video.level <= 51 and audio.profile == "LC"
    source = messages.source_info(media)
    assert source is not None and source.video is not None and source.audio is not None
    assert (source.video.level, source.audio.profile) == (video.level, "LC")


async def test_a_ladder_of_the_source_size_alone_decodes_nothing(
    transcoder: Transcoder, store: LocalObjectStore, sources: dict[str, Path]
) -> None:
    """No other rung and no storyboard: one ffmpeg run that only remuxes, then HLS from it."""
    ladder = passthrough.apply(INFO, _ladder(), _ladder().rungs[0], SCAN)
    alone = replace(ladder, rungs=ladder.rungs[:1])  # the copied rung alone
    args = commands.ladder_command(
        "file:/in.mp4", alone, {"360p": Path("/out/360p.mp4")}, commands.EncoderSettings()
    )
    assert "-filter_complex" not in args and "libx264" not in args
    source = await _put(store, sources["good"])
    options = replace(OPTIONS, ladder=(RungSpec(360),), storyboard=StoryboardOptions(enabled=False))
    _, outcome = await _collect(transcoder.transcode(source, None, options, "jobs/alone/"))
    artifacts = _by_name(outcome)
    assert artifacts["renditions/360p.mp4"].attributes["passthrough"] == "true"
    assert _packets(await _local(store, artifacts["renditions/360p.mp4"])) == _packets(
        sources["good"]
    )
    playlist = hls.parse_media_playlist(
        (await _local(store, artifacts["hls/360p/index.m3u8"])).read_text()
    )
    cuts = [sum(s.duration for s in playlist.segments[: i + 1]) for i in range(len(CUTS))]
    assert cuts == pytest.approx(list(CUTS), abs=1 / FPS)
