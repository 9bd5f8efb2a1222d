"""The metadata process's contribution to the shared bootstrap. Importing this starts nothing."""

from __future__ import annotations

import grpc

from reelmill.v1 import metadata_service_pb2, metadata_service_pb2_grpc
from runtime.genai import GeminiClient, GeminiConfig, gemini_config
from runtime.server import ServiceSpec
from runtime.shared_cache import shared_cache
from runtime.storage import ObjectStore
from services.metadata.gemini import GeminiGenerator
from services.metadata.generator import MetadataGenerator
from services.metadata.servicer import MetadataServicer
from services.metadata.settings import MetadataSettings

SERVICE_NAME: str = metadata_service_pb2.DESCRIPTOR.services_by_name["MetadataService"].full_name


def build_generator(
    settings: MetadataSettings, store: ObjectStore, gemini: GeminiClient | None = None
) -> MetadataGenerator:
    generator = (
        GeminiGenerator(gemini, max_transcript_chars=settings.gemini_max_transcript_chars)
        if gemini is not None
        else None
    )
    return MetadataGenerator(
        store,
        generator,
        cache_entries=settings.cache_entries,
        shared=shared_cache(settings, store),
    )


def build_spec(
    settings: MetadataSettings, store: ObjectStore, *, gemini: GeminiConfig | None = None
) -> ServiceSpec:
    """The metadata service over ``store``; the spec closes the store on shutdown.
    ``gemini`` overrides the settings' Gemini configuration (tests pass a recorded transport)."""
    config = gemini or gemini_config(settings)
    client = GeminiClient(config) if config is not None else None
    servicer = MetadataServicer(build_generator(settings, store, client))

    def register(server: grpc.aio.Server) -> None:
        metadata_service_pb2_grpc.add_MetadataServiceServicer_to_server(servicer, server)

    async def close() -> None:
        if client is not None:
            await client.close()
        await store.close()

    return ServiceSpec(
        name="metadata",
        service_names=(SERVICE_NAME,),
        register=register,
        health_checks={"storage": store.check},
        on_close=close,
    )
