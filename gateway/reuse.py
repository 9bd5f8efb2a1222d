"""Reuse of finished work: a stage whose inputs equal those of the same stage in an earlier job
takes that stage's outputs instead of running.

A stage's *fingerprint* is the SHA-256 of everything its outputs depend on:

- the owner (reuse never crosses owners: another tenant's results are never found, and a
  fingerprint computed for one owner cannot match another's);
- the stage's name and ``version`` (bumped when the code gives other outputs), and the
  gateway's ``REELMILL_REUSE_SALT`` (changed when a service's defaults change: its preset, its
  model, a Gemini key that makes Gemini the default engine);
- what the stage declares (``Stage.fingerprint_inputs``): the source's sha256, the stage's part
  of the spec, digests of the upstream results it reads (the WAV's sha256, the transcript);
- the fingerprints of the stages it runs after in this job (``depends_on`` and ``waits_for``,
  less what ``Stage.reuse_depends_on`` leaves out), or "skipped"; a dependency without one (a
  stage that is never reused) makes this stage never reused too.

A match is looked up among the owner's stages that SUCCEEDED with that fingerprint (the latest
one), whatever became of their jobs, and every object it names is checked to be still stored.
Its artifacts are then *referenced*, not copied: the new job's artifact rows name the same
objects (under the earlier job's prefix), so a resubmission costs no storage and no time
whatever the size of its renditions. The objects of a finished stage never change (a stage that
succeeded never runs again, in its job or a retry of it), and purges keep every object an
artifact row still names (``gateway.purges``): deleting the earlier job (its video) leaves the
referenced objects in place until the last job naming them goes too. The artifacts, outputs
and job columns are recorded in one transaction, with the stage's ``reused_from`` (the earlier
job, held with ``FOR KEY SHARE`` so it cannot be deleted meanwhile) and its SUCCEEDED event. If
the earlier job is gone by then, or an object is missing, the stage runs as usual.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.pipeline import Stage, StageContext, StageResult
from gateway.runs import Reusable, Runs
from reelmill.v1 import media_pb2
from runtime.errors import ReelmillError
from runtime.storage import ObjectStore

log = logging.getLogger(__name__)

#: A dependency that was skipped, in a fingerprint's upstream part.
SKIPPED = "skipped"
#: Object look-ups in flight per reused stage.
CHECK_CONCURRENCY = 16


def fingerprint(
    owner: str,
    stage: Stage,
    inputs: Mapping[str, Any],
    upstream: Mapping[str, str],
    salt: str = "",
) -> str:
    """The fingerprint of ``stage`` with these declared ``inputs`` and dependency
    fingerprints."""
    document = {
        "owner": owner,
        "stage": stage.name,
        "version": stage.version,
        "salt": salt,
        "inputs": inputs,
        "upstream": upstream,
    }
    encoded = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(encoded.encode()).hexdigest()


def stage_fingerprint(
    stage: Stage,
    ctx: StageContext,
    upstream: Mapping[str, str | None],
    salt: str = "",
) -> str | None:
    """The fingerprint of ``stage`` in this job, given the fingerprints of the stages that
    finished (None for one that has none, ``SKIPPED``); None when the stage is never reused.
    The dependencies are those the job planned for the stage (what it depends on and what it
    waits for, when the job has them), less those ``reuse_depends_on`` leaves out."""
    row = next(row for row in ctx.job.stages if row.name == stage.name)
    parents: dict[str, str] = {}
    for name in row.depends_on:
        if stage.reuse_depends_on is not None and name not in stage.reuse_depends_on:
            continue
        value = upstream.get(name)
        if value is None:
            return None
        parents[name] = value
    try:
        inputs = stage.fingerprint_inputs(ctx)
    except ReelmillError:
        return None  # e.g. the video is gone: the stage's own run says so
    if inputs is None:
        return None
    return fingerprint(ctx.job.owner, stage, inputs, parents, salt)


@dataclass(frozen=True)
class Reused:
    """What a reused stage records: the result as if it had run, and where it came from."""

    result: StageResult
    source: uuid.UUID


class Reuser:
    """Finds a stage's earlier result and makes it a job's own."""

    def __init__(self, runs: Runs, objects: ObjectStore) -> None:
        self.runs = runs
        self.objects = objects

    async def reuse(self, stage: Stage, ctx: StageContext, fingerprint: str) -> Reused | None:
        """The earlier result of ``stage`` with ``fingerprint`` for ``ctx``'s job; None when
        there is none, or when one of its objects is no longer stored (the stage then runs)."""
        found = await self.runs.find_reusable(
            ctx.job.owner,
            stage.name,
            fingerprint,
            exclude=ctx.job.id,
            fields=stage.job_fields,
        )
        if found is None or any(name not in found.fields for name in stage.job_fields):
            return None
        if not await self._stored(found):
            log.warning(
                "an earlier result's objects are gone; running the stage",
                extra={"source_job_id": str(found.job_id)},
            )
            return None
        artifacts = []
        for artifact in found.artifacts:
            referenced = media_pb2.Artifact()
            referenced.CopyFrom(artifact)
            referenced.ClearField("create_time")
            artifacts.append(referenced)
        return Reused(
            result=StageResult(
                outputs=dict(found.outputs), artifacts=artifacts, job_fields=dict(found.fields)
            ),
            source=found.job_id,
        )

    async def _stored(self, found: Reusable) -> bool:
        """Whether every artifact of ``found`` is still stored, with its recorded size."""
        slots = asyncio.Semaphore(CHECK_CONCURRENCY)

        async def stored(artifact: media_pb2.Artifact) -> bool:
            async with slots:
                try:
                    info = await self.objects.stat(artifact.object.key)
                except ReelmillError:
                    return False
            return info.size == artifact.size_bytes

        return all(await asyncio.gather(*(stored(a) for a in found.artifacts)))
