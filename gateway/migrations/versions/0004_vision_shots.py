"""The shots a job's scenes stage found and the text its OCR stage read (issue: see what is
on screen): two JSONB columns of protobuf JSON, ``reelmill.v1.Scenes`` and
``reelmill.v1.OnScreenText``, set with the stages' success.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("scenes", JSONB, nullable=True))
    op.add_column("jobs", sa.Column("on_screen_text", JSONB, nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "on_screen_text")
    op.drop_column("jobs", "scenes")
