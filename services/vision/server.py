"""The vision process's contribution to the shared bootstrap. Importing this starts nothing."""

from __future__ import annotations

import asyncio

import grpc

from reelmill.v1 import vision_service_pb2, vision_service_pb2_grpc
from runtime.cpus import constrained_cpus
from runtime.server import ServiceSpec
from runtime.storage import ObjectStore
from services.vision.ocr import OcrConfig, OcrEngine, OcrModels, bundled_models
from services.vision.servicer import VisionServicer
from services.vision.settings import VisionSettings
from services.vision.vision import Vision, VisionConfig

SERVICE_NAME: str = vision_service_pb2.DESCRIPTOR.services_by_name["VisionService"].full_name


def ocr_config(settings: VisionSettings) -> OcrConfig:
    models = bundled_models()
    if settings.ocr_model_dir is not None:
        root = settings.ocr_model_dir
        models = OcrModels(
            detection=root / models.detection.name,
            classification=root / models.classification.name,
            recognition=root / models.recognition.name,
        )
    return OcrConfig(models=models, threads=settings.ocr_threads or constrained_cpus())


def build_vision(settings: VisionSettings, store: ObjectStore) -> Vision:
    config = ocr_config(settings)
    engines = [OcrEngine(config) for _ in range(settings.max_concurrent_ocr)]
    return Vision(
        store,
        engines,
        VisionConfig(
            max_concurrent_shots=settings.max_concurrent_shot_detections,
            max_waiting=settings.max_queued_vision,
            decode_threads=settings.vision_decode_threads,
            nice=settings.vision_nice,
        ),
    )


def build_spec(settings: VisionSettings, store: ObjectStore) -> ServiceSpec:
    """The vision service over ``store``; the spec closes the store on shutdown."""
    vision = build_vision(settings, store)

    async def models_loaded() -> None:
        # The first check loads the models, so the process reports SERVING only once it can
        # read text (a readiness probe keeps traffic away while they load).
        for engine in vision.all_engines:
            await asyncio.to_thread(engine.load)

    def register(server: grpc.aio.Server) -> None:
        vision_service_pb2_grpc.add_VisionServiceServicer_to_server(VisionServicer(vision), server)

    return ServiceSpec(
        name="vision",
        service_names=(SERVICE_NAME,),
        register=register,
        health_checks={"storage": store.check, "ocr_models": models_loaded},
        on_close=store.close,
    )
