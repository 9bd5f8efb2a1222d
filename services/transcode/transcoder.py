"""The transcode service's core: a request in, progress and then the stored artifacts out.

``Transcoder.transcode``, ``extract_stills``, ``extract_audio`` and ``cut_clips`` are async
iterators of ``ProgressUpdate`` ending with one ``Outcome`` (a ``ClipsOutcome`` for clips).
The work runs in a task that reports through a ``ProgressTracker`` into a queue the iterator
drains. When the consumer goes away (the RPC is cancelled, its deadline passes) the
iterator's ``finally`` cancels that task, which stops ffmpeg (``FfmpegRunner``), removes the
scratch directory and deletes anything it had already uploaded, before the iterator itself
finishes.

Flow of a request: check the output prefix; stat the source and get the URL ffmpeg reads
(``ObjectStore.media_url``: a path for the local store, a presigned URL for S3); use the
request's probe or probe the source; plan (validation errors surface here, before any work);
wait for a slot; run the steps into scratch; upload everything to
``{output_prefix}{name}``; return the artifacts. Outputs go up only after every step has
succeeded, so a failed request leaves nothing new under its prefix, and keys are
deterministic, so a retry overwrites.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncGenerator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from runtime.errors import FailedPrecondition, InvalidArgument
from runtime.progress import ProgressUpdate
from runtime.slots import Slots
from runtime.storage import ObjectStore
from runtime.storage.keys import normalize_prefix
from runtime.tasks import shielded
from services.transcode import clip_steps, passthrough, steps
from services.transcode.clip_plan import ClipPlan, check_requests, plan_clips
from services.transcode.commands import EncoderSettings
from services.transcode.ffmpeg_runner import FfmpegRunner, source_url
from services.transcode.model import (
    Artifact,
    AudioOptions,
    ClipContainer,
    ClipRequest,
    ClipsOutcome,
    Cue,
    Outcome,
    ShotStill,
    SourceInfo,
    ThumbnailOptions,
    TranscodeOptions,
)
from services.transcode.plan import LadderPlan, TranscodePlan, plan_thumbnails, plan_transcode
from services.transcode.probe import keyframes_at_or_before, probe_source
from services.transcode.progress import ProgressTracker
from services.transcode.steps import Output, StepContext
from services.transcode.workspace import scratch_dir

log = logging.getLogger(__name__)

Update = ProgressUpdate | Outcome
REFERENCE_PIXELS = 1280 * 720


@dataclass(frozen=True)
class TranscoderConfig:
    scratch_dir: Path
    #: x264 preset when the spec names none.
    preset: str = "veryfast"
    encoder: EncoderSettings = field(default_factory=EncoderSettings)
    #: Transcodes running at once; more wait, up to ``max_waiting``, then RESOURCE_EXHAUSTED.
    max_concurrent: int = 1
    max_waiting: int = 16
    #: Audio extractions running at once (cheap; kept apart so transcription is not stuck
    #: behind long transcodes).
    max_concurrent_audio: int = 2
    #: Uploads in flight per request.
    upload_concurrency: int = 8
    probe_timeout: float = 30.0


@dataclass(frozen=True)
class SourceRef:
    key: str
    #: Empty means the store's bucket, the only one the service reads.
    bucket: str = ""


def step_weights(plan: TranscodePlan, info: SourceInfo) -> dict[str, float]:
    """Each step's expected cost in seconds of 720p H.264 encoding (rough, but it keeps the
    overall fraction moving at a steady pace)."""
    duration = max(info.duration, 1.0)
    weights: dict[str, float] = {}
    if plan.ladder is not None and info.video is not None:
        width, height = info.video.display_size
        encode = sum(rung.width * rung.height for rung in plan.ladder.encoded) / REFERENCE_PIXELS
        decode = 0.25 * width * height / REFERENCE_PIXELS
        weights["ladder"] = duration * (decode + encode + 0.02)
        if plan.hls:
            weights["hls"] = 0.2 + 0.01 * duration * len(plan.ladder.rungs)
        if plan.webm:
            top = plan.ladder.top
            weights["webm"] = duration * 2.5 * top.width * top.height / REFERENCE_PIXELS
    if plan.storyboard is not None:
        weights["storyboard"] = 0.1 + 0.002 * plan.storyboard.tiles
    if plan.thumbnails is not None:
        weights["thumbnails"] = 0.3 + 0.1 * (len(plan.thumbnails.times) + 1)
    weights["upload"] = 0.1 + 0.05 * sum(weights.values())
    return weights


def clip_weights(plans: Sequence[ClipPlan]) -> dict[str, float]:
    """``step_weights`` for ``cut_clips``: a copy costs little more than its bytes, a
    re-encode about as much as encoding its frames (VP9 more), a poster a seek."""
    weights: dict[str, float] = {}
    for plan in plans:
        pixels = plan.size[0] * plan.size[1] if plan.size else REFERENCE_PIXELS / 4
        if plan.encode:
            cost = (2.5 if plan.container is ClipContainer.WEBM else 1.0) * pixels
            weights[f"clip{plan.index}"] = 0.3 + plan.duration * cost / REFERENCE_PIXELS
        else:
            weights[f"clip{plan.index}"] = 0.2 + 0.01 * plan.duration
    weights["upload"] = 0.1 + 0.05 * sum(weights.values())
    return weights


class Transcoder:
    def __init__(self, store: ObjectStore, runner: FfmpegRunner, config: TranscoderConfig) -> None:
        self.store = store
        self.runner = runner
        self.config = config
        busy = "the transcoder is busy; try again later"
        self._transcode_slots = Slots(
            config.max_concurrent, config.max_waiting, busy_message=busy, reason="TRANSCODER_BUSY"
        )
        self._audio_slots = Slots(
            config.max_concurrent_audio,
            config.max_waiting,
            busy_message=busy,
            reason="TRANSCODER_BUSY",
        )

    def transcode(
        self,
        source: SourceRef,
        info: SourceInfo | None,
        options: TranscodeOptions,
        output_prefix: str,
    ) -> AsyncGenerator[Update, None]:
        return _stream(
            lambda tracker: self._transcode(source, info, options, output_prefix, tracker)
        )

    def extract_stills(
        self,
        source: SourceRef,
        info: SourceInfo | None,
        options: ThumbnailOptions,
        shots: Sequence[ShotStill],
        output_prefix: str,
    ) -> AsyncGenerator[Update, None]:
        return _stream(
            lambda tracker: self._extract_stills(
                source, info, options, shots, output_prefix, tracker
            )
        )

    def cut_clips(
        self,
        source: SourceRef,
        info: SourceInfo | None,
        requests: Sequence[ClipRequest],
        cues: Sequence[Cue] | None,
        output_prefix: str,
    ) -> AsyncGenerator[ProgressUpdate | ClipsOutcome, None]:
        """Clips cut from the source (``clip_plan``), each with its poster and, when ``cues``
        (the transcript) are given, its captions; then the clips and their artifacts."""
        return _stream(
            lambda tracker: self._cut_clips(source, info, requests, cues, output_prefix, tracker)
        )

    def extract_audio(
        self,
        source: SourceRef,
        info: SourceInfo | None,
        options: AudioOptions,
        output_prefix: str,
    ) -> AsyncGenerator[Update, None]:
        return _stream(
            lambda tracker: self._extract_audio(source, info, options, output_prefix, tracker)
        )

    async def _transcode(
        self,
        source: SourceRef,
        info: SourceInfo | None,
        options: TranscodeOptions,
        output_prefix: str,
        tracker: ProgressTracker,
    ) -> Outcome:
        prefix = normalize_prefix(output_prefix)
        url, redact = await self._resolve(source)
        info = info or await self._probe(url)
        plan = plan_transcode(options, info, preset=self.config.preset)
        if plan.ladder is not None and options.passthrough:
            plan = dataclasses.replace(plan, ladder=await self._passthrough(url, info, plan.ladder))
        tracker.set_weights(step_weights(plan, info))
        waiting = lambda: tracker.note("waiting for a free slot")  # noqa: E731
        async with (
            self._transcode_slots.hold(waiting),
            scratch_dir(self.config.scratch_dir, "transcode") as scratch,
        ):
            ctx = self._context(url, redact, info, scratch, tracker)
            outputs = await _run_steps(ctx, plan)
            artifacts = await self._upload(outputs, prefix, tracker, stage="transcode")
        tracker.finish()
        log.info("transcoded", extra={"artifacts": len(artifacts), "prefix": prefix})
        return Outcome(artifacts)

    async def _extract_stills(
        self,
        source: SourceRef,
        info: SourceInfo | None,
        options: ThumbnailOptions,
        shots: Sequence[ShotStill],
        output_prefix: str,
        tracker: ProgressTracker,
    ) -> Outcome:
        """The poster and thumbnails alone (``plan.plan_thumbnails``): a few seeks, so they
        share the cheap work's slots with audio extraction rather than wait behind ladders."""
        prefix = normalize_prefix(output_prefix)
        url, redact = await self._resolve(source)
        info = info or await self._probe(url)
        if info.video is None or not options.enabled:
            tracker.finish("no stills to take")
            return Outcome(())
        plan = plan_thumbnails(options, info, shots)
        tracker.set_weights({"thumbnails": 1.0, "upload": 0.1})
        waiting = lambda: tracker.note("waiting for a free slot")  # noqa: E731
        async with (
            self._audio_slots.hold(waiting),
            scratch_dir(self.config.scratch_dir, "stills") as scratch,
        ):
            ctx = self._context(url, redact, info, scratch, tracker)
            outputs = await steps.extract_thumbnails(ctx, plan)
            artifacts = await self._upload(outputs, prefix, tracker, stage="stills")
        tracker.finish()
        return Outcome(artifacts)

    async def _cut_clips(
        self,
        source: SourceRef,
        info: SourceInfo | None,
        requests: Sequence[ClipRequest],
        cues: Sequence[Cue] | None,
        output_prefix: str,
        tracker: ProgressTracker,
    ) -> ClipsOutcome:
        """Copies share the cheap work's slots (a copy is mostly I/O); a request with a
        re-encode takes a transcode slot."""
        prefix = normalize_prefix(output_prefix)
        check_requests(requests)
        url, redact = await self._resolve(source)
        info = info or await self._probe(url)
        plans = plan_clips(requests, info)
        tracker.set_weights(clip_weights(plans))
        encodes = any(plan.encode for plan in plans)
        slots = self._transcode_slots if encodes else self._audio_slots
        waiting = lambda: tracker.note("waiting for a free slot")  # noqa: E731
        async with slots.hold(waiting), scratch_dir(self.config.scratch_dir, "clips") as scratch:
            copies = [plan.start for plan in plans if not plan.encode]
            found = iter(await self._keyframes(url, copies) if copies else ())
            cut_starts = [plan.start if plan.encode else next(found) for plan in plans]
            ctx = self._context(url, redact, info, scratch, tracker)
            outputs, clips = await clip_steps.cut_clips(
                ctx, plans, cut_starts, cues, preset=self.config.preset
            )
            artifacts = await self._upload(outputs, prefix, tracker, stage="clips")
        tracker.finish()
        log.info("cut clips", extra={"clips": len(clips), "prefix": prefix})
        return ClipsOutcome(tuple(clips), artifacts)

    async def _passthrough(self, url: str, info: SourceInfo, ladder: LadderPlan) -> LadderPlan:
        """``ladder`` with the rung of the source's size copied when ``passthrough`` allows it
        (the probe's facts first, then a scan of the source's packets); else as it was."""
        rung = passthrough.copy_rung(info, ladder)
        if rung is None:
            return ladder
        try:
            scan = await asyncio.to_thread(
                passthrough.scan_source, url, timeout=self.config.probe_timeout
            )
        except Exception as exc:  # the encode reads it again and reports what is wrong
            log.info("passthrough: the source scan failed", extra={"error": type(exc).__name__})
            return ladder
        refused = passthrough.refusal(scan, ladder)
        if refused is not None:
            log.info("passthrough refused", extra={"reason": refused})
            return ladder
        log.info("passthrough", extra={"rung": rung.name, "keyframes": len(scan.keyframes)})
        return passthrough.apply(info, ladder, rung, scan)

    async def _keyframes(self, url: str, times: Sequence[float]) -> list[float]:
        return await asyncio.to_thread(
            keyframes_at_or_before, url, times, timeout=self.config.probe_timeout
        )

    async def _extract_audio(
        self,
        source: SourceRef,
        info: SourceInfo | None,
        options: AudioOptions,
        output_prefix: str,
        tracker: ProgressTracker,
    ) -> Outcome:
        prefix = normalize_prefix(output_prefix)
        url, redact = await self._resolve(source)
        info = info or await self._probe(url)
        if info.audio is None:
            # Not an error: a silent video simply has nothing to transcribe. An empty result
            # tells the caller to skip transcription.
            tracker.finish("the source has no audio")
            return Outcome(())
        tracker.set_weights({"audio": 1.0, "upload": 0.1})
        waiting = lambda: tracker.note("waiting for a free slot")  # noqa: E731
        async with (
            self._audio_slots.hold(waiting),
            scratch_dir(self.config.scratch_dir, "audio") as scratch,
        ):
            ctx = self._context(url, redact, info, scratch, tracker)
            outputs = await steps.extract_audio(ctx, options)
            artifacts = await self._upload(outputs, prefix, tracker, stage="audio")
        tracker.finish()
        return Outcome(artifacts)

    def _context(
        self,
        url: str,
        redact: tuple[str, ...],
        info: SourceInfo,
        scratch: Path,
        tracker: ProgressTracker,
    ) -> StepContext:
        return StepContext(
            runner=self.runner,
            source=url,
            redact=redact,
            info=info,
            scratch=scratch,
            tracker=tracker,
            encoder=self.config.encoder,
        )

    async def _resolve(self, source: SourceRef) -> tuple[str, tuple[str, ...]]:
        """The URL ffmpeg reads the source from, and what of it must never be logged."""
        if source.bucket and source.bucket != self.store.bucket:
            raise FailedPrecondition(
                f"the service reads only bucket {self.store.bucket!r}", reason="UNKNOWN_BUCKET"
            )
        if not source.key:
            raise InvalidArgument("source.key is required", reason="MISSING_SOURCE")
        await self.store.stat(source.key)
        url = source_url(await self.store.media_url(source.key))
        remote = url.startswith(("http://", "https://"))
        return url, ((url,) if remote else ())

    async def _probe(self, url: str) -> SourceInfo:
        return await asyncio.to_thread(probe_source, url, timeout=self.config.probe_timeout)

    async def _upload(
        self, outputs: Sequence[Output], prefix: str, tracker: ProgressTracker, *, stage: str
    ) -> tuple[Artifact, ...]:
        """Uploads every output (a few at a time); if any fails or the request is cancelled,
        deletes those already stored and re-raises."""
        tracker.begin("upload", f"storing {len(outputs)} files")
        if not outputs:
            return ()
        limit = asyncio.Semaphore(self.config.upload_concurrency)
        stored: list[str] = []

        async def upload(output: Output) -> Artifact:
            async with limit:
                obj = await self.store.put_file(
                    prefix + output.name, output.path, content_type=output.content_type
                )
            stored.append(obj.key)
            tracker.update(len(stored) / len(outputs))
            return Artifact(
                name=output.name,
                kind=output.kind,
                stored=obj,
                stage=stage,
                attributes=output.attributes,
            )

        tasks = [asyncio.create_task(upload(output)) for output in outputs]
        try:
            return tuple(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
            await self._discard(stored)
            raise

    async def _discard(self, keys: Sequence[str]) -> None:
        """Best effort, and not stopped by a second cancel."""

        async def delete_all() -> None:
            for key in keys:
                try:
                    await self.store.delete(key)
                except Exception:
                    log.warning("could not delete a partial output", extra={"key": key})

        if keys:
            with contextlib.suppress(Exception):
                await shielded(asyncio.wait_for(delete_all(), 60))


async def _run_steps(ctx: StepContext, plan: TranscodePlan) -> list[Output]:
    outputs: list[Output] = []
    if plan.ladder is not None:
        renditions, facts, board = await steps.encode_ladder(ctx, plan.ladder, plan.storyboard)
        outputs += renditions
        if plan.hls:
            outputs += await steps.package_hls(ctx, plan.ladder, renditions, facts)
        if plan.webm:
            outputs += await steps.encode_webm(ctx, plan.ladder)
        if plan.thumbnails is not None:
            outputs += await steps.extract_thumbnails(ctx, plan.thumbnails)
        outputs += board
    return outputs


class _Done:
    pass


R = TypeVar("R")


async def _stream(
    work: Callable[[ProgressTracker], Coroutine[Any, Any, R]],
) -> AsyncGenerator[ProgressUpdate | R, None]:
    queue: asyncio.Queue[ProgressUpdate | _Done] = asyncio.Queue()
    tracker = ProgressTracker(queue.put_nowait)
    tracker.note("starting")
    task = asyncio.create_task(work(tracker), name="transcode-work")
    task.add_done_callback(lambda _: queue.put_nowait(_Done()))
    try:
        while not isinstance(item := await queue.get(), _Done):
            yield item
        yield task.result()
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
