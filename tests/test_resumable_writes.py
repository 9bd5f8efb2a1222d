"""Ingest's side of a resumable write (``services.ingest.resumable.ResumableWrites.write``):
how parts are cut, stored at once and reported, against the local store with one part held
back, as a slow PUT holds one back."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runtime.errors import Unavailable
from runtime.hashstate import Sha256
from runtime.settings import CommonSettings
from runtime.storage.base import Part
from runtime.storage.factory import open_store
from runtime.storage.local import LocalObjectStore
from services.ingest.ingest import Ingestor
from services.ingest.resumable import CommittedPart, PartsTarget, ResumableWrites

PART = 64 * 1024
PARTS = 6
KEY = "videos/v/source"


class HeldStore(LocalObjectStore):
    """Holds part 1 until ``release`` is set (by part ``release_at`` beginning, when given);
    records the order parts begin in; fails part ``fail``, when given."""

    parts_in_flight = 2

    def __init__(self, root: Path, *, release_at: int = 0, fail: int = 0) -> None:
        super().__init__(root)
        self.release = asyncio.Event()
        self.begun: list[int] = []
        self.release_at = release_at
        self.fail = fail

    async def write_part(
        self, key: str, token: str, number: int, *, offset: int, data: bytes
    ) -> str:
        self.begun.append(number)
        if number == self.release_at:
            self.release.set()
        if number == 1:
            await self.release.wait()
        if number == self.fail:
            raise Unavailable("the store went away", reason="STORAGE_UNAVAILABLE")
        return await super().write_part(key, token, number, offset=offset, data=data)


async def chunks(data: bytes, size: int = 20_000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]
        await asyncio.sleep(0)


def writes(store: HeldStore, tmp_path: Path) -> ResumableWrites:
    ingestor = Ingestor(
        store, scratch_dir=tmp_path / "scratch", max_upload_bytes=1 << 30, probe_timeout=10
    )
    return ResumableWrites(store, ingestor)


async def collect(parts: AsyncIterator[CommittedPart], into: list[CommittedPart]) -> None:
    async with asyncio.timeout(20):
        async for part in parts:
            into.append(part)


async def test_a_slow_part_does_not_hold_back_the_parts_behind_it(tmp_path: Path) -> None:
    store = HeldStore(tmp_path / "objects", release_at=3)
    data = os.urandom(PART * PARTS - 1000)  # the last part is short
    token = await store.start_resumable(KEY, content_type="video/mp4")
    target = PartsTarget(KEY, "", token, len(data), PART)
    parts = writes(store, tmp_path).write(target, offset=0, hash_state=b"", chunks=chunks(data))

    reported: list[CommittedPart] = []
    await collect(parts, reported)

    # Two parts at once, and part 3 began while part 1 was still held: a slot freed when part
    # 2 was stored (waiting for the oldest part would never have released part 1).
    assert store.begun[:3] == [1, 2, 3]
    # Reported in order, each with the committed size and the hash state at its end.
    assert [p.number for p in reported] == list(range(1, PARTS + 1))
    assert [p.committed_size for p in reported] == [min(n * PART, len(data)) for n in range(1, 7)]
    for part in reported:
        assert Sha256.resume(part.hash_state).hexdigest() == (
            hashlib.sha256(data[: part.committed_size]).hexdigest()
        )
    stored = await store.complete_resumable(
        KEY,
        token,
        [Part(p.number, p.etag) for p in reported],
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        content_type="video/mp4",
    )
    assert stored.size == len(data)
    assert b"".join([c async for c in store.read(KEY)]) == data


async def test_a_failed_part_ends_the_write_without_waiting_for_a_slow_one(
    tmp_path: Path,
) -> None:
    store = HeldStore(tmp_path / "objects", fail=3)
    data = os.urandom(PART * PARTS)
    token = await store.start_resumable(KEY, content_type="video/mp4")
    target = PartsTarget(KEY, "", token, len(data), PART)
    parts = writes(store, tmp_path).write(target, offset=0, hash_state=b"", chunks=chunks(data))

    reported: list[CommittedPart] = []
    with pytest.raises(Unavailable):
        await collect(parts, reported)
    # Part 1 is still held: nothing was reported, and the failure did not wait for it.
    assert not store.release.is_set()
    assert reported == []
    store.release.set()
    await store.abort_resumable(KEY, token)


async def test_the_s3_store_takes_its_parts_in_flight_from_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REELMILL_STORAGE_BACKEND", "s3")
    monkeypatch.setenv("REELMILL_S3_PARTS_IN_FLIGHT", "5")
    store = open_store(CommonSettings())
    try:
        assert store.parts_in_flight == 5
    finally:
        await store.close()
    monkeypatch.delenv("REELMILL_S3_PARTS_IN_FLIGHT")
    store = open_store(CommonSettings())
    try:
        assert store.parts_in_flight == 3  # the default, as minio's put_object sends
    finally:
        await store.close()
