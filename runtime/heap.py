"""The cyclic garbage collector of a long-running server process.

CPython's collector stops the whole process for as long as it takes to traverse the generation
it collects. Its default thresholds (700, 10, 10) suit short scripts. In a gateway serving
10,000 WatchJob streams (about 1.4 million tracked objects) a full collection took 1.2 to 1.4 s
and came every 5 to 10 s while events flowed, so every event in flight waited that long: it was
the p99 of ``bench/watch.py``.

``settle`` runs once a process has built its service, just before it serves:

- ``gc.freeze()`` moves what start-up made (modules, classes, functions, settings; about
  140,000 objects in the gateway) into the permanent generation, which no collection
  traverses again;
- a larger youngest generation (``THRESHOLDS[0]`` net allocations) leaves a call's
  short-lived objects time to die by reference counting before a collection promotes them, so
  far fewer reach the oldest generation; a youngest collection then takes a few milliseconds
  to a few tens;
- a full collection waits for ``THRESHOLDS[2]`` collections of the middle generation (and, as
  always, for the objects promoted since the last one to be a quarter of those it would
  traverse), so the long pauses are rare. Cyclic garbage that reached the oldest generation
  waits longer to be freed; nothing else changes.

``record_pauses`` reports every collection's pause as the ``reelmill.gc.pause`` histogram.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from opentelemetry import metrics

#: ``gc.set_threshold`` for server processes: (youngest, middle, oldest).
THRESHOLDS = (10_000, 10, 100)
#: Bucket bounds of the pause histogram, in seconds.
PAUSE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


def settle() -> None:
    """Freezes what start-up made and sets the server thresholds (call once, before
    serving)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)


class PauseRecorder:
    """A ``gc.callbacks`` entry recording each collection's pause into ``reelmill.gc.pause``
    of ``meter``. Callbacks run in the thread that triggered the collection, with the GIL
    held: one at a time."""

    def __init__(self, meter: metrics.Meter) -> None:
        self.histogram = meter.create_histogram(
            "reelmill.gc.pause",
            unit="s",
            description="Pauses of the cyclic garbage collector, by the generation collected",
            explicit_bucket_boundaries_advisory=PAUSE_BUCKETS,
        )
        self.started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
        elif self.started:
            pause = time.perf_counter() - self.started
            self.started = 0.0
            self.histogram.record(pause, {"generation": str(info["generation"])})


_recorder: PauseRecorder | None = None


def record_pauses() -> None:
    """Records every collection's pause from now on, through the global meter provider
    (idempotent)."""
    global _recorder
    if _recorder is None:
        _recorder = PauseRecorder(metrics.get_meter("reelmill.runtime"))
        gc.callbacks.append(_recorder)
