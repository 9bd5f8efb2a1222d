"""A clips-only job against the full-ladder job, in one run (issue 12).

Input: the pipeline benchmark's clip (``bench.pipeline.make_clip``): 1280x720 25 fps testsrc2
with real speech as its audio (``../shared/media/speech/multilingual.mp3``, 59.95 s; the first
10 s with ``--quick``), H.264/AAC in MP4.

One suite (ephemeral Postgres, every service and a gateway as subprocesses, local storage, as
``bench.pipeline`` starts it), the clip uploaded once, then two jobs one after the other, each
timed from ``CreateJob`` to the terminal event of ``WatchJob``:

- clips only: ``transcode.disabled``, ``clips.by_chapters``: probe, audio, transcribe, metadata,
  clips (one clip per chapter, cut from the source by stream copy, with posters and captions);
- full ladder: the default transcode (the 720p/480p/360p MP4 ladder, HLS, storyboard, poster and
  thumbnails) and the same ``clips.by_chapters``.

Both switch the scenes and OCR stages off (they are the same in both and would only dilute the
difference) and reuse off, and every process's result caches are off, so the second job
computes everything again rather than taking the first one's transcript. The table gives both
wall times and their ratio, and each stage's own duration side by side. Wall-clock figures on a
shared machine also measure the neighbours: one run, no repeats.

    python -m bench.clips [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import table
from bench.pipeline import SPEECH, make_clip, suite_env
from reelmill.client import ReelmillClient
from reelmill.v1 import job_pb2, pipeline_pb2
from services.transcode.ffmpeg_runner import source_url
from services.transcode.probe import probe_source
from tests.servers import run_postgres
from tests.suite import run_suite, token

STAGES = ("probe", "transcode", "stills", "audio", "transcribe", "metadata", "clips")
#: Every process's own result caches off: the second job transcribes again.
UNCACHED = {"REELMILL_CACHE_ENTRIES": "0", "REELMILL_AI_CACHE": "off"}


def spec(*, ladder: bool) -> pipeline_pb2.PipelineSpec:
    return pipeline_pb2.PipelineSpec(
        reuse=False,
        transcode=pipeline_pb2.TranscodeSpec(disabled=not ladder),
        scenes=pipeline_pb2.ScenesSpec(disabled=True),
        clips=pipeline_pb2.ClipsSpec(by_chapters=True),
    )


@dataclass(frozen=True)
class Run:
    #: CreateJob to the terminal event of WatchJob.
    seconds: float
    job: job_pb2.Job

    def stage(self, name: str) -> str:
        stage = next(s for s in self.job.stages if s.name == name)
        if stage.state == job_pb2.STAGE_STATE_SKIPPED:
            return "skipped"
        spent = stage.end_time.ToNanoseconds() - stage.start_time.ToNanoseconds()
        return f"{spent / 1e9:.2f}"

    @property
    def bytes(self) -> int:
        return sum(a.size_bytes for a in self.job.artifacts)


async def _job(client: ReelmillClient, video_id: str, wanted: pipeline_pb2.PipelineSpec) -> Run:
    started = time.perf_counter()
    job = await client.create_job(video_id, spec=wanted)
    async for _ in client.watch_job(job.id):
        pass
    elapsed = time.perf_counter() - started
    done = await client.get_job(job.id)
    if done.state != job_pb2.JOB_STATE_SUCCEEDED:
        error = f"{done.error.code} {done.error.reason}: {done.error.message}"
        raise RuntimeError(f"the job did not succeed: {job_pb2.JobState.Name(done.state)} {error}")
    if not done.clips:
        raise RuntimeError("the job cut no clips (no chapters?)")
    return Run(elapsed, done)


async def _both(gateway: str, clip: Path) -> tuple[Run, Run]:
    async with ReelmillClient(gateway, token=token("bench-clips")) as client:
        video = await client.upload_file(clip)
        full = await _job(client, video.id, spec(ladder=True))
        clips_only = await _job(client, video.id, spec(ladder=False))
    return clips_only, full


def main(quick: bool = False) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-clips-"))
    try:
        clip = make_clip(work / "speech-720p.mp4", 10.0 if quick else None)
        length = probe_source(source_url(str(clip))).duration
        with (
            run_postgres() as postgres,
            tempfile.TemporaryDirectory(prefix="bench-objects-") as objects,
            run_suite({**suite_env(postgres, objects), **UNCACHED}) as suite,
        ):
            clips_only, full = asyncio.run(_both(suite.gateway, clip))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ladder = sorted(a.name for a in full.job.artifacts if a.name.startswith("renditions/"))
    rows: list[tuple[str, ...]] = [
        ("job wall time (CreateJob -> end)", f"{clips_only.seconds:.2f}", f"{full.seconds:.2f}",
         f"{clips_only.seconds / full.seconds:.3f}"),
    ]  # fmt: skip
    for name in STAGES:
        rows.append((f"  {name}", clips_only.stage(name), full.stage(name), ""))
    rows += [
        ("clips cut", str(len(clips_only.job.clips)), str(len(full.job.clips)), ""),
        ("renditions", "none", ", ".join(n.removeprefix("renditions/") for n in ladder), ""),
        ("artifacts / MiB stored",
         f"{len(clips_only.job.artifacts)} / {clips_only.bytes / 2**20:.1f}",
         f"{len(full.job.artifacts)} / {full.bytes / 2**20:.1f}", ""),
    ]  # fmt: skip
    print(
        table(
            f"clips: {length:.2f} s 1280x720 25 fps testsrc2 + speech ({SPEECH.name}), "
            "clips by chapters, a clips-only job vs the full-ladder job (wall s; scenes/OCR off)",
            ("part", "clips only", "full ladder", "clips/full"),
            rows,
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.clips")
    parser.add_argument("--quick", action="store_true", help="the first 10 s instead of 60 s")
    main(quick=parser.parse_args().quick)
