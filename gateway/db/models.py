"""Tables. The schema itself is owned by the Alembic migrations in gateway/migrations; these
models mirror it for queries."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    Double,
    ForeignKey,
    Identity,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

JOB_STATES = ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")
TERMINAL_JOB_STATES = ("SUCCEEDED", "FAILED", "CANCELLED")
STAGE_STATES = (
    "PENDING",
    "RUNNING",
    "RETRYING",
    "SUCCEEDED",
    "FAILED",
    "SKIPPED",
    "CANCELLED",
)
#: Stages that have not ended: a job that ends leaves none of them behind.
OPEN_STAGE_STATES = ("PENDING", "RUNNING", "RETRYING")


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_name)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map = {dict[str, Any]: JSONB, datetime: DateTime(timezone=True)}


class Video(Base):
    __tablename__ = "videos"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    owner: Mapped[str] = mapped_column(String(256))
    filename: Mapped[str] = mapped_column(Text)
    content_type: Mapped[str] = mapped_column(String(256))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    bucket: Mapped[str] = mapped_column(String(256))
    object_key: Mapped[str] = mapped_column(Text)
    media_info: Mapped[dict[str, Any]]
    source_url: Mapped[str | None] = mapped_column(Text)
    create_time: Mapped[datetime] = mapped_column(server_default=func.now())


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    owner: Mapped[str] = mapped_column(String(256))
    video_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("videos.id", ondelete="SET NULL"))
    source_url: Mapped[str | None] = mapped_column(Text)
    spec: Mapped[dict[str, Any]]
    state: Mapped[str] = mapped_column(String(16))
    labels: Mapped[dict[str, Any]]
    request_id: Mapped[str | None] = mapped_column(String(256))
    error: Mapped[dict[str, Any] | None]
    media_info: Mapped[dict[str, Any] | None]
    transcript: Mapped[dict[str, Any] | None]
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata")
    #: What the scenes and OCR stages found (reelmill.v1.Scenes, reelmill.v1.OnScreenText).
    scenes: Mapped[dict[str, Any] | None]
    on_screen_text: Mapped[dict[str, Any] | None]
    #: What the clips stage cut: a list of reelmill.v1.Clip.
    clips: Mapped[list[Any] | None] = mapped_column(JSONB)
    lease_owner: Mapped[str | None] = mapped_column(String(256))
    lease_expires_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: The job fails with DEADLINE_EXCEEDED when it has not finished by then.
    deadline: Mapped[datetime | None]
    last_event_sequence: Mapped[int] = mapped_column(BigInteger, default=0)
    #: The W3C trace context of the CreateJob call (``traceparent``, ``tracestate``): every
    #: run of the job, on any gateway, continues that trace.
    trace_context: Mapped[dict[str, Any] | None]
    #: Orders the owner's own waiting jobs (-100..100, higher first; gateway.queue).
    priority: Mapped[int] = mapped_column(Integer, default=0)
    #: The BatchCreateJobs call that created the job.
    batch_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    #: When a worker last claimed the job (fairness: the owner served least recently first).
    claim_time: Mapped[datetime | None]
    create_time: Mapped[datetime] = mapped_column(server_default=func.now())
    start_time: Mapped[datetime | None]
    end_time: Mapped[datetime | None]
    update_time: Mapped[datetime] = mapped_column(server_default=func.now())


class JobQueueOwner(Base):
    """The queue's summary of one owner (``gateway.queue``): its jobs waiting and its last
    claim. Written only by the triggers on ``jobs`` (migration 0012), in the transaction of the
    change; the application reads it."""

    __tablename__ = "job_queue_owners"

    owner: Mapped[str] = mapped_column(String(256), primary_key=True)
    waiting: Mapped[int] = mapped_column(BigInteger)
    served: Mapped[datetime | None]


class JobStage(Base):
    __tablename__ = "job_stages"

    job_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    depends_on: Mapped[dict[str, Any]]
    state: Mapped[str] = mapped_column(String(16))
    progress: Mapped[float] = mapped_column(Double, default=0.0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[dict[str, Any] | None]
    outputs: Mapped[dict[str, Any] | None]
    start_time: Mapped[datetime | None]
    end_time: Mapped[datetime | None]
    #: What determines the stage's outputs (gateway.reuse): a later stage with the same one
    #: copies them instead of computing them.
    fingerprint: Mapped[str | None] = mapped_column(String(64))
    #: The job whose outputs this stage copied.
    reused_from: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))


class JobSnapshot(Base):
    """An ended job's BASIC message, serialized (``gateway.snapshots``): valid while the job's
    row and stage rows are the versions named by ``version``."""

    __tablename__ = "job_snapshots"

    job_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    #: The conversion and the protos that made ``body`` (``gateway.snapshots.FORMAT``).
    format: Mapped[str] = mapped_column(String(64))
    #: The job row's xmin, then its stage rows' in position order.
    version: Mapped[str] = mapped_column(Text)
    body: Mapped[bytes] = mapped_column(LargeBinary)


class JobEvent(Base):
    __tablename__ = "job_events"

    job_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    sequence: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    type: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]]
    create_time: Mapped[datetime] = mapped_column(server_default=func.now())


class Artifact(Base):
    __tablename__ = "artifacts"

    job_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(Text, primary_key=True)
    kind: Mapped[str] = mapped_column(String(64))
    stage: Mapped[str] = mapped_column(String(32))
    bucket: Mapped[str] = mapped_column(String(256))
    object_key: Mapped[str] = mapped_column(Text)
    content_type: Mapped[str] = mapped_column(String(256))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    attributes: Mapped[dict[str, Any]]
    create_time: Mapped[datetime] = mapped_column(server_default=func.now())


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(256))
    display_name: Mapped[str] = mapped_column(Text)
    secret_hash: Mapped[str] = mapped_column(String(128))
    create_time: Mapped[datetime] = mapped_column(server_default=func.now())
    revoke_time: Mapped[datetime | None]


class Purge(Base):
    """An object-store prefix to empty once ``not_before`` has passed (a failed or cancelled
    job's partial outputs, a deleted video's objects)."""

    __tablename__ = "purges"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    prefix: Mapped[str] = mapped_column(Text)
    #: The failed or cancelled job whose end queued the purge (a retry of it cancels it). Every
    #: object an artifact row names is kept, whatever job the row is of.
    job_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    reason: Mapped[str] = mapped_column(String(32))
    not_before: Mapped[datetime]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    create_time: Mapped[datetime] = mapped_column(server_default=func.now())


class Upload(Base):
    """A resumable upload (``gateway.uploads``); its video gets ``video_id`` once finished."""

    __tablename__ = "uploads"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    owner: Mapped[str] = mapped_column(String(256))
    video_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    bucket: Mapped[str] = mapped_column(String(256))
    object_key: Mapped[str] = mapped_column(Text)
    filename: Mapped[str] = mapped_column(Text)
    content_type: Mapped[str] = mapped_column(String(256))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    write_token: Mapped[str | None] = mapped_column(Text)
    part_size: Mapped[int] = mapped_column(BigInteger, default=0)
    committed_size: Mapped[int] = mapped_column(BigInteger, default=0)
    #: The SHA-256 state after ``committed_size`` bytes (``runtime.hashstate``).
    hash_state: Mapped[bytes | None] = mapped_column(LargeBinary)
    #: The write or finish holding the upload; what it records is fenced by it.
    writer: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    create_time: Mapped[datetime] = mapped_column(server_default=func.now())
    update_time: Mapped[datetime] = mapped_column(server_default=func.now())
    expire_time: Mapped[datetime]


class UploadPart(Base):
    """A committed part of an upload (durable in the object store)."""

    __tablename__ = "upload_parts"

    upload_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("uploads.id", ondelete="CASCADE"), primary_key=True
    )
    part_number: Mapped[int] = mapped_column(Integer, primary_key=True)
    etag: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
