"""Property-based tests (hypothesis) of the public API under hostile use.

1. Upload message sequences: arbitrary interleavings of headers (lying sizes, checksums),
   chunks, empty chunks and oversize chunks. A small model predicts the outcome; only a
   well-formed sequence succeeds, and a failed one leaves nothing stored or in scratch.
2. Two owners' interleaved operations against the in-process gateway: an owner never sees or
   touches the other's videos and jobs (NOT_FOUND), and list results equal a simple model.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.server import assemble
from gateway.settings import GatewaySettings
from reelmill.v1 import job_pb2, job_service_pb2_grpc
from reelmill.v1 import job_service_pb2 as pb
from runtime.errors import error_info
from runtime.internal_auth import InternalAuth
from runtime.server import build_server
from runtime.storage import open_store
from services.ingest.server import build_spec
from services.ingest.settings import IngestSettings
from tests.conftest import FreshDatabase
from tests.hostile.conftest import (
    MAX_MESSAGE_MIB,
    MAX_UPLOAD_BYTES,
    Hostile,
    Media,
    chunk,
    header,
    sha256,
)
from tests.servers import PostgresServer
from tests.suite import INTERNAL_TOKEN, JWT_SECRET, PROBE_ONLY, token

settings.register_profile(
    "hostile-ci",
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("hostile-thorough", parent=settings.get_profile("hostile-ci"),
                          max_examples=400, derandomize=False)  # fmt: skip
PROFILE = settings.get_profile(os.environ.get("REELMILL_HYPOTHESIS_PROFILE", "hostile-ci"))

# -- 1. upload message sequences -------------------------------------------------------------

OVERSIZE = MAX_MESSAGE_MIB * 1024 * 1024 + 1

header_ops = st.tuples(
    st.just("header"),
    st.sampled_from(["exact", "smaller", "larger", "zero", "negative", "over_limit"]),
    st.sampled_from(["none", "right", "wrong", "malformed"]),
    st.integers(1, 5000),
)
chunk_ops = st.tuples(st.just("chunk"), st.integers(1, 9000))
arbitrary = st.lists(
    st.one_of(header_ops, chunk_ops, chunk_ops, st.just(("empty",)), st.just(("oversize",))),
    max_size=8,
)
#: Header first, then the whole clip in chunks of any sizes, empty chunks anywhere.
well_formed = st.builds(
    lambda sha, sizes: [("header", "exact", sha, 0), *sizes, ("chunk", 10**9)],
    st.sampled_from(["none", "right"]),
    st.lists(st.one_of(chunk_ops, st.just(("empty",))), max_size=6),
)


@dataclass(frozen=True)
class Outcome:
    code: grpc.StatusCode
    reason: str = ""


def build(ops: list[tuple[Any, ...]], clip: bytes) -> list[pb.UploadVideoRequest]:
    """Messages for ``ops``: chunks take the clip's next bytes (never past its end)."""
    messages, cursor = [], 0
    for op in ops:
        if op[0] == "header":
            _, size_kind, sha_kind, delta = op
            size = {
                "exact": len(clip),
                "smaller": max(len(clip) - delta, 1),
                "larger": len(clip) + delta,
                "zero": 0,
                "negative": -delta,
                "over_limit": MAX_UPLOAD_BYTES + delta,
            }[size_kind]
            digest = {
                "none": "",
                "right": sha256(clip),
                "wrong": sha256(b"not the clip"),
                "malformed": "xyz",
            }[sha_kind]
            messages.append(header(size, sha256=digest))
        elif op[0] == "chunk":
            part = clip[cursor : cursor + op[1]]
            cursor += len(part)
            messages.append(chunk(part))
        elif op[0] == "empty":
            messages.append(chunk(b""))
        else:
            messages.append(chunk(b"\0" * OVERSIZE))
    return messages


def predict(messages: list[pb.UploadVideoRequest], clip: bytes) -> set[Outcome]:
    """The outcomes the model allows (one, except around a transport-level refusal)."""
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    for index, message in enumerate(messages):
        if message.WhichOneof("part") == "chunk" and len(message.chunk) >= OVERSIZE:
            # The transport refuses the message; a refusal of what came before may win.
            before = predict(messages[:index], clip) if index else set()
            return {Outcome(grpc.StatusCode.RESOURCE_EXHAUSTED)} | {
                o for o in before if o.code != grpc.StatusCode.OK
            }
    if not messages or messages[0].WhichOneof("part") != "header":
        return {Outcome(invalid, "MISSING_HEADER")}
    declared = messages[0].header
    if declared.size_bytes > MAX_UPLOAD_BYTES:
        return {Outcome(grpc.StatusCode.RESOURCE_EXHAUSTED, "UPLOAD_TOO_LARGE")}
    if declared.sha256 and len(declared.sha256) != 64:
        return {Outcome(invalid, "BAD_SHA256")}
    if declared.size_bytes < 0:
        return {Outcome(invalid, "INVALID_SIZE")}
    if declared.size_bytes == 0:
        return {Outcome(invalid, "EMPTY_UPLOAD")}
    data = b""
    for message in messages[1:]:
        if message.WhichOneof("part") == "header":
            return {Outcome(invalid, "DUPLICATE_HEADER")}
        data += message.chunk
        if len(data) > declared.size_bytes:
            return {Outcome(invalid, "SIZE_MISMATCH")}
    if not data:
        return {Outcome(invalid, "EMPTY_UPLOAD")}
    if len(data) < declared.size_bytes:
        return {Outcome(invalid, "TRUNCATED_UPLOAD")}
    if declared.sha256 and declared.sha256 != sha256(data):
        return {Outcome(invalid, "SHA256_MISMATCH")}
    if data != clip:  # a prefix of the clip
        return {Outcome(invalid, "TRUNCATED_MEDIA"), Outcome(invalid, "NOT_A_VIDEO")}
    return {Outcome(grpc.StatusCode.OK)}


@pytest.fixture(scope="module")
def clip(media: Media) -> bytes:
    return media.good


def test_upload_sequences_follow_the_model(hostile: Hostile, clip: bytes) -> None:
    seen: set[Outcome] = set()

    @PROFILE
    @given(ops=st.one_of(arbitrary, well_formed))
    # Refusals the generated examples may or may not reach, always tried.
    @example(ops=[("header", "exact", "none", 0), ("header", "exact", "none", 0)])
    @example(ops=[("header", "smaller", "none", 10), ("chunk", 10**9)])
    @example(ops=[("header", "exact", "none", 0), ("chunk", 100)])
    @example(ops=[("header", "exact", "wrong", 0), ("chunk", 10**9)])
    def check(ops: list[tuple[Any, ...]]) -> None:
        messages = build(ops, clip)
        allowed = predict(messages, clip)
        before = hostile.objects()
        try:
            response = hostile.upload(messages)
            outcome = Outcome(grpc.StatusCode.OK)
        except grpc.RpcError as error:
            info = error_info(error)
            outcome = Outcome(error.code(), info.reason if info else "")  # type: ignore[attr-defined]
        seen.add(outcome)
        # Never INTERNAL: a refusal mid-stream reaches the caller with its own status, because
        # ingest and the gateway drain what the caller is still sending (runtime.streams).
        assert outcome in allowed, (ops, outcome, allowed)
        if outcome.code == grpc.StatusCode.OK:
            assert hostile.objects() == {*before, f"videos/{response.video.id}/source"}
        else:
            assert hostile.objects() == before
        assert hostile.incomplete_uploads() == []
        assert hostile.scratch_left() == []

    check()
    # The examples reached the interesting outcomes, not just one of them.
    assert Outcome(grpc.StatusCode.OK) in seen
    assert len(seen) >= 4, seen


# -- 2. two owners ---------------------------------------------------------------------------


@dataclass
class InProcess:
    address: str
    loop: asyncio.AbstractEventLoop


@pytest.fixture(scope="module")
def in_process(
    postgres: PostgresServer,
    fresh_database: FreshDatabase,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[InProcess]:
    """The gateway and ingest served in this process (their event loop in a thread), on a
    fresh database and a local store. The orchestrator is not started: jobs stay QUEUED
    until cancelled, so the model knows every state."""
    database = fresh_database("owners")
    root = tmp_path_factory.mktemp("owners")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="in-process-servers", daemon=True)
    thread.start()

    async def start() -> tuple[str, Any]:
        ingest_settings = IngestSettings(
            storage_backend="local",
            storage_dir=root / "objects",
            scratch_dir=root / "scratch",
            internal_token=INTERNAL_TOKEN,
        )
        ingest_spec = build_spec(ingest_settings, open_store(ingest_settings))
        ingest_server = build_server(
            ingest_settings, InternalAuth.from_settings(ingest_settings).server_interceptors()
        )
        ingest_spec.register(ingest_server)
        ingest_port = ingest_server.add_insecure_port("127.0.0.1:0")
        await ingest_server.start()
        gateway_settings = GatewaySettings(
            database_url=postgres.url(database),
            jwt_secret=JWT_SECRET,
            storage_backend="local",
            storage_dir=root / "objects",
            ingest_target=f"127.0.0.1:{ingest_port}",
            migrate_on_start=False,
            internal_token=INTERNAL_TOKEN,
        )
        parts = await assemble(gateway_settings)
        gateway_server = build_server(gateway_settings, parts.spec.interceptors)
        parts.spec.register(gateway_server)
        port = gateway_server.add_insecure_port("127.0.0.1:0")
        await gateway_server.start()

        async def stop() -> None:
            await gateway_server.stop(0)
            await ingest_server.stop(0)
            for spec in (parts.spec, ingest_spec):
                if spec.on_close is not None:
                    await spec.on_close()

        return f"127.0.0.1:{port}", stop

    address, stop = asyncio.run_coroutine_threadsafe(start(), loop).result(60)
    try:
        yield InProcess(address=address, loop=loop)
    finally:
        asyncio.run_coroutine_threadsafe(stop(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


owner_ops = st.lists(
    st.tuples(
        st.sampled_from(["a", "b"]),
        st.sampled_from(
            [
                "upload",
                "get_video",
                "list_videos",
                "create_job",
                "get_job",
                "cancel_job",
                "list_jobs",
            ]
        ),
        st.integers(0, 50),
    ),
    min_size=1,
    max_size=14,
)


def _code(call: Any) -> tuple[grpc.StatusCode, Any]:
    try:
        return grpc.StatusCode.OK, call()
    except grpc.RpcError as error:
        return error.code(), None  # type: ignore[attr-defined]


def test_owners_never_see_each_other(in_process: InProcess, media: Media) -> None:
    clip = media.video_only

    @settings(PROFILE, max_examples=max(PROFILE.max_examples // 2, 10))
    @given(ops=owner_ops)
    def check(ops: list[tuple[str, str, int]]) -> None:
        run = uuid.uuid4().hex[:8]
        owners = {name: f"{name}-{run}" for name in ("a", "b")}
        #: id -> owner, in creation order (newest last)
        videos: dict[str, str] = {}
        jobs: dict[str, str] = {}
        states: dict[str, int] = {}
        unknown = str(uuid.uuid4())

        def pick(pool: dict[str, str], index: int) -> str:
            keys = list(pool)
            return keys[index % (len(keys) + 1)] if index % (len(keys) + 1) < len(keys) else unknown

        with grpc.insecure_channel(in_process.address) as channel:
            stub = job_service_pb2_grpc.JobServiceStub(channel)
            for who, op, index in ops:
                owner = owners[who]
                auth = [("authorization", f"Bearer {token(owner)}")]
                if op == "upload":
                    messages = [header(len(clip)), chunk(clip)]
                    code, response = _code(
                        lambda m=messages, a=auth: stub.UploadVideo(iter(m), metadata=a, timeout=30)
                    )
                    assert code == grpc.StatusCode.OK
                    videos[response.video.id] = owner
                elif op == "get_video":
                    video_id = pick(videos, index)
                    code, response = _code(
                        lambda v=video_id, a=auth: stub.GetVideo(
                            pb.GetVideoRequest(video_id=v), metadata=a, timeout=10
                        )
                    )
                    expected = videos.get(video_id) == owner
                    assert code == (grpc.StatusCode.OK if expected else grpc.StatusCode.NOT_FOUND)
                elif op == "list_videos":
                    listed = stub.ListVideos(pb.ListVideosRequest(), metadata=auth, timeout=10)
                    mine = [v for v, o in videos.items() if o == owner]
                    assert [v.id for v in listed.videos] == mine[::-1]
                elif op == "create_job":
                    video_id = pick(videos, index)
                    code, response = _code(
                        lambda v=video_id, a=auth: stub.CreateJob(
                            pb.CreateJobRequest(video_id=v, spec=PROBE_ONLY), metadata=a, timeout=10
                        )
                    )
                    if videos.get(video_id) == owner:
                        assert code == grpc.StatusCode.OK
                        jobs[response.job.id] = owner
                        states[response.job.id] = job_pb2.JOB_STATE_QUEUED
                    else:
                        assert code == grpc.StatusCode.NOT_FOUND
                elif op in ("get_job", "cancel_job"):
                    job_id = pick(jobs, index)
                    call = stub.GetJob if op == "get_job" else stub.CancelJob
                    request = (pb.GetJobRequest if op == "get_job" else pb.CancelJobRequest)(
                        job_id=job_id
                    )
                    code, response = _code(
                        lambda c=call, r=request, a=auth: c(r, metadata=a, timeout=10)
                    )
                    if jobs.get(job_id) != owner:
                        assert code == grpc.StatusCode.NOT_FOUND
                    elif op == "get_job":
                        assert code == grpc.StatusCode.OK
                        assert response.job.state == states[job_id]
                    elif states[job_id] == job_pb2.JOB_STATE_QUEUED:
                        assert code == grpc.StatusCode.OK
                        assert response.job.state == job_pb2.JOB_STATE_CANCELLED
                        states[job_id] = job_pb2.JOB_STATE_CANCELLED
                    else:
                        assert code == grpc.StatusCode.FAILED_PRECONDITION
                else:
                    listed = stub.ListJobs(pb.ListJobsRequest(), metadata=auth, timeout=10)
                    mine = [j for j, o in jobs.items() if o == owner]
                    assert [j.id for j in listed.jobs] == mine[::-1]
                    assert [j.state for j in listed.jobs] == [states[j] for j in mine[::-1]]

    check()
