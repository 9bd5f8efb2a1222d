"""Ended jobs' BASIC messages, serialized (``gateway.snapshots``, issue 15): a page of
ListJobs reads one row per job instead of converting the job's columns and stage rows.

No triggers: a snapshot names the row versions (``xmin``) it was made from, and a reader uses
it only while they are the current ones. The table starts empty; ListJobs fills it as it
lists ended jobs. Deleting a job (retention, DeleteVideo) deletes its snapshot.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "job_snapshots",
        sa.Column(
            "job_id",
            UUID(as_uuid=True),
            sa.ForeignKey("jobs.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("format", sa.String(64), nullable=False),
        sa.Column("version", sa.Text, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("job_snapshots")
