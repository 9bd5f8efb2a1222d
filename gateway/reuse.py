"""Reuse of finished work: a stage whose inputs equal those of the same stage in an earlier job
copies that stage's outputs instead of running.

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
one), whatever became of their jobs. Its artifacts are copied to this job's own deterministic
keys (a server-side copy on S3, a hard link in the local store), so they live and die with this
job: deleting the earlier job, or purging it, takes nothing from this one. The copies, the
outputs and the job columns the stage sets are recorded in one transaction, with the stage's
``reused_from`` (the earlier job) and its SUCCEEDED event. If a copy fails (the earlier job was
deleted meanwhile) the stage runs as usual and overwrites whatever was copied.
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

from gateway.keys import job_prefix
from gateway.pipeline import Stage, StageContext, StageResult
from gateway.runs import Reusable, Runs
from reelmill.v1 import media_pb2
from runtime.errors import ReelmillError
from runtime.storage import ObjectStore

log = logging.getLogger(__name__)

#: A dependency that was skipped, in a fingerprint's upstream part.
SKIPPED = "skipped"
#: Copies in flight per reused stage.
COPY_CONCURRENCY = 16


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


def _moved(value: Any, old: str, new: str) -> Any:
    """``value`` (JSON) with every string under the prefix ``old`` moved under ``new``."""
    if isinstance(value, str):
        return new + value.removeprefix(old) if value.startswith(old) else value
    if isinstance(value, list):
        return [_moved(item, old, new) for item in value]
    if isinstance(value, dict):
        return {key: _moved(item, old, new) for key, item in value.items()}
    return value


class Reuser:
    """Finds a stage's earlier result and copies it into a job."""

    def __init__(self, runs: Runs, objects: ObjectStore) -> None:
        self.runs = runs
        self.objects = objects

    async def reuse(self, stage: Stage, ctx: StageContext, fingerprint: str) -> Reused | None:
        """The earlier result of ``stage`` with ``fingerprint``, copied into ``ctx``'s job; None
        when there is none, or when it could not be copied (the stage then runs)."""
        found = await self.runs.find_reusable(
            ctx.job.owner,
            stage.name,
            fingerprint,
            exclude=ctx.job.id,
            fields=stage.job_fields,
        )
        if found is None or any(name not in found.fields for name in stage.job_fields):
            return None
        try:
            artifacts = await self._copy(found, ctx.job.id)
        except ExceptionGroup as failed:  # the copies' TaskGroup
            log.warning(
                "could not copy an earlier result; running the stage",
                extra={"source_job_id": str(found.job_id), "error": str(failed.exceptions[0])},
            )
            return None
        if artifacts is None:
            return None
        old, new = job_prefix(found.job_id), job_prefix(ctx.job.id)
        return Reused(
            result=StageResult(
                outputs=_moved(found.outputs, old, new),
                artifacts=artifacts,
                job_fields=dict(found.fields),
            ),
            source=found.job_id,
        )

    async def _copy(self, found: Reusable, job_id: uuid.UUID) -> list[media_pb2.Artifact] | None:
        old, new = job_prefix(found.job_id), job_prefix(job_id)
        if any(not a.object.key.startswith(old) for a in found.artifacts):
            return None  # an artifact outside its job's prefix: not this job's to copy
        slots = asyncio.Semaphore(COPY_CONCURRENCY)
        copies: list[media_pb2.Artifact] = []

        async def copy(artifact: media_pb2.Artifact) -> None:
            target = new + artifact.object.key.removeprefix(old)
            async with slots:
                await self.objects.copy(artifact.object.key, target)
            copied = media_pb2.Artifact()
            copied.CopyFrom(artifact)
            copied.object.key = target
            copied.ClearField("create_time")
            copies.append(copied)

        async with asyncio.TaskGroup() as group:
            for artifact in found.artifacts:
                group.create_task(copy(artifact))
        return sorted(copies, key=lambda a: a.name)
