"""Overall progress across a request's steps.

Each step has a weight (roughly its expected cost in seconds of 720p encoding); the overall
fraction is the finished steps' weight plus the current step's share of its own, over the
total. Updates are monotonic and throttled (at most one per ``min_interval`` unless the step
changes), so a fast ffmpeg cannot flood a slow stream.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from runtime.progress import ProgressUpdate
from services.transcode.ffmpeg_runner import FfmpegProgress


class ProgressTracker:
    def __init__(
        self,
        emit: Callable[[ProgressUpdate], None],
        weights: Mapping[str, float] | None = None,
        *,
        min_interval: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._emit = emit
        self._weights: dict[str, float] = {}
        self._total = 1.0
        self._done = 0.0
        self._current: str | None = None
        self._message = ""
        self._fraction = 0.0
        self._last_time = float("-inf")
        self._min_interval = min_interval
        self._clock = clock
        if weights:
            self.set_weights(weights)

    @property
    def fraction(self) -> float:
        return self._fraction

    def set_weights(self, weights: Mapping[str, float]) -> None:
        """The steps to come and their weights (names must be unique)."""
        self._weights = {name: max(0.0, weight) for name, weight in weights.items()}
        self._total = sum(self._weights.values()) or 1.0

    def note(self, message: str) -> None:
        """A message without progress (e.g. waiting for a slot)."""
        self._message = message
        self._send(self._fraction, force=True)

    def begin(self, step: str, message: str) -> None:
        if self._current is not None:
            self.end()
        self._current = step
        self._message = message
        self._send(self._overall(0.0), force=True)

    def update(self, step_fraction: float, *, processed: float = 0.0, speed: float = 0.0) -> None:
        self._send(self._overall(step_fraction), processed=processed, speed=speed)

    def ffmpeg(self, progress: FfmpegProgress) -> None:
        """A ``FfmpegRunner`` progress callback for the current step."""
        self.update(progress.fraction, processed=progress.out_time, speed=progress.speed)

    def end(self) -> None:
        if self._current is not None:
            self._done += self._weights.get(self._current, 0.0)
            self._current = None

    def finish(self, message: str = "done") -> None:
        self._current = None
        self._done = self._total
        self._message = message
        self._send(1.0, force=True)

    def _overall(self, step_fraction: float) -> float:
        weight = self._weights.get(self._current or "", 0.0)
        share = weight * min(1.0, max(0.0, step_fraction))
        return min(1.0, (self._done + share) / self._total)

    def _send(
        self, fraction: float, *, processed: float = 0.0, speed: float = 0.0, force: bool = False
    ) -> None:
        fraction = max(self._fraction, fraction)
        now = self._clock()
        if not force and (now - self._last_time < self._min_interval or fraction == self._fraction):
            return
        self._fraction = fraction
        self._last_time = now
        self._emit(ProgressUpdate(fraction, processed, speed, self._message))
