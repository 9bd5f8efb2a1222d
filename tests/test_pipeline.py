"""The DAG (gateway/pipeline/dag.py): declared once, checked at import, planned per job."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from gateway.pipeline import STAGES, Stage, StageContext, StageResult, Wiring, build_stages
from gateway.pipeline.dag import check_order, plan_stages
from gateway.store import StagePlan
from reelmill.v1 import pipeline_pb2

SERVICES = ("ingest", "transcode", "transcribe", "metadata", "vision")


@pytest.fixture
async def stages() -> AsyncIterator[list[Stage]]:
    channels = {name: grpc.aio.insecure_channel("127.0.0.1:9") for name in SERVICES}
    built = build_stages(Wiring(channels, bucket="media"))
    yield built
    for channel in channels.values():
        await channel.close()


def test_every_stage_calls_a_known_service_and_the_order_is_topological() -> None:
    assert [s.name for s in STAGES] == [
        "import",
        "probe",
        "scenes",
        "ocr",
        "transcode",
        "stills",
        "audio",
        "transcribe",
        "metadata",
        "clips",
    ]
    assert {s.service for s in STAGES} <= set(SERVICES)
    check_order(STAGES)


async def test_an_uploaded_video_has_no_import_and_its_probe_depends_on_nothing(
    stages: list[Stage],
) -> None:
    assert plan_stages(stages, pipeline_pb2.PipelineSpec(), from_url=False) == [
        StagePlan("probe", (), "PENDING"),
        StagePlan("scenes", ("probe",), "PENDING"),
        StagePlan("ocr", ("scenes",), "PENDING"),
        StagePlan("transcode", ("probe",), "PENDING"),
        StagePlan("stills", ("probe", "scenes"), "PENDING"),
        StagePlan("audio", ("probe",), "PENDING"),
        StagePlan("transcribe", ("audio",), "PENDING"),
        StagePlan("metadata", ("transcribe", "scenes", "ocr"), "PENDING"),
        StagePlan("clips", ("probe", "transcribe", "metadata"), "SKIPPED"),  # none asked for
    ]


async def test_a_url_job_starts_with_the_import(stages: list[Stage]) -> None:
    plans = plan_stages(stages, pipeline_pb2.PipelineSpec(), from_url=True)
    assert plans[:2] == [
        StagePlan("import", (), "PENDING"),
        StagePlan("probe", ("import",), "PENDING"),
    ]


async def test_a_disabled_stage_skips_what_depends_on_it(stages: list[Stage]) -> None:
    spec = pipeline_pb2.PipelineSpec(scenes=pipeline_pb2.ScenesSpec(disabled=True))
    states = {p.name: p.state for p in plan_stages(stages, spec, from_url=False)}
    assert states == {
        "probe": "PENDING",
        "scenes": "SKIPPED",
        "ocr": "SKIPPED",
        "transcode": "PENDING",
        "stills": "PENDING",
        "audio": "PENDING",
        "transcribe": "PENDING",
        "metadata": "PENDING",
        "clips": "SKIPPED",
    }


async def test_a_stage_waits_only_for_what_is_planned_to_run(stages: list[Stage]) -> None:
    """The stills come from the shots when the scenes stage runs, and by time when it does
    not (the ladder never waits for it); metadata reads the transcript and the on-screen text,
    whichever exists, and the shots as a hint for its topic boundaries."""
    spec = pipeline_pb2.PipelineSpec(
        scenes=pipeline_pb2.ScenesSpec(disabled=True), audio=pipeline_pb2.AudioSpec(disabled=True)
    )
    plans = {p.name: p for p in plan_stages(stages, spec, from_url=False)}
    assert plans["stills"] == StagePlan("stills", ("probe",), "PENDING")
    # Nothing to read: it starts and is skipped for want of input (see MetadataStage).
    assert plans["metadata"] == StagePlan("metadata", (), "PENDING")
    spec = pipeline_pb2.PipelineSpec(audio=pipeline_pb2.AudioSpec(disabled=True))
    plans = {p.name: p for p in plan_stages(stages, spec, from_url=False)}
    assert plans["metadata"] == StagePlan("metadata", ("scenes", "ocr"), "PENDING")
    assert plans["transcribe"].state == "SKIPPED"


def stage(name: str, *depends_on: str) -> type[Stage]:
    class Declared(Stage):
        service = "ingest"

        async def run(self, ctx: StageContext) -> StageResult:
            return StageResult()

    Declared.name = name
    Declared.depends_on = depends_on
    return Declared


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        ((stage("a"), stage("a")), "declared twice"),
        ((stage("a", "b"), stage("b")), "'b', which is not declared before it"),
        ((stage("a", "nowhere"),), "'nowhere', which is not declared before it"),
        ((stage("a", "a"),), "'a', which is not declared before it"),
    ],
)
def test_a_bad_dag_is_refused(declared: tuple[type[Stage], ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_order(declared)


async def test_the_stills_go_with_the_transcode_and_its_thumbnails(stages: list[Stage]) -> None:
    for spec in (
        pipeline_pb2.PipelineSpec(transcode=pipeline_pb2.TranscodeSpec(disabled=True)),
        pipeline_pb2.PipelineSpec(
            transcode=pipeline_pb2.TranscodeSpec(
                thumbnails=pipeline_pb2.ThumbnailSpec(enabled=False)
            )
        ),
    ):
        states = {p.name: p.state for p in plan_stages(stages, spec, from_url=False)}
        assert states["stills"] == "SKIPPED"


async def test_clips_run_when_asked_and_without_the_transcode(stages: list[Stage]) -> None:
    """A clips-only job (transcode disabled) cuts from the source: probe, audio, transcribe,
    metadata and clips run, no ladder; TranscodeSpec.clips count only with the transcode on."""
    clips_only = pipeline_pb2.PipelineSpec(
        transcode=pipeline_pb2.TranscodeSpec(disabled=True),
        scenes=pipeline_pb2.ScenesSpec(disabled=True),
        clips=pipeline_pb2.ClipsSpec(by_chapters=True),
    )
    plans = {p.name: p for p in plan_stages(stages, clips_only, from_url=False)}
    assert {n: p.state for n, p in plans.items()} == {
        "probe": "PENDING",
        "scenes": "SKIPPED",
        "ocr": "SKIPPED",
        "transcode": "SKIPPED",
        "stills": "SKIPPED",
        "audio": "PENDING",
        "transcribe": "PENDING",
        "metadata": "PENDING",
        "clips": "PENDING",
    }
    assert plans["clips"].depends_on == ("probe", "transcribe", "metadata")
    ranges = pipeline_pb2.PipelineSpec(
        audio=pipeline_pb2.AudioSpec(disabled=True),
        clips=pipeline_pb2.ClipsSpec(ranges=[pipeline_pb2.ClipSpec()]),
    )
    plans = {p.name: p for p in plan_stages(stages, ranges, from_url=False)}
    # Nothing to transcribe: the clips wait for the metadata (from the on-screen text) only.
    assert plans["clips"] == StagePlan("clips", ("probe", "metadata"), "PENDING")
    legacy = pipeline_pb2.TranscodeSpec(clips=[pipeline_pb2.ClipSpec()])
    states = {
        p.name: p.state
        for p in plan_stages(stages, pipeline_pb2.PipelineSpec(transcode=legacy), from_url=False)
    }
    assert states["clips"] == "PENDING"
    legacy.disabled = True
    states = {
        p.name: p.state
        for p in plan_stages(stages, pipeline_pb2.PipelineSpec(transcode=legacy), from_url=False)
    }
    assert states["clips"] == "SKIPPED"
