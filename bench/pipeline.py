"""The whole pipeline against the bare tools doing the same work, in one run (issue 4).

Input: a generated 1280x720 25 fps testsrc2 video whose audio track is real speech
(``../shared/media/speech/multilingual.mp3``, 59.95 s; the first 10 s with ``--quick``),
H.264/AAC in MP4.

- ours: the suite started as the end-to-end tests start it (ephemeral Postgres, the four
  services and one gateway as subprocesses, local-directory storage); the clip is uploaded with
  ``ReelmillClient`` (timed apart, not in the ratio), then a job with the default spec (probe,
  transcode, audio, transcribe, metadata) is timed from ``CreateJob`` to the terminal event of
  ``WatchJob``. Each stage's own duration comes from the finished job (``Stage.start_time`` /
  ``end_time``).
- bare: the same work on the same file, one tool after another, nothing else: the transcode
  stage's ffmpeg argument lists with the service defaults (built by ``services.transcode``
  ``plan``/``commands``, run with ``subprocess.run``, as ``bench.transcode`` does: ladder with
  storyboard tiles, sprite sheets, HLS packaging, poster + thumbnails), the audio extraction
  command (16 kHz WAV + M4A), faster-whisper on the extracted WAV with the service's model and
  settings (as ``bench.transcribe`` does; the model is loaded before timing, as the service
  loads it before it reports SERVING), and the extractive metadata generator called directly.
  The bare sum is the sum of those wall times. Probing is in ours only (the bare side probes
  untimed, to plan the commands).

The table shows ours (job wall time), the bare sum, their ratio (target <= 1.10), a row per part
(bare time vs the stage's time in ours) and the orchestration overhead: the job's wall time
minus the critical path of its stage durations, probe + max(transcode, audio + transcribe +
metadata).

The pipeline runs the transcode branch and the speech branch (audio -> transcribe -> metadata)
concurrently, so with two or more cores it can beat the sequential bare sum (ratio < 1); each
stage then also runs slower than its bare counterpart, because the two branches share the CPU.
Wall-clock figures on a shared machine also measure the neighbours: one run, no repeats.

    python -m bench.pipeline [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from bench.common import table
from bench.transcode import _fresh, _ladder_files
from reelmill.client import ReelmillClient
from reelmill.v1 import job_pb2, pipeline_pb2
from runtime.ffmpeg import ffmpeg_path
from services.metadata import extractive
from services.metadata.generator import DEFAULT_MAX_TAGS
from services.metadata.model import Source, TimedText
from services.transcode import commands, passthrough
from services.transcode.commands import EncoderSettings
from services.transcode.ffmpeg_runner import COMMON_ARGS, source_url
from services.transcode.messages import audio_options, transcode_options
from services.transcode.plan import LadderPlan, plan_transcode
from services.transcode.probe import decode_lead, probe_source
from services.transcode.settings import TranscodeSettings
from services.transcribe.server import whisper_config
from services.transcribe.settings import TranscribeSettings
from services.transcribe.whisper import load_model
from tests.conftest import SHARED_MEDIA
from tests.servers import PostgresServer, run_postgres
from tests.suite import run_suite, token

SPEECH = SHARED_MEDIA / "speech" / "multilingual.mp3"
STAGES = ("probe", "transcode", "stills", "audio", "transcribe", "metadata")
#: The default spec without what the bare side has no tool for here (shots, on-screen text:
#: ``bench.vision`` measures those against PySceneDetect and rapidocr).
SPEC = pipeline_pb2.PipelineSpec(
    scenes=pipeline_pb2.ScenesSpec(disabled=True), ocr=pipeline_pb2.OcrSpec(disabled=True)
)
#: Ours against the naive bare sum (every rung encoded); against the bare tools given our
#: passthrough too, the figure is shown beside it.
TARGET = 0.80
NAIVE = "transcode (every rung encoded)"
T = TypeVar("T")


def make_clip(path: Path, seconds: float | None) -> Path:
    """testsrc2 at 1280x720 25 fps with ``SPEECH`` as its audio; ``seconds=None`` is the whole
    speech."""
    length = ["-t", f"{seconds:g}"] if seconds is not None else ["-shortest"]
    subprocess.run(
        [
            ffmpeg_path(),
            *("-hide_banner", "-loglevel", "error", "-y"),
            *("-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=25"),
            *("-i", str(SPEECH), *length),
            *("-map", "0:v:0", "-map", "1:a:0"),
            *("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"),
            *("-c:a", "aac", "-b:a", "128k", "-movflags", "+faststart", str(path)),
        ],
        check=True,
    )
    return path


# ours ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ours:
    upload: float
    #: CreateJob to the terminal event of WatchJob.
    job: float
    #: Each stage's own duration (end_time - start_time), by name.
    stages: dict[str, float]
    segments: int
    words: int


def _stage_seconds(stage: job_pb2.Stage) -> float:
    return (stage.end_time.ToNanoseconds() - stage.start_time.ToNanoseconds()) / 1e9


async def _create_database(server: PostgresServer) -> str:
    import asyncpg

    name = f"bench_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(server.dsn())
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return server.url(name)


async def _run_job(gateway: str, clip: Path, timeout: float) -> Ours:
    async with ReelmillClient(gateway, token=token()) as client:
        started = time.perf_counter()
        video = await client.upload_file(clip)
        upload = time.perf_counter() - started

        async def to_the_end(job_id: str) -> job_pb2.JobEvent:
            last = None
            async for event in client.watch_job(job_id):
                last = event
            assert last is not None
            return last

        started = time.perf_counter()
        job = await client.create_job(video.id, spec=SPEC)
        final = await asyncio.wait_for(to_the_end(job.id), timeout)
        elapsed = time.perf_counter() - started
        done = await client.get_job(job.id)
    if final.job.state != job_pb2.JOB_STATE_SUCCEEDED or done.state != job_pb2.JOB_STATE_SUCCEEDED:
        state = job_pb2.JobState.Name(done.state)
        error = f"{done.error.code} {done.error.reason}: {done.error.message}"
        raise RuntimeError(f"the job did not succeed: {state} {error}")
    stages = {s.name: s for s in done.stages}
    not_run = [n for n in STAGES if stages[n].state != job_pb2.STAGE_STATE_SUCCEEDED]
    if not_run:
        raise RuntimeError(f"stages that did not run: {not_run}")
    text = " ".join(s.text for s in done.transcript.segments).strip()
    if not text:
        raise RuntimeError("the job's transcript is empty")
    if done.metadata.engine != extractive.NAME:
        raise RuntimeError(f"metadata came from {done.metadata.engine!r}, not extractive")
    return Ours(
        upload=upload,
        job=elapsed,
        stages={name: _stage_seconds(stages[name]) for name in STAGES},
        segments=len(done.transcript.segments),
        words=len(text.split()),
    )


def suite_env(postgres: PostgresServer, storage_dir: str) -> dict[str, str]:
    """Settings of a benchmarked suite: a fresh database, local storage, quiet logs, and the
    offline engines whatever the environment configures."""
    return {
        "REELMILL_DATABASE_URL": asyncio.run(_create_database(postgres)),
        "REELMILL_STORAGE_BACKEND": "local",
        "REELMILL_STORAGE_DIR": storage_dir,
        "REELMILL_LOG_LEVEL": "WARNING",
        "REELMILL_GEMINI_API_KEY": "",
    }


def run_ours(clip: Path, timeout: float) -> Ours:
    with (
        run_postgres() as postgres,
        tempfile.TemporaryDirectory(prefix="bench-objects-") as tmp,
        run_suite(suite_env(postgres, tmp)) as suite,
    ):
        return asyncio.run(_run_job(suite.gateway, clip, timeout))


# bare ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bare:
    stages: dict[str, float]
    segments: int
    words: int

    @property
    def total(self) -> float:
        """The bare tools in sequence, given our passthrough."""
        return sum(v for k, v in self.stages.items() if k != NAIVE)

    @property
    def naive_total(self) -> float:
        """The bare tools in sequence, every rung encoded."""
        return sum(v for k, v in self.stages.items() if k != "transcode")


def _ffmpeg(binary: str, args: list[str]) -> None:
    subprocess.run([binary, *COMMON_ARGS, *args], check=True, stdout=subprocess.DEVNULL)


def _timed(run: Callable[[], T]) -> tuple[float, T]:
    started = time.perf_counter()
    result = run()
    return time.perf_counter() - started, result


def run_bare(clip: Path, work: Path) -> Bare:
    settings = TranscodeSettings()
    binary = ffmpeg_path(settings.ffmpeg_path)
    encoder = EncoderSettings(threads=settings.ffmpeg_threads, vp9_cpu_used=settings.vp9_cpu_used)
    url = source_url(str(clip))
    info = probe_source(url)  # untimed: only to plan the commands
    plan = plan_transcode(
        transcode_options(pipeline_pb2.TranscodeSpec()), info, preset=settings.transcode_preset
    )
    assert plan.ladder is not None and plan.thumbnails is not None and info.audio is not None
    ladder, thumbs, board = plan.ladder, plan.thumbnails, plan.storyboard
    assert not plan.webm  # not in the default spec
    naive = ladder
    # Passthrough, as the stage does by default (untimed, like the probe: a demux of packets).
    rung = passthrough.copy_rung(info, ladder)
    if rung is not None:
        scan = passthrough.scan_source(url)
        if passthrough.refusal(scan, ladder) is None:
            ladder = passthrough.apply(info, ladder, rung, scan)

    def transcode(ladder: LadderPlan = ladder) -> None:
        out = _fresh(work / "transcode")
        tiles = _fresh(out / "tiles")
        files = _ladder_files(ladder, out)
        _ffmpeg(
            binary,
            commands.ladder_command(url, ladder, files, encoder, storyboard=board, tiles_dir=tiles),
        )
        if board is not None:
            _ffmpeg(binary, commands.sprite_command(board, tiles, _fresh(out / "storyboard")))
        if plan.hls:
            for rung in ladder.rungs:
                (out / "hls" / rung.name).mkdir(parents=True, exist_ok=True)
            lead = max(decode_lead(path) for path in files.values())
            _ffmpeg(binary, commands.hls_command(ladder, files, out / "hls", lead=lead))
        stills = _fresh(out / "thumbnails")
        paths = [stills / f"thumb_{i:03d}.jpg" for i in range(len(thumbs.times))]
        _ffmpeg(binary, commands.thumbnail_command(url, thumbs, stills / "poster.jpg", paths))

    audio_dir = _fresh(work / "audio")
    wav = audio_dir / "audio.wav"
    m4a = audio_dir / "audio.m4a" if audio_options(pipeline_pb2.AudioSpec()).m4a else None
    channels = info.audio.channels

    def audio() -> None:
        _ffmpeg(binary, commands.audio_command(url, wav, m4a, channels))

    config = whisper_config(TranscribeSettings())
    model = load_model(config)  # untimed: the service loads it before it reports SERVING

    def transcribe() -> tuple[tuple[TimedText, ...], str]:
        # As bench.transcribe's bare path, keeping the segments for the metadata.
        segments, found = model.transcribe(
            str(wav), beam_size=config.beam_size, word_timestamps=True, vad_filter=True
        )
        kept = tuple(TimedText(s.start, s.end, s.text) for s in segments if s.text.strip())
        return kept, str(found.language)

    stages: dict[str, float] = {}
    # The naive use of ffmpeg: every rung encoded from the source.
    stages["transcode (every rung encoded)"], _ = _timed(lambda: transcode(naive))
    stages["transcode"], _ = _timed(transcode)
    stages["audio"], _ = _timed(audio)
    stages["transcribe"], (segments, language) = _timed(transcribe)
    width, height = info.video.display_size if info.video is not None else (0, 0)
    source = Source(
        segments=segments,
        duration=info.duration,
        language=language,
        filename=clip.name,
        width=width,
        height=height,
    )
    stages["metadata"], _ = _timed(lambda: extractive.generate(source, DEFAULT_MAX_TAGS))
    words = sum(len(s.text.split()) for s in segments)
    return Bare(stages=stages, segments=len(segments), words=words)


# table -----------------------------------------------------------------------------------------


def _secs(value: float) -> str:
    return f"{value:.3f}" if value < 1 else f"{value:.2f}"


def _ratio(ours: float, bare: float) -> str:
    return f"{ours / bare:.3f}" if bare > 0 else "-"


def main(quick: bool = False) -> None:
    seconds = 10.0 if quick else None
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    try:
        clip = make_clip(work / "speech-720p.mp4", seconds)
        length = probe_source(source_url(str(clip))).duration
        ours = run_ours(clip, timeout=600 if quick else 1800)
        bare = run_bare(clip, work / "bare")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    s = ours.stages
    speech = s["audio"] + s["transcribe"] + s["metadata"]
    critical = s["probe"] + max(s["transcode"], s["stills"], speech)
    rows: list[tuple[str, ...]] = [
        ("whole job (ours) vs naive bare sum", f"{ours.job:.2f}", f"{bare.naive_total:.2f}",
         _ratio(ours.job, bare.naive_total), f"<= {TARGET:.2f}"),
        ("whole job (ours) vs bare sum with passthrough", f"{ours.job:.2f}",
         f"{bare.total:.2f}", _ratio(ours.job, bare.total), "the tools given our plan"),
        ("  probe", _secs(s["probe"]), "-", "-", "ours only"),
    ]  # fmt: skip
    rows.append((f"  {NAIVE}", "-", _secs(bare.stages[NAIVE]), "-", "bare only"))
    for name in ("transcode", "audio", "transcribe", "metadata"):
        b = bare.stages[name]
        note = "ours: the ladder, HLS, storyboard" if name == "transcode" else ""
        rows.append((f"  {name}", _secs(s[name]), _secs(b), _ratio(s[name], b), note))
    rows.append(("  stills (in bare transcode)", _secs(s["stills"]), "-", "-", "poster, thumbs"))
    rows += [
        ("  speech branch (audio+transcribe+metadata)", f"{speech:.2f}",
         f"{bare.stages['audio'] + bare.stages['transcribe'] + bare.stages['metadata']:.2f}",
         "", ""),
        ("critical path: probe + max(transcode, stills, speech)", f"{critical:.2f}", "", "", ""),
        ("orchestration overhead: job - critical path", f"{ours.job - critical:.2f}", "", "",
         f"{(ours.job - critical) / ours.job:.1%} of the job"),
        ("upload (not in the ratio)", f"{ours.upload:.2f}", "", "", ""),
        ("transcript segments / words", f"{ours.segments} / {ours.words}",
         f"{bare.segments} / {bare.words}", "", ""),
    ]  # fmt: skip
    print(
        table(
            f"pipeline: {length:.2f} s 1280x720 25 fps testsrc2 + speech ({SPEECH.name}), "
            "default spec without scenes and OCR, vs bare ffmpeg + faster-whisper + extractive "
            "metadata in sequence (wall s)",
            ("part", "ours s", "bare s", "ours/bare", "target / note"),
            rows,
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline")
    parser.add_argument("--quick", action="store_true", help="the first 10 s instead of 60 s")
    main(quick=parser.parse_args().quick)
