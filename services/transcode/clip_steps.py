"""The steps of ``CutClips``: for each planned clip, cut it from the source, measure what the
file holds, take its poster from the file and write its captions; every file lands in scratch
as ``clips/{name}.mp4|.webm``, ``clips/{name}.jpg`` and ``clips/{name}.vtt``."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from runtime.captions import render_vtt
from runtime.errors import Internal, InvalidArgument
from services.transcode import commands
from services.transcode.clip_plan import ClipPlan, caption_cues, poster_time
from services.transcode.model import ArtifactKind, Cue, CutClip
from services.transcode.probe import image_size, inspect_output, media_span
from services.transcode.steps import Output, StepContext

#: How much shorter than planned a clip may come out before its source counts as truncated.
SHORT_BY = 0.5


async def cut_clips(
    ctx: StepContext,
    plans: Sequence[ClipPlan],
    cut_starts: Sequence[float],
    cues: Sequence[Cue] | None,
    *,
    preset: str,
) -> tuple[list[Output], list[CutClip]]:
    """Every clip in order. ``cut_starts``: where each cut starts (the keyframe at or before a
    copy's start; a re-encode's own start). ``cues``: the transcript to slice into captions,
    or None for no captions."""
    outputs: list[Output] = []
    clips: list[CutClip] = []
    for plan, cut_start in zip(plans, cut_starts, strict=True):
        files, clip = await _cut_one(ctx, plan, cut_start, cues, len(plans), preset)
        outputs += files
        clips.append(clip)
    return outputs, clips


async def _cut_one(
    ctx: StepContext,
    plan: ClipPlan,
    cut_start: float,
    cues: Sequence[Cue] | None,
    count: int,
    preset: str,
) -> tuple[list[Output], CutClip]:
    video = ctx.path(plan.video_name)
    ctx.tracker.begin(
        f"clip{plan.index}", f"cutting clip {plan.index + 1} of {count} ({plan.name})"
    )
    await ctx.runner.run(
        commands.clip_command(
            ctx.source,
            plan,
            video,
            cut_start=cut_start,
            preset=preset,
            has_audio=ctx.info.audio is not None,
            settings=ctx.encoder,
        ),
        duration=plan.end - cut_start,
        on_progress=ctx.tracker.ffmpeg,
        redact=ctx.redact,
        what="clip",
    )
    first, span = await asyncio.to_thread(media_span, video)
    expected = plan.end - cut_start
    if span <= 0 or expected - span > max(SHORT_BY, 0.03 * expected):
        raise InvalidArgument(
            f"clip {plan.index} ({plan.name}) holds {span:.1f} s of the {expected:.1f} s asked "
            "for: the source is truncated or damaged there",
            reason="TRUNCATED_SOURCE",
        )
    cut_end = round(cut_start + span, 6)
    facts = await asyncio.to_thread(inspect_output, video)
    attributes = facts.attributes() | {
        "clip": plan.name,
        "start_seconds": f"{plan.start:.3f}",
        "end_seconds": f"{plan.end:.3f}",
        "cut_start_seconds": f"{cut_start:.6f}",
        "cut_end_seconds": f"{cut_end:.6f}",
        "frame_accurate": "true" if plan.frame_accurate else "false",
        "mode": "encode" if plan.encode else "copy",
    }
    outputs = [ctx.output(video, ArtifactKind.CLIP, attributes)]
    poster_name = ""
    if plan.size is not None:
        outputs.append(await _poster(ctx, plan, video, first + poster_time(span)))
        poster_name = plan.poster_name
    captions_name = ""
    if cues is not None:
        captions = ctx.path(plan.captions_name)
        sliced = caption_cues(cues, cut_start, cut_end, at=first)
        text = render_vtt((cue.start, cue.end, cue.text) for cue in sliced)
        await asyncio.to_thread(captions.write_text, text, "utf-8")
        outputs.append(
            ctx.output(
                captions, ArtifactKind.CLIP_VTT, {"clip": plan.name, "cues": str(len(sliced))}
            )
        )
        captions_name = plan.captions_name
    clip = CutClip(
        index=plan.index,
        name=plan.name,
        knowledge_id=plan.knowledge_id,
        title=plan.title,
        description=plan.description,
        start=plan.start,
        end=plan.end,
        cut_start=round(cut_start, 6),
        cut_end=cut_end,
        video=plan.video_name,
        poster=poster_name,
        captions=captions_name,
    )
    return outputs, clip


async def _poster(ctx: StepContext, plan: ClipPlan, video: Path, time: float) -> Output:
    """One frame of the clip's file at ``time``, at the clip's size."""
    assert plan.size is not None
    poster = ctx.path(plan.poster_name)
    await ctx.runner.run(
        commands.clip_poster_command(video, time, poster, plan.size),
        reads_source=False,
        what="clip-poster",
    )
    if not poster.is_file():
        raise Internal(f"ffmpeg wrote no poster for clip {plan.name}")
    width, height = await asyncio.to_thread(image_size, poster)
    attributes = {
        "clip": plan.name,
        "width": str(width),
        "height": str(height),
        "time_seconds": f"{time:.3f}",
    }
    return ctx.output(poster, ArtifactKind.CLIP_POSTER, attributes)
