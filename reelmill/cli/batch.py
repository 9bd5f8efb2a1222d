"""Batches from the terminal: ``reelmill submit a.mp4 b.mp4 …`` (one BatchCreateJobs call, one
bar per job, a summary at the end) and ``reelmill batches get|watch BATCH``."""

from __future__ import annotations

import argparse
import asyncio
from datetime import timedelta
from pathlib import Path

from google.protobuf import json_format

from reelmill.cli import render
from reelmill.client import ReelmillClient, job_request
from reelmill.v1 import job_pb2, job_service_pb2, pipeline_pb2


def spec_of(args: argparse.Namespace) -> pipeline_pb2.PipelineSpec:
    """The pipeline spec ``submit``'s flags ask for: ``--spec FILE`` (a ``PipelineSpec`` as
    protobuf JSON; defaults otherwise), ``--no-reuse`` and ``--clips-by-chapters``."""
    spec = pipeline_pb2.PipelineSpec()
    if getattr(args, "spec", None):
        path = Path(args.spec)
        try:
            json_format.Parse(path.read_text(), spec)
        except (OSError, json_format.ParseError) as exc:
            raise SystemExit(f"reelmill: --spec {path}: {exc}") from None
    if getattr(args, "no_reuse", False):
        spec.reuse = False
    if getattr(args, "clips_by_chapters", False):
        spec.clips.by_chapters = True
    return spec


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


async def _request(
    client: ReelmillClient,
    args: argparse.Namespace,
    source: str,
    index: int,
    labels: dict[str, str],
) -> job_service_pb2.CreateJobRequest:
    """The batch item for one FILE|URL argument (a file is uploaded first)."""
    video_id, url = "", source
    if not is_url(source):
        path = Path(source)
        render.console.print(f"uploading {path} …")
        video = await client.upload_file(path, on_resume=render.resuming)
        render.console.print(f"  video {video.id} ({video.size_bytes:,} bytes)")
        video_id, url = video.id, ""
    return job_request(
        video_id,
        url=url,
        spec=spec_of(args),
        request_id=f"{args.request_id}-{index}" if args.request_id else "",
        labels=labels,
        timeout=timedelta(seconds=args.timeout) if args.timeout is not None else None,
        priority=args.priority,
    )


async def submit_batch(
    args: argparse.Namespace, client: ReelmillClient, labels: dict[str, str]
) -> int:
    """Uploads every file, creates one job per argument in one batch, and with ``--watch``
    follows them all; exits 1 unless every job succeeded."""
    missing = [
        s for s in args.files if not is_url(s) and not await asyncio.to_thread(Path(s).is_file)
    ]
    if missing:
        raise SystemExit(f"reelmill: not a file: {', '.join(missing)}")
    requests = [
        await _request(client, args, source, index, labels)
        for index, source in enumerate(args.files)
    ]
    response = await client.batch_create_jobs(requests)
    render.console.print(f"batch {response.batch_id}")
    jobs: dict[str, job_pb2.Job] = {}
    names: dict[str, str] = {}
    refused = 0
    for source, result in zip(args.files, response.results, strict=True):
        name = source if is_url(source) else Path(source).name
        if result.HasField("job"):
            job = result.job
            jobs[job.id], names[job.id] = job, name
            earlier = "" if result.created else " (an earlier job with this request id)"
            render.console.print(f"  {name}: job {job.id} {render.state_name(job.state)}{earlier}")
        else:
            refused += 1
            error = result.error
            render.console.print(
                f"  {name}: {error.code} {error.reason}: {error.message}",
                style="red",
                markup=False,
            )
    if not args.watch:
        return 1 if refused else 0
    watched = {job_id: job for job_id, job in jobs.items() if job.batch_id == response.batch_id}
    finals = (
        await render.follow_batch(client.watch_batch(response.batch_id), watched, names)
        if watched
        else {}
    )
    ended = [finals.get(job_id) or await client.get_job(job_id) for job_id in jobs]
    render.show_batch(ended, names)
    succeeded = all(job.state == job_pb2.JOB_STATE_SUCCEEDED for job in ended)
    return 0 if succeeded and not refused else 1


async def batch_jobs(client: ReelmillClient, batch_id: str) -> list[job_pb2.Job]:
    """Every job of a batch, oldest first."""
    jobs: list[job_pb2.Job] = []
    token = ""
    while True:
        page, token = await client.list_jobs(batch_id=batch_id, page_size=500, page_token=token)
        jobs += page
        if not token:
            return jobs[::-1]


def _source(job: job_pb2.Job) -> str:
    return job.source_url or job.video_id


async def batches_get(args: argparse.Namespace, client: ReelmillClient) -> int:
    jobs = await batch_jobs(client, args.batch_id)
    if getattr(args, "json", False):
        print(render.as_json(job_service_pb2.ListJobsResponse(jobs=jobs)))
        return 0
    render.show_batch(jobs, {job.id: _source(job) for job in jobs})
    return 0


async def batches_watch(args: argparse.Namespace, client: ReelmillClient) -> int:
    """One bar per job of the batch until every job ended, then the summary."""
    jobs = await batch_jobs(client, args.batch_id)
    names = {job.id: _source(job) for job in jobs}
    finals = await render.follow_batch(
        client.watch_batch(args.batch_id), {job.id: job for job in jobs}, names
    )
    ended = [finals.get(job.id) or await client.get_job(job.id) for job in jobs]
    render.show_batch(ended, names)
    return 0 if all(job.state == job_pb2.JOB_STATE_SUCCEEDED for job in ended) else 1
