"""Resumable uploads (StartUpload, WriteUpload, GetUpload, FinishUpload) through real gateway
and ingest processes, on SeaweedFS and on the local store: what is committed survives every
kind of interruption, wrong offsets are refused naming the committed size, a bad finish and
an expired upload leave nothing (no object, no multipart upload or staged file, no rows), and
the video is exactly what UploadVideo stores for the same file."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import re
import struct
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import pytest

from reelmill.client import ReelmillClient
from reelmill.status import error_info
from reelmill.v1 import job_service_pb2 as pb
from reelmill.v1 import upload_pb2
from tests.conftest import Backend, SuiteEnv
from tests.media import make_clip
from tests.servers import S3Server, entries_under, free_port
from tests.suite import ROOT, Suite, run_suite, token

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024
#: REELMILL_S3_PART_SIZE_MIB in these suites: S3's minimum, so interruptions re-send little.
PART = 5 * MIB
#: The local store's part size (runtime.storage.local.RESUMABLE_PART_SIZE).
LOCAL_PART = 16 * MIB


def padded_video(path: Path, clip: bytes, size: int, seed: int) -> Path:
    """A real MP4 of ``size`` bytes: ``clip`` (faststart) and a trailing ``free`` box of seeded
    random bytes, so every part differs from every other and a misplaced part shows."""
    rng = random.Random(seed)
    pad = size - len(clip)
    with path.open("wb") as handle:
        handle.write(clip)
        handle.write(struct.pack(">I4s", pad, b"free"))
        left = pad - 8
        while left:
            block = min(left, 8 * MIB)
            handle.write(rng.randbytes(block))
            left -= block
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(8 * MIB):
            digest.update(block)
    return digest.hexdigest()


@pytest.fixture(scope="session")
def clip_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = make_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", seconds=1, width=64, height=48)
    return path.read_bytes()


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("resumable-media")


@pytest.fixture(scope="session")
def video_200(media_dir: Path, clip_bytes: bytes) -> Path:
    """200 MiB, generated once per session."""
    return padded_video(media_dir / "big.mp4", clip_bytes, 200 * MIB, seed=200)


@pytest.fixture(scope="session")
def video_40(media_dir: Path, clip_bytes: bytes) -> Path:
    return padded_video(media_dir / "forty.mp4", clip_bytes, 40 * MIB + 12345, seed=40)


@pytest.fixture(scope="session")
def data_40(video_40: Path) -> bytes:
    return video_40.read_bytes()


@dataclass
class Rig:
    suite: Suite
    env: dict[str, str]
    backend: Backend
    s3: S3Server | None

    @property
    def dsn(self) -> str:
        return self.env["REELMILL_DATABASE_URL"].replace("postgresql+asyncpg", "postgresql")

    def client(self, owner: str = "alice") -> ReelmillClient:
        return ReelmillClient(self.suite.gateway, token=token(owner))

    async def rows(self, upload_id: str) -> tuple[int, int]:
        """(uploads, upload_parts) rows of an upload."""
        conn = await asyncpg.connect(self.dsn)
        try:
            uploads = await conn.fetchval("SELECT count(*) FROM uploads WHERE id = $1", upload_id)
            parts = await conn.fetchval(
                "SELECT count(*) FROM upload_parts WHERE upload_id = $1", upload_id
            )
        finally:
            await conn.close()
        return int(uploads), int(parts)

    def objects(self) -> set[str]:
        if self.s3 is not None:
            client = self.s3.client()
            bucket = self.env["REELMILL_S3_BUCKET"]
            return {str(o.object_name) for o in client.list_objects(bucket, recursive=True)}
        root = Path(self.env["REELMILL_STORAGE_DIR"]) / "local"
        return {str(p.relative_to(root)) for p in entries_under(root, files_only=True)}

    def read(self, key: str) -> Iterator[bytes]:
        if self.s3 is not None:
            response = self.s3.client().get_object(self.env["REELMILL_S3_BUCKET"], key)
            try:
                yield from response.stream(8 * MIB)
            finally:
                response.close()
                response.release_conn()
        else:
            with (Path(self.env["REELMILL_STORAGE_DIR"]) / "local" / key).open("rb") as handle:
                while block := handle.read(8 * MIB):
                    yield block

    def sha256(self, key: str) -> str:
        digest = hashlib.sha256()
        for block in self.read(key):
            digest.update(block)
        return digest.hexdigest()

    async def expire(self, upload_id: str) -> None:
        """Moves an upload's expiry to now, as a day's wait would (the sweep removes it a
        purge delay later)."""
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute(
                "UPDATE uploads SET expire_time = now() WHERE id = $1",
                upload_id,
            )
        finally:
            await conn.close()

    def unfinished_writes(self) -> list[str]:
        """Multipart uploads (S3) or staged resumable files (local) not completed."""
        if self.s3 is not None:
            found = self.s3.client()._list_multipart_uploads(self.env["REELMILL_S3_BUCKET"])
            return [str(u.object_name) for u in found.uploads]
        staged = Path(self.env["REELMILL_STORAGE_DIR"]) / ".resumable"
        return [p.name for p in entries_under(staged)]

    def scratch(self) -> list[Path]:
        return entries_under(Path(self.suite.env["REELMILL_SCRATCH_DIR"]))


@contextlib.contextmanager
def rig_for(
    suite_env: SuiteEnv,
    s3_server: S3Server | None,
    backend: Backend,
    *,
    replicas: int = 1,
    **extra: str,
) -> Iterator[Rig]:
    # The services a job needs after ingest are unreachable: the jobs `reelmill submit`
    # creates are not what these tests are about.
    nowhere = {
        f"REELMILL_{name}_TARGET": f"127.0.0.1:{free_port()}"
        for name in ("TRANSCODE", "TRANSCRIBE", "METADATA", "VISION")
    }
    env = {
        **suite_env(backend),
        **nowhere,
        "REELMILL_S3_PART_SIZE_MIB": str(PART // MIB),
        **extra,
    }
    with run_suite(env, gateways=replicas, replicas=replicas, services=("ingest",)) as suite:
        yield Rig(suite, env, backend, s3_server if backend == "s3" else None)


@pytest.fixture(scope="module", params=["s3", "local"])
def rig(request: pytest.FixtureRequest, suite_env: SuiteEnv) -> Iterator[Rig]:
    """Gateway and ingest on SeaweedFS or the local store, shared by this module's tests."""
    backend: Backend = request.param
    s3 = request.getfixturevalue("s3_server") if backend == "s3" else None
    with rig_for(suite_env, s3, backend, REELMILL_OWNER_MAX_STORED_BYTES=str(QUOTA)) as made:
        yield made


#: The storage limit of each owner in ``rig`` (every test there has owners of its own).
QUOTA = 256 * MIB


async def eventually(check: object, what: str, timeout: float = 30.0) -> None:
    """Polls ``check`` (sync or async) until it returns something true."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = check()  # type: ignore[operator]
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"never: {what}")
        await asyncio.sleep(0.1)


def refusal(error: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    info = error_info(error)
    assert info is not None, error
    return error.code(), info.reason, dict(info.metadata)


async def write(
    client: ReelmillClient, upload_id: str, data: bytes, offset: int, chunk: int = MIB
) -> int:
    async def requests() -> AsyncIterator[pb.WriteUploadRequest]:
        for start in range(0, max(len(data), 1), chunk):
            yield pb.WriteUploadRequest(
                upload_id=upload_id, write_offset=offset + start, data=data[start : start + chunk]
            )

    response: pb.WriteUploadResponse = await client.stub.WriteUpload(
        requests(), metadata=client._metadata, timeout=60
    )
    return response.committed_size


async def start(
    client: ReelmillClient,
    data: bytes,
    *,
    sha256: str = "",
    filename: str = "forty.mp4",
    size: int | None = None,
) -> upload_pb2.Upload:
    """StartUpload for ``data`` (or for ``size`` bytes, when given)."""
    declared = len(data) if size is None else size
    response: pb.StartUploadResponse = await client.stub.StartUpload(
        pb.StartUploadRequest(
            header=pb.UploadHeader(filename=filename, size_bytes=declared, sha256=sha256)
        ),
        metadata=client._metadata,
        timeout=30,
    )
    return response.upload


async def finish(client: ReelmillClient, upload_id: str) -> pb.FinishUploadResponse:
    response: pb.FinishUploadResponse = await client.stub.FinishUpload(
        pb.FinishUploadRequest(upload_id=upload_id), metadata=client._metadata, timeout=120
    )
    return response


# -- the cases ---------------------------------------------------------------------------------


async def test_a_stopped_write_commits_whole_parts_and_the_video_is_upload_videos(
    rig: Rig, video_40: Path, data_40: bytes
) -> None:
    """A write that stops mid-part commits up to the last whole part (GetUpload says so);
    resumed from there and finished, the video is the one UploadVideo makes of the same file,
    its bytes identical; nothing unfinished remains."""
    data = data_40
    part = PART if rig.backend == "s3" else LOCAL_PART
    async with rig.client("stopping") as client:
        upload = await start(client, data, sha256=hashlib.sha256(data).hexdigest())
        assert upload.part_size == part and upload.state == upload_pb2.UPLOAD_STATE_ACTIVE
        cut = 2 * part + part // 2
        assert await write(client, upload.id, data[:cut], 0) == 2 * part
        assert (await client.get_upload(upload.id)).committed_size == 2 * part
        assert await write(client, upload.id, data[2 * part :], 2 * part) == len(data)
        video = (await finish(client, upload.id)).video
        again = await finish(client, upload.id)  # finishing twice: the same video
        assert again.video == video
        finished = await client.get_upload(upload.id)
        assert finished.state == upload_pb2.UPLOAD_STATE_FINISHED
        assert finished.video_id == video.id
        one_shot = await client.upload_file(video_40, resumable=False)
        assert await client.get_video(video.id) == video
    assert video.object.key == f"videos/{video.id}/source"
    for field in ("filename", "content_type", "size_bytes", "sha256", "media_info"):
        assert getattr(video, field) == getattr(one_shot, field), field
    assert video.sha256 == hashlib.sha256(data).hexdigest()
    assert rig.sha256(video.object.key) == video.sha256
    assert rig.unfinished_writes() == []
    assert rig.scratch() == []
    assert await rig.rows(upload.id) == (1, 0)  # the finished upload, until it expires


async def test_wrong_offsets_and_oversize_writes_are_refused_naming_the_committed_size(
    rig: Rig, video_40: Path, data_40: bytes
) -> None:
    data = data_40
    part = PART if rig.backend == "s3" else LOCAL_PART
    async with rig.client("offsets") as client:
        upload = await start(client, data)
        assert await write(client, upload.id, data[: part + 10], 0) == part
        for offset in (0, part - 1, part + 10, len(data)):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await write(client, upload.id, data[offset : offset + 1000], offset)
            code, reason, metadata = refusal(refused.value)
            assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "WRITE_OFFSET_MISMATCH")
            assert metadata["committed_size"] == str(part)
            assert f"committed size {part}" in (refused.value.details() or "")

        # A gap inside a stream: the parts before it are committed, the answer says so.
        async def gap() -> AsyncIterator[pb.WriteUploadRequest]:
            for offset in range(part, 2 * part, MIB):
                yield pb.WriteUploadRequest(
                    upload_id=upload.id, write_offset=offset, data=data[offset : offset + MIB]
                )
            yield pb.WriteUploadRequest(upload_id=upload.id, write_offset=3 * part, data=b"x")

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.stub.WriteUpload(gap(), metadata=client._metadata, timeout=60)
        code, reason, metadata = refusal(refused.value)
        assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "WRITE_OFFSET_MISMATCH")
        assert metadata["committed_size"] == str(2 * part)

        # Past the declared size: OUT_OF_RANGE, and the bytes before it still count.
        tail = data[2 * part :] + b"one byte too many"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await write(client, upload.id, tail, 2 * part)
        code, reason, metadata = refusal(refused.value)
        assert (code, reason) == (grpc.StatusCode.OUT_OF_RANGE, "WRITE_PAST_END")
        assert metadata["size_bytes"] == str(len(data))
        committed = int(metadata["committed_size"])
        assert 2 * part <= committed < len(data) and committed % part == 0

        # Finishing early names the committed size too.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await finish(client, upload.id)
        code, reason, metadata = refusal(refused.value)
        assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "UPLOAD_INCOMPLETE")
        assert metadata["committed_size"] == str(committed)

        video = await client.resume_upload(video_40, upload.id)
    assert rig.sha256(video.object.key) == hashlib.sha256(data).hexdigest()
    assert rig.unfinished_writes() == []


async def test_a_sha256_mismatch_at_finish_fails_precisely_and_leaves_nothing(
    rig: Rig, data_40: bytes
) -> None:
    data = data_40
    objects = rig.objects()
    async with rig.client("mismatch") as client:
        upload = await start(client, data, sha256=hashlib.sha256(b"other").hexdigest())
        assert await write(client, upload.id, data, 0) == len(data)
        assert rig.unfinished_writes()  # the parts, until the finish
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await finish(client, upload.id)
        code, reason, _ = refusal(refused.value)
        assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "SHA256_MISMATCH")
        assert hashlib.sha256(data).hexdigest() in (refused.value.details() or "")
        assert rig.objects() == objects
        assert rig.unfinished_writes() == []
        assert await rig.rows(upload.id) == (0, 0)
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await client.get_upload(upload.id)
        assert refusal(gone.value)[:2] == (grpc.StatusCode.NOT_FOUND, "UPLOAD_NOT_FOUND")
    assert rig.scratch() == []


async def test_an_abandoned_upload_expires_and_leaves_nothing(rig: Rig, data_40: bytes) -> None:
    """An upload lives REELMILL_UPLOAD_EXPIRY_SECONDS (a day) from its start; once that has
    passed (the row's expiry moved back: no test waits a day), writes are refused, and a
    gateway removes its rows and purges its parts (no multipart upload, no staged file)."""
    objects = rig.objects()
    async with rig.client("abandoning") as client:
        upload = await start(client, data_40)
        lifetime = upload.expire_time.ToDatetime() - upload.create_time.ToDatetime()
        assert lifetime.total_seconds() == pytest.approx(86400, abs=1)
        assert await write(client, upload.id, data_40[: 20 * MIB], 0) > 0
        assert rig.unfinished_writes()
        await rig.expire(upload.id)
        with pytest.raises(grpc.aio.AioRpcError) as expired:
            await write(client, upload.id, data_40[:MIB], 0)
        assert refusal(expired.value)[:2] == (grpc.StatusCode.NOT_FOUND, "UPLOAD_EXPIRED")

        async def no_rows() -> bool:
            return await rig.rows(upload.id) == (0, 0)

        await eventually(no_rows, "the expired upload's rows removed")
        await eventually(lambda: rig.unfinished_writes() == [], "its bytes removed")
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await client.get_upload(upload.id)
        assert refusal(gone.value)[:2] == (grpc.StatusCode.NOT_FOUND, "UPLOAD_NOT_FOUND")
    assert rig.objects() == objects
    assert rig.scratch() == []


@pytest.fixture
def replicated_s3_rig(suite_env: SuiteEnv, s3_server: S3Server) -> Iterator[Rig]:
    """Two gateways and two ingests: a killed one restarts while the other carries on."""
    with rig_for(suite_env, s3_server, "s3", replicas=2) as made:
        yield made


#: Interruptions of the 200 MiB upload, and the seed that places and picks them.
INTERRUPTIONS = 20
SEED = 13


async def test_twenty_interruptions_of_a_200_mib_upload_resume_to_identical_bytes(
    replicated_s3_rig: Rig, video_200: Path
) -> None:
    """Seeded points of the 200 MiB upload, each a client cancel, a SIGKILLed gateway or a
    SIGKILLed ingest (restarted on its port while its peer serves): the client resumes by
    itself from what the server says is committed, through whichever gateway answers (after a
    cancel, the test resumes the same upload by id), and the stored object is byte-identical
    to the file. Nothing unfinished remains."""
    rig = replicated_s3_rig
    suite = rig.suite
    size = (await asyncio.to_thread(video_200.stat)).st_size
    expected = await asyncio.to_thread(sha256_of, video_200)
    rng = random.Random(SEED)
    kinds = ["client"] * (INTERRUPTIONS // 2) + ["gateway", "ingest"] * (INTERRUPTIONS // 4)
    rng.shuffle(kinds)
    pending = sorted(zip((rng.randrange(1, size) for _ in kinds), kinds, strict=True))
    done: list[tuple[str, int]] = []
    restarting: dict[str, asyncio.Future[object]] = {}
    attempt: list[asyncio.Task[object]] = []
    resumed: list[int] = []

    async def on_sent(offset: int, start: int) -> None:
        if not pending or offset < pending[0][0]:
            return
        _, kind = pending.pop(0)
        done.append((kind, offset))
        if kind == "client":
            attempt[-1].cancel()
            return
        # One replica of a kind down at a time: the upload waits for the last one's restart.
        if (last := restarting.get(kind)) is not None:
            await last
        process = suite.processes[kind][rng.randrange(2)]
        suite.kill(process)
        restarting[kind] = asyncio.ensure_future(asyncio.to_thread(suite.restart, process))

    gateways = ",".join(p.address for p in suite.processes["gateway"])
    async with ReelmillClient(f"ipv4:{gateways}", token=token("alice")) as client:
        upload = await client.start_upload(video_200)
        while True:
            attempt.append(
                asyncio.create_task(
                    client.resume_upload(
                        video_200,
                        upload.id,
                        on_sent=on_sent,
                        on_resume=lambda r: resumed.append(r.committed_size),
                    )
                )
            )
            try:
                video = await attempt[-1]
                break
            except asyncio.CancelledError:
                if not attempt[-1].cancelled():
                    raise  # this test itself was cancelled
        await asyncio.gather(*restarting.values())
    print(f"\ninterruptions: {done}\nresumed at: {resumed}")
    assert sorted(kind for kind, _ in done) == sorted(kinds), (done, pending)
    assert video.size_bytes == size and video.sha256 == expected
    assert await asyncio.to_thread(rig.sha256, video.object.key) == expected
    assert rig.unfinished_writes() == []
    assert rig.objects() == {video.object.key}
    assert await rig.rows(upload.id) == (1, 0)
    assert rig.scratch() == []


@pytest.mark.parametrize("rig", ["s3"], indirect=True)
async def test_reelmill_submit_survives_a_killed_gateway_and_a_killed_ingest_mid_upload(
    rig: Rig, video_200: Path, tmp_path: Path
) -> None:
    """`reelmill submit FILE` as a user runs it: the gateway is SIGKILLed once bytes are
    committed and restarted, then ingest likewise; the command resumes by itself each time,
    says so, and ends with the video and its job; the stored bytes are the file's."""
    suite = rig.suite
    owner = f"carol-{tmp_path.name}"

    async def committed() -> int:
        conn = await asyncpg.connect(rig.dsn)
        try:
            query = "SELECT coalesce(max(committed_size), 0) FROM uploads WHERE owner = $1"
            return int(await conn.fetchval(query, owner))
        finally:
            await conn.close()

    env = {
        **os.environ,
        "REELMILL_GATEWAY": suite.gateway,
        "REELMILL_TOKEN": token(owner),
        "REELMILL_HOME": str(tmp_path / "home"),
        "COLUMNS": "200",
    }
    cli = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "reelmill.cli.main",
        "submit",
        str(video_200),
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output = asyncio.ensure_future(cli.communicate())
    try:
        for name in ("gateway", "ingest"):
            before = await committed()

            async def moved(before: int = before) -> bool:
                return await committed() > before

            await eventually(moved, f"bytes committed before killing {name}", timeout=120)
            process = suite.processes[name][0]
            suite.kill(process)
            await asyncio.to_thread(suite.restart, process)
        async with asyncio.timeout(240):
            stdout, _ = await output
    finally:
        if cli.returncode is None:
            cli.kill()
    text = stdout.decode(errors="replace")
    assert cli.returncode == 0, text
    assert text.count("resuming at") >= 2, text
    video_id = re.search(r"^video ([0-9a-f-]{36})$", text, re.M)
    assert video_id is not None, text
    assert re.search(r"^job [0-9a-f-]{36} ", text, re.M), text
    key = f"videos/{video_id[1]}/source"
    expected = await asyncio.to_thread(sha256_of, video_200)
    assert await asyncio.to_thread(rig.sha256, key) == expected
    assert rig.unfinished_writes() == []


@pytest.mark.parametrize("rig", ["local"], indirect=True)
async def test_an_unfinished_upload_reserves_its_size_against_the_storage_limit(
    rig: Rig, video_40: Path, data_40: bytes
) -> None:
    """StartUpload counts the owner's videos and unfinished uploads (their declared sizes):
    beside a 200 MiB upload that has not sent a byte, neither a 100 MiB resumable upload nor a
    100 MiB UploadVideo fits the 256 MiB limit, another owner's does; a finished upload still
    counts, as its video."""
    big, small = 200 * MIB, 100 * MIB
    async with rig.client("quota-a") as client, rig.client("quota-b") as other:
        reserved = await start(client, bytes(0), size=big)

        async def one_shot(size: int) -> None:
            async def header() -> AsyncIterator[pb.UploadVideoRequest]:
                yield pb.UploadVideoRequest(
                    header=pb.UploadHeader(filename="x.mp4", size_bytes=size)
                )

            await client.stub.UploadVideo(header(), metadata=client._metadata, timeout=30)

        for attempt in (start(client, bytes(0), size=small), one_shot(small)):
            with pytest.raises(grpc.aio.AioRpcError) as full:
                await attempt
            code, reason, metadata = refusal(full.value)
            assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "STORAGE_QUOTA_EXCEEDED")
            assert metadata["used_bytes"] == str(big)
        assert (await start(other, bytes(0), size=small)).size_bytes == small
        video = await client.upload_file(video_40)
        assert video.size_bytes == len(data_40)
        left = QUOTA - big - len(data_40)
        assert (await start(client, bytes(0), size=left)).size_bytes == left
        with pytest.raises(grpc.aio.AioRpcError) as full:
            await start(client, bytes(0), size=1)
        assert refusal(full.value)[1] == "STORAGE_QUOTA_EXCEEDED"
        assert (await client.get_upload(reserved.id)).committed_size == 0
