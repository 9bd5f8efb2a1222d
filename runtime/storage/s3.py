"""The S3 object store, through the (blocking) minio client.

Every minio call runs in a ``ThreadPoolExecutor`` of ``threads`` workers; nothing blocks the
event loop.

Writes pipeline: ``write()`` buffers at most one part; each full part is uploaded as a multipart
part in the pool while the producer keeps streaming, with at most ``parts_in_flight`` parts
uploading at once (the producer waits for a free slot, which is the backpressure). Memory per
writer is therefore bounded by about ``(parts_in_flight + 2) * part_size`` whatever the object
size.

- An object no larger than one part is sent on ``commit()`` as a single PUT, carrying its
  content type and SHA-256 (user metadata ``x-amz-meta-sha256``).
- A larger one is completed on ``commit()``. S3 fixes metadata when a multipart upload is
  *created*, before the digest is known, so the digest goes into an object tag (``sha256``),
  a metadata-only call that copies no data; ``stat`` reads it from there. Only when the
  content type changed after the upload began is the object copied onto itself with its final
  metadata (a server-side copy; a multipart copy above 5 GiB). Between completing and tagging,
  the object is visible without its sha256; if tagging fails, the object is deleted and the
  commit fails.
- ``abort()`` aborts the multipart upload after the parts in flight have finished.

A resumable write is a multipart upload whose id is the token: each ``write_part`` is one
UploadPart (durable when S3 answers), and ``complete_resumable`` completes it with the recorded
etags, so the object is exactly the parts whose etags the caller recorded (S3 refuses a stale
etag, InvalidPart: UPLOAD_CONFLICT; SeaweedFS keeps every upload of a part and takes the one
named). Its parts are ``resumable_part_size`` bytes: the store's part size, or more when the
object would need more than 10,000 parts.

This uses minio's multipart primitives (``_create_multipart_upload``, ``_upload_part``,
``_complete_multipart_upload``, ``_abort_multipart_upload``, ``_list_multipart_uploads``):
``put_object`` only takes metadata before the first byte, surfaces part failures only once the
whole stream was read, and leaves its upload threads blocked forever when its source raises.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import io
import logging
import urllib.parse
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import urllib3
from minio import Minio
from minio.commonconfig import REPLACE, CopySource, Tags
from minio.datatypes import Part
from minio.deleteobjects import DeleteObject
from minio.error import MinioException, S3Error, ServerError

from reelmill.retry import Backoff, retry
from runtime.errors import (
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    ReelmillError,
    Unavailable,
)
from runtime.storage.base import CHUNK_SIZE, ObjectInfo, ObjectStore, StoredObject
from runtime.storage.base import Part as StoredPart
from runtime.storage.keys import validate_key, validate_prefix
from runtime.storage.staged import StagedWriter

log = logging.getLogger(__name__)

T = TypeVar("T")

MIN_PART_SIZE = 5 * 1024 * 1024
MAX_PART_SIZE = 5 * 1024 * 1024 * 1024
MAX_PARTS = 10_000
SHA256_HEADER = "x-amz-meta-sha256"
#: Object tag holding the SHA-256 of objects written in several parts.
SHA256_TAG = "sha256"
DEFAULT_CONTENT_TYPE = "application/octet-stream"
MEDIA_URL_EXPIRY = timedelta(hours=1)

_NOT_FOUND_CODES = {"NoSuchKey", "NoSuchObject", "NoSuchBucket", "ResourceNotFound"}
_TRANSIENT_CODES = {
    "SlowDown",
    "ServiceUnavailable",
    "InternalError",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "XMinioServerNotInitialized",
}


def translate(exc: BaseException, key: str = "") -> BaseException:
    """The domain error for an exception from minio/urllib3; other exceptions pass through."""
    if isinstance(exc, ReelmillError):
        return exc
    if isinstance(exc, S3Error):
        if exc.code in _NOT_FOUND_CODES:
            what = f"object {key!r}" if key else "bucket"
            return NotFound(f"{what} does not exist", reason="OBJECT_NOT_FOUND")
        if exc.code in _TRANSIENT_CODES:
            return Unavailable(f"object store is busy ({exc.code})", reason="STORAGE_UNAVAILABLE")
        return Internal(f"S3 error {exc.code}: {exc.message}", reason="STORAGE_ERROR")
    if isinstance(exc, ServerError):
        return Unavailable(
            f"object store answered HTTP {exc.status_code}", reason="STORAGE_UNAVAILABLE"
        )
    if isinstance(exc, (MinioException, urllib3.exceptions.HTTPError, OSError)):
        return Unavailable(
            f"object store unreachable: {type(exc).__name__}", reason="STORAGE_UNAVAILABLE"
        )
    return exc


class _S3Writer(StagedWriter):
    def __init__(self, store: S3ObjectStore, key: str, content_type: str) -> None:
        super().__init__(
            key, bucket=store.bucket, content_type=content_type, executor=store._executor
        )
        self._store = store
        self._client = store._client
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._upload_id: str | None = None
        self._next_part = 1
        self._parts: list[tuple[int, asyncio.Future[str]]] = []
        self._completed = False
        self._created_content_type = content_type

    def _translate(self, exc: BaseException) -> BaseException:
        return translate(exc, self.key)

    # -- parts -------------------------------------------------------------------------------

    def _take(self, size: int) -> bytes:
        """The first ``size`` buffered bytes, as one part."""
        pieces: list[bytes] = []
        need = size
        while need:
            chunk = self._chunks[0]
            if len(chunk) <= need:
                pieces.append(self._chunks.popleft())
                need -= len(chunk)
            else:
                pieces.append(chunk[:need])
                self._chunks[0] = chunk[need:]
                need = 0
        self._buffered -= size
        return b"".join(pieces)

    def _uploading(self) -> list[asyncio.Future[str]]:
        return [future for _, future in self._parts if not future.done()]

    def _raise_failed_part(self) -> None:
        for _, future in self._parts:
            if future.done() and not future.cancelled() and future.exception() is not None:
                exc = future.exception()
                assert exc is not None
                translated = self._translate(exc)
                if translated is exc:
                    raise exc
                raise translated from exc

    async def _start_upload(self) -> None:
        if self._upload_id is None:
            await self._store._ensure_bucket()
            headers = {"Content-Type": self.content_type}
            self._created_content_type = self.content_type
            future = self._spawn(
                self._client._create_multipart_upload, self.bucket, self.key, headers
            )
            try:
                self._upload_id = await asyncio.shield(future)
            except asyncio.CancelledError:
                # The thread still creates the upload: keep its id so abort() can remove it.
                with contextlib.suppress(Exception):
                    self._upload_id = await asyncio.wait_for(asyncio.shield(future), 30)
                raise
            except Exception as exc:
                raise self._translate(exc) from exc

    async def _wait_for_slot(self) -> None:
        while len(uploading := self._uploading()) >= self._store.parts_in_flight:
            await asyncio.wait(uploading, return_when=asyncio.FIRST_COMPLETED)
        self._raise_failed_part()

    def _upload_part(self, data: bytes) -> None:
        if self._next_part > MAX_PARTS:
            raise InvalidArgument(
                f"object is larger than {MAX_PARTS} parts of {self._store.part_size} bytes",
                reason="OBJECT_TOO_LARGE",
            )
        number = self._next_part
        self._next_part += 1
        future = self._spawn(
            self._client._upload_part, self.bucket, self.key, data, None, self._upload_id, number
        )
        self._parts.append((number, future))

    # -- StagedWriter ------------------------------------------------------------------------

    async def _write(self, data: bytes) -> None:
        self._raise_failed_part()
        self._chunks.append(data)
        self._buffered += len(data)
        # Strictly more than a part: the last part is then never empty.
        while self._buffered > self._store.part_size:
            await self._start_upload()
            await self._wait_for_slot()
            self._upload_part(self._take(self._store.part_size))

    async def _commit(self) -> StoredObject:
        stored = StoredObject(
            key=self.key,
            bucket=self.bucket,
            size=self.size,
            sha256=self.sha256,
            content_type=self.content_type,
        )
        if self._upload_id is None:
            data = self._take(self._buffered)
            await self._store._ensure_bucket()
            await self._run(
                self._client.put_object,
                self.bucket,
                self.key,
                io.BytesIO(data),
                len(data),
                content_type=stored.content_type,
                metadata={SHA256_HEADER: stored.sha256},
                part_size=max(len(data), MIN_PART_SIZE),
            )
            return stored
        await self._wait_for_slot()
        self._upload_part(self._take(self._buffered))
        await self._drain()
        self._raise_failed_part()
        parts = [Part(number, future.result()) for number, future in self._parts]
        self._parts.clear()
        await self._run(
            self._client._complete_multipart_upload, self.bucket, self.key, self._upload_id, parts
        )
        self._completed = True
        try:
            if self.content_type == self._created_content_type:
                # The digest as an object tag: a metadata-only call, no copy of the data.
                tags = Tags.new_object_tags()
                tags[SHA256_TAG] = stored.sha256
                await self._run(self._client.set_object_tags, self.bucket, self.key, tags)
                return stored
            # The content type changed after the upload began: rewrite the metadata.
            return await self._store.set_content_type(stored, stored.content_type)
        except Exception:
            await self._store.delete(self.key)
            raise

    async def _discard(self) -> None:
        self._chunks.clear()
        self._buffered = 0
        self._parts.clear()
        if self._upload_id is not None and not self._completed:
            await self._run(
                self._client._abort_multipart_upload, self.bucket, self.key, self._upload_id
            )

    async def _undo_commit(self) -> None:
        await self._store.delete(self.key)


#: Between tries of a server that cannot be reached.
UNREACHABLE_BACKOFF = Backoff(initial=0.25, maximum=2.0)


def unreachable_for_now(exc: Exception) -> bool:
    """Whether ``exc`` says the server cannot serve yet, in a way that makes trying again safe:
    nothing was sent (``never_sent``), or urllib3 gave up after 5xx answers, which it retries
    only for idempotent methods (a SeaweedFS that is still starting answers 500)."""
    if never_sent(exc):
        return True
    return isinstance(exc, urllib3.exceptions.MaxRetryError) and isinstance(
        exc.reason, urllib3.exceptions.ResponseError
    )


def never_sent(exc: Exception) -> bool:
    """Whether ``exc`` says no connection was made (refused, unresolvable, connect timeout):
    the request never reached the server, so repeating it is safe for every call."""
    if isinstance(exc, urllib3.exceptions.MaxRetryError):
        return never_sent(exc.reason) if isinstance(exc.reason, Exception) else False
    return isinstance(
        exc,
        (
            urllib3.exceptions.NewConnectionError,
            urllib3.exceptions.ConnectTimeoutError,
            urllib3.exceptions.NameResolutionError,
            ConnectionRefusedError,
        ),
    )


class S3ObjectStore(ObjectStore):
    """Objects in one S3 bucket; see the module docstring for how writes work."""

    #: Incomplete multipart uploads listed per request by ``abort_incomplete_writes``.
    uploads_page_size = 1000

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        region: str | None = None,
        secure: bool = False,
        part_size: int = 16 * 1024 * 1024,
        threads: int = 8,
        *,
        parts_in_flight: int = 3,
        connect_timeout: float = 10.0,
        read_timeout: float = 120.0,
        public_url: str | None = None,
        unreachable_retry_seconds: float = 15.0,
    ) -> None:
        if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise ValueError(f"part_size must be within 5 MiB..5 GiB, got {part_size}")
        if threads < 1 or parts_in_flight < 1:
            raise ValueError("threads and parts_in_flight must be at least 1")
        self.bucket = bucket
        self.region = region
        self.unreachable_retry_seconds = unreachable_retry_seconds
        self.part_size = part_size
        self.parts_in_flight = parts_in_flight
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="s3")
        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            maxsize=threads,
            retries=urllib3.Retry(
                total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]
            ),
        )
        self._client = Minio(
            endpoint,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region,
            http_client=self._http,
        )
        #: Signs the URLs handed to clients outside the network (``public_url``); signing is
        #: local, so it never connects there. The region is fixed to avoid a lookup.
        self._public = self._client
        if public_url:
            parsed = urllib.parse.urlsplit(public_url)
            if (
                parsed.scheme not in ("http", "https")
                or not parsed.netloc
                or parsed.path.strip("/")
            ):
                raise ValueError(f"public URL must be http(s)://host[:port], got {public_url!r}")
            self._public = Minio(
                parsed.netloc,
                access_key=access_key,
                secret_key=secret_key,
                secure=parsed.scheme == "https",
                region=region or "us-east-1",
                http_client=self._http,
            )
        self._bucket_ready = False
        self._bucket_lock = asyncio.Lock()

    async def _call(self, fn: Callable[..., T], *args: Any, key: str = "", **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in the pool; a server that cannot be reached or cannot serve
        yet (``unreachable_for_now``) is tried again for up to ``unreachable_retry_seconds``."""
        loop = asyncio.get_running_loop()

        def attempt() -> asyncio.Future[T]:
            return loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

        def on_retry(retry_number: int, error: Exception, delay: float) -> None:
            if retry_number == 1:
                log.warning(
                    "object store unreachable; retrying",
                    extra={"error": type(error).__name__, "key": key},
                )

        try:
            if self.unreachable_retry_seconds <= 0:
                return await attempt()
            return await retry(
                attempt,
                retry_on=unreachable_for_now,
                backoff=UNREACHABLE_BACKOFF,
                deadline=loop.time() + self.unreachable_retry_seconds,
                on_retry=on_retry,
            )
        except Exception as exc:
            translated = translate(exc, key)
            if translated is exc:
                raise
            raise translated from exc

    def _make_bucket_sync(self) -> None:
        if self._client.bucket_exists(self.bucket):
            return
        try:
            self._client.make_bucket(self.bucket, location=self.region)
            log.info("created bucket", extra={"bucket": self.bucket})
        except S3Error as exc:
            if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    async def _ensure_bucket(self) -> None:
        if self._bucket_ready:
            return
        async with self._bucket_lock:
            if not self._bucket_ready:
                await self._call(self._make_bucket_sync)
                self._bucket_ready = True

    # -- writes ------------------------------------------------------------------------------

    def open_writer(self, key: str, *, content_type: str) -> _S3Writer:
        return _S3Writer(self, validate_key(key), content_type or DEFAULT_CONTENT_TYPE)

    # -- resumable writes --------------------------------------------------------------------

    def resumable_part_size(self, size: int) -> int:
        needed = -(-size // MAX_PARTS)
        return max(self.part_size, -(-needed // (1024 * 1024)) * 1024 * 1024)

    async def start_resumable(self, key: str, *, content_type: str) -> str:
        validate_key(key)
        await self._ensure_bucket()
        headers = {"Content-Type": content_type or DEFAULT_CONTENT_TYPE}
        upload_id: str = await self._call(
            self._client._create_multipart_upload, self.bucket, key, headers, key=key
        )
        return upload_id

    def _gone(self, key: str) -> NotFound:
        return NotFound(f"the resumable write of {key!r} is gone", reason="UPLOAD_NOT_FOUND")

    def _write_part_sync(self, key: str, token: str, number: int, data: bytes) -> str:
        try:
            return str(self._client._upload_part(self.bucket, key, data, None, token, number))
        except S3Error as exc:
            if exc.code == "NoSuchUpload":
                raise self._gone(key) from None
            raise

    async def write_part(
        self, key: str, token: str, number: int, *, offset: int, data: bytes
    ) -> str:
        validate_key(key)
        if not 1 <= number <= MAX_PARTS:
            raise InvalidArgument(f"part number {number} is out of range", reason="BAD_PART")
        return await self._call(self._write_part_sync, key, token, number, data, key=key)

    def _complete_sync(self, key: str, token: str, parts: list[StoredPart]) -> bool:
        """Completes the upload; False when it no longer exists (completed or aborted)."""
        try:
            self._client._complete_multipart_upload(
                self.bucket, key, token, [Part(p.number, p.etag) for p in parts]
            )
        except S3Error as exc:
            if exc.code == "NoSuchUpload":
                return False
            if exc.code in ("InvalidPart", "InvalidPartOrder", "EntityTooSmall"):
                raise FailedPrecondition(
                    f"the stored parts of {key!r} are not the ones recorded ({exc.code})",
                    reason="UPLOAD_CONFLICT",
                ) from None
            raise
        return True

    async def complete_resumable(
        self,
        key: str,
        token: str,
        parts: list[StoredPart],
        *,
        size: int,
        sha256: str,
        content_type: str,
    ) -> StoredObject:
        validate_key(key)
        if not await self._call(self._complete_sync, key, token, parts, key=key):
            try:
                info = await self.stat(key)
            except NotFound:
                raise self._gone(key) from None
            if info.size != size:
                raise self._gone(key)
        tags = Tags.new_object_tags()
        tags[SHA256_TAG] = sha256
        await self._call(self._client.set_object_tags, self.bucket, key, tags, key=key)
        return StoredObject(
            key=key,
            bucket=self.bucket,
            size=size,
            sha256=sha256,
            content_type=content_type or DEFAULT_CONTENT_TYPE,
        )

    def _abort_sync(self, key: str, token: str) -> None:
        try:
            self._client._abort_multipart_upload(self.bucket, key, token)
        except S3Error as exc:
            if exc.code != "NoSuchUpload":
                raise

    async def abort_resumable(self, key: str, token: str) -> None:
        validate_key(key)
        await self._call(self._abort_sync, key, token, key=key)

    # -- reads -------------------------------------------------------------------------------

    async def read(self, key: str, *, chunk_size: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
        validate_key(key)
        response = await self._call(self._client.get_object, self.bucket, key, key=key)
        loop = asyncio.get_running_loop()
        pending: asyncio.Future[bytes] | None = None
        try:
            while True:
                pending = loop.run_in_executor(self._executor, response.read, chunk_size)
                try:
                    chunk = await asyncio.shield(pending)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    raise translate(exc, key) from exc
                if not chunk:
                    return
                yield chunk
        finally:
            # Never close the response under a read still running in the pool.
            if pending is not None and not pending.done():
                await asyncio.wait([pending])
            response.close()
            response.release_conn()

    async def download_file(self, key: str, path: Path) -> None:
        validate_key(key)
        await self._call(self._client.fget_object, self.bucket, key, str(path), key=key)

    async def stat(self, key: str) -> ObjectInfo:
        validate_key(key)
        result = await self._call(self._client.stat_object, self.bucket, key, key=key)
        metadata = result.metadata or {}
        sha256 = metadata.get(SHA256_HEADER) or metadata.get(SHA256_HEADER.title())
        if not sha256:
            tags: dict[str, str] | None = await self._call(
                self._client.get_object_tags, self.bucket, key, key=key
            )
            sha256 = (tags or {}).get(SHA256_TAG)
        return ObjectInfo(
            key=key,
            size=int(result.size or 0),
            content_type=result.content_type or DEFAULT_CONTENT_TYPE,
            sha256=str(sha256) if sha256 else None,
        )

    def _list_sync(self, prefix: str) -> list[str]:
        try:
            return sorted(
                str(item.object_name)
                for item in self._client.list_objects(self.bucket, prefix=prefix, recursive=True)
                if item.object_name and not item.is_dir
            )
        except S3Error as exc:
            if exc.code == "NoSuchBucket":
                return []
            raise

    async def list_keys(self, prefix: str) -> list[str]:
        validate_prefix(prefix)
        return await self._call(self._list_sync, prefix)

    # -- deletes -----------------------------------------------------------------------------

    async def set_content_type(self, stored: StoredObject, content_type: str) -> StoredObject:
        """A copy of the object onto itself with new metadata (S3 has no other way to change
        it; a server-side copy, no bytes through this process)."""
        metadata = {"Content-Type": content_type, SHA256_HEADER: stored.sha256}
        await self._call(
            self._client.copy_object,
            self.bucket,
            stored.key,
            CopySource(self.bucket, stored.key),
            metadata=metadata,
            metadata_directive=REPLACE,
            key=stored.key,
        )
        return replace(stored, content_type=content_type)

    async def delete(self, key: str) -> None:
        validate_key(key)
        with contextlib.suppress(NotFound):
            await self._call(self._client.remove_object, self.bucket, key, key=key)

    def _delete_prefix_sync(self, prefix: str) -> int:
        keys = self._list_sync(prefix)
        if not keys:
            return 0
        errors = list(self._client.remove_objects(self.bucket, (DeleteObject(key) for key in keys)))
        failed = [error for error in errors if error.code not in _NOT_FOUND_CODES]
        if failed:
            raise Unavailable(
                f"could not delete {len(failed)} of {len(keys)} objects under {prefix!r} "
                f"({failed[0].code})",
                reason="STORAGE_UNAVAILABLE",
            )
        return len(keys) - len(errors)

    async def delete_prefix(self, prefix: str) -> int:
        if not prefix:
            raise InvalidArgument("refusing to delete every object", reason="BAD_OBJECT_PREFIX")
        validate_prefix(prefix)
        return await self._call(self._delete_prefix_sync, prefix)

    # -- URLs --------------------------------------------------------------------------------

    async def _presign(self, client: Minio, key: str, expires: timedelta) -> str:
        if not timedelta(seconds=1) <= expires <= timedelta(days=7):
            raise InvalidArgument("expiry must be within 1 s..7 days", reason="BAD_EXPIRY")
        await self.stat(key)
        return await self._call(
            client.presigned_get_object, self.bucket, key, expires=expires, key=key
        )

    async def presigned_get_url(self, key: str, expires: timedelta) -> str:
        """Signed for the public URL when one is configured (clients outside the network)."""
        return await self._presign(self._public, key, expires)

    async def media_url(self, key: str) -> str:
        """Signed for the internal endpoint: ffmpeg inside the network reads from there. The
        object is looked up first, so a missing one is NOT_FOUND here, and a server that is
        restarting is waited for (``unreachable_retry_seconds``) before a decoder meets it."""
        validate_key(key)
        await self._call(self._client.stat_object, self.bucket, key, key=key)
        return await self._presign(self._client, key, MEDIA_URL_EXPIRY)

    # -- housekeeping ------------------------------------------------------------------------

    def _abort_incomplete_sync(self, older_than: timedelta, prefix: str) -> int:
        cutoff = datetime.now(UTC) - older_than
        aborted = 0
        key_marker: str | None = None
        upload_id_marker: str | None = None
        while True:
            try:
                result = self._client._list_multipart_uploads(
                    self.bucket,
                    prefix=prefix or None,
                    key_marker=key_marker,
                    upload_id_marker=upload_id_marker,
                    max_uploads=self.uploads_page_size,
                )
            except S3Error as exc:
                if exc.code == "NoSuchBucket":
                    return aborted
                raise
            for upload in result.uploads:
                started = upload.initiated_time
                if started is not None and started.tzinfo is None:
                    started = started.replace(tzinfo=UTC)
                if upload.upload_id and (started is None or started <= cutoff):
                    try:
                        self._client._abort_multipart_upload(
                            self.bucket, upload.object_name, upload.upload_id
                        )
                        aborted += 1
                    except S3Error as exc:
                        if exc.code != "NoSuchUpload":
                            raise
            if not result.is_truncated:
                return aborted
            # minio 7.2 stores NextUploadIdMarker under a misspelt attribute name. S3 names
            # both markers; SeaweedFS lists by upload id and names only that one.
            markers = (
                result.next_key_marker,
                result.next_upload_id_marker
                or getattr(result, "self._next_upload_id_marker", None),
            )
            if not any(markers) or markers == (key_marker, upload_id_marker):
                return aborted  # no way on, or one back to a page already read
            key_marker, upload_id_marker = markers

    async def abort_incomplete_writes(self, older_than: timedelta, *, prefix: str = "") -> int:
        if prefix:
            validate_prefix(prefix)
        aborted = await self._call(self._abort_incomplete_sync, older_than, prefix)
        if aborted:
            log.info("aborted incomplete multipart uploads", extra={"count": aborted})
        return aborted

    async def check(self) -> None:
        exists = await self._call(self._client.bucket_exists, self.bucket)
        if not exists:
            self._bucket_ready = False
            await self._ensure_bucket()

    async def close(self) -> None:
        await asyncio.to_thread(self._executor.shutdown, wait=True)
        self._http.clear()
