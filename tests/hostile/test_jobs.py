"""The hostile corpus of the batch, retry and priority RPCs (real gateway and ingest processes,
SeaweedFS): empty and oversize batches, malformed items (every one named, none created), ids
that are not ids or not the caller's, priorities out of range, retries of jobs that have not
ended, watch cursors that are negative or name strangers. Each gets its precise status and
reason; nothing is created by a refused call, and the gateway still serves afterwards."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import duration_pb2

from reelmill.v1 import job_pb2, pipeline_pb2
from reelmill.v1 import job_service_pb2 as pb
from runtime.errors import error_info
from tests.hostile.conftest import MAX_MESSAGE_MIB, Hostile, Media, whole
from tests.suite import PROBE_ONLY, token

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
OWNER = "hostile-jobs"
#: The gateway's default REELMILL_MAX_BATCH_SIZE.
MAX_BATCH = 1000


@dataclass(frozen=True)
class Known:
    """Resources the cases point at: the owner's video, a running job, a finished job and a
    batch, and another owner's video, job and batch."""

    video: str
    running: str
    succeeded: str
    batch: str
    batch_job: str
    theirs_video: str
    theirs_job: str
    theirs_batch: str


@dataclass(frozen=True)
class Case:
    method: str
    request: Callable[[Known], Any]
    code: grpc.StatusCode
    reason: str
    text: str = ""
    #: For BatchCreateJobs: the ErrorInfo metadata expected.
    metadata: dict[str, str] | None = None


def item(**fields: Any) -> pb.CreateJobRequest:
    return pb.CreateJobRequest(spec=PROBE_ONLY, **fields)


def batch(*items: Callable[[Known], pb.CreateJobRequest]) -> Callable[[Known], Any]:
    return lambda k: pb.BatchCreateJobsRequest(requests=[build(k) for build in items])


def good(n: int) -> Callable[[Known], pb.CreateJobRequest]:
    return lambda k: item(video_id=k.video, request_id=f"good-{n}")


def bad_item(reason: str, text: str = "", **fields: Any) -> Case:
    """A batch of a good item, then the bad one: refused whole, index 1 named."""
    return Case(
        "BatchCreateJobs",
        batch(good(0), lambda k: item(**{k2: v.format(k=k) if isinstance(v, str) else v
                                          for k2, v in fields.items()})),
        INVALID,
        "BAD_BATCH_REQUEST",
        text or "requests[1]",
        {"indexes": "1", "reasons": reason},
    )  # fmt: skip


CASES: dict[str, Case] = {
    # -- batches: size
    "empty_batch": Case("BatchCreateJobs", lambda k: pb.BatchCreateJobsRequest(), INVALID,
                        "EMPTY_BATCH", "at least one"),
    "one_over_the_limit": Case(
        "BatchCreateJobs",
        lambda k: pb.BatchCreateJobsRequest(
            requests=[item(video_id=k.video) for _ in range(MAX_BATCH + 1)]
        ),
        INVALID, "BATCH_TOO_LARGE", f"at most {MAX_BATCH}",
    ),
    "larger_than_a_message": Case(
        "BatchCreateJobs",
        lambda k: pb.BatchCreateJobsRequest(
            requests=[item(video_id=k.video, labels={"pad": "x" * 200}) for _ in range(6000)]
        ),
        grpc.StatusCode.RESOURCE_EXHAUSTED, "", "larger than",
    ),
    # -- batches: one bad item among good ones
    "item_without_source": bad_item("MISSING_SOURCE"),
    "item_video_not_an_id": bad_item("BAD_ID", video_id="../../etc/passwd"),
    "item_file_url": bad_item("BAD_URL", url="file:///etc/passwd"),
    "item_ftp_url": bad_item("BAD_URL", url="ftp://example.com/a.mp4"),
    "item_url_without_host": bad_item("BAD_URL", url="http:///a.mp4"),
    "item_url_control_chars": bad_item("BAD_URL", url="http://example.com/\r\nX: 1"),
    "item_url_too_long": bad_item("BAD_URL", url="https://example.com/" + "a" * 3000),
    "item_priority_too_high": bad_item("BAD_PRIORITY", video_id="{k.video}", priority=101),
    "item_priority_too_low": bad_item("BAD_PRIORITY", video_id="{k.video}", priority=-101),
    "item_priority_int_max": bad_item("BAD_PRIORITY", video_id="{k.video}", priority=2**31 - 1),
    "item_bad_label_key": bad_item("BAD_LABELS", video_id="{k.video}", labels={"Bad Key": "v"}),
    "item_label_control_chars": bad_item(
        "BAD_LABELS", video_id="{k.video}", labels={"k": "a\x00b"}
    ),
    "item_too_many_labels": bad_item(
        "BAD_LABELS", video_id="{k.video}", labels={f"k{n}": "v" for n in range(65)}
    ),
    "item_request_id_too_long": bad_item(
        "BAD_REQUEST_ID", video_id="{k.video}", request_id="r" * 257
    ),
    "item_negative_timeout": bad_item(
        "BAD_TIMEOUT", video_id="{k.video}", timeout=duration_pb2.Duration(seconds=-1)
    ),
    "item_timeout_beyond_the_maximum": bad_item(
        "BAD_TIMEOUT", video_id="{k.video}", timeout=duration_pb2.Duration(seconds=10**7)
    ),
    "duplicate_request_ids": Case(
        "BatchCreateJobs",
        batch(good(0), good(1), good(0)),
        INVALID, "BAD_BATCH_REQUEST", "is also the one of requests[0]",
        {"indexes": "2", "reasons": "DUPLICATE_REQUEST_ID"},
    ),
    "every_item_bad_named": Case(
        "BatchCreateJobs",
        batch(*[lambda k: item(url="gopher://x") for _ in range(12)]),
        INVALID, "BAD_BATCH_REQUEST", "and 2 more",
        {"indexes": ",".join(map(str, range(12))), "reasons": ",".join(["BAD_URL"] * 12)},
    ),
    # -- CreateJob and ListJobs
    "create_priority_out_of_range": Case(
        "CreateJob", lambda k: item(video_id=k.video, priority=1000), INVALID, "BAD_PRIORITY",
        "between -100 and 100",
    ),
    "list_batch_not_an_id": Case(
        "ListJobs", lambda k: pb.ListJobsRequest(batch_id="not-a-batch"), INVALID, "BAD_ID",
    ),
    # -- RetryJob
    "retry_running_job": Case(
        "RetryJob", lambda k: pb.RetryJobRequest(job_id=k.running), PRECONDITION,
        "JOB_NOT_RETRYABLE", "RUNNING",
    ),
    "retry_succeeded_job": Case(
        "RetryJob", lambda k: pb.RetryJobRequest(job_id=k.succeeded), PRECONDITION,
        "JOB_NOT_RETRYABLE", "SUCCEEDED",
    ),
    "retry_unknown_job": Case(
        "RetryJob", lambda k: pb.RetryJobRequest(job_id=str(uuid.uuid4())), NOT_FOUND,
        "JOB_NOT_FOUND",
    ),
    "retry_not_an_id": Case(
        "RetryJob", lambda k: pb.RetryJobRequest(job_id="'; DROP TABLE jobs; --"), INVALID,
        "BAD_ID",
    ),
    "retry_empty_id": Case("RetryJob", lambda k: pb.RetryJobRequest(), INVALID, "BAD_ID"),
    "retry_another_owners_job": Case(
        "RetryJob", lambda k: pb.RetryJobRequest(job_id=k.theirs_job), NOT_FOUND,
        "JOB_NOT_FOUND",
    ),
    # -- WatchBatch
    "watch_batch_not_an_id": Case(
        "WatchBatch", lambda k: pb.WatchBatchRequest(batch_id="x" * 1000), INVALID, "BAD_ID",
    ),
    "watch_unknown_batch": Case(
        "WatchBatch", lambda k: pb.WatchBatchRequest(batch_id=str(uuid.uuid4())), NOT_FOUND,
        "BATCH_NOT_FOUND",
    ),
    "watch_another_owners_batch": Case(
        "WatchBatch", lambda k: pb.WatchBatchRequest(batch_id=k.theirs_batch), NOT_FOUND,
        "BATCH_NOT_FOUND",
    ),
    "watch_negative_cursor": Case(
        "WatchBatch",
        lambda k: pb.WatchBatchRequest(batch_id=k.batch, after_sequences={k.batch_job: -1}),
        INVALID, "BAD_SEQUENCE", "negative",
    ),
    "watch_cursor_of_a_stranger": Case(
        "WatchBatch",
        lambda k: pb.WatchBatchRequest(batch_id=k.batch, after_sequences={k.theirs_job: 0}),
        INVALID, "BAD_SEQUENCE", "not in batch",
    ),
    "watch_cursor_not_an_id": Case(
        "WatchBatch",
        lambda k: pb.WatchBatchRequest(batch_id=k.batch, after_sequences={"<script>": 1}),
        INVALID, "BAD_SEQUENCE", "not in batch",
    ),
}  # fmt: skip


def metadata(owner: str = OWNER) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token(owner)}")]


def wait_for(
    hostile: Hostile, owner: str, job_id: str, done: Callable[[job_pb2.Job], bool]
) -> None:
    with grpc.insecure_channel(hostile.address) as channel:
        stub = hostile.stub(channel)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            job = stub.GetJob(pb.GetJobRequest(job_id=job_id), metadata=metadata(owner)).job
            if done(job):
                return
            time.sleep(0.1)
    raise AssertionError(f"job {job_id} never got there")


def make_known(hostile: Hostile, media: Media) -> Known:
    videos = {
        owner: hostile.upload(whole(media.good), owner=owner).video.id
        for owner in (OWNER, "hostile-other")
    }
    with grpc.insecure_channel(hostile.address) as channel:
        stub = hostile.stub(channel)

        def create(owner: str, spec: pipeline_pb2.PipelineSpec) -> str:
            request = pb.CreateJobRequest(video_id=videos[owner], spec=spec)
            return str(stub.CreateJob(request, metadata=metadata(owner)).job.id)

        def make_batch(owner: str) -> tuple[str, str]:
            request = pb.BatchCreateJobsRequest(requests=[item(video_id=videos[owner])])
            response = stub.BatchCreateJobs(request, metadata=metadata(owner))
            return response.batch_id, response.results[0].job.id

        running = create(OWNER, PROBE_ONLY)
        succeeded = create(OWNER, PROBE_ONLY)
        batch_id, batch_job = make_batch(OWNER)
        theirs_batch, theirs_job = make_batch("hostile-other")
    wait_for(hostile, OWNER, succeeded, lambda j: j.state == job_pb2.JOB_STATE_SUCCEEDED)
    wait_for(hostile, OWNER, running, lambda j: j.state == job_pb2.JOB_STATE_SUCCEEDED)
    asyncio.run(hold(hostile, running))
    return Known(
        video=videos[OWNER],
        running=running,
        succeeded=succeeded,
        batch=batch_id,
        batch_job=batch_job,
        theirs_video=videos["hostile-other"],
        theirs_job=theirs_job,
        theirs_batch=theirs_batch,
    )


async def hold(hostile: Hostile, job_id: str) -> None:
    """Makes a job RUNNING under another worker's live lease (a job some replica is running
    right now: this gateway leaves it alone)."""
    dsn = hostile.suite.env["REELMILL_DATABASE_URL"].replace("postgresql+asyncpg", "postgresql")
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(
            "UPDATE jobs SET state = 'RUNNING', end_time = NULL, lease_owner = 'elsewhere',"
            " lease_expires_at = now() + interval '1 hour' WHERE id = $1",
            uuid.UUID(job_id),
        )
    finally:
        await connection.close()


@pytest.fixture(scope="module")
def known(hostile: Hostile, media: Media) -> Iterator[Known]:
    found = make_known(hostile, media)
    yield found
    with grpc.insecure_channel(hostile.address) as channel:
        hostile.stub(channel).CancelJob(
            pb.CancelJobRequest(job_id=found.running), metadata=metadata()
        )


def job_ids(hostile: Hostile, owner: str = OWNER) -> set[str]:
    with grpc.insecure_channel(hostile.address) as channel:
        response = hostile.stub(channel).ListJobs(
            pb.ListJobsRequest(page_size=500), metadata=metadata(owner)
        )
    return {job.id for job in response.jobs}


def call(hostile: Hostile, method: str, request: Any) -> None:
    with grpc.insecure_channel(
        hostile.address,
        options=[("grpc.max_send_message_length", 8 * MAX_MESSAGE_MIB * 1024 * 1024)],
    ) as channel:
        stub = hostile.stub(channel)
        if method == "WatchBatch":
            for _ in stub.WatchBatch(request, metadata=metadata(), timeout=30):
                pass
        else:
            getattr(stub, method)(request, metadata=metadata(), timeout=30)


def test_the_corpus_is_big_enough() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_job_request(hostile: Hostile, known: Known, name: str) -> None:
    case = CASES[name]
    before = job_ids(hostile)
    with pytest.raises(grpc.RpcError) as caught:
        call(hostile, case.method, case.request(known))
    error = caught.value
    code, details = error.code(), error.details() or ""  # type: ignore[attr-defined]
    assert code == case.code, (code, details)
    assert case.text in details, details
    info = error_info(error)
    assert (info.reason if info else "") == case.reason, (info, details)
    if case.metadata is not None:
        assert info is not None and dict(info.metadata) == case.metadata
    assert "Traceback" not in details and "SELECT" not in details
    assert job_ids(hostile) == before  # a refused call creates nothing


def test_a_batch_isolates_another_owners_video(hostile: Hostile, known: Known) -> None:
    """Not malformed, so accepted: the other owner's video is that item's NOT_FOUND alone."""
    with grpc.insecure_channel(hostile.address) as channel:
        response = hostile.stub(channel).BatchCreateJobs(
            pb.BatchCreateJobsRequest(
                requests=[item(video_id=known.theirs_video), item(video_id=known.video)]
            ),
            metadata=metadata(),
        )
    first, second = response.results
    assert (first.error.code, first.error.reason) == ("NOT_FOUND", "VIDEO_NOT_FOUND")
    assert known.theirs_video in first.error.message
    assert second.created and second.job.batch_id == response.batch_id
    assert first.error.message.count("hostile-other") == 0  # nothing of the other owner's


def test_still_serving_and_clean_afterwards(hostile: Hostile, known: Known) -> None:
    from grpc_health.v1 import health_pb2

    assert set(hostile.serving().values()) == {health_pb2.HealthCheckResponse.SERVING}
    logs = hostile.logs()
    assert "unhandled error" not in logs
    assert '"level": "ERROR"' not in logs
