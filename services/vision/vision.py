"""The vision service's core: a request in, progress and then the findings and their stored
artifacts out.

``Vision.detect_shots`` and ``Vision.read_text`` are async generators of ``ProgressUpdate``
ending with one outcome. The work (decoding with PyAV, PySceneDetect, rapidocr: all blocking)
runs in one worker thread per request (``runtime.threads.produce_in_thread``) that hands
progress and the result to the event loop through a bounded queue. Closing the generator (the
RPC is cancelled, its deadline passes) sets the thread's stop flag, which decoding and OCR look
at between frames, and waits for the thread to end before it returns: a cancelled call leaves
no work running. Nothing is written to local disk: the source is read from the store's URL
(a path for the local store, a presigned URL for S3), and the artifacts go to the store only
once the analysis has succeeded (and are deleted again if that is interrupted), under
deterministic keys, so a retry overwrites.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass

from runtime.errors import Cancelled
from runtime.progress import ProgressUpdate
from runtime.slots import Slots
from runtime.storage import ObjectStore
from runtime.storage.keys import normalize_prefix
from runtime.tasks import shielded
from runtime.threads import Put, produce_in_thread
from services.vision import formats
from services.vision.frames import (
    decode_frames,
    fit,
    lower_priority,
    rotate,
    shrunk_frames,
    small_bgr,
)
from services.vision.model import (
    Artifact,
    ArtifactKind,
    Line,
    OcrOptions,
    OnScreenText,
    Scenes,
    ShotOptions,
    ShotsOutcome,
    TextOutcome,
)
from services.vision.ocr import NAME as OCR_ENGINE
from services.vision.ocr import OcrEngine
from services.vision.shots import ShotFinder
from services.vision.text import StillPicture, TextTracker, sample_times

log = logging.getLogger(__name__)

#: Seconds between two progress updates from the worker.
PROGRESS_SECONDS = 0.5
ARTIFACT_NAMES = {
    ArtifactKind.SCENES_JSON: "vision/scenes.json",
    ArtifactKind.OCR_JSON: "vision/ocr.json",
    ArtifactKind.OCR_VTT: "vision/ocr.vtt",
}
CONTENT_TYPES = {
    ArtifactKind.SCENES_JSON: "application/json",
    ArtifactKind.OCR_JSON: "application/json",
    ArtifactKind.OCR_VTT: "text/vtt; charset=utf-8",
}


@dataclass(frozen=True)
class SourceRef:
    key: str
    #: Empty means the store's bucket, the only one the service reads.
    bucket: str = ""


@dataclass(frozen=True)
class VideoFacts:
    """What the probe says about the source's video (zeros when unknown)."""

    duration: float = 0.0
    fps: float = 0.0
    #: Display rotation in degrees (0, 90, 180, 270).
    rotation: int = 0


@dataclass(frozen=True)
class VisionConfig:
    max_concurrent_shots: int = 2
    max_waiting: int = 16
    #: Decoder threads per request; 0 = FFmpeg's choice.
    decode_threads: int = 1
    #: Width of the frames the shot detectors see (PySceneDetect's default downscale).
    analysis_width: int = 256
    #: Progress updates buffered between the worker thread and the call.
    queue_size: int = 16
    #: Niceness added to the worker threads (``frames.lower_priority``).
    nice: int = 10


class _Reporter:
    """Progress from the worker, at most every ``PROGRESS_SECONDS``."""

    def __init__(self, put: Put[object], duration: float, message: str) -> None:
        self.put = put
        self.duration = duration
        self.message = message
        self.started = time.monotonic()
        self.last = 0.0

    def __call__(self, media_time: float, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < PROGRESS_SECONDS:
            return
        self.last = now
        elapsed = now - self.started
        fraction = min(media_time / self.duration, 1.0) if self.duration > 0 else 0.0
        self.put(
            ProgressUpdate(
                fraction=fraction * 0.98,
                processed_seconds=media_time,
                speed=media_time / elapsed if elapsed > 0 else 0.0,
                message=self.message,
            )
        )


class Vision:
    def __init__(
        self, store: ObjectStore, engines: Sequence[OcrEngine], config: VisionConfig
    ) -> None:
        self.store = store
        self.config = config
        #: Every OCR engine (one per concurrent OCR request), and those free now.
        self.all_engines = tuple(engines)
        self.engines: asyncio.Queue[OcrEngine] = asyncio.Queue()
        for engine in engines:
            self.engines.put_nowait(engine)
        self._shot_slots = Slots(
            config.max_concurrent_shots,
            config.max_waiting,
            busy_message="the vision service is busy; try again later",
            reason="VISION_BUSY",
        )
        self._ocr_slots = Slots(
            max(len(engines), 1),
            config.max_waiting,
            busy_message="the vision service is busy; try again later",
            reason="VISION_BUSY",
        )

    async def detect_shots(
        self, source: SourceRef, facts: VideoFacts, options: ShotOptions, output_prefix: str
    ) -> AsyncGenerator[ProgressUpdate | ShotsOutcome, None]:
        prefix = normalize_prefix(output_prefix)
        url = await self._resolve(source)
        yield ProgressUpdate(0.0, message="waiting for a free slot")
        width = self.config.analysis_width
        threads = self.config.decode_threads

        nice = self.config.nice

        def produce(put: Put[object], stop: threading.Event) -> None:
            lower_priority(nice)
            report = _Reporter(put, facts.duration, "finding shots")
            finder: ShotFinder | None = None
            frames = shrunk_frames(
                url,
                width=width,
                stop=stop,
                expected_duration=facts.duration,
                threads=threads,
                nice=nice,
            )
            with contextlib.closing(frames):
                for small in frames:
                    if finder is None:
                        finder = ShotFinder(options, facts.fps or small.fps)
                    finder.push(small.index, small.time, small.image)
                    report(small.time)
            assert finder is not None  # decode_frames raises on a stream without frames
            put(finder.finish())

        found: Scenes | None = None
        async with (
            self._shot_slots.hold(),
            contextlib.aclosing(self._run(produce, "vision-shots")) as items,
        ):
            async for item in items:
                if isinstance(item, Scenes):
                    found = item
                elif isinstance(item, ProgressUpdate):
                    yield item
        assert found is not None
        yield ProgressUpdate(0.99, facts.duration, 0.0, "storing the scenes")
        artifacts = await self._store(
            prefix,
            "scenes",
            {
                ArtifactKind.SCENES_JSON: formats.to_json(formats.scenes_document(found)),
            },
            {"shots": str(len(found.shots)), "transitions": str(len(found.transitions))},
        )
        log.info(
            "shots found",
            extra={"shots": len(found.shots), "transitions": len(found.transitions)},
        )
        yield ProgressUpdate(1.0, facts.duration, 0.0, "done")
        yield ShotsOutcome(found, artifacts)

    async def read_text(
        self,
        source: SourceRef,
        facts: VideoFacts,
        scenes: Scenes | None,
        options: OcrOptions,
        output_prefix: str,
    ) -> AsyncGenerator[ProgressUpdate | TextOutcome, None]:
        prefix = normalize_prefix(output_prefix)
        url = await self._resolve(source)
        times = sample_times(scenes, facts.duration, options.interval)
        yield ProgressUpdate(0.0, message="waiting for a free slot")
        async with self._ocr_slots.hold():
            engine = await self.engines.get()
            found: OnScreenText | None = None
            try:
                work = self._run(self._reader(url, facts, times, options, engine), "vision-ocr")
                async with contextlib.aclosing(work) as items:
                    async for item in items:
                        if isinstance(item, OnScreenText):
                            found = item
                        elif isinstance(item, ProgressUpdate):
                            yield item
            finally:
                self.engines.put_nowait(engine)
        assert found is not None
        yield ProgressUpdate(0.99, facts.duration, 0.0, "storing the text")
        attributes = {"entries": str(len(found.entries)), "frames": str(found.frames_examined)}
        artifacts = await self._store(
            prefix,
            "ocr",
            {
                ArtifactKind.OCR_JSON: formats.to_json(formats.text_document(found)),
                ArtifactKind.OCR_VTT: formats.to_vtt(found),
            },
            attributes,
        )
        log.info("text read", extra=attributes)
        yield ProgressUpdate(1.0, facts.duration, 0.0, "done")
        yield TextOutcome(found, artifacts)

    def _reader(
        self,
        url: str,
        facts: VideoFacts,
        times: list[float],
        options: OcrOptions,
        engine: OcrEngine,
    ) -> Callable[[Put[object], threading.Event], None]:
        threads = self.config.decode_threads

        def produce(put: Put[object], stop: threading.Event) -> None:
            lower_priority(self.config.nice)
            engine.load()
            tracker = TextTracker()
            still = StillPicture()
            lines: list[Line] = []
            report = _Reporter(put, facts.duration, "reading on-screen text")
            pending = list(times)
            size = (0, 0)
            for decoded in decode_frames(
                url,
                stop=stop,
                expected_duration=facts.duration,
                threads=threads,
                reference_only=True,
            ):
                if not pending:
                    break
                fps = facts.fps or decoded.fps or 25.0
                if decoded.time + 0.5 / fps < pending[0]:
                    continue
                while pending and pending[0] <= decoded.time + 0.5 / fps:
                    pending.pop(0)
                if size == (0, 0):
                    size = fit(decoded.frame.width, decoded.frame.height, longest=options.max_side)
                image = rotate(small_bgr(decoded.frame, size), facts.rotation)
                if stop.is_set():
                    raise Cancelled("the request was cancelled")
                if not still.same(image):
                    lines = engine.read(image, min_confidence=options.min_confidence)
                tracker.add(round(decoded.time, 3), lines)
                report(decoded.time, force=True)
            put(
                OnScreenText(
                    entries=tuple(tracker.finish(facts.duration)),
                    frames_examined=tracker.examined,
                    engine=OCR_ENGINE,
                    model=engine.model_name,
                )
            )

        return produce

    async def _run(
        self, produce: Callable[[Put[object], threading.Event], None], name: str
    ) -> AsyncGenerator[object, None]:
        """What ``produce`` puts, from its worker thread; closing this stops the thread."""
        items = produce_in_thread(produce, name=name, queue_size=self.config.queue_size)
        async with contextlib.aclosing(items):
            async for item in items:
                yield item

    async def _resolve(self, source: SourceRef) -> str:
        self.store.check_ref(source.bucket, source.key, what="source")
        await self.store.stat(source.key)
        return await self.store.media_url(source.key)

    async def _store(
        self,
        prefix: str,
        stage: str,
        documents: dict[ArtifactKind, str],
        attributes: dict[str, str],
    ) -> tuple[Artifact, ...]:
        """Stores every document; if one fails or the call is cancelled, deletes the others."""
        stored: list[str] = []

        async def put(kind: ArtifactKind, body: str) -> Artifact:
            key = prefix + ARTIFACT_NAMES[kind]
            obj = await self.store.put_bytes(
                key, body.encode("utf-8"), content_type=CONTENT_TYPES[kind]
            )
            stored.append(key)
            return Artifact(ARTIFACT_NAMES[kind], kind, obj, stage, attributes)

        tasks = [asyncio.create_task(put(kind, body)) for kind, body in documents.items()]
        try:
            return tuple(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
            await shielded(self._discard(stored))
            raise

    async def _discard(self, keys: list[str]) -> None:
        for key in keys:
            with contextlib.suppress(Exception):
                await self.store.delete(key)
