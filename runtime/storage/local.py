"""The local-directory object store (the embedded default).

Layout under ``root``::

    {bucket}/{key}            the objects, nothing else (so listing is a directory walk)
    .meta/{bucket}/{key}      JSON sidecar per object: size, sha256, content_type
    .incomplete/{uuid}        writes in progress; renamed into place on commit
    .resumable/{token}        a resumable write: parts written in place (pwrite) and fsynced
    .resumable/{token}.key    the bucket and key it is for (so a prefix purge finds it)

A write streams into ``.incomplete/`` and is fsynced and ``os.replace``d into place on commit, so
an object appears whole or not at all. All file IO runs in worker threads. Because a directory
cannot also be a file, a key may not be a "directory" of another key here (``a`` and ``a/b``);
such a write fails with FAILED_PRECONDITION (``KEY_CONFLICT``).

A resumable write is one staged file: each part is written at its offset and fsynced, so it
is durable when ``write_part`` returns. ``complete_resumable`` hashes the staged file once
more before renaming it into place: two writers of the same part (a superseded one finishing
late) could otherwise leave bytes that are not the ones the caller's digest describes
(UPLOAD_CONFLICT); S3 rules this out with part etags.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

from runtime.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from runtime.storage.base import CHUNK_SIZE, ObjectInfo, ObjectStore, Part, StoredObject
from runtime.storage.keys import validate_key, validate_prefix
from runtime.storage.staged import StagedWriter

log = logging.getLogger(__name__)

DEFAULT_CONTENT_TYPE = "application/octet-stream"
#: Parts of resumable writes (no backend minimum here; one size keeps the callers' arithmetic
#: the same for both stores).
RESUMABLE_PART_SIZE = 16 * 1024 * 1024
_TOKEN = re.compile(r"[0-9a-f]{32}")


def _not_found(key: str) -> NotFound:
    return NotFound(f"object {key!r} does not exist", reason="OBJECT_NOT_FOUND")


def _conflict(key: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"object key {key!r} conflicts with an existing key that is a prefix of it, or that it "
        "is a prefix of (the local store keeps keys as paths)",
        reason="KEY_CONFLICT",
    )


def _io_error(exc: OSError) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO):
        return Unavailable(
            f"local object store cannot write: {exc.strerror}", reason="STORAGE_UNAVAILABLE"
        )
    return exc


#: The file a health check writes and removes at once in ``.incomplete`` (not an object).
HEALTH_PROBE_PREFIX = "check-"


def _meta_text(stored: StoredObject) -> str:
    """The sidecar of ``stored``."""
    return json.dumps(
        {"size": stored.size, "sha256": stored.sha256, "content_type": stored.content_type}
    )


class _LocalWriter(StagedWriter):
    def __init__(self, store: LocalObjectStore, key: str, content_type: str) -> None:
        super().__init__(key, bucket=store.bucket, content_type=content_type, executor=None)
        self._store = store
        self._temp = store._incomplete / uuid.uuid4().hex
        self._file: IO[bytes] | None = None

    def _translate(self, exc: BaseException) -> BaseException:
        return _io_error(exc) if isinstance(exc, OSError) else exc

    def _open(self) -> IO[bytes]:
        if self._file is None:
            self._store._ensure_dirs()
            self._file = self._temp.open("xb")
        return self._file

    async def _write(self, data: bytes) -> None:
        await self._run(self._write_sync, data)

    def _write_sync(self, data: bytes) -> None:
        self._open().write(data)

    async def staged_file(self) -> Path | None:
        await self._run(self._flush_sync)
        return self._temp

    def _flush_sync(self) -> None:
        self._open().flush()

    async def _commit(self) -> StoredObject:
        return await self._run(self._commit_sync)

    def _commit_sync(self) -> StoredObject:
        handle = self._open()
        handle.flush()
        os.fsync(handle.fileno())
        handle.close()
        stored = StoredObject(
            key=self.key,
            bucket=self.bucket,
            size=self.size,
            sha256=self.sha256,
            content_type=self.content_type,
        )
        meta_temp = self._temp.with_suffix(".meta")
        meta_temp.write_text(_meta_text(stored))
        try:
            self._store._place(self._temp, self._store._object_path(self.key), self.key)
            self._store._place(meta_temp, self._store._meta_path(self.key), self.key)
        finally:
            meta_temp.unlink(missing_ok=True)
        return stored

    async def _discard(self) -> None:
        await self._run(self._discard_sync)

    def _discard_sync(self) -> None:
        if self._file is not None:
            self._file.close()
        self._temp.unlink(missing_ok=True)

    async def _undo_commit(self) -> None:
        await self._store.delete(self.key)


class LocalObjectStore(ObjectStore):
    """Objects as files under ``root``; see the module docstring for the layout."""

    def __init__(self, root: Path, *, bucket: str = "local") -> None:
        if not bucket or "/" in bucket or bucket.startswith("."):
            raise ValueError(f"bad bucket name {bucket!r}")
        self.root = Path(root).absolute()
        self.bucket = bucket
        self._objects = self.root / bucket
        self._meta = self.root / ".meta" / bucket
        self._incomplete = self.root / ".incomplete"
        self._resumable = self.root / ".resumable"
        self._dirs_ready = False

    # -- paths -------------------------------------------------------------------------------

    def _ensure_dirs(self) -> None:
        if not self._dirs_ready:
            for path in (self._objects, self._meta, self._incomplete, self._resumable):
                path.mkdir(parents=True, exist_ok=True)
            self._dirs_ready = True

    def _object_path(self, key: str) -> Path:
        return self._objects / validate_key(key)

    def _meta_path(self, key: str) -> Path:
        return self._meta / validate_key(key)

    def _place(self, source: Path, target: Path, key: str) -> None:
        """``os.replace`` with the parents made; retried if a concurrent delete prunes them."""
        for attempt in range(3):
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(source, target)
                return
            except FileNotFoundError:
                if attempt == 2 or not source.exists():
                    raise
            except (NotADirectoryError, IsADirectoryError, FileExistsError):
                raise _conflict(key) from None

    def _prune(self, directory: Path, top: Path) -> None:
        """Removes empty directories from ``directory`` up to (not including) ``top``."""
        while directory != top and top in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent

    # -- writes ------------------------------------------------------------------------------

    def open_writer(self, key: str, *, content_type: str) -> _LocalWriter:
        return _LocalWriter(self, validate_key(key), content_type or DEFAULT_CONTENT_TYPE)

    # -- resumable writes --------------------------------------------------------------------

    def resumable_part_size(self, size: int) -> int:
        return RESUMABLE_PART_SIZE

    def _staged(self, token: str) -> Path:
        if not _TOKEN.fullmatch(token):
            raise InvalidArgument("not a resumable write token", reason="BAD_WRITE_TOKEN")
        return self._resumable / token

    def _start_sync(self, key: str) -> str:
        self._ensure_dirs()
        token = uuid.uuid4().hex
        staged = self._staged(token)
        staged.with_suffix(".key").write_text(json.dumps({"bucket": self.bucket, "key": key}))
        staged.touch(exist_ok=False)
        return token

    async def start_resumable(self, key: str, *, content_type: str) -> str:
        validate_key(key)
        return await asyncio.to_thread(self._start_sync, key)

    def _gone(self, key: str) -> NotFound:
        return NotFound(f"the resumable write of {key!r} is gone", reason="UPLOAD_NOT_FOUND")

    def _write_part_sync(self, key: str, token: str, offset: int, data: bytes) -> None:
        try:
            fd = os.open(self._staged(token), os.O_WRONLY)
        except FileNotFoundError:
            raise self._gone(key) from None
        try:
            view = memoryview(data)
            while view:
                written = os.pwrite(fd, view, offset)
                view, offset = view[written:], offset + written
            os.fsync(fd)
        finally:
            os.close(fd)

    async def write_part(
        self, key: str, token: str, number: int, *, offset: int, data: bytes
    ) -> str:
        validate_key(key)
        try:
            await asyncio.to_thread(self._write_part_sync, key, token, offset, data)
        except OSError as exc:
            raise _io_error(exc) from exc
        return ""

    def _complete_sync(self, key: str, token: str, size: int, stored: StoredObject) -> None:
        staged = self._staged(token)
        try:
            handle = staged.open("rb+")
        except FileNotFoundError:
            # Completed before (a crash before the caller heard of it), or aborted.
            if os.path.isfile(self._object_path(key)) and self._stat_sync(key).size == size:
                return
            raise self._gone(key) from None
        with handle:
            if os.fstat(handle.fileno()).st_size < size:
                raise FailedPrecondition(
                    f"the resumable write of {key!r} has fewer than {size} bytes",
                    reason="UPLOAD_CONFLICT",
                )
            handle.truncate(size)
            digest = hashlib.sha256()
            while chunk := handle.read(CHUNK_SIZE):
                digest.update(chunk)
            if digest.hexdigest() != stored.sha256:
                raise FailedPrecondition(
                    f"the stored bytes of {key!r} are not the ones the parts described",
                    reason="UPLOAD_CONFLICT",
                )
            os.fsync(handle.fileno())
        meta_temp = staged.with_suffix(".meta")
        meta_temp.write_text(_meta_text(stored))
        try:
            self._place(staged, self._object_path(key), key)
            self._place(meta_temp, self._meta_path(key), key)
        finally:
            meta_temp.unlink(missing_ok=True)
        staged.with_suffix(".key").unlink(missing_ok=True)

    async def complete_resumable(
        self, key: str, token: str, parts: list[Part], *, size: int, sha256: str, content_type: str
    ) -> StoredObject:
        validate_key(key)
        stored = StoredObject(
            key=key,
            bucket=self.bucket,
            size=size,
            sha256=sha256,
            content_type=content_type or DEFAULT_CONTENT_TYPE,
        )
        try:
            await asyncio.to_thread(self._complete_sync, key, token, size, stored)
        except OSError as exc:
            raise _io_error(exc) from exc
        return stored

    def _abort_resumable_sync(self, token: str) -> None:
        staged = self._staged(token)
        for path in (staged, staged.with_suffix(".key")):
            path.unlink(missing_ok=True)

    async def abort_resumable(self, key: str, token: str) -> None:
        await asyncio.to_thread(self._abort_resumable_sync, token)

    # -- reads -------------------------------------------------------------------------------

    def _open_for_read(self, key: str) -> IO[bytes]:
        path = self._object_path(key)
        try:
            handle = path.open("rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise _not_found(key) from None
        if not os.path.isfile(handle.name):
            handle.close()
            raise _not_found(key)
        return handle

    async def read(self, key: str, *, chunk_size: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
        handle = await asyncio.to_thread(self._open_for_read, key)
        try:
            while chunk := await asyncio.to_thread(handle.read, chunk_size):
                yield chunk
        finally:
            handle.close()

    async def read_range(
        self, key: str, start: int, length: int, *, chunk_size: int = CHUNK_SIZE
    ) -> AsyncIterator[bytes]:
        handle = await asyncio.to_thread(self._open_for_read, key)
        try:
            await asyncio.to_thread(handle.seek, start)
            left = length
            while left > 0 and (
                chunk := await asyncio.to_thread(handle.read, min(chunk_size, left))
            ):
                left -= len(chunk)
                yield chunk
        finally:
            handle.close()

    async def download_file(self, key: str, path: Path) -> None:
        def copy() -> None:
            with self._open_for_read(key) as source, Path(path).open("wb") as target:
                shutil.copyfileobj(source, target, CHUNK_SIZE)

        await asyncio.to_thread(copy)

    def _stat_sync(self, key: str) -> ObjectInfo:
        path = self._object_path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise _not_found(key) from None
        if not path.is_file():
            raise _not_found(key)
        meta: dict[str, Any] = {}
        with contextlib.suppress(FileNotFoundError, NotADirectoryError, ValueError):
            meta = json.loads(self._meta_path(key).read_text())
        # A sidecar that does not describe these bytes (a crash between the two renames) is
        # ignored rather than trusted.
        described = meta.get("size") == st.st_size
        return ObjectInfo(
            key=key,
            size=st.st_size,
            content_type=str(meta.get("content_type") or DEFAULT_CONTENT_TYPE),
            sha256=str(meta["sha256"]) if described and meta.get("sha256") else None,
        )

    async def stat(self, key: str) -> ObjectInfo:
        return await asyncio.to_thread(self._stat_sync, key)

    def _list_sync(self, prefix: str) -> list[str]:
        validate_prefix(prefix)
        directory, _, _ = prefix.rpartition("/")
        start = self._objects / directory if directory else self._objects
        keys: list[str] = []
        if not start.is_dir():
            return keys
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames.sort()
            relative = Path(dirpath).relative_to(self._objects).as_posix()
            base = "" if relative == "." else relative + "/"
            for name in filenames:
                key = base + name
                if key.startswith(prefix) and not os.path.islink(os.path.join(dirpath, name)):
                    keys.append(key)
        return sorted(keys)

    async def list_keys(self, prefix: str) -> list[str]:
        return await asyncio.to_thread(self._list_sync, prefix)

    # -- deletes -----------------------------------------------------------------------------

    def _delete_sync(self, key: str) -> bool:
        path = self._object_path(key)
        try:
            path.unlink()
            removed = True
        except (FileNotFoundError, NotADirectoryError):
            removed = False
        except IsADirectoryError:
            return False
        meta = self._meta_path(key)
        with contextlib.suppress(FileNotFoundError, NotADirectoryError, IsADirectoryError):
            meta.unlink()
        self._prune(path.parent, self._objects)
        self._prune(meta.parent, self._meta)
        return removed

    async def set_content_type(self, stored: StoredObject, content_type: str) -> StoredObject:
        retyped = replace(stored, content_type=content_type)
        await asyncio.to_thread(self._write_meta, retyped)
        return retyped

    def _write_meta(self, stored: StoredObject) -> None:
        temp = self._incomplete / f"{uuid.uuid4().hex}.meta"
        self._ensure_dirs()
        temp.write_text(_meta_text(stored))
        try:
            self._place(temp, self._meta_path(stored.key), stored.key)
        finally:
            temp.unlink(missing_ok=True)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._delete_sync, key)

    async def delete_prefix(self, prefix: str) -> int:
        if not prefix:
            raise InvalidArgument("refusing to delete every object", reason="BAD_OBJECT_PREFIX")

        def delete_all() -> int:
            return sum(self._delete_sync(key) for key in self._list_sync(prefix))

        return await asyncio.to_thread(delete_all)

    # -- URLs --------------------------------------------------------------------------------

    async def presigned_get_url(self, key: str, expires: timedelta) -> str:
        await self.stat(key)
        return self._object_path(key).as_uri()

    async def media_url(self, key: str) -> str:
        await self.stat(key)
        return str(self._object_path(key))

    # -- housekeeping ------------------------------------------------------------------------

    def _abort_incomplete_sync(self, older_than: timedelta) -> int:
        cutoff = time.time() - older_than.total_seconds()
        removed = 0
        try:
            entries = list(os.scandir(self._incomplete))
        except FileNotFoundError:
            entries = []
        for entry in entries:
            try:
                if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime <= cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue
        try:
            names = os.listdir(self._resumable)
        except FileNotFoundError:
            names = []
        for token in {name.partition(".")[0] for name in names}:
            if not _TOKEN.fullmatch(token):
                continue
            staged = self._staged(token)
            # The staged file's mtime is its last part's: an idle resumable write (or what a
            # crash left of one, either file).
            touched = [
                p.stat().st_mtime for p in (staged, staged.with_suffix(".key")) if p.exists()
            ]
            if touched and max(touched) <= cutoff:
                self._abort_resumable_sync(token)
                removed += 1
        return removed

    def _resumable_writes(self) -> list[tuple[str, str]]:
        """(token, key) of every resumable write of this bucket."""
        found = []
        try:
            entries = list(os.scandir(self._resumable))
        except FileNotFoundError:
            return []
        for entry in entries:
            token, _, suffix = entry.name.partition(".")
            if suffix != "key" or not _TOKEN.fullmatch(token):
                continue
            with contextlib.suppress(FileNotFoundError, ValueError, KeyError, TypeError):
                target = json.loads(Path(entry.path).read_text())
                if target["bucket"] == self.bucket:
                    found.append((token, str(target["key"])))
        return found

    def _abort_resumable_under(self, prefix: str) -> int:
        removed = 0
        for token, key in self._resumable_writes():
            if key.startswith(prefix):
                self._abort_resumable_sync(token)
                removed += 1
        return removed

    async def abort_incomplete_writes(self, older_than: timedelta, *, prefix: str = "") -> int:
        if prefix:
            # One-shot writes are anonymous temporary files: which key one was for is unknown,
            # so a prefix selects only resumable writes, which name their key (one-shot
            # writers remove their own on abort; the age sweep takes what a crash left).
            validate_prefix(prefix)
            return await asyncio.to_thread(self._abort_resumable_under, prefix)
        removed = await asyncio.to_thread(self._abort_incomplete_sync, older_than)
        if removed:
            log.info("removed incomplete writes", extra={"count": removed})
        return removed

    def _check_sync(self) -> None:
        try:
            self._ensure_dirs()
            probe = self._incomplete / f"{HEALTH_PROBE_PREFIX}{uuid.uuid4().hex}"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            raise Unavailable(
                f"local object store is not writable: {exc.strerror}", reason="STORAGE_UNAVAILABLE"
            ) from exc

    async def check(self) -> None:
        await asyncio.to_thread(self._check_sync)
