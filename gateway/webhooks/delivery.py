"""The delivery worker: every gateway sends the outbox's due deliveries.

A worker claims due rows (``state = 'PENDING'``, ``next_attempt_time`` passed, no live lease,
endpoint active) with ``FOR UPDATE SKIP LOCKED`` and gives each a lease (its attempt timeout
plus a margin) and a token; it then POSTs them outside any transaction and records the outcome
fenced by the token. A gateway that dies mid-delivery leaves the lease to run out, and any
gateway sends the delivery again — with the same ``webhook-id``, so a receiver that already
had it can tell. Nothing is ever sent under a different id.

Each attempt: the endpoint URL is checked again by the SSRF guard (its form here, every address
its host resolves to when the guarded backend connects: a name that now points inside is
refused before any connection), the body is signed with every valid secret (two during a
rotation's overlap), and the whole attempt is bounded by ``timeout``. Redirects are not
followed: a 3xx is a failure (the owner should register the final URL), so a signed payload is
never re-sent to a host nobody registered, and no redirect hop needs vetting.

Outcomes: 2xx succeeds. 410 Gone fails the delivery and disables the endpoint. Anything else
(another status, a timeout, a refused connection or address) is retried after the next wait of
the schedule, jittered by ±20% and never sooner than the receiver's ``Retry-After``; when the
schedule runs out, the delivery fails and the endpoint is disabled.

The worker runs in its own task with at most ``concurrency`` attempts in flight (and at most
``per_endpoint`` for one endpoint, so one hanging receiver cannot take every slot): jobs never
wait for it, and a slow or dead receiver only delays its own deliveries.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpcore2
import httpx2
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from gateway.metrics import webhook_attempted
from gateway.runs import survives_disconnects
from gateway.webhooks.endpoints import message_id
from gateway.webhooks.secrets import SecretBox, SecretUnreadable
from reelmill.webhooks import headers as signed_headers
from runtime.errors import ReelmillError
from runtime.netguard import NetGuard, retry_after_seconds
from runtime.storage import ObjectStore

log = logging.getLogger(__name__)

#: Time a claimed delivery stays leased beyond its attempt's timeout (the outcome's write).
LEASE_MARGIN_SECONDS = 5.0
#: Response bytes read (and thrown away) so the connection can be reused.
MAX_RESPONSE_BYTES = 64 * 1024
#: The longest wait a receiver's Retry-After can impose.
MAX_RETRY_AFTER_SECONDS = 86400.0
JITTER = 0.2
USER_AGENT = "reelmill-webhooks/1"


@dataclass(frozen=True)
class DeliveryConfig:
    timeout: float = 10.0
    #: Waits before retries 1, 2, …; a failure after the last one gives up.
    schedule: tuple[float, ...] = ()
    concurrency: int = 16
    per_endpoint: int = 4
    poll_seconds: float = 1.0
    artifact_url_ttl: timedelta = timedelta(days=1)


@dataclass(frozen=True)
class Claimed:
    id: uuid.UUID
    endpoint_id: uuid.UUID
    token: uuid.UUID
    url: str
    event_type: str
    event_time: datetime
    payload: dict[str, Any]
    #: This attempt's number in the current round (1-based).
    attempt: int
    secret: str
    previous_secret: str | None
    previous_secret_expire_time: datetime | None


@dataclass(frozen=True)
class Outcome:
    succeeded: bool
    status_code: int | None = None
    error: str | None = None
    retry_after: float | None = None


#: Claims up to :limit due deliveries, at most :per_endpoint in flight per endpoint: endpoints
#: already at the limit are left out first (their in-flight rows come from a small partial
#: index), then the earliest :scan due rows by the due index are ranked per endpoint.
_CLAIM = text(
    """
    WITH busy AS (
           SELECT endpoint_id, count(*) AS in_flight
             FROM webhook_deliveries
            WHERE lease_until IS NOT NULL AND lease_until > now()
            GROUP BY endpoint_id),
         due AS (
           SELECT c.id, c.endpoint_id, c.next_attempt_time
             FROM webhook_deliveries c
             JOIN webhook_endpoints ce ON ce.id = c.endpoint_id AND ce.state = 'ACTIVE'
             LEFT JOIN busy b ON b.endpoint_id = c.endpoint_id
            WHERE c.state = 'PENDING' AND c.next_attempt_time <= now()
              AND (c.lease_until IS NULL OR c.lease_until < now())
              AND COALESCE(b.in_flight, 0) < :per_endpoint
            ORDER BY c.next_attempt_time
            LIMIT :scan),
         ranked AS (
           SELECT due.id, due.next_attempt_time,
                  row_number() OVER (PARTITION BY due.endpoint_id
                                     ORDER BY due.next_attempt_time, due.id)
                  + COALESCE(b.in_flight, 0) AS slot
             FROM due LEFT JOIN busy b ON b.endpoint_id = due.endpoint_id),
         chosen AS (
           SELECT id FROM webhook_deliveries
            WHERE id IN (SELECT id FROM ranked WHERE slot <= :per_endpoint
                          ORDER BY next_attempt_time LIMIT :limit)
              AND state = 'PENDING'
              AND (lease_until IS NULL OR lease_until < now())
            FOR UPDATE SKIP LOCKED)
    UPDATE webhook_deliveries d
       SET lease_until = now() + make_interval(secs => :lease),
           lease_token = :token,
           attempts = d.attempts + 1,
           update_time = now()
      FROM webhook_endpoints e
     WHERE e.id = d.endpoint_id AND d.id IN (SELECT id FROM chosen)
    RETURNING d.id, d.endpoint_id, d.event_type, d.event_time, d.payload, d.attempts,
              e.url, e.secret, e.previous_secret, e.previous_secret_expire_time
    """
)


#: The attempt, its consequences for the delivery, and for the endpoint when it must be
#: disabled, in one statement fenced by the claim's token (Postgres runs every data-modifying
#: CTE once, whatever the main query reads); 1 when written, 0 when the delivery was
#: redelivered, taken over or deleted meanwhile.
_RECORD = text(
    """
    WITH d AS (
           UPDATE webhook_deliveries
              SET state = CAST(:state AS varchar),
                  lease_until = NULL,
                  lease_token = NULL,
                  last_status_code = CAST(:status AS integer),
                  last_error = CAST(:error AS text),
                  update_time = now(),
                  delivered_time = CASE WHEN CAST(:state AS varchar) = 'SUCCEEDED' THEN now()
                                        ELSE delivered_time END,
                  next_attempt_time = CASE
                      WHEN CAST(:wait AS double precision) IS NULL THEN next_attempt_time
                      ELSE now() + make_interval(secs => CAST(:wait AS double precision)) END
            WHERE id = :id AND lease_token = :token
        RETURNING id),
         a AS (
           INSERT INTO webhook_attempts
                  (delivery_id, start_time, duration_seconds, outcome, status_code, error)
           SELECT id, CAST(:started AS timestamptz), CAST(:seconds AS double precision),
                  CAST(:outcome AS varchar), CAST(:status AS integer), CAST(:error AS text)
             FROM d),
         e AS (
           UPDATE webhook_endpoints
              SET state = 'DISABLED', disabled_reason = CAST(:disable AS varchar),
                  disable_time = now()
            WHERE CAST(:disable AS varchar) IS NOT NULL AND id = :endpoint
              AND state = 'ACTIVE' AND EXISTS (SELECT 1 FROM d))
    SELECT count(*) FROM d
    """
)


def next_wait(
    schedule: tuple[float, ...],
    attempt: int,
    retry_after: float | None,
    uniform: Callable[[float, float], float] = random.uniform,
) -> float | None:
    """The wait before the next attempt after failed attempt ``attempt`` (1-based), or None
    when the schedule has run out."""
    if attempt > len(schedule):
        return None
    wait = schedule[attempt - 1] * uniform(1 - JITTER, 1 + JITTER)
    if retry_after is not None:
        wait = max(wait, min(retry_after, MAX_RETRY_AFTER_SECONDS))
    return wait


def rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


class Deliverer:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        guard: NetGuard,
        box: SecretBox,
        objects: ObjectStore,
        config: DeliveryConfig,
        *,
        inner: httpcore2.AsyncNetworkBackend | None = None,
        verify: ssl.SSLContext | bool = True,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.sessions = sessions
        #: The claim and the outcome are single statements, run outside an explicit
        #: transaction (each is atomic on its own): one round trip each.
        engine = sessions.kw["bind"]
        self.engine: AsyncEngine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.guard = guard
        self.box = box
        self.objects = objects
        self.config = config
        self.uniform = uniform
        self.client = guard.async_client(
            timeout=httpx2.Timeout(config.timeout),
            inner=inner,
            verify=verify,
            max_connections=config.concurrency,
        )
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        #: Set by ``drain``: nothing new is claimed.
        self.draining = False

    def wake(self, _payload: str = "") -> None:
        """New deliveries may be due (a NOTIFY, a finished attempt)."""
        self._wake.set()

    async def run(self) -> None:
        try:
            while not (self.draining and not self._tasks):
                self._wake.clear()
                free = self.config.concurrency - len(self._tasks)
                if free > 0 and not self.draining:
                    try:
                        claimed = await self.claim(free)
                    except Exception as exc:  # database down: the next round retries
                        log.warning("claiming webhook deliveries failed: %s", exc)
                        claimed = []
                    for item in claimed:
                        task = asyncio.create_task(
                            self._attempt(item), name=f"webhook-{message_id(item.id)}"
                        )
                        self._tasks.add(task)
                        task.add_done_callback(self._finished)
                    if claimed and len(claimed) == free:
                        continue  # every slot filled: more may be due
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.config.poll_seconds)
        finally:
            await self.close()

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._wake.set()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.client.aclose()

    def stop(self) -> None:
        """Claims nothing more; ``run`` returns once the attempts in flight have ended."""
        self.draining = True
        self._wake.set()

    async def drain(self, timeout: float) -> None:
        """Lets the attempts in flight finish (shutdown); the rest keep their lease and are
        sent again by another gateway once it runs out."""
        self.stop()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    # claiming ---------------------------------------------------------------------------------

    async def claim(self, limit: int) -> list[Claimed]:
        token = uuid.uuid4()
        async with self.engine.connect() as connection:  # one statement, one round trip
            rows = (
                await connection.execute(
                    _CLAIM,
                    {
                        "lease": self.config.timeout + LEASE_MARGIN_SECONDS,
                        "token": token,
                        "limit": limit,
                        "scan": min(limit * self.config.per_endpoint * 4, 2000),
                        "per_endpoint": self.config.per_endpoint,
                    },
                )
            ).all()
        return [
            Claimed(
                id=row.id,
                endpoint_id=row.endpoint_id,
                token=token,
                url=row.url,
                event_type=row.event_type,
                event_time=row.event_time,
                payload=row.payload,
                attempt=row.attempts,
                secret=row.secret,
                previous_secret=row.previous_secret,
                previous_secret_expire_time=row.previous_secret_expire_time,
            )
            for row in rows
        ]

    # sending ----------------------------------------------------------------------------------

    def secrets(self, item: Claimed) -> list[str]:
        """The secrets that sign: the current one, and the rotated-out one until it expires."""
        context = str(item.endpoint_id)
        found = [self.box.open(item.secret, context)]
        expires = item.previous_secret_expire_time
        if item.previous_secret and expires is not None and expires > datetime.now(UTC):
            found.append(self.box.open(item.previous_secret, context))
        return found

    async def body(self, item: Claimed) -> bytes:
        """The JSON body: the event's type and time, and its data with fresh artifact URLs."""
        data = dict(item.payload)
        if "artifacts" in data:
            with_urls = []
            for artifact in data["artifacts"]:
                shown = dict(artifact)
                key = artifact.get("object", {}).get("key", "")
                try:
                    shown["url"] = await self.objects.presigned_get_url(
                        key, self.config.artifact_url_ttl
                    )
                except Exception as exc:  # purged since: the rest of the payload still goes
                    log.info("no URL for artifact %s: %s", key, exc)
                with_urls.append(shown)
            data["artifacts"] = with_urls
        envelope = {"type": item.event_type, "timestamp": rfc3339(item.event_time), "data": data}
        return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode()

    async def send(self, item: Claimed) -> Outcome:
        """One POST of the delivery; never raises for what the receiver (or the network, or
        the guard) does."""
        try:
            async with asyncio.timeout(self.config.timeout):
                body = await self.body(item)
                sent = {
                    **signed_headers(self.secrets(item), message_id(item.id), body),
                    "content-type": "application/json",
                    "user-agent": USER_AGENT,
                }
                url = self.guard.check_url(item.url)
                async with self.client.stream("POST", url, content=body, headers=sent) as reply:
                    read = 0
                    async for chunk in reply.aiter_raw():
                        read += len(chunk)
                        if read >= MAX_RESPONSE_BYTES:
                            break
                    status = reply.status_code
                    wait = retry_after_seconds(reply.headers.get("retry-after"), time.time())
        except TimeoutError:
            return Outcome(False, error=f"timed out after {self.config.timeout:g} s")
        except httpx2.TimeoutException:
            return Outcome(False, error=f"timed out after {self.config.timeout:g} s")
        except SecretUnreadable as exc:
            return Outcome(False, error=f"WEBHOOK_SECRET_UNREADABLE: {exc}")
        except ReelmillError as exc:  # the guard: URL_NOT_ALLOWED, HOST_NOT_FOUND, …
            return Outcome(False, error=f"{exc.reason}: {exc.message}")
        except (httpx2.HTTPError, httpcore2.ConnectError, OSError) as exc:
            return Outcome(False, error=f"connection failed: {type(exc).__name__}: {exc}"[:500])
        if 200 <= status < 300:
            return Outcome(True, status_code=status)
        if 300 <= status < 400:
            error = f"HTTP {status}: redirects are not followed; register the final URL"
        else:
            error = f"HTTP {status}"
        return Outcome(False, status_code=status, error=error, retry_after=wait)

    async def _attempt(self, item: Claimed) -> None:
        started = datetime.now(UTC)
        clock = time.monotonic()
        try:
            outcome = await self.send(item)
            await self.record(item, outcome, started, time.monotonic() - clock)
        except Exception as exc:  # the lease runs out and the delivery is sent again
            log.warning("webhook delivery %s: %s: %s", message_id(item.id), type(exc).__name__, exc)

    # recording --------------------------------------------------------------------------------

    @survives_disconnects
    async def record(
        self, item: Claimed, outcome: Outcome, started: datetime, seconds: float
    ) -> str:
        """Writes the attempt and what follows from it, fenced by the claim's token (a
        delivery redelivered or taken over meanwhile is not overwritten); the outcome's
        metric name."""
        state, wait, disable = "PENDING", None, None
        if outcome.succeeded:
            label, state = "succeeded", "SUCCEEDED"
        elif outcome.status_code == 410:
            label, state, disable = "gone", "FAILED", "ENDPOINT_GONE"
        else:
            wait = next_wait(self.config.schedule, item.attempt, outcome.retry_after, self.uniform)
            if wait is None:
                label, state, disable = "exhausted", "FAILED", "RETRIES_EXHAUSTED"
            else:
                label = "retrying"
        params = {
            "id": item.id,
            "token": item.token,
            "endpoint": item.endpoint_id,
            "state": state,
            "wait": wait,
            "status": outcome.status_code,
            "error": outcome.error,
            "started": started,
            "seconds": seconds,
            "outcome": "SUCCEEDED" if outcome.succeeded else "FAILED",
            "disable": disable,
        }
        async with self.engine.connect() as connection:  # one statement, one round trip
            written = (await connection.execute(_RECORD, params)).scalar_one()
        if not written:
            log.info("webhook delivery %s changed meanwhile", message_id(item.id))
            return label
        webhook_attempted(label)
        extra = {
            "webhook_id": message_id(item.id),
            "endpoint_id": str(item.endpoint_id),
            "attempt": item.attempt,
            "outcome": label,
        }
        if outcome.succeeded:
            log.debug("webhook delivered", extra=extra)
        else:
            log.info("webhook attempt failed: %s", outcome.error, extra=extra)
        if disable is not None:
            log.warning("webhook endpoint disabled: %s", disable, extra=extra)
        return label
