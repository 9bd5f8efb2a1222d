"""Builds the gateway process: database, event hub, orchestrator, JobService. Importing this
module starts nothing; ``build`` wires the parts and ``runtime.server.run_service`` runs them."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from datetime import timedelta

import grpc
from sqlalchemy import text

from gateway.auth import AuthInterceptor, TokenVerifier
from gateway.db.engine import make_engine, make_sessionmaker, migrate
from gateway.events import EventHub
from gateway.journal import CANCEL_CHANNEL, QUEUE_CHANNEL
from gateway.orchestrator import Orchestrator
from gateway.purges import Purger
from gateway.runs import Runs, database_unavailable
from gateway.servicer import JobServicer
from gateway.settings import GatewaySettings
from gateway.stages import (
    AudioStage,
    ImportStage,
    MetadataStage,
    ProbeStage,
    Stage,
    TranscodeStage,
    TranscribeStage,
)
from gateway.store import Store
from reelmill.v1 import ingest_service_pb2_grpc, job_service_pb2, job_service_pb2_grpc
from runtime.channels import internal_channel
from runtime.errors import InvalidArgument, register_translation
from runtime.server import ServiceSpec
from runtime.storage import open_store

SERVICE_NAME = job_service_pb2.DESCRIPTOR.services_by_name["JobService"].full_name


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Gateway:
    """The assembled parts of a gateway process."""

    store: Store
    hub: EventHub
    orchestrator: Orchestrator
    purger: Purger
    spec: ServiceSpec


async def build(settings: GatewaySettings) -> ServiceSpec:
    return (await assemble(settings)).spec


async def assemble(settings: GatewaySettings) -> Gateway:
    secret = settings.jwt_secret.get_secret_value()
    if not secret:
        raise InvalidArgument(
            "REELMILL_JWT_SECRET is required: the gateway never runs unauthenticated",
            reason="BAD_SETTINGS",
        )
    verifier = TokenVerifier(
        secret,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        leeway=settings.jwt_leeway_seconds,
    )
    engine = make_engine(settings.database_url, pool_size=settings.database_pool_size)
    register_translation(database_unavailable)
    if settings.migrate_on_start:
        await migrate(engine)
    sessions = make_sessionmaker(engine)
    purge_delay = timedelta(seconds=settings.purge_delay_seconds)
    store = Store(sessions, purge_delay=purge_delay, slots_per_worker=settings.max_concurrent_jobs)
    runs = Runs(sessions, worker_id(), purge_delay=purge_delay)
    dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    hub = EventHub(dsn, store.events_after, store.job_exists)
    objects = open_store(settings)
    purger = Purger(sessions, objects, interval=settings.purge_interval_seconds)

    channels = {
        name: internal_channel(target, max_message_mib=settings.max_message_mib)
        for name, target in (
            ("ingest", settings.ingest_target),
            ("transcode", settings.transcode_target),
            ("transcribe", settings.transcribe_target),
            ("metadata", settings.metadata_target),
        )
    }
    ingest = ingest_service_pb2_grpc.IngestServiceStub(channels["ingest"])
    stages: list[Stage] = [
        ImportStage(channels["ingest"], objects.bucket),
        ProbeStage(channels["ingest"]),
        TranscodeStage(channels["transcode"]),
        AudioStage(channels["transcode"]),
        TranscribeStage(channels["transcribe"]),
        MetadataStage(channels["metadata"]),
    ]
    orchestrator = Orchestrator(settings, runs, stages)
    hub.on(QUEUE_CHANNEL, orchestrator.on_queued)
    hub.on(CANCEL_CHANNEL, orchestrator.on_cancelled)
    servicer = JobServicer(settings, store, hub, objects, ingest, stages)

    def register(server: grpc.aio.Server) -> None:
        job_service_pb2_grpc.add_JobServiceServicer_to_server(servicer, server)

    async def check_database() -> None:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def drain() -> None:
        hub.close()
        await orchestrator.drain(max(settings.grace_seconds / 2, 1.0))

    async def close() -> None:
        for channel in channels.values():
            await channel.close()
        await objects.close()
        await engine.dispose()

    spec = ServiceSpec(
        name="gateway",
        service_names=[SERVICE_NAME],
        register=register,
        health_checks={
            "postgres": check_database,
            "events": hub.check,
            "storage": objects.check,
        },
        background=[hub.run, orchestrator.run, purger.run],
        on_drain=drain,
        on_close=close,
        interceptors=[AuthInterceptor(verifier)],
    )
    return Gateway(store=store, hub=hub, orchestrator=orchestrator, purger=purger, spec=spec)
