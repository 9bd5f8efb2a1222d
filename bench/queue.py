"""The claim and the queue position on a table of 100,000 queued jobs (issue 13): the fair
claim (``gateway.queue.CLAIM``: turns per owner, priority within an owner) against the FIFO
claim it replaced (``ORDER BY create_time ... FOR UPDATE SKIP LOCKED``), side by side on the
same table, and GetJob's queue position (``QUEUE_POSITION``) against the count it replaced.

The table: 100,000 QUEUED jobs spread over ``--owners`` owners (default 100; one owner with
half the jobs, as after a big batch), priorities -3..3, 20 jobs held by workers. Each query
runs ``--repeat`` times inside a transaction that is rolled back (so every claim sees the same
queue); the figures are the best, median and worst of their execution times as ``EXPLAIN
ANALYZE`` reports them, and the plan of the fair claim is printed (it reads indexes only: no
sequential scan of jobs).

    python -m bench.queue [--quick] [--owners N] [--repeat N]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import uuid

import asyncpg

from bench.common import table
from gateway.db.engine import make_engine, migrate
from gateway.queue import CLAIM, QUEUE_POSITION
from tests.servers import run_postgres

JOBS = 100_000

#: The claim before issue 13 (migration 0001's ix_jobs_claimable serves it; built for the run).
FIFO_CLAIM = """
    UPDATE jobs SET lease_owner = $1, lease_expires_at = now() + interval '30 seconds',
                    attempts = attempts + 1, update_time = now()
     WHERE id IN (SELECT id FROM jobs
                   WHERE state IN ('QUEUED', 'RUNNING')
                     AND (lease_expires_at IS NULL OR lease_expires_at < now())
                   ORDER BY create_time LIMIT $2 FOR UPDATE SKIP LOCKED)
    RETURNING id
"""
#: The queue position before issue 13.
FIFO_POSITION = """
    SELECT count(*) + 1 FROM jobs q, jobs j
     WHERE j.id = $1 AND q.state = 'QUEUED' AND (q.create_time, q.id) < (j.create_time, j.id)
"""


def _numbered(sql: str, names: list[str]) -> str:
    """``:name`` parameters as asyncpg's ``$n``."""
    for index, name in enumerate(names, start=1):
        sql = re.sub(rf":{name}\b", f"${index}", sql)
    return sql


FAIR_CLAIM = _numbered(CLAIM.text, ["worker", "lease", "limit", "busy"])
FAIR_POSITION = _numbered(QUEUE_POSITION.text, ["id"])
#: How many of an owner's jobs the fair claim reads: its jobs with a turn up to ``reach``.
_EACH_OWNER = "LIMIT GREATEST(reach.turn - o.held, 0)) q"
assert _EACH_OWNER in FAIR_CLAIM
#: The fair claim before it read spares from each owner: an owner's first ``limit`` jobs only
#: (a claim racing another replica's on the same owner came away empty).
NO_SPARES_CLAIM = FAIR_CLAIM.replace(_EACH_OWNER, "LIMIT $3) q")
#: The simplest fix: as many jobs from every owner as the claim reads in all.
EVERY_OWNER_CLAIM = FAIR_CLAIM.replace(_EACH_OWNER, "LIMIT $3 * 4 + 16) q")


async def _fill(connection: asyncpg.Connection, jobs: int, owners: int) -> None:
    await connection.execute(
        """
        INSERT INTO jobs (id, owner, spec, state, labels, priority, create_time,
                          lease_owner, lease_expires_at, claim_time)
        SELECT gen_random_uuid(),
               CASE WHEN n % 2 = 0 THEN 'big-batch' ELSE 'owner-' || (n % $2) END,
               '{}', 'QUEUED', '{}', (n % 7) - 3, now() - make_interval(secs => n),
               CASE WHEN n <= 20 THEN 'w' END,
               CASE WHEN n <= 20 THEN now() + interval '1 minute' END,
               CASE WHEN n <= 20 THEN now() END
          FROM generate_series(1, $1) AS n
        """,
        jobs,
        owners,
    )
    await connection.execute(
        "CREATE INDEX bench_claimable ON jobs (create_time) WHERE state IN ('QUEUED','RUNNING')"
    )
    await connection.execute("ANALYZE jobs")


async def _timed(connection: asyncpg.Connection, sql: str, *args: object) -> tuple[float, str]:
    """Execution time (ms) and plan of ``sql``, in a transaction rolled back afterwards."""
    transaction = connection.transaction()
    await transaction.start()
    try:
        rows = await connection.fetch("EXPLAIN (ANALYZE, FORMAT TEXT) " + sql, *args)
    finally:
        await transaction.rollback()
    plan = "\n".join(row[0] for row in rows)
    found = re.search(r"Execution Time: ([\d.]+) ms", plan)
    assert found is not None, plan
    return float(found.group(1)), plan


async def _series(
    connection: asyncpg.Connection, sql: str, repeat: int, *args: object
) -> tuple[list[float], str]:
    times, plan = [], ""
    for _ in range(repeat):
        elapsed, plan = await _timed(connection, sql, *args)
        times.append(elapsed)
    return times, plan


def _stats(times: list[float]) -> tuple[str, str, str]:
    return f"{min(times):.2f}", f"{statistics.median(times):.2f}", f"{max(times):.2f}"


async def run(dsn: str, url: str, jobs: int, owners: int, repeat: int) -> None:
    engine = make_engine(url)
    await migrate(engine)
    await engine.dispose()
    connection = await asyncpg.connect(dsn)
    try:
        await _fill(connection, jobs, owners)
        single = await connection.fetchval(  # owner-1's next job in its own order
            "SELECT id FROM jobs WHERE owner = 'owner-1' AND lease_owner IS NULL"
            " ORDER BY priority DESC, create_time, id LIMIT 1"
        )
        deep = await connection.fetchval(
            "SELECT id FROM jobs WHERE owner = 'big-batch' ORDER BY create_time DESC LIMIT 1"
        )
        results = []
        for label, sql, args in (
            ("claim 4, fair (turns per owner)", FAIR_CLAIM, ("bench", 30.0, 4, [])),
            (
                "claim 4, fair without spares per owner (before)",
                NO_SPARES_CLAIM,
                ("bench", 30.0, 4, []),
            ),
            (
                "claim 4, fair, every owner's first 32 (simplest fix)",
                EVERY_OWNER_CLAIM,
                ("bench", 30.0, 4, []),
            ),
            ("claim 4, FIFO (before)", FIFO_CLAIM, ("bench", 4)),
            ("claim 16, fair", FAIR_CLAIM, ("bench", 30.0, 16, [])),
            (
                "claim 16, fair without spares per owner (before)",
                NO_SPARES_CLAIM,
                ("bench", 30.0, 16, []),
            ),
            (
                "claim 16, fair, every owner's first 80 (simplest fix)",
                EVERY_OWNER_CLAIM,
                ("bench", 30.0, 16, []),
            ),
            ("claim 16, FIFO (before)", FIFO_CLAIM, ("bench", 16)),
            ("queue position, fair: a small owner's job", FAIR_POSITION, (single,)),
            ("queue position, fair: the batch's last job", FAIR_POSITION, (deep,)),
            ("queue position, FIFO (before): the batch's last job", FIFO_POSITION, (deep,)),
        ):
            times, plan = await _series(connection, sql, repeat, *args)
            results.append((label, *_stats(times)))
            if label.startswith("claim 4, fair"):
                fair_plan = plan
        position = await connection.fetchval(FAIR_POSITION, single)
        fifo = await connection.fetchval(FIFO_POSITION, single)
    finally:
        await connection.close()
    print(
        table(
            f"queue: {jobs:,} queued jobs, {owners} owners + one with half of them, 20 held "
            f"(EXPLAIN ANALYZE execution time, ms, {repeat} runs)",
            ("query", "best ms", "median ms", "worst ms"),
            results,
        )
    )
    print(
        f"\nowner-1's next job: fair position {position}; FIFO position {fifo} (behind every "
        "earlier job, the big batch's included)"
    )
    print("\nplan of the fair claim:\n" + fair_plan)
    assert "Seq Scan on jobs" not in fair_plan


def main(quick: bool = False, owners: int = 100, repeat: int = 20) -> None:
    jobs = 10_000 if quick else JOBS
    with run_postgres() as server:
        name = server.create_database(f"bench_queue_{uuid.uuid4().hex[:6]}")
        asyncio.run(run(server.dsn(name), server.url(name), jobs, owners, 5 if quick else repeat))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.queue")
    parser.add_argument("--quick", action="store_true", help="10,000 jobs, 5 runs")
    parser.add_argument("--owners", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    main(quick=args.quick, owners=args.owners, repeat=args.repeat)
