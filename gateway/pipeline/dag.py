"""The DAG, declared once: every stage in an order where each comes after what it depends on.
Adding a stage is adding its module and its line here."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.pipeline.audio import AudioStage
from gateway.pipeline.base import Stage, Wiring
from gateway.pipeline.metadata import MetadataStage
from gateway.pipeline.probe import ProbeStage
from gateway.pipeline.transcode import TranscodeStage
from gateway.pipeline.transcribe import TranscribeStage
from gateway.pipeline.url_import import ImportStage
from gateway.store import StagePlan
from reelmill.v1 import pipeline_pb2

#: ingest/probe ─┬─> transcode
#:               └─> audio ─> transcribe ─> metadata       (a URL job starts with the import)
STAGES: tuple[type[Stage], ...] = (
    ImportStage,
    ProbeStage,
    TranscodeStage,
    AudioStage,
    TranscribeStage,
    MetadataStage,
)


def check_order(stages: Sequence[type[Stage]]) -> None:
    """Refuses a DAG with a repeated name or a dependency that is unknown or comes later (which
    is also how a cycle would show)."""
    seen: set[str] = set()
    for stage in stages:
        if stage.name in seen:
            raise ValueError(f"stage {stage.name!r} is declared twice")
        for dependency in stage.depends_on:
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
    a stage switched off by the spec, or whose dependency is, starts SKIPPED."""
    plans: list[StagePlan] = []
    states: dict[str, str] = {}
    for stage in stages:
        if not stage.planned(from_url=from_url):
            continue
        depends_on = tuple(d for d in stage.depends_on if d in states)
        skipped = not stage.enabled(spec) or any(states[d] == "SKIPPED" for d in depends_on)
        states[stage.name] = "SKIPPED" if skipped else "PENDING"
        plans.append(StagePlan(stage.name, depends_on, states[stage.name]))
    return plans
