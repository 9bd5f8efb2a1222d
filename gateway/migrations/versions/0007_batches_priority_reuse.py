"""Batches, job priority and fairness, and reuse of finished stages.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)
WAITING = "state = 'QUEUED' AND lease_owner IS NULL"


def upgrade() -> None:
    # Orders an owner's own waiting jobs (gateway.queue); between owners, fairness decides.
    op.add_column("jobs", sa.Column("priority", sa.Integer, nullable=False, server_default="0"))
    op.create_check_constraint(op.f("ck_jobs_priority"), "jobs", "priority BETWEEN -100 AND 100")
    # The BatchCreateJobs call that created the job, if any.
    op.add_column("jobs", sa.Column("batch_id", UUID(as_uuid=True), nullable=True))
    # When a worker last claimed the job: the owner served least recently wins a tie.
    op.add_column("jobs", sa.Column("claim_time", TS, nullable=True))
    op.create_index(
        "ix_jobs_owner_batch_id",
        "jobs",
        ["owner", "batch_id", "create_time", "id"],
        postgresql_where=sa.text("batch_id IS NOT NULL"),
    )
    # The claim: owners with waiting jobs (a loose scan of the first column), and each owner's
    # waiting jobs in its own order.
    op.create_index(
        "ix_jobs_waiting",
        "jobs",
        ["owner", sa.text("priority DESC"), "create_time", "id"],
        postgresql_where=sa.text(WAITING),
    )
    # Jobs a worker holds (running, or claimed and about to start), and abandoned ones.
    op.create_index(
        "ix_jobs_leased", "jobs", ["owner"], postgresql_where=sa.text("lease_owner IS NOT NULL")
    )
    op.create_index("ix_jobs_owner_claim_time", "jobs", ["owner", "claim_time"])
    # The claim no longer scans claimable jobs by creation time.
    op.drop_index("ix_jobs_claimable", table_name="jobs")

    # Reuse: what determines a stage's outputs (gateway.reuse), and where they were copied from.
    op.add_column("job_stages", sa.Column("fingerprint", sa.String(64), nullable=True))
    op.add_column("job_stages", sa.Column("reused_from", UUID(as_uuid=True), nullable=True))
    op.create_index(
        "ix_job_stages_fingerprint",
        "job_stages",
        ["fingerprint"],
        postgresql_where=sa.text("fingerprint IS NOT NULL AND state = 'SUCCEEDED'"),
    )
    # A purge keeps the objects any artifact row names under its prefix (reused ones included).
    op.create_index(
        "ix_artifacts_object_key",
        "artifacts",
        [sa.text("object_key text_pattern_ops")],
    )


def downgrade() -> None:
    op.drop_index("ix_artifacts_object_key", table_name="artifacts")
    op.drop_index("ix_job_stages_fingerprint", table_name="job_stages")
    op.drop_column("job_stages", "reused_from")
    op.drop_column("job_stages", "fingerprint")
    op.create_index(
        "ix_jobs_claimable",
        "jobs",
        ["create_time"],
        postgresql_where=sa.text("state IN ('QUEUED','RUNNING')"),
    )
    op.drop_index("ix_jobs_owner_claim_time", table_name="jobs")
    op.drop_index("ix_jobs_leased", table_name="jobs")
    op.drop_index("ix_jobs_waiting", table_name="jobs")
    op.drop_index("ix_jobs_owner_batch_id", table_name="jobs")
    op.drop_column("jobs", "claim_time")
    op.drop_column("jobs", "batch_id")
    op.drop_constraint(op.f("ck_jobs_priority"), "jobs", type_="check")
    op.drop_column("jobs", "priority")
