"""The ingest process's settings (``REELMILL_*`` environment variables)."""

from __future__ import annotations

from pydantic import Field

from runtime.settings import ServiceSettings


class IngestSettings(ServiceSettings):
    listen: str = "127.0.0.1:50061"
    #: Largest upload accepted, in bytes.
    max_upload_bytes: int = Field(default=20 * 1024**3, gt=0)
    #: Seconds a probe may take before the media is refused (PROBE_TIMEOUT).
    probe_timeout_seconds: float = Field(default=60.0, gt=0)
    #: Scratch directories and uncommitted writes idle this long are removed (crashed processes).
    stale_after_seconds: float = Field(default=24 * 3600.0, gt=0)
    #: Seconds between two sweeps for such leftovers.
    sweep_interval_seconds: float = Field(default=3600.0, gt=0)
