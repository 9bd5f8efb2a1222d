"""The webhook tables (migration 0005), on the gateway's one declarative base: endpoints, the
delivery outbox, and the attempts made (``gateway.webhooks``)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Double, ForeignKey, Identity, Integer, String, Text, func
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from gateway.db.models import Base


class WebhookEndpoint(Base):
    """Where an owner's job events are delivered (``gateway.webhooks``)."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    owner: Mapped[str] = mapped_column(String(256))
    url: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text, default="")
    #: Event type names ("job.succeeded", ...).
    event_types: Mapped[list[str]] = mapped_column(JSONB)
    #: The signing secrets, sealed; the previous one signs too until it expires.
    secret: Mapped[str] = mapped_column(Text)
    previous_secret: Mapped[str | None] = mapped_column(Text)
    previous_secret_expire_time: Mapped[datetime | None]
    secret_rotate_time: Mapped[datetime | None]
    #: "ACTIVE" or "DISABLED".
    state: Mapped[str] = mapped_column(String(16), default="ACTIVE")
    disabled_reason: Mapped[str | None] = mapped_column(String(64))
    disable_time: Mapped[datetime | None]
    create_time: Mapped[datetime] = mapped_column(server_default=func.now())


class WebhookDelivery(Base):
    """The outbox: one job event for one endpoint, written in the event's transaction."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    endpoint_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE")
    )
    job_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    sequence: Mapped[int] = mapped_column(BigInteger)
    event_type: Mapped[str] = mapped_column(String(32))
    event_time: Mapped[datetime] = mapped_column(server_default=func.now())
    payload: Mapped[dict[str, Any]]
    #: "PENDING", "SUCCEEDED" or "FAILED".
    state: Mapped[str] = mapped_column(String(16), default="PENDING")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_time: Mapped[datetime] = mapped_column(server_default=func.now())
    lease_until: Mapped[datetime | None]
    lease_token: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_time: Mapped[datetime | None]
    create_time: Mapped[datetime] = mapped_column(server_default=func.now())
    update_time: Mapped[datetime] = mapped_column(server_default=func.now())


class WebhookAttempt(Base):
    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    delivery_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE")
    )
    start_time: Mapped[datetime]
    duration_seconds: Mapped[float] = mapped_column(Double)
    #: "SUCCEEDED" or "FAILED".
    outcome: Mapped[str] = mapped_column(String(16))
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)


UPLOAD_STATES = ("ACTIVE", "FINISHING", "FINISHED")
