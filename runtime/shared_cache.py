"""AI results every replica shares: a cache in the object store, behind the in-process LRU.

A transcript or a video's metadata costs seconds to minutes of CPU (or a paid Gemini call), and
depends only on what ``cache_key`` hashes: the content's SHA-256, the engine, the model, every
option and the code that computes it (``source_digest``). ``SharedCache`` keeps such results
in the object store every service already has, so a second replica, or a restarted process,
answers from it instead of computing again. ``TieredCache`` puts the process's ``ResultCache``
in front: memory first, then the shared cache, then the work; a computed result is written to
both.

Entries live under the reserved prefix ``cache/ai/`` (nothing else writes there, and no job,
video or purge touches it): ``cache/ai/{namespace}/{key[:2]}/{key}.json``, one JSON object::

    {"format": 1, "namespace": "metadata", "key": "<64 hex>",
     "written_at": <unix seconds>, "expires_at": <unix seconds>,
     "sha256": "<of the payload>", "encoding": "utf-8" | "base64", "payload": "..."}

- A write is one whole-object PUT (S3) or a rename into place (the local store): a reader sees
  the previous entry or the new one, never a part. Concurrent writers of a key leave one of
  their entries, each valid.
- An entry is fresh until ``expires_at`` and for at most ``ttl`` after ``written_at`` (so
  lowering the TTL takes effect at once). A stale entry is a miss, and the result computed
  after it overwrites it. To reclaim the space of entries nobody asks for again, expire the
  prefix in the store: an S3 lifecycle rule (``mc ilm rule add --prefix cache/ai/
  --expire-days 30 ALIAS/BUCKET``; every write renews an entry's age), or for the local store
  ``find OBJECTS/local/cache/ai -mtime +30 -delete``. Deleting anything under the prefix at any
  time is safe: it is a cache.
- An entry of another ``format`` (a future layout), or one that does not decode (truncated by
  hand, edited, not JSON, a payload whose digest or shape does not match) is a miss, logged,
  and overwritten by the next result.
- The cache never fails a request: a store that errs or does not answer within ``timeout`` is a
  miss on read; a write that fails is logged, and one still running after ``timeout`` goes on
  in the background while the request returns.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import enum
import functools
import hashlib
import importlib
import json
import logging
import re
import time
import types
import typing
from collections.abc import Callable, Coroutine
from datetime import timedelta
from pathlib import Path
from typing import Any, Generic, Literal, TypeGuard, TypeVar

from opentelemetry import metrics

from runtime.cache import ResultCache
from runtime.errors import NotFound
from runtime.settings import AiServiceSettings
from runtime.storage import ObjectStore
from runtime.tasks import start_detached

log = logging.getLogger(__name__)

T = TypeVar("T")
V = TypeVar("V")

#: Where entries live; reserved for this cache.
PREFIX = "cache/ai/"
#: The entry layout this code writes and reads; any other is a miss (and is overwritten).
FORMAT = 1
#: Entries larger than this are not read (a miss): a bound on what one lookup holds in memory.
MAX_ENTRY_BYTES = 64 * 1024 * 1024
CONTENT_TYPE = "application/json"

_NAMESPACE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_KEY = re.compile(r"[0-9a-f]{64}")

#: What a lookup found.
Outcome = Literal["memory", "hit", "miss", "stale", "incompatible", "corrupt", "error"]

_lookups = metrics.get_meter("reelmill.runtime").create_counter(
    "reelmill.ai_cache.lookups",
    unit="{lookup}",
    description="Result cache lookups by namespace and outcome (memory, hit, miss, stale, "
    "incompatible, corrupt, error)",
)


class CorruptEntry(Exception):
    """An entry (or its payload) that cannot be what this code wrote."""


class IncompatibleEntry(CorruptEntry):
    """An entry of another ``FORMAT`` (written by other code, older or newer)."""


class SharedCache:
    """Bytes by (namespace, key) in ``store``, under ``PREFIX``; see the module docstring."""

    def __init__(
        self,
        store: ObjectStore,
        *,
        ttl: timedelta,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if ttl <= timedelta(0) or timeout <= 0:
            raise ValueError("ttl and timeout must be positive")
        self.store = store
        self.ttl = ttl
        self.timeout = timeout
        self._clock = clock
        #: Lookups by outcome, and writes by result, since start (tests and logs read them).
        self.counts: dict[str, int] = {}

    @staticmethod
    def object_key(namespace: str, key: str) -> str:
        if not _NAMESPACE.fullmatch(namespace):
            raise ValueError(f"bad cache namespace {namespace!r}")
        if not _KEY.fullmatch(key):
            raise ValueError(f"a cache key is 64 lower-case hex digits, got {key!r}")
        return f"{PREFIX}{namespace}/{key[:2]}/{key}.json"

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def count(self, namespace: str, outcome: Outcome) -> None:
        self._count(outcome)
        _lookups.add(1, {"namespace": namespace, "outcome": outcome})

    async def get(self, namespace: str, key: str) -> bytes | None:
        """The entry's payload when there is a fresh, valid one; ``None`` otherwise (absent,
        stale, another format, undecodable, or the store erred or was too slow)."""
        data, outcome = await self.lookup(namespace, key)
        self.count(namespace, outcome)
        return data

    async def lookup(self, namespace: str, key: str) -> tuple[bytes | None, Outcome]:
        """``get`` without counting: the payload or ``None``, and what was found."""
        object_key = self.object_key(namespace, key)
        try:
            raw = await self._bounded(self._read(object_key))
        except CorruptEntry as exc:
            log.warning(
                "shared cache entry is unreadable; treated as a miss and overwritten",
                extra={"cache_key": object_key, "error": str(exc)},
            )
            return None, "corrupt"
        except Exception as exc:  # the store's errors, a timeout: a miss, never a failure
            log.warning(
                "shared cache read failed; treated as a miss",
                extra={"cache_key": object_key, "error": _describe(exc)},
            )
            return None, "error"
        if raw is None:
            return None, "miss"
        try:
            payload, expired = self._decode(raw, namespace, key)
        except IncompatibleEntry as exc:
            log.info(
                "shared cache entry is of another format; treated as a miss and overwritten",
                extra={"cache_key": object_key, "error": str(exc)},
            )
            return None, "incompatible"
        except CorruptEntry as exc:
            log.warning(
                "shared cache entry is unreadable; treated as a miss and overwritten",
                extra={"cache_key": object_key, "error": str(exc)},
            )
            return None, "corrupt"
        if expired:
            return None, "stale"
        return payload, "hit"

    async def put(self, namespace: str, key: str, data: bytes) -> bool:
        """Writes the entry (replacing any); whether it was written within ``timeout``. Never
        raises for the store's failures: they are logged."""
        object_key = self.object_key(namespace, key)
        now = self._clock()
        entry = self._encode(namespace, key, data, now)
        task = start_detached(
            self.store.put_bytes(object_key, entry, content_type=CONTENT_TYPE),
            name=f"cache write {object_key}",
        )
        task.add_done_callback(functools.partial(self._written, object_key))
        try:
            done, _ = await asyncio.wait({task}, timeout=self.timeout)
        except asyncio.CancelledError:
            raise  # the write goes on; _written logs how it ended
        if not done:
            self._count("write_slow")
            log.warning(
                "shared cache write is slow; it goes on in the background",
                extra={"cache_key": object_key, "timeout_seconds": self.timeout},
            )
            return False
        return not task.cancelled() and task.exception() is None

    def _written(self, object_key: str, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            self._count("write_error")
            return
        if (exc := task.exception()) is not None:
            self._count("write_error")
            log.warning(
                "shared cache write failed",
                extra={"cache_key": object_key, "error": _describe(exc)},
            )
        else:
            self._count("write")

    async def _bounded(self, coro: Coroutine[Any, Any, T]) -> T:
        """``coro``'s result within ``timeout``, else ``TimeoutError``; the work left behind is
        cancelled and finishes on its own (a storage thread is never interrupted)."""
        task = start_detached(coro)
        try:
            done, _ = await asyncio.wait({task}, timeout=self.timeout)
        except asyncio.CancelledError:
            task.cancel()
            task.add_done_callback(_retrieve)
            raise
        if not done:
            task.cancel()
            task.add_done_callback(_retrieve)
            raise TimeoutError(f"no answer from the object store within {self.timeout:g} s")
        return task.result()

    async def _read(self, object_key: str) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in self.store.read(object_key):
                size += len(chunk)
                if size > MAX_ENTRY_BYTES:
                    raise CorruptEntry(f"entry is larger than {MAX_ENTRY_BYTES} bytes")
                chunks.append(chunk)
        except NotFound:
            return None
        return b"".join(chunks)

    def _encode(self, namespace: str, key: str, data: bytes, now: float) -> bytes:
        try:
            payload, encoding = data.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            payload, encoding = base64.b64encode(data).decode("ascii"), "base64"
        entry = {
            "format": FORMAT,
            "namespace": namespace,
            "key": key,
            "written_at": now,
            "expires_at": now + self.ttl.total_seconds(),
            "sha256": hashlib.sha256(data).hexdigest(),
            "encoding": encoding,
            "payload": payload,
        }
        return json.dumps(entry, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def _decode(self, raw: bytes, namespace: str, key: str) -> tuple[bytes, bool]:
        """(payload, expired); ``CorruptEntry`` for anything this code would not have written
        (another format included)."""
        try:
            entry = json.loads(raw)
        except (UnicodeDecodeError, ValueError) as exc:
            raise CorruptEntry(f"not JSON: {exc}") from None
        if not isinstance(entry, dict):
            raise CorruptEntry("not a JSON object")
        if entry.get("format") != FORMAT:
            raise IncompatibleEntry(f"format {entry.get('format')!r}, this code reads {FORMAT}")
        if (entry.get("namespace"), entry.get("key")) != (namespace, key):
            raise CorruptEntry("the entry is another key's")
        written, expires = entry.get("written_at"), entry.get("expires_at")
        if not (_is_number(written) and _is_number(expires)):
            raise CorruptEntry("no valid written_at / expires_at")
        payload = entry.get("payload")
        if not isinstance(payload, str):
            raise CorruptEntry("no payload")
        encoding = entry.get("encoding")
        if encoding not in ("utf-8", "base64"):
            raise CorruptEntry(f"unknown encoding {encoding!r}")
        try:
            if encoding == "utf-8":
                data = payload.encode("utf-8")
            else:
                data = base64.b64decode(payload, validate=True)
        except ValueError as exc:  # UnicodeEncodeError and binascii.Error are ValueErrors
            raise CorruptEntry(f"payload does not decode: {exc}") from None
        if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
            raise CorruptEntry("payload does not match its sha256")
        now = self._clock()
        expired = now >= min(float(expires), float(written) + self.ttl.total_seconds())
        return data, expired


class TieredCache(Generic[V]):
    """Results of one kind (``namespace``): the process's ``memory`` first, then ``shared``
    (when there is one), each value stored as ``encode(value)`` and rebuilt with ``decode``."""

    def __init__(
        self,
        memory: ResultCache[V],
        shared: SharedCache | None,
        namespace: str,
        *,
        encode: Callable[[V], bytes],
        decode: Callable[[bytes], V],
    ) -> None:
        self.memory = memory
        self.shared = shared
        self.namespace = namespace
        self._encode = encode
        self._decode = decode

    async def get(self, key: str) -> tuple[V | None, Outcome]:
        """The value and where it came from ("memory", "hit" from the shared cache), or
        ``None`` and why not ("miss", "stale", "corrupt", "error")."""
        value = self.memory.get(key)
        if value is not None:
            if self.shared is not None:
                self.shared.count(self.namespace, "memory")
            return value, "memory"
        if self.shared is None:
            return None, "miss"
        data, outcome = await self.shared.lookup(self.namespace, key)
        if data is not None:
            try:
                value = self._decode(data)
            except Exception as exc:  # a shape this code no longer builds: a miss
                log.warning(
                    "shared cache entry does not decode to a result; treated as a miss and "
                    "overwritten",
                    extra={"namespace": self.namespace, "error": _describe(exc)},
                )
                value, outcome = None, "corrupt"
        self.shared.count(self.namespace, outcome)
        if value is not None:
            self.memory.put(key, value)
        return value, outcome

    async def put(self, key: str, value: V) -> None:
        self.memory.put(key, value)
        if self.shared is not None:
            await self.shared.put(self.namespace, key, self._encode(value))


# -- results as JSON ----------------------------------------------------------------------------


def dumps_result(value: Any) -> bytes:
    """A frozen dataclass (of dataclasses, tuples, enums, str, int, float, bool, None) as JSON;
    ``loads_result`` rebuilds it exactly."""
    return json.dumps(_plain(value), ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def loads_result(cls: type[T], data: bytes) -> T:
    """The ``cls`` that ``dumps_result`` wrote; ``CorruptEntry`` when ``data`` is not one
    (a missing or unknown field, a wrong type: written by other code)."""
    try:
        plain = json.loads(data)
    except ValueError as exc:
        raise CorruptEntry(f"not JSON: {exc}") from None
    result: T = _build(cls, plain, cls.__name__)
    return result


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TypeError(f"cannot store {type(value).__name__} in the result cache")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise CorruptEntry(f"{where}: expected an object")
        fields = [f for f in dataclasses.fields(tp) if f.init]
        names = {f.name for f in fields}
        if set(value) != names:
            raise CorruptEntry(f"{where}: fields differ ({sorted(set(value) ^ names)})")
        hints = _hints(tp)
        return tp(
            **{f.name: _build(hints[f.name], value[f.name], f"{where}.{f.name}") for f in fields}
        )
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list):
            raise CorruptEntry(f"{where}: expected a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_build(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise CorruptEntry(f"{where}: expected {len(args)} items")
        pairs = enumerate(zip(args, value, strict=True))
        return tuple(_build(a, v, f"{where}[{i}]") for i, (a, v) in pairs)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _build(arg, value, where)
            except CorruptEntry:
                continue
        raise CorruptEntry(f"{where}: {value!r} is none of {tp}")
    if origin is dict:
        _, value_type = typing.get_args(tp)
        if not isinstance(value, dict):
            raise CorruptEntry(f"{where}: expected an object")
        return {k: _build(value_type, v, f"{where}[{k!r}]") for k, v in value.items()}
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise CorruptEntry(f"{where}: {value!r} is not one of {typing.get_args(tp)}")
        return value
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise CorruptEntry(f"{where}: {value!r} is no {tp.__name__}") from None
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise CorruptEntry(f"{where}: expected a boolean")
        return value
    if tp is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise CorruptEntry(f"{where}: expected an integer")
        return value
    if tp is float:
        if not _is_number(value):
            raise CorruptEntry(f"{where}: expected a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise CorruptEntry(f"{where}: expected a string")
        return value
    raise TypeError(f"{where}: the result cache cannot rebuild {tp!r}")


# -- keys ----------------------------------------------------------------------------------------


@functools.cache
def source_digest(*packages: str) -> str:
    """SHA-256 of the Python source of ``packages`` (their ``*.py`` files, recursively), for
    cache keys: results computed by other code are never served, so a changed generator (a
    new release, a developer's edit) starts from a cold cache rather than a stale one."""
    digest = hashlib.sha256()
    for name in sorted(packages):
        module = importlib.import_module(name)
        paths = getattr(module, "__path__", None)
        roots = [Path(p) for p in paths] if paths else [Path(str(module.__file__)).parent]
        for root in roots:
            for path in sorted(root.rglob("*.py")):
                digest.update(f"{name}/{path.relative_to(root).as_posix()}\0".encode())
                digest.update(path.read_bytes())
                digest.update(b"\0")
    return digest.hexdigest()


# -- helpers -------------------------------------------------------------------------------------


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


def shared_cache(settings: AiServiceSettings, store: ObjectStore) -> SharedCache | None:
    """The shared cache the settings ask for, over ``store``; ``None`` when it is off."""
    if settings.ai_cache == "off":
        return None
    return SharedCache(
        store,
        ttl=timedelta(days=settings.ai_cache_ttl_days),
        timeout=settings.ai_cache_timeout_seconds,
    )
