"""API keys: long-lived credentials an owner creates for their programs.

A key reads ``rk_<16 hex>_<43 random url-safe characters>``; its first part
(``rk_<16 hex>``) is the public id, the rest 256 random bits. Only a hash of the whole secret is
stored: HMAC-SHA256 with ``REELMILL_API_KEY_PEPPER`` when one is configured (so a copy of the
table alone cannot even be checked against guesses), SHA-256 otherwise; the scheme is
recorded with the hash (``hmac-sha256:…`` / ``sha256:…``) and hashes are compared in
constant time. The secret is returned once, at creation.

Lookups are cached per replica for ``cache_seconds``; a revocation evicts the key from this
replica's cache at once, so other replicas accept a revoked key for at most that long.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.auth import API_KEY_PREFIX, Principal
from gateway.convert import timestamp
from gateway.db import models
from gateway.store import keyset_page
from reelmill.v1 import api_key_service_pb2
from runtime.cache import Lru
from runtime.errors import InvalidArgument, NotFound, Unauthenticated

log = logging.getLogger(__name__)

_ID = re.compile(r"^rk_[0-9a-f]{16}$")
_SECRET = re.compile(r"^(rk_[0-9a-f]{16})_[A-Za-z0-9_-]{43}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_DISPLAY_NAME = 256
#: Cached lookups kept at most per replica.
MAX_CACHED = 10_000


def key_id(value: str) -> str:
    """A well-formed key id, or ValueError."""
    if not _ID.match(value):
        raise ValueError(f"not an API key id: {value[:40]!r}")
    return value


def new_secret() -> tuple[str, str]:
    """(id, secret) of a fresh key."""
    identifier = f"{API_KEY_PREFIX}{secrets.token_hex(8)}"
    return identifier, f"{identifier}_{secrets.token_urlsafe(32)}"


def to_proto(row: models.ApiKey) -> api_key_service_pb2.ApiKey:
    return api_key_service_pb2.ApiKey(
        id=row.id,
        display_name=row.display_name,
        create_time=timestamp(row.create_time),
        revoke_time=timestamp(row.revoke_time),
    )


def validate_display_name(name: str) -> str:
    if len(name) > MAX_DISPLAY_NAME or _CONTROL.search(name):
        raise InvalidArgument(
            f"display_name must be at most {MAX_DISPLAY_NAME} characters without control "
            "characters",
            reason="BAD_DISPLAY_NAME",
        )
    return name.strip()


#: NOTIFY channel announcing a revoked key's id to every gateway.
REVOKED_CHANNEL = "reelmill_api_keys_revoked"


@dataclass(frozen=True)
class _Cached:
    expires: float
    owner: str
    secret_hash: str
    revoked: bool


class ApiKeys:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        pepper: str = "",
        cache_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sessions = sessions
        self.pepper = pepper.encode()
        self.cache_seconds = cache_seconds
        self.clock = clock
        self.cache: Lru[str, _Cached] = Lru(MAX_CACHED if cache_seconds > 0 else 0)

    # hashing ----------------------------------------------------------------------------------

    def digest(self, secret: str) -> str:
        """What is stored for ``secret``."""
        if self.pepper:
            return "hmac-sha256:" + hmac.new(self.pepper, secret.encode(), "sha256").hexdigest()
        return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()

    def matches(self, secret: str, stored: str) -> bool:
        scheme = stored.partition(":")[0]
        if scheme == "hmac-sha256":
            if not self.pepper:
                log.warning("an API key was hashed with a pepper, but none is configured")
                return False
            candidate = self.digest(secret)
        elif scheme == "sha256":
            candidate = "sha256:" + hashlib.sha256(secret.encode()).hexdigest()
        else:
            return False
        return hmac.compare_digest(candidate.encode(), stored.encode())

    # management -------------------------------------------------------------------------------

    async def create(self, owner: str, display_name: str) -> tuple[api_key_service_pb2.ApiKey, str]:
        """A new key of ``owner``, and its secret (the only time it is available)."""
        identifier, secret = new_secret()
        async with self.sessions.begin() as session:
            row = models.ApiKey(
                id=identifier,
                owner=owner,
                display_name=display_name,
                secret_hash=self.digest(secret),
            )
            session.add(row)
            await session.flush()
            await session.refresh(row)
            return to_proto(row), secret

    async def list(
        self, owner: str, size: int, token: str
    ) -> tuple[list[api_key_service_pb2.ApiKey], str]:
        """The owner's keys (revoked ones too), newest first."""
        filters: dict[str, Any] = {"kind": "api_keys"}
        query = select(models.ApiKey).where(models.ApiKey.owner == owner)
        async with self.sessions() as session:
            rows, next_token = await keyset_page(
                session, query, models.ApiKey, size, token, filters, key_id
            )
        return [to_proto(r) for r in rows], next_token

    async def revoke(self, owner: str, identifier: str) -> api_key_service_pb2.ApiKey:
        """Revokes one of the owner's keys; revoking a revoked key changes nothing."""
        if not _ID.match(identifier):
            raise InvalidArgument(
                f"api_key_id must look like rk_<16 hex digits>, got {identifier[:40]!r}",
                reason="BAD_ID",
            )
        async with self.sessions.begin() as session:
            row = await session.get(models.ApiKey, identifier, with_for_update=True)
            if row is None or row.owner != owner:
                raise NotFound(f"API key {identifier} not found", reason="API_KEY_NOT_FOUND")
            if row.revoke_time is None:
                await session.execute(
                    update(models.ApiKey)
                    .where(models.ApiKey.id == identifier)
                    .values(revoke_time=func.now())
                )
                # Every gateway forgets the key at commit (``on_revoked``); the cache bound
                # only matters if a replica misses the notification.
                await session.execute(select(func.pg_notify(REVOKED_CHANNEL, identifier)))
                await session.refresh(row)
        self.cache.pop(identifier)
        log.info("API key revoked", extra={"api_key_id": identifier})
        return to_proto(row)

    def on_revoked(self, identifier: str) -> None:
        """A key was revoked (on any replica): its cached lookup goes."""
        self.cache.pop(identifier)

    # authentication ---------------------------------------------------------------------------

    async def authenticate(self, secret: str) -> Principal:
        match = _SECRET.match(secret)
        if match is None:
            raise Unauthenticated("malformed API key", reason="INVALID_API_KEY")
        identifier = match.group(1)
        entry = await self._lookup(identifier)
        if entry is None or not self.matches(secret, entry.secret_hash):
            raise Unauthenticated("unknown API key", reason="INVALID_API_KEY")
        if entry.revoked:
            raise Unauthenticated("API key revoked", reason="API_KEY_REVOKED")
        return Principal(entry.owner, "api_key", identifier)

    async def _lookup(self, identifier: str) -> _Cached | None:
        now = self.clock()
        cached = self.cache.get(identifier)
        if cached is not None and cached.expires > now:
            return cached
        async with self.sessions() as session:
            row = await session.get(models.ApiKey, identifier)
        if row is None:
            # Unknown ids are not cached: random ids would only fill the cache.
            self.cache.pop(identifier)
            return None
        entry = _Cached(
            expires=now + self.cache_seconds,
            owner=row.owner,
            secret_hash=row.secret_hash,
            revoked=row.revoke_time is not None,
        )
        self.cache.put(identifier, entry)
        return entry
