"""The metadata process's settings (``REELMILL_*`` environment variables)."""

from __future__ import annotations

from pydantic import Field, SecretStr

from runtime.settings import ServiceSettings


class MetadataSettings(ServiceSettings):
    listen: str = "127.0.0.1:50064"
    #: Results kept in the in-process cache (0 disables it).
    cache_entries: int = Field(default=256, ge=0, le=100_000)

    #: Gemini API key; unset means Gemini is not offered (the extractive generator is used).
    gemini_api_key: SecretStr | None = None
    gemini_model: str = "gemini-2.5-flash"
    #: Seconds one Gemini call may take.
    gemini_timeout_seconds: float = Field(default=120.0, gt=0)
    #: Attempts per Gemini call on transient errors (5xx, timeouts, output that fails validation).
    gemini_max_attempts: int = Field(default=4, ge=1, le=10)
    #: Transcript characters sent to Gemini at most (the rest is cut, at a segment boundary).
    gemini_max_transcript_chars: int = Field(default=300_000, ge=1000)
