"""The ingest process's settings (``REELMILL_*`` environment variables)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from runtime.netguard import NetPolicy
from runtime.settings import ServiceSettings, comma_separated


class IngestSettings(ServiceSettings):
    #: Calls served at once (0 = no limit); beyond them and the queue: RESOURCE_EXHAUSTED.
    max_concurrent_calls: int = Field(default=32, ge=0, le=100_000)
    listen: str = "127.0.0.1:50061"
    #: Largest upload accepted, in bytes.
    max_upload_bytes: int = Field(default=20 * 1024**3, gt=0)
    #: Seconds a probe may take before the media is refused (PROBE_TIMEOUT).
    probe_timeout_seconds: float = Field(default=60.0, gt=0)
    #: Largest width or height of a video, in pixels (DIMENSIONS_TOO_LARGE beyond it).
    max_video_dimension: int = Field(default=8192, ge=16, le=65535)
    #: Longest media accepted, in seconds (DURATION_TOO_LONG beyond it).
    max_duration_seconds: float = Field(default=24 * 3600.0, gt=0)
    #: Scratch directories and uncommitted writes idle this long are removed (crashed processes).
    stale_after_seconds: float = Field(default=24 * 3600.0, gt=0)
    #: Seconds between two sweeps for such leftovers.
    sweep_interval_seconds: float = Field(default=3600.0, gt=0)

    #: Largest URL import, in bytes (a request's max_bytes may only lower it).
    url_import_max_bytes: int = Field(default=10 * 1024**3, gt=0)
    #: Seconds a URL import may take to download, retries included (a request's timeout may
    #: only lower it; the probe has its own limit).
    url_import_timeout_seconds: float = Field(default=3600.0, gt=0)
    #: Ports URL imports may connect to (comma-separated), on every redirect hop.
    url_import_allowed_ports: Annotated[tuple[int, ...], NoDecode] = (80, 443, 8080, 8443)
    #: Host names, addresses or CIDRs (comma-separated) exempt from the SSRF address check.
    #: For tests that serve media from 127.0.0.1; leave empty in production.
    url_import_allow_hosts: Annotated[tuple[str, ...], NoDecode] = ()
    #: Attempts per URL import when failures are transient (connect errors, timeouts, HTTP
    #: 408/429/5xx); each restarts the download.
    url_import_attempts: int = Field(default=3, ge=1, le=10)

    @field_validator("url_import_allowed_ports", "url_import_allow_hosts", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return comma_separated(value)

    @field_validator("url_import_allow_hosts")
    @classmethod
    def _valid_allow_entries(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        NetPolicy.build(allowed_ports=(80,), allow=value)  # raises ValueError when bad
        return value

    @field_validator("url_import_allowed_ports")
    @classmethod
    def _valid_ports(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        NetPolicy.build(allowed_ports=value)
        return value

    def net_policy(self) -> NetPolicy:
        return NetPolicy.build(
            allowed_ports=self.url_import_allowed_ports, allow=self.url_import_allow_hosts
        )
