"""Job deadlines, and the queue of object-store prefixes to purge.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("jobs", sa.Column("deadline", TS, nullable=True))
    # The recent mean job duration behind GetJob's estimated start.
    op.create_index(
        "jobs_succeeded_end_time",
        "jobs",
        ["end_time"],
        postgresql_where=sa.text("state = 'SUCCEEDED'"),
    )
    op.create_table(
        "purges",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        # Every object under this prefix goes, except (when job_id is set) the objects that
        # job's artifacts rows still name.
        sa.Column("prefix", sa.Text, nullable=False),
        sa.Column("job_id", UUID(as_uuid=True), nullable=True),
        sa.Column("reason", sa.String(32), nullable=False),
        # Not before this time: services still stopping a cancelled call may write late.
        sa.Column("not_before", TS, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("create_time", TS, nullable=False, server_default=sa.func.now()),
    )
    op.create_index("purges_not_before", "purges", ["not_before"])


def downgrade() -> None:
    op.drop_index("purges_not_before", table_name="purges")
    op.drop_table("purges")
    op.drop_index("jobs_succeeded_end_time", table_name="jobs")
    op.drop_column("jobs", "deadline")
