"""The DAG (gateway/pipeline/dag.py): declared once, checked at import, planned per job."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from gateway.pipeline import STAGES, Stage, StageContext, StageResult, Wiring, build_stages
from gateway.pipeline.dag import check_order, plan_stages
from gateway.store import StagePlan
from reelmill.v1 import pipeline_pb2

SERVICES = ("ingest", "transcode", "transcribe", "metadata")


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
        "transcode",
        "audio",
        "transcribe",
        "metadata",
    ]
    assert {s.service for s in STAGES} <= set(SERVICES)
    check_order(STAGES)


async def test_an_uploaded_video_has_no_import_and_its_probe_depends_on_nothing(
    stages: list[Stage],
) -> None:
    assert plan_stages(stages, pipeline_pb2.PipelineSpec(), from_url=False) == [
        StagePlan("probe", (), "PENDING"),
        StagePlan("transcode", ("probe",), "PENDING"),
        StagePlan("audio", ("probe",), "PENDING"),
        StagePlan("transcribe", ("audio",), "PENDING"),
        StagePlan("metadata", ("transcribe",), "PENDING"),
    ]


async def test_a_url_job_starts_with_the_import(stages: list[Stage]) -> None:
    plans = plan_stages(stages, pipeline_pb2.PipelineSpec(), from_url=True)
    assert plans[:2] == [
        StagePlan("import", (), "PENDING"),
        StagePlan("probe", ("import",), "PENDING"),
    ]


async def test_a_disabled_stage_skips_what_depends_on_it(stages: list[Stage]) -> None:
    spec = pipeline_pb2.PipelineSpec(audio=pipeline_pb2.AudioSpec(disabled=True))
    states = {p.name: p.state for p in plan_stages(stages, spec, from_url=False)}
    assert states == {
        "probe": "PENDING",
        "transcode": "PENDING",
        "audio": "SKIPPED",
        "transcribe": "SKIPPED",
        "metadata": "SKIPPED",
    }


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
