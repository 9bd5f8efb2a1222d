"""Both ObjectStore backends against the same expectations: the local directory on tmp_path,
and S3 through minio against the loopback SeaweedFS server."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import tracemalloc
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from runtime.errors import Internal, InvalidArgument, NotFound, Unavailable
from runtime.storage import ObjectStore
from runtime.storage.local import LocalObjectStore
from runtime.storage.s3 import S3ObjectStore
from tests.servers import S3Server, run_seaweedfs

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
            # What the bounded-memory test counts on: two parts uploading at a time.
            parts_in_flight=2,
        )
    yield backend
    await backend.close()


async def leftovers(store: ObjectStore) -> list[str]:
    """Everything an aborted write might leave: objects, and incomplete uploads/temp files."""
    found = [f"object:{key}" for key in await store.list_keys("")]
    if isinstance(store, S3ObjectStore):
        uploads = await asyncio.to_thread(store._client._list_multipart_uploads, store.bucket)
        found += [f"upload:{u.object_name}" for u in uploads.uploads]
    if isinstance(store, LocalObjectStore):
        incomplete = store.root / ".incomplete"
        if incomplete.exists():
            found += [f"temp:{p.name}" for p in incomplete.iterdir()]
    return found


async def read_all(store: ObjectStore, key: str) -> bytes:
    return b"".join([chunk async for chunk in store.read(key, chunk_size=64 * 1024)])


async def test_roundtrip(store: ObjectStore, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    stored = await store.put_bytes("videos/v1/source", data, content_type="video/mp4")
    assert stored.key == "videos/v1/source"
    assert stored.bucket == store.bucket
    assert stored.size == len(data)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert stored.content_type == "video/mp4"

    assert await read_all(store, "videos/v1/source") == data
    info = await store.stat("videos/v1/source")
    assert (info.key, info.size, info.content_type) == ("videos/v1/source", len(data), "video/mp4")
    assert info.sha256 == stored.sha256
    assert await store.exists("videos/v1/source")
    assert not await store.exists("videos/v1/other")
    assert await store.list_keys("videos/") == ["videos/v1/source"]
    assert await store.list_keys("videos/v1/s") == ["videos/v1/source"]
    assert await store.list_keys("jobs/") == []

    target = tmp_path / "copy.bin"
    await store.download_file("videos/v1/source", target)
    assert target.read_bytes() == data

    # Overwriting replaces, and stat follows.
    await store.put_bytes("videos/v1/source", b"second", content_type="text/plain")
    assert await read_all(store, "videos/v1/source") == b"second"
    info = await store.stat("videos/v1/source")
    assert (info.size, info.content_type) == (6, "text/plain")
    assert info.sha256 == hashlib.sha256(b"second").hexdigest()

    await store.delete("videos/v1/source")
    await store.delete("videos/v1/source")  # deleting nothing is fine
    assert not await store.exists("videos/v1/source")
    assert await leftovers(store) == []


async def test_streamed_write_hashes_on_the_way_in(store: ObjectStore) -> None:
    chunks = [os.urandom(n) for n in (1, 70_000, 300_000, 0, 5)]
    async with store.open_writer("a/streamed", content_type="application/x-test") as writer:
        for chunk in chunks:
            await writer.write(chunk)
        assert writer.size == sum(map(len, chunks))
        assert writer.sha256 == hashlib.sha256(b"".join(chunks)).hexdigest()
        assert await store.list_keys("") == []  # nothing visible before commit
        stored = await writer.commit()
    assert stored.sha256 == hashlib.sha256(b"".join(chunks)).hexdigest()
    assert await read_all(store, "a/streamed") == b"".join(chunks)


async def test_empty_object(store: ObjectStore) -> None:
    stored = await store.put_bytes("empty", b"", content_type="text/plain")
    assert stored.size == 0
    assert stored.sha256 == hashlib.sha256(b"").hexdigest()
    assert await read_all(store, "empty") == b""
    assert (await store.stat("empty")).size == 0


async def test_content_type_may_change_until_commit(store: ObjectStore) -> None:
    for key, size in (("small", 1000), ("large", PART + 1000)):
        async with store.open_writer(key, content_type="") as writer:
            assert writer.content_type == "application/octet-stream"
            await writer.write(os.urandom(size))
            writer.content_type = "video/mp4"
            stored = await writer.commit()
        info = await store.stat(key)
        assert info.content_type == stored.content_type == "video/mp4"
        assert info.sha256 == stored.sha256


@pytest.mark.parametrize("size", [1000, 2 * PART + 123])
async def test_abort_leaves_nothing(store: ObjectStore, size: int) -> None:
    writer = store.open_writer("videos/aborted", content_type="video/mp4")
    await writer.write(os.urandom(size))
    await writer.abort()
    await writer.abort()  # idempotent
    assert await leftovers(store) == []
    with pytest.raises(RuntimeError):
        await writer.write(b"more")


@pytest.mark.parametrize("size", [1000, 2 * PART + 123])
async def test_error_inside_block_leaves_nothing(store: ObjectStore, size: int) -> None:
    async def fail_midway() -> None:
        async with store.open_writer("videos/failed", content_type="video/mp4") as writer:
            await writer.write(os.urandom(size))
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        await fail_midway()
    assert await leftovers(store) == []


async def test_cancelled_writer_leaves_nothing(store: ObjectStore) -> None:
    started = asyncio.Event()

    async def upload() -> None:
        async with store.open_writer("videos/cancelled", content_type="video/mp4") as writer:
            for _ in range(100):
                await writer.write(os.urandom(MIB))
                started.set()
            await writer.commit()

    task = asyncio.create_task(upload())
    await started.wait()
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await leftovers(store) == []


async def test_delete_prefix(store: ObjectStore) -> None:
    for key in ("jobs/1/a.mp4", "jobs/1/hls/0.ts", "jobs/10/a.mp4", "jobs/2/a.mp4"):
        await store.put_bytes(key, key.encode(), content_type="application/octet-stream")
    assert await store.delete_prefix("jobs/1/") == 2
    assert await store.list_keys("jobs/") == ["jobs/10/a.mp4", "jobs/2/a.mp4"]
    assert await store.delete_prefix("jobs/nothing/") == 0
    with pytest.raises(InvalidArgument):
        await store.delete_prefix("")
    # A deleted tree does not stand in the way of new keys below it.
    await store.put_bytes("jobs/1/hls/0.ts", b"again", content_type="video/mp2t")
    assert await store.list_keys("jobs/1") == ["jobs/1/hls/0.ts", "jobs/10/a.mp4"]


async def test_presigned_url_is_readable(store: ObjectStore) -> None:
    data = os.urandom(50_000)
    await store.put_bytes("artifacts/x.bin", data, content_type="application/octet-stream")
    url = await store.presigned_get_url("artifacts/x.bin", timedelta(minutes=5))
    if isinstance(store, LocalObjectStore):
        assert url.startswith("file://")
    else:
        assert url.startswith("http://127.0.0.1:")

    def fetch() -> bytes:
        with urllib.request.urlopen(url, timeout=10) as response:
            return bytes(response.read())

    assert await asyncio.to_thread(fetch) == data
    media = await store.media_url("artifacts/x.bin")
    if isinstance(store, LocalObjectStore):
        assert Path(media).is_absolute()
        assert await asyncio.to_thread(Path(media).read_bytes) == data


async def test_missing_objects(store: ObjectStore, tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        await store.stat("no/such/key")
    with pytest.raises(NotFound):
        await read_all(store, "no/such/key")
    with pytest.raises(NotFound):
        await store.download_file("no/such/key", tmp_path / "x")
    with pytest.raises(NotFound):
        await store.presigned_get_url("no/such/key", timedelta(minutes=1))
    with pytest.raises(NotFound):
        await store.media_url("no/such/key")
    await store.put_bytes("no/such", b"x", content_type="text/plain")
    with pytest.raises(NotFound):  # a "directory" is not an object
        await store.stat("no")


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/etc/passwd",
        "../escape",
        "a/../../b",
        "a//b",
        "./a",
        "a/./b",
        "a/",
        "..",
        "a\x00b",
        "a\nb",
        "a\\b",
        "x" * 1025,
    ],
)
async def test_bad_keys_are_rejected(store: ObjectStore, key: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        store.open_writer(key, content_type="text/plain")
    assert caught.value.reason == "BAD_OBJECT_KEY"
    with pytest.raises(InvalidArgument):
        await store.stat(key)
    with pytest.raises(InvalidArgument):
        await store.put_bytes(key, b"x", content_type="text/plain")
    assert await leftovers(store) == []


async def test_bad_prefixes_are_rejected(store: ObjectStore) -> None:
    for prefix in ("/abs", "../x", "a/../", "a\x00"):
        with pytest.raises(InvalidArgument):
            await store.list_keys(prefix)


async def test_abort_incomplete_writes(store: ObjectStore) -> None:
    # A writer whose process "crashed": never committed nor aborted.
    writer = store.open_writer("videos/crashed", content_type="video/mp4")
    await writer.write(os.urandom(PART + 10))
    assert await store.abort_incomplete_writes(timedelta(hours=1)) == 0
    assert await store.abort_incomplete_writes(timedelta(0)) == 1
    assert await leftovers(store) == []
    await writer.abort()  # what is already gone is fine


async def test_abort_incomplete_writes_reads_every_page(
    s3_server: S3Server, s3_bucket: str
) -> None:
    """More unfinished uploads than one listing returns: every page is read and swept, on a
    server that names only the upload id marker of the next page (SeaweedFS) as on S3."""
    store = S3ObjectStore(
        endpoint=s3_server.endpoint,
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
        bucket=s3_bucket,
    )
    store.uploads_page_size = 2
    try:
        client = s3_server.client()
        for n in range(5):
            key = f"jobs/{n}/crashed"
            await asyncio.to_thread(client._create_multipart_upload, s3_bucket, key, {})
        assert await store.abort_incomplete_writes(timedelta(0)) == 5
        assert await leftovers(store) == []
    finally:
        await store.close()


async def test_check(store: ObjectStore) -> None:
    await store.check()


async def test_large_object_streams_in_bounded_memory(store: ObjectStore) -> None:
    size = 64 * MIB
    chunk = 256 * 1024
    expected = hashlib.sha256()
    tracemalloc.start()
    try:
        async with store.open_writer("big/object", content_type="video/mp4") as writer:
            for n in range(size // chunk):
                data = os.urandom(chunk)
                expected.update(data)
                await writer.write(data)
                if isinstance(store, S3ObjectStore) and n == (3 * PART) // chunk:
                    # Parts are uploaded while the stream goes on, not at the end.
                    uploads = await asyncio.to_thread(
                        store._client._list_multipart_uploads, store.bucket
                    )
                    [upload] = uploads.uploads
                    assert upload.upload_id is not None
                    parts = await asyncio.to_thread(
                        store._client._list_parts, store.bucket, "big/object", upload.upload_id
                    )
                    assert len(parts.parts) >= 1
            stored = await writer.commit()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stored.size == size
    assert stored.sha256 == expected.hexdigest()
    # At most two parts uploading, one buffered, one being cut, plus slack: a third of the object.
    assert peak < 4 * PART + 2 * MIB
    assert peak < size / 3
    info = await store.stat("big/object")
    assert info.size == size and info.sha256 == expected.hexdigest()

    check = hashlib.sha256()
    async for piece in store.read("big/object"):
        check.update(piece)
    assert check.hexdigest() == expected.hexdigest()
    assert await leftovers(store) == ["object:big/object"]


async def test_local_key_conflict_is_a_precondition(tmp_path: Path) -> None:
    from runtime.errors import FailedPrecondition

    store = LocalObjectStore(tmp_path)
    await store.put_bytes("a", b"file", content_type="text/plain")
    with pytest.raises(FailedPrecondition):
        await store.put_bytes("a/b", b"below a file", content_type="text/plain")
    assert await leftovers(store) == ["object:a"]


async def test_public_url_signs_client_urls_for_the_public_host(
    s3_server: S3Server, s3_bucket: str
) -> None:
    port = s3_server.endpoint.rsplit(":", 1)[1]
    store = S3ObjectStore(
        endpoint=s3_server.endpoint,
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
        bucket=s3_bucket,
        public_url=f"http://localhost:{port}",
    )
    try:
        data = os.urandom(1000)
        await store.put_bytes("a/b.bin", data, content_type="application/octet-stream")
        public = await store.presigned_get_url("a/b.bin", timedelta(minutes=5))
        internal = await store.media_url("a/b.bin")
        assert public.startswith(f"http://localhost:{port}/")
        assert internal.startswith(f"http://{s3_server.endpoint}/")

        def fetch(url: str) -> bytes:
            with urllib.request.urlopen(url, timeout=10) as response:
                return bytes(response.read())

        # The signature holds for the public host (here an alias of the same server).
        assert await asyncio.to_thread(fetch, public) == data
        assert await asyncio.to_thread(fetch, internal) == data
    finally:
        await store.close()
    for bad in ("ftp://x", "https://cdn.example.com/prefix", "localhost:9000"):
        with pytest.raises(ValueError, match="public URL"):
            S3ObjectStore("127.0.0.1:1", "a", "b", "c", public_url=bad)


async def test_s3_server_checks_signatures(s3_server: S3Server, s3_bucket: str) -> None:
    """The test S3 server is no pushover: a wrong secret and an unsigned read are refused."""
    store = S3ObjectStore(
        endpoint=s3_server.endpoint,
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key + "-not",
        bucket=s3_bucket,
    )
    try:
        with pytest.raises(Internal) as caught:
            await store.put_bytes("a/b.bin", b"x", content_type="application/octet-stream")
        assert caught.value.reason == "STORAGE_ERROR"
    finally:
        await store.close()
    s3_server.client().put_object(s3_bucket, "a/b.bin", io.BytesIO(b"x"), 1)
    with pytest.raises(urllib.error.HTTPError) as refused:
        await asyncio.to_thread(urllib.request.urlopen, f"{s3_server.url}/{s3_bucket}/a/b.bin")
    refused.value.close()
    assert refused.value.code == 403


async def test_a_restarting_s3_server_costs_a_wait_not_an_error() -> None:
    """While the S3 server is down (connections refused: nothing was sent), calls are tried again
    for up to ``unreachable_retry_seconds`` and succeed once it is back; with no retry window
    they fail at once with STORAGE_UNAVAILABLE."""
    with run_seaweedfs() as weed:
        server = weed.server

        def open_store(window: float) -> S3ObjectStore:
            return S3ObjectStore(
                endpoint=server.endpoint,
                access_key=server.access_key,
                secret_key=server.secret_key,
                bucket="restarts",
                unreachable_retry_seconds=window,
            )

        patient, impatient = open_store(60.0), open_store(0.0)
        try:
            await patient.put_bytes("a/b.bin", b"kept", content_type="application/octet-stream")
            weed.kill()
            with pytest.raises(Unavailable) as caught:
                await impatient.stat("a/b.bin")
            assert caught.value.reason == "STORAGE_UNAVAILABLE"
            # Back after a while, on the same data and port: the waiting read gets the object.
            restart = asyncio.get_running_loop().run_in_executor(None, weed.start)
            try:
                assert await read_all(patient, "a/b.bin") == b"kept"
            finally:
                await restart  # never leave the server starting behind the test's back
        finally:
            await patient.close()
            await impatient.close()
