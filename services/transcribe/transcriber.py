"""Transcription end to end: the audio object in, a tidy transcript and its artifacts out.

``Transcriber.transcribe`` is an async generator of updates: progress (seconds transcribed over
the audio's duration), each final segment when the caller asked for them, then one ``Outcome``.
Results are cached by the audio's SHA-256 + engine + model (and the engine's settings that
change its output) + options + this package's code, in the process and in the object store
every replica shares (``runtime.shared_cache``); a hit skips decoding and recognition but
still writes the artifacts under the requested prefix (keys are deterministic, so a retry
overwrites rather than duplicates). Closing the generator (a cancelled call) stops
the decoding thread before it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import threading
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, Protocol

from runtime.cache import ResultCache, cache_key
from runtime.errors import FailedPrecondition
from runtime.progress import ProgressUpdate
from runtime.shared_cache import (
    Outcome as CacheOutcome,
)
from runtime.shared_cache import (
    SharedCache,
    TieredCache,
    dumps_result,
    loads_result,
    source_digest,
)
from runtime.slots import Slots
from runtime.storage import ObjectStore
from runtime.storage.keys import normalize_prefix
from services.transcribe import formats
from services.transcribe import given as given_transcript
from services.transcribe.audio import SAMPLE_RATE, Samples, decode_audio
from services.transcribe.model import (
    Artifact,
    ArtifactKind,
    Engine,
    Language,
    Outcome,
    Segment,
    SegmentUpdate,
    TranscribeOptions,
    Transcript,
    Update,
)

log = logging.getLogger(__name__)

ARTIFACT_DIR = "transcript/"
_CONTENT_TYPES = {
    ArtifactKind.TRANSCRIPT_JSON: "application/json",
    ArtifactKind.TRANSCRIPT_VTT: "text/vtt; charset=utf-8",
    ArtifactKind.TRANSCRIPT_SRT: "application/x-subrip; charset=utf-8",
    ArtifactKind.TRANSCRIPT_TXT: "text/plain; charset=utf-8",
}
_RENDER = {
    ArtifactKind.TRANSCRIPT_JSON: formats.to_json,
    ArtifactKind.TRANSCRIPT_VTT: formats.to_vtt,
    ArtifactKind.TRANSCRIPT_SRT: formats.to_srt,
    ArtifactKind.TRANSCRIPT_TXT: formats.to_txt,
}


class SpeechEngine(Protocol):
    name: str
    model_name: str

    async def prepare(self, options: TranscribeOptions) -> None: ...

    def cache_parts(self) -> dict[str, Any]:
        """What besides the options decides its output (model settings, library versions),
        for cache keys."""
        ...

    def transcribe(
        self, samples: Samples, options: TranscribeOptions
    ) -> AsyncGenerator[Language | Segment, None]: ...


@dataclass(frozen=True)
class AudioRef:
    key: str
    #: "" for the store's bucket.
    bucket: str = ""


@dataclass(frozen=True)
class TranscriberConfig:
    max_concurrent: int = 1
    max_waiting: int = 16
    cache_entries: int = 128
    #: Longest audio accepted, in seconds.
    max_audio_seconds: float = 6 * 3600.0


class Transcriber:
    def __init__(
        self,
        store: ObjectStore,
        whisper: SpeechEngine,
        gemini: SpeechEngine | None,
        config: TranscriberConfig,
        *,
        shared: SharedCache | None = None,
    ) -> None:
        self._store = store
        self._whisper = whisper
        self._gemini = gemini
        self.config = config
        self.cache: ResultCache[Transcript] = ResultCache(config.cache_entries)
        #: This process's cache, then the one every replica shares.
        self.results = TieredCache(
            self.cache,
            shared,
            "transcript",
            encode=dumps_result,
            decode=functools.partial(loads_result, Transcript),
        )
        self._slots = Slots(
            config.max_concurrent,
            config.max_waiting,
            busy_message="too many transcriptions are waiting; try again later",
        )

    def engine_for(self, engine: Engine | None) -> SpeechEngine:
        """The engine asked for; unspecified is Gemini when configured, else faster-whisper."""
        if engine is Engine.GEMINI or (engine is None and self._gemini is not None):
            if self._gemini is None:
                raise FailedPrecondition("gemini is not configured", reason="GEMINI_NOT_CONFIGURED")
            return self._gemini
        return self._whisper

    async def transcribe(
        self,
        audio: AudioRef,
        options: TranscribeOptions,
        output_prefix: str,
        *,
        stream_segments: bool = False,
        duration: float = 0.0,
    ) -> AsyncGenerator[Update, None]:
        """``duration`` (the audio's, 0 when unknown) bounds a transcript the caller gave."""
        prefix = normalize_prefix(output_prefix)
        if options.given is not None:  # the caller's own: checked and kept, nothing recognised
            given = given_transcript.checked(options.given, duration)
            yield ProgressUpdate(1.0, given.duration, 0.0, "given")
            if stream_segments:
                for segment in given.segments:
                    yield SegmentUpdate(segment)
            artifacts = await self.write_artifacts(given, prefix)
            log.info("transcript given", extra={"segments": len(given.segments)})
            yield Outcome(given, artifacts, False)
            return
        self._store.check_ref(audio.bucket, audio.key, what="audio object")
        engine = self.engine_for(options.engine)
        options = dataclasses.replace(options, engine=None)
        await engine.prepare(options)
        info = await self._store.stat(audio.key)
        key = None
        if info.sha256:
            key = cache_key(
                audio_sha256=info.sha256,
                engine=engine.name,
                model=engine.model_name,
                options=dataclasses.asdict(options),
                engine_settings=engine.cache_parts(),
                code=source_digest("services.transcribe"),
            )
        transcript: Transcript | None = None
        found: CacheOutcome = "miss"
        if key:
            transcript, found = await self.results.get(key)
        cached = transcript is not None
        if transcript is not None:
            log.info("transcript served from the cache", extra={"key": audio.key, "cache": found})
            yield ProgressUpdate(1.0, transcript.duration, 0.0, "cached")
            if stream_segments:
                for segment in transcript.segments:
                    yield SegmentUpdate(segment)
        else:
            async with self._slots.hold():
                updates = self._recognize(engine, audio.key, options, stream_segments)
                async with contextlib.aclosing(updates):
                    async for update in updates:
                        if isinstance(update, Transcript):
                            transcript = update
                        else:
                            yield update
            assert transcript is not None
            if key:
                await self.results.put(key, transcript)
        artifacts = await self.write_artifacts(transcript, prefix)
        log.info(
            "transcribed",
            extra={
                "key": audio.key,
                "segments": len(transcript.segments),
                "engine": transcript.engine,
                "cached": cached,
                "cache": found,
            },
        )
        yield Outcome(transcript, artifacts, cached)

    async def _recognize(
        self, engine: SpeechEngine, key: str, options: TranscribeOptions, stream_segments: bool
    ) -> AsyncGenerator[ProgressUpdate | SegmentUpdate | Transcript, None]:
        yield ProgressUpdate(0.0, 0.0, 0.0, "decoding audio")
        source = await self._store.media_url(key)
        stop = threading.Event()
        try:
            samples = await asyncio.to_thread(
                decode_audio, source, stop=stop, max_seconds=self.config.max_audio_seconds
            )
        finally:
            stop.set()
        duration = len(samples) / SAMPLE_RATE
        yield ProgressUpdate(0.0, 0.0, 0.0, "transcribing")
        started = time.monotonic()
        tidier = formats.SegmentTidier(duration)
        language = Language(options.language, 0.0)
        segments: list[Segment] = []
        events = engine.transcribe(samples, options)
        del samples
        async with contextlib.aclosing(events):
            async for event in events:
                if isinstance(event, Language):
                    language = event
                    continue
                segment = tidier.tidy(event)
                if segment is None:
                    continue
                segments.append(segment)
                if stream_segments:
                    yield SegmentUpdate(segment)
                elapsed = time.monotonic() - started
                yield ProgressUpdate(
                    fraction=min(segment.end / duration, 1.0) if duration else 1.0,
                    processed_seconds=segment.end,
                    speed=segment.end / elapsed if elapsed > 0 else 0.0,
                    message="transcribing",
                )
        elapsed = time.monotonic() - started
        yield ProgressUpdate(1.0, duration, duration / elapsed if elapsed > 0 else 0.0, "done")
        yield Transcript(
            language=language.code,
            language_probability=language.probability,
            duration=round(duration, 3),
            segments=tuple(segments),
            engine=engine.name,
            model=engine.model_name,
        )

    async def write_artifacts(self, transcript: Transcript, prefix: str) -> tuple[Artifact, ...]:
        """The four formats under ``{prefix}transcript/``."""

        async def write(kind: ArtifactKind) -> Artifact:
            name = ARTIFACT_DIR + kind.value
            content_type = _CONTENT_TYPES[kind]
            data = _RENDER[kind](transcript).encode("utf-8")
            stored = await self._store.put_bytes(prefix + name, data, content_type=content_type)
            return Artifact(
                name=name,
                kind=kind,
                stored=stored,
                stage="transcribe",
                attributes={
                    "language": transcript.language,
                    "segments": str(len(transcript.segments)),
                    "duration_seconds": f"{transcript.duration:.3f}",
                },
            )

        return tuple(await asyncio.gather(*(write(kind) for kind in ArtifactKind)))
