"""Runs jobs: claims queued (or abandoned) jobs, keeps their leases, runs their stages as a
DAG — independent branches concurrently — and records every step.

One orchestrator per gateway process, started as a background task. A job is claimed with
``FOR UPDATE SKIP LOCKED`` and a lease that a keeper task renews; if the keeper learns the
lease is gone (another replica took over, or the job was cancelled), the run is cancelled,
which cancels its in-flight RPCs, which stop their ffmpeg/ASR work. Stages already finished
(recorded with their outputs) are skipped when a job resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from gateway import metrics
from gateway.pipeline import Stage, StageContext, StageResult, finished
from gateway.reuse import SKIPPED, Reuser, stage_fingerprint
from gateway.runs import ClaimedJob, LeaseLost, Runs, SourceGone
from gateway.settings import GatewaySettings
from reelmill.retry import Backoff
from reelmill.v1 import job_pb2
from runtime.errors import DeadlineExceeded, Internal, ReelmillError
from runtime.logs import log_context
from runtime.storage import ObjectStore
from runtime.telemetry import context_from

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

#: Between failed claims while the database is unreachable.
CLAIM_BACKOFF = Backoff(initial=0.5, maximum=10.0)
#: An attempt that ran this share of its budget or more before DEADLINE_EXCEEDED used all of it.
WHOLE_BUDGET = 0.98


#: Reasons of transient codes that a retry would only repeat (the import already retried
#: within its own limits, the input itself is too large, or no longer budget is left).
PERMANENT_REASONS = frozenset({"DOWNLOAD_TOO_LARGE", "DOWNLOAD_TIMEOUT", "STAGE_TIMEOUT"})


def retryable(error: ReelmillError) -> bool:
    """Whether a stage that failed with ``error`` may succeed when run again: UNAVAILABLE,
    DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED and transport failures may; INVALID_ARGUMENT,
    FAILED_PRECONDITION, NOT_FOUND and the like never do."""
    return error.transient and error.reason not in PERMANENT_REASONS


class StageFailed(Exception):
    def __init__(self, stage: str, error: ReelmillError) -> None:
        super().__init__(f"{stage}: {error.message}")
        self.stage = stage
        self.error = error


def job_error(error: ReelmillError) -> job_pb2.JobError:
    message = error.message
    if isinstance(error, Internal) or type(error) is ReelmillError:
        message = "internal error"
    return job_pb2.JobError(code=error.code.name, reason=error.reason, message=message)


class Orchestrator:
    def __init__(
        self,
        settings: GatewaySettings,
        runs: Runs,
        stages: Sequence[Stage],
        objects: ObjectStore | None = None,
    ) -> None:
        self.settings = settings
        self.runs = runs
        self.stages = {s.name: s for s in stages}
        #: Takes earlier results of stages with the same fingerprint (with an object store).
        self.reuser = Reuser(runs, objects) if objects is not None else None
        self.lease = timedelta(seconds=settings.lease_seconds)
        #: Between the attempts of a stage.
        self.retry_backoff = Backoff(
            initial=settings.retry_initial_backoff_seconds,
            maximum=settings.retry_max_backoff_seconds,
        )
        self.wake = asyncio.Event()
        self.draining = False
        self.running: dict[uuid.UUID, asyncio.Task[None]] = {}
        #: Why a run was cancelled: "cancelled" (job cancel), "lease" (lost), "drain".
        self.stop_reasons: dict[uuid.UUID, str] = {}

    # notifications (wired to the event hub) ---------------------------------------------------

    def on_queued(self, _payload: str) -> None:
        self.wake.set()

    def on_cancelled(self, payload: str) -> None:
        with contextlib.suppress(ValueError):
            self._stop(uuid.UUID(payload), "cancelled")

    def _stop(self, job_id: uuid.UUID, reason: str) -> None:
        task = self.running.get(job_id)
        if task is not None and not task.done():
            self.stop_reasons.setdefault(job_id, reason)
            task.cancel()

    # the claim loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        failures = 0
        async with asyncio.TaskGroup() as group:
            while not self.draining:
                free = self.settings.max_concurrent_jobs - len(self.running)
                if free > 0:
                    try:
                        # A job whose run here is still ending (cancelled, then retried)
                        # waits for it rather than running twice.
                        claimed = await self.runs.claim(free, self.lease, self.running.keys())
                        failures = 0
                    except Exception as exc:  # database down: keep trying
                        failures += 1
                        log.warning("claiming jobs failed: %s", exc)
                        await asyncio.sleep(CLAIM_BACKOFF.delay(failures))
                        continue
                    for job in claimed:
                        task = group.create_task(self._run_job(job), name=f"job-{job.id}")
                        self.running[job.id] = task
                        task.add_done_callback(functools.partial(self._done, job.id))
                    if len(claimed) == free:
                        continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), self.settings.poll_seconds)
                self.wake.clear()

    def _done(self, job_id: uuid.UUID, _task: asyncio.Task[None]) -> None:
        self.running.pop(job_id, None)
        self.stop_reasons.pop(job_id, None)
        self.wake.set()

    async def drain(self, seconds: float) -> None:
        """Stops claiming; gives running jobs ``seconds`` to finish, then hands them back."""
        self.draining = True
        self.wake.set()
        tasks = list(self.running.values())
        if tasks:
            log.info("draining %d running jobs", len(tasks))
            _, pending = await asyncio.wait(tasks, timeout=seconds)
            for job_id, task in list(self.running.items()):
                if task in pending:
                    self._stop(job_id, "drain")
            if pending:
                await asyncio.wait(pending, timeout=10)

    # one job ----------------------------------------------------------------------------------

    async def _keep_lease(self, job_id: uuid.UUID) -> None:
        interval = self.settings.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await self.runs.renew(job_id, self.lease)
            except LeaseLost:
                log.warning("lease lost; stopping the run")
                self._stop(job_id, "lease")
                return
            except Exception as exc:  # database hiccup: the lease outlives a few of these
                log.warning("renewing the lease failed: %s", exc)

    async def _run_job(self, job: ClaimedJob) -> None:
        """Runs ``job``; never raises but CancelledError, so that one job whose outcome cannot
        be recorded (the database gone for longer than the runner retries) does not end the
        claim loop's TaskGroup, and with it every other job of this gateway. Such a job stays
        claimed until its lease expires, then any replica resumes it."""
        try:
            await self._run_claimed(job)
        except Exception:
            with log_context(job_id=str(job.id)):
                log.exception("could not record the job's outcome; it resumes after its lease")

    async def _run_claimed(self, job: ClaimedJob) -> None:
        # Every run of the job, on whichever gateway, is a child of the CreateJob call's span:
        # one trace per job, across retries and takeovers.
        with (
            log_context(job_id=str(job.id)),
            tracer.start_as_current_span(
                "job.run",
                context=context_from(job.trace_context),
                attributes={"reelmill.job_id": str(job.id), "reelmill.job.run": job.runs},
            ),
        ):
            keeper = asyncio.create_task(self._keep_lease(job.id), name=f"lease-{job.id}")
            try:
                await self.runs.start(job.id)
                log.info("job started", extra={"resumed": job.state == "RUNNING"})
                try:
                    async with asyncio.timeout(self._seconds_left(job)):
                        await self._run_stages(job)
                except TimeoutError:
                    raise StageFailed(
                        "job",
                        DeadlineExceeded(
                            "the job did not finish before its deadline",
                            reason="JOB_DEADLINE_EXCEEDED",
                        ),
                    ) from None
                await asyncio.shield(self.runs.finish(job.id, "SUCCEEDED"))
                log.info("job succeeded")
            except StageFailed as failure:
                log.info("job failed at %s: %s", failure.stage, failure.error.message)
                await asyncio.shield(self._finish_failed(job.id, failure.error))
            except LeaseLost:
                log.info("job no longer ours (cancelled or taken over)")
            except asyncio.CancelledError:
                reason = self.stop_reasons.get(job.id, "drain")
                log.info("job run stopped", extra={"reason": reason})
                if reason == "drain":
                    await asyncio.shield(self.runs.release(job.id))
                # The task is ours: it ends here rather than re-raising into the TaskGroup.
            except Exception as exc:
                log.exception("job run crashed")
                error = exc if isinstance(exc, ReelmillError) else Internal("job run crashed")
                await asyncio.shield(self._finish_failed(job.id, error))
            finally:
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper

    @staticmethod
    def _seconds_left(job: ClaimedJob) -> float | None:
        if job.deadline is None:
            return None
        return (job.deadline - datetime.now(UTC)).total_seconds()

    def _attempt_timeout(self, job: ClaimedJob, budget: float) -> float:
        """An attempt's deadline: the stage's budget, never past the job's deadline."""
        left = self._seconds_left(job)
        return budget if left is None else max(min(budget, left), 0.0)

    def _after_failure(
        self, name: str, error: ReelmillError, timeout: float, used: float, job: ClaimedJob
    ) -> tuple[float, ReelmillError]:
        """The next attempt's budget, and the error as the retry decision should see it.

        An attempt that timed out after using its whole budget would most likely time out
        again with the same one: the next attempt gets twice the budget (still never past the
        job's deadline). When the budget cannot grow any more, because the job's deadline is
        what bounded it, the stage is not retried: it fails DEADLINE_EXCEEDED
        ``STAGE_TIMEOUT``. A DEADLINE_EXCEEDED that came early (a service's own deadline) is
        an ordinary transient failure."""
        if not isinstance(error, DeadlineExceeded) or used < timeout * WHOLE_BUDGET:
            return timeout, error
        grown = self._attempt_timeout(job, timeout * 2)
        if grown <= timeout:
            return timeout, DeadlineExceeded(
                f"the {name} stage did not finish within {timeout:.0f}s, and the job's "
                "deadline leaves no longer budget for another attempt",
                reason="STAGE_TIMEOUT",
            )
        return grown, error

    async def _attempt(self, stage: Stage, ctx: StageContext) -> StageResult:
        """One attempt of a stage, as a span (child of the job's run) whose children are the
        service's spans: the gRPC interceptors carry the context."""
        with tracer.start_as_current_span(
            f"stage {stage.name}",
            attributes={
                "reelmill.job_id": str(ctx.job.id),
                "reelmill.stage": stage.name,
                "reelmill.attempt": ctx.attempt,
                "reelmill.timeout_seconds": round(ctx.timeout, 3),
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            started = time.monotonic()
            outcome = "failed"
            try:
                result = await stage.run(ctx)
                outcome = "succeeded"
                return result
            except asyncio.CancelledError:
                outcome = "cancelled"
                raise
            except ReelmillError as error:
                span.set_status(Status(StatusCode.ERROR, f"{error.code.name}: {error.message}"))
                span.set_attribute("reelmill.error.code", error.code.name)
                span.set_attribute("reelmill.error.reason", error.reason)
                raise
            finally:
                metrics.stage_finished(stage.name, outcome, time.monotonic() - started)

    async def _finish_failed(self, job_id: uuid.UUID, error: ReelmillError) -> None:
        with contextlib.suppress(LeaseLost):
            await self.runs.finish(job_id, "FAILED", job_error(error))

    async def _run_stages(self, job: ClaimedJob) -> None:
        rows = {row.name: row for row in job.stages}
        outputs: dict[str, dict[str, Any]] = {
            name: dict(row.outputs or {}) for name, row in rows.items() if finished(row)
        }
        #: Fingerprints of the finished stages (SKIPPED for skipped ones, None when unknown).
        fingerprints: dict[str, str | None] = {
            name: SKIPPED if row.state == "SKIPPED" else row.fingerprint
            for name, row in rows.items()
            if finished(row)
        }
        fields: dict[str, Any] = dict(job.fields)
        done = {name for name, row in rows.items() if finished(row)}
        todo = [name for name in rows if name not in done and name in self.stages]
        active: dict[asyncio.Task[StageResult | None], str] = {}
        try:
            while todo or active:
                for name in list(todo):
                    if all(dep in done for dep in rows[name].depends_on):
                        todo.remove(name)
                        task = asyncio.create_task(
                            self._run_stage(job, name, outputs, fields, fingerprints)
                        )
                        active[task] = name
                if not active:
                    raise Internal(f"stages {todo} can never run: unmet dependencies")
                finished_tasks, _ = await asyncio.wait(active, return_when=asyncio.FIRST_COMPLETED)
                for task in finished_tasks:
                    name = active.pop(task)
                    result = task.result()  # raises StageFailed
                    outputs[name] = result.outputs if result is not None else {}
                    if result is not None:
                        fields.update(result.job_fields)
                    done.add(name)
        finally:
            for task in active:
                task.cancel()
            if active:
                await asyncio.wait(active)

    async def _run_stage(
        self,
        job: ClaimedJob,
        name: str,
        outputs: dict[str, dict[str, Any]],
        fields: dict[str, Any],
        fingerprints: dict[str, str | None],
    ) -> StageResult | None:
        stage = self.stages[name]
        with log_context(stage=name):
            last_write = 0.0

            async def report(fraction: float, message: str) -> None:
                nonlocal last_write
                now = time.monotonic()
                if now - last_write < self.settings.progress_interval_seconds:
                    return
                last_write = now
                await self.runs.update_stage(
                    job.id,
                    name,
                    state="RUNNING",
                    progress=min(max(fraction, 0.0), 1.0),
                    message=message,
                )

            budget = self.settings.stage_timeout_seconds
            ctx = StageContext(
                job=job, outputs=outputs, fields=fields, report=report, timeout=budget
            )
            if (reason := stage.skip_reason(ctx)) is not None:
                await self.runs.update_stage(job.id, name, state="SKIPPED", message=reason)
                fingerprints[name] = SKIPPED
                return None
            fingerprint = stage_fingerprint(
                stage, ctx, fingerprints, self.settings.reuse_salt.get_secret_value()
            )
            if fingerprint is not None:
                reused = await self._reuse(stage, ctx, fingerprint)
                if reused is not None:
                    fingerprints[name] = fingerprint
                    return reused
            attempts = next(row.attempts for row in job.stages if row.name == name)
            while True:
                attempts += 1
                timeout = self._attempt_timeout(job, budget)
                await self.runs.update_stage(
                    job.id,
                    name,
                    state="RUNNING",
                    progress=0.0,
                    message="started" if attempts == 1 else f"attempt {attempts}",
                    started=True,
                )
                started = time.monotonic()
                try:
                    result = await self._attempt(
                        stage, dataclasses.replace(ctx, timeout=timeout, attempt=attempts)
                    )
                    break
                except ReelmillError as error:
                    used = time.monotonic() - started
                    budget, error = self._after_failure(name, error, timeout, used, job)
                    if not retryable(error) or attempts >= self.settings.stage_max_attempts:
                        await self.runs.update_stage(
                            job.id,
                            name,
                            state="FAILED",
                            error=job_error(error),
                            message=error.message,
                        )
                        raise StageFailed(name, error) from None
                    delay = self.retry_backoff.delay(attempts)
                    metrics.stage_retried(name, error.code.name)
                    log.warning(
                        "stage failed transiently; retrying",
                        extra={
                            "attempt": attempts,
                            "code": error.code.name,
                            "reason": error.reason,
                            "error": error.message,
                            "backoff_seconds": round(delay, 2),
                            "next_timeout_seconds": round(self._attempt_timeout(job, budget), 2),
                        },
                    )
                    await self.runs.update_stage(
                        job.id,
                        name,
                        state="RETRYING",
                        error=job_error(error),
                        message=(
                            f"attempt {attempts} failed ({error.code.name}: {error.message}); "
                            f"retrying in {delay:.1f}s"
                        ),
                    )
                    await asyncio.sleep(delay)
            await self.runs.update_stage(
                job.id,
                name,
                state="SUCCEEDED",
                message=f"done in {time.monotonic() - started:.2f}s",
                outputs=result.outputs,
                artifacts=result.artifacts,
                job_fields=result.job_fields,
                video=result.video,
                fingerprint=fingerprint,
            )
            fingerprints[name] = fingerprint
            log.info("stage succeeded", extra={"seconds": round(time.monotonic() - started, 3)})
            return result

    async def _reuse(self, stage: Stage, ctx: StageContext, fingerprint: str) -> StageResult | None:
        """Records the earlier result of an identical stage as this stage's (copied into this
        job), when the job allows reuse and there is one; None otherwise."""
        spec = ctx.job.spec
        if self.reuser is None or (spec.HasField("reuse") and not spec.reuse):
            return None
        reused = await self.reuser.reuse(stage, ctx, fingerprint)
        if reused is None:
            return None
        result = reused.result
        try:
            await self.runs.update_stage(
                ctx.job.id,
                stage.name,
                state="SUCCEEDED",
                message=f"reused the outputs of job {reused.source}",
                outputs=result.outputs,
                artifacts=result.artifacts,
                job_fields=result.job_fields,
                fingerprint=fingerprint,
                reused_from=reused.source,
            )
        except SourceGone:
            log.info("the job to reuse was deleted meanwhile; running the stage")
            return None
        metrics.stage_finished(stage.name, "reused", 0.0)
        log.info("stage reused", extra={"source_job_id": str(reused.source)})
        return result
