"""Initial schema: videos, jobs, job_stages, job_events, artifacts, api_keys, ai_cache.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "videos",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("owner", sa.String(256), nullable=False),
        sa.Column("filename", sa.Text, nullable=False),
        sa.Column("content_type", sa.String(256), nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("bucket", sa.String(256), nullable=False),
        sa.Column("object_key", sa.Text, nullable=False),
        sa.Column("media_info", JSONB, nullable=False),
        sa.Column("source_url", sa.Text),
        sa.Column("create_time", TS, nullable=False, server_default=sa.func.now()),
    )
    op.create_index("ix_videos_owner_create_time", "videos", ["owner", "create_time", "id"])

    op.create_table(
        "jobs",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("owner", sa.String(256), nullable=False),
        sa.Column("video_id", UUID(as_uuid=True), sa.ForeignKey("videos.id", ondelete="SET NULL")),
        sa.Column("source_url", sa.Text),
        sa.Column("spec", JSONB, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("labels", JSONB, nullable=False, server_default="{}"),
        sa.Column("request_id", sa.String(256)),
        sa.Column("error", JSONB),
        sa.Column("media_info", JSONB),
        sa.Column("transcript", JSONB),
        sa.Column("metadata", JSONB),
        sa.Column("lease_owner", sa.String(256)),
        sa.Column("lease_expires_at", TS),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_event_sequence", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("create_time", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("start_time", TS),
        sa.Column("end_time", TS),
        sa.Column("update_time", TS, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint(
            "state IN ('QUEUED','RUNNING','SUCCEEDED','FAILED','CANCELLED')", name="state"
        ),
    )
    op.create_index(
        "uq_jobs_owner_request_id",
        "jobs",
        ["owner", "request_id"],
        unique=True,
        postgresql_where=sa.text("request_id IS NOT NULL"),
    )
    op.create_index("ix_jobs_owner_create_time", "jobs", ["owner", "create_time", "id"])
    op.create_index("ix_jobs_video_id", "jobs", ["video_id"])
    # The claim query scans only claimable jobs.
    op.create_index(
        "ix_jobs_claimable",
        "jobs",
        ["create_time"],
        postgresql_where=sa.text("state IN ('QUEUED','RUNNING')"),
    )

    op.create_table(
        "job_stages",
        sa.Column(
            "job_id",
            UUID(as_uuid=True),
            sa.ForeignKey("jobs.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("depends_on", JSONB, nullable=False, server_default="[]"),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("progress", sa.Double, nullable=False, server_default="0"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("error", JSONB),
        sa.Column("outputs", JSONB),
        sa.Column("start_time", TS),
        sa.Column("end_time", TS),
    )

    op.create_table(
        "job_events",
        sa.Column(
            "job_id",
            UUID(as_uuid=True),
            sa.ForeignKey("jobs.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("sequence", sa.BigInteger, primary_key=True),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("payload", JSONB, nullable=False),
        sa.Column("create_time", TS, nullable=False, server_default=sa.func.now()),
    )

    op.create_table(
        "artifacts",
        sa.Column(
            "job_id",
            UUID(as_uuid=True),
            sa.ForeignKey("jobs.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("stage", sa.String(32), nullable=False),
        sa.Column("bucket", sa.String(256), nullable=False),
        sa.Column("object_key", sa.Text, nullable=False),
        sa.Column("content_type", sa.String(256), nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("attributes", JSONB, nullable=False, server_default="{}"),
        sa.Column("create_time", TS, nullable=False, server_default=sa.func.now()),
    )

    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(256), nullable=False),
        sa.Column("display_name", sa.Text, nullable=False),
        sa.Column("secret_hash", sa.String(128), nullable=False),
        sa.Column("create_time", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("revoke_time", TS),
    )
    op.create_index("ix_api_keys_owner", "api_keys", ["owner"])

    op.create_table(
        "ai_cache",
        sa.Column("key", sa.String(128), primary_key=True),
        sa.Column("payload", JSONB, nullable=False),
        sa.Column("create_time", TS, nullable=False, server_default=sa.func.now()),
    )


def downgrade() -> None:
    for table in (
        "ai_cache",
        "api_keys",
        "artifacts",
        "job_events",
        "job_stages",
        "jobs",
        "videos",
    ):
        op.drop_table(table)
