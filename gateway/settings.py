"""Gateway settings (``REELMILL_*``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from gateway.webhooks.secrets import parse_key
from runtime.netguard import NetPolicy
from runtime.settings import ServiceSettings, comma_separated

#: The Standard Webhooks example schedule: waits before retries 1..9 (after the first attempt),
#: about three days in all.
WEBHOOK_RETRY_SCHEDULE = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 50400.0, 72000.0, 86400.0)


class GatewaySettings(ServiceSettings):
    listen: str = "127.0.0.1:50051"

    #: SQLAlchemy URL of the gateway's Postgres, e.g. postgresql+asyncpg://user:pw@host/db.
    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/reelmill"
    database_pool_size: int = Field(default=10, ge=1, le=200)
    #: Apply Alembic migrations at start (otherwise run `python -m gateway migrate`).
    migrate_on_start: bool = True

    #: gRPC targets of the internal services: "host:port", "dns:///name:port" or a
    #: comma-separated list of IPv4 host:port (balanced round-robin).
    ingest_target: str = "127.0.0.1:50061"
    transcode_target: str = "127.0.0.1:50062"
    transcribe_target: str = "127.0.0.1:50063"
    metadata_target: str = "127.0.0.1:50064"
    vision_target: str = "127.0.0.1:50065"

    #: How bearer JWTs are verified; at least one of these three is required (the gateway
    #: never runs open). HS256 secret (at least 32 characters).
    jwt_secret: SecretStr = SecretStr("")
    #: PEM public key: RSA verifies RS256 tokens, EC P-256 verifies ES256 tokens.
    jwt_public_key_file: Path | None = None
    #: JWKS file (RSA and EC P-256 keys); a token's ``kid`` picks the key.
    jwt_jwks_file: Path | None = None
    jwt_issuer: str = "reelmill"
    jwt_audience: str = "reelmill"
    #: Clock skew tolerated when checking exp/nbf, in seconds.
    jwt_leeway_seconds: int = Field(default=30, ge=0, le=600)

    #: Secret for the keyed hash (HMAC-SHA256) of stored API keys; unset stores SHA-256.
    #: Changing it invalidates the keys hashed with the old one.
    api_key_pepper: SecretStr = SecretStr("")
    #: How long a replica caches an API-key lookup. A key revoked through another replica is
    #: still accepted here for at most this long (through this replica: at once).
    api_key_cache_seconds: float = Field(default=5.0, ge=0, le=300)

    #: Per-owner limits (0 = unlimited). Queued + running jobs of one owner.
    owner_max_active_jobs: int = Field(default=100, ge=0)
    #: Bytes of stored uploads one owner may keep (the sum of their videos' sizes).
    owner_max_stored_bytes: int = Field(default=0, ge=0)
    #: Requests per second one owner may make, per gateway replica (token bucket).
    owner_requests_per_second: float = Field(default=50.0, ge=0)
    #: Requests one owner may make at once above the steady rate (the bucket's size).
    owner_request_burst: int = Field(default=100, ge=1)

    #: Jobs one gateway runs at once.
    max_concurrent_jobs: int = Field(default=4, ge=1, le=256)
    #: A running job's lease; renewed every third of it. An expired lease lets another
    #: replica take the job over.
    lease_seconds: float = Field(default=30.0, ge=2)
    #: Fallback poll for queued jobs when no notification arrives.
    poll_seconds: float = Field(default=5.0, gt=0)
    #: Progress is persisted at most this often per stage.
    progress_interval_seconds: float = Field(default=0.5, ge=0)
    #: Deadline of one stage call to a service.
    stage_timeout_seconds: float = Field(default=3600.0, gt=0)
    #: Attempts a stage gets when it fails transiently (UNAVAILABLE, DEADLINE_EXCEEDED,
    #: RESOURCE_EXHAUSTED, a transport failure); permanent failures are never retried.
    stage_max_attempts: int = Field(default=4, ge=1, le=50)
    #: Backoff before retry n is uniform in [c/2, c], c = min(max, initial * 2**(n-1)).
    retry_initial_backoff_seconds: float = Field(default=1.0, gt=0)
    retry_max_backoff_seconds: float = Field(default=30.0, gt=0)
    #: A job's deadline, counted from its creation, unless CreateJob asks for less.
    job_timeout_seconds: float = Field(default=6 * 3600.0, gt=0)
    #: The longest timeout CreateJob may ask for.
    max_job_timeout_seconds: float = Field(default=48 * 3600.0, gt=0)
    #: The most jobs one BatchCreateJobs call may create.
    max_batch_size: int = Field(default=1000, ge=1, le=10000)
    #: Mixed into every stage fingerprint (``gateway.reuse``): change it after changing a
    #: service's defaults (preset, model, default engine) so earlier results are not reused.
    reuse_salt: SecretStr = SecretStr("")
    #: A failed or cancelled job's leftovers, and a deleted video's objects, are purged this
    #: long after the fact (services still stopping a cancelled call may write late).
    purge_delay_seconds: float = Field(default=30.0, ge=0)
    #: How often each gateway looks for purges that are due.
    purge_interval_seconds: float = Field(default=15.0, gt=0)
    #: Retention: finished jobs (by end time) older than this many days are deleted, with
    #: their stages, events and artifacts (their objects through the purge queue); queued
    #: and running jobs never are. 0 keeps every job forever.
    retention_days: float = Field(default=0.0, ge=0)
    #: How often each gateway looks for jobs retention deletes (when it is on).
    retention_interval_seconds: float = Field(default=300.0, gt=0)
    #: How often each gateway counts jobs by state for its metrics (when metrics are on).
    job_metrics_interval_seconds: float = Field(default=15.0, gt=0)

    #: Largest upload accepted, in bytes.
    max_upload_bytes: int = Field(default=20 * 1024**3, ge=1)
    #: Deadline for a whole upload.
    upload_timeout_seconds: float = Field(default=3600.0, gt=0)
    #: A resumable upload's lifetime from StartUpload: writes and finishes are refused after it,
    #: and the upload and its stored parts are removed. Keep it at most ingest's
    #: REELMILL_STALE_AFTER_SECONDS, whose sweep aborts unfinished writes older than that.
    upload_expiry_seconds: float = Field(default=86400.0, gt=0)

    #: Webhooks (``gateway.webhooks``). Key sealing the stored signing secrets (AES-256-GCM):
    #: base64 of 32 bytes. Unset stores them unsealed (the gateway logs a warning).
    webhook_secret_key: SecretStr = SecretStr("")
    #: Timeout of one delivery attempt (connect, send, response headers).
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    #: Waits before each retry of a failed delivery, in seconds (comma-separated), each
    #: jittered by up to ±20%; when they run out the delivery fails and its endpoint is
    #: disabled.
    webhook_retry_schedule: Annotated[tuple[float, ...], NoDecode] = WEBHOOK_RETRY_SCHEDULE
    #: Deliveries one gateway sends at once, and of those at most this many to one endpoint.
    webhook_max_concurrent_deliveries: int = Field(default=16, ge=1, le=1000)
    webhook_max_in_flight_per_endpoint: int = Field(default=4, ge=1, le=1000)
    #: How often each gateway looks for deliveries that are due (new ones also wake it through
    #: NOTIFY).
    webhook_poll_seconds: float = Field(default=1.0, gt=0)
    #: How long a rotated-out secret keeps signing beside the new one, unless the rotation
    #: asks for another overlap.
    webhook_secret_overlap_seconds: float = Field(default=86400.0, ge=0, le=7 * 86400.0)
    #: Lifetime of the artifact URLs in a finished job's payload.
    webhook_artifact_url_seconds: float = Field(default=86400.0, ge=60, le=7 * 86400.0)
    #: Endpoints one owner may register (0: unlimited).
    webhook_max_endpoints_per_owner: int = Field(default=20, ge=0)
    #: Ports endpoint URLs may use (comma-separated).
    webhook_allowed_ports: Annotated[tuple[int, ...], NoDecode] = (80, 443, 8080, 8443)
    #: Host names, addresses or CIDRs (comma-separated) exempt from the SSRF address check.
    #: For tests whose receiver listens on 127.0.0.1; leave empty in production.
    webhook_allow_hosts: Annotated[tuple[str, ...], NoDecode] = ()

    #: The browser port (gateway.browser): Connect and gRPC-Web, resumable-upload writes,
    #: signed artifact URLs of the local store and the web console, over HTTP/1.1, e.g.
    #: "127.0.0.1:8080". Empty: off (``reelmill up`` turns it on).
    browser_listen: str = ""
    #: The browser port's address as pages reach it, the base of the local store's artifact
    #: URLs (e.g. "https://reelmill.example.com"); default ``http://`` + browser_listen.
    browser_public_url: str = ""
    #: Origins (comma-separated, "https://app.example.com") whose pages may call the browser
    #: port (CORS, preflights included); "*" allows any. Default none: same-origin only.
    cors_origins: Annotated[tuple[str, ...], NoDecode] = ()
    #: HMAC secret of the local store's artifact URLs (at least 16 characters); every
    #: replica needs the same one. Default: derived from REELMILL_JWT_SECRET, or a random
    #: one per process when there is none.
    artifact_url_secret: SecretStr = SecretStr("")
    #: The built web console (clients/console/dist) served at "/" of the browser port;
    #: default that directory of this checkout when it exists. Empty or missing: no console.
    console_dir: Path | None = None

    @field_validator(
        "webhook_retry_schedule",
        "webhook_allowed_ports",
        "webhook_allow_hosts",
        "cors_origins",
        mode="before",
    )
    @classmethod
    def _split(cls, value: Any) -> Any:
        return comma_separated(value)

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _valid_schedule(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(wait < 0 for wait in value) or len(value) > 50:
            raise ValueError("at most 50 waits, none negative")
        return value

    @field_validator("webhook_allowed_ports", "webhook_allow_hosts")
    @classmethod
    def _valid_policy(cls, value: tuple[Any, ...], info: Any) -> tuple[Any, ...]:
        if info.field_name == "webhook_allowed_ports":
            NetPolicy.build(allowed_ports=value)
        else:
            NetPolicy.build(allowed_ports=(80,), allow=value)  # raises ValueError when bad
        return value

    @field_validator("webhook_secret_key")
    @classmethod
    def _valid_key(cls, value: SecretStr) -> SecretStr:
        parse_key(value.get_secret_value())  # raises ValueError when bad
        return value

    def webhook_policy(self) -> NetPolicy:
        """What webhook targets may reach: URL import's guard, with the webhook ports and
        exemptions."""
        return NetPolicy.build(
            allowed_ports=self.webhook_allowed_ports, allow=self.webhook_allow_hosts
        )
