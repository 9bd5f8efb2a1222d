"""The ``ObjectStore`` interface.

Writes are two-phase: ``open_writer`` returns an ``ObjectWriter`` that streams bytes in
(hashing them with SHA-256 on the way), and the object becomes visible only on ``commit()``.
Leaving the ``async with`` block without a commit (an error, a cancel, a failed check) aborts
the write and leaves nothing behind. Memory stays bounded by the backend's part size.

Resumable writes (``start_resumable``, ``write_part``, ``complete_resumable``,
``abort_resumable``) outlive the process that began them: a token names the write, each part
is durable once ``write_part`` returns (an S3 multipart part; a fsynced range of a staged local
file), and whoever holds the token and the parts' etags completes it later, from any process.
Parts have one size (``resumable_part_size``) except the last, so part ``n`` always covers the
same bytes and writing it again replaces it.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import TracebackType

from runtime.errors import InvalidArgument, NotFound
from runtime.storage.keys import validate_key

CHUNK_SIZE = 1024 * 1024


@dataclass(frozen=True)
class StoredObject:
    """An object that was written and committed."""

    key: str
    bucket: str
    size: int
    sha256: str
    content_type: str


@dataclass(frozen=True)
class Part:
    """A durable part of a resumable write."""

    #: 1-based; part ``n`` covers bytes ``[(n - 1) * part_size, n * part_size)``.
    number: int
    #: What the backend answered for it (S3's ETag); completing checks it.
    etag: str


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    content_type: str
    #: SHA-256 recorded at write time, if the object was written by reelmill.
    sha256: str | None


class ObjectWriter(abc.ABC):
    """Streams one object in; commit makes it visible, anything else discards it."""

    key: str
    size: int
    #: Recorded with the object at ``commit()``; may be changed until then (e.g. once a probe
    #: has decided what the bytes are).
    content_type: str

    @property
    @abc.abstractmethod
    def sha256(self) -> str:
        """Lower-case hex digest of the bytes written so far."""

    @abc.abstractmethod
    async def write(self, data: bytes) -> None: ...

    async def staged_file(self) -> Path | None:
        """A local file holding every byte written so far, readable before ``commit()`` (the
        local store stages the object in one), or None when the bytes are elsewhere (S3's
        multipart parts, readable only once committed). Writing again after reading it is
        fine; the file is gone with the writer."""
        return None

    @abc.abstractmethod
    async def commit(self) -> StoredObject: ...

    @abc.abstractmethod
    async def abort(self) -> None:
        """Discards everything written; safe to call more than once."""

    async def __aenter__(self) -> ObjectWriter:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.abort()


class ObjectStore(abc.ABC):
    bucket: str
    #: Parts one write stores at once (a multipart upload's parts; a resumable write's).
    parts_in_flight: int = 2

    def check_ref(self, bucket: str, key: str, *, what: str = "object") -> str:
        """``key``, when (``bucket``, ``key``) may name an object of this store: the bucket is
        this store's ("" stands for it) and the key is a valid key. ``InvalidArgument``
        otherwise: UNKNOWN_BUCKET, MISSING_OBJECT_KEY ("an {what} key is required") or
        BAD_OBJECT_KEY."""
        if bucket and bucket != self.bucket:
            raise InvalidArgument(
                f"bucket {bucket!r} is not this store's ({self.bucket!r})",
                reason="UNKNOWN_BUCKET",
            )
        if not key:
            raise InvalidArgument(f"an {what} key is required", reason="MISSING_OBJECT_KEY")
        return validate_key(key)

    @abc.abstractmethod
    def open_writer(self, key: str, *, content_type: str) -> ObjectWriter:
        """A writer for ``key``; use it as an async context manager."""

    async def put_file(self, key: str, path: Path, *, content_type: str) -> StoredObject:
        """Stores a local file (streamed, hashed)."""
        async with self.open_writer(key, content_type=content_type) as writer:
            async for chunk in _read_file(path):
                await writer.write(chunk)
            return await writer.commit()

    async def put_bytes(self, key: str, data: bytes, *, content_type: str) -> StoredObject:
        async with self.open_writer(key, content_type=content_type) as writer:
            await writer.write(data)
            return await writer.commit()

    # -- resumable writes ------------------------------------------------------------------

    @abc.abstractmethod
    def resumable_part_size(self, size: int) -> int:
        """The part size of a resumable write of ``size`` bytes."""

    @abc.abstractmethod
    async def start_resumable(self, key: str, *, content_type: str) -> str:
        """Begins a resumable write to ``key``; returns the token that names it."""

    @abc.abstractmethod
    async def write_part(
        self, key: str, token: str, number: int, *, offset: int, data: bytes
    ) -> str:
        """Stores part ``number`` (the bytes at ``offset``) durably; returns its etag. Writing
        a part again replaces it. ``NotFound`` (UPLOAD_NOT_FOUND) when the write is gone."""

    @abc.abstractmethod
    async def complete_resumable(
        self, key: str, token: str, parts: list[Part], *, size: int, sha256: str, content_type: str
    ) -> StoredObject:
        """Makes the object of ``parts`` (every part, in order) visible, with ``sha256`` (the
        caller's digest of those bytes) recorded. Completing again a write that already
        completed (a crash after completing) returns the object when it has ``size`` bytes.
        FAILED_PRECONDITION (UPLOAD_CONFLICT) when the stored bytes are not the parts'."""

    @abc.abstractmethod
    async def abort_resumable(self, key: str, token: str) -> None:
        """Discards a resumable write; no error when it is already gone."""

    @abc.abstractmethod
    def read(self, key: str, *, chunk_size: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
        """Streams an object's bytes. Raises ``NotFound`` when it does not exist."""

    async def read_range(
        self, key: str, start: int, length: int, *, chunk_size: int = CHUNK_SIZE
    ) -> AsyncIterator[bytes]:
        """Streams ``length`` bytes of an object from ``start`` (an HTTP range request). This
        default reads from the beginning; backends that can seek override it."""
        position = 0
        end = start + length
        async for chunk in self.read(key, chunk_size=chunk_size):
            lo, hi = max(start - position, 0), min(end - position, len(chunk))
            position += len(chunk)
            if lo < hi:
                yield chunk[lo:hi]
            if position >= end:
                return

    @abc.abstractmethod
    async def download_file(self, key: str, path: Path) -> None:
        """Copies an object to a local file."""

    @abc.abstractmethod
    async def stat(self, key: str) -> ObjectInfo:
        """Raises ``NotFound`` when the object does not exist."""

    async def exists(self, key: str) -> bool:
        try:
            await self.stat(key)
        except NotFound:
            return False
        return True

    @abc.abstractmethod
    async def set_content_type(self, stored: StoredObject, content_type: str) -> StoredObject:
        """``stored`` (a committed object) recorded with ``content_type`` instead: for an
        object whose type was known only once its bytes were stored and probed."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Deletes one object; no error when it does not exist."""

    @abc.abstractmethod
    async def delete_prefix(self, prefix: str) -> int:
        """Deletes every object under ``prefix``; returns how many."""

    @abc.abstractmethod
    async def list_keys(self, prefix: str) -> list[str]: ...

    @abc.abstractmethod
    async def presigned_get_url(self, key: str, expires: timedelta) -> str:
        """A URL that reads the object without credentials until it expires
        (``file://`` for the local backend)."""

    @abc.abstractmethod
    async def media_url(self, key: str) -> str:
        """Where ffmpeg/PyAV can read the object from: a local path, or a presigned http(s) URL."""

    @abc.abstractmethod
    async def abort_incomplete_writes(self, older_than: timedelta, *, prefix: str = "") -> int:
        """Removes the leftovers of writes that never committed (crashed processes), started
        more than ``older_than`` ago; with ``prefix``, only those of keys under it (where the
        backend can tell which key an unfinished write was for)."""

    @abc.abstractmethod
    async def check(self) -> None:
        """Raises when the store is unreachable (health checks)."""

    async def close(self) -> None:  # noqa: B027 (a no-op unless the backend holds resources)
        """Releases threads and connections."""


async def _read_file(path: Path, chunk_size: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
    with path.open("rb") as handle:
        while chunk := await asyncio.to_thread(handle.read, chunk_size):
            yield chunk
