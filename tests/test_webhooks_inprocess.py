"""Webhooks inside one gateway process (real Postgres, a real receiver on 127.0.0.1): the
outbox row commits with its event or not at all, the payload and its signatures, rotation, the
SSRF guard at registration and at delivery (a name that later resolves to loopback, through
the guard's resolver seam), and what the owner sees through WebhookService."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from sqlalchemy import func, select

from gateway.convert import to_json
from gateway.db import webhooks as tables
from gateway.journal import append_event, state_event
from gateway.runs import Runs
from gateway.server import Gateway, assemble
from gateway.settings import GatewaySettings
from gateway.store import StagePlan
from gateway.webhooks.delivery import Deliverer
from gateway.webhooks.endpoints import Webhooks
from reelmill.client import ReelmillClient, error_reason
from reelmill.v1 import media_pb2, pipeline_pb2
from reelmill.v1 import webhook_service_pb2 as pb
from runtime.netguard import NetGuard
from runtime.server import build_server
from tests.servers import free_port, stop_process
from tests.suite import INTERNAL_TOKEN, JWT_SECRET, ROOT, token
from tests.test_url_import import FakeResolver, LoopbackOnly
from tests.webhook_receiver import Behaviour, Receiver, receiver_verifies, running_receiver

SECRET_KEY = base64.b64encode(b"k" * 32).decode()


@dataclass
class Env:
    parts: Gateway
    address: str
    receiver: Receiver
    settings: GatewaySettings
    #: The gateway's own delivery worker.
    delivering: asyncio.Task[None]

    async def stop_delivering(self) -> None:
        """Stops the gateway's worker (its attempts in flight end first, so no database call
        is cut short): the test claims and sends by itself."""
        self.parts.deliverer.stop()
        await asyncio.wait_for(self.delivering, 30)

    def client(self, owner: str) -> ReelmillClient:
        return ReelmillClient(self.address, token=token(owner))

    async def job(self, owner: str, stages: list[StagePlan] | None = None) -> str:
        """A queued job of ``owner`` (no stages by default; no orchestrator runs here)."""
        video_id = str(uuid.uuid4())
        await self.parts.store.add_video(
            owner,
            media_pb2.Video(
                id=video_id,
                filename="a.mp4",
                content_type="video/mp4",
                size_bytes=1,
                sha256="0" * 64,
                object=media_pb2.ObjectRef(key=f"videos/{video_id}/source"),
            ),
        )
        job, _ = await self.parts.store.create_job(
            owner,
            video_id=video_id,
            source_url=None,
            spec=pipeline_pb2.PipelineSpec(),
            request_id="",
            labels={"case": "webhooks"},
            stages=stages or [],
        )
        return job.id


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from running_receiver()


@pytest.fixture
def readme_port() -> int:
    """A port for the README's receiver example (allowed like the test receiver's)."""
    return free_port()


@pytest_asyncio.fixture
async def env(
    database_url: str, tmp_path: Path, receiver: Receiver, readme_port: int
) -> AsyncIterator[Env]:
    settings = GatewaySettings(
        database_url=database_url,
        jwt_secret=JWT_SECRET,
        internal_token=INTERNAL_TOKEN,
        storage_dir=tmp_path / "objects",
        ingest_target="127.0.0.1:9",  # nothing listens: no job here needs a service
        webhook_secret_key=SECRET_KEY,
        webhook_allow_hosts="127.0.0.1",  # type: ignore[arg-type]
        webhook_allowed_ports=f"80,443,{receiver.port},{readme_port}",  # type: ignore[arg-type]
        webhook_retry_schedule="0.1,0.1",  # type: ignore[arg-type]
        webhook_poll_seconds=0.2,
    )
    parts = await assemble(settings)
    server = build_server(settings, parts.spec.interceptors)
    parts.spec.register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    delivering = asyncio.create_task(parts.deliverer.run())
    background = [asyncio.create_task(parts.hub.run()), delivering]
    await asyncio.wait_for(parts.hub.connected.wait(), 10)
    try:
        yield Env(parts, f"127.0.0.1:{port}", receiver, settings, delivering)
    finally:
        await server.stop(0)
        parts.deliverer.stop()
        await asyncio.wait({delivering}, timeout=30)
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        if parts.spec.on_close is not None:
            await parts.spec.on_close()


async def test_a_cancelled_job_is_delivered_signed_with_its_event_and_basic_job(env: Env) -> None:
    owner = f"owner-{uuid.uuid4().hex[:6]}"
    async with env.client(owner) as client:
        endpoint, secret = await client.create_webhook_endpoint(
            env.receiver.url("/hooks"), description="crm"
        )
        assert endpoint.state == pb.WEBHOOK_ENDPOINT_STATE_ACTIVE
        assert list(endpoint.event_types) == [
            pb.WEBHOOK_EVENT_TYPE_JOB_SUCCEEDED,
            pb.WEBHOOK_EVENT_TYPE_JOB_FAILED,
            pb.WEBHOOK_EVENT_TYPE_JOB_CANCELLED,
        ]
        env.receiver.behave("/hooks", Behaviour(), secrets=[secret])
        job_id = await env.job(owner)
        await client.cancel_job(job_id)
        await asyncio.to_thread(env.receiver.wait_for, lambda: env.receiver.at("/hooks"))
        (got,) = env.receiver.at("/hooks")  # job.queued is not subscribed
        assert got.verified
        payload = got.payload
        assert payload["type"] == "job.cancelled"
        data = payload["data"]
        assert data["job_id"] == job_id
        assert data["event"]["job_state_changed"]["state"] == "JOB_STATE_CANCELLED"
        assert data["job"]["state"] == "JOB_STATE_CANCELLED"
        assert data["job"]["labels"] == {"case": "webhooks"}
        assert "artifacts" not in data["job"]  # the BASIC view
        assert data["artifacts"] == []
        assert int(data["sequence"]) == int(data["event"]["sequence"])
        for _ in range(100):
            deliveries, _ = await client.list_webhook_deliveries(endpoint_id=endpoint.id)
            if deliveries[0].state == pb.WEBHOOK_DELIVERY_STATE_SUCCEEDED:
                break
            await asyncio.sleep(0.05)
        (delivery,) = deliveries
        assert delivery.id == got.webhook_id
        assert delivery.job_id == job_id
        assert delivery.event_type == pb.WEBHOOK_EVENT_TYPE_JOB_CANCELLED
        assert delivery.state == pb.WEBHOOK_DELIVERY_STATE_SUCCEEDED
        assert [(a.succeeded, a.status_code) for a in delivery.attempts] == [(True, 200)]
    # The secret is sealed at rest: the table never holds it.
    async with env.parts.store.sessions() as session:
        stored = await session.scalar(
            select(tables.WebhookEndpoint.secret).where(
                tables.WebhookEndpoint.id == uuid.UUID(endpoint.id)
            )
        )
    assert stored is not None and stored.startswith("aesgcm:") and secret[6:] not in stored


async def test_an_event_rolled_back_leaves_no_delivery(env: Env) -> None:
    owner = f"owner-{uuid.uuid4().hex[:6]}"
    async with env.client(owner) as client:
        await client.create_webhook_endpoint(
            env.receiver.url("/all"), event_types=[pb.WEBHOOK_EVENT_TYPE_JOB_QUEUED]
        )
    job_id = uuid.UUID(await env.job(owner))  # its job.queued is queued for delivery
    sessions = env.parts.store.sessions

    class Boom(Exception):
        pass

    async def event_then_failure() -> None:
        async with sessions.begin() as session:
            await append_event(session, job_id, state_event("QUEUED"))
            raise Boom

    with pytest.raises(Boom):
        await event_then_failure()
    async with sessions() as session:
        rows = (
            await session.execute(
                select(tables.WebhookDelivery.sequence).where(
                    tables.WebhookDelivery.job_id == job_id
                )
            )
        ).all()
    assert [r.sequence for r in rows] == [1]  # only the committed event's


async def test_rotation_signs_with_both_secrets_until_the_overlap_ends(env: Env) -> None:
    owner = f"owner-{uuid.uuid4().hex[:6]}"
    async with env.client(owner) as client:
        endpoint, old = await client.create_webhook_endpoint(
            env.receiver.url("/rotating"), event_types=[pb.WEBHOOK_EVENT_TYPE_JOB_QUEUED]
        )
        rotated, new = await client.rotate_webhook_secret(endpoint.id)
        assert new != old and rotated.HasField("previous_secret_expire_time")
        await env.job(owner)
        await asyncio.to_thread(env.receiver.wait_for, lambda: env.receiver.at("/rotating"))
        (first,) = env.receiver.at("/rotating")
        assert len(first.headers["webhook-signature"].split(" ")) == 2
        for secret in (old, new):
            env.receiver.secrets["/rotating"] = [secret]
            env.receiver.received.clear()
            await env.job(owner)
            await asyncio.to_thread(env.receiver.wait_for, lambda: env.receiver.at("/rotating"))
            assert env.receiver.at("/rotating")[0].verified
        # A leaked secret: overlap zero, the old one stops signing at once.
        _, newest = await client.rotate_webhook_secret(endpoint.id, overlap=timedelta(0))
        env.receiver.secrets["/rotating"] = [new]
        env.receiver.received.clear()
        await env.job(owner)
        await asyncio.to_thread(env.receiver.wait_for, lambda: env.receiver.at("/rotating"))
        (last,) = env.receiver.at("/rotating")
        assert len(last.headers["webhook-signature"].split(" ")) == 1
        assert not last.verified
        assert receiver_verifies([newest], last.headers, last.body)


async def test_registration_refuses_names_that_resolve_inside(env: Env) -> None:
    resolver = FakeResolver(
        {"hooks.example": [["93.184.216.34", "10.0.0.7"]], "meta.example": [["169.254.169.254"]]}
    )
    webhooks = Webhooks(
        env.parts.store.sessions,
        NetGuard(env.settings.webhook_policy(), resolver=resolver),
        env.parts.webhooks.box,
    )
    for url, why in (
        ("https://hooks.example/in", "private"),
        ("https://meta.example/in", "cloud metadata"),
    ):
        with pytest.raises(Exception, match=why) as caught:
            await webhooks.create("someone", url, [], "")
        assert getattr(caught.value, "reason", "") == "URL_NOT_ALLOWED"
    async with env.parts.store.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(tables.WebhookEndpoint)) == 0


async def test_a_name_that_later_resolves_to_loopback_is_refused_at_delivery(env: Env) -> None:
    """Registered while public, the name then answers 127.0.0.1: the attempt is refused
    before any connection and retried; no socket is ever opened."""
    resolver = FakeResolver({"hooks.example": [["93.184.216.34"], ["127.0.0.1"]]})
    guard = NetGuard(
        env.settings.model_copy(update={"webhook_allow_hosts": ()}).webhook_policy(),
        resolver=resolver,
    )
    webhooks = Webhooks(env.parts.store.sessions, guard, env.parts.webhooks.box)
    owner = f"owner-{uuid.uuid4().hex[:6]}"
    endpoint, _ = await webhooks.create(
        owner, "https://hooks.example/in", [pb.WEBHOOK_EVENT_TYPE_JOB_QUEUED], ""
    )
    # Only this test's worker sends (the gateway's own is stopped for the endpoint's rows).
    backend = LoopbackOnly()
    deliverer = Deliverer(
        env.parts.store.sessions,
        guard,
        env.parts.webhooks.box,
        env.parts.purger.objects,
        env.parts.deliverer.config,
        inner=backend,
    )
    await env.stop_delivering()
    try:
        await env.job(owner)
        (claimed,) = await deliverer.claim(10)
        outcome = await deliverer.send(claimed)
        assert not outcome.succeeded
        assert outcome.error is not None and outcome.error.startswith("URL_NOT_ALLOWED")
        assert "loopback" in outcome.error
        assert backend.connects == []
        assert await deliverer.record(claimed, outcome, claimed.event_time, 0.0) == "retrying"
    finally:
        await deliverer.close()
    async with ReelmillClient(env.address, token=token(owner)) as client:
        (delivery,), _ = await client.list_webhook_deliveries(endpoint_id=endpoint.id)
    assert delivery.state == pb.WEBHOOK_DELIVERY_STATE_PENDING
    (attempt,) = delivery.attempts
    assert attempt.status_code == 0 and "URL_NOT_ALLOWED" in attempt.error
    assert resolver.calls == ["hooks.example", "hooks.example"]


async def test_another_owner_sees_nothing(env: Env) -> None:
    owner, other = (f"owner-{uuid.uuid4().hex[:6]}" for _ in range(2))
    async with env.client(owner) as client:
        endpoint, _ = await client.create_webhook_endpoint(env.receiver.url("/mine"))
    async with env.client(other) as client:
        assert await client.list_webhook_endpoints() == ([], "")
        for call in (
            client.delete_webhook_endpoint(endpoint.id),
            client.rotate_webhook_secret(endpoint.id),
            client.list_webhook_deliveries(endpoint_id=endpoint.id),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            assert error_reason(caught.value) == "WEBHOOK_ENDPOINT_NOT_FOUND"


def readme_receiver() -> str:
    """The receiver example of the README, as it stands there."""
    text = (ROOT / "README.md").read_text()
    start = text.index("```python\n# receiver.py")
    return text[start + len("```python\n") : text.index("```", start + 10)]


async def test_the_readme_receiver_writes_the_schema_shaped_result_once(
    env: Env, readme_port: int, tmp_path: Path
) -> None:
    """Seed 003: the README's receiver (its code block, run as it is) verifies a real
    delivery and writes the job's schema-shaped document into its own database, once."""
    owner = f"owner-{uuid.uuid4().hex[:6]}"
    async with env.client(owner) as client:
        endpoint, secret = await client.create_webhook_endpoint(
            f"http://127.0.0.1:{readme_port}/reelmill"
        )
    results = tmp_path / "results.db"
    receiver = await asyncio.to_thread(
        subprocess.Popen,
        [sys.executable, "-c", readme_receiver()],
        cwd=ROOT,
        env={
            **os.environ,
            "REELMILL_WEBHOOK_SECRET": secret,
            "RESULTS_DB": str(results),
            "PORT": str(readme_port),
        },
    )
    try:
        for _ in range(200):  # until it listens
            try:
                socket.create_connection(("127.0.0.1", readme_port), timeout=1).close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        document = json.dumps({"speaker": "Ada Lovelace", "topics": ["engines", "notes"]})
        job_id = uuid.UUID(await env.job(owner, stages=[StagePlan("metadata", (), "PENDING")]))
        runs = Runs(env.parts.store.sessions, "test-writer")
        assert [c.id for c in await runs.claim(1, timedelta(minutes=5))] == [job_id]
        await runs.start(job_id)
        metadata = media_pb2.VideoMetadata(title="Notes on the engine", custom_json=document)
        await runs.update_stage(
            job_id, "metadata", state="SUCCEEDED", job_fields={"metadata": to_json(metadata)}
        )
        await runs.finish(job_id, "SUCCEEDED")

        def stored() -> list[tuple[str, ...]]:
            if not results.exists():
                return []
            with sqlite3.connect(results) as db:
                try:
                    return db.execute(
                        "SELECT job_id, webhook_id, title, document FROM talks"
                    ).fetchall()
                except sqlite3.OperationalError:
                    return []

        async with env.client(owner) as client:
            for _ in range(200):
                (delivery,), _ = await client.list_webhook_deliveries(endpoint_id=endpoint.id)
                if delivery.state == pb.WEBHOOK_DELIVERY_STATE_SUCCEEDED:
                    break
                await asyncio.sleep(0.05)
            assert delivery.state == pb.WEBHOOK_DELIVERY_STATE_SUCCEEDED, delivery
            assert stored() == [(str(job_id), delivery.id, "Notes on the engine", document)]
            # The same delivery again: the receiver's database does not change.
            await client.redeliver_webhook(delivery.id)
            for _ in range(200):
                (again,), _ = await client.list_webhook_deliveries(endpoint_id=endpoint.id)
                if len(again.attempts) == 2 and again.state == pb.WEBHOOK_DELIVERY_STATE_SUCCEEDED:
                    break
                await asyncio.sleep(0.05)
            assert [a.status_code for a in again.attempts] == [204, 204]
        assert stored() == [(str(job_id), delivery.id, "Notes on the engine", document)]
    finally:
        stop_process(receiver)


async def test_one_endpoint_never_takes_more_than_its_share_of_slots(env: Env) -> None:
    owner = f"owner-{uuid.uuid4().hex[:6]}"
    queued = [pb.WEBHOOK_EVENT_TYPE_JOB_QUEUED]
    async with env.client(owner) as client:
        first, _ = await client.create_webhook_endpoint(env.receiver.url("/1"), event_types=queued)
        second, _ = await client.create_webhook_endpoint(env.receiver.url("/2"), event_types=queued)
    await env.stop_delivering()
    for _ in range(6):
        await env.job(owner)
    deliverer = Deliverer(
        env.parts.store.sessions,
        env.parts.webhooks.guard,
        env.parts.webhooks.box,
        env.parts.purger.objects,
        env.parts.deliverer.config,
    )
    per_endpoint = deliverer.config.per_endpoint
    claimed = await deliverer.claim(16)
    counts = {e: sum(c.endpoint_id == uuid.UUID(e) for c in claimed) for e in (first.id, second.id)}
    assert counts == {first.id: per_endpoint, second.id: per_endpoint}
    assert await deliverer.claim(16) == []  # both at their limit while those are in flight
    # One attempt recorded: a slot of its endpoint frees, and only that.
    done = next(c for c in claimed if c.endpoint_id == uuid.UUID(first.id))
    outcome = await deliverer.send(done)
    assert outcome.succeeded
    await deliverer.record(done, outcome, done.event_time, 0.0)
    (next_one,) = await deliverer.claim(16)
    assert next_one.endpoint_id == uuid.UUID(first.id)
    await deliverer.close()
