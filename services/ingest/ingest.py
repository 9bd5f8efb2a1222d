"""Storing media: size and SHA-256 checked, probed, and committed only when whole.

Uploads (``Ingestor.ingest``) and URL imports (``services.ingest.url_import``) share one path,
``Ingestor.store``. The bytes go two ways as they arrive, in constant memory: into the object
store's two-phase writer (multipart parts upload while the stream goes on) and into a
per-request scratch file that the probe reads. Only when every check passes is the object
committed; anything else (a bad upload, a failed download, a failed probe, a cancelled call)
aborts the write, and the scratch directory is removed whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

from runtime.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted
from runtime.storage import ObjectStore, StoredObject
from runtime.tasks import shielded
from services.ingest.probe import DEFAULT_LIMITS, MediaInfo, MediaLimits, probe

log = logging.getLogger(__name__)

SCRATCH_PREFIX = "ingest-"
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_TOKEN = r"[A-Za-z0-9!#$&^_.+-]+"
_CONTENT_TYPE = re.compile(rf"{_TOKEN}/{_TOKEN}(\s*;[\x20-\x7e]*)?")
#: What a declared content type may say the bytes are (it is stored and served with them).
_MEDIA_TYPES = ("video/", "audio/", "application/octet-stream", "application/mp4")


@dataclass(frozen=True)
class UploadHeader:
    """What the caller declares before the bytes."""

    key: str
    #: "" for the store's bucket.
    bucket: str
    size: int
    #: Lower-case hex, or "" when the caller gave none.
    sha256: str
    #: "" lets the probe decide.
    content_type: str


@dataclass(frozen=True)
class IngestedMedia:
    object: StoredObject
    media: MediaInfo


class _Spool:
    """The scratch copy of an upload: written in a worker thread, never closed under a write."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._file: IO[bytes] | None = None
        self._pending: asyncio.Future[None] | None = None

    def _write(self, data: bytes) -> None:
        if self._file is None:
            self._file = self._path.open("xb")
        self._file.write(data)

    async def write(self, data: bytes) -> None:
        self._pending = asyncio.get_running_loop().run_in_executor(None, self._write, data)
        await asyncio.shield(self._pending)

    async def close(self) -> None:
        """Waits for a write still running, then closes the file (safe to call again)."""
        if self._pending is not None and not self._pending.done():
            await asyncio.wait([self._pending])
        if self._file is not None:
            await asyncio.to_thread(self._file.close)


async def finish(cleanup: Coroutine[Any, Any, None]) -> None:
    """Runs ``cleanup`` to the end even if the caller is cancelled again meanwhile (grpc.aio
    may cancel a handler more than once when its client goes away)."""
    await shielded(cleanup)


class Ingestor:
    """Stores uploads and probes stored objects."""

    def __init__(
        self,
        store: ObjectStore,
        *,
        scratch_dir: Path,
        max_upload_bytes: int,
        probe_timeout: float,
        limits: MediaLimits = DEFAULT_LIMITS,
    ) -> None:
        self._store = store
        self._limits = limits
        self._scratch_dir = scratch_dir
        self._max_upload_bytes = max_upload_bytes
        self._probe_timeout = probe_timeout

    # -- checks ------------------------------------------------------------------------------

    def check_header(self, header: UploadHeader) -> UploadHeader:
        """The header with its SHA-256 normalised; raises ``InvalidArgument`` when it is bad."""
        self._store.check_ref(header.bucket, header.key)
        if header.size < 0:
            raise InvalidArgument("size_bytes must not be negative", reason="INVALID_SIZE")
        if header.size == 0:
            raise InvalidArgument("the upload declares zero bytes", reason="EMPTY_UPLOAD")
        if header.size > self._max_upload_bytes:
            raise ResourceExhausted(
                f"the upload declares {header.size} bytes; the limit is {self._max_upload_bytes}",
                reason="UPLOAD_TOO_LARGE",
            )
        if header.sha256 and not _SHA256.fullmatch(header.sha256):
            raise InvalidArgument("sha256 must be 64 hexadecimal characters", reason="BAD_SHA256")
        if header.content_type and (
            len(header.content_type) > 255 or not _CONTENT_TYPE.fullmatch(header.content_type)
        ):
            raise InvalidArgument(
                "content_type must look like 'type/subtype'", reason="INVALID_CONTENT_TYPE"
            )
        if header.content_type and not header.content_type.lower().startswith(_MEDIA_TYPES):
            raise InvalidArgument(
                f"content_type {header.content_type!r} is not a video or audio type",
                reason="INVALID_CONTENT_TYPE",
            )
        return UploadHeader(
            key=header.key,
            bucket=header.bucket,
            size=header.size,
            sha256=header.sha256.lower(),
            content_type=header.content_type,
        )

    # -- ingest ------------------------------------------------------------------------------

    def _make_scratch(self) -> Path:
        self._scratch_dir.mkdir(parents=True, exist_ok=True)
        scratch = self._scratch_dir / f"{SCRATCH_PREFIX}{uuid.uuid4().hex}"
        scratch.mkdir(mode=0o700)
        return scratch

    async def ingest(self, header: UploadHeader, chunks: AsyncIterator[bytes]) -> IngestedMedia:
        """Stores ``chunks`` at ``header.key`` once they prove to be the declared, whole media."""
        header = self.check_header(header)

        async def declared(chunks: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
            received = 0
            async for chunk in chunks:
                received += len(chunk)
                if received > header.size:
                    raise InvalidArgument(
                        f"more bytes arrived than the {header.size} declared",
                        reason="SIZE_MISMATCH",
                    )
                yield chunk

        def verify(received: int, sha256: str) -> None:
            if received == 0:
                raise InvalidArgument("no bytes followed the header", reason="EMPTY_UPLOAD")
            if received < header.size:
                raise InvalidArgument(
                    f"the stream ended after {received} of the {header.size} declared bytes",
                    reason="TRUNCATED_UPLOAD",
                )
            if header.sha256 and sha256 != header.sha256:
                raise InvalidArgument(
                    f"the bytes have SHA-256 {sha256}, not the declared {header.sha256}",
                    reason="SHA256_MISMATCH",
                )

        return await self.store(
            header.key, declared(chunks), content_type=header.content_type, verify=verify
        )

    def check_destination(self, bucket: str, key: str) -> None:
        """Raises ``InvalidArgument`` when (bucket, key) is not somewhere this store can write."""
        self._store.check_ref(bucket, key)

    async def store(
        self,
        key: str,
        chunks: AsyncGenerator[bytes, None],
        *,
        content_type: str,
        verify: Callable[[int, str], None],
        deadline: float | None = None,
    ) -> IngestedMedia:
        """The one path from bytes to a committed, probed object, for uploads and imports.

        ``chunks`` go to the object writer and the scratch file as they arrive; then
        ``verify(size, sha256)`` judges the whole, the probe judges the media, and only then is
        the object committed. ``deadline`` (event-loop time) bounds the arrival of the bytes,
        not the probe: past it, ``DeadlineExceeded`` (DOWNLOAD_TIMEOUT). Whatever happens, the
        scratch directory goes and an uncommitted write is aborted; ``chunks`` is closed.
        """
        scratch = await asyncio.to_thread(self._make_scratch)
        upload = scratch / "upload"
        spool = _Spool(upload)
        try:
            async with (
                contextlib.aclosing(chunks),
                self._store.open_writer(key, content_type=content_type) as writer,
            ):
                received = 0
                try:
                    async with asyncio.timeout_at(deadline):
                        async for chunk in chunks:
                            received += len(chunk)
                            await writer.write(chunk)
                            await spool.write(chunk)
                except TimeoutError:
                    raise DeadlineExceeded(
                        f"the bytes did not all arrive in time ({received} arrived)",
                        reason="DOWNLOAD_TIMEOUT",
                    ) from None
                await spool.close()
                verify(received, writer.sha256)
                media = await probe(
                    upload, size=received, timeout=self._probe_timeout, limits=self._limits
                )
                if not content_type:
                    writer.content_type = media.content_type
                stored = await writer.commit()
            log.info(
                "ingested",
                extra={"key": stored.key, "size": stored.size, "container": media.container},
            )
            return IngestedMedia(object=stored, media=media)
        finally:
            await finish(self._remove_scratch(spool, scratch))

    @staticmethod
    async def _remove_scratch(spool: _Spool, scratch: Path) -> None:
        await spool.close()
        await asyncio.to_thread(shutil.rmtree, scratch, ignore_errors=True)

    # -- probe -------------------------------------------------------------------------------

    async def probe_object(self, bucket: str, key: str) -> MediaInfo:
        """Probes an object already in the store (``NotFound`` when it is not)."""
        self._store.check_ref(bucket, key)
        info = await self._store.stat(key)
        url = await self._store.media_url(key)
        source: Path | str = url if url.startswith(("http://", "https://")) else Path(url)
        return await probe(source, size=info.size, timeout=self._probe_timeout, limits=self._limits)

    async def probe_stored(self, key: str, size: int) -> MediaInfo:
        """Probes a stored upload with every check ``store`` makes on its scratch copy: the
        container's framing (truncation, external data references) is read in ranges from the
        store's URL when the object is not a local file."""
        url = await self._store.media_url(key)
        source: Path | str = url if url.startswith(("http://", "https://")) else Path(url)
        return await probe(
            source,
            size=size,
            timeout=self._probe_timeout,
            limits=self._limits,
            check_structure=True,
        )

    # -- housekeeping ------------------------------------------------------------------------

    def _sweep_scratch(self, older_than: timedelta) -> int:
        cutoff = time.time() - older_than.total_seconds()
        removed = 0
        if not self._scratch_dir.is_dir():
            return 0
        for path in self._scratch_dir.glob(f"{SCRATCH_PREFIX}*"):
            try:
                # A long upload keeps writing its file while its directory's mtime stands still.
                touched = max(p.stat().st_mtime for p in (path, *path.iterdir()))
            except (FileNotFoundError, NotADirectoryError):
                continue
            if touched <= cutoff:
                shutil.rmtree(path, ignore_errors=True)
                removed += 1
        return removed

    async def sweep(self, older_than: timedelta) -> dict[str, Any]:
        """Removes what crashed processes left: scratch dirs and uncommitted writes."""
        scratch = await asyncio.to_thread(self._sweep_scratch, older_than)
        writes = await self._store.abort_incomplete_writes(older_than)
        return {"scratch_dirs": scratch, "incomplete_writes": writes}
