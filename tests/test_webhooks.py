"""Webhooks end to end: real gateway, ingest and transcode processes, real Postgres and S3
(SeaweedFS), and a real receiver on 127.0.0.1 that checks every signature with its own code
(``tests.webhook_receiver``). Every terminal event reaches every endpoint across a SIGKILLed
gateway, whose deliveries another gateway takes over (a duplicate only ever with the same
webhook-id); a 500 is retried; 410 and an exhausted schedule disable the endpoint; a hanging
receiver delays no job; a finished job's payload carries its artifacts with URLs that serve
exactly their bytes; the CLI drives it all; the gateways count the attempts by outcome.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import itertools
import os
import threading
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import grpc
import pytest
import pytest_asyncio

from reelmill.cli.main import main as cli
from reelmill.client import ReelmillClient, error_reason
from reelmill.v1 import job_pb2, media_pb2, pipeline_pb2
from reelmill.v1 import webhook_service_pb2 as pb
from tests.conftest import SuiteEnv
from tests.media import make_clip
from tests.servers import free_port
from tests.suite import PROBE_ONLY, Suite, run_suite, token
from tests.webhook_receiver import Behaviour, Receiver, running_receiver

pytestmark = pytest.mark.e2e

TERMINAL = {
    job_pb2.JOB_STATE_SUCCEEDED: "job.succeeded",
    job_pb2.JOB_STATE_FAILED: "job.failed",
    job_pb2.JOB_STATE_CANCELLED: "job.cancelled",
}
#: Audio extraction only: a job that produces artifacts without the model (what PROBE_ONLY
#: switches off, except the audio stage).
AUDIO_ONLY = pipeline_pb2.PipelineSpec()
AUDIO_ONLY.CopyFrom(PROBE_ONLY)
AUDIO_ONLY.ClearField("audio")
AUDIO_ONLY.transcribe.disabled = True
AUDIO_ONLY.metadata.disabled = True


@dataclass
class Env:
    suite: Suite
    receiver: Receiver
    video: media_pb2.Video
    owner: str
    metrics_ports: tuple[int, int]

    def client(self, address: str | None = None) -> ReelmillClient:
        return ReelmillClient(address or self.suite.gateway, token=token(self.owner))


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    yield from running_receiver()


@pytest.fixture(scope="module")
def metrics_ports() -> tuple[int, int]:
    """Where the two gateways (the first one, and the one started beside it when the first is
    killed) serve their metrics."""
    return free_port(), free_port()


@pytest.fixture(scope="module")
def suite(
    suite_env: SuiteEnv, receiver: Receiver, metrics_ports: tuple[int, int]
) -> Iterator[Suite]:
    env = {
        "REELMILL_LEASE_SECONDS": "3",
        "REELMILL_POLL_SECONDS": "0.5",
        "REELMILL_GRACE_SECONDS": "2",
        "REELMILL_WEBHOOK_SECRET_KEY": base64.b64encode(b"webhook-test-key".ljust(32)).decode(),
        # The receiver listens on 127.0.0.1, which the guard refuses unless exempted.
        "REELMILL_WEBHOOK_ALLOW_HOSTS": "127.0.0.1",
        "REELMILL_WEBHOOK_ALLOWED_PORTS": f"80,443,{receiver.port}",
        "REELMILL_WEBHOOK_RETRY_SCHEDULE": "0.2,0.2",
        "REELMILL_WEBHOOK_TIMEOUT_SECONDS": "2",
        "REELMILL_WEBHOOK_POLL_SECONDS": "0.2",
        **suite_env("s3"),
    }

    def extra(name: str) -> dict[str, str]:
        listen = f"127.0.0.1:{metrics_ports[0]}"
        return {"REELMILL_METRICS_LISTEN": listen} if name == "gateway" else {}

    with run_suite(env, services=("ingest", "transcode"), extra=extra) as running:
        yield running


@pytest_asyncio.fixture(scope="module")
async def env(
    suite: Suite,
    receiver: Receiver,
    metrics_ports: tuple[int, int],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Env]:
    owner = f"hooks-{uuid.uuid4().hex[:6]}"
    clip = make_clip(tmp_path_factory.mktemp("media") / "clip.mp4", seconds=1)
    async with ReelmillClient(suite.gateway, token=token(owner)) as client:
        video = await client.upload_file(clip)
    yield Env(suite, receiver, video, owner, metrics_ports)


async def endpoint(
    env: Env, path: str, behaviour: Behaviour, *types: pb.WebhookEventType.ValueType
) -> pb.WebhookEndpoint:
    async with env.client() as client:
        created, secret = await client.create_webhook_endpoint(
            env.receiver.url(path), event_types=list(types)
        )
    env.receiver.behave(path, behaviour, secrets=[secret])
    return created


async def finished(env: Env, job_id: str) -> job_pb2.Job:
    async with env.client() as client:
        async for event in client.watch_job(job_id):
            if event.HasField("job"):
                return event.job
        return await client.get_job(job_id)


async def deliveries(env: Env, endpoint_id: str) -> list[pb.WebhookDelivery]:
    async with env.client() as client:
        found, _ = await client.list_webhook_deliveries(endpoint_id=endpoint_id, page_size=500)
    return found


async def settled(env: Env, endpoint_id: str, count: int) -> list[pb.WebhookDelivery]:
    """The endpoint's deliveries once ``count`` of them stopped being pending."""
    for _ in range(600):
        found = await deliveries(env, endpoint_id)
        done = [d for d in found if d.state != pb.WEBHOOK_DELIVERY_STATE_PENDING]
        if len(done) >= count:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"deliveries did not settle: {found}")


async def test_every_terminal_event_reaches_every_endpoint_across_a_sigkilled_gateway(
    env: Env,
) -> None:
    release = threading.Event()
    first = await endpoint(env, "/a", Behaviour(hang=release))
    second = await endpoint(env, "/b", Behaviour())
    jobs: list[str] = []
    async with env.client() as client:
        for n in range(8):
            job = await client.create_job(env.video.id, spec=PROBE_ONLY, request_id=f"kill-{n}")
            jobs.append(job.id)
        queued = await client.create_job(env.video.id, spec=PROBE_ONLY, request_id="kill-cancel")
        with contextlib.suppress(grpc.aio.AioRpcError):  # it may have finished already
            await client.cancel_job(queued.id)
        jobs.append(queued.id)
        # Ingest refuses loopback URLs: a job that fails.
        failing = await client.create_job(url=env.receiver.url("/media.mp4"))
        jobs.append(failing.id)
    # Deliveries to /a hang in the only gateway; kill it mid-delivery (and mid-jobs). Another
    # gateway takes over what it left, then the first comes back: two share the outbox.
    await asyncio.to_thread(env.receiver.wait_for, lambda: env.receiver.hanging >= 1)
    victim = env.suite.processes["gateway"][0]
    env.suite.kill(victim)
    release.set()
    listen = {"REELMILL_METRICS_LISTEN": f"127.0.0.1:{env.metrics_ports[1]}"}
    await asyncio.to_thread(env.suite.add, "gateway", "gateway", listen)
    await asyncio.to_thread(env.suite.restart, victim)
    ends = {job_id: (await finished(env, job_id)).state for job_id in jobs}
    assert ends[failing.id] == job_pb2.JOB_STATE_FAILED
    for target in (first, second):
        await settled(env, target.id, len(jobs))
    for path in ("/a", "/b"):
        got = env.receiver.at(path)
        assert all(r.verified for r in got), path
        ids: dict[tuple[str, str], set[str]] = defaultdict(set)
        for request in got:
            payload = request.payload
            ids[(payload["data"]["job_id"], payload["type"])].add(request.webhook_id)
        # Each job's terminal event, once per endpoint: retries and resends share one id.
        assert {key: len(found) for key, found in ids.items()} == {
            (job_id, TERMINAL[state]): 1 for job_id, state in ends.items()
        }
    # The killed gateway's deliveries to /a were sent again by its successor: same ids.
    arrivals = [r.webhook_id for r in env.receiver.at("/a")]
    assert len(arrivals) > len(set(arrivals))
    for target in (first, second):
        states = {d.state for d in await deliveries(env, target.id)}
        assert states == {pb.WEBHOOK_DELIVERY_STATE_SUCCEEDED}


async def test_a_500_is_retried_until_the_receiver_answers(env: Env) -> None:
    target = await endpoint(env, "/flaky", Behaviour(statuses=[500, 200]))
    async with env.client() as client:
        job = await client.create_job(env.video.id, spec=PROBE_ONLY)
    await finished(env, job.id)
    (delivery,) = await settled(env, target.id, 1)
    assert delivery.state == pb.WEBHOOK_DELIVERY_STATE_SUCCEEDED
    assert [(a.status_code, a.succeeded) for a in delivery.attempts] == [(500, False), (200, True)]
    assert delivery.attempts[0].error == "HTTP 500"
    arrivals = env.receiver.at("/flaky")
    assert [r.status for r in arrivals] == [500, 200]
    assert {r.webhook_id for r in arrivals} == {delivery.id}
    assert all(r.verified for r in arrivals)
    # Each attempt is signed anew, at its own time.
    assert arrivals[0].headers["webhook-timestamp"] <= arrivals[1].headers["webhook-timestamp"]


async def test_gone_disables_and_a_redelivery_through_the_cli_enables_again(env: Env) -> None:
    gone = Behaviour(statuses=[410])
    target = await endpoint(env, "/gone", gone)
    async with env.client() as client:
        job = await client.create_job(env.video.id, spec=PROBE_ONLY)
        await finished(env, job.id)
        (delivery,) = await settled(env, target.id, 1)
        assert delivery.state == pb.WEBHOOK_DELIVERY_STATE_FAILED
        (shown,) = [e for e in (await client.list_webhook_endpoints())[0] if e.id == target.id]
        assert shown.state == pb.WEBHOOK_ENDPOINT_STATE_DISABLED
        assert shown.disabled_reason == "ENDPOINT_GONE"
        # Disabled: a later job's events are not even queued for it.
        later = await client.create_job(env.video.id, spec=PROBE_ONLY)
        await finished(env, later.id)
    assert len(await deliveries(env, target.id)) == 1
    assert len(env.receiver.at("/gone")) == 1  # 410 is never retried
    gone.statuses[:] = [200]  # the receiver is back
    output = await asyncio.to_thread(run_cli, env, ["webhooks", "redeliver", delivery.id])
    assert f"delivery {delivery.id} queued again" in " ".join(output.split())
    (again,) = await settled(env, target.id, 1)
    for _ in range(100):
        (again,) = await deliveries(env, target.id)
        if again.state == pb.WEBHOOK_DELIVERY_STATE_SUCCEEDED:
            break
        await asyncio.sleep(0.1)
    assert again.state == pb.WEBHOOK_DELIVERY_STATE_SUCCEEDED
    assert [r.webhook_id for r in env.receiver.at("/gone")] == [delivery.id, delivery.id]
    listed = await asyncio.to_thread(run_cli, env, ["webhooks", "ls"])
    assert target.id in listed and "ACTIVE" in listed


async def test_an_exhausted_schedule_disables_and_retry_after_is_honoured(env: Env) -> None:
    target = await endpoint(env, "/down", Behaviour(statuses=[503], headers={"Retry-After": "1"}))
    async with env.client() as client:
        job = await client.create_job(env.video.id, spec=PROBE_ONLY)
        await finished(env, job.id)
        (delivery,) = await settled(env, target.id, 1)
        (shown,) = [e for e in (await client.list_webhook_endpoints())[0] if e.id == target.id]
    assert delivery.state == pb.WEBHOOK_DELIVERY_STATE_FAILED
    assert [a.status_code for a in delivery.attempts] == [503, 503, 503]  # schedule of two waits
    assert shown.state == pb.WEBHOOK_ENDPOINT_STATE_DISABLED
    assert shown.disabled_reason == "RETRIES_EXHAUSTED"
    starts = [a.start_time.ToDatetime() for a in delivery.attempts]
    # The schedule says 0.2 s; the receiver's Retry-After says 1 s, and wins.
    assert all((b - a).total_seconds() >= 1.0 for a, b in itertools.pairwise(starts))


async def test_a_hanging_receiver_delays_no_job(env: Env) -> None:
    release = threading.Event()
    every = [
        pb.WEBHOOK_EVENT_TYPE_JOB_QUEUED,
        pb.WEBHOOK_EVENT_TYPE_JOB_STARTED,
        pb.WEBHOOK_EVENT_TYPE_STAGE_FINISHED,
        pb.WEBHOOK_EVENT_TYPE_JOB_SUCCEEDED,
    ]
    target = await endpoint(env, "/hang", Behaviour(hang=release), *every)
    try:
        async with env.client() as client:
            jobs = [await client.create_job(env.video.id, spec=PROBE_ONLY) for _ in range(3)]
        states = [(await finished(env, job.id)).state for job in jobs]
        # Every job ended while no request to the receiver had been answered.
        assert states == [job_pb2.JOB_STATE_SUCCEEDED] * 3
        assert env.receiver.at("/hang")
        assert env.receiver.answered.get("/hang", 0) == 0
        # The attempts stuck there end at the timeout (2 s here) and are retried.
        for _ in range(100):
            errors = {a.error for d in await deliveries(env, target.id) for a in d.attempts}
            if "timed out after 2 s" in errors:
                break
            await asyncio.sleep(0.1)
        assert "timed out after 2 s" in errors
        assert env.receiver.answered.get("/hang", 0) == 0
    finally:
        release.set()


async def test_a_finished_jobs_payload_carries_its_artifacts_with_working_urls(env: Env) -> None:
    target = await endpoint(env, "/results", Behaviour())
    async with env.client() as client:
        job = await client.create_job(env.video.id, spec=AUDIO_ONLY, labels={"crm": "42"})
    done = await finished(env, job.id)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED, (done.error, list(done.stages))
    await settled(env, target.id, 1)
    (request,) = env.receiver.at("/results")
    assert request.verified
    payload = request.payload
    assert payload["type"] == "job.succeeded"
    data = payload["data"]
    assert data["job"]["labels"] == {"crm": "42"}
    media = data["job"]["media_info"]  # proto3 JSON: a Duration is "1.024s"
    assert float(media["duration"].removesuffix("s")) == pytest.approx(1.0, abs=0.1)
    assert (media["video_streams"][0]["width"], media["video_streams"][0]["height"]) == (320, 240)
    by_name = {a["name"]: a for a in data["artifacts"]}
    assert set(by_name) == {a.name for a in done.artifacts}
    assert by_name
    for artifact in done.artifacts:
        shown = by_name[artifact.name]
        assert shown["sha256"] == artifact.sha256
        body = await asyncio.to_thread(lambda url=shown["url"]: urllib.request.urlopen(url).read())
        assert hashlib.sha256(body).hexdigest() == artifact.sha256


def run_cli(env: Env, argv: list[str]) -> str:
    """The ``reelmill`` CLI against the suite's gateway; its output (fails on a non-zero exit)."""
    saved = dict(os.environ)
    os.environ.update(REELMILL_GATEWAY=env.suite.gateway, REELMILL_TOKEN=token(env.owner))
    buffer = io.StringIO()
    try:
        from reelmill.cli import render

        console_file = render.console.file
        render.console.file = buffer
        try:
            with contextlib.redirect_stdout(buffer):
                code = cli(argv)
        finally:
            render.console.file = console_file
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert code == 0, buffer.getvalue()
    return buffer.getvalue()


async def test_the_cli_manages_endpoints(env: Env) -> None:
    made = await asyncio.to_thread(
        run_cli, env, ["webhooks", "create", env.receiver.url("/cli"), "--event", "job.failed"]
    )
    endpoint_id = made.split("webhook endpoint ", 1)[1].split()[0]
    secret = next(line for line in made.splitlines() if line.startswith("whsec_"))
    assert "job.failed" in made
    rotated = await asyncio.to_thread(
        run_cli, env, ["webhooks", "rotate", endpoint_id, "--overlap", "60"]
    )
    fresh = next(line for line in rotated.splitlines() if line.startswith("whsec_"))
    assert fresh != secret and "also signs until" in " ".join(rotated.split())
    shown = await asyncio.to_thread(run_cli, env, ["webhooks", "deliveries", endpoint_id])
    assert "delivery (webhook-id)" in shown
    removed = await asyncio.to_thread(run_cli, env, ["webhooks", "rm", endpoint_id])
    assert "0 pending deliveries dropped" in " ".join(removed.split())
    async with env.client() as client:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.rotate_webhook_secret(endpoint_id)
    assert error_reason(caught.value) == "WEBHOOK_ENDPOINT_NOT_FOUND"


def test_attempts_are_counted_by_outcome(env: Env) -> None:
    """Runs last: the two gateways (since the SIGKILL) counted the attempts the tests above
    made them, by outcome, on their /metrics."""
    counted: dict[str, float] = defaultdict(float)
    for port in env.metrics_ports:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        for line in text.splitlines():
            if line.startswith("reelmill_webhook_deliveries_total{"):
                outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
                counted[outcome] += float(line.rsplit(" ", 1)[1])
    assert counted["gone"] == 1  # the one 410
    assert counted["exhausted"] >= 1  # /down (and the hanging receiver's)
    assert counted["retrying"] >= 3  # /flaky once, /down twice, …
    assert counted["succeeded"] >= 5
