"""Indexes for a large history (issue 15): retention's scan of finished jobs by end time, and
the per-owner count of active jobs that every CreateJob makes.

- ``ix_jobs_finished_end_time``: finished jobs by ``end_time`` (``gateway.retention`` takes the
  oldest due ones in batches); partial, so queued and running jobs are not in it.
- ``ix_jobs_owner_active``: an owner's queued and running jobs (``gateway.store.active_jobs``,
  the REELMILL_OWNER_MAX_ACTIVE_JOBS check): without it, the count read every job the owner
  ever had through ``ix_jobs_owner_create_time``.

Revision ID: 0011
Revises: 0009 (0010, reserved for another change, is not in yet)
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_jobs_finished_end_time",
        "jobs",
        ["end_time"],
        postgresql_where=sa.text("state IN ('SUCCEEDED', 'FAILED', 'CANCELLED')"),
    )
    op.create_index(
        "ix_jobs_owner_active",
        "jobs",
        ["owner"],
        postgresql_where=sa.text("state IN ('QUEUED', 'RUNNING')"),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_owner_active", table_name="jobs")
    op.drop_index("ix_jobs_finished_end_time", table_name="jobs")
