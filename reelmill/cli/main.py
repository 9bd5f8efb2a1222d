"""``reelmill``: run the suite and use it from a terminal.

reelmill up [--storage seaweedfs]   start every process on localhost (Ctrl-C stops all)
reelmill demo                       start, process a sample video with speech, stop
reelmill submit FILE… [--watch]     upload, create a job (several: a batch), follow it
reelmill jobs ls|get|cancel|watch|retry
                                    inspect and steer jobs
reelmill batches get|watch          the jobs of a batch
reelmill videos ls|get|rm           inspect and delete uploads
reelmill artifacts get|url          fetch what a job produced
reelmill keys create|ls|revoke      manage your API keys
reelmill webhooks create|ls|rm|rotate|deliveries|redeliver
                                    signed HTTP callbacks for your jobs' events
reelmill migrate                    runs `python -m gateway migrate` (REELMILL_DATABASE_URL)

JOB and VIDEO are whole ids or the start of one (unique among yours: `jobs get 3f2a9c`);
`--json` prints what a command answers as protobuf JSON instead of a table.

`up`, `demo` and `migrate` run the servers' code, so they need the server side (the gateway
and services packages) installed beside the CLI; the other commands only call a gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
from rich.table import Column, Table

from reelmill.cli import batch, render
from reelmill.cli.config import CliSettings
from reelmill.cli.ids import resolve_job, resolve_video
from reelmill.cli.summary import show_summary
from reelmill.client import ReelmillClient, error_reason, retry_after
from reelmill.v1 import api_key_service_pb2, job_pb2, job_service_pb2, webhook_service_pb2
from reelmill.webhooks import event_type_name

Command = Callable[[argparse.Namespace, ReelmillClient], Awaitable[int]]


def _labels(values: list[str]) -> dict[str, str]:
    labels = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep:
            raise SystemExit(f"reelmill: label {value!r} must be key=value")
        labels[key] = val
    return labels


def _timeout(seconds: float | None) -> timedelta | None:
    return timedelta(seconds=seconds) if seconds is not None else None


def _show_page(table: Table, token: str) -> int:
    """Prints one page of a listing, and how to ask for the next one."""
    render.console.print(table)
    if token:
        render.console.print(f"next page: --page-token {token}", soft_wrap=True)
    return 0


def _print_json(message: Any) -> int:
    """``--json``: the response as protobuf JSON (the protos' field names) on stdout."""
    print(render.as_json(message))
    return 0


async def submit(args: argparse.Namespace, client: ReelmillClient) -> int:
    if len(args.files) > 1:
        return await batch.submit_batch(args, client, _labels(args.label))
    args.file = args.files[0]
    if args.file.startswith(("http://", "https://")):
        job = await client.create_job(
            url=args.file,
            request_id=args.request_id or "",
            labels=_labels(args.label),
            timeout=_timeout(args.timeout),
            spec=batch.spec_of(args),
            priority=args.priority,
        )
        render.console.print(f"job {job.id} {render.state_name(job.state)} (importing {args.file})")
        return await _follow(client, job.id) if args.watch else 0
    path = Path(args.file)
    size = await asyncio.to_thread(lambda: path.stat().st_size if path.is_file() else -1)
    if size < 0:
        raise SystemExit(f"reelmill: {path} is not a file")
    render.console.print(f"uploading {path} ({size:,} bytes) …")
    video = await client.upload_file(path, on_resume=render.resuming)
    render.console.print(f"video {video.id}")
    render.show_media(video.media_info)
    job = await client.create_job(
        video.id,
        request_id=args.request_id or "",
        labels=_labels(args.label),
        timeout=_timeout(args.timeout),
        spec=batch.spec_of(args),
        priority=args.priority,
    )
    render.console.print(f"job {job.id} {render.state_name(job.state)}")
    if not args.watch:
        return 0
    return await _follow(client, job.id)


async def _follow(client: ReelmillClient, job_id: str, after: int = 0) -> int:
    """Live progress to the end, then the summary (of the whole job, as GetJob shows it)."""
    await render.follow(client.watch_job(job_id, after_sequence=after))
    job = await client.get_job(job_id)
    show_summary(job)
    return 0 if job.state == job_pb2.JOB_STATE_SUCCEEDED else 1


async def jobs_ls(args: argparse.Namespace, client: ReelmillClient) -> int:
    states = [job_pb2.JobState.Value(f"JOB_STATE_{s.upper()}") for s in args.state]
    jobs, token = await client.list_jobs(
        states=states,
        page_size=args.limit,
        page_token=args.page_token or "",
        batch_id=args.batch or "",
    )
    if args.json:
        return _print_json(job_service_pb2.ListJobsResponse(jobs=jobs, next_page_token=token))
    # Whole job ids, never cut (every command also takes a unique start of one); the video's
    # start, which `videos get` takes.
    table = Table(
        Column("job", no_wrap=True, min_width=36),
        Column("state", no_wrap=True),
        Column("created", no_wrap=True),
        Column("video", no_wrap=True),
        "labels",
        box=None,
    )
    for job in jobs:
        table.add_row(
            job.id,
            render.state_name(job.state),
            job.create_time.ToDatetime().isoformat(sep=" ", timespec="minutes"),
            job.video_id[:8] if job.video_id else job.source_url,
            ",".join(f"{k}={v}" for k, v in job.labels.items()),
        )
    return _show_page(table, token)


async def jobs_get(args: argparse.Namespace, client: ReelmillClient) -> int:
    job = await client.get_job(await resolve_job(client, args.job_id))
    if args.json:
        return _print_json(job)
    render.show_job(job, every_artifact=args.artifacts)
    return 0


async def jobs_cancel(args: argparse.Namespace, client: ReelmillClient) -> int:
    job = await client.cancel_job(await resolve_job(client, args.job_id))
    render.console.print(f"job {job.id} {render.state_name(job.state)}")
    return 0


async def jobs_watch(args: argparse.Namespace, client: ReelmillClient) -> int:
    return await _follow(client, await resolve_job(client, args.job_id))


async def jobs_retry(args: argparse.Namespace, client: ReelmillClient) -> int:
    job = await client.retry_job(await resolve_job(client, args.job_id))
    kept = [s.name for s in job.stages if s.state == job_pb2.STAGE_STATE_SUCCEEDED]
    render.console.print(
        f"job {job.id} {render.state_name(job.state)} again"
        + (f"; kept: {', '.join(kept)}" if kept else "")
    )
    if not args.watch:
        return 0
    return await _follow(client, job.id, after=job.last_event_sequence - 1)


async def videos_ls(args: argparse.Namespace, client: ReelmillClient) -> int:
    videos, token = await client.list_videos(page_size=args.limit, page_token=args.page_token or "")
    if args.json:
        return _print_json(job_service_pb2.ListVideosResponse(videos=videos, next_page_token=token))
    table = Table(Column("video", no_wrap=True, min_width=36), "file", "bytes", "created", box=None)
    for video in videos:
        table.add_row(
            video.id,
            video.filename,
            f"{video.size_bytes:,}",
            video.create_time.ToDatetime().isoformat(timespec="seconds"),
        )
    return _show_page(table, token)


async def videos_get(args: argparse.Namespace, client: ReelmillClient) -> int:
    video = await client.get_video(await resolve_video(client, args.video_id))
    print(render.as_json(video))
    return 0


async def videos_rm(args: argparse.Namespace, client: ReelmillClient) -> int:
    video_id = await resolve_video(client, args.video_id)
    response = await client.delete_video(video_id)
    render.console.print(
        f"video {video_id} deleted; {response.cancelled_jobs} running or queued jobs "
        f"cancelled, {response.deleted_artifacts} artifacts deleted"
    )
    return 0


async def artifacts_get(args: argparse.Namespace, client: ReelmillClient) -> int:
    out = Path(args.output or Path(args.name).name)
    artifact = await client.download_artifact(
        await resolve_job(client, args.job_id), args.name, out
    )
    render.console.print(f"{out} ({artifact.size_bytes:,} bytes, sha256 {artifact.sha256})")
    return 0


async def artifacts_url(args: argparse.Namespace, client: ReelmillClient) -> int:
    print(await client.artifact_url(await resolve_job(client, args.job_id), args.name))
    return 0


async def keys_create(args: argparse.Namespace, client: ReelmillClient) -> int:
    key, secret = await client.create_api_key(args.name or "")
    if args.json:
        return _print_json(api_key_service_pb2.CreateApiKeyResponse(api_key=key, secret=secret))
    render.console.print(
        f"API key {key.id} created" + (f" ({key.display_name})" if key.display_name else "")
    )
    render.console.print("secret (shown only now; use it as REELMILL_API_KEY or REELMILL_TOKEN):")
    print(secret)
    return 0


async def keys_ls(args: argparse.Namespace, client: ReelmillClient) -> int:
    keys, token = await client.list_api_keys(page_size=args.limit, page_token=args.page_token or "")
    if args.json:
        return _print_json(
            api_key_service_pb2.ListApiKeysResponse(api_keys=keys, next_page_token=token)
        )
    table = Table(Column("key", no_wrap=True), "name", "created", "revoked", box=None)
    for key in keys:
        table.add_row(
            key.id,
            key.display_name,
            key.create_time.ToDatetime().isoformat(timespec="seconds"),
            key.revoke_time.ToDatetime().isoformat(timespec="seconds")
            if key.HasField("revoke_time")
            else "",
        )
    return _show_page(table, token)


async def keys_revoke(args: argparse.Namespace, client: ReelmillClient) -> int:
    key = await client.revoke_api_key(args.key_id)
    render.console.print(f"API key {key.id} revoked")
    return 0


#: ``job.succeeded`` … -> the enum value, for ``--event``.
WEBHOOK_EVENTS = {
    event_type_name(name): value
    for name, value in webhook_service_pb2.WebhookEventType.items()
    if value != webhook_service_pb2.WEBHOOK_EVENT_TYPE_UNSPECIFIED
}


def _event_names(values: Any) -> str:
    return ",".join(event_type_name(webhook_service_pb2.WebhookEventType.Name(v)) for v in values)


def _when(stamp: Any) -> str:
    return stamp.ToDatetime().isoformat(timespec="seconds") if stamp.seconds else ""


def _endpoint_state(endpoint: webhook_service_pb2.WebhookEndpoint) -> str:
    state = webhook_service_pb2.WebhookEndpointState.Name(endpoint.state)
    shown = state.removeprefix("WEBHOOK_ENDPOINT_STATE_")
    return f"{shown} ({endpoint.disabled_reason})" if endpoint.disabled_reason else shown


async def webhooks_create(args: argparse.Namespace, client: ReelmillClient) -> int:
    endpoint, secret = await client.create_webhook_endpoint(
        args.url,
        event_types=[WEBHOOK_EVENTS[name] for name in args.event],
        description=args.description or "",
    )
    if args.json:
        return _print_json(
            webhook_service_pb2.CreateWebhookEndpointResponse(endpoint=endpoint, secret=secret)
        )
    render.console.print(
        f"webhook endpoint {endpoint.id} created for {_event_names(endpoint.event_types)}"
    )
    render.console.print("signing secret (shown only now; verify webhook-signature with it):")
    print(secret)
    return 0


async def webhooks_ls(args: argparse.Namespace, client: ReelmillClient) -> int:
    endpoints, token = await client.list_webhook_endpoints(
        page_size=args.limit, page_token=args.page_token or ""
    )
    if args.json:
        return _print_json(
            webhook_service_pb2.ListWebhookEndpointsResponse(
                endpoints=endpoints, next_page_token=token
            )
        )
    table = Table(
        Column("endpoint", min_width=36, no_wrap=True), "url", "events", "state", box=None
    )
    for endpoint in endpoints:
        table.add_row(
            endpoint.id,
            endpoint.url,
            _event_names(endpoint.event_types),
            _endpoint_state(endpoint),
        )
    return _show_page(table, token)


async def webhooks_rm(args: argparse.Namespace, client: ReelmillClient) -> int:
    dropped = await client.delete_webhook_endpoint(args.endpoint_id)
    render.console.print(
        f"webhook endpoint {args.endpoint_id} deleted; {dropped} pending deliveries dropped"
    )
    return 0


async def webhooks_rotate(args: argparse.Namespace, client: ReelmillClient) -> int:
    overlap = timedelta(seconds=args.overlap) if args.overlap is not None else None
    endpoint, secret = await client.rotate_webhook_secret(args.endpoint_id, overlap=overlap)
    if args.json:
        return _print_json(
            webhook_service_pb2.RotateWebhookSecretResponse(endpoint=endpoint, secret=secret)
        )
    until = _when(endpoint.previous_secret_expire_time)
    render.console.print(
        f"new signing secret for {endpoint.id}"
        + (f"; the old one also signs until {until}" if until else "; the old one no longer signs")
    )
    print(secret)
    return 0


async def webhooks_deliveries(args: argparse.Namespace, client: ReelmillClient) -> int:
    states = [
        webhook_service_pb2.WebhookDeliveryState.Value(f"WEBHOOK_DELIVERY_STATE_{s.upper()}")
        for s in args.state
    ]
    deliveries, token = await client.list_webhook_deliveries(
        endpoint_id=args.endpoint_id or "",
        job_id=await resolve_job(client, args.job) if args.job else "",
        states=states,
        page_size=args.limit,
        page_token=args.page_token or "",
    )
    if args.json:
        return _print_json(
            webhook_service_pb2.ListWebhookDeliveriesResponse(
                deliveries=deliveries, next_page_token=token
            )
        )
    table = Table(
        Column("delivery (webhook-id)", min_width=36, no_wrap=True),
        "event",
        "job",
        "state",
        "attempts",
        "last",
        box=None,
    )
    for delivery in deliveries:
        state = webhook_service_pb2.WebhookDeliveryState.Name(delivery.state)
        last = delivery.attempts[-1] if delivery.attempts else None
        table.add_row(
            delivery.id,
            _event_names([delivery.event_type]),
            f"{delivery.job_id} #{delivery.sequence}",
            state.removeprefix("WEBHOOK_DELIVERY_STATE_"),
            str(len(delivery.attempts)),
            "" if last is None else (last.error or f"HTTP {last.status_code}"),
        )
    return _show_page(table, token)


async def webhooks_redeliver(args: argparse.Namespace, client: ReelmillClient) -> int:
    delivery = await client.redeliver_webhook(args.delivery_id)
    render.console.print(f"delivery {delivery.id} queued again (same webhook-id)")
    return 0


def describe_error(exc: grpc.aio.AioRpcError) -> str:
    """One line for a failed call: code, message, reason, and when to retry if the server said."""
    line = f"{exc.code().name}: {exc.details()}"
    if reason := error_reason(exc):
        line += f" [{reason}]"
    delay = retry_after(exc)
    if delay is not None:
        line += f" (retry after {delay:.1f} s)"
    return line


def _with_client(command: Command, args: argparse.Namespace) -> int:
    gateway, token = CliSettings().resolve()

    async def main() -> int:
        async with ReelmillClient(gateway, token=token) as client:
            return await command(args, client)

    try:
        return asyncio.run(main())
    except grpc.aio.AioRpcError as exc:
        render.console.print(describe_error(exc), style="red", markup=False, highlight=False)
        return 1


#: What ``up``, ``demo`` and ``migrate`` run. They start, or are, server processes; the
#: CLI imports their server-side tooling (``reelmill.cli.up``, ``reelmill.cli.sample``) only
#: in these commands, so every other command works from a client-only install.
SERVER_PACKAGES = ("gateway", "runtime")


def _require_server_side(command: str) -> None:
    missing = [name for name in SERVER_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise SystemExit(
            f"reelmill {command}: runs reelmill's servers on this machine, but this install has "
            f"only the client (no {', '.join(missing)} package); install the whole reelmill "
            "project, or point REELMILL_GATEWAY at a running gateway"
        )


def up(args: argparse.Namespace) -> int:
    _require_server_side("up")
    from reelmill.cli.up import run_suite, serve_forever

    settings = CliSettings(**({"up_storage": args.storage} if args.storage else {}))
    with run_suite(settings, listen=args.listen, echo=render.console.print) as suite:
        # Never wrapped (a terminal or a log 80 columns wide): the token is copied whole.
        render.console.print(
            f"[bold green]reelmill is up[/]: gateway at [bold]{suite.gateway}[/]\n"
            f"credentials: {settings.credentials_file} (the CLI uses them)\n"
            f"dev token: {suite.token}\nlogs: {suite.home / 'logs'}",
            soft_wrap=True,
        )
        if suite.browser:
            render.console.print(
                f"web console and browser API (Connect, gRPC-Web): http://{suite.browser}/ "
                "(sign in with the dev token)",
                soft_wrap=True,
            )
        if suite.seaweedfs is not None:
            render.console.print(
                f"S3 (SeaweedFS): {suite.seaweedfs.server.url}, "
                f"keys in {suite.seaweedfs.root / 's3.json'}",
                soft_wrap=True,
            )
        render.console.print("Ctrl-C stops everything.")
        return serve_forever(suite)


def demo(args: argparse.Namespace) -> int:
    """Starts the suite, processes the sample video (a test pattern over a short speech, so
    that it has a transcript, a title and chapters), shows the result, stops."""
    _require_server_side("demo")
    from reelmill.cli.sample import make_sample
    from reelmill.cli.up import run_suite

    settings = CliSettings()
    with tempfile.TemporaryDirectory() as tmp:
        sample = make_sample(Path(tmp) / "sample.mp4")
        with run_suite(settings, listen=args.listen, echo=render.console.print) as suite:
            render.console.print(f"[bold green]reelmill is up[/] at {suite.gateway}")
            submit_args = argparse.Namespace(
                files=[str(sample)],
                watch=True,
                request_id="",
                label=["source=demo"],
                timeout=None,
                priority=0,
                spec=None,
                no_reuse=False,
            )

            async def main() -> int:
                async with ReelmillClient(suite.gateway, token=suite.token) as client:
                    return await submit(submit_args, client)

            code = asyncio.run(main())
            render.console.print("stopping the suite …")
            return code


def migrate(_args: argparse.Namespace) -> int:
    """The gateway's own command, ``python -m gateway migrate``, in this interpreter (kept for
    those who run ``reelmill migrate``); logs in the console format unless set otherwise."""
    _require_server_side("migrate")
    env = {"REELMILL_LOG_FORMAT": "console", **os.environ}
    command = [sys.executable, "-m", "gateway", "migrate"]
    return subprocess.run(command, env=env, check=False).returncode


JOB_HELP = "a job id, or the start of one (unique among your jobs)"
VIDEO_HELP = "a video id, or the start of one (unique among your videos)"


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="reelmill", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = root.add_subparsers(dest="command", required=True)

    p = commands.add_parser("up", help="start the whole suite on localhost")
    p.add_argument("--listen", default="127.0.0.1:50051", help="gateway address")
    p.add_argument(
        "--storage",
        choices=["local", "seaweedfs"],
        help="object store: a local directory, or an embedded S3 server (SeaweedFS) whose "
        "presigned http URLs players and browsers open (default: REELMILL_UP_STORAGE, local)",
    )
    p.set_defaults(run=up)
    p = commands.add_parser(
        "demo", help="start the suite, process a sample video with speech, show it, stop"
    )
    p.add_argument("--listen", default="127.0.0.1:50051", help="gateway address")
    p.set_defaults(run=demo)
    p = commands.add_parser(
        "migrate",
        help="apply the database migrations (runs `python -m gateway migrate`)",
        description="Runs `python -m gateway migrate`: applies the database migrations to "
        "REELMILL_DATABASE_URL (idempotent). Deployments run that command directly.",
    )
    p.set_defaults(run=migrate)

    p = commands.add_parser(
        "submit",
        help="upload a video (or name a URL) and create a job; several: one batch of jobs",
    )
    p.add_argument("files", nargs="+", metavar="FILE|URL")
    p.add_argument("--watch", action="store_true", help="follow the job(s) to the end")
    p.add_argument(
        "--request-id", help="idempotency key (with several files: KEY-0, KEY-1, … per file)"
    )
    p.add_argument(
        "--priority",
        type=int,
        default=0,
        metavar="N",
        help="-100..100: orders your own queued jobs, higher first (default 0)",
    )
    p.add_argument(
        "--spec",
        metavar="FILE",
        help='what to produce: a PipelineSpec as JSON, e.g. {"transcode": {"disabled": true}}',
    )
    p.add_argument(
        "--no-reuse",
        action="store_true",
        help="compute every stage, even when an earlier job of yours had the same inputs",
    )
    p.add_argument(
        "--clips-by-chapters",
        action="store_true",
        help="cut one clip per chapter, each with its poster and captions (clips only, no "
        "ladder: with a --spec that disables the transcode)",
    )
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="job deadline (default: the server's)"
    )
    p.set_defaults(call=submit)

    jobs = commands.add_parser("jobs", help="list, inspect, watch and cancel jobs")
    sub = jobs.add_subparsers(dest="action", required=True)
    p = sub.add_parser("ls")
    p.add_argument(
        "--state",
        action="append",
        default=[],
        choices=["queued", "running", "succeeded", "failed", "cancelled"],
    )
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--page-token")
    p.add_argument("--batch", metavar="BATCH", help="only the jobs of this batch")
    p.add_argument("--json", action="store_true", help="print the response as JSON")
    p.set_defaults(call=jobs_ls)
    for name, fn in (
        ("get", jobs_get),
        ("cancel", jobs_cancel),
        ("watch", jobs_watch),
        ("retry", jobs_retry),
    ):
        p = sub.add_parser(name)
        p.add_argument("job_id", metavar="JOB", help=JOB_HELP)
        if name == "get":
            p.add_argument("--json", action="store_true", help="print the job as JSON")
            p.add_argument(
                "--artifacts", action="store_true", help="one row per artifact (not by group)"
            )
        if name == "retry":
            p.add_argument("--watch", action="store_true", help="follow the job to its end")
        p.set_defaults(call=fn)

    batches = commands.add_parser("batches", help="the jobs of a batch (submit of several)")
    sub = batches.add_subparsers(dest="action", required=True)
    p = sub.add_parser("get", help="every job of the batch and its state")
    p.add_argument("batch_id")
    p.add_argument("--json", action="store_true", help="print the response as JSON")
    p.set_defaults(call=batch.batches_get)
    p = sub.add_parser("watch", help="one bar per job until every job ended, then a summary")
    p.add_argument("batch_id")
    p.set_defaults(call=batch.batches_watch)

    videos = commands.add_parser("videos", help="list, inspect and delete uploaded videos")
    sub = videos.add_subparsers(dest="action", required=True)
    p = sub.add_parser("ls")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--page-token")
    p.add_argument("--json", action="store_true", help="print the response as JSON")
    p.set_defaults(call=videos_ls)
    p = sub.add_parser("get", help="a video as JSON")
    p.add_argument("video_id", metavar="VIDEO", help=VIDEO_HELP)
    p.set_defaults(call=videos_get)
    p = sub.add_parser("rm", help="delete a video, its jobs and everything they produced")
    p.add_argument("video_id", metavar="VIDEO", help=VIDEO_HELP)
    p.set_defaults(call=videos_rm)

    artifacts = commands.add_parser("artifacts", help="download what a job produced")
    sub = artifacts.add_subparsers(dest="action", required=True)
    p = sub.add_parser("get")
    p.add_argument("job_id", metavar="JOB", help=JOB_HELP)
    p.add_argument("name")
    p.add_argument("-o", "--output")
    p.set_defaults(call=artifacts_get)
    p = sub.add_parser("url")
    p.add_argument("job_id", metavar="JOB", help=JOB_HELP)
    p.add_argument("name")
    p.set_defaults(call=artifacts_url)
    keys = commands.add_parser("keys", help="create, list and revoke your API keys")
    sub = keys.add_subparsers(dest="action", required=True)
    p = sub.add_parser("create", help="a new API key; its secret is printed once")
    p.add_argument("--name", help="display name")
    p.add_argument("--json", action="store_true", help="print the response as JSON")
    p.set_defaults(call=keys_create)
    p = sub.add_parser("ls")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--page-token")
    p.add_argument("--json", action="store_true", help="print the response as JSON")
    p.set_defaults(call=keys_ls)
    p = sub.add_parser("revoke")
    p.add_argument("key_id")
    p.set_defaults(call=keys_revoke)

    webhooks = commands.add_parser(
        "webhooks", help="signed HTTP callbacks (Standard Webhooks) for your jobs' events"
    )
    sub = webhooks.add_subparsers(dest="action", required=True)
    p = sub.add_parser("create", help="register a URL; its signing secret is printed once")
    p.add_argument("url")
    p.add_argument(
        "--event",
        action="append",
        default=[],
        choices=sorted(WEBHOOK_EVENTS),
        help="an event type to receive (repeat; default: job.succeeded, job.failed, job.cancelled)",
    )
    p.add_argument("--description")
    p.add_argument("--json", action="store_true", help="print the response as JSON")
    p.set_defaults(call=webhooks_create)
    p = sub.add_parser("ls")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--page-token")
    p.add_argument("--json", action="store_true", help="print the response as JSON")
    p.set_defaults(call=webhooks_ls)
    p = sub.add_parser("rm", help="delete an endpoint and its deliveries")
    p.add_argument("endpoint_id")
    p.set_defaults(call=webhooks_rm)
    p = sub.add_parser("rotate", help="a new signing secret; the old one signs a while longer")
    p.add_argument("endpoint_id")
    p.add_argument(
        "--overlap",
        type=float,
        metavar="SECONDS",
        help="how long the old secret keeps signing (default: the server's, 24 h; 0: stop now)",
    )
    p.add_argument("--json", action="store_true", help="print the response as JSON")
    p.set_defaults(call=webhooks_rotate)
    p = sub.add_parser("deliveries", help="deliveries and their attempts, newest first")
    p.add_argument("endpoint_id", nargs="?")
    p.add_argument("--job", metavar="JOB", help=JOB_HELP)
    p.add_argument(
        "--state", action="append", default=[], choices=["pending", "succeeded", "failed"]
    )
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--page-token")
    p.add_argument("--json", action="store_true", help="print the response as JSON")
    p.set_defaults(call=webhooks_deliveries)
    p = sub.add_parser("redeliver", help="send a delivery again (re-enables its endpoint)")
    p.add_argument("delivery_id")
    p.set_defaults(call=webhooks_redeliver)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    run: Any = getattr(args, "run", None)
    if run is not None:
        return int(run(args))
    return _with_client(args.call, args)


if __name__ == "__main__":
    sys.exit(main())
