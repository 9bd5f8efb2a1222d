"""The DAG, declared once: every stage in an order where each comes after what it depends on.
Adding a stage is adding its module and its line here."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.pipeline.audio import AudioStage
from gateway.pipeline.base import Stage, Wiring
from gateway.pipeline.clips import ClipsStage
from gateway.pipeline.metadata import MetadataStage
from gateway.pipeline.ocr import OcrStage
from gateway.pipeline.probe import ProbeStage
from gateway.pipeline.scenes import ScenesStage
from gateway.pipeline.stills import StillsStage
from gateway.pipeline.transcode import TranscodeStage
from gateway.pipeline.transcribe import TranscribeStage
from gateway.pipeline.url_import import ImportStage
from gateway.store import StagePlan
from reelmill.v1 import pipeline_pb2

#: ingest/probe ─┬─> scenes ─┬─> ocr ─────────────────┐
#:               │           └─> stills (poster,      │    (a URL job starts with the import)
#:               │               thumbnails)          │
#:               ├─> transcode (ladder, HLS, ...)     │
#:               └─> audio ─> transcribe ─────────────┴─> metadata ─> clips
#: (stills and metadata wait for scenes and ocr when those run, and run without them; metadata
#: reads the shots as a hint for its topic boundaries; clips needs only the probe, and waits
#: for transcribe and metadata to cut the chapters and caption them)
STAGES: tuple[type[Stage], ...] = (
    ImportStage,
    ProbeStage,
    ScenesStage,
    OcrStage,
    TranscodeStage,
    StillsStage,
    AudioStage,
    TranscribeStage,
    MetadataStage,
    ClipsStage,
)


def check_order(stages: Sequence[type[Stage]]) -> None:
    """Refuses a DAG with a repeated name or a dependency that is unknown or comes later (which
    is also how a cycle would show)."""
    seen: set[str] = set()
    for stage in stages:
        if stage.name in seen:
            raise ValueError(f"stage {stage.name!r} is declared twice")
        for dependency in (*stage.depends_on, *stage.waits_for):
            if dependency not in seen:
                raise ValueError(
                    f"stage {stage.name!r} depends on {dependency!r}, which is not declared "
                    "before it"
                )
        seen.add(stage.name)


check_order(STAGES)


def build_stages(wiring: Wiring, stages: Sequence[type[Stage]] = STAGES) -> list[Stage]:
    return [stage.build(wiring) for stage in stages]


def plan_stages(
    stages: Sequence[Stage], spec: pipeline_pb2.PipelineSpec, *, from_url: bool
) -> list[StagePlan]:
    """The stages of a new job, with their dependencies and initial states. A stage the job
    does not have (the import of an uploaded video) is left out, and so are dependencies on it;
    a stage switched off by the spec, or one of whose ``depends_on`` is, starts SKIPPED. The
    stages it waits for that start SKIPPED are left out of its dependencies (nothing to wait
    for)."""
    plans: list[StagePlan] = []
    states: dict[str, str] = {}
    for stage in stages:
        if not stage.planned(from_url=from_url):
            continue
        needs = tuple(d for d in stage.depends_on if d in states)
        skipped = not stage.enabled(spec) or any(states[d] == "SKIPPED" for d in needs)
        waits = tuple(d for d in stage.waits_for if states.get(d, "SKIPPED") != "SKIPPED")
        states[stage.name] = "SKIPPED" if skipped else "PENDING"
        plans.append(StagePlan(stage.name, needs + waits, states[stage.name]))
    return plans
