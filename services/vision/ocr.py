"""On-screen text from one frame: rapidocr on onnxruntime, with the PP-OCR models its wheel
ships. Nothing is downloaded: every model path is given explicitly (rapidocr fetches a model
only when it is given none), and the recogniser's character set is read from inside its model.

``OcrEngine.read`` takes a BGR image and returns its lines, each with its confidence and its
box in fractions of the frame; a frame with no text yields no lines. The engine is loaded once
per process (``load``: the health check loads it, so the process reports SERVING only once it
can read) and is used by one request at a time (``Vision`` holds a slot per engine).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from runtime.errors import FailedPrecondition
from services.vision.model import Box, Line

log = logging.getLogger(__name__)

Image = npt.NDArray[np.uint8]
NAME = "rapidocr"


@dataclass(frozen=True)
class OcrModels:
    """The three ONNX models: text detection, orientation classification, recognition."""

    detection: Path
    classification: Path
    recognition: Path

    @property
    def name(self) -> str:
        return f"{self.detection.stem}+{self.recognition.stem}"

    def missing(self) -> list[Path]:
        paths = (self.detection, self.classification, self.recognition)
        return [path for path in paths if not path.is_file()]


def bundled_models() -> OcrModels:
    """The models inside the installed rapidocr wheel (Apache-2.0, PaddleOCR's PP-OCR)."""
    import rapidocr

    root = Path(rapidocr.__file__).parent / "models"
    return OcrModels(
        detection=root / "PP-OCRv6_det_small.onnx",
        classification=root / "ch_ppocr_mobile_v2.0_cls_mobile.onnx",
        recognition=root / "PP-OCRv6_rec_small.onnx",
    )


@dataclass(frozen=True)
class OcrConfig:
    models: OcrModels
    #: onnxruntime intra-op threads per engine; 0 = onnxruntime's choice. One thread runs the
    #: models in the calling thread, with no spinning pool beside an encoder.
    threads: int = 1
    #: The text detector's input: longest side at most this. The frames themselves are
    #: downscaled to ``OcrOptions.max_side`` (960): lines are recognised on crops of those.
    detection_side: int = 736


class OcrEngine:
    def __init__(self, config: OcrConfig) -> None:
        self.config = config
        self._engine: Any = None
        self._lock = threading.Lock()

    @property
    def model_name(self) -> str:
        return self.config.models.name

    def load(self) -> None:
        """Builds the onnxruntime sessions (once); FAILED_PRECONDITION when a model is missing."""
        with self._lock:
            if self._engine is not None:
                return
            models = self.config.models
            if missing := models.missing():
                raise FailedPrecondition(
                    f"OCR model files are missing: {', '.join(str(p) for p in missing)}",
                    reason="OCR_MODEL_MISSING",
                )
            from rapidocr import RapidOCR

            params: dict[str, Any] = {
                "Global.log_level": "error",
                # Captions and titles are upright: the orientation classifier costs time and
                # turns some short lines upside down.
                "Global.use_cls": False,
                "Det.model_path": str(models.detection),
                "Cls.model_path": str(models.classification),
                "Rec.model_path": str(models.recognition),
                "Det.limit_type": "max",
                "Det.limit_side_len": self.config.detection_side,
            }
            if self.config.threads:
                params["EngineConfig.onnxruntime.intra_op_num_threads"] = self.config.threads
            engine: Any = RapidOCR(params=params)
            # rapidocr builds its sessions on first use; build them now (the health check).
            engine._load_det_model()
            recogniser = engine._load_rec_model()
            if not recogniser.session.have_key():
                raise FailedPrecondition(
                    "the OCR recognition model carries no character set", reason="OCR_MODEL_MISSING"
                )
            self._engine = engine
            log.info("OCR models loaded", extra={"model": models.name})

    def read(self, image: Image, *, min_confidence: float) -> list[Line]:
        self.load()
        height, width = image.shape[:2]
        result = self._engine(image)
        if result.boxes is None or result.txts is None:
            return []
        lines = []
        for points, text, score in zip(result.boxes, result.txts, result.scores, strict=True):
            text = " ".join(str(text).split())
            if not text or float(score) < min_confidence:
                continue
            xs = [float(p[0]) for p in points]
            ys = [float(p[1]) for p in points]
            left, top = max(min(xs), 0.0), max(min(ys), 0.0)
            right, bottom = min(max(xs), float(width)), min(max(ys), float(height))
            box = Box(
                round(left / width, 4),
                round(top / height, 4),
                round((right - left) / width, 4),
                round((bottom - top) / height, 4),
            )
            lines.append(Line(text, round(float(score), 4), box))
        return lines
