"""Reuse of finished work against a real Postgres and object store, with scripted stages: the
same source and spec reuse every stage's outputs (the same objects, nothing run), which outlive
the earlier job's deletion until the last job naming them goes; a different spec recomputes
what it changes; another owner's identical file is never reused; reuse can be switched off; a
stage after one that is never reused is never reused either; a missing object, or the earlier
job deleted while it is being reused, runs the stage."""

# ruff: noqa: F811 (the tests take the imported ``harness`` fixture by its name)

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar

from sqlalchemy import select

from gateway.convert import to_json
from gateway.db import models
from gateway.orchestrator import Orchestrator
from gateway.pipeline import Stage, StageContext, StageResult
from gateway.purges import Purger
from gateway.runs import Runs
from gateway.store import StagePlan
from reelmill.v1 import job_pb2, media_pb2, pipeline_pb2
from runtime.storage import ObjectStore

# harness: the orchestrator tests' fixture, which the tests below take by its name.
from tests.test_orchestrator import (
    OWNER,
    Harness,
    Scripted,
    harness,  # noqa: F401
    stage_of,
)

SOURCE = b"the same bytes, uploaded twice"


@dataclass
class Producing(Stage):
    """A stage whose one artifact (and job column, for the probe) follows from the source and
    its part of the spec, as a real stage's does."""

    name: str
    objects: ObjectStore
    depends_on: tuple[str, ...] = ()
    calls: int = 0

    #: Whether the transcode part of the spec is among the stage's inputs.
    reads_spec: ClassVar[bool] = True

    def fingerprint_inputs(self, ctx: StageContext) -> dict[str, Any]:
        spec = to_json(ctx.job.spec.transcode) if self.reads_spec else {}
        return {"source": ctx.video.sha256, "spec": spec}

    async def run(self, ctx: StageContext) -> StageResult:
        self.calls += 1
        key = f"{ctx.output_prefix}{self.name}/out.bin"
        preset = ctx.job.spec.transcode.preset if self.reads_spec else ""
        data = f"{self.name}:{ctx.video.sha256}:{preset}".encode()
        stored = await self.objects.put_bytes(key, data, content_type="x/made")
        artifact = media_pb2.Artifact(
            name=f"{self.name}/out.bin",
            kind=media_pb2.ARTIFACT_KIND_THUMBNAIL,
            object=media_pb2.ObjectRef(bucket=stored.bucket, key=stored.key),
            content_type="x/made",
            size_bytes=stored.size,
            sha256=stored.sha256,
            attributes={"stage": self.name},
        )
        fields = {"media_info": {"container": f"made by {self.name}"}} if self.job_fields else {}
        return StageResult(outputs={"file": {"key": key}}, artifacts=[artifact], job_fields=fields)


class Probe(Producing):
    job_fields = ("media_info",)
    reads_spec = False


def pipeline(h: Harness) -> tuple[Probe, Producing]:
    return Probe("probe", h.objects), Producing("transcode", h.objects, depends_on=("probe",))


async def upload(h: Harness, owner: str = OWNER, data: bytes = SOURCE) -> str:
    """A new video (a new id) with these bytes: a resubmission of the same file."""
    video_id = str(uuid.uuid4())
    stored = await h.objects.put_bytes(f"videos/{video_id}/source", data, content_type="video/mp4")
    await h.store.add_video(
        owner,
        media_pb2.Video(
            id=video_id,
            filename="clip.mp4",
            content_type="video/mp4",
            size_bytes=stored.size,
            sha256=stored.sha256,
            object=media_pb2.ObjectRef(bucket=stored.bucket, key=stored.key),
        ),
    )
    return video_id


async def run_job(
    h: Harness,
    stages: Sequence[Stage],
    *,
    owner: str = OWNER,
    spec: pipeline_pb2.PipelineSpec | None = None,
    video_id: str | None = None,
) -> job_pb2.Job:
    job, _ = await h.store.create_job(
        owner,
        video_id=video_id or await upload(h, owner),
        source_url=None,
        spec=spec or pipeline_pb2.PipelineSpec(),
        request_id="",
        labels={},
        stages=[StagePlan(s.name, s.depends_on, "PENDING") for s in stages],
    )
    runs = Runs(h.sessions, "w", purge_delay=timedelta(0))
    orchestrator = Orchestrator(h.settings, runs, stages, h.objects)
    return await finish(h, orchestrator, owner, job.id)


async def finish(h: Harness, orchestrator: Orchestrator, owner: str, job_id: str) -> job_pb2.Job:
    task = asyncio.create_task(orchestrator.run())
    try:
        for _ in range(400):
            job = await h.store.get_job(owner, job_id)
            if job.state in (job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED):
                return job
            await asyncio.sleep(0.02)
        raise AssertionError("the job did not end")
    finally:
        orchestrator.draining = True
        orchestrator.wake.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def read(objects: ObjectStore, key: str) -> bytes:
    return b"".join([chunk async for chunk in objects.read(key)])


async def outputs_of(h: Harness, job_id: str) -> dict[str, Any]:
    async with h.sessions() as session:
        rows = await session.execute(
            select(models.JobStage.name, models.JobStage.outputs).where(
                models.JobStage.job_id == uuid.UUID(job_id)
            )
        )
        return {name: outputs for name, outputs in rows.all()}


async def test_a_resubmission_reuses_every_stage(harness: Harness) -> None:
    h = harness
    probe, transcode = pipeline(h)
    first = await run_job(h, (probe, transcode))
    assert first.state == job_pb2.JOB_STATE_SUCCEEDED
    second = await run_job(h, (probe, transcode))

    assert second.state == job_pb2.JOB_STATE_SUCCEEDED, second.error
    assert (probe.calls, transcode.calls) == (1, 1)  # nothing ran the second time
    for name in ("probe", "transcode"):
        stage = stage_of(second, name)
        assert stage.reused_from_job_id == first.id
        assert stage.state == job_pb2.STAGE_STATE_SUCCEEDED and stage.attempts == 0
    assert second.media_info == first.media_info
    assert [a.name for a in second.artifacts] == [a.name for a in first.artifacts]
    for old, new in zip(first.artifacts, second.artifacts, strict=True):
        # The same object: no copy, no storage.
        assert (new.object, new.sha256, new.size_bytes, new.attributes, new.stage) == (
            old.object,
            old.sha256,
            old.size_bytes,
            old.attributes,
            old.stage,
        )
        assert (await h.objects.stat(new.object.key)).sha256 == new.sha256
    assert await outputs_of(h, second.id) == await outputs_of(h, first.id)
    events = await h.events(second.id)
    updates = [e.stage_updated for e in events if e.WhichOneof("payload") == "stage_updated"]
    assert [u.stage.state for u in updates] == [job_pb2.STAGE_STATE_SUCCEEDED] * 2
    assert all(u.message == f"reused the outputs of job {first.id}" for u in updates)
    assert all(u.artifacts for u in updates)

    # The first job goes: what the second one names stays (and only that) ...
    stray = f"jobs/{first.id}/transcode/unrecorded.bin"
    await h.objects.put_bytes(stray, b"x", content_type="x/y")
    await h.store.delete_video(OWNER, first.video_id)
    await Purger(h.sessions, h.objects, interval=1).sweep()
    assert await h.objects.list_keys(f"jobs/{first.id}/") == sorted(
        a.object.key for a in second.artifacts
    )
    assert (await h.store.get_job(OWNER, second.id)).artifacts == second.artifacts
    # ... until the last job naming it goes too.
    await h.store.delete_video(OWNER, second.video_id)
    await Purger(h.sessions, h.objects, interval=1).sweep()
    assert await h.objects.list_keys(f"jobs/{first.id}/") == []


async def test_a_different_spec_recomputes_what_it_changes(harness: Harness) -> None:
    h = harness
    probe, transcode = pipeline(h)
    first = await run_job(h, (probe, transcode))
    slower = pipeline_pb2.PipelineSpec(transcode=pipeline_pb2.TranscodeSpec(preset="slow"))
    second = await run_job(h, (probe, transcode), spec=slower)
    assert second.state == job_pb2.JOB_STATE_SUCCEEDED
    # The probe does not read the transcode spec: reused; the transcode does: run.
    assert (probe.calls, transcode.calls) == (1, 2)
    assert stage_of(second, "probe").reused_from_job_id == first.id
    assert not stage_of(second, "transcode").reused_from_job_id
    made = next(a for a in second.artifacts if a.name == "transcode/out.bin")
    assert (await read(h.objects, made.object.key)).endswith(b":slow")
    # And that result is reused in turn by the next job with the same spec.
    third = await run_job(h, (probe, transcode), spec=slower)
    assert stage_of(third, "transcode").reused_from_job_id == second.id
    assert (probe.calls, transcode.calls) == (1, 2)


async def test_another_owners_identical_file_is_not_reused(harness: Harness) -> None:
    h = harness
    probe, transcode = pipeline(h)
    first = await run_job(h, (probe, transcode))
    theirs = await run_job(h, (probe, transcode), owner="mallory")
    assert theirs.state == job_pb2.JOB_STATE_SUCCEEDED
    assert (probe.calls, transcode.calls) == (2, 2)
    assert all(not s.reused_from_job_id for s in theirs.stages)
    # Nothing of alice's in mallory's job: her own objects, under her own job.
    for artifact in theirs.artifacts:
        assert artifact.object.key.startswith(f"jobs/{theirs.id}/")
    assert first.id not in str(await outputs_of(h, theirs.id))


async def test_reuse_can_be_switched_off(harness: Harness) -> None:
    h = harness
    probe, transcode = pipeline(h)
    await run_job(h, (probe, transcode))
    again = await run_job(h, (probe, transcode), spec=pipeline_pb2.PipelineSpec(reuse=False))
    assert again.state == job_pb2.JOB_STATE_SUCCEEDED
    assert (probe.calls, transcode.calls) == (2, 2)
    # Its own results are reusable by the next job that allows it.
    latest = await run_job(h, (probe, transcode))
    assert stage_of(latest, "probe").reused_from_job_id == again.id


async def test_a_stage_after_one_never_reused_is_never_reused(harness: Harness) -> None:
    h = harness
    opaque = Scripted("probe", h.objects)  # declares no fingerprint inputs
    transcode = Producing("transcode", h.objects, depends_on=("probe",))
    await run_job(h, (opaque, transcode))
    second = await run_job(h, (opaque, transcode))
    assert second.state == job_pb2.JOB_STATE_SUCCEEDED
    assert (opaque.calls, transcode.calls) == (2, 2)


async def test_a_missing_object_runs_the_stage(harness: Harness) -> None:
    h = harness
    probe, transcode = pipeline(h)
    first = await run_job(h, (probe, transcode))
    made = next(a for a in first.artifacts if a.name == "transcode/out.bin")
    await h.objects.delete(made.object.key)  # gone behind the database's back
    second = await run_job(h, (probe, transcode))
    assert second.state == job_pb2.JOB_STATE_SUCCEEDED
    assert (probe.calls, transcode.calls) == (1, 2)
    assert stage_of(second, "probe").reused_from_job_id == first.id
    assert not stage_of(second, "transcode").reused_from_job_id
    ours = next(a for a in second.artifacts if a.name == "transcode/out.bin")
    assert (await h.objects.stat(ours.object.key)).sha256 == ours.sha256


class Vanishing(Runs):
    """Runs whose reuse look-up finds the earlier job, which is then deleted before the reuse
    is recorded (its DeleteVideo commits in between)."""

    def __init__(self, h: Harness, video_id: str) -> None:
        super().__init__(h.sessions, "w", purge_delay=timedelta(0))
        self.store = h.store
        self.video_id = video_id

    async def find_reusable(self, *args: Any, **kwargs: Any) -> Any:
        found = await super().find_reusable(*args, **kwargs)
        if found is not None:
            await self.store.delete_video(OWNER, self.video_id)
        return found


async def test_an_earlier_job_deleted_while_it_is_reused_runs_the_stage(harness: Harness) -> None:
    h = harness
    probe, transcode = pipeline(h)
    first = await run_job(h, (probe, transcode))
    job, _ = await h.store.create_job(
        OWNER,
        video_id=await upload(h),
        source_url=None,
        spec=pipeline_pb2.PipelineSpec(),
        request_id="",
        labels={},
        stages=[StagePlan(s.name, s.depends_on, "PENDING") for s in (probe, transcode)],
    )
    runs = Vanishing(h, first.video_id)
    second = await finish(
        h, Orchestrator(h.settings, runs, (probe, transcode), h.objects), OWNER, job.id
    )
    assert second.state == job_pb2.JOB_STATE_SUCCEEDED, second.error
    assert (probe.calls, transcode.calls) == (2, 2)
    assert not any(s.reused_from_job_id for s in second.stages)
    for artifact in second.artifacts:
        assert artifact.object.key.startswith(f"jobs/{second.id}/")
