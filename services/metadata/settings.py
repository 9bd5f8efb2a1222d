"""The metadata process's settings (``REELMILL_*`` environment variables)."""

from __future__ import annotations

from pydantic import Field

from runtime.settings import AiServiceSettings


class MetadataSettings(AiServiceSettings):
    #: Calls served at once (0 = no limit); beyond them and the queue: RESOURCE_EXHAUSTED.
    max_concurrent_calls: int = Field(default=16, ge=0, le=100_000)
    listen: str = "127.0.0.1:50064"
    #: Results kept in the in-process cache (0 disables it).
    cache_entries: int = Field(default=256, ge=0, le=100_000)

    # The gemini_* and ai_cache* settings come from AiServiceSettings; without a key the
    # extractive generator is used, and Gemini output that fails validation is retried like a
    # 5xx.
    #: Seconds one Gemini call may take (shorter than transcription's).
    gemini_timeout_seconds: float = Field(default=120.0, gt=0)
    #: Transcript characters sent to Gemini at most (the rest is cut, at a segment boundary).
    gemini_max_transcript_chars: int = Field(default=300_000, ge=1000)
