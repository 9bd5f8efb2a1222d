"""Webhook endpoints, their secrets, and the delivery outbox.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("owner", sa.String(256), nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        # Event type names ("job.succeeded", "stage.finished", ...) the endpoint receives.
        sa.Column("event_types", JSONB, nullable=False),
        # Signing secrets, sealed (gateway.webhooks.SecretBox): the current one, and the one
        # it replaced, still signed with until previous_secret_expire_time.
        sa.Column("secret", sa.Text, nullable=False),
        sa.Column("previous_secret", sa.Text),
        sa.Column("previous_secret_expire_time", TS),
        sa.Column("secret_rotate_time", TS),
        # ACTIVE or DISABLED (the receiver answered 410, or a delivery exhausted its retries).
        sa.Column("state", sa.String(16), nullable=False, server_default="ACTIVE"),
        sa.Column("disabled_reason", sa.String(64)),
        sa.Column("disable_time", TS),
        sa.Column("create_time", TS, nullable=False, server_default=sa.func.now()),
    )
    op.create_index(
        "ix_webhook_endpoints_owner_create_time",
        "webhook_endpoints",
        ["owner", "create_time", "id"],
    )

    # The outbox: one row per (endpoint, job event), inserted in the event's transaction.
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column(
            "endpoint_id",
            UUID(as_uuid=True),
            sa.ForeignKey("webhook_endpoints.id", ondelete="CASCADE"),
            nullable=False,
        ),
        # No foreign key: the payload is a snapshot, kept when the job is deleted.
        sa.Column("job_id", UUID(as_uuid=True), nullable=False),
        sa.Column("sequence", sa.BigInteger, nullable=False),
        sa.Column("event_type", sa.String(32), nullable=False),
        sa.Column("event_time", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("payload", JSONB, nullable=False),
        # PENDING (to deliver), SUCCEEDED, FAILED (gave up: 410 or the schedule ran out).
        sa.Column("state", sa.String(16), nullable=False, server_default="PENDING"),
        # Attempts in the current round of the retry schedule (a redelivery starts a new one).
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_time", TS, nullable=False, server_default=sa.func.now()),
        # Set while a gateway is sending it; a delivery whose lease ran out is sent again.
        sa.Column("lease_until", TS),
        sa.Column("lease_token", UUID(as_uuid=True)),
        sa.Column("last_status_code", sa.Integer),
        sa.Column("last_error", sa.Text),
        sa.Column("delivered_time", TS),
        sa.Column("create_time", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("update_time", TS, nullable=False, server_default=sa.func.now()),
        sa.UniqueConstraint("endpoint_id", "job_id", "sequence"),
    )
    op.create_index(
        "webhook_deliveries_due",
        "webhook_deliveries",
        ["next_attempt_time"],
        postgresql_where=sa.text("state = 'PENDING'"),
    )
    op.create_index(
        "ix_webhook_deliveries_endpoint_id_create_time",
        "webhook_deliveries",
        ["endpoint_id", "create_time", "id"],
    )
    op.create_index(
        "webhook_deliveries_in_flight",
        "webhook_deliveries",
        ["endpoint_id", "lease_until"],
        postgresql_where=sa.text("lease_until IS NOT NULL"),
    )

    op.create_table(
        "webhook_attempts",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column(
            "delivery_id",
            UUID(as_uuid=True),
            sa.ForeignKey("webhook_deliveries.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("start_time", TS, nullable=False),
        sa.Column("duration_seconds", sa.Double, nullable=False),
        # SUCCEEDED or FAILED.
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("status_code", sa.Integer),
        sa.Column("error", sa.Text),
    )
    op.create_index("ix_webhook_attempts_delivery_id", "webhook_attempts", ["delivery_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_webhook_attempts_delivery_id", table_name="webhook_attempts")
    op.drop_table("webhook_attempts")
    op.drop_index("webhook_deliveries_in_flight", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_endpoint_id_create_time", table_name="webhook_deliveries")
    op.drop_index("webhook_deliveries_due", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_index("ix_webhook_endpoints_owner_create_time", table_name="webhook_endpoints")
    op.drop_table("webhook_endpoints")
