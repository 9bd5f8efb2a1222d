"""The transcribe process's contribution to the shared bootstrap. Importing this starts nothing."""

from __future__ import annotations

import asyncio

import grpc

from reelmill.v1 import transcribe_service_pb2, transcribe_service_pb2_grpc
from runtime.cpus import constrained_cpus
from runtime.genai import GeminiClient, GeminiConfig, gemini_config
from runtime.server import ServiceSpec
from runtime.shared_cache import shared_cache
from runtime.storage import ObjectStore
from services.transcribe.gemini import GeminiEngine
from services.transcribe.servicer import TranscribeServicer
from services.transcribe.settings import TranscribeSettings
from services.transcribe.transcriber import Transcriber, TranscriberConfig
from services.transcribe.whisper import WhisperConfig, WhisperEngine, bundled_model, load_model

SERVICE_NAME: str = transcribe_service_pb2.DESCRIPTOR.services_by_name[
    "TranscribeService"
].full_name


def whisper_config(settings: TranscribeSettings) -> WhisperConfig:
    if settings.whisper_model_dir is None:
        model_dir, name = bundled_model()
    else:
        model_dir, name = settings.whisper_model_dir, settings.whisper_model_dir.name
    return WhisperConfig(
        model_dir=model_dir,
        model_name=settings.whisper_model_name or name,
        device=settings.whisper_device,
        compute_type=settings.whisper_compute_type,
        cpu_threads=settings.whisper_cpu_threads or constrained_cpus(),
        beam_size=settings.whisper_beam_size,
        queue_size=settings.segment_queue_size,
    )


def build_transcriber(
    settings: TranscribeSettings, store: ObjectStore, gemini: GeminiClient | None = None
) -> Transcriber:
    return Transcriber(
        store,
        WhisperEngine(whisper_config(settings)),
        GeminiEngine(gemini) if gemini is not None else None,
        TranscriberConfig(
            max_concurrent=settings.max_concurrent_transcriptions,
            max_waiting=settings.max_queued_transcriptions,
            cache_entries=settings.cache_entries,
        ),
        shared=shared_cache(settings, store),
    )


def build_spec(
    settings: TranscribeSettings, store: ObjectStore, *, gemini: GeminiConfig | None = None
) -> ServiceSpec:
    """The transcribe service over ``store``; the spec closes the store on shutdown.
    ``gemini`` overrides the settings' Gemini configuration (tests pass a recorded transport)."""
    config = gemini or gemini_config(settings)
    client = GeminiClient(config) if config is not None else None
    transcriber = build_transcriber(settings, store, client)
    servicer = TranscribeServicer(transcriber)
    model = whisper_config(settings)

    async def model_loaded() -> None:
        # The first check loads the model, so the process reports SERVING only once it can
        # transcribe (a readiness probe then keeps traffic away while it loads).
        await asyncio.to_thread(load_model, model)

    def register(server: grpc.aio.Server) -> None:
        transcribe_service_pb2_grpc.add_TranscribeServiceServicer_to_server(servicer, server)

    async def close() -> None:
        if client is not None:
            await client.close()
        await store.close()

    return ServiceSpec(
        name="transcribe",
        service_names=(SERVICE_NAME,),
        register=register,
        health_checks={"storage": store.check, "whisper_model": model_loaded},
        on_close=close,
    )
