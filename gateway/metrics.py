"""The gateway's metrics (``runtime.metrics`` installs the provider and its readers).

- ``reelmill.jobs`` (gauge, ``{job}``, ``state``): jobs in the database by state, counted every
  ``job_metrics_interval_seconds`` by ``JobCounter`` — the same for every replica;
- ``reelmill.queue.depth`` (gauge, ``{job}``): of those, the QUEUED ones;
- ``reelmill.watchers`` (up-down counter, ``{stream}``): WatchJob streams open in this process;
- ``reelmill.stage.duration`` (histogram, ``s``, ``stage``, ``outcome``): ``stage_finished``;
- ``reelmill.stage.retries`` (counter, ``{retry}``, ``stage``, ``code``): ``stage_retried``;
- ``reelmill.webhook.deliveries`` (counter, ``{attempt}``, ``outcome``): ``webhook_attempted``;
- ``reelmill.retention.jobs`` (counter, ``{job}``): finished jobs this process deleted for
  retention (``REELMILL_RETENTION_DAYS``), ``jobs_retained``.

Upload bytes are ``runtime.metrics.upload_received``, shared with ingest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Iterator, Mapping

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.db import models

log = logging.getLogger(__name__)

#: Bucket bounds of the stage-duration histogram, in seconds: a probe's fraction of a second
#: to a long transcode's hours.
STAGE_BUCKETS = (
    0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400,
)  # fmt: skip


class GatewayMetrics:
    """The gateway's instruments, made from one meter."""

    def __init__(self, meter: metrics.Meter) -> None:
        self._stage_duration = meter.create_histogram(
            "reelmill.stage.duration",
            unit="s",
            description="Stage runs of jobs, by stage and outcome",
            explicit_bucket_boundaries_advisory=STAGE_BUCKETS,
        )
        self._stage_retries = meter.create_counter(
            "reelmill.stage.retries",
            unit="{retry}",
            description="Stage attempts retried after a transient failure, by stage and code",
        )
        self._webhook_deliveries = meter.create_counter(
            "reelmill.webhook.deliveries",
            unit="{attempt}",
            description="Webhook delivery attempts, by outcome",
        )
        self._retained = meter.create_counter(
            "reelmill.retention.jobs",
            unit="{job}",
            description="Finished jobs deleted by retention (with their events and artifacts)",
        )
        #: WatchJob streams open now (observed, so that the series exists before the first).
        self.watchers = 0
        meter.create_observable_up_down_counter(
            "reelmill.watchers",
            callbacks=[self._observe_watchers],
            unit="{stream}",
            description="WatchJob streams open in this process",
        )
        #: The last count by state; None until one succeeds, and after one fails (reporting
        #: nothing beats reporting stale numbers).
        self.job_counts: Mapping[str, int] | None = None
        meter.create_observable_gauge(
            "reelmill.jobs",
            callbacks=[self._observe_jobs],
            unit="{job}",
            description="Jobs by state (the database's count, the same from every gateway)",
        )
        meter.create_observable_gauge(
            "reelmill.queue.depth",
            callbacks=[self._observe_queue],
            unit="{job}",
            description="Jobs waiting to run (QUEUED)",
        )

    def stage_finished(self, stage: str, outcome: str, seconds: float) -> None:
        self._stage_duration.record(seconds, {"stage": stage, "outcome": outcome})

    def stage_retried(self, stage: str, code: str) -> None:
        self._stage_retries.add(1, {"stage": stage, "code": code})

    def webhook_attempted(self, outcome: str) -> None:
        self._webhook_deliveries.add(1, {"outcome": outcome})

    def jobs_retained(self, count: int) -> None:
        self._retained.add(count)

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        """Counts one open watch stream for the duration of the block."""
        self.watchers += 1
        try:
            yield
        finally:
            self.watchers -= 1

    def _observe_watchers(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self.watchers)]

    def _observe_jobs(self, _options: CallbackOptions) -> Iterable[Observation]:
        counts = self.job_counts
        if counts is None:
            return []
        return [Observation(counts.get(state, 0), {"state": state}) for state in models.JOB_STATES]

    def _observe_queue(self, _options: CallbackOptions) -> Iterable[Observation]:
        counts = self.job_counts
        return [] if counts is None else [Observation(counts.get("QUEUED", 0))]


#: The instruments of this process, on the global meter provider.
instruments = GatewayMetrics(metrics.get_meter("reelmill.gateway"))


def stage_finished(stage: str, outcome: str, seconds: float) -> None:
    """Records a stage run that ended (``outcome`` e.g. "succeeded", "failed", "cancelled")
    after ``seconds`` in ``reelmill.stage.duration``."""
    instruments.stage_finished(stage, outcome, seconds)


def stage_retried(stage: str, code: str) -> None:
    """Counts a retry of ``stage`` after a transient failure with status ``code`` (e.g.
    "UNAVAILABLE") in ``reelmill.stage.retries``."""
    instruments.stage_retried(stage, code)


def webhook_attempted(outcome: str) -> None:
    """Counts one webhook delivery attempt in ``reelmill.webhook.deliveries``: ``outcome`` is
    "succeeded", "retrying" (failed, retried later), "exhausted" (failed, no retry left: the
    endpoint is disabled) or "gone" (410: the endpoint is disabled)."""
    instruments.webhook_attempted(outcome)


def jobs_retained(count: int) -> None:
    """Counts ``count`` finished jobs deleted by retention in ``reelmill.retention.jobs``."""
    instruments.jobs_retained(count)


def watching() -> contextlib.AbstractContextManager[None]:
    """Counts one open WatchJob stream in ``reelmill.watchers`` while the block runs."""
    return instruments.watching()


async def count_jobs(sessions: async_sessionmaker[AsyncSession]) -> dict[str, int]:
    """Jobs by state (one ``GROUP BY`` over the jobs table)."""
    async with sessions() as session:
        rows = await session.execute(
            select(models.Job.state, func.count()).group_by(models.Job.state)
        )
        return {state: count for state, count in rows.tuples()}


class JobCounter:
    """Counts jobs by state every ``interval`` seconds into ``into.job_counts``; a failed count
    (the database is down) clears them until the next one succeeds."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        interval: float,
        into: GatewayMetrics | None = None,
    ) -> None:
        self.sessions = sessions
        self.interval = interval
        self.into = into or instruments

    async def run(self) -> None:
        failing = False
        while True:
            try:
                counts = await asyncio.wait_for(
                    count_jobs(self.sessions), timeout=max(self.interval, 5.0)
                )
            except Exception as exc:  # the database is down or slow: the next count retries
                self.into.job_counts = None
                if not failing:
                    log.warning("counting jobs for metrics failed: %s: %s", type(exc).__name__, exc)
                failing = True
            else:
                self.into.job_counts = counts
                if failing:
                    log.info("counting jobs for metrics works again")
                failing = False
            await asyncio.sleep(self.interval)
