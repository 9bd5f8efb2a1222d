"""Webhook endpoints and their deliveries, as the owner manages them (WebhookService).

Every query is scoped by owner: another owner's endpoint or delivery looks missing
(NOT_FOUND). A URL is vetted by the same SSRF guard as URL import when it is registered
(scheme, credentials, port, and every address its host resolves to) and again at every
delivery (``gateway.webhooks.delivery``), since what a name resolves to can change.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, cast

import httpcore2
from sqlalchemy import Select, delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.convert import timestamp
from gateway.db import webhooks as tables
from gateway.store import keyset_page, lock_owner, parse_id
from gateway.webhooks.events import BY_NAME, DEFAULT_TYPES, NAMES, EventType
from gateway.webhooks.outbox import DUE_CHANNEL
from gateway.webhooks.secrets import SecretBox, SecretUnreadable
from reelmill.v1 import webhook_service_pb2 as pb
from reelmill.webhooks import new_secret
from runtime.errors import InvalidArgument, NotFound, ResourceExhausted, Unavailable
from runtime.netguard import DEFAULT_SCHEME_PORTS, NetGuard

log = logging.getLogger(__name__)

MAX_URL_LENGTH = 2048
MAX_DESCRIPTION = 256
#: Attempts shown per delivery (the newest).
MAX_ATTEMPTS_SHOWN = 50
#: The longest overlap a rotation may ask for.
MAX_OVERLAP = timedelta(days=7)
#: How long registration waits for the host's addresses.
DNS_TIMEOUT = 10.0
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MESSAGE_ID = re.compile(r"^msg_([0-9a-f]{32})$")


async def page(
    session: AsyncSession,
    query: Select[Any],
    model: type[Any],
    size: int,
    token: str,
    filters: dict[str, Any],
) -> tuple[list[Any], str]:
    """``gateway.store.keyset_page`` (newest first, opaque tokens) over a webhook table; its
    type variable lists the core tables only."""
    return await keyset_page(session, cast(Any, query), cast(Any, model), size, token, filters)


def message_id(delivery_id: uuid.UUID) -> str:
    """The delivery's public id, also its ``webhook-id`` header."""
    return f"msg_{delivery_id.hex}"


def parse_message_id(value: str) -> uuid.UUID:
    match = _MESSAGE_ID.match(value)
    if match is None:
        raise InvalidArgument(
            f"delivery_id must look like msg_<32 hex digits>, got {value[:60]!r}", reason="BAD_ID"
        )
    return uuid.UUID(match.group(1))


def endpoint_to_proto(row: tables.WebhookEndpoint) -> pb.WebhookEndpoint:
    return pb.WebhookEndpoint(
        id=str(row.id),
        url=row.url,
        event_types=[BY_NAME[name] for name in row.event_types if name in BY_NAME],
        description=row.description,
        state=pb.WebhookEndpointState.Value(f"WEBHOOK_ENDPOINT_STATE_{row.state}"),
        disabled_reason=row.disabled_reason or "",
        create_time=timestamp(row.create_time),
        disable_time=timestamp(row.disable_time),
        secret_rotate_time=timestamp(row.secret_rotate_time),
        previous_secret_expire_time=timestamp(row.previous_secret_expire_time),
    )


def delivery_to_proto(row: Any, attempts: Sequence[Any] = ()) -> pb.WebhookDelivery:
    delivery = pb.WebhookDelivery(
        id=message_id(row.id),
        endpoint_id=str(row.endpoint_id),
        job_id=str(row.job_id),
        sequence=row.sequence,
        event_type=BY_NAME.get(row.event_type, pb.WEBHOOK_EVENT_TYPE_UNSPECIFIED),
        state=pb.WebhookDeliveryState.Value(f"WEBHOOK_DELIVERY_STATE_{row.state}"),
        event_time=timestamp(row.event_time),
        next_attempt_time=timestamp(row.next_attempt_time) if row.state == "PENDING" else None,
        delivered_time=timestamp(row.delivered_time),
    )
    for attempt in attempts:
        shown = delivery.attempts.add(
            status_code=attempt.status_code or 0,
            succeeded=attempt.outcome == "SUCCEEDED",
            error=attempt.error or "",
        )
        shown.start_time.FromDatetime(attempt.start_time)
        shown.duration.FromTimedelta(timedelta(seconds=attempt.duration_seconds))
    return delivery


def validate_event_types(values: Sequence[EventType]) -> list[str]:
    """The event type names asked for (in enum order, without repeats); empty: the terminal
    job events."""
    if not values:
        return list(DEFAULT_TYPES)
    names: set[str] = set()
    for value in values:
        name = NAMES.get(value)
        if name is None:
            raise InvalidArgument(
                f"event_types holds {value}, which is not a webhook event type",
                reason="BAD_EVENT_TYPE",
            )
        names.add(name)
    return [name for name in NAMES.values() if name in names]


def validate_description(description: str) -> str:
    if len(description) > MAX_DESCRIPTION or _CONTROL.search(description):
        raise InvalidArgument(
            f"description must be at most {MAX_DESCRIPTION} characters without control characters",
            reason="BAD_DESCRIPTION",
        )
    return description.strip()


async def vet_target(guard: NetGuard, url: str) -> str:
    """``url`` if the guard lets deliveries reach it: its form (``check_url``) and every
    address its host resolves to now. Raises ``UrlRefused`` (INVALID_ARGUMENT), HOST_NOT_FOUND
    (NOT_FOUND), or UNAVAILABLE when the name cannot be resolved right now."""
    if not url:
        raise InvalidArgument("url is required", reason="INVALID_URL")
    if len(url) > MAX_URL_LENGTH or _CONTROL.search(url):
        raise InvalidArgument(
            f"url must be at most {MAX_URL_LENGTH} characters without control characters",
            reason="INVALID_URL",
        )
    parsed = guard.check_url(url)
    port = parsed.port or DEFAULT_SCHEME_PORTS[parsed.scheme.lower()]
    try:
        await asyncio.wait_for(asyncio.to_thread(guard.addresses, parsed.host, port), DNS_TIMEOUT)
    except (httpcore2.ConnectError, TimeoutError) as exc:
        raise Unavailable(
            f"could not resolve {parsed.host} now; try again", reason="DNS_UNAVAILABLE"
        ) from exc
    return str(parsed)


class Webhooks:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        guard: NetGuard,
        box: SecretBox,
        *,
        max_endpoints: int = 20,
        default_overlap: timedelta = timedelta(days=1),
    ) -> None:
        self.sessions = sessions
        self.guard = guard
        self.box = box
        self.max_endpoints = max_endpoints
        self.default_overlap = default_overlap

    # endpoints --------------------------------------------------------------------------------

    async def _endpoint(
        self, session: AsyncSession, owner: str, endpoint_id: str, *, lock: bool = False
    ) -> tables.WebhookEndpoint:
        row = await session.get(
            tables.WebhookEndpoint,
            parse_id(endpoint_id, "endpoint_id"),
            with_for_update=lock or None,
        )
        if row is None or row.owner != owner:
            raise NotFound(
                f"webhook endpoint {endpoint_id} not found", reason="WEBHOOK_ENDPOINT_NOT_FOUND"
            )
        return row

    async def create(
        self, owner: str, url: str, event_types: Sequence[EventType], description: str
    ) -> tuple[pb.WebhookEndpoint, str]:
        """A new endpoint of ``owner`` and its signing secret (the only time it is shown)."""
        names = validate_event_types(event_types)
        description = validate_description(description)
        target = await vet_target(self.guard, url)
        secret = new_secret()
        endpoint_id = uuid.uuid4()
        async with self.sessions.begin() as session:
            if self.max_endpoints:
                await lock_owner(session, "webhooks", owner)
                count = await session.scalar(
                    select(func.count())
                    .select_from(tables.WebhookEndpoint)
                    .where(tables.WebhookEndpoint.owner == owner)
                )
                if (count or 0) >= self.max_endpoints:
                    raise ResourceExhausted(
                        f"at most {self.max_endpoints} webhook endpoints per owner; delete one "
                        "first",
                        reason="TOO_MANY_WEBHOOK_ENDPOINTS",
                        metadata={"limit": str(self.max_endpoints)},
                    )
            row = tables.WebhookEndpoint(
                id=endpoint_id,
                owner=owner,
                url=target,
                description=description,
                event_types=names,
                secret=self.box.seal(secret, str(endpoint_id)),
                state="ACTIVE",
            )
            session.add(row)
            await session.flush()
            await session.refresh(row)
            return endpoint_to_proto(row), secret

    async def list_endpoints(
        self, owner: str, size: int, token: str
    ) -> tuple[list[pb.WebhookEndpoint], str]:
        query = select(tables.WebhookEndpoint).where(tables.WebhookEndpoint.owner == owner)
        async with self.sessions() as session:
            rows, next_token = await page(
                session, query, tables.WebhookEndpoint, size, token, {"kind": "webhooks"}
            )
        return [endpoint_to_proto(r) for r in rows], next_token

    async def delete(self, owner: str, endpoint_id: str) -> int:
        """Deletes the endpoint with its deliveries; how many were still pending."""
        async with self.sessions.begin() as session:
            row = await self._endpoint(session, owner, endpoint_id, lock=True)
            pending = await session.scalar(
                select(func.count())
                .select_from(tables.WebhookDelivery)
                .where(
                    tables.WebhookDelivery.endpoint_id == row.id,
                    tables.WebhookDelivery.state == "PENDING",
                )
            )
            # Deliveries and their attempts go with it (ON DELETE CASCADE).
            await session.execute(
                delete(tables.WebhookEndpoint).where(tables.WebhookEndpoint.id == row.id)
            )
        log.info("webhook endpoint deleted", extra={"endpoint_id": endpoint_id})
        return int(pending or 0)

    async def rotate(
        self, owner: str, endpoint_id: str, overlap: timedelta | None
    ) -> tuple[pb.WebhookEndpoint, str]:
        """A new secret; the current one keeps signing for ``overlap`` (default: the
        setting). Of older secrets none survives: at most two ever sign."""
        if overlap is None:
            overlap = self.default_overlap
        if overlap < timedelta(0) or overlap > MAX_OVERLAP:
            raise InvalidArgument("overlap must be between 0 and 7 days", reason="BAD_OVERLAP")
        secret = new_secret()
        async with self.sessions.begin() as session:
            row = await self._endpoint(session, owner, endpoint_id, lock=True)
            context = str(row.id)
            keep = overlap > timedelta(0)
            current = ""
            if keep:
                try:
                    current = self.box.open(row.secret, context)
                except SecretUnreadable as exc:  # the key changed: nothing to keep signing with
                    log.warning("rotating %s: the old secret is unreadable: %s", endpoint_id, exc)
                    keep = False
            await session.execute(
                update(tables.WebhookEndpoint)
                .where(tables.WebhookEndpoint.id == row.id)
                .values(
                    secret=self.box.seal(secret, context),
                    previous_secret=self.box.seal(current, context) if keep else None,
                    previous_secret_expire_time=func.now() + overlap if keep else None,
                    secret_rotate_time=func.now(),
                )
            )
            await session.refresh(row)
        log.info("webhook secret rotated", extra={"endpoint_id": endpoint_id})
        return endpoint_to_proto(row), secret

    # deliveries -------------------------------------------------------------------------------

    async def _attempts(
        self, session: AsyncSession, ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, list[Any]]:
        found: dict[uuid.UUID, list[Any]] = {i: [] for i in ids}
        if not ids:
            return found
        rows = await session.execute(
            text(
                """
                SELECT * FROM (
                    SELECT a.*, row_number() OVER (
                               PARTITION BY a.delivery_id ORDER BY a.id DESC) AS newest
                      FROM webhook_attempts a
                     WHERE a.delivery_id = ANY(:ids)) shown
                 WHERE newest <= :limit
                 ORDER BY delivery_id, id
                """
            ),
            {"ids": list(ids), "limit": MAX_ATTEMPTS_SHOWN},
        )
        for attempt in rows:
            found[attempt.delivery_id].append(attempt)
        return found

    async def list_deliveries(
        self,
        owner: str,
        *,
        endpoint_id: str,
        size: int,
        token: str,
        states: Sequence[str],
        job_id: str,
    ) -> tuple[list[pb.WebhookDelivery], str]:
        filters: dict[str, Any] = {
            "kind": "webhook_deliveries",
            "endpoint": endpoint_id,
            "states": sorted(states),
            "job": job_id,
        }
        query = (
            select(tables.WebhookDelivery)
            .join(tables.WebhookEndpoint)
            .where(tables.WebhookEndpoint.owner == owner)
        )
        if states:
            query = query.where(tables.WebhookDelivery.state.in_(states))
        if job_id:
            query = query.where(tables.WebhookDelivery.job_id == parse_id(job_id, "job_id"))
        async with self.sessions() as session:
            if endpoint_id:
                endpoint = await self._endpoint(session, owner, endpoint_id)
                query = query.where(tables.WebhookDelivery.endpoint_id == endpoint.id)
            rows, next_token = await page(
                session, query, tables.WebhookDelivery, size, token, filters
            )
            attempts = await self._attempts(session, [r.id for r in rows])
        return [delivery_to_proto(r, attempts[r.id]) for r in rows], next_token

    async def redeliver(self, owner: str, delivery_id: str) -> pb.WebhookDelivery:
        """Queues the delivery again at once with a fresh retry schedule (same webhook-id);
        a disabled endpoint is enabled again (the owner says the receiver is back)."""
        identifier = parse_message_id(delivery_id)
        async with self.sessions.begin() as session:
            row = await session.get(tables.WebhookDelivery, identifier, with_for_update=True)
            endpoint = (
                await session.get(tables.WebhookEndpoint, row.endpoint_id, with_for_update=True)
                if row is not None
                else None
            )
            if row is None or endpoint is None or endpoint.owner != owner:
                raise NotFound(
                    f"webhook delivery {delivery_id} not found",
                    reason="WEBHOOK_DELIVERY_NOT_FOUND",
                )
            await session.execute(
                update(tables.WebhookDelivery)
                .where(tables.WebhookDelivery.id == identifier)
                .values(
                    state="PENDING",
                    attempts=0,
                    next_attempt_time=func.now(),
                    lease_until=None,
                    lease_token=None,
                    update_time=func.now(),
                )
            )
            if endpoint.state != "ACTIVE":
                await session.execute(
                    update(tables.WebhookEndpoint)
                    .where(tables.WebhookEndpoint.id == endpoint.id)
                    .values(state="ACTIVE", disabled_reason=None, disable_time=None)
                )
                log.info("webhook endpoint enabled again", extra={"endpoint_id": str(endpoint.id)})
            await session.execute(select(func.pg_notify(DUE_CHANNEL, "")))
            await session.refresh(row)
            attempts = await self._attempts(session, [identifier])
        return delivery_to_proto(row, attempts[identifier])
