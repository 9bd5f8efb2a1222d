"""The transcode stage against the bare ffmpeg commands doing the same work, in one run.

On one generated 720p clip (60 s; 10 s with ``--quick``), with the service defaults
(720p/480p/360p ladder, HLS, poster + 5 thumbnails, storyboard; x264 ``veryfast``):

- stage:   ``Transcoder.transcode`` on a local-directory store (probe, plan, ffmpeg with
           progress parsing, output inspection, upload with sha256) vs the same ffmpeg argument
           lists run back to back with ``subprocess.run`` (nothing else);
- HLS:     ladder + HLS packaging vs ladder alone (the cost of packaging by stream copy);
- decode:  the single-decode ladder (``split``) vs one ffmpeg run per rung;
- passthrough (issue 15): the ladder with the 720p rung copied from the source and the others
           keyed at its keyframes vs the full re-encode (the same ffmpeg run without the copy),
           and the stage with ``passthrough`` on (the default) vs off. The clip is H.264 that
           passes (x264 keyframes every 250 frames, 8.3 s), so the stage and its bare
           counterpart both copy it.

Run with ``python -m bench.transcode [--quick]``. Each figure is the best of ``--repeat``
runs (default 1), in wall-clock seconds and in CPU seconds (ffmpeg children plus this
process's own threads): on a shared machine the wall clock mostly measures the neighbours, the
CPU time what the work costs.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import table
from runtime.ffmpeg import ffmpeg_path
from runtime.storage.local import LocalObjectStore
from services.transcode import commands, passthrough
from services.transcode.commands import EncoderSettings
from services.transcode.ffmpeg_runner import COMMON_ARGS, FfmpegRunner, source_url
from services.transcode.model import Outcome, TranscodeOptions
from services.transcode.plan import LadderPlan, plan_transcode
from services.transcode.probe import decode_lead, probe_source
from services.transcode.transcoder import SourceRef, Transcoder, TranscoderConfig

PRESET = "veryfast"


def make_clip(path: Path, seconds: int) -> Path:
    subprocess.run(
        [
            ffmpeg_path(),
            *("-hide_banner", "-loglevel", "error", "-y"),
            *("-f", "lavfi", "-i", f"testsrc2=size=1280x720:rate=30:duration={seconds}"),
            *("-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}"),
            *("-c:v", "libx264", "-preset", "ultrafast", "-crf", "18", "-pix_fmt", "yuv420p"),
            *("-c:a", "aac", "-movflags", "+faststart", str(path)),
        ],
        check=True,
    )
    return path


def _ffmpeg(args: list[str]) -> None:
    subprocess.run([ffmpeg_path(), *COMMON_ARGS, *args], check=True, stdout=subprocess.DEVNULL)


def _fresh(directory: Path) -> Path:
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return directory


def _cpu() -> float:
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def _best(repeat: int, run: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds), each the best of ``repeat`` runs."""
    walls, cpus = [], []
    for _ in range(repeat):
        cpu, started = _cpu(), time.perf_counter()
        run()
        walls.append(time.perf_counter() - started)
        cpus.append(_cpu() - cpu)
    return min(walls), min(cpus)


def _row(
    label: str, ours: tuple[float, float], base: tuple[float, float], target: str
) -> tuple[str, ...]:
    return (
        label,
        f"{ours[0]:.2f}",
        f"{base[0]:.2f}",
        f"{ours[0] / base[0]:.3f}",
        f"{ours[1]:.2f}",
        f"{base[1]:.2f}",
        f"{ours[1] / base[1]:.3f}",
        target,
    )


def _ladder_files(ladder: LadderPlan, directory: Path) -> dict[str, Path]:
    return {rung.name: directory / f"{rung.name}.mp4" for rung in ladder.rungs}


def main(quick: bool = False, repeat: int = 1) -> None:
    seconds = 10 if quick else 60
    work = Path(tempfile.mkdtemp(prefix="bench-transcode-"))
    try:
        source = make_clip(work / "source.mp4", seconds)
        url = source_url(str(source))
        info = probe_source(url)
        plan = plan_transcode(TranscodeOptions(), info, preset=PRESET)
        assert plan.ladder is not None and plan.thumbnails is not None
        full, thumbs, board = plan.ladder, plan.thumbnails, plan.storyboard
        rung = passthrough.copy_rung(info, full)
        scan = passthrough.scan_source(url)
        assert rung is not None and passthrough.refusal(scan, full) is None
        copied = passthrough.apply(info, full, rung, scan)
        ladder = copied  # what the stage does by default
        encoder = EncoderSettings()

        def bare_ladder(
            storyboard: bool, which: LadderPlan = ladder
        ) -> tuple[dict[str, Path], Path]:
            out = _fresh(work / "bare")
            tiles = _fresh(out / "tiles")
            files = _ladder_files(which, out)
            _ffmpeg(
                commands.ladder_command(
                    url,
                    which,
                    files,
                    encoder,
                    storyboard=board if storyboard else None,
                    tiles_dir=tiles,
                )
            )
            return files, out

        def bare_hls(files: dict[str, Path], out: Path) -> None:
            for rung in ladder.rungs:
                (out / "hls" / rung.name).mkdir(parents=True, exist_ok=True)
            lead = max(decode_lead(path) for path in files.values())
            _ffmpeg(commands.hls_command(ladder, files, out / "hls", lead=lead))

        def bare_stage() -> None:
            files, out = bare_ladder(storyboard=board is not None)
            if board is not None:
                sheets = _fresh(out / "storyboard")
                _ffmpeg(commands.sprite_command(board, out / "tiles", sheets))
            bare_hls(files, out)
            stills = _fresh(out / "thumbnails")
            paths = [stills / f"thumb_{i:03d}.jpg" for i in range(len(thumbs.times))]
            _ffmpeg(commands.thumbnail_command(url, thumbs, stills / "poster.jpg", paths))

        def ladder_only() -> None:
            bare_ladder(storyboard=False)

        def ladder_full() -> None:
            bare_ladder(storyboard=False, which=full)

        def ladder_and_hls() -> None:
            bare_hls(*bare_ladder(storyboard=False))

        def separate_encodes() -> None:
            out = _fresh(work / "separate")
            for rung in full.rungs:
                single = LadderPlan(
                    (rung,),
                    full.fps,
                    full.segment_seconds,
                    full.gop_frames,
                    full.preset,
                    full.audio,
                )
                _ffmpeg(commands.ladder_command(url, single, _ladder_files(single, out), encoder))

        async def service_stage(on: bool = True) -> None:
            objects = _fresh(work / "objects")
            store = LocalObjectStore(objects)
            await store.put_file("videos/bench/source", source, content_type="video/mp4")
            config = TranscoderConfig(scratch_dir=work / "scratch", preset=PRESET)
            transcoder = Transcoder(store, FfmpegRunner(ffmpeg_path()), config)
            outcome = None
            async for update in transcoder.transcode(
                SourceRef("videos/bench/source"),
                info,
                TranscodeOptions(passthrough=on),
                "jobs/bench/",
            ):
                if isinstance(update, Outcome):
                    outcome = update
            assert outcome is not None

        t_bare = _best(repeat, bare_stage)
        t_service = _best(repeat, lambda: asyncio.run(service_stage()))
        t_service_off = _best(repeat, lambda: asyncio.run(service_stage(on=False)))
        t_ladder = _best(repeat, ladder_only)
        t_ladder_full = _best(repeat, ladder_full)
        t_ladder_hls = _best(repeat, ladder_and_hls)
        t_separate = _best(repeat, separate_encodes)

        rungs = "/".join(
            f"{rung.name} (copied)" if rung.name == ladder.copy else rung.name
            for rung in ladder.rungs
        )
        rows = [
            _row("stage (service) vs bare ffmpeg", t_service, t_bare, "<= 1.05"),
            _row("ladder + HLS vs ladder alone", t_ladder_hls, t_ladder, "<= 1.05"),
            _row("single-decode ladder vs separate", t_ladder_full, t_separate, "< 1"),
            _row("ladder: passthrough vs full re-encode", t_ladder, t_ladder_full, "<= 0.6"),
            _row("stage: passthrough on vs off", t_service, t_service_off, "<= 0.6"),
        ]
        header = ("comparison", "ours s", "base s", "ratio", "ours cpu", "base cpu", "ratio")
        print(
            table(
                f"transcode: {seconds} s 1280x720 30 fps + AAC, ladder {rungs}, {PRESET}",
                (*header, "target"),
                rows,
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.transcode")
    parser.add_argument("--quick", action="store_true", help="a 10 s clip instead of 60 s")
    parser.add_argument("--repeat", type=int, default=1, help="best of N runs per figure")
    arguments = parser.parse_args()
    main(quick=arguments.quick, repeat=arguments.repeat)
