"""Resumable uploads, ingest's side: bytes become durable parts; the finish verifies, completes
and probes.

Ingest keeps nothing between calls. The gateway holds the record of an upload (the write
token, the part size, the etag of every committed part, and the SHA-256 state after the
committed bytes) and hands ingest what a call needs:

- ``start``: checks the header as an upload's (key, size, content type, SHA-256 format) and
  begins a resumable write in the object store (a multipart upload; a staged local file).
- ``write``: takes the bytes that follow the committed size, hashes them (going on from the
  saved state), cuts them into parts at fixed boundaries — part ``n`` always covers the same
  bytes, so writing it again after a crash replaces it — and stores each part durably. Each
  part it reports, in order, is durable: its etag, the size committed with it, and the hash
  state there. A partial part when the stream ends is dropped (the caller resumes from the
  last boundary), since S3 parts other than the last must be at least 5 MiB. At most
  ``parts_in_flight`` parts are being stored at once, and a slot frees when any of them is
  stored (a slow PUT does not hold back the parts behind it, whose reports wait for it).
  Memory is about ``parts_in_flight + 1`` parts, whatever the file's size.
- ``finish``: the digest from the saved state is checked against the declared SHA-256 before
  anything is visible (a mismatch aborts the write); then the write is completed, the object
  checked and probed as an upload's (``Ingestor.probe_stored``) and, when the media is refused,
  deleted again. A transient failure (storage unreachable, a cancel) leaves the completed
  object for the retry, which finds the completion already done.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from runtime.errors import FailedPrecondition, InvalidArgument, OutOfRange
from runtime.hashstate import BadHashState, Sha256
from runtime.storage import ObjectStore
from runtime.storage.base import Part
from runtime.tasks import shielded
from services.ingest.ingest import IngestedMedia, Ingestor, UploadHeader

#: Pieces at least this large are hashed in a worker thread rather than on the event loop.
HASH_IN_THREAD_BYTES = 256 * 1024


@dataclass(frozen=True)
class PartsTarget:
    """Where a resumable write goes and how it is cut."""

    key: str
    #: "" for the store's bucket.
    bucket: str
    token: str
    size: int
    part_size: int

    def part_count(self) -> int:
        return -(-self.size // self.part_size)

    def part_end(self, number: int) -> int:
        return min(number * self.part_size, self.size)


@dataclass(frozen=True)
class CommittedPart:
    number: int
    etag: str
    #: Bytes committed once this part is: its end offset.
    committed_size: int
    #: The SHA-256 state after those bytes.
    hash_state: bytes


def _resume(state: bytes, size: int) -> Sha256:
    if not state:
        hasher = Sha256()
    else:
        try:
            hasher = Sha256.resume(state)
        except BadHashState as exc:
            raise InvalidArgument(f"bad hash state: {exc}", reason="BAD_HASH_STATE") from None
    if hasher.size != size:
        raise InvalidArgument(
            f"the hash state covers {hasher.size} bytes, not {size}", reason="BAD_HASH_STATE"
        )
    return hasher


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class ResumableWrites:
    def __init__(self, store: ObjectStore, ingestor: Ingestor) -> None:
        self._store = store
        self._ingestor = ingestor

    def _check_target(self, target: PartsTarget) -> None:
        self._store.check_ref(target.bucket, target.key)
        if target.size <= 0 or target.part_size <= 0 or not target.token:
            raise InvalidArgument(
                "a resumable write needs a token, a size and a part size", reason="BAD_WRITE"
            )

    async def start(self, header: UploadHeader) -> tuple[str, int]:
        """Begins a resumable write for ``header``: (token, part size)."""
        header = self._ingestor.check_header(header)
        part_size = self._store.resumable_part_size(header.size)
        token = await self._store.start_resumable(header.key, content_type=header.content_type)
        return token, part_size

    async def write(
        self,
        target: PartsTarget,
        *,
        offset: int,
        hash_state: bytes,
        chunks: AsyncIterator[bytes],
    ) -> AsyncIterator[CommittedPart]:
        """Stores ``chunks`` (the bytes from ``offset``) as parts; yields each part once it is
        durable, in order. The bytes after the last whole part are dropped when ``chunks``
        ends, unless they end the file."""
        self._check_target(target)
        if not 0 <= offset <= target.size or (offset % target.part_size and offset != target.size):
            raise InvalidArgument(
                f"write offset {offset} is not a part boundary", reason="BAD_WRITE_OFFSET"
            )
        hasher = _resume(hash_state, offset)
        position = part_start = offset
        pieces: list[bytes] = []
        inflight: collections.deque[tuple[CommittedPart, asyncio.Future[str]]] = collections.deque()
        iterator = aiter(chunks)
        next_chunk: asyncio.Future[bytes | None] = asyncio.ensure_future(anext(iterator, None))
        try:
            while True:
                waiting: set[asyncio.Future[Any]] = {next_chunk}
                if inflight:
                    waiting.add(inflight[0][1])
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                while inflight and inflight[0][1].done():
                    part, future = inflight.popleft()
                    yield replace(part, etag=future.result())
                if not next_chunk.done():
                    continue
                chunk = next_chunk.result()
                if chunk is None:
                    break
                if position + len(chunk) > target.size:
                    raise OutOfRange(
                        f"bytes past the declared size of {target.size}",
                        reason="WRITE_PAST_END",
                        metadata={"size_bytes": str(target.size)},
                    )
                view = memoryview(chunk)
                while view:
                    number = part_start // target.part_size + 1
                    end = target.part_end(number)
                    piece = view[: end - position]
                    data = chunk if len(piece) == len(chunk) else bytes(piece)
                    if len(data) >= HASH_IN_THREAD_BYTES:
                        await asyncio.to_thread(hasher.update, data)
                    else:
                        hasher.update(data)
                    pieces.append(data)
                    position += len(data)
                    view = view[len(data) :]
                    if position < end:
                        continue
                    # A slot frees when any part is stored, not only the oldest: one slow
                    # PUT must not hold back the parts behind it. Reports stay in order.
                    while (
                        len(uploading := [f for _, f in inflight if not f.done()])
                        >= self._store.parts_in_flight
                    ):
                        await asyncio.wait(uploading, return_when=asyncio.FIRST_COMPLETED)
                    for _, stored in inflight:  # a failed part ends the write at once
                        if stored.done() and not stored.cancelled() and stored.exception():
                            stored.result()
                    while inflight and inflight[0][1].done():
                        part, future = inflight.popleft()
                        yield replace(part, etag=future.result())
                    future = asyncio.ensure_future(
                        self._store.write_part(
                            target.key,
                            target.token,
                            number,
                            offset=part_start,
                            data=b"".join(pieces),
                        )
                    )
                    future.add_done_callback(_retrieve)
                    pieces = []
                    inflight.append((CommittedPart(number, "", end, hasher.state()), future))
                    part_start = end
                next_chunk = asyncio.ensure_future(anext(iterator, None))
            while inflight:
                part, future = inflight.popleft()
                yield replace(part, etag=await future)
        finally:
            next_chunk.cancel()
            next_chunk.add_done_callback(_retrieve)

    async def finish(
        self,
        target: PartsTarget,
        *,
        parts: Sequence[Part],
        hash_state: bytes,
        sha256: str,
        content_type: str,
    ) -> IngestedMedia:
        """The whole file, verified, completed and probed; see the module docstring."""
        self._check_target(target)
        hasher = _resume(hash_state, target.size)
        numbers = [part.number for part in parts]
        if numbers != list(range(1, target.part_count() + 1)):
            raise FailedPrecondition(
                f"the upload has {len(numbers)} of its {target.part_count()} parts",
                reason="UPLOAD_INCOMPLETE",
            )
        digest = hasher.hexdigest()
        if sha256 and digest != sha256.lower():
            await shielded(self._store.abort_resumable(target.key, target.token))
            raise InvalidArgument(
                f"the bytes have SHA-256 {digest}, not the declared {sha256}",
                reason="SHA256_MISMATCH",
            )
        stored = await self._store.complete_resumable(
            target.key,
            target.token,
            list(parts),
            size=target.size,
            sha256=digest,
            content_type=content_type,
        )
        stored, media = await self._ingestor.probe_committed(
            stored, declared_type=content_type, keep_on_transient=True
        )
        return IngestedMedia(object=stored, media=media)
