"""The queue's per-owner summary (issue 15): ``job_queue_owners``, kept by triggers on ``jobs``
in the transaction of every change to a job that changes it, so that the claim and every queue
position read one small row per waiting owner instead of walking the owners through the jobs'
indexes.

For each owner that ever had a job:

- ``waiting``: its jobs queued and not claimed (``state = 'QUEUED' AND lease_owner IS NULL``);
- ``served``: when a worker last claimed one of its jobs (``max(claim_time)``, never going
  back, also when retention deletes the job that set it).

How many of an owner's jobs workers hold is not kept here: those jobs are few (the ones running
now, bounded by the workers' slots) and the readers count them through ``ix_jobs_leased``. So
a job's end, the busiest write of a shared owner, changes no summary row, and finishing jobs
never wait on each other's row locks.

The triggers are statement-level with transition tables: a batch of 1,000 jobs or a claim of
16 changes each owner's row once, and rows are changed in owner order, so two statements
never lock two owners' rows in opposite orders. A statement that changes none of the counted
columns (an event's ``last_event_sequence``, a lease renewal) writes nothing. ``TRUNCATE jobs``
empties the summary too.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WAITING = "(state = 'QUEUED' AND lease_owner IS NULL)"

#: Each owner's change, from the rows a statement added (``new_rows``) and removed
#: (``old_rows``); only owners whose counts or last claim changed.
_UPSERT = """
    INSERT INTO job_queue_owners AS q (owner, waiting, served)
    SELECT owner, sum(waiting), max(served)
      FROM ({rows}) d
     GROUP BY owner
    HAVING sum(waiting) <> 0
        OR COALESCE(max(served), '-infinity') > COALESCE(max(before), '-infinity')
     ORDER BY owner
    ON CONFLICT (owner) DO UPDATE
       SET waiting = q.waiting + excluded.waiting,
           served = GREATEST(q.served, excluded.served)
"""
_NEW = f"""
    SELECT owner, {WAITING}::int AS waiting, claim_time AS served, NULL::timestamptz AS before
      FROM new_rows
"""
_OLD = f"""
    SELECT owner, -{WAITING}::int AS waiting, NULL::timestamptz AS served, claim_time AS before
      FROM old_rows
"""

FUNCTION = f"""
CREATE FUNCTION job_queue_owners_sync() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        {_UPSERT.format(rows=_NEW)};
    ELSIF TG_OP = 'UPDATE' THEN
        {_UPSERT.format(rows=_NEW + " UNION ALL " + _OLD)};
    ELSIF TG_OP = 'DELETE' THEN
        {_UPSERT.format(rows=_OLD)};
    ELSE
        DELETE FROM job_queue_owners;
    END IF;
    RETURN NULL;
END
$$
"""

#: The summary recounted from ``jobs``: the backfill.
RECOUNT = f"""
    SELECT owner,
           count(*) FILTER (WHERE {WAITING}) AS waiting,
           max(claim_time) AS served
      FROM jobs
     GROUP BY owner
"""


def upgrade() -> None:
    op.create_table(
        "job_queue_owners",
        sa.Column("owner", sa.String(256), primary_key=True),
        sa.Column("waiting", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("served", sa.DateTime(timezone=True), nullable=True),
    )
    # (No CHECK that the counts stay >= 0: Postgres checks the row an INSERT proposes before ON
    # CONFLICT turns it into an update, and the triggers' proposed rows are deltas.)
    op.create_index(
        "ix_job_queue_owners_waiting",
        "job_queue_owners",
        ["owner"],
        postgresql_where=sa.text("waiting > 0"),
    )
    # No job changes between the backfill and the triggers.
    op.execute("LOCK TABLE jobs IN SHARE ROW EXCLUSIVE MODE")
    op.execute(FUNCTION)
    for event, tables in (
        ("INSERT", "NEW TABLE AS new_rows"),
        ("UPDATE", "OLD TABLE AS old_rows NEW TABLE AS new_rows"),
        ("DELETE", "OLD TABLE AS old_rows"),
    ):
        op.execute(
            f"CREATE TRIGGER job_queue_owners_{event.lower()} AFTER {event} ON jobs "
            f"REFERENCING {tables} FOR EACH STATEMENT EXECUTE FUNCTION job_queue_owners_sync()"
        )
    op.execute(
        "CREATE TRIGGER job_queue_owners_truncate AFTER TRUNCATE ON jobs "
        "FOR EACH STATEMENT EXECUTE FUNCTION job_queue_owners_sync()"
    )
    op.execute(f"INSERT INTO job_queue_owners (owner, waiting, served) {RECOUNT}")


def downgrade() -> None:
    for event in ("insert", "update", "delete", "truncate"):
        op.execute(f"DROP TRIGGER job_queue_owners_{event} ON jobs")
    op.execute("DROP FUNCTION job_queue_owners_sync()")
    op.drop_table("job_queue_owners")
