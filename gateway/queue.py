"""The order in which queued jobs run: priority within an owner, fairness between owners.

A job's ``priority`` (-100..100, default 0) orders only its owner's own waiting jobs (higher
first, then oldest first): priorities are chosen by callers, so they never let one owner
overtake another. Between owners the queue is max-min fair, in turns:

- Jobs whose worker vanished (their lease expired while claimed or running) come first: they
  were already taken from the queue once.
- Then every owner with waiting jobs takes turns. The owner's k-th waiting job (in its own
  order) has turn ``held + k``, where ``held`` is how many of the owner's jobs workers hold
  right now (running, or claimed and starting). Lower turns run first; on a tie the owner whose
  jobs were claimed least recently (never first) goes first.

So a free slot goes to the owner with the fewest jobs running, and an owner's 1,000-job batch
waits behind another owner's single job instead of starving it. The claim evaluates this in
one statement with ``FOR UPDATE SKIP LOCKED``. How many jobs each owner has waiting and when
it was last served is one row of the summary ``job_queue_owners``, which triggers on ``jobs``
keep in the transaction of every change (migration 0012); how many of its jobs workers hold is
counted from the held jobs themselves (few: those running now, on ``ix_jobs_leased``). Of the
owners waiting it ranks only those that can be first, and takes their jobs from
``ix_jobs_waiting``. So its cost grows neither with the number of jobs queued nor (beyond
reading one small row each) with the number of owners waiting.

``QUEUE_POSITION`` computes the same order for one waiting job (GetJob's position and
estimated start), assuming no new jobs arrive and none finishes meanwhile, from the same
summary rows.
"""

from __future__ import annotations

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, UUID

MIN_PRIORITY = -100
MAX_PRIORITY = 100

#: The jobs workers hold: claimed or running under a lease, ``expired`` when it ran out (their
#: worker vanished). Few (the jobs running now), found through ``ix_jobs_leased``.
_LEASED = """
        SELECT id, owner, lease_expires_at < now() AS expired FROM jobs
         WHERE lease_owner IS NOT NULL AND state IN ('QUEUED', 'RUNNING')
"""
#: The owners with waiting jobs from the summary (``job_queue_owners``, kept by triggers on
#: ``jobs``, migration 0012): what each waits with, how many of its jobs live workers hold
#: (from ``leased``) and when it was last served.
_OWNERS = """
        SELECT q.owner, q.waiting, COALESCE(h.held, 0) AS held, q.served
          FROM job_queue_owners q
          LEFT JOIN (SELECT owner, count(*) AS held FROM leased WHERE NOT expired
                      GROUP BY owner) h ON h.owner = q.owner
         WHERE q.waiting > 0
"""
#: The CTEs both statements start from.
_COMMON = f"""
    leased AS MATERIALIZED ({_LEASED}),
    expired AS (SELECT id, owner FROM leased WHERE expired),
    owners AS MATERIALIZED ({_OWNERS})
"""

#: Claims up to ``:limit`` jobs for ``:worker`` with a ``:lease`` (seconds), skipping the ids in
#: ``:busy`` (runs of this worker still ending); returns their ids.
#:
#: It reads ``:limit * 4 + 16`` candidates in the queue's order (``ranked``), more than it
#: claims: the spares are for the jobs other replicas are claiming at this very moment (locked,
#: so skipped; or just claimed, so no longer claimable once locked). Of the owners waiting, only
#: the first that many (+ the busy ones) by their first job's turn can hold them: an owner
#: further back has that many owners' first jobs ahead of its own first one. How many each of
#: those gives follows from the summary rows: every owner's k-th job has turn ``held + k``, so
#: the candidates are exactly the jobs with a turn up to ``reach``, the first turn by which the
#: owners have that many jobs waiting; an owner gives its ``reach - held`` first jobs, from
#: ``ix_jobs_waiting``. (With one owner waiting, a claim that took only each owner's first
#: ``:limit`` jobs found just those another replica was claiming, and came away empty.)
CLAIM = text(
    f"""
    WITH {_COMMON},
    contenders AS MATERIALIZED (
        SELECT owner, held, served, waiting FROM owners
         ORDER BY held, served NULLS FIRST, owner
         LIMIT :limit * 4 + 16 + cardinality(CAST(:busy AS uuid[]))
    ),
    reach AS (
        SELECT min(t.turn) AS turn
          FROM generate_series(1, :limit * 4 + 16 + cardinality(CAST(:busy AS uuid[]))
                                  + (SELECT COALESCE(max(held), 0) FROM contenders)) AS t(turn)
         WHERE (SELECT sum(LEAST(c.waiting, GREATEST(t.turn - c.held, 0))) FROM contenders c)
               >= :limit * 4 + 16 + cardinality(CAST(:busy AS uuid[]))
            OR t.turn = :limit * 4 + 16 + cardinality(CAST(:busy AS uuid[]))
                        + (SELECT COALESCE(max(held), 0) FROM contenders)
    ),
    candidates AS (
        SELECT e.id, 0::bigint AS turn, NULL::timestamptz AS served, ''::text AS owner,
               0::bigint AS rank
          FROM expired e
        UNION ALL
        SELECT q.id, o.held + q.rank, o.served, o.owner, q.rank
          FROM contenders o
          CROSS JOIN reach
          CROSS JOIN LATERAL (
                SELECT t.id,
                       row_number() OVER (ORDER BY t.priority DESC, t.create_time, t.id) AS rank
                  FROM jobs t
                 WHERE t.owner = o.owner AND t.state = 'QUEUED' AND t.lease_owner IS NULL
                 ORDER BY t.priority DESC, t.create_time, t.id
                 LIMIT GREATEST(reach.turn - o.held, 0)) q
    ),
    -- The first few in the queue's order: as many as asked for, and some to spare for those
    -- another replica is claiming at this very moment (skipped, locked).
    ranked AS MATERIALIZED (
        SELECT id, turn, served, owner, rank FROM candidates
         WHERE id <> ALL(:busy)
         ORDER BY turn, served NULLS FIRST, owner, rank
         LIMIT :limit * 4 + 16
    )
    UPDATE jobs
       SET lease_owner = :worker,
           lease_expires_at = now() + make_interval(secs => :lease),
           attempts = attempts + 1,
           claim_time = now(),
           update_time = now()
     WHERE id IN (
           SELECT j.id FROM ranked c JOIN jobs j ON j.id = c.id
            WHERE j.state IN ('QUEUED', 'RUNNING')
              AND (j.lease_expires_at IS NULL OR j.lease_expires_at < now())
            ORDER BY c.turn, c.served NULLS FIRST, c.owner, c.rank
            LIMIT :limit
            FOR UPDATE OF j SKIP LOCKED)
    RETURNING id
    """
).bindparams(bindparam("busy", type_=ARRAY(UUID(as_uuid=True))))

#: A job deeper than this in its own owner's queue counts as its owner's this-many-th
#: (``QUEUE_POSITION``): its rank among its owner's jobs is a ``LIMIT``ed count.
EXACT_POSITIONS = 10_000


def queue_position_sql(exact: int = EXACT_POSITIONS) -> str:
    """``QUEUE_POSITION`` with an owner's own jobs counted up to ``exact``."""
    return _QUEUE_POSITION.replace(":exact", str(int(exact)))


#: The 1-based position of waiting job ``:id`` in the claim order; no row when it is not
#: waiting. The turn of each owner's waiting jobs is as in ``CLAIM``; ``-infinity`` stands for
#: "never claimed", which wins ties as ``NULLS FIRST`` does there.
#:
#: The job's rank among its owner's waiting jobs is a count on ``ix_jobs_waiting`` (of those
#: ahead of it in the owner's order, at most ``EXACT_POSITIONS``); every other owner's share
#: of the jobs ahead follows from its summary row (``job_queue_owners``): its jobs with a
#: lower turn, and the one with the same turn when that owner wins the tie. So the cost is
#: one row per waiting owner, not a walk through the jobs' indexes.
_QUEUE_POSITION = f"""
    WITH {_COMMON},
    me AS (
        SELECT owner, priority, create_time, id FROM jobs
         WHERE id = :id AND state = 'QUEUED' AND lease_owner IS NULL
    ),
    mine AS (
        SELECT me.owner, a.rank, COALESCE(o.held, 0) + a.rank AS turn,
               COALESCE(o.served, '-infinity') AS served
          FROM me
          LEFT JOIN owners o ON o.owner = me.owner
         CROSS JOIN LATERAL (
               SELECT count(*) AS rank FROM (
                      SELECT 1 FROM jobs m
                       WHERE m.owner = me.owner AND m.state = 'QUEUED'
                         AND m.lease_owner IS NULL
                         AND (m.priority > me.priority
                              OR (m.priority = me.priority
                                  AND (m.create_time, m.id) <= (me.create_time, me.id)))
                       LIMIT :exact) r) a
    )
    SELECT (SELECT count(*) FROM expired)
         + mine.rank
         + COALESCE((
               SELECT sum(LEAST(GREATEST(mine.turn - 1 - o.held, 0), o.waiting)
                          + CASE WHEN o.held < mine.turn AND o.waiting >= mine.turn - o.held
                                      AND (COALESCE(o.served, '-infinity'), o.owner)
                                          < (mine.served, mine.owner)
                                 THEN 1 ELSE 0 END)
                 FROM owners o
                WHERE o.owner <> mine.owner), 0) AS position
      FROM mine
"""

QUEUE_POSITION = text(queue_position_sql())
