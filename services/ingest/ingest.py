"""Storing media: size and SHA-256 checked, probed, and kept only when whole.

Uploads (``Ingestor.ingest``) and URL imports (``services.ingest.url_import``) share one path,
``Ingestor.store``. The bytes go once, as they arrive, in constant memory, into the object
store's two-phase writer (multipart parts upload while the stream goes on; the local store
stages a file). A stream that is not the declared whole (size, SHA-256) aborts the write, so
nothing becomes visible. Then the probe judges the media: the local store's staged file
before the commit; with S3, whose parts cannot be read before they are completed, the
committed object, read in HTTP ranges with the same checks (as a resumable upload's finish
does), and an object the probe refuses, or whose probe is interrupted, is deleted again
before the call returns. Only when S3 already holds an object at the key (which a refused
upload must leave as it was) are the bytes also copied to a per-request scratch file as they
arrive and probed before the commit; that directory is removed whatever happens.
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

from runtime.errors import DeadlineExceeded, InvalidArgument, ReelmillError, ResourceExhausted
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
    """A scratch copy of an upload, in a directory of its own: written in a worker thread,
    never closed under a write."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self.path = directory / "upload"
        self._file: IO[bytes] | None = None
        self._pending: asyncio.Future[None] | None = None

    def _write(self, data: bytes) -> None:
        if self._file is None:
            self._file = self.path.open("xb")
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

    async def remove(self) -> None:
        await self.close()
        await asyncio.to_thread(shutil.rmtree, self._directory, ignore_errors=True)


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

        ``chunks`` go to the object writer as they arrive; then ``verify(size, sha256)`` judges
        the whole and the probe judges the media; only an object that passes both stays.
        ``deadline`` (event-loop time) bounds the arrival of the bytes, not the probe: past
        it, ``DeadlineExceeded`` (DOWNLOAD_TIMEOUT). Whatever happens, an uncommitted write is
        aborted, a committed object that fails the probe is deleted, and ``chunks`` is closed.
        """
        spool: _Spool | None = None
        try:
            async with (
                contextlib.aclosing(chunks),
                self._store.open_writer(key, content_type=content_type) as writer,
            ):
                # The bytes are probed where they are (the local store's staged file; with S3,
                # the committed object) unless S3 already holds an object at ``key``: a refused
                # upload must not have replaced it, so those bytes are copied to a scratch file
                # as they arrive and probed before the commit.
                staged = await writer.staged_file()
                if staged is None and await self._store.exists(key):
                    spool = _Spool(await asyncio.to_thread(self._make_scratch))
                    staged = spool.path
                received = 0
                try:
                    async with asyncio.timeout_at(deadline):
                        async for chunk in chunks:
                            received += len(chunk)
                            await writer.write(chunk)
                            if spool is not None:
                                await spool.write(chunk)
                except TimeoutError:
                    raise DeadlineExceeded(
                        f"the bytes did not all arrive in time ({received} arrived)",
                        reason="DOWNLOAD_TIMEOUT",
                    ) from None
                verify(received, writer.sha256)
                if staged is not None:
                    if spool is not None:
                        await spool.close()
                    else:
                        await writer.staged_file()  # flushed
                    media = await probe(
                        staged, size=received, timeout=self._probe_timeout, limits=self._limits
                    )
                    if not content_type:
                        writer.content_type = media.content_type
                    stored = await writer.commit()
                else:
                    stored = await writer.commit()
                    stored, media = await self.probe_committed(stored, declared_type=content_type)
        finally:
            if spool is not None:
                await finish(spool.remove())
        log.info(
            "ingested",
            extra={"key": stored.key, "size": stored.size, "container": media.container},
        )
        return IngestedMedia(object=stored, media=media)

    async def probe_committed(
        self, stored: StoredObject, *, declared_type: str, keep_on_transient: bool = False
    ) -> tuple[StoredObject, MediaInfo]:
        """``probe_stored`` of an object just committed, recorded with the probe's content type
        when none was declared. Unless it passes, the object is deleted again; with
        ``keep_on_transient``, only when the media is refused: after a transient failure or a
        cancel, a resumable upload's retry finds it."""
        try:
            media = await self.probe_stored(stored.key, stored.size)
            if not declared_type and media.content_type != stored.content_type:
                stored = await self._store.set_content_type(stored, media.content_type)
        except BaseException as exc:
            refused = isinstance(exc, ReelmillError) and not exc.transient
            if refused or not keep_on_transient:
                await finish(self._delete_refused(stored.key))
            raise
        return stored, media

    def _make_scratch(self) -> Path:
        self._scratch_dir.mkdir(parents=True, exist_ok=True)
        scratch = self._scratch_dir / f"{SCRATCH_PREFIX}{uuid.uuid4().hex}"
        scratch.mkdir(mode=0o700)
        return scratch

    async def _delete_refused(self, key: str) -> None:
        try:
            await self._store.delete(key)
        except Exception:  # the sweep cannot see a committed object: say where it is
            log.error("could not delete a probed-out upload", extra={"key": key}, exc_info=True)

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
