"""End to end through real processes: gateway + ingest as subprocesses, real Postgres, a real
S3 server (SeaweedFS) or the local-directory store, real media."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from reelmill.client import ReelmillClient
from reelmill.v1 import job_pb2, job_service_pb2, media_pb2, pipeline_pb2
from runtime.errors import error_info
from runtime.storage.local import HEALTH_PROBE_PREFIX
from tests.conftest import SuiteEnv
from tests.media import make_clip
from tests.servers import S3Server, entries_under, free_port
from tests.suite import PROBE_ONLY, Suite, run_suite, token

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", params=["local", "s3"])
def suite(
    request: pytest.FixtureRequest, suite_env: SuiteEnv, s3_server: S3Server
) -> Iterator[Suite]:
    env = suite_env(request.param)
    # Media served from this machine for URL imports: loopback is refused unless allowed.
    media_port = free_port()
    env.update(
        {
            "REELMILL_URL_IMPORT_ALLOW_HOSTS": "127.0.0.1",
            "REELMILL_URL_IMPORT_ALLOWED_PORTS": f"80,443,{media_port}",
        }
    )
    with run_suite(env, gateways=2) as running:
        running.media_port = media_port  # type: ignore[attr-defined]
        running.backend = request.param  # type: ignore[attr-defined]
        running.s3 = s3_server  # type: ignore[attr-defined]
        yield running


@pytest.fixture
async def client(suite: Suite) -> AsyncIterator[ReelmillClient]:
    async with ReelmillClient(suite.gateway, token=token()) as c:
        yield c


def stored_keys(suite: Suite) -> set[str]:
    if suite.backend == "s3":
        bucket = suite.env["REELMILL_S3_BUCKET"]
        s3: S3Server = suite.s3
        return {o.object_name for o in s3.client().list_objects(bucket, recursive=True)}
    # Objects live under <root>/<bucket>/<key>; metadata and unfinished writes beside them
    # (.meta, .incomplete) count as stored too; a health check's probe file (written and removed
    # at once by every process's readiness check) does not.
    root = Path(suite.env["REELMILL_STORAGE_DIR"])
    return {
        str(p.relative_to(root)).removeprefix("local/")
        for p in entries_under(root, files_only=True)
        if not (p.parent.name == ".incomplete" and p.name.startswith(HEALTH_PROBE_PREFIX))
    }


def scratch_left(suite: Suite) -> list[Path]:
    return entries_under(Path(suite.env["REELMILL_SCRATCH_DIR"]))


async def run_to_end(client: ReelmillClient, job_id: str) -> list[job_pb2.JobEvent]:
    return [e async for e in client.watch_job(job_id)]


async def test_upload_probe_and_job_through_real_processes(
    client: ReelmillClient, shared_media: Path
) -> None:
    video = await client.upload_file(shared_media / "video" / "testvideo.mp4")
    info = video.media_info
    assert info.video_streams[0].codec == "h264"
    assert (info.video_streams[0].width, info.video_streams[0].height) == (1280, 720)
    assert info.video_streams[0].fps == pytest.approx(29.97, abs=0.01)
    assert info.duration.ToTimedelta().total_seconds() == pytest.approx(24.02, abs=0.05)
    assert not info.audio_streams
    data = (shared_media / "video" / "testvideo.mp4").read_bytes()
    assert video.sha256 == hashlib.sha256(data).hexdigest()
    assert video.size_bytes == len(data)

    job = await client.create_job(video.id, labels={"case": "e2e"}, spec=PROBE_ONLY)
    events = await asyncio.wait_for(run_to_end(client, job.id), 60)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert events[-1].job.state == job_pb2.JOB_STATE_SUCCEEDED
    done = await client.get_job(job.id)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED
    probe = next(s for s in done.stages if s.name == "probe")
    assert probe.state == job_pb2.STAGE_STATE_SUCCEEDED and probe.attempts == 1
    assert done.media_info.video_streams[0].width == 1280
    skipped = {s.name for s in done.stages if s.state == job_pb2.STAGE_STATE_SKIPPED}
    # switched off in the spec, and the stages that wait on them
    assert skipped == {
        "scenes",
        "ocr",
        "transcode",
        "stills",
        "audio",
        "transcribe",
        "metadata",
        "clips",
    }, done.stages


async def test_full_pipeline_produces_downloadable_artifacts(
    suite: Suite, client: ReelmillClient, tmp_path: Path
) -> None:
    clip = make_clip(tmp_path / "full.mp4", seconds=3, width=320, height=240)
    video = await client.upload_file(clip)
    job = await client.create_job(video.id)
    events = await asyncio.wait_for(run_to_end(client, job.id), 240)
    done = events[-1].job
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done.error
    states = {s.name: s.state for s in done.stages}
    assert states["transcode"] == job_pb2.STAGE_STATE_SUCCEEDED
    assert states["audio"] == job_pb2.STAGE_STATE_SUCCEEDED
    progress = [
        e.stage_updated.stage.progress
        for e in events
        if e.stage_updated.stage.name == "transcode"
        and e.stage_updated.stage.state == job_pb2.STAGE_STATE_RUNNING
    ]
    assert progress == sorted(progress)  # progress only moves forward
    names = {a.name for a in done.artifacts}
    assert any(n.endswith(".mp4") and n.startswith("renditions/") for n in names), names
    assert any(n.endswith("master.m3u8") for n in names), names
    assert any(n.endswith(".wav") for n in names), names
    keys = stored_keys(suite)
    for artifact in done.artifacts:
        assert any(k.endswith(artifact.object.key) for k in keys), artifact.object.key
    wav = next(a for a in done.artifacts if a.kind == media_pb2.ARTIFACT_KIND_AUDIO_WAV)
    target = tmp_path / "audio.wav"
    downloaded = await client.download_artifact(job.id, wav.name, target)
    assert downloaded.sha256 == hashlib.sha256(target.read_bytes()).hexdigest()
    assert target.stat().st_size == wav.size_bytes
    url = await client.artifact_url(job.id, wav.name)
    assert url.startswith("http://" if suite.backend == "s3" else "file://")
    assert scratch_left(suite) == []


async def test_generated_clip_with_audio(client: ReelmillClient, tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "tone.mp4", seconds=2, width=320, height=240)
    video = await client.upload_file(clip)
    assert video.media_info.audio_streams[0].codec == "aac"
    assert video.media_info.audio_streams[0].sample_rate == 48000
    assert video.filename == "tone.mp4"


async def _upload_raw(
    client: ReelmillClient, messages: list[job_service_pb2.UploadVideoRequest]
) -> grpc.aio.AioRpcError:
    async def stream() -> AsyncIterator[job_service_pb2.UploadVideoRequest]:
        for message in messages:
            yield message

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.stub.UploadVideo(stream(), metadata=client._metadata, timeout=30)
    return caught.value


def _header(size: int, sha256: str = "", name: str = "x.mp4") -> job_service_pb2.UploadVideoRequest:
    return job_service_pb2.UploadVideoRequest(
        header=job_service_pb2.UploadHeader(filename=name, size_bytes=size, sha256=sha256)
    )


def _chunk(data: bytes) -> job_service_pb2.UploadVideoRequest:
    return job_service_pb2.UploadVideoRequest(chunk=data)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("zero_bytes", "EMPTY_UPLOAD"),
        ("not_a_video", "NOT_A_VIDEO"),
        ("more_than_declared", "SIZE_MISMATCH"),
        ("ended_early", "TRUNCATED_UPLOAD"),
        ("sha256_mismatch", "SHA256_MISMATCH"),
        ("no_header", "MISSING_HEADER"),
        ("two_headers", "DUPLICATE_HEADER"),
    ],
)
async def test_bad_uploads_are_refused_and_leave_nothing(
    suite: Suite, client: ReelmillClient, tmp_path: Path, case: str, reason: str
) -> None:
    clip = make_clip(tmp_path / "ok.mp4", seconds=1, width=160, height=120).read_bytes()
    messages = {
        "zero_bytes": [_header(0)],
        "not_a_video": [_header(4096), _chunk(os.urandom(4096))],
        "more_than_declared": [_header(10), _chunk(clip[:20])],
        "ended_early": [_header(len(clip)), _chunk(clip[: len(clip) // 2])],
        "sha256_mismatch": [_header(len(clip), "0" * 64), _chunk(clip)],
        "no_header": [_chunk(clip)],
        "two_headers": [_header(len(clip)), _header(len(clip)), _chunk(clip)],
    }[case]
    before = stored_keys(suite)
    error = await _upload_raw(client, messages)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    info = error_info(error)
    assert info is not None and info.reason == reason, (info, error.details())
    assert "Traceback" not in (error.details() or "")
    assert stored_keys(suite) == before
    assert scratch_left(suite) == []


async def test_unauthenticated_calls_are_refused(suite: Suite) -> None:
    for bad in ["", "not-a-jwt", token(ttl=-120), token(secret="y" * 48)]:
        async with ReelmillClient(suite.gateway, token=bad) as anonymous:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await anonymous.list_jobs()
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_watch_resumes_after_disconnect_exactly_once(
    client: ReelmillClient, tmp_path: Path
) -> None:
    video = await client.upload_file(make_clip(tmp_path / "a.mp4", seconds=1))
    job = await client.create_job(video.id, spec=PROBE_ONLY)
    seen: list[int] = []
    call = client.stub.WatchJob(
        job_service_pb2.WatchJobRequest(job_id=job.id), metadata=client._metadata
    )
    async for response in call:
        seen.append(response.event.sequence)
        if len(seen) == 2:
            break
    call.cancel()
    async for event in client.watch_job(job.id, after_sequence=seen[-1]):
        seen.append(event.sequence)
    assert seen == list(range(1, len(seen) + 1))
    final = await client.get_job(job.id)
    assert seen[-1] == final.last_event_sequence


async def test_job_run_by_one_gateway_is_watched_through_another(
    suite: Suite, tmp_path: Path
) -> None:
    first, second = suite.processes["gateway"]
    owner = token()
    video_path = make_clip(tmp_path / "b.mp4", seconds=1)
    async with (
        ReelmillClient(first.address, token=owner) as a,
        ReelmillClient(second.address, token=owner) as b,
    ):
        video = await a.upload_file(video_path)
        job = await a.create_job(video.id, spec=PROBE_ONLY)
        via_a, via_b = await asyncio.wait_for(
            asyncio.gather(run_to_end(a, job.id), run_to_end(b, job.id)), 60
        )
    assert [e.sequence for e in via_a] == [e.sequence for e in via_b]
    assert via_b[-1].job.state == job_pb2.JOB_STATE_SUCCEEDED
    runners = [
        g
        for g in (first, second)
        if f'"job_id": "{job.id}"' in g.output() and "job started" in g.output()
    ]
    assert len(runners) >= 1


async def test_request_id_makes_create_idempotent(client: ReelmillClient, tmp_path: Path) -> None:
    video = await client.upload_file(make_clip(tmp_path / "c.mp4", seconds=1))
    first = await client.create_job(video.id, request_id="same", spec=PROBE_ONLY)
    again = await client.create_job(video.id, request_id="same", spec=PROBE_ONLY)
    other = await client.create_job(video.id, request_id="other", spec=PROBE_ONLY)
    assert again.id == first.id and other.id != first.id


async def test_list_jobs_paginates(client: ReelmillClient, tmp_path: Path) -> None:
    video = await client.upload_file(make_clip(tmp_path / "d.mp4", seconds=1))
    ids = [(await client.create_job(video.id, spec=PROBE_ONLY)).id for _ in range(5)]
    seen: list[str] = []
    token_ = ""
    while True:
        jobs, token_ = await client.list_jobs(page_size=2, page_token=token_)
        seen += [j.id for j in jobs]
        if not token_:
            break
    assert seen == list(reversed(ids))


async def test_cancel_running_job(suite: Suite, client: ReelmillClient, tmp_path: Path) -> None:
    video = await client.upload_file(make_clip(tmp_path / "e.mp4", seconds=1))
    ingest = suite.processes["ingest"][0].proc
    ingest.send_signal(signal.SIGSTOP)  # the probe stage now hangs mid-call
    try:
        job = await client.create_job(video.id, spec=PROBE_ONLY)
        for _ in range(100):
            current = await client.get_job(job.id)
            if current.stages[0].state == job_pb2.STAGE_STATE_RUNNING:
                break
            await asyncio.sleep(0.1)
        assert current.stages[0].state == job_pb2.STAGE_STATE_RUNNING
        cancelled = await client.cancel_job(job.id)
        assert cancelled.state == job_pb2.JOB_STATE_CANCELLED
    finally:
        ingest.send_signal(signal.SIGCONT)
    events = await asyncio.wait_for(run_to_end(client, job.id), 30)
    assert events[-1].job_state_changed.state == job_pb2.JOB_STATE_CANCELLED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.cancel_job(job.id)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await asyncio.sleep(1.0)  # the runner must not overwrite the cancel
    assert (await client.get_job(job.id)).state == job_pb2.JOB_STATE_CANCELLED


async def test_owners_are_isolated(suite: Suite, client: ReelmillClient, tmp_path: Path) -> None:
    video = await client.upload_file(make_clip(tmp_path / "f.mp4", seconds=1))
    job = await client.create_job(video.id, spec=PROBE_ONLY)
    async with ReelmillClient(suite.gateway, token=token()) as stranger:
        for call in (
            stranger.get_job(job.id),
            stranger.cancel_job(job.id),
            stranger.get_video(video.id),
            stranger.create_job(video.id, spec=PROBE_ONLY),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        jobs, _ = await stranger.list_jobs()
        assert jobs == []


def ffmpeg_children(suite: Suite) -> list[tuple[int, list[str]]]:
    """The transcode process's ffmpeg children, with their arguments, in one look (a child
    that exits meanwhile, a zombie included, is left out)."""
    import psutil

    found = []
    for child in psutil.Process(suite.processes["transcode"][0].proc.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "ffmpeg" in child.name().lower():
                found.append((child.pid, child.cmdline()))
    return found


def for_a_job(suite: Suite, args: list[str]) -> bool:
    """Whether an ffmpeg with ``args`` works for a job: every step writes into the scratch
    directory. The health check's ``ffmpeg -version`` (every 0.5 s here, a child for a few
    milliseconds each time) does not; counting it once failed the cancel test below."""
    scratch = suite.env["REELMILL_SCRATCH_DIR"]
    return any(scratch in arg for arg in args)


def job_ffmpeg(suite: Suite) -> list[int]:
    return [pid for pid, args in ffmpeg_children(suite) if for_a_job(suite, args)]


async def test_health_check_ffmpeg_is_no_job_ffmpeg(suite: Suite) -> None:
    checks: list[tuple[int, list[str]]] = []
    for _ in range(3000):  # a check starts every 0.5 s and lives for milliseconds
        checks = [child for child in ffmpeg_children(suite) if "-version" in child[1]]
        if checks:
            break
        await asyncio.sleep(0.005)
    assert checks, "no health check seen"
    assert not any(for_a_job(suite, args) for _, args in checks)


async def test_cancel_mid_transcode_stops_ffmpeg_and_cleans_up(
    suite: Suite, client: ReelmillClient, tmp_path: Path
) -> None:
    clip = make_clip(tmp_path / "long.mp4", seconds=40, width=640, height=480)
    video = await client.upload_file(clip)
    job = await client.create_job(video.id)
    async for event in client.watch_job(job.id):
        stage = event.stage_updated.stage
        if (
            stage.name == "transcode"
            and stage.state == job_pb2.STAGE_STATE_RUNNING
            and (stage.progress > 0.05)
        ):
            break
    assert job_ffmpeg(suite), "ffmpeg should be running mid-transcode"
    cancelled = await client.cancel_job(job.id)
    assert cancelled.state == job_pb2.JOB_STATE_CANCELLED
    for _ in range(100):
        running, scratch = job_ffmpeg(suite), scratch_left(suite)
        if not running and not scratch:
            break
        await asyncio.sleep(0.1)
    assert running == []
    assert scratch == []
    final = await client.get_job(job.id)
    assert final.state == job_pb2.JOB_STATE_CANCELLED
    assert {s.name: s.state for s in final.stages}["transcode"] == job_pb2.STAGE_STATE_CANCELLED
    # What the cancelled transcode had written is purged; the probe's records stay consistent.
    recorded = {a.object.key for a in final.artifacts}
    await until_no_keys(suite, f"jobs/{job.id}/", keep=recorded)


async def until_no_keys(suite: Suite, prefix: str, keep: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    left: set[str] = set()
    for _ in range(100):
        left = {
            k
            for k in stored_keys(suite)
            if prefix in k and not any(k.endswith(kept) for kept in keep)
        }
        if not left:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"objects left under {prefix}: {sorted(left)[:5]}")


async def test_delete_video_mid_job_cancels_and_purges_everything(
    suite: Suite, client: ReelmillClient, tmp_path: Path
) -> None:
    clip = make_clip(tmp_path / "del.mp4", seconds=30, width=640, height=480)
    video = await client.upload_file(clip)
    audio_only = pipeline_pb2.PipelineSpec(
        transcode=pipeline_pb2.TranscodeSpec(disabled=True),
        transcribe=pipeline_pb2.TranscribeSpec(disabled=True),
        metadata=pipeline_pb2.MetadataSpec(disabled=True),
        scenes=pipeline_pb2.ScenesSpec(disabled=True),
        ocr=pipeline_pb2.OcrSpec(disabled=True),
    )
    done = await client.create_job(video.id, spec=audio_only)
    await asyncio.wait_for(run_to_end(client, done.id), 60)
    produced = (await client.get_job(done.id)).artifacts
    assert produced and all(a.object.key.startswith(f"jobs/{done.id}/") for a in produced)
    running = await client.create_job(
        video.id, spec=pipeline_pb2.PipelineSpec(audio=pipeline_pb2.AudioSpec(disabled=True))
    )
    watcher = client.watch_job(running.id)
    async for event in watcher:
        stage = event.stage_updated.stage
        if stage.name == "transcode" and stage.progress > 0.05:
            break
    assert job_ffmpeg(suite)
    assert any(f"videos/{video.id}/" in k for k in stored_keys(suite))

    deleted = await client.delete_video(video.id)
    assert deleted.cancelled_jobs == 1
    assert deleted.deleted_artifacts == len(produced)  # the running job recorded none yet

    async def rest() -> None:
        async for _ in watcher:
            pass

    # The open watch stream ends: the job is gone.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await asyncio.wait_for(rest(), 30)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    for call in (client.get_video(video.id), client.get_job(done.id), client.get_job(running.id)):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    for _ in range(100):
        if not (left := job_ffmpeg(suite)):
            break
        await asyncio.sleep(0.1)
    assert left == []
    for prefix in (f"videos/{video.id}/", f"jobs/{done.id}/", f"jobs/{running.id}/"):
        await until_no_keys(suite, prefix)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.delete_video(video.id)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_job_timeout_is_bounded_and_enforced(client: ReelmillClient, tmp_path: Path) -> None:
    from datetime import timedelta

    video = await client.upload_file(make_clip(tmp_path / "t.mp4", seconds=1))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.create_job(video.id, timeout=timedelta(days=30))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).reason == "BAD_TIMEOUT"
    job = await client.create_job(video.id, timeout=timedelta(milliseconds=1))
    assert job.deadline.ToDatetime() > job.create_time.ToDatetime()
    events = await asyncio.wait_for(run_to_end(client, job.id), 30)
    final = events[-1].job
    assert final.state == job_pb2.JOB_STATE_FAILED
    assert (final.error.code, final.error.reason) == ("DEADLINE_EXCEEDED", "JOB_DEADLINE_EXCEEDED")


def test_cli_lists_shows_and_cancels_jobs(suite: Suite, tmp_path: Path) -> None:
    import subprocess
    import sys

    owner = token()
    env = {
        **os.environ,
        "REELMILL_GATEWAY": suite.gateway,
        "REELMILL_TOKEN": owner,
        "REELMILL_HOME": str(tmp_path),
        "COLUMNS": "250",
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "reelmill.cli.main", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    clip = make_clip(tmp_path / "cli.mp4", seconds=1)
    submitted = cli("submit", str(clip), "--label", "via=cli", "--request-id", "cli-1")
    assert submitted.returncode == 0, submitted.stderr
    job_id = next(
        line.split()[1] for line in submitted.stdout.splitlines() if line.startswith("job ")
    )
    listed = cli("jobs", "ls")
    assert listed.returncode == 0 and job_id in listed.stdout
    shown = cli("jobs", "get", job_id, "--json")
    assert shown.returncode == 0 and f'"id": "{job_id}"' in shown.stdout
    watched = cli("jobs", "watch", job_id)
    assert watched.returncode == 0, watched.stdout + watched.stderr
    assert "SUCCEEDED" in watched.stdout
    again = cli("jobs", "cancel", job_id)
    assert again.returncode == 1 and "FAILED_PRECONDITION" in again.stdout
    missing = cli("jobs", "get", "00000000-0000-0000-0000-000000000000")
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stdout
    video_id = json.loads(shown.stdout)["video_id"]
    removed = cli("videos", "rm", video_id)
    assert removed.returncode == 0 and "deleted" in removed.stdout, removed.stdout
    gone = cli("videos", "get", video_id)
    assert gone.returncode == 1 and "NOT_FOUND" in gone.stdout


async def test_cli_creates_an_api_key_that_works_until_revoked(
    suite: Suite, tmp_path: Path
) -> None:
    """`reelmill keys create` with a JWT, then the key as the CLI's only credential: it acts
    as the same owner, cannot mint keys, and is refused once revoked."""
    base = {k: v for k, v in os.environ.items() if k not in ("REELMILL_TOKEN", "REELMILL_API_KEY")}
    base.update(
        {"REELMILL_GATEWAY": suite.gateway, "REELMILL_HOME": str(tmp_path), "COLUMNS": "250"}
    )
    owner_token = token()
    with_jwt = {**base, "REELMILL_TOKEN": owner_token}

    async def cli(env: dict[str, str], *args: str) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "reelmill.cli.main",
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(process.communicate(), 120)
        return process.returncode or 0, out.decode()

    code, out = await cli(with_jwt, "keys", "create", "--name", "ci")
    assert code == 0, out
    secret = out.strip().splitlines()[-1]
    key_id = secret[:19]
    assert secret.startswith("rk_") and secret[19] == "_", out
    code, out = await cli(with_jwt, "keys", "ls")
    assert code == 0 and key_id in out and "ci" in out, out

    async with ReelmillClient(suite.gateway, token=owner_token) as client:
        video = await client.upload_file(make_clip(tmp_path / "k.mp4", seconds=1))
        job = await client.create_job(video.id, spec=PROBE_ONLY)
    with_key = {**base, "REELMILL_API_KEY": secret}
    code, out = await cli(with_key, "jobs", "ls")
    assert code == 0 and job.id in out, out  # the key's owner is the JWT's subject
    code, out = await cli(with_key, "keys", "create")
    assert code == 1 and "PERMISSION_DENIED" in out and "API_KEY_CANNOT_CREATE_KEYS" in out, out

    code, out = await cli(with_jwt, "keys", "revoke", key_id)
    assert code == 0 and "revoked" in out, out
    code, out = await cli(with_key, "jobs", "ls")
    assert code == 1 and "UNAUTHENTICATED" in out and "API_KEY_REVOKED" in out, out


async def test_speech_becomes_transcript_and_metadata(
    client: ReelmillClient, shared_media: Path, tmp_path: Path
) -> None:
    from tests.media import make_speech_clip

    clip = make_speech_clip(tmp_path / "jfk.mp4", shared_media / "speech" / "jfk.flac")
    video = await client.upload_file(clip)
    job = await client.create_job(video.id)
    events = await asyncio.wait_for(run_to_end(client, job.id), 300)
    done = await client.get_job(job.id)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done.error
    assert {s.name: s.state for s in done.stages} == {
        name: job_pb2.STAGE_STATE_SUCCEEDED
        for name in (
            "probe",
            "scenes",
            "ocr",
            "transcode",
            "stills",
            "audio",
            "transcribe",
            "metadata",
        )
    } | {"clips": job_pb2.STAGE_STATE_SKIPPED}  # none asked for
    text = " ".join(s.text for s in done.transcript.segments).lower()
    assert "ask not what your country can do for you" in text
    assert done.transcript.language == "en"
    assert done.metadata.title
    assert done.metadata.tags
    assert done.metadata.summary
    names = {a.name for a in done.artifacts}
    for expected in (
        "transcript/transcript.vtt",
        "transcript/transcript.srt",
        "transcript/transcript.json",
        "transcript/transcript.txt",
        "metadata/metadata.json",
    ):
        assert expected in names, names
    listed, _ = await client.list_jobs()  # BASIC: no artifacts, no transcript segments
    [basic] = [j for j in listed if j.id == job.id]
    assert basic.artifacts == [] and basic.transcript.segments == []
    assert basic.transcript.language == "en" and basic.metadata.title == done.metadata.title
    brief = await client.get_job(job.id, view=job_service_pb2.JOB_VIEW_BASIC)
    assert brief.artifacts == [] and brief.stages == done.stages
    vtt = tmp_path / "t.vtt"
    await client.download_artifact(job.id, "transcript/transcript.vtt", vtt)
    assert vtt.read_text().startswith("WEBVTT")
    # Both branches ran concurrently: the audio branch started before transcode finished.
    order = [
        (e.stage_updated.stage.name, e.stage_updated.stage.state)
        for e in events
        if e.HasField("stage_updated")
    ]
    audio_start = order.index(("audio", job_pb2.STAGE_STATE_RUNNING))
    transcode_end = order.index(("transcode", job_pb2.STAGE_STATE_SUCCEEDED))
    assert audio_start < transcode_end
    # The same speech again, reuse off: every stage runs, and the transcribe and metadata
    # services answer from their result caches, which the stages say.
    spec = pipeline_pb2.PipelineSpec(
        reuse=False, transcode=pipeline_pb2.TranscodeSpec(disabled=True)
    )
    again = await client.create_job(video.id, spec=spec)
    await asyncio.wait_for(run_to_end(client, again.id), 300)
    second = {s.name: s for s in (await client.get_job(again.id)).stages}
    assert second["transcribe"].cached and second["metadata"].cached
    assert not second["transcribe"].reused_from_job_id and not second["probe"].cached


async def test_video_without_audio_skips_the_speech_branch(
    client: ReelmillClient, tmp_path: Path
) -> None:
    clip = make_clip(tmp_path / "silent.mp4", seconds=2, audio=False)
    video = await client.upload_file(clip)
    job = await client.create_job(video.id)
    await asyncio.wait_for(run_to_end(client, job.id), 120)
    done = await client.get_job(job.id)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done.error
    states = {s.name: s.state for s in done.stages}
    assert states["transcode"] == job_pb2.STAGE_STATE_SUCCEEDED
    assert states["audio"] == states["transcribe"] == job_pb2.STAGE_STATE_SKIPPED
    # Without speech, the metadata comes from the text on screen when there is any (testsrc2
    # shows a timecode, which OCR may read at this size), and is skipped when there is none.
    expected = (
        job_pb2.STAGE_STATE_SUCCEEDED
        if done.on_screen_text.entries
        else job_pb2.STAGE_STATE_SKIPPED
    )
    assert states["metadata"] == expected


@contextlib.contextmanager
def serve_directory(directory: Path, port: int) -> Iterator[str]:
    """A plain HTTP server for ``directory`` on 127.0.0.1:``port``, in a thread."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def test_job_from_a_url_imports_then_runs_the_pipeline(
    suite: Suite, client: ReelmillClient, tmp_path: Path
) -> None:
    make_clip(tmp_path / "remote.mp4", seconds=2)
    with serve_directory(tmp_path, suite.media_port) as base:
        job = await client.create_job(url=f"{base}/remote.mp4", spec=PROBE_ONLY)
        assert [s.name for s in job.stages][:2] == ["import", "probe"]
        assert list(job.stages[1].depends_on) == ["import"]
        events = await asyncio.wait_for(run_to_end(client, job.id), 120)
    done = await client.get_job(job.id)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done.error
    assert done.source_url == f"{base}/remote.mp4"
    assert done.video_id
    video = await client.get_video(done.video_id)
    assert video.source_url == done.source_url and video.filename == "remote.mp4"
    assert video.sha256 == hashlib.sha256((tmp_path / "remote.mp4").read_bytes()).hexdigest()
    assert done.media_info.video_streams[0].width == 320
    assert any(e.stage_updated.stage.name == "import" for e in events)


async def test_job_from_a_refused_url_fails_with_the_reason(client: ReelmillClient) -> None:
    job = await client.create_job(url="http://169.254.169.254/latest/meta-data/", spec=PROBE_ONLY)
    await asyncio.wait_for(run_to_end(client, job.id), 60)
    done = await client.get_job(job.id)
    assert done.state == job_pb2.JOB_STATE_FAILED
    assert (done.error.code, done.error.reason) == ("INVALID_ARGUMENT", "URL_NOT_ALLOWED")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.create_job(url="file:///etc/passwd")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
