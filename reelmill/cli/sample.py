"""The demo's sample video, generated with ffmpeg: a moving test pattern over a real recording
of speech (``media/jfk.flac``, 11 s of a public-domain speech; its source and licence are in
``media/SOURCES.md``), so that the demo's job has a transcript, a title and chapters.

Server-side tooling, like ``reelmill.cli.up``: it finds ffmpeg as the services do
(``runtime.ffmpeg``), so only ``reelmill demo`` imports it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from runtime.ffmpeg import ffmpeg_path

SPEECH = Path(__file__).resolve().parent / "media" / "jfk.flac"


def make_sample(path: Path, speech: Path = SPEECH) -> Path:
    """A 640x360 H.264/AAC MP4 as long as ``speech``: a moving test pattern, and the speech."""
    subprocess.run(
        [
            ffmpeg_path(),
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=640x360:rate=25",
            "-i",
            str(speech),
            "-map",
            "0:v",
            "-map",
            "1:a",
            "-shortest",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-b:a",
            "96k",
            "-movflags",
            "+faststart",
            str(path),
        ],
        check=True,
    )
    return path
