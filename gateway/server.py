"""Builds the gateway process: database, event hub, orchestrator, JobService, ApiKeyService,
WebhookService with its delivery worker, and (when metrics are on) the job counter behind its
job metrics.
Importing this module starts nothing; ``build`` wires the parts and
``runtime.server.run_service`` runs them."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import grpc
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway import api_key_servicer, webhook_servicer
from gateway.api_key_servicer import ApiKeyServicer
from gateway.api_keys import REVOKED_CHANNEL, ApiKeys
from gateway.artifact_urls import ArtifactSigner
from gateway.auth import AuthInterceptor, TokenVerifier, load_jwks, load_public_key
from gateway.browser import BrowserApp, BrowserServer
from gateway.db.engine import check_schema, head_revision, make_engine, make_sessionmaker, migrate
from gateway.events import EventHub
from gateway.journal import CANCEL_CHANNEL, QUEUE_CHANNEL
from gateway.limits import RateLimiter
from gateway.metrics import JobCounter
from gateway.orchestrator import Orchestrator
from gateway.pipeline import Wiring, build_stages
from gateway.purges import Purger
from gateway.retention import Retention
from gateway.runs import Runs, database_unavailable
from gateway.servicer import JobServicer
from gateway.settings import GatewaySettings
from gateway.store import Store
from gateway.uploads import ResumableUploads
from gateway.webhook_servicer import WebhookServicer
from gateway.webhooks.delivery import Deliverer, DeliveryConfig
from gateway.webhooks.endpoints import Webhooks
from gateway.webhooks.outbox import DUE_CHANNEL
from gateway.webhooks.secrets import SecretBox, parse_key
from reelmill.v1 import (
    api_key_service_pb2,
    api_key_service_pb2_grpc,
    ingest_service_pb2_grpc,
    job_service_pb2,
    job_service_pb2_grpc,
    webhook_service_pb2,
    webhook_service_pb2_grpc,
)
from runtime.channels import internal_channel
from runtime.errors import InvalidArgument, register_translation
from runtime.internal_auth import InternalAuth
from runtime.metrics import metrics_enabled
from runtime.netguard import NetGuard
from runtime.server import ServiceSpec
from runtime.storage import ObjectStore, open_store
from runtime.storage.local import LocalObjectStore

SERVICE_NAME = job_service_pb2.DESCRIPTOR.services_by_name["JobService"].full_name

log = logging.getLogger(__name__)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Gateway:
    """The assembled parts of a gateway process."""

    store: Store
    api_keys: ApiKeys
    hub: EventHub
    orchestrator: Orchestrator
    purger: Purger
    webhooks: Webhooks
    deliverer: Deliverer
    spec: ServiceSpec


async def build(settings: GatewaySettings) -> ServiceSpec:
    return (await assemble(settings)).spec


def token_verifier(settings: GatewaySettings) -> TokenVerifier:
    """The JWT verifier the settings describe; refuses to build one without any key."""
    secret = settings.jwt_secret.get_secret_value()
    if not secret and settings.jwt_public_key_file is None and settings.jwt_jwks_file is None:
        raise InvalidArgument(
            "REELMILL_JWT_SECRET, REELMILL_JWT_PUBLIC_KEY_FILE or REELMILL_JWT_JWKS_FILE is "
            "required: the gateway never runs unauthenticated",
            reason="BAD_SETTINGS",
        )
    if secret and len(secret) < 32:
        raise InvalidArgument(
            "REELMILL_JWT_SECRET must be at least 32 characters", reason="BAD_SETTINGS"
        )
    return TokenVerifier(
        secret,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        leeway=settings.jwt_leeway_seconds,
        public_key=(
            load_public_key(settings.jwt_public_key_file)
            if settings.jwt_public_key_file is not None
            else None
        ),
        jwks=load_jwks(settings.jwt_jwks_file) if settings.jwt_jwks_file is not None else None,
    )


def webhook_parts(
    settings: GatewaySettings,
    sessions: async_sessionmaker[AsyncSession],
    objects: ObjectStore,
    guard: NetGuard | None = None,
) -> tuple[Webhooks, Deliverer]:
    """Endpoint management and the delivery worker, sharing one SSRF guard and secret box."""
    guard = guard or NetGuard(settings.webhook_policy())
    box = SecretBox(parse_key(settings.webhook_secret_key.get_secret_value()))
    if not box.sealing:
        log.warning("REELMILL_WEBHOOK_SECRET_KEY is not set: webhook secrets are stored unsealed")
    webhooks = Webhooks(
        sessions,
        guard,
        box,
        max_endpoints=settings.webhook_max_endpoints_per_owner,
        default_overlap=timedelta(seconds=settings.webhook_secret_overlap_seconds),
    )
    deliverer = Deliverer(
        sessions,
        guard,
        box,
        objects,
        DeliveryConfig(
            timeout=settings.webhook_timeout_seconds,
            schedule=settings.webhook_retry_schedule,
            concurrency=settings.webhook_max_concurrent_deliveries,
            per_endpoint=settings.webhook_max_in_flight_per_endpoint,
            poll_seconds=settings.webhook_poll_seconds,
            artifact_url_ttl=timedelta(seconds=settings.webhook_artifact_url_seconds),
        ),
    )
    return webhooks, deliverer


#: The console as ``clients/console`` builds it in this checkout (``./dev``).
CONSOLE_DIST = Path(__file__).resolve().parent.parent / "clients" / "console" / "dist"


def artifact_signer(settings: GatewaySettings, objects: ObjectStore) -> ArtifactSigner | None:
    """Signed artifact URLs on the browser port: for the local store only (S3 presigns)."""
    if not settings.browser_listen or not isinstance(objects, LocalObjectStore):
        return None
    secret = settings.artifact_url_secret.get_secret_value().encode()
    if not secret:
        jwt_secret = settings.jwt_secret.get_secret_value().encode()
        if jwt_secret:
            secret = hmac.new(jwt_secret, b"reelmill artifact urls", hashlib.sha256).digest()
        else:
            log.warning(
                "REELMILL_ARTIFACT_URL_SECRET is not set: artifact URLs hold for this process only"
            )
            secret = os.urandom(32)
    base = settings.browser_public_url or f"http://{settings.browser_listen}"
    return ArtifactSigner(secret, base)


def browser_server(
    settings: GatewaySettings,
    store: Store,
    objects: ObjectStore,
    signer: ArtifactSigner | None,
) -> BrowserServer | None:
    if not settings.browser_listen:
        return None
    console = settings.console_dir
    if console is None and CONSOLE_DIST.is_dir():
        console = CONSOLE_DIST
    if console is not None and not (console / "index.html").is_file():
        log.warning("no web console at %s (build it: ./dev console)", console)
        console = None
    origins = list(settings.cors_origins)

    def make_app(target: str) -> BrowserApp:
        return BrowserApp(
            native_target=target,
            max_message_bytes=settings.max_message_mib * 1024 * 1024,
            cors_origins=origins,
            files=[
                job_service_pb2.DESCRIPTOR,
                api_key_service_pb2.DESCRIPTOR,
                webhook_service_pb2.DESCRIPTOR,
            ],
            store=store,
            objects=objects,
            signer=signer,
            console_dir=console,
        )

    return BrowserServer(settings.browser_listen, make_app)


async def assemble(settings: GatewaySettings) -> Gateway:
    verifier = token_verifier(settings)
    limiter = (
        RateLimiter(settings.owner_requests_per_second, settings.owner_request_burst)
        if settings.owner_requests_per_second > 0
        else None
    )
    internal_auth = InternalAuth.from_settings(settings)
    engine = make_engine(settings.database_url, pool_size=settings.database_pool_size)
    register_translation(database_unavailable)
    if settings.migrate_on_start:
        await migrate(engine)
    sessions = make_sessionmaker(engine)
    purge_delay = timedelta(seconds=settings.purge_delay_seconds)
    store = Store(sessions, purge_delay=purge_delay, slots_per_worker=settings.max_concurrent_jobs)
    api_keys = ApiKeys(
        sessions,
        pepper=settings.api_key_pepper.get_secret_value(),
        cache_seconds=settings.api_key_cache_seconds,
    )
    runs = Runs(sessions, worker_id(), purge_delay=purge_delay)
    dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    hub = EventHub(dsn, store.events_after, store.job_exists)
    objects = open_store(settings)
    purger = Purger(sessions, objects, interval=settings.purge_interval_seconds)

    channels = {
        name: internal_channel(target, internal_auth, max_message_mib=settings.max_message_mib)
        for name, target in (
            ("ingest", settings.ingest_target),
            ("transcode", settings.transcode_target),
            ("transcribe", settings.transcribe_target),
            ("metadata", settings.metadata_target),
            ("vision", settings.vision_target),
        )
    }
    ingest = ingest_service_pb2_grpc.IngestServiceStub(channels["ingest"])
    stages = build_stages(Wiring(channels, objects.bucket))
    orchestrator = Orchestrator(settings, runs, stages, objects)
    hub.on(QUEUE_CHANNEL, orchestrator.on_queued)
    hub.on(CANCEL_CHANNEL, orchestrator.on_cancelled)
    hub.on(REVOKED_CHANNEL, api_keys.on_revoked)
    webhooks, deliverer = webhook_parts(settings, sessions, objects)
    hub.on(DUE_CHANNEL, deliverer.wake)
    uploads = ResumableUploads(settings, sessions, objects, ingest)
    signer = artifact_signer(settings, objects)
    servicer = JobServicer(
        settings, store, hub, objects, ingest, stages, uploads, artifact_urls=signer
    )
    browser = browser_server(settings, store, objects, signer)

    def register(server: grpc.aio.Server) -> None:
        job_service_pb2_grpc.add_JobServiceServicer_to_server(servicer, server)
        api_key_service_pb2_grpc.add_ApiKeyServiceServicer_to_server(
            ApiKeyServicer(api_keys), server
        )
        webhook_service_pb2_grpc.add_WebhookServiceServicer_to_server(
            WebhookServicer(webhooks), server
        )

    schema = head_revision()

    async def check_database() -> None:
        # Reachable, and migrated to exactly what this code expects.
        await check_schema(engine, schema)

    async def drain() -> None:
        if browser is not None:
            browser.stop()
        hub.close()
        grace = max(settings.grace_seconds / 2, 1.0)
        await asyncio.gather(orchestrator.drain(grace), deliverer.drain(grace))

    async def close() -> None:
        for channel in channels.values():
            await channel.close()
        await deliverer.close()
        await objects.close()
        await engine.dispose()

    # Jobs by state for the metrics; nobody reads them when no metrics reader is on.
    counting = (
        [JobCounter(sessions, settings.job_metrics_interval_seconds).run]
        if metrics_enabled(settings)
        else []
    )
    # Retention of finished jobs, when it is on (every replica sweeps; batches are disjoint).
    retaining = (
        [
            Retention(
                sessions,
                days=settings.retention_days,
                interval=settings.retention_interval_seconds,
                purge_delay=purge_delay,
            ).run
        ]
        if settings.retention_days > 0
        else []
    )
    spec = ServiceSpec(
        name="gateway",
        service_names=[SERVICE_NAME, api_key_servicer.SERVICE_NAME, webhook_servicer.SERVICE_NAME],
        register=register,
        health_checks={
            "postgres": check_database,
            "events": hub.check,
            "storage": objects.check,
        },
        background=[
            hub.run,
            orchestrator.run,
            purger.run,
            deliverer.run,
            uploads.run_expiry,
            *counting,
            *retaining,
        ],
        on_drain=drain,
        on_close=close,
        interceptors=[AuthInterceptor(verifier, api_keys, limiter)],
        public=True,
        companions=[browser.run] if browser is not None else [],
    )
    return Gateway(
        store=store,
        api_keys=api_keys,
        hub=hub,
        orchestrator=orchestrator,
        purger=purger,
        webhooks=webhooks,
        deliverer=deliverer,
        spec=spec,
    )
