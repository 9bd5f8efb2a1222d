"""How far a long call has got, and its ``reelmill.v1.Progress`` message."""

from __future__ import annotations

from dataclasses import dataclass

from reelmill.v1 import media_pb2
from runtime.durations import duration_message


@dataclass(frozen=True)
class ProgressUpdate:
    #: 0.0 to 1.0 over the whole call.
    fraction: float
    #: Media seconds processed (by the current step, where a call has several).
    processed_seconds: float = 0.0
    #: Media seconds per wall-clock second; 0 when unknown.
    speed: float = 0.0
    message: str = ""


def progress_message(update: ProgressUpdate) -> media_pb2.Progress:
    return media_pb2.Progress(
        fraction=update.fraction,
        processed=duration_message(update.processed_seconds),
        speed=update.speed,
        message=update.message,
    )
