"""Finished jobs' BASIC messages, kept serialized (``job_snapshots``) so that a page of
ListJobs is one statement and a parse of bytes per job instead of the jobs' columns, their
stage rows aggregated to JSON, and the conversion of both (issue 15: most of a page's time).

A snapshot is valid while what it was made from is unchanged. Its ``version`` is the job row's
``xmin`` followed by the ``xmin`` of each of its stage rows, in position order: Postgres gives
every new row version a new ``xmin``, so any change to the job or to any of its stages, by any
code path, changes the version, and the snapshot is simply not used again (nothing has to
remember to invalidate it). A job's BASIC view reads nothing else once it has ended: its queue
position is 0 and it has no estimated start; artifacts are in the FULL view only.

Only ended jobs get snapshots: a queued job's position moves without its row changing, and a
running job changes too often for a copy to pay. The version is read before the body is made,
in an earlier statement or the same one; a body made later than its version is either the
same message or stored under a version that can no longer match. ``FORMAT`` names the code
and the protos that made the bytes: a snapshot of another format is not used.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Iterable, Sequence

from google.protobuf.descriptor import FileDescriptor
from sqlalchemy import ColumnClause, literal_column, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.db import models
from reelmill.v1 import job_pb2

log = logging.getLogger(__name__)

#: Bump when ``gateway.convert.job_from_record`` makes a different message from the same rows.
CONVERSION = 1


def _protos(root: FileDescriptor) -> Iterable[FileDescriptor]:
    seen: dict[str, FileDescriptor] = {}
    pending = [root]
    while pending:
        file = pending.pop()
        if file.name not in seen:
            seen[file.name] = file
            pending.extend(file.dependencies)
    return (seen[name] for name in sorted(seen))


#: The conversion and every proto file the Job message is built from.
FORMAT = (
    f"{CONVERSION}:"
    + hashlib.sha256(b"".join(f.serialized_pb for f in _protos(job_pb2.DESCRIPTOR))).hexdigest()[
        :16
    ]
)

#: The version of the job row ``jobs`` (in a statement on the jobs table, as the ORM names it).
VERSION: ColumnClause[str] = literal_column(
    "(jobs.xmin::text || ':' || COALESCE((SELECT string_agg(st.xmin::text, ',' "
    "ORDER BY st.position) FROM job_stages st WHERE st.job_id = jobs.id), ''))"
)

_STORE = text(
    """
    INSERT INTO job_snapshots AS s (job_id, format, version, body)
    SELECT u.job_id, :format, u.version, u.body
      FROM unnest(CAST(:ids AS uuid[]), CAST(:versions AS text[]), CAST(:bodies AS bytea[]))
           AS u(job_id, version, body)
      JOIN jobs j ON j.id = u.job_id
     ORDER BY u.job_id
    ON CONFLICT (job_id) DO UPDATE
       SET format = excluded.format, version = excluded.version, body = excluded.body
    """
)


def usable(
    state: str, version: str, snapshot_format: str | None, snapshot_version: str | None
) -> bool:
    """Whether the snapshot read beside a job (at its ``version``) is that job's message."""
    return (
        snapshot_format == FORMAT
        and snapshot_version == version
        and state in models.TERMINAL_JOB_STATES
    )


async def store(
    sessions: async_sessionmaker[AsyncSession],
    made: Sequence[tuple[uuid.UUID, str, job_pb2.Job]],
) -> None:
    """Keeps the messages of ended jobs (id, the version read before the message was made,
    the serialized message), in a transaction of its own. A cache: a job deleted meanwhile or
    a write that loses a race costs only the next reader's conversion, so failures are
    logged, not raised."""
    if not made:
        return
    params = {
        "format": FORMAT,
        "ids": [job_id for job_id, _, _ in made],
        "versions": [version for _, version, _ in made],
        "bodies": [serialize(job) for _, _, job in made],
    }
    try:
        async with sessions.begin() as session:
            # A cache: its commit need not wait for the WAL's flush (a crash loses at most
            # the last moments' snapshots, never the jobs).
            await session.execute(text("SET LOCAL synchronous_commit = off"))
            await session.execute(_STORE, params)
    except DBAPIError as error:  # a job deleted between the join and the key check
        log.info("job snapshots not stored: %s", error.orig)


def serialize(job: job_pb2.Job) -> bytes:
    return job.SerializeToString(deterministic=True)


def parse(body: bytes) -> job_pb2.Job:
    return job_pb2.Job.FromString(body)
