"""The steps of a request: each runs ffmpeg into the scratch directory and returns the files
it made, named as they will be stored (relative to the request's output prefix).

Scratch layout mirrors the artifact names: ``renditions/720p.mp4``, ``hls/master.m3u8``,
``hls/720p/index.m3u8``, ``hls/720p/seg_00000.ts``, ``renditions/720p.webm``,
``thumbnails/poster.jpg``, ``thumbnails/thumb_000.jpg``, ``storyboard/sprite_000.jpg``,
``storyboard/storyboard.vtt``, ``audio/audio.wav``, ``audio/audio.m4a`` (and ``clip_steps``'
``clips/{name}.mp4``, ``.jpg``, ``.vtt``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from runtime.errors import Internal, InvalidArgument
from services.transcode import commands
from services.transcode.commands import EncoderSettings
from services.transcode.ffmpeg_runner import FfmpegRunner
from services.transcode.hls import (
    AAC_LC,
    Variant,
    avc1_codec,
    parse_media_playlist,
    render_master_playlist,
    variant_bandwidth,
)
from services.transcode.model import ArtifactKind, AudioOptions, SourceInfo
from services.transcode.plan import (
    LadderPlan,
    StoryboardPlan,
    ThumbnailPlan,
    render_storyboard_vtt,
)
from services.transcode.probe import OutputFacts, decode_lead, image_size, inspect_output
from services.transcode.progress import ProgressTracker

log = logging.getLogger(__name__)

CONTENT_TYPES = {
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".m3u8": "application/vnd.apple.mpegurl",
    ".ts": "video/mp2t",
    ".jpg": "image/jpeg",
    ".vtt": "text/vtt",
    ".wav": "audio/wav",
    ".m4a": "audio/mp4",
}


@dataclass(frozen=True)
class Output:
    """A file in scratch, ready to upload."""

    name: str
    kind: ArtifactKind
    path: Path
    attributes: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES.get(self.path.suffix, "application/octet-stream")


@dataclass(frozen=True)
class StepContext:
    runner: FfmpegRunner
    #: The source as ffmpeg reads it (``ffmpeg_runner.source_url``).
    source: str
    #: Strings never to log (a presigned URL).
    redact: tuple[str, ...]
    info: SourceInfo
    scratch: Path
    tracker: ProgressTracker
    encoder: EncoderSettings

    def path(self, name: str) -> Path:
        path = self.scratch / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def output(self, path: Path, kind: ArtifactKind, attributes: Mapping[str, str]) -> Output:
        return Output(path.relative_to(self.scratch).as_posix(), kind, path, attributes)


async def _facts(path: Path) -> OutputFacts:
    return await asyncio.to_thread(inspect_output, path)


def ensure_complete(found: OutputFacts, expected: float) -> None:
    """ffmpeg decodes what there is and exits cleanly, so a truncated source (its header
    promises more than its data holds) shows as an output well short of the probed
    duration."""
    if expected > 0 and expected - found.duration > max(0.5, 0.03 * expected):
        raise InvalidArgument(
            f"the source ends after {found.duration:.1f} s of its declared {expected:.1f} s; "
            "it is truncated or damaged",
            reason="TRUNCATED_SOURCE",
        )


async def encode_ladder(
    ctx: StepContext, ladder: LadderPlan, storyboard: StoryboardPlan | None
) -> tuple[list[Output], dict[str, OutputFacts], list[Output]]:
    """The MP4 ladder (and the storyboard, from the same decode). Returns the renditions,
    their facts by rung name, and the storyboard files."""
    files = {rung.name: ctx.path(f"renditions/{rung.name}.mp4") for rung in ladder.rungs}
    # Storyboard tiles are an intermediate: laid out on sheets later, never uploaded.
    tiles_dir = ctx.scratch / "tiles"
    tiles_dir.mkdir(parents=True, exist_ok=True)
    args = commands.ladder_command(
        ctx.source, ladder, files, ctx.encoder, storyboard=storyboard, tiles_dir=tiles_dir
    )
    what = [
        f"{rung.name} (copied)" if rung.name == ladder.copy else rung.name for rung in ladder.rungs
    ]
    ctx.tracker.begin("ladder", "encoding " + ", ".join(what))
    await ctx.runner.run(
        args,
        duration=ctx.info.duration,
        on_progress=ctx.tracker.ffmpeg,
        redact=ctx.redact,
        what="ladder",
    )
    renditions = []
    facts: dict[str, OutputFacts] = {}
    for rung in ladder.rungs:
        facts[rung.name] = found = await _facts(files[rung.name])
        ensure_complete(found, ctx.info.duration)
        attributes = found.attributes() | {
            "rung": rung.name,
            "target_video_bit_rate": str(rung.video_bitrate_kbps * 1000),
        }
        if rung.name == ladder.copy:
            attributes["passthrough"] = "true"
        if rung.name in ladder.copy_audio:
            attributes["audio_passthrough"] = "true"
        renditions.append(ctx.output(files[rung.name], ArtifactKind.RENDITION_MP4, attributes))
    board: list[Output] = []
    if storyboard is not None:
        board = await _storyboard(ctx, storyboard, tiles_dir)
    return renditions, facts, board


async def _storyboard(ctx: StepContext, plan: StoryboardPlan, tiles_dir: Path) -> list[Output]:
    """Sprite sheets from the tiles the ladder run wrote, and the WebVTT that maps them."""
    tiles = await asyncio.to_thread(lambda: len(list(tiles_dir.glob("tile_*.jpg"))))
    if tiles != plan.tiles:
        raise Internal(f"the storyboard has {tiles} tiles, {plan.tiles} were planned")
    board_dir = ctx.scratch / "storyboard"
    board_dir.mkdir(parents=True, exist_ok=True)
    ctx.tracker.begin("storyboard", "laying out the storyboard")
    await ctx.runner.run(
        commands.sprite_command(plan, tiles_dir, board_dir), reads_source=False, what="sprites"
    )
    names = tuple(f"sprite_{index:03d}.jpg" for index in range(plan.sheets))
    missing = [name for name in names if not (board_dir / name).is_file()]
    if missing:
        raise Internal(f"storyboard sheets missing: {missing}")
    vtt = board_dir / "storyboard.vtt"
    await asyncio.to_thread(vtt.write_text, render_storyboard_vtt(plan, names), "utf-8")
    common = {
        "columns": str(plan.columns),
        "rows": str(plan.rows),
        "tile_width": str(plan.tile_width),
        "tile_height": str(plan.tile_height),
        "interval_seconds": f"{plan.interval:g}",
    }
    outputs = []
    for index, name in enumerate(names):
        width, height = await asyncio.to_thread(image_size, board_dir / name)
        attributes = common | {
            "width": str(width),
            "height": str(height),
            "start_seconds": f"{index * plan.per_sheet * plan.interval:.3f}",
        }
        outputs.append(ctx.output(board_dir / name, ArtifactKind.STORYBOARD_SPRITE, attributes))
    vtt_attributes = common | {
        "tiles": str(plan.tiles),
        "sheets": str(plan.sheets),
        "duration_seconds": f"{plan.duration:.3f}",
    }
    outputs.append(ctx.output(vtt, ArtifactKind.STORYBOARD_VTT, vtt_attributes))
    return outputs


async def package_hls(
    ctx: StepContext,
    ladder: LadderPlan,
    renditions: Sequence[Output],
    facts: dict[str, OutputFacts],
) -> list[Output]:
    """HLS from the ladder by stream copy, then the master playlist from the measured
    segments."""
    hls_dir = ctx.scratch / "hls"
    for rung in ladder.rungs:
        (hls_dir / rung.name).mkdir(parents=True, exist_ok=True)
    files = {rung.name: output.path for rung, output in zip(ladder.rungs, renditions, strict=True)}
    leads = [await asyncio.to_thread(decode_lead, path) for path in files.values()]
    ctx.tracker.begin("hls", "packaging HLS")
    await ctx.runner.run(
        commands.hls_command(ladder, files, hls_dir, lead=max(leads, default=0.0)),
        duration=ctx.info.duration,
        on_progress=ctx.tracker.ffmpeg,
        reads_source=False,
        what="hls",
    )
    outputs: list[Output] = []
    variants = []
    for rung in ladder.rungs:
        variant_dir = hls_dir / rung.name
        playlist_path = variant_dir / "index.m3u8"
        playlist = parse_media_playlist(await asyncio.to_thread(playlist_path.read_text, "utf-8"))
        sizes = []
        segments = []
        for segment in playlist.segments:
            path = variant_dir / segment.uri
            if "/" in segment.uri or not path.is_file():
                raise Internal(f"HLS segment {segment.uri!r} of {rung.name} is missing")
            sizes.append(path.stat().st_size)
            segments.append(
                ctx.output(
                    path,
                    ArtifactKind.HLS_SEGMENT,
                    {"variant": rung.name, "duration_seconds": f"{segment.duration:.3f}"},
                )
            )
        peak, average = variant_bandwidth(playlist, sizes)
        found = facts[rung.name]
        codecs = [avc1_codec(found.video_extradata)]
        if found.audio_codec:
            codecs.append(AAC_LC)
        variant = Variant(
            f"{rung.name}/index.m3u8",
            peak,
            average,
            found.width,
            found.height,
            tuple(codecs),
            float(ladder.fps),
        )
        variants.append(variant)
        attributes = {
            "variant": rung.name,
            "width": str(found.width),
            "height": str(found.height),
            "bandwidth": str(peak),
            "average_bandwidth": str(average),
            "codecs": ",".join(codecs),
            "segments": str(len(segments)),
            "duration_seconds": f"{playlist.duration:.3f}",
        }
        outputs.append(ctx.output(playlist_path, ArtifactKind.HLS_VARIANT_PLAYLIST, attributes))
        outputs += segments
    master = hls_dir / "master.m3u8"
    await asyncio.to_thread(master.write_text, render_master_playlist(variants), "utf-8")
    master_output = ctx.output(
        master, ArtifactKind.HLS_MASTER_PLAYLIST, {"variants": str(len(variants))}
    )
    return [master_output, *outputs]


async def encode_webm(ctx: StepContext, ladder: LadderPlan) -> list[Output]:
    path = ctx.path(f"renditions/{ladder.top.name}.webm")
    ctx.tracker.begin("webm", f"encoding WebM {ladder.top.name}")
    await ctx.runner.run(
        commands.webm_command(ctx.source, ladder, path, ctx.encoder),
        duration=ctx.info.duration,
        on_progress=ctx.tracker.ffmpeg,
        redact=ctx.redact,
        what="webm",
    )
    found = await _facts(path)
    ensure_complete(found, ctx.info.duration)
    attributes = found.attributes() | {"rung": ladder.top.name}
    return [ctx.output(path, ArtifactKind.RENDITION_WEBM, attributes)]


async def extract_thumbnails(ctx: StepContext, plan: ThumbnailPlan) -> list[Output]:
    """Poster and thumbnails in one ffmpeg run; a still whose time found no frame (a duration
    the header overstated) is taken again from the first frame."""
    poster = ctx.path("thumbnails/poster.jpg")
    thumbs = [ctx.path(f"thumbnails/thumb_{index:03d}.jpg") for index in range(len(plan.times))]
    ctx.tracker.begin("thumbnails", "extracting thumbnails")
    await ctx.runner.run(
        commands.thumbnail_command(ctx.source, plan, poster, thumbs),
        redact=ctx.redact,
        what="thumbnails",
    )
    times = [plan.poster_time, *plan.times]
    paths = [poster, *thumbs]
    missing = [path for path in paths if not path.is_file()]
    if missing:
        log.info(
            "stills past the last frame; retrying from the start", extra={"count": len(missing)}
        )
        await ctx.runner.run(
            commands.still_command(
                ctx.source, [0.0] * len(missing), missing, plan.width, plan.height
            ),
            redact=ctx.redact,
            what="thumbnails-retry",
        )
        if any(not path.is_file() for path in missing):
            raise Internal("ffmpeg wrote no frame for a thumbnail")
    outputs = []
    for index, (time, path) in enumerate(zip(times, paths, strict=True)):
        width, height = await asyncio.to_thread(image_size, path)
        kind = ArtifactKind.POSTER if index == 0 else ArtifactKind.THUMBNAIL
        attributes = {
            "width": str(width),
            "height": str(height),
            "time_seconds": f"{0.0 if path in missing else time:.3f}",
        }
        outputs.append(ctx.output(path, kind, attributes))
    return outputs


async def extract_audio(ctx: StepContext, options: AudioOptions) -> list[Output]:
    audio = ctx.info.audio
    assert audio is not None
    wav = ctx.path("audio/audio.wav")
    m4a = ctx.path("audio/audio.m4a") if options.m4a else None
    expected = audio.duration or ctx.info.duration
    ctx.tracker.begin("audio", "extracting audio")
    await ctx.runner.run(
        commands.audio_command(ctx.source, wav, m4a, audio.channels),
        duration=expected,
        on_progress=ctx.tracker.ffmpeg,
        redact=ctx.redact,
        what="audio",
    )
    found = await _facts(wav)
    if audio.duration > 0:
        # Only the stream's own duration is a fair yardstick; the container's may be video's.
        ensure_complete(found, audio.duration)
    outputs = [ctx.output(wav, ArtifactKind.AUDIO_WAV, found.attributes())]
    if m4a is not None:
        outputs.append(ctx.output(m4a, ArtifactKind.AUDIO_M4A, (await _facts(m4a)).attributes()))
    return outputs
