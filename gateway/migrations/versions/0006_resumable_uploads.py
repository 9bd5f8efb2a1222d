"""Resumable uploads: sessions and committed parts.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "uploads",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("owner", sa.String(256), nullable=False),
        # The id the video gets, and so where its bytes go (videos/{video_id}/source).
        sa.Column("video_id", UUID(as_uuid=True), nullable=False),
        sa.Column("bucket", sa.String(256), nullable=False),
        sa.Column("object_key", sa.Text, nullable=False),
        sa.Column("filename", sa.Text, nullable=False),
        sa.Column("content_type", sa.String(256), nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        # Declared lower-case hex, or "".
        sa.Column("sha256", sa.String(64), nullable=False),
        # ACTIVE, FINISHING or FINISHED.
        sa.Column("state", sa.String(16), nullable=False),
        # Set once the object store's resumable write exists (an S3 multipart upload id).
        sa.Column("write_token", sa.Text, nullable=True),
        sa.Column("part_size", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("committed_size", sa.BigInteger, nullable=False, server_default="0"),
        # The SHA-256 state after committed_size bytes (runtime.hashstate).
        sa.Column("hash_state", sa.LargeBinary, nullable=True),
        # The write (or finish) that holds the upload: every commit it records is fenced by it.
        sa.Column("writer", UUID(as_uuid=True), nullable=True),
        sa.Column("create_time", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("update_time", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("expire_time", TS, nullable=False),
        sa.CheckConstraint("state IN ('ACTIVE', 'FINISHING', 'FINISHED')", name="ck_uploads_state"),
    )
    # Stored bytes per owner count the sizes of their unfinished uploads.
    op.create_index("uploads_owner", "uploads", ["owner"])
    op.create_index("uploads_expire_time", "uploads", ["expire_time"])
    op.create_table(
        "upload_parts",
        sa.Column(
            "upload_id",
            UUID(as_uuid=True),
            sa.ForeignKey("uploads.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("part_number", sa.Integer, primary_key=True),
        sa.Column("etag", sa.Text, nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("upload_parts")
    op.drop_index("uploads_expire_time", table_name="uploads")
    op.drop_index("uploads_owner", table_name="uploads")
    op.drop_table("uploads")
