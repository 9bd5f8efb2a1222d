"""The clips stage end to end: every process a real subprocess, real Postgres, a real S3 server
(SeaweedFS), real ffmpeg, the real speech model and embeddings. The generated five-topic talk
(``tests/recordings/talk``) under a small synthetic picture, submitted as a clips-only job
(transcode disabled): five clips, one per chapter the metadata found, cut from the source with
their posters and captions, and no ladder; submitted again, every stage is reused. A job from
before the stage (``TranscodeSpec.clips``) still gets its clip, now from the clips stage."""

from __future__ import annotations

import asyncio
import html
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import av
import pytest

from reelmill.client import ReelmillClient
from reelmill.v1 import job_pb2, job_service_pb2, media_pb2, pipeline_pb2
from runtime.durations import duration_message
from runtime.ffmpeg import ffmpeg_path
from tests.conftest import SuiteEnv
from tests.media import make_clip
from tests.servers import S3Server, entries_under
from tests.suite import Suite, run_suite, token

pytestmark = pytest.mark.e2e

TALK = Path(__file__).parent / "recordings" / "talk" / "talk.opus"
STATE = job_pb2.StageState
FPS = 10
#: A keyframe every 5 s of the fixture's picture.
GOP_SECONDS = 5.0
CLIPS_ONLY = pipeline_pb2.PipelineSpec(
    transcode=pipeline_pb2.TranscodeSpec(disabled=True),
    scenes=pipeline_pb2.ScenesSpec(disabled=True),
    clips=pipeline_pb2.ClipsSpec(by_chapters=True),
)


@pytest.fixture(scope="module")
def suite(suite_env: SuiteEnv, s3_server: S3Server) -> Iterator[Suite]:
    with run_suite(suite_env("s3")) as running:
        running.s3 = s3_server  # type: ignore[attr-defined]
        yield running


@pytest.fixture
async def client(suite: Suite) -> AsyncIterator[ReelmillClient]:
    async with ReelmillClient(suite.gateway, token=token("clips-e2e")) as c:
        yield c


@pytest.fixture(scope="module")
def talk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The talk's speech under a 320x180 10 fps test pattern, H.264/AAC in MP4."""
    path = tmp_path_factory.mktemp("clips-e2e") / "talk.mp4"
    subprocess.run(
        [
            ffmpeg_path(),
            *("-hide_banner", "-loglevel", "error", "-y"),
            *("-f", "lavfi", "-i", f"testsrc=size=320x180:rate={FPS}"),
            *("-i", str(TALK), "-shortest", "-map", "0:v:0", "-map", "1:a:0"),
            *("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"),
            *("-g", str(int(GOP_SECONDS * FPS)), "-c:a", "aac", "-b:a", "64k"),
            *("-movflags", "+faststart", str(path)),
        ],
        check=True,
    )
    return path


async def finish(client: ReelmillClient, job_id: str, timeout: float = 600) -> job_pb2.Job:
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


def vtt_cues(text: str) -> list[tuple[float, float, str]]:
    def seconds(stamp: str) -> float:
        hours, minutes, rest = stamp.strip().split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(rest)

    lines = text.splitlines()
    assert lines[0] == "WEBVTT"
    cues = []
    for index, line in enumerate(lines):
        if "-->" in line:
            start, end = line.split("-->")
            cues.append((seconds(start), seconds(end), html.unescape(lines[index + 1])))
    return cues


async def test_a_clips_only_job_cuts_one_clip_per_chapter_and_no_ladder(
    suite: Suite, client: ReelmillClient, talk: Path, tmp_path: Path
) -> None:
    video = await client.upload_file(talk)
    job = await client.create_job(video.id, spec=CLIPS_ONLY)
    done = await finish(client, job.id)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done.error
    assert states(done) == {
        "probe": STATE.STAGE_STATE_SUCCEEDED,
        "scenes": STATE.STAGE_STATE_SKIPPED,
        "ocr": STATE.STAGE_STATE_SKIPPED,
        "transcode": STATE.STAGE_STATE_SKIPPED,  # clips-only: no ladder
        "stills": STATE.STAGE_STATE_SKIPPED,
        "audio": STATE.STAGE_STATE_SUCCEEDED,
        "transcribe": STATE.STAGE_STATE_SUCCEEDED,
        "metadata": STATE.STAGE_STATE_SUCCEEDED,
        "clips": STATE.STAGE_STATE_SUCCEEDED,
    }
    chapters = done.metadata.chapters
    assert len(chapters) == 5, [(c.start_seconds, c.title) for c in chapters]
    assert len(done.clips) == 5
    duration = done.media_info.duration.ToTimedelta().total_seconds()
    keys = stored(suite, f"jobs/{job.id}/")
    artifacts = {a.name: a for a in done.artifacts}
    segments = done.transcript.segments
    for number, (clip, chapter) in enumerate(zip(done.clips, chapters, strict=True), start=1):
        assert clip.index == number - 1
        assert clip.knowledge_id == (chapter.id or f"chapter-{number}")
        assert clip.title == chapter.title and clip.description == chapter.summary
        end = chapter.end_seconds or (
            chapters[number].start_seconds if number < len(chapters) else duration
        )
        assert (clip.start_seconds, clip.end_seconds) == pytest.approx(
            (chapter.start_seconds, end), abs=1e-6
        )
        # A keyframe cut: from the keyframe at or before the start, through the end.
        assert clip.start_seconds - GOP_SECONDS - 1e-6 <= clip.cut_start_seconds
        assert clip.cut_start_seconds <= clip.start_seconds
        assert clip.cut_end_seconds >= clip.end_seconds - 1 / FPS - 1e-6
        for name, kind in (
            (clip.video, media_pb2.ARTIFACT_KIND_CLIP),
            (clip.poster, media_pb2.ARTIFACT_KIND_CLIP_POSTER),
            (clip.captions, media_pb2.ARTIFACT_KIND_CLIP_VTT),
        ):
            artifact = artifacts[name]
            assert artifact.kind == kind and artifact.stage == "clips"
            assert artifact.object.key in keys
        # Its captions: the transcript's segments inside it, from its own start.
        path = tmp_path / f"clip-{number}.vtt"
        await client.download_artifact(job.id, clip.captions, path)
        cues = vtt_cues(path.read_text("utf-8"))
        inside = [
            s for s in segments
            if s.end_seconds > clip.cut_start_seconds and s.start_seconds < clip.cut_end_seconds
        ]  # fmt: skip
        assert [c[2] for c in cues] == [s.text.strip() for s in inside]
        first = inside[0]
        assert cues[0][0] == pytest.approx(
            max(first.start_seconds, clip.cut_start_seconds) - clip.cut_start_seconds, abs=0.002
        )
    # The first clip's file: the chapter's span of the source, playable.
    path = tmp_path / "chapter-1.mp4"
    await client.download_artifact(job.id, done.clips[0].video, path)
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.width == 320
        assert container.streams.audio[0].codec_context.name == "aac"
        span = (container.duration or 0) / av.time_base
    first_clip = done.clips[0]
    assert span == pytest.approx(first_clip.cut_end_seconds - first_clip.cut_start_seconds, abs=0.2)
    # No rendition, HLS, storyboard or thumbnail was made.
    assert not [
        n for n in artifacts if n.startswith(("renditions/", "hls/", "storyboard/", "thumbnails/"))
    ]
    assert not [k for k in keys if "/renditions/" in k or "/hls/" in k]
    # The clips are small: the BASIC view keeps them.
    basic = await client.get_job(job.id, view=job_service_pb2.JOB_VIEW_BASIC)
    assert list(basic.clips) == list(done.clips) and not basic.artifacts

    # The same file again: every stage is reused, the clips with it.
    again = await client.upload_file(talk)
    second = await finish(client, (await client.create_job(again.id, spec=CLIPS_ONLY)).id)
    assert second.state == job_pb2.JOB_STATE_SUCCEEDED, second.error
    reused = {s.name: s.reused_from_job_id for s in second.stages}
    assert reused["clips"] == job.id and reused["metadata"] == job.id
    assert list(second.clips) == list(done.clips)
    assert entries_under(Path(suite.env["REELMILL_SCRATCH_DIR"])) == []


async def test_transcode_clips_from_before_the_stage_are_cut_by_it(
    suite: Suite, client: ReelmillClient, tmp_path: Path
) -> None:
    """``TranscodeSpec.clips`` keep working and keep their names, but come from the clips
    stage: the transcode stage encodes the ladder only. No speech: no chapters to cut, so the
    chapter clips asked for alongside are none."""
    source = make_clip(tmp_path / "tone.mp4", seconds=4, width=320, height=240)
    spec = pipeline_pb2.PipelineSpec(
        transcode=pipeline_pb2.TranscodeSpec(
            ladder=[pipeline_pb2.LadderRung(height=120)],
            hls=False,
            storyboard=pipeline_pb2.StoryboardSpec(enabled=False),
            clips=[
                pipeline_pb2.ClipSpec(
                    start=duration_message(1), end=duration_message(3), frame_accurate=True
                )
            ],
        ),
        scenes=pipeline_pb2.ScenesSpec(disabled=True),
        clips=pipeline_pb2.ClipsSpec(by_chapters=True),
    )
    video = await client.upload_file(source)
    done = await finish(client, (await client.create_job(video.id, spec=spec)).id, 300)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done.error
    found = states(done)
    assert found["transcode"] == found["clips"] == STATE.STAGE_STATE_SUCCEEDED
    (clip,) = done.clips
    assert (clip.video, clip.poster) == ("clips/clip_000.mp4", "clips/clip_000.jpg")
    assert (clip.start_seconds, clip.end_seconds) == (1.0, 3.0)
    assert (clip.cut_start_seconds, clip.cut_end_seconds) == pytest.approx((1.0, 3.0), abs=0.05)
    by_name = {a.name: a for a in done.artifacts}
    assert by_name["clips/clip_000.mp4"].kind == media_pb2.ARTIFACT_KIND_CLIP
    assert by_name["clips/clip_000.mp4"].stage == "clips"
    assert by_name["renditions/120p.mp4"].stage == "transcode"
    assert [a.name for a in done.artifacts if a.stage == "transcode"] == ["renditions/120p.mp4"]


async def test_clips_by_chapters_of_a_silent_video_are_skipped_with_a_reason(
    suite: Suite, client: ReelmillClient, tmp_path: Path
) -> None:
    source = make_clip(tmp_path / "silent.mp4", seconds=2, width=320, height=240, audio=False)
    video = await client.upload_file(source)
    spec = pipeline_pb2.PipelineSpec(
        transcode=pipeline_pb2.TranscodeSpec(disabled=True),
        scenes=pipeline_pb2.ScenesSpec(disabled=True),
        clips=pipeline_pb2.ClipsSpec(by_chapters=True),
    )
    job = await client.create_job(video.id, spec=spec)
    events = []

    async def to_end() -> None:
        async for event in client.watch_job(job.id):
            events.append(event)

    await asyncio.wait_for(to_end(), 120)
    done = await client.get_job(job.id)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done.error
    assert states(done)["clips"] == STATE.STAGE_STATE_SKIPPED and not done.clips
    messages = [
        e.stage_updated.message
        for e in events
        if e.stage_updated.stage.name == "clips"
        and e.stage_updated.stage.state == STATE.STAGE_STATE_SKIPPED
    ]
    assert messages and "no chapters" in messages[-1], messages


async def test_seed_002_the_callers_transcript_and_knowledge_points_become_clips(
    client: ReelmillClient, talk: Path
) -> None:
    """One job as seed 002 sends it: its own timed transcript (the talk's script, one segment per
    topic here, with the caller's ids), knowledge points by segment ids, by time range and by
    a text query, and one clip per knowledge point, each with the point's id and title."""
    import json

    truth = json.loads((TALK.parent / "talk.json").read_text())
    segments = [
        media_pb2.Segment(
            id=100 + n,
            start_seconds=topic["start_seconds"],
            end_seconds=topic["end_seconds"] - 0.3,
            text=" ".join(topic["sentences"]),
        )
        for n, topic in enumerate(truth["topics"])
    ]
    bread, bees = truth["topics"][1], truth["topics"][2]
    spec = pipeline_pb2.PipelineSpec()
    spec.CopyFrom(CLIPS_ONLY)
    spec.transcribe.transcript.CopyFrom(media_pb2.Transcript(language="en", segments=segments))
    spec.metadata.knowledge_points.extend(
        [
            pipeline_pb2.KnowledgePoint(
                id="kp-volcano", title="How volcanoes erupt",
                segments=pipeline_pb2.SegmentSpan(first_segment_id=100, last_segment_id=100),
            ),
            pipeline_pb2.KnowledgePoint(
                id="kp-bread",
                range=pipeline_pb2.TimeRange(
                    start=duration_message(bread["start_seconds"]),
                    end=duration_message(bread["end_seconds"]),
                ),
            ),
            pipeline_pb2.KnowledgePoint(id="kp-bees", query="waggle dance of the honeybee"),
        ]
    )  # fmt: skip
    video = await client.upload_file(talk)
    done = await finish(client, (await client.create_job(video.id, spec=spec)).id)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done.error
    assert done.transcript.engine == "caller"
    assert [s.id for s in done.transcript.segments] == [100, 101, 102, 103, 104]
    chapters = done.metadata.chapters
    assert [c.id for c in chapters] == ["kp-volcano", "kp-bread", "kp-bees"]
    assert chapters[0].title == "How volcanoes erupt"
    assert chapters[0].start_seconds == 0.0 and list(chapters[0].segment_ids) == [100]
    assert (chapters[1].start_seconds, chapters[1].end_seconds) == pytest.approx(
        (bread["start_seconds"], bread["end_seconds"]), abs=1e-3
    )
    # The query found the segment that speaks of the dance: the bees' one.
    assert list(chapters[2].segment_ids) == [102]
    assert chapters[2].start_seconds == pytest.approx(bees["start_seconds"], abs=1e-3)
    assert [(c.knowledge_id, c.title) for c in done.clips] == [(c.id, c.title) for c in chapters]
