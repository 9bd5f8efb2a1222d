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
one statement with ``FOR UPDATE SKIP LOCKED`` over indexes: the owners with waiting jobs come
from a loose scan of ``ix_jobs_waiting`` (one index probe per owner, not per job), each
owner's first ``limit`` waiting jobs from the same index, its held count from
``ix_jobs_leased`` and its last claim from ``ix_jobs_owner_claim_time``; its cost grows with
the number of owners waiting, not with the number of jobs queued.

``QUEUE_POSITION`` computes the same order for one waiting job (GetJob's position and
estimated start), assuming no new jobs arrive and none finishes meanwhile.
"""

from __future__ import annotations

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, UUID

MIN_PRIORITY = -100
MAX_PRIORITY = 100

#: Claims up to ``:limit`` jobs for ``:worker`` with a ``:lease`` (seconds), skipping the ids in
#: ``:busy`` (runs of this worker still ending); returns their ids.
CLAIM = text(
    """
    WITH RECURSIVE waiting_owners(owner) AS (
        (SELECT owner FROM jobs
          WHERE state = 'QUEUED' AND lease_owner IS NULL
          ORDER BY owner LIMIT 1)
        UNION ALL
        SELECT (SELECT j.owner FROM jobs j
                 WHERE j.state = 'QUEUED' AND j.lease_owner IS NULL AND j.owner > w.owner
                 ORDER BY j.owner LIMIT 1)
          FROM waiting_owners w
         WHERE w.owner IS NOT NULL
    ),
    candidates AS (
        SELECT a.id, 0::bigint AS turn, NULL::timestamptz AS served, ''::text AS owner,
               0::bigint AS rank
          FROM jobs a
         WHERE a.lease_owner IS NOT NULL AND a.state IN ('QUEUED', 'RUNNING')
           AND a.lease_expires_at < now()
        UNION ALL
        SELECT q.id, h.held + q.rank, s.served, w.owner, q.rank
          FROM waiting_owners w
          CROSS JOIN LATERAL (
                SELECT count(*) AS held FROM jobs l
                 WHERE l.owner = w.owner AND l.lease_owner IS NOT NULL
                   AND l.state IN ('QUEUED', 'RUNNING') AND l.lease_expires_at >= now()) h
          CROSS JOIN LATERAL (
                SELECT max(c.claim_time) AS served FROM jobs c WHERE c.owner = w.owner) s
          CROSS JOIN LATERAL (
                SELECT t.id,
                       row_number() OVER (ORDER BY t.priority DESC, t.create_time, t.id) AS rank
                  FROM jobs t
                 WHERE t.owner = w.owner AND t.state = 'QUEUED' AND t.lease_owner IS NULL
                 ORDER BY t.priority DESC, t.create_time, t.id
                 LIMIT :limit) q
         WHERE w.owner IS NOT NULL
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

#: Positions up to this are exact; a job further back gets an estimate (``QUEUE_POSITION``).
EXACT_POSITIONS = 10_000


def queue_position_sql(exact: int = EXACT_POSITIONS) -> str:
    """``QUEUE_POSITION`` with positions exact up to ``exact``."""
    return _QUEUE_POSITION.replace(":exact", str(int(exact)))


#: The 1-based position of waiting job ``:id`` in the claim order; no row when it is not
#: waiting. The turn of each owner's waiting jobs is as in ``CLAIM``; ``-infinity`` stands for
#: "never claimed", which wins ties as ``NULLS FIRST`` does there.
#:
#: Its cost follows the position, not the queue: the owners with waiting jobs come from a loose
#: scan of ``ix_jobs_waiting`` (one probe each, as in ``CLAIM``), and of each owner's waiting
#: jobs only those that can be ahead of the job are counted (at most its turn's worth, each
#: count a ``LIMIT``ed index-only scan). The counting stops once the jobs found ahead pass
#: ``EXACT_POSITIONS``: then the owners left are only walked over, and what the counted owners
#: put ahead is scaled by how many owners there are in all. So a position up to 10,000 is
#: exact, and one beyond is an estimate (never below 10,001); a job deeper than 10,000 in
#: its own owner's queue counts as its owner's 10,000th.
_QUEUE_POSITION = """
    WITH RECURSIVE me AS (
        SELECT owner, priority, create_time, id FROM jobs
         WHERE id = :id AND state = 'QUEUED' AND lease_owner IS NULL
    ),
    mine AS (
        SELECT me.owner, a.rank, l.live + a.rank AS turn,
               COALESCE((SELECT max(c.claim_time) FROM jobs c WHERE c.owner = me.owner),
                        '-infinity') AS served
          FROM me
         CROSS JOIN LATERAL (
               SELECT count(*) AS live FROM jobs l
                WHERE l.owner = me.owner AND l.lease_owner IS NOT NULL
                  AND l.state IN ('QUEUED', 'RUNNING') AND l.lease_expires_at >= now()) l
         CROSS JOIN LATERAL (
               SELECT count(*) AS rank FROM (
                      SELECT 1 FROM jobs m
                       WHERE m.owner = me.owner AND m.state = 'QUEUED'
                         AND m.lease_owner IS NULL
                         AND (m.priority > me.priority
                              OR (m.priority = me.priority
                                  AND (m.create_time, m.id) <= (me.create_time, me.id)))
                       LIMIT :exact) r) a
    ),
    -- Owner by owner (by name; '' sorts before every owner): what each puts ahead of the job,
    -- summed while the sum stays within :exact, then only the owners counted and skipped.
    walk(owner, ahead, counted, skipped) AS (
        SELECT ''::varchar, 0::bigint, 0::bigint, 0::bigint
        UNION ALL
        SELECT n.owner,
               w.ahead + x.ahead,
               w.counted + f.counting::int,
               w.skipped + (n.owner <> mine.owner AND NOT f.counting)::int
          FROM walk w
         CROSS JOIN mine
         CROSS JOIN LATERAL (
               SELECT j.owner FROM jobs j
                WHERE j.state = 'QUEUED' AND j.lease_owner IS NULL AND j.owner > w.owner
                ORDER BY j.owner LIMIT 1) n
         CROSS JOIN LATERAL (
               SELECT n.owner <> mine.owner AND mine.rank + w.ahead <= :exact AS counting) f
         CROSS JOIN LATERAL (
               SELECT count(*) AS live FROM jobs l
                WHERE l.owner = n.owner AND l.lease_owner IS NOT NULL
                  AND l.state IN ('QUEUED', 'RUNNING') AND l.lease_expires_at >= now()) h
         CROSS JOIN LATERAL (
               SELECT count(*) AS waiting FROM (
                      SELECT 1 FROM jobs o
                       WHERE o.owner = n.owner AND o.state = 'QUEUED' AND o.lease_owner IS NULL
                       LIMIT CASE WHEN f.counting THEN GREATEST(mine.turn - h.live, 0)
                                  ELSE 0 END) k) c
         CROSS JOIN LATERAL (
               SELECT CASE WHEN NOT f.counting THEN 0
                           ELSE LEAST(GREATEST(mine.turn - 1 - h.live, 0), c.waiting)
                                + CASE WHEN h.live < mine.turn
                                            AND c.waiting >= mine.turn - h.live THEN
                                       CASE WHEN (COALESCE(
                                                     (SELECT max(s.claim_time) FROM jobs s
                                                       WHERE s.owner = n.owner),
                                                     '-infinity'), n.owner)
                                                 < (mine.served, mine.owner)
                                            THEN 1 ELSE 0 END
                                       ELSE 0 END
                           END AS ahead) x
    ),
    total AS (
        SELECT ahead, counted, skipped FROM walk ORDER BY counted + skipped DESC LIMIT 1
    )
    SELECT (SELECT count(*) FROM jobs a
             WHERE a.lease_owner IS NOT NULL AND a.state IN ('QUEUED', 'RUNNING')
               AND a.lease_expires_at < now())
         + mine.rank
         + CASE WHEN total.skipped = 0 THEN total.ahead
                ELSE GREATEST(ceil(total.ahead::numeric * (total.counted + total.skipped)
                                   / GREATEST(total.counted, 1)), :exact + 1 - mine.rank)
                END AS position
      FROM mine, total
"""

QUEUE_POSITION = text(queue_position_sql())
