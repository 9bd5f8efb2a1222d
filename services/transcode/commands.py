"""ffmpeg argument lists for each step, built from plans (pure; nothing runs here).

Every list goes after ``ffmpeg_runner.COMMON_ARGS`` and opens the untrusted source only through
``ffmpeg_runner.source_input_args``. Output paths are absolute paths in the scratch directory,
passed with an explicit ``-f`` so no name is ever interpreted.

All outputs are 8-bit 4:2:0 with square pixels (``format=yuv420p``, ``setsar=1``) whatever the
source's pixel format (4:4:4, 10-bit, ...), at a constant frame rate (an ``fps`` filter ahead of
everything plus ``-fps_mode cfr``), with stereo 48 kHz audio; container metadata (GPS tags,
device names) is not copied.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from runtime import demux
from services.transcode.clip_plan import ClipPlan
from services.transcode.ffmpeg_runner import source_input_args, source_url
from services.transcode.model import ClipContainer
from services.transcode.plan import (
    LadderPlan,
    Rung,
    StoryboardPlan,
    ThumbnailPlan,
)

TILE_PATTERN = "tile_%05d.jpg"
SPRITE_PATTERN = "sprite_%03d.jpg"
SEGMENT_PATTERN = "seg_%05d.ts"
AUDIO_RATE = 48000


@dataclass(frozen=True)
class EncoderSettings:
    """Service-wide encoder knobs (from ``TranscodeSettings``)."""

    #: ``-threads`` per encoder; 0 lets each encoder pick.
    threads: int = 0
    #: libvpx-vp9 ``-cpu-used`` (0 slowest/best .. 8 fastest) with ``-deadline good``.
    vp9_cpu_used: int = 4
    #: x264 CRF for re-encoded clips.
    clip_crf: int = 20


def _fps(fps: Fraction) -> str:
    return f"{fps.numerator}/{fps.denominator}"


def _threads(settings: EncoderSettings) -> list[str]:
    return ["-threads", str(settings.threads)] if settings.threads > 0 else []


def _keyframes(ladder: LadderPlan) -> list[str]:
    """A keyframe at every segment boundary in every rung; no scene-cut keyframes. With a
    copied rung (``passthrough``): keyframes at the source's keyframe times and nowhere else,
    each asked a quarter frame early so that it lands on the source's own frame."""
    gop = str(ladder.gop_frames)
    if ladder.copy is not None:
        early = 0.25 / float(ladder.fps)
        times = ",".join(f"{max(0.0, time - early):.6f}" for time in ladder.keyframes)
        return ["-force_key_frames", times, "-sc_threshold", "0", "-g", gop]
    seg = f"{ladder.segment_seconds:g}"
    return [
        "-force_key_frames",
        f"expr:gte(t,n_forced*{seg})",
        "-sc_threshold",
        "0",
        "-g",
        gop,
        "-keyint_min",
        gop,
    ]


def _aac(kbps: int) -> list[str]:
    return ["-c:a", "aac", "-b:a", f"{kbps}k", "-ac", "2", "-ar", str(AUDIO_RATE)]


def _scale(width: int, height: int) -> str:
    return f"scale={width}:{height}:flags=bicubic,setsar=1,format=yuv420p"


def _jpeg_scale(width: int, height: int) -> str:
    """Scaling for JPEG stills: full-range 4:2:0 chosen explicitly, so the encoder opens even
    when no frame arrives (a seek past the end), instead of failing on a default range."""
    return f"scale={width}:{height}:flags=bicubic:out_range=full,setsar=1,format=yuvj420p"


def ladder_command(
    source: str,
    ladder: LadderPlan,
    outputs: dict[str, Path],
    settings: EncoderSettings,
    *,
    storyboard: StoryboardPlan | None = None,
    tiles_dir: Path | None = None,
) -> list[str]:
    """One decode, one frame-rate conversion, ``split`` into a ``scale`` per rung, one
    H.264/AAC MP4 per rung (``outputs`` maps rung name to file). With a storyboard, one more
    branch writes its tiles as small JPEGs (``fps,scale``: almost free once frames are
    decoded); ``sprite_command`` then lays them out. The tiles are not tiled here because a
    ``tile`` output emits nothing until a whole sheet is full, and ffmpeg reports no progress
    until every output has started. With ``ladder.copy`` (``passthrough``) that rung is the
    source's video stream copied, in the same run, and only the other rungs are decoded and
    encoded (with no rung left to encode and no storyboard, nothing is decoded at all)."""
    encoded = ladder.encoded
    branches = len(encoded) + (1 if storyboard is not None else 0)
    labels = [f"s{i}" for i in range(branches)]
    graph = []
    if branches:
        split = f"split={branches}" + "".join(f"[{x}]" for x in labels)
        graph.append(f"[0:v:0]fps={_fps(ladder.fps)},{split}")
    for index, rung in enumerate(encoded):
        graph.append(f"[s{index}]{_scale(rung.width, rung.height)}[v{index}]")
    if storyboard is not None:
        # Exactly ``tiles`` frames whatever the rounding at the end: clone the last frame past
        # the end, cut at tiles x interval, then take one frame per interval.
        span = f"{storyboard.tiles * storyboard.interval:.6g}"
        graph.append(
            f"[s{len(encoded)}]tpad=stop_mode=clone:stop_duration={span},trim=end={span},"
            f"fps=1/{storyboard.interval:g},"
            f"{_jpeg_scale(storyboard.tile_width, storyboard.tile_height)}[sb]"
        )
    args = [*source_input_args(source)]
    if graph:
        args += ["-filter_complex", ";".join(graph)]
        if settings.threads > 0:
            args += ["-filter_complex_threads", str(settings.threads)]
    if ladder.copy is not None:
        # Passthrough: the source's video stream as it is, remuxed.
        args += ["-map", "0:v:0"]
        if ladder.audio:
            args += ["-map", "0:a:0"]
        args += ["-c:v", "copy"]
        if ladder.audio:
            args += _audio(ladder, ladder.copy, _rung(ladder, ladder.copy).audio_bitrate_kbps)
        args += ["-map_metadata", "-1", "-map_chapters", "-1", "-movflags", "+faststart"]
        args += ["-f", "mp4", str(outputs[ladder.copy])]
    for index, rung in enumerate(encoded):
        args += ["-map", f"[v{index}]"]
        if ladder.audio:
            args += ["-map", "0:a:0"]
        args += _h264(rung, ladder, settings)
        if ladder.audio:
            args += _audio(ladder, rung.name, rung.audio_bitrate_kbps)
        args += ["-map_metadata", "-1", "-map_chapters", "-1", "-movflags", "+faststart"]
        args += ["-f", "mp4", str(outputs[rung.name])]
    if storyboard is not None:
        assert tiles_dir is not None
        args += ["-map", "[sb]", "-c:v", "mjpeg", "-q:v", "3", "-fps_mode", "passthrough"]
        args += ["-start_number", "0", "-f", "image2", str(tiles_dir / TILE_PATTERN)]
    return args


def _rung(ladder: LadderPlan, name: str) -> Rung:
    return next(rung for rung in ladder.rungs if rung.name == name)


def _audio(ladder: LadderPlan, name: str, kbps: int) -> list[str]:
    """The source's AAC copied when ``passthrough`` found it fit for this rung, else AAC."""
    return ["-c:a", "copy"] if name in ladder.copy_audio else _aac(kbps)


def sprite_command(storyboard: StoryboardPlan, tiles_dir: Path, board_dir: Path) -> list[str]:
    """Lays the storyboard tiles (our own files) out on sheets of columns x rows; the last
    sheet is padded."""
    return [
        *("-protocol_whitelist", demux.LOCAL_PROTOCOLS, "-f", "image2", "-framerate", "1"),
        *("-start_number", "0", "-i", f"file:{tiles_dir / TILE_PATTERN}"),
        *("-vf", f"tile={storyboard.columns}x{storyboard.rows}", "-c:v", "mjpeg", "-q:v", "5"),
        *("-fps_mode", "passthrough", "-start_number", "0"),
        *("-f", "image2", str(board_dir / SPRITE_PATTERN)),
    ]


def _h264(rung: Rung, ladder: LadderPlan, settings: EncoderSettings) -> list[str]:
    kbps = rung.video_bitrate_kbps
    return [
        "-c:v",
        "libx264",
        "-preset",
        ladder.preset,
        "-profile:v",
        "high",
        "-b:v",
        f"{kbps}k",
        "-maxrate",
        f"{kbps * 3 // 2}k",
        "-bufsize",
        f"{kbps * 2}k",
        "-r",
        _fps(ladder.fps),
        "-fps_mode",
        "cfr",
        *_keyframes(ladder),
        *_threads(settings),
    ]


def hls_command(
    ladder: LadderPlan, renditions: dict[str, Path], hls_dir: Path, *, lead: float = 0.0
) -> list[str]:
    """Packages every rung's MP4 as HLS (MPEG-TS segments) by stream copy, in one run. The
    keyframes the ladder forced at segment boundaries make every variant cut at the same
    times. ``lead`` (seconds, the most any rendition's decode times run before zero) shifts
    every variant alike, so that none has negative times for the muxer to shift on its own,
    by its own lead: a copied rung without B-frames and an encoded one with them keep the same
    presentation times, as HLS wants of variants."""
    args: list[str] = []
    for rung in ladder.rungs:
        args += ["-protocol_whitelist", demux.LOCAL_PROTOCOLS, "-f", "mp4"]
        args += ["-i", f"file:{renditions[rung.name]}"]
    for index, rung in enumerate(ladder.rungs):
        variant = hls_dir / rung.name
        args += ["-map", str(index), "-c", "copy"]
        if lead > 0:
            args += ["-output_ts_offset", f"{lead:.6f}"]
        args += ["-f", "hls"]
        args += ["-hls_time", f"{ladder.segment_seconds:g}", "-hls_playlist_type", "vod"]
        args += ["-hls_flags", "independent_segments", "-hls_segment_type", "mpegts"]
        args += ["-start_number", "0", "-hls_list_size", "0"]
        args += ["-hls_segment_filename", str(variant / SEGMENT_PATTERN)]
        args += [str(variant / "index.m3u8")]
    return args


def webm_command(
    source: str, ladder: LadderPlan, output: Path, settings: EncoderSettings
) -> list[str]:
    """VP9/Opus WebM at the top rung's size, constrained quality capped at about two thirds of
    the H.264 rate (VP9 needs less for the same quality)."""
    top = ladder.top
    kbps = max(100, top.video_bitrate_kbps * 2 // 3)
    args = [*source_input_args(source), "-map", "0:v:0"]
    if ladder.audio:
        args += ["-map", "0:a:0"]
    args += ["-vf", f"fps={_fps(ladder.fps)},{_scale(top.width, top.height)}"]
    args += ["-c:v", "libvpx-vp9", "-crf", "33", "-b:v", f"{kbps}k"]
    args += ["-deadline", "good", "-cpu-used", str(settings.vp9_cpu_used), "-row-mt", "1"]
    args += ["-r", _fps(ladder.fps), "-fps_mode", "cfr", *_keyframes(ladder)]
    args += _threads(settings)
    if ladder.audio:
        args += ["-c:a", "libopus", "-b:a", "96k", "-ac", "2", "-ar", str(AUDIO_RATE)]
    args += ["-map_metadata", "-1", "-map_chapters", "-1", "-f", "webm", str(output)]
    return args


def still_command(
    source: str, times: list[float], outputs: list[Path], width: int, height: int
) -> list[str]:
    """One JPEG per time, in one process: each time is its own input with ``-ss`` before
    ``-i`` (a demuxer seek, then decoding only up to that frame), much cheaper than decoding
    the whole video through a ``select`` filter."""
    args: list[str] = []
    for time in times:
        args += source_input_args(source, seek=time)
    for index, output in enumerate(outputs):
        args += ["-map", f"{index}:v:0", "-frames:v", "1"]
        args += ["-vf", _jpeg_scale(width, height)]
        args += ["-q:v", "3", "-update", "1", "-f", "image2", str(output)]
    return args


def thumbnail_command(
    source: str, plan: ThumbnailPlan, poster: Path, thumbnails: list[Path]
) -> list[str]:
    return still_command(
        source, [plan.poster_time, *plan.times], [poster, *thumbnails], plan.width, plan.height
    )


def audio_command(source: str, wav: Path, m4a: Path | None, channels: int) -> list[str]:
    """The first audio stream as 16 kHz mono s16 WAV (what speech recognition wants) and, from
    the same decode, AAC in an M4A (mono sources stay mono)."""
    args = [*source_input_args(source), "-map", "0:a:0", "-vn", "-sn", "-dn"]
    args += ["-c:a", "pcm_s16le", "-ac", "1", "-ar", "16000", "-rf64", "auto"]
    args += ["-map_metadata", "-1", "-bitexact", "-f", "wav", str(wav)]
    if m4a is not None:
        args += ["-map", "0:a:0", "-vn", "-sn", "-dn"]
        args += ["-c:a", "aac", "-b:a", "128k", "-ac", "1" if channels == 1 else "2"]
        args += ["-map_metadata", "-1", "-movflags", "+faststart", "-f", "ipod", str(m4a)]
    return args


def clip_command(
    source: str,
    clip: ClipPlan,
    output: Path,
    *,
    cut_start: float,
    preset: str,
    has_audio: bool,
    settings: EncoderSettings,
) -> list[str]:
    """A time range, seeking on the input to ``cut_start`` and writing up to ``clip.end``.

    A copy (``clip.encode`` false) is given the keyframe at or before the start as its
    ``cut_start``, so the demuxer's seek lands on that very keyframe and the file starts there
    (MP4 keeps the streams' start at 0 with an edit list, so no ``-avoid_negative_ts``). A
    re-encode seeks to the start itself: ffmpeg decodes from the keyframe before and drops the
    frames until the start, so the clip starts on the exact frame, at a constant rate."""
    args = [*source_input_args(source, seek=cut_start), "-t", f"{clip.end - cut_start:.6f}"]
    if clip.size is not None:
        args += ["-map", "0:v:0"]
    if has_audio:
        args += ["-map", "0:a:0"]
    webm = clip.container is ClipContainer.WEBM
    if not clip.encode:
        args += ["-c", "copy"]
        if webm:
            args += ["-avoid_negative_ts", "make_zero"]
    else:
        if clip.size is not None and clip.fps is not None:
            args += ["-vf", f"fps={_fps(clip.fps)},{_scale(*clip.size)}", "-fps_mode", "cfr"]
            if webm:
                args += ["-c:v", "libvpx-vp9", "-crf", "32", "-b:v", "0"]
                args += ["-deadline", "good", "-cpu-used", str(settings.vp9_cpu_used)]
                args += ["-row-mt", "1"]
            else:
                args += ["-c:v", "libx264", "-preset", preset, "-crf", str(settings.clip_crf)]
                args += ["-profile:v", "high"]
            args += _threads(settings)
        if has_audio:
            if webm:
                args += ["-c:a", "libopus", "-b:a", "96k", "-ac", "2", "-ar", str(AUDIO_RATE)]
            else:
                args += _aac(128)
    args += ["-map_metadata", "-1", "-map_chapters", "-1"]
    if webm:
        args += ["-f", "webm", str(output)]
    else:
        args += ["-movflags", "+faststart", "-f", "mp4", str(output)]
    return args


def clip_poster_command(clip: Path, time: float, output: Path, size: tuple[int, int]) -> list[str]:
    """The poster of a clip from the clip's own file (local, already cut): one frame at
    ``time`` of it, at the clip's size."""
    return still_command(source_url(str(clip)), [time], [output], *size)
