"""The ingest process's contribution to the shared bootstrap. Importing this starts nothing."""

from __future__ import annotations

import asyncio
import logging
import ssl
from datetime import timedelta

import grpc
import httpcore2

from reelmill.v1 import ingest_service_pb2, ingest_service_pb2_grpc
from runtime.netguard import NetGuard
from runtime.server import ServiceSpec
from runtime.storage import ObjectStore
from services.ingest.ingest import Ingestor
from services.ingest.platforms import PlatformExtractor
from services.ingest.probe import MediaLimits
from services.ingest.resumable import ResumableWrites
from services.ingest.servicer import IngestServicer
from services.ingest.settings import IngestSettings
from services.ingest.url_import import ImportConfig, UrlImporter

log = logging.getLogger(__name__)

SERVICE_NAME: str = ingest_service_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name


def build_spec(
    settings: IngestSettings,
    store: ObjectStore,
    *,
    guard: NetGuard | None = None,
    import_config: ImportConfig | None = None,
    platforms: PlatformExtractor | None = None,
    inner_backend: httpcore2.AsyncNetworkBackend | None = None,
    verify: ssl.SSLContext | bool = True,
) -> ServiceSpec:
    """The ingest service over ``store``; the spec closes the store on shutdown.

    The keyword arguments are seams for tests (a resolver behind the guard, faster backoff,
    extractors of their own, a backend that records connections, the TLS trust for media
    downloads); production passes none.
    """
    ingestor = Ingestor(
        store,
        scratch_dir=settings.scratch_dir,
        max_upload_bytes=settings.max_upload_bytes,
        probe_timeout=settings.probe_timeout_seconds,
        limits=MediaLimits(
            max_dimension=settings.max_video_dimension,
            max_duration=settings.max_duration_seconds,
        ),
    )
    guard = guard or NetGuard(settings.net_policy())
    importer = UrlImporter(
        ingestor,
        guard,
        import_config
        or ImportConfig(
            max_bytes=settings.url_import_max_bytes,
            timeout=settings.url_import_timeout_seconds,
            attempts=settings.url_import_attempts,
        ),
        platforms=platforms,
        inner_backend=inner_backend,
        verify=verify,
    )
    servicer = IngestServicer(ingestor, importer, ResumableWrites(store, ingestor))

    def register(server: grpc.aio.Server) -> None:
        ingest_service_pb2_grpc.add_IngestServiceServicer_to_server(servicer, server)

    async def sweep_leftovers() -> None:
        older_than = timedelta(seconds=settings.stale_after_seconds)
        while True:
            try:
                removed = await ingestor.sweep(older_than)
                if any(removed.values()):
                    log.info("removed leftovers", extra=removed)
            except Exception:  # the store may be down for a while; try again next time
                log.warning("could not sweep leftovers", exc_info=True)
            await asyncio.sleep(settings.sweep_interval_seconds)

    return ServiceSpec(
        name="ingest",
        service_names=(SERVICE_NAME,),
        register=register,
        health_checks={"storage": store.check},
        background=(sweep_leftovers,),
        on_close=store.close,
    )
