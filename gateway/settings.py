"""Gateway settings (``REELMILL_*``)."""

from __future__ import annotations

from pydantic import Field, SecretStr

from runtime.settings import ServiceSettings


class GatewaySettings(ServiceSettings):
    listen: str = "127.0.0.1:50051"

    #: SQLAlchemy URL of the gateway's Postgres, e.g. postgresql+asyncpg://user:pw@host/db.
    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/reelmill"
    database_pool_size: int = Field(default=10, ge=1, le=200)
    #: Apply Alembic migrations at start (otherwise run `reelmill migrate`).
    migrate_on_start: bool = True

    #: gRPC targets of the internal services: "host:port", "dns:///name:port" or a
    #: comma-separated list of IPv4 host:port (balanced round-robin).
    ingest_target: str = "127.0.0.1:50061"
    transcode_target: str = "127.0.0.1:50062"
    transcribe_target: str = "127.0.0.1:50063"
    metadata_target: str = "127.0.0.1:50064"

    #: HS256 secret that signs bearer tokens. Required: the gateway never runs open.
    jwt_secret: SecretStr = SecretStr("")
    jwt_issuer: str = "reelmill"
    jwt_audience: str = "reelmill"
    #: Clock skew tolerated when checking exp/nbf, in seconds.
    jwt_leeway_seconds: int = Field(default=30, ge=0, le=600)

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
    #: A failed or cancelled job's leftovers, and a deleted video's objects, are purged this
    #: long after the fact (services still stopping a cancelled call may write late).
    purge_delay_seconds: float = Field(default=30.0, ge=0)
    #: How often each gateway looks for purges that are due.
    purge_interval_seconds: float = Field(default=15.0, gt=0)

    #: Largest upload accepted, in bytes.
    max_upload_bytes: int = Field(default=20 * 1024**3, ge=1)
    #: Deadline for a whole upload.
    upload_timeout_seconds: float = Field(default=3600.0, gt=0)
