"""The clips a job's clips stage cut (issue 12, clips as their own stage): a JSONB column of
protobuf JSON, a list of ``reelmill.v1.Clip``, set with the stage's success.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("clips", JSONB, nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "clips")
