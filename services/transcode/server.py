"""Builds the transcode process's ``ServiceSpec``; importing this module starts nothing."""

from __future__ import annotations

import grpc

from reelmill.v1 import transcode_service_pb2, transcode_service_pb2_grpc
from runtime.cpus import constrained_cpus
from runtime.ffmpeg import ffmpeg_path
from runtime.server import ServiceSpec
from runtime.storage import ObjectStore, open_store
from services.transcode.commands import EncoderSettings
from services.transcode.ffmpeg_runner import FfmpegRunner
from services.transcode.servicer import TranscodeServicer
from services.transcode.settings import TranscodeSettings
from services.transcode.transcoder import Transcoder, TranscoderConfig
from services.transcode.workspace import remove_stale

SERVICE_NAME = transcode_service_pb2.DESCRIPTOR.services_by_name["TranscodeService"].full_name


def build_transcoder(settings: TranscodeSettings, store: ObjectStore) -> Transcoder:
    runner = FfmpegRunner(
        ffmpeg_path(settings.ffmpeg_path),
        terminate_timeout=settings.ffmpeg_terminate_timeout_seconds,
    )
    config = TranscoderConfig(
        scratch_dir=settings.scratch_dir,
        preset=settings.transcode_preset,
        encoder=EncoderSettings(
            threads=settings.ffmpeg_threads or constrained_cpus(),
            vp9_cpu_used=settings.vp9_cpu_used,
        ),
        max_concurrent=settings.max_concurrent_transcodes,
        max_waiting=settings.max_queued_transcodes,
        max_concurrent_audio=settings.max_concurrent_audio,
        upload_concurrency=settings.upload_concurrency,
    )
    return Transcoder(store, runner, config)


def build_service(settings: TranscodeSettings, store: ObjectStore | None = None) -> ServiceSpec:
    """The spec ``runtime.server.run_service`` serves. Health is SERVING while the store
    answers and the ffmpeg binary runs."""
    store = store or open_store(settings)
    transcoder = build_transcoder(settings, store)
    # Scratch left by a killed predecessor (its pid is gone) is ours to remove.
    remove_stale(settings.scratch_dir)

    def register(server: grpc.aio.Server) -> None:
        transcode_service_pb2_grpc.add_TranscodeServiceServicer_to_server(
            TranscodeServicer(transcoder), server
        )

    return ServiceSpec(
        name="transcode",
        service_names=[SERVICE_NAME],
        register=register,
        health_checks={"storage": store.check, "ffmpeg": transcoder.runner.check},
        on_close=store.close,
    )
