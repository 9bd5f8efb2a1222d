"""Drop ai_cache: AI results are shared in the object store (runtime/shared_cache.py).

The table (0001) was never read or written. The services that compute AI results talk to the
object store only, never to Postgres, and their shared result cache lives there, under the
reserved prefix ``cache/ai/``. The downgrade recreates the table as 0001 made it (empty).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.drop_table("ai_cache")


def downgrade() -> None:
    op.create_table(
        "ai_cache",
        sa.Column("key", sa.String(128), primary_key=True),
        sa.Column("payload", JSONB, nullable=False),
        sa.Column("create_time", TS, nullable=False, server_default=sa.func.now()),
    )
