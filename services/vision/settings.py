"""The vision process's settings (``REELMILL_*`` environment variables)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from runtime.settings import ServiceSettings


class VisionSettings(ServiceSettings):
    #: Calls served at once (0 = no limit); beyond them and the queue: RESOURCE_EXHAUSTED.
    max_concurrent_calls: int = Field(default=32, ge=0, le=100_000)
    listen: str = "127.0.0.1:50065"
    #: Shot detections running at once per process (each decodes in one thread of its own).
    max_concurrent_shot_detections: int = Field(default=2, ge=1, le=64)
    #: OCR requests running at once per process (each with its own loaded models).
    max_concurrent_ocr: int = Field(default=1, ge=1, le=16)
    #: Requests of either kind waiting for a slot before new ones get RESOURCE_EXHAUSTED.
    max_queued_vision: int = Field(default=16, ge=0, le=10_000)
    #: Decoder threads per request: 1 (the default) decodes in the request's decode thread,
    #: beside its analysis thread, with the least CPU per frame (frame threading costs a
    #: third more CPU here, which an encoder on the same cores would miss); 0 = FFmpeg's choice.
    vision_decode_threads: int = Field(default=1, ge=0, le=64)
    #: onnxruntime threads per OCR request: 1 (the default) runs OCR on one core beside the
    #: encoder; 0 = the CPUs a cgroup CPU limit allows, else onnxruntime's own choice.
    ocr_threads: int = Field(default=1, ge=0, le=256)
    #: Niceness added to the vision worker threads (decoding, detection, OCR), so that on a
    #: shared machine they take the cores the encoder leaves idle (0: none).
    vision_nice: int = Field(default=10, ge=0, le=19)
    #: Directory holding the three PP-OCR ONNX models (PP-OCRv6_det_small.onnx,
    #: ch_ppocr_mobile_v2.0_cls_mobile.onnx, PP-OCRv6_rec_small.onnx); unset uses the ones
    #: the rapidocr wheel ships.
    ocr_model_dir: Path | None = None
