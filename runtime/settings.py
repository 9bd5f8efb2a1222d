"""Settings shared by every process, read once from ``REELMILL_*`` environment variables.

Each process has one settings class (a subclass of ``ServiceSettings``) that it loads at start
with ``load_settings`` and passes down; nothing else reads the environment. Every field is
documented in the README's settings table.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from runtime.errors import InvalidArgument


class CommonSettings(BaseSettings):
    """What every process reads."""

    model_config = SettingsConfigDict(env_prefix="REELMILL_", extra="ignore", frozen=True)

    log_level: str = "INFO"
    log_format: Literal["json", "console"] = "json"
    #: OTLP/gRPC endpoint for traces (and, in server processes, metrics), e.g.
    #: "http://otel-collector:4317"; unset exports nothing.
    otlp_endpoint: str | None = None

    storage_backend: Literal["local", "s3"] = "local"
    #: Root of the local-directory object store.
    storage_dir: Path = Path(".reelmill/objects")
    #: host:port of the S3-compatible server.
    s3_endpoint: str = "127.0.0.1:9000"
    s3_access_key: str = "minioadmin"
    s3_secret_key: SecretStr = SecretStr("minioadmin")
    s3_bucket: str = "reelmill"
    s3_region: str | None = None
    s3_secure: bool = False
    #: Where clients outside the network reach the S3 server, e.g. https://media.example.com:
    #: the URLs GetArtifactUrl hands out are signed for it. Unset: the endpoint above.
    s3_public_url: str | None = None
    #: Part size of multipart uploads to S3, in MiB (5 to 5120).
    s3_part_size_mib: int = Field(default=16, ge=5, le=5120)
    #: Parts one upload sends to S3 at once. More than one hides a slow PUT behind the others
    #: (minio's own put_object sends three).
    s3_parts_in_flight: int = Field(default=3, ge=1, le=32)
    #: How long a call to an S3 server that cannot be reached (refused, or no connection made in
    #: time: nothing was sent) is retried before it fails with STORAGE_UNAVAILABLE. A restarting
    #: server costs a wait, not a stage attempt. 0 fails at once.
    s3_unreachable_retry_seconds: float = Field(default=15.0, ge=0, le=300)
    #: Threads for blocking storage calls.
    storage_threads: int = Field(default=8, ge=1, le=256)

    #: Where per-request scratch directories live.
    scratch_dir: Path = Path(tempfile.gettempdir()) / "reelmill-scratch"


class ServiceSettings(CommonSettings):
    """What every gRPC server process reads."""

    #: host:port this process listens on.
    listen: str = "127.0.0.1:50051"
    #: Seconds in-flight calls get to finish after SIGTERM.
    grace_seconds: float = Field(default=25.0, ge=0)
    #: Seconds between dependency health checks.
    health_interval_seconds: float = Field(default=5.0, gt=0)
    #: Largest gRPC message accepted, in MiB.
    max_message_mib: int = Field(default=8, ge=1, le=512)
    #: Connections are closed (after their calls finish) at this age, so round-robin clients
    #: re-resolve and spread over new replicas.
    max_connection_age_seconds: float = Field(default=300.0, gt=0)
    #: Calls to the process's services that run at once (health and reflection excluded);
    #: 0 = no limit. Beyond it up to ``max_queued_calls`` wait, the rest get
    #: RESOURCE_EXHAUSTED.
    max_concurrent_calls: int = Field(default=0, ge=0, le=100_000)
    max_queued_calls: int = Field(default=64, ge=0, le=100_000)

    #: Plain-text address serving only grpc.health.v1 (kubelet probes cannot speak TLS);
    #: unset serves health on ``listen`` only.
    health_listen: str | None = None

    #: host:port of a Prometheus endpoint (``GET /metrics``) with this process's metrics
    #: (``runtime.metrics``), bound exactly as given; unset serves none.
    metrics_listen: str | None = None
    #: Seconds between two exports of the metrics over OTLP (with ``otlp_endpoint``).
    metrics_export_interval_seconds: float = Field(default=60.0, gt=0)
    #: The cyclic garbage collector (``runtime.heap``): "server" freezes what start-up made
    #: and collects the young generations less often and the oldest rarely; "cpython" keeps
    #: CPython's defaults.
    gc_policy: Literal["server", "cpython"] = "server"

    #: How internal services know their caller is the gateway (``runtime.internal_auth``):
    #: "token" (a shared secret in call metadata), "mtls" (client certificates signed by
    #: ``tls_ca_file``; the token is checked too when one is set) or "none" (anyone who can
    #: connect; only when chosen explicitly). The gateway uses the same settings to call them.
    internal_auth: Literal["token", "mtls", "none"] = "token"
    #: The shared internal token (at least 32 characters).
    internal_token: SecretStr | None = None
    #: PEM files for mTLS: this process's certificate chain and key, and the CA that signs its
    #: peers' certificates.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_ca_file: Path | None = None
    #: Name the gateway expects in the services' certificates, when it is not the target's
    #: host name (e.g. one certificate for every service).
    tls_server_name: str | None = None

    @field_validator("metrics_listen", mode="before")
    @classmethod
    def _host_and_port(cls, value: object) -> object:
        if value == "":
            return None
        if isinstance(value, str):
            split_address(value)  # raises ValueError
        return value

    @field_validator("internal_token", mode="before")
    @classmethod
    def _long_enough(cls, value: object) -> object:
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        if raw == "":
            return None
        if isinstance(raw, str) and len(raw) < 32:
            raise ValueError("must be at least 32 characters")
        return value


class GeminiServiceSettings(ServiceSettings):
    """What a server process that may call Gemini reads (``runtime.genai.gemini_config``)."""

    #: Gemini API key; unset means Gemini is not offered.
    gemini_api_key: SecretStr | None = None
    gemini_model: str = "gemini-2.5-flash"
    #: Seconds one Gemini call may take.
    gemini_timeout_seconds: float = Field(default=300.0, gt=0)
    #: Attempts per Gemini call on transient errors (5xx, timeouts).
    gemini_max_attempts: int = Field(default=4, ge=1, le=10)


class AiServiceSettings(GeminiServiceSettings):
    """What a server process that computes AI results (transcripts, metadata) reads: Gemini,
    and the result cache every replica shares (``runtime.shared_cache``)."""

    #: Where results are shared between replicas and restarts: "object-store" (under the
    #: reserved prefix ``cache/ai/`` of the process's object store) or "off" (each process
    #: keeps only its in-process cache).
    ai_cache: Literal["off", "object-store"] = "object-store"
    #: Days an entry answers; an older one is a miss and is overwritten.
    ai_cache_ttl_days: float = Field(default=30.0, gt=0, le=3650)
    #: Seconds a cache read or write may take before the request goes on without it (a miss;
    #: a slow write finishes in the background).
    ai_cache_timeout_seconds: float = Field(default=5.0, gt=0, le=300)


def comma_separated(value: Any) -> Any:
    """A settings validator (``mode="before"``): "a, b,c" becomes ("a", "b", "c")."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


def split_address(address: str) -> tuple[str, int]:
    """("host", port) of "host:port" or "[v6 address]:port"; raises ValueError otherwise."""
    host, colon, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not colon or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{address!r} is not host:port")
    return host, int(port)


S = TypeVar("S", bound=BaseSettings)


def load_settings(cls: type[S]) -> S:
    """Loads ``cls`` from the environment, failing fast with every problem named."""
    try:
        return cls()
    except ValidationError as exc:
        problems = "; ".join(
            f"REELMILL_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            for err in exc.errors()
        )
        raise InvalidArgument(f"bad settings: {problems}", reason="BAD_SETTINGS") from None
