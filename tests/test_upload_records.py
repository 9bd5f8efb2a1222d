"""The gateway's record of resumable uploads in a real Postgres (``gateway.uploads.records``):
what a caller hears about an expired upload, whenever the expiry sweep runs."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.db import models
from gateway.uploads.records import UploadRecords
from runtime.errors import NotFound

PURGE_DELAY = timedelta(hours=1)


@pytest.fixture
def records(sessions: async_sessionmaker[AsyncSession]) -> UploadRecords:
    return UploadRecords(sessions, expiry=timedelta(days=1), purge_delay=PURGE_DELAY)


async def started_upload(records: UploadRecords) -> uuid.UUID:
    video_id = uuid.uuid4()
    upload_id = await records.create(
        "alice",
        video_id=video_id,
        bucket="b",
        key=f"videos/{video_id}/source",
        filename="clip.mp4",
        content_type="video/mp4",
        size=10 * 1024 * 1024,
        sha256="",
        max_stored_bytes=0,
    )
    await records.started("alice", upload_id, token="t", part_size=5 * 1024 * 1024)
    return upload_id


async def expire(
    sessions: async_sessionmaker[AsyncSession], upload_id: uuid.UUID, ago: timedelta
) -> None:
    async with sessions.begin() as session:
        await session.execute(
            update(models.Upload)
            .where(models.Upload.id == upload_id)
            .values(expire_time=func.now() - ago)
        )


async def kept(sessions: async_sessionmaker[AsyncSession], upload_id: uuid.UUID) -> bool:
    async with sessions() as session:
        found = await session.scalar(select(models.Upload.id).where(models.Upload.id == upload_id))
    return found is not None


async def test_an_expired_upload_answers_upload_expired_until_the_purge_delay_has_passed(
    records: UploadRecords, sessions: async_sessionmaker[AsyncSession]
) -> None:
    just = await started_upload(records)
    long_ago = await started_upload(records)
    await expire(sessions, just, timedelta(seconds=1))
    await expire(sessions, long_ago, PURGE_DELAY + timedelta(seconds=1))

    # A sweep right after the expiry takes only the upload expired longer than the delay.
    assert await records.sweep_expired() == 1
    assert await kept(sessions, just)
    assert not await kept(sessions, long_ago)

    # So a write or a look right after the expiry hears UPLOAD_EXPIRED, whenever a sweep ran.
    for call in (
        records.claim_write("alice", str(just), 0),
        records.get("alice", str(just)),
    ):
        with pytest.raises(NotFound) as refused:
            await call
        assert refused.value.reason == "UPLOAD_EXPIRED"
    # Once it is gone, the upload is unknown.
    with pytest.raises(NotFound) as gone:
        await records.get("alice", str(long_ago))
    assert gone.value.reason == "UPLOAD_NOT_FOUND"
