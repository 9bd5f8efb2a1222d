"""The record of resumable uploads in Postgres: sessions and their committed parts.

An upload row is the truth about what is committed. Only its current writer (or finisher)
moves it on: a ``WriteUpload`` takes the upload over (``claim_write``; the newest write wins,
so a client that reconnects is never locked out by its own dead stream), and every part it
records is fenced by that claim and by the committed size it extends, so a superseded write
records nothing. A part is recorded only after the object store has it durably; a part stored
but not recorded (a crash in between) is simply written again, at the same offset, by the
write that resumes.

Owner scoping is as for videos: another owner's upload is NOT_FOUND, and so is an expired one.
Unfinished uploads reserve their declared size against the owner's storage limit
(``gateway.store.stored_bytes``) from the start.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.convert import timestamp, video_to_proto
from gateway.db import models
from gateway.keys import video_prefix
from gateway.purges import request_purge
from gateway.store import insert_video, lock_owner, parse_id, storage_full, stored_bytes
from reelmill.v1 import media_pb2, upload_pb2
from runtime.errors import Aborted, FailedPrecondition, NotFound
from runtime.storage.base import Part

#: Expired uploads removed per transaction by the sweep.
SWEEP_BATCH = 100


@dataclass(frozen=True)
class Target:
    """Where an upload's bytes go, as the object store knows it."""

    upload_id: uuid.UUID
    video_id: uuid.UUID
    bucket: str
    key: str
    token: str
    size: int
    part_size: int


@dataclass(frozen=True)
class WriteClaim:
    target: Target
    #: Fences everything this write records.
    writer: uuid.UUID
    committed: int
    hash_state: bytes


@dataclass(frozen=True)
class FinishClaim:
    target: Target
    writer: uuid.UUID
    parts: list[Part]
    hash_state: bytes
    filename: str
    content_type: str
    sha256: str


def upload_to_proto(row: models.Upload) -> upload_pb2.Upload:
    return upload_pb2.Upload(
        id=str(row.id),
        filename=row.filename,
        content_type=row.content_type,
        size_bytes=row.size_bytes,
        sha256=row.sha256,
        committed_size=row.committed_size,
        state=upload_pb2.UploadState.Value(f"UPLOAD_STATE_{row.state}"),
        video_id=str(row.video_id) if row.state == "FINISHED" else "",
        create_time=timestamp(row.create_time),
        expire_time=timestamp(row.expire_time),
        part_size=row.part_size,
    )


def _target(row: models.Upload) -> Target:
    assert row.write_token is not None
    return Target(
        upload_id=row.id,
        video_id=row.video_id,
        bucket=row.bucket,
        key=row.object_key,
        token=row.write_token,
        size=row.size_bytes,
        part_size=row.part_size,
    )


def _not_found(upload_id: object) -> NotFound:
    return NotFound(f"upload {upload_id} not found", reason="UPLOAD_NOT_FOUND")


def _committed(row: models.Upload) -> dict[str, str]:
    return {"committed_size": str(row.committed_size), "size_bytes": str(row.size_bytes)}


class UploadRecords:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        expiry: timedelta,
        purge_delay: timedelta,
    ) -> None:
        self.sessions = sessions
        #: How long an upload lives after it starts.
        self.expiry = expiry
        self.purge_delay = purge_delay

    async def _row(
        self, session: AsyncSession, owner: str, upload_id: str, *, lock: bool = False
    ) -> models.Upload:
        """The owner's live upload (locked with ``lock``); NOT_FOUND when missing, another
        owner's, expired or not yet started."""
        parsed = parse_id(upload_id, "upload_id")
        query = select(models.Upload, models.Upload.expire_time <= func.now()).where(
            models.Upload.id == parsed
        )
        if lock:
            query = query.with_for_update()
        found = (await session.execute(query)).one_or_none()
        if found is None or found[0].owner != owner or found[0].write_token is None:
            raise _not_found(upload_id)
        row, expired = found
        if expired:
            raise NotFound(f"upload {upload_id} expired", reason="UPLOAD_EXPIRED")
        return row

    # -- start ---------------------------------------------------------------------------------

    async def create(
        self,
        owner: str,
        *,
        video_id: uuid.UUID,
        bucket: str,
        key: str,
        filename: str,
        content_type: str,
        size: int,
        sha256: str,
        max_stored_bytes: int,
    ) -> uuid.UUID:
        """A new upload row (not yet writable: it has no write token); with
        ``max_stored_bytes``, refused unless its size fits the owner's storage limit, counted
        with their videos and their other unfinished uploads (serialised per owner)."""
        upload_id = uuid.uuid4()
        async with self.sessions.begin() as session:
            if max_stored_bytes:
                await lock_owner(session, "videos", owner)
                used = await stored_bytes(session, owner)
                if used + size > max_stored_bytes:
                    raise storage_full(used, size, max_stored_bytes)
            session.add(
                models.Upload(
                    id=upload_id,
                    owner=owner,
                    video_id=video_id,
                    bucket=bucket,
                    object_key=key,
                    filename=filename,
                    content_type=content_type,
                    size_bytes=size,
                    sha256=sha256,
                    state="ACTIVE",
                    expire_time=func.now() + self.expiry,
                )
            )
        return upload_id

    async def started(
        self, owner: str, upload_id: uuid.UUID, *, token: str, part_size: int
    ) -> upload_pb2.Upload:
        async with self.sessions.begin() as session:
            await session.execute(
                update(models.Upload)
                .where(models.Upload.id == upload_id)
                .values(write_token=token, part_size=part_size, update_time=func.now())
            )
            return upload_to_proto(await self._row(session, owner, str(upload_id)))

    async def discard(self, upload_id: uuid.UUID, video_id: uuid.UUID, *, reason: str) -> None:
        """Forgets an upload that cannot succeed; whatever it stored (parts, an object that a
        finish completed) is purged."""
        async with self.sessions.begin() as session:
            await session.execute(delete(models.Upload).where(models.Upload.id == upload_id))
            await request_purge(
                session, video_prefix(video_id), reason=reason, delay=self.purge_delay
            )

    # -- read ----------------------------------------------------------------------------------

    async def get(self, owner: str, upload_id: str) -> upload_pb2.Upload:
        async with self.sessions() as session:
            return upload_to_proto(await self._row(session, owner, upload_id))

    # -- write ---------------------------------------------------------------------------------

    async def claim_write(self, owner: str, upload_id: str, offset: int) -> WriteClaim:
        """Takes the upload over for a write starting at ``offset``, which must be the
        committed size (FAILED_PRECONDITION WRITE_OFFSET_MISMATCH otherwise, naming it)."""
        async with self.sessions.begin() as session:
            row = await self._row(session, owner, upload_id, lock=True)
            if row.state != "ACTIVE":
                raise FailedPrecondition(
                    f"upload {upload_id} is {row.state.lower()}: it takes no more writes",
                    reason="UPLOAD_NOT_ACTIVE",
                    metadata=_committed(row),
                )
            if offset != row.committed_size:
                raise FailedPrecondition(
                    f"write_offset {offset} is not the committed size {row.committed_size}; "
                    "resume from the committed size",
                    reason="WRITE_OFFSET_MISMATCH",
                    metadata=_committed(row),
                )
            writer = uuid.uuid4()
            row.writer = writer
            row.update_time = func.now()
            return WriteClaim(
                target=_target(row),
                writer=writer,
                committed=row.committed_size,
                hash_state=row.hash_state or b"",
            )

    async def record_part(
        self, claim: WriteClaim, number: int, *, etag: str, end: int, hash_state: bytes
    ) -> None:
        """Records a durable part; ABORTED (UPLOAD_SUPERSEDED) when another write took the
        upload over, NOT_FOUND when it expired meanwhile."""
        target = claim.target
        start = (number - 1) * target.part_size
        if number < 1 or end != min(start + target.part_size, target.size):
            raise FailedPrecondition(
                f"part {number} ending at {end} does not fit the upload", reason="BAD_PART"
            )
        async with self.sessions.begin() as session:
            moved = await session.execute(
                update(models.Upload)
                .where(
                    models.Upload.id == target.upload_id,
                    models.Upload.writer == claim.writer,
                    models.Upload.state == "ACTIVE",
                    models.Upload.committed_size == start,
                    models.Upload.expire_time > func.now(),
                )
                .values(committed_size=end, hash_state=hash_state, update_time=func.now())
            )
            if moved.rowcount != 1:  # type: ignore[attr-defined]
                exists = await session.scalar(
                    select(models.Upload.id).where(
                        models.Upload.id == target.upload_id,
                        models.Upload.expire_time > func.now(),
                    )
                )
                if exists is None:
                    raise NotFound(f"upload {target.upload_id} expired", reason="UPLOAD_EXPIRED")
                raise Aborted(
                    f"another write took upload {target.upload_id} over",
                    reason="UPLOAD_SUPERSEDED",
                )
            session.add(
                models.UploadPart(
                    upload_id=target.upload_id,
                    part_number=number,
                    etag=etag,
                    size_bytes=end - start,
                )
            )

    # -- finish --------------------------------------------------------------------------------

    async def finished_video(self, owner: str, upload_id: str) -> media_pb2.Video | None:
        """The video of a finished upload, None while it is not finished."""
        async with self.sessions() as session:
            row = await self._row(session, owner, upload_id)
            if row.state != "FINISHED":
                return None
            video = await session.get(models.Video, row.video_id)
            if video is None:
                raise NotFound(
                    f"the video of upload {upload_id} was deleted", reason="VIDEO_NOT_FOUND"
                )
            return video_to_proto(video)

    async def claim_finish(self, owner: str, upload_id: str) -> FinishClaim | None:
        """Takes a fully committed upload over to finish it; None when it already finished.
        FAILED_PRECONDITION UPLOAD_INCOMPLETE (naming the committed size) before every byte
        is committed. A finish that stopped half-way (FINISHING) is taken over."""
        async with self.sessions.begin() as session:
            row = await self._row(session, owner, upload_id, lock=True)
            if row.state == "FINISHED":
                return None
            if row.committed_size != row.size_bytes:
                raise FailedPrecondition(
                    f"upload {upload_id} has {row.committed_size} of its {row.size_bytes} bytes "
                    "committed; write the rest first",
                    reason="UPLOAD_INCOMPLETE",
                    metadata=_committed(row),
                )
            writer = uuid.uuid4()
            row.state = "FINISHING"
            row.writer = writer
            row.update_time = func.now()
            parts = (
                await session.scalars(
                    select(models.UploadPart)
                    .where(models.UploadPart.upload_id == row.id)
                    .order_by(models.UploadPart.part_number)
                )
            ).all()
            return FinishClaim(
                target=_target(row),
                writer=writer,
                parts=[Part(p.part_number, p.etag) for p in parts],
                hash_state=row.hash_state or b"",
                filename=row.filename,
                content_type=row.content_type,
                sha256=row.sha256,
            )

    async def finish(
        self, owner: str, claim: FinishClaim, video: media_pb2.Video, *, max_stored_bytes: int
    ) -> media_pb2.Video:
        """Records the stored video and the upload as finished, in one transaction fenced by
        the claim (ABORTED UPLOAD_SUPERSEDED when another finish took over); with
        ``max_stored_bytes`` the owner's limit is checked again, as ``Store.add_video`` does
        (this upload's reservation becomes the video)."""
        target = claim.target
        async with self.sessions.begin() as session:
            moved = await session.execute(
                update(models.Upload)
                .where(
                    models.Upload.id == target.upload_id,
                    models.Upload.writer == claim.writer,
                    models.Upload.state == "FINISHING",
                )
                .values(state="FINISHED", hash_state=None, update_time=func.now())
            )
            if moved.rowcount != 1:  # type: ignore[attr-defined]
                raise Aborted(
                    f"another finish took upload {target.upload_id} over",
                    reason="UPLOAD_SUPERSEDED",
                )
            await session.execute(
                delete(models.UploadPart).where(models.UploadPart.upload_id == target.upload_id)
            )
            return await insert_video(
                session,
                owner,
                video,
                max_stored_bytes=max_stored_bytes,
                excluding_upload=target.upload_id,
            )

    # -- expiry --------------------------------------------------------------------------------

    async def sweep_expired(self) -> int:
        """Removes uploads expired for longer than the purge delay (any replica; ``SKIP
        LOCKED``): an unfinished one's bytes are purged with it (parts, or an object a finish
        completed without recording it); a finished one's video stays. Returns how many went.

        Until then a write or finish is told UPLOAD_EXPIRED rather than UPLOAD_NOT_FOUND, so
        what a caller hears right after the expiry does not depend on when a sweep ran."""
        removed = 0
        while True:
            async with self.sessions.begin() as session:
                rows = (
                    await session.scalars(
                        select(models.Upload)
                        .where(models.Upload.expire_time <= func.now() - self.purge_delay)
                        .order_by(models.Upload.expire_time)
                        .limit(SWEEP_BATCH)
                        .with_for_update(skip_locked=True)
                    )
                ).all()
                for row in rows:
                    if row.state != "FINISHED":
                        await request_purge(
                            session,
                            video_prefix(row.video_id),
                            reason="upload_expired",
                            delay=self.purge_delay,
                        )
                if rows:
                    await session.execute(
                        delete(models.Upload).where(models.Upload.id.in_([r.id for r in rows]))
                    )
            removed += len(rows)
            if len(rows) < SWEEP_BATCH:
                return removed
