"""Shots, on-screen text and stills from shots end to end: every process a real subprocess
(the vision service among them), real Postgres, a real S3 server (SeaweedFS), real ffmpeg and
the real PP-OCR models. A silent captioned video gets its shots, its text (one entry per
caption), a poster and thumbnails from its shots' keyframes, and metadata read from the
screen; the stages switch off and skip as the spec and the source say; a cancel mid-OCR
leaves no work running and nothing behind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import cv2
import numpy as np
import psutil
import pytest
import webvtt

from reelmill.client import ReelmillClient
from reelmill.v1 import job_pb2, job_service_pb2, media_pb2, pipeline_pb2, vision_pb2
from runtime.durations import duration_message
from services.vision.text import normalise
from tests.conftest import SuiteEnv
from tests.media import make_clip
from tests.scrape import scrape, value
from tests.servers import S3Server, entries_under, free_port
from tests.suite import Suite, run_suite, token
from tests.vision_media import Caption, make_caption_clip

pytestmark = pytest.mark.e2e

CAPTIONS = (
    Caption("Welcome to the annual meeting", 0.5, 5.0, 60, 40),
    Caption("Quarterly revenue grew", 1.0, 9.5, 60, 440),
    Caption("Thank you for watching", 7.0, 11.5, 200, 240, 48),
)
#: A small ladder, no HLS or storyboard: the tests are about stills, not renditions.
SMALL = pipeline_pb2.TranscodeSpec(
    ladder=[pipeline_pb2.LadderRung(height=240)],
    hls=False,
    storyboard=pipeline_pb2.StoryboardSpec(enabled=False),
)
STATE = job_pb2.StageState


#: The vision process's metrics endpoint (its live worker threads).
VISION_METRICS = f"127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def suite(suite_env: SuiteEnv, s3_server: S3Server) -> Iterator[Suite]:
    def metrics(name: str) -> dict[str, str]:
        return {"REELMILL_METRICS_LISTEN": VISION_METRICS} if name == "vision" else {}

    with run_suite(suite_env("s3"), extra=metrics) as running:
        running.s3 = s3_server  # type: ignore[attr-defined]
        yield running


@pytest.fixture
async def client(suite: Suite) -> AsyncIterator[ReelmillClient]:
    async with ReelmillClient(suite.gateway, token=token()) as c:
        yield c


@pytest.fixture(scope="module")
def captioned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("e2e-captions") / "clip_0042.mp4"  # says nothing
    make_caption_clip(path, CAPTIONS)
    return path


async def finish(client: ReelmillClient, job_id: str, timeout: float = 240) -> job_pb2.Job:
    async def to_end() -> None:
        async for _ in client.watch_job(job_id):
            pass

    await asyncio.wait_for(to_end(), timeout)
    return await client.get_job(job_id)


def states(job: job_pb2.Job) -> dict[str, int]:
    return {s.name: s.state for s in job.stages}


def stored(suite: Suite, prefix: str) -> set[str]:
    s3: S3Server = suite.s3  # type: ignore[attr-defined]
    bucket = suite.env["REELMILL_S3_BUCKET"]
    return {o.object_name for o in s3.client().list_objects(bucket, prefix=prefix, recursive=True)}


async def test_a_silent_captioned_video_gets_shots_text_stills_and_metadata(
    suite: Suite, client: ReelmillClient, captioned: Path, tmp_path: Path
) -> None:
    video = await client.upload_file(captioned)
    job = await client.create_job(video.id, spec=pipeline_pb2.PipelineSpec(transcode=SMALL))
    done = await finish(client, job.id)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done.error
    assert states(done) == {
        "probe": STATE.STAGE_STATE_SUCCEEDED,
        "scenes": STATE.STAGE_STATE_SUCCEEDED,
        "ocr": STATE.STAGE_STATE_SUCCEEDED,
        "transcode": STATE.STAGE_STATE_SUCCEEDED,
        "stills": STATE.STAGE_STATE_SUCCEEDED,
        "audio": STATE.STAGE_STATE_SKIPPED,  # no audio track
        "transcribe": STATE.STAGE_STATE_SKIPPED,
        "metadata": STATE.STAGE_STATE_SUCCEEDED,
        "clips": STATE.STAGE_STATE_SKIPPED,  # none asked for
    }
    # Shots: two 6 s shots, cut at frame 150; their keyframes lie inside them.
    shots = done.scenes.shots
    assert [(s.start_frame, s.end_frame) for s in shots] == [(0, 149), (150, 299)]
    assert [t.kind for t in done.scenes.transitions] == [vision_pb2.TRANSITION_KIND_CUT]
    for shot in shots:
        assert shot.start_seconds <= shot.keyframe_seconds < shot.end_seconds
    # Text: one entry per caption, every word read.
    entries = done.on_screen_text.entries
    assert sorted(normalise(e.text) for e in entries) == sorted(normalise(c.text) for c in CAPTIONS)
    words = {normalise(w) for c in CAPTIONS for w in c.text.split()}
    # Metadata from the screen alone: no speech was there.
    metadata = done.metadata
    assert metadata.engine == "extractive"
    title_words = {normalise(w) for w in metadata.title.split()} - {""}
    assert title_words and title_words <= words, metadata.title
    assert metadata.tags and all(
        {normalise(w) for w in tag.split()} <= words for tag in metadata.tags
    ), metadata.tags
    assert any(normalise(c.text) in normalise(metadata.summary) for c in CAPTIONS)
    # Artifacts of both stages, and the stills from the shots' keyframes.
    by_name = {a.name: a for a in done.artifacts}
    assert by_name["vision/scenes.json"].kind == media_pb2.ARTIFACT_KIND_SCENES_JSON
    assert by_name["vision/ocr.json"].kind == media_pb2.ARTIFACT_KIND_OCR_JSON
    assert by_name["vision/ocr.vtt"].kind == media_pb2.ARTIFACT_KIND_OCR_VTT
    vtt = tmp_path / "ocr.vtt"
    await client.download_artifact(job.id, "vision/ocr.vtt", vtt)
    cues = list(webvtt.read(str(vtt)))
    assert sorted(normalise(c.text) for c in cues) == sorted(normalise(c.text) for c in CAPTIONS)
    keyframes = [s.keyframe_seconds for s in shots]
    poster = by_name["thumbnails/poster.jpg"]
    assert poster.stage == "stills"
    assert float(poster.attributes["time_seconds"]) in [
        pytest.approx(k, abs=0.01) for k in keyframes
    ]
    thumbs = sorted(
        float(a.attributes["time_seconds"])
        for a in done.artifacts
        if a.kind == media_pb2.ARTIFACT_KIND_THUMBNAIL
    )
    assert len(thumbs) == 5
    for key in keyframes:
        assert any(t == pytest.approx(key, abs=0.01) for t in thumbs)
    image = tmp_path / "poster.jpg"
    await client.download_artifact(job.id, "thumbnails/poster.jpg", image)
    pixels = cv2.imdecode(np.frombuffer(image.read_bytes(), np.uint8), cv2.IMREAD_GRAYSCALE)
    assert pixels is not None and pixels.mean() > 24 and pixels.std() > 8  # never black
    # The BASIC view leaves the shots and the entries out, as it does segments.
    basic = await client.get_job(job.id, view=job_service_pb2.JOB_VIEW_BASIC)
    assert basic.HasField("scenes") and not basic.scenes.shots and not basic.scenes.transitions
    assert not basic.on_screen_text.entries and basic.on_screen_text.frames_examined > 0


async def test_switched_off_and_audio_only(
    suite: Suite, client: ReelmillClient, captioned: Path, tmp_path: Path
) -> None:
    video = await client.upload_file(captioned)
    off = pipeline_pb2.PipelineSpec(
        transcode=SMALL,
        scenes=pipeline_pb2.ScenesSpec(disabled=True),
        metadata=pipeline_pb2.MetadataSpec(disabled=True),
    )
    job = await client.create_job(video.id, spec=off)
    done = await finish(client, job.id)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done.error
    found = states(done)
    assert found["scenes"] == found["ocr"] == STATE.STAGE_STATE_SKIPPED
    assert found["transcode"] == STATE.STAGE_STATE_SUCCEEDED
    assert not done.HasField("scenes") and not done.HasField("on_screen_text")
    assert not [a for a in done.artifacts if a.name.startswith("vision/")]
    poster = next(a for a in done.artifacts if a.name == "thumbnails/poster.jpg")
    assert float(poster.attributes["time_seconds"]) == pytest.approx(4.0, abs=0.01)  # by time

    sound = await client.upload_file(make_clip(tmp_path / "sound.m4a", seconds=2, video=False))
    job = await client.create_job(
        sound.id, spec=pipeline_pb2.PipelineSpec(transcribe=pipeline_pb2.TranscribeSpec())
    )
    done = await finish(client, job.id)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done.error
    by_name = {s.name: s for s in done.stages}
    assert by_name["scenes"].state == by_name["ocr"].state == STATE.STAGE_STATE_SKIPPED
    assert not [a for a in done.artifacts if a.name.startswith("vision/")]


def _vision(suite: Suite) -> psutil.Process:
    return psutil.Process(suite.processes["vision"][0].proc.pid)


async def test_cancel_mid_ocr_stops_the_work_and_leaves_nothing(
    suite: Suite, client: ReelmillClient, tmp_path: Path
) -> None:
    long = tmp_path / "long.mp4"
    make_caption_clip(
        long,
        [Caption(f"Slide number {i}", i * 3.0, i * 3.0 + 2.5, 80, 100 + 30 * i) for i in range(10)],
        shot_seconds=(10.0, 10.0, 10.0),
    )
    video = await client.upload_file(long)
    vision = _vision(suite)
    spec = pipeline_pb2.PipelineSpec(
        transcode=pipeline_pb2.TranscodeSpec(disabled=True),
        ocr=pipeline_pb2.OcrSpec(interval=duration_message(0.25)),
    )
    job = await client.create_job(video.id, spec=spec)
    async for event in client.watch_job(job.id):
        stage = event.stage_updated.stage
        if (
            stage.name == "ocr"
            and stage.state == STATE.STAGE_STATE_RUNNING
            and stage.progress > 0.02
        ):
            break
    cancelled = await client.cancel_job(job.id)
    assert cancelled.state == job_pb2.JOB_STATE_CANCELLED
    # The OCR worker thread ends (the process's own count of them; its thread count is no
    # measure, as the thread pools of asyncio and onnxruntime keep what they grew), and the
    # process goes idle.
    workers: float | None = None
    busy = 0.0
    for _ in range(100):
        await asyncio.sleep(0.2)
        before = vision.cpu_times()
        await asyncio.sleep(0.5)
        after = vision.cpu_times()
        busy = (after.user + after.system) - (before.user + before.system)
        samples = await asyncio.to_thread(scrape, VISION_METRICS)
        workers = value(samples, "reelmill_worker_threads", kind="vision-ocr")
        if busy < 0.1 and workers == 0:
            break
    assert workers == 0, f"{workers} OCR worker threads still alive after the cancel"
    assert busy < 0.1, f"the vision process kept working after the cancel ({busy:.2f} s CPU)"
    assert entries_under(Path(suite.env["REELMILL_SCRATCH_DIR"])) == []
    final = await client.get_job(job.id)
    assert states(final)["ocr"] == STATE.STAGE_STATE_CANCELLED
    for _ in range(100):
        if not stored(suite, f"jobs/{job.id}/vision/ocr"):
            break
        await asyncio.sleep(0.1)
    assert not stored(suite, f"jobs/{job.id}/vision/ocr")
