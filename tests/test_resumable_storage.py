"""Resumable writes of both ObjectStore backends (the local directory, and S3 through minio
against the loopback SeaweedFS server), and the resumable SHA-256 state behind them."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from runtime.errors import FailedPrecondition, NotFound
from runtime.hashstate import BadHashState, Sha256
from runtime.storage import ObjectStore
from runtime.storage.base import Part
from runtime.storage.local import LocalObjectStore
from runtime.storage.s3 import S3ObjectStore
from tests.servers import S3Server

MIB = 1024 * 1024
PART = 5 * MIB


@pytest.fixture(params=["local", "s3"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ObjectStore]:
    backend: ObjectStore
    if request.param == "local":
        backend = LocalObjectStore(tmp_path / "objects")
    else:
        server: S3Server = request.getfixturevalue("s3_server")
        bucket: str = request.getfixturevalue("s3_bucket")
        backend = S3ObjectStore(
            endpoint=server.endpoint,
            access_key=server.access_key,
            secret_key=server.secret_key,
            bucket=bucket,
            part_size=PART,
            threads=4,
        )
    yield backend
    await backend.close()


async def unfinished(store: ObjectStore) -> list[str]:
    if isinstance(store, S3ObjectStore):
        uploads = await asyncio.to_thread(store._client._list_multipart_uploads, store.bucket)
        return [str(u.object_name) for u in uploads.uploads]
    assert isinstance(store, LocalObjectStore)
    staged = store.root / ".resumable"
    return sorted(p.name for p in staged.iterdir()) if staged.exists() else []


async def read_all(store: ObjectStore, key: str) -> bytes:
    return b"".join([chunk async for chunk in store.read(key)])


async def test_parts_written_out_of_order_and_again_make_exactly_the_file(
    store: ObjectStore,
) -> None:
    data = random.Random(1).randbytes(2 * PART + 1234)
    size = store.resumable_part_size(len(data))
    chunks = [data[i : i + size] for i in range(0, len(data), size)]
    key = "videos/v1/source"
    token = await store.start_resumable(key, content_type="video/mp4")
    assert await unfinished(store)
    etags: dict[int, str] = {}
    # The last part first, a wrong first part, then the right one over it.
    order = [*reversed(range(len(chunks))), 0]
    for turn, index in enumerate(order):
        wrong = turn == len(order) - 2
        body = bytes(len(chunks[index])) if wrong else chunks[index]
        etags[index + 1] = await store.write_part(
            key, token, index + 1, offset=index * size, data=body
        )
    parts = [Part(number, etags[number]) for number in sorted(etags)]
    sha = hashlib.sha256(data).hexdigest()
    stored = await store.complete_resumable(
        key, token, parts, size=len(data), sha256=sha, content_type="video/mp4"
    )
    assert (stored.size, stored.sha256) == (len(data), sha)
    assert await read_all(store, key) == data
    assert (await store.stat(key)).sha256 == sha
    assert await unfinished(store) == []
    # Completing again (a crash before the caller heard of it) finds the object.
    again = await store.complete_resumable(
        key, token, parts, size=len(data), sha256=sha, content_type="video/mp4"
    )
    assert again == stored


async def test_an_aborted_write_is_gone(store: ObjectStore) -> None:
    key = "videos/v2/source"
    token = await store.start_resumable(key, content_type="video/mp4")
    etag = await store.write_part(key, token, 1, offset=0, data=b"x" * 1000)
    await store.abort_resumable(key, token)
    await store.abort_resumable(key, token)  # again: no error
    assert await unfinished(store) == []
    with pytest.raises(NotFound) as gone:
        await store.write_part(key, token, 1, offset=0, data=b"x")
    assert gone.value.reason == "UPLOAD_NOT_FOUND"
    with pytest.raises(NotFound):
        await store.complete_resumable(
            key, token, [Part(1, etag)], size=1000, sha256="0" * 64, content_type=""
        )
    assert await store.list_keys("") == []


async def test_a_prefix_purge_aborts_the_resumable_writes_under_it(store: ObjectStore) -> None:
    kept = await store.start_resumable("videos/keep/source", content_type="")
    await store.start_resumable("videos/gone/source", content_type="")
    await store.write_part("videos/keep/source", kept, 1, offset=0, data=b"k" * 10)
    assert await store.abort_incomplete_writes(timedelta(0), prefix="videos/gone/") == 1
    assert len(await unfinished(store)) == (1 if isinstance(store, S3ObjectStore) else 2)
    # The age sweep (no prefix) takes what is idle long enough: everything, at 0 s.
    assert await store.abort_incomplete_writes(timedelta(0)) >= 1
    assert await unfinished(store) == []


async def test_local_bytes_that_are_not_the_described_ones_are_a_conflict(
    tmp_path: Path,
) -> None:
    """Two writers of one part (a superseded one finishing late) could leave bytes the
    caller's digest does not describe: the local store hashes the staged file once more."""
    store = LocalObjectStore(tmp_path / "objects")
    key = "videos/v3/source"
    token = await store.start_resumable(key, content_type="")
    await store.write_part(key, token, 1, offset=0, data=b"a" * 100)
    with pytest.raises(FailedPrecondition) as conflict:
        await store.complete_resumable(
            key,
            token,
            [Part(1, "")],
            size=100,
            sha256=hashlib.sha256(b"b" * 100).hexdigest(),
            content_type="",
        )
    assert conflict.value.reason == "UPLOAD_CONFLICT"
    assert not await store.exists(key)


def test_sha256_state_resumes_anywhere() -> None:
    rng = random.Random(7)
    data = rng.randbytes(3 * MIB + 17)
    hasher = Sha256()
    position = 0
    while position < len(data):
        step = rng.choice([0, 1, 63, 64, 65, 4096, 200_001])
        hasher.update(data[position : position + step])
        position += step
        hasher = Sha256.resume(hasher.state())  # as if in another process
        assert hasher.size == min(position, len(data))
    assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()
    assert hasher.hexdigest() == hasher.hexdigest()  # reading the digest ends nothing


@pytest.mark.parametrize("state", [b"", b"\x01" * 10, b"\x02" + bytes(40), Sha256().state() + b"x"])
def test_a_bad_sha256_state_is_refused(state: bytes) -> None:
    with pytest.raises(BadHashState):
        Sha256.resume(state)
